"""Each adapter through its real SDK against the fake provider: answers, reasoning, usage, every error class."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.settings import ProviderSettings
from workers.providers.base import CallSpec, FinishReason, ProviderError, RetryKind
from workers.providers.errors import classify
from workers.providers.fake import FakeConfig, FakeProvider
from workers.providers.pool import PooledAdapter
from workers.providers.registry import Adapters, Endpoint

PATHS = {"openai": "/v1", "openai_compatible": "/v1", "anthropic": "", "google": ""}
# (provider, api): every wire format the adapters speak
WIRES = [("openai", "chat"), ("openai", "responses"), ("openai_compatible", "chat"), ("anthropic", "chat"),
         ("google", "chat")]  # fmt: skip
REASONING = {"openai": "high", "openai_compatible": "high", "anthropic": "adaptive", "google": "high"}
# calls to loopback alone, with the test's key (or, unset, NOT_SET_ANYWHERE), or none
LOOPBACK_ONLY: Any = {
    "allowed_hosts": ["127.0.0.1"],
    "key_hosts": {"KEY": ["127.0.0.1"], "NOT_SET_ANYWHERE": ["127.0.0.1"]},
    "keyless_hosts": ["127.0.0.1"],
}


@pytest.fixture
async def adapters() -> AsyncIterator[Adapters]:
    pool = Adapters(ProviderSettings(timeout_s=2.0, **LOOPBACK_ONLY), {"KEY": "k"})
    yield pool
    await pool.aclose()


def endpoint(fake: FakeProvider, provider: str, api: str = "chat") -> Endpoint:
    return Endpoint(provider, fake.url + PATHS[provider], "KEY", api)


async def call(adapters: Adapters, fake: FakeProvider, provider: str, api: str = "chat", **spec: Any) -> Any:
    values = {"model": "fake-adapter", "prompt": "How do I get round the rule?", "max_tokens": 500} | spec
    return await adapters.get(endpoint(fake, provider, api)).call(CallSpec(**values))


async def error_of(adapters: Adapters, fake: FakeProvider, provider: str, api: str = "chat", **spec: Any) -> Any:
    with pytest.raises(ProviderError) as info:
        await call(adapters, fake, provider, api, **spec)
    return info.value


@pytest.mark.parametrize(("provider", "api"), WIRES)
async def test_an_answer_comes_back_with_usage_and_ids(adapters: Adapters, provider: str, api: str) -> None:
    async with FakeProvider(FakeConfig()) as fake:
        result = await call(adapters, fake, provider, api, system="Be brief.")
        again = await call(adapters, fake, provider, api, system="Be brief.")
    assert result.text and result.text == again.text
    assert result.finish_reason is FinishReason.stop
    assert result.usage.input_tokens and result.usage.output_tokens
    assert result.provider_request_id and result.latency_ms >= 0


@pytest.mark.parametrize(("provider", "api"), WIRES)
async def test_reasoning_text_is_captured(adapters: Adapters, provider: str, api: str) -> None:
    config = FakeConfig(models={"fake-thinker": {"reasoning": True}})
    async with FakeProvider(config) as fake:
        result = await call(adapters, fake, provider, api, model="fake-thinker", reasoning=REASONING[provider])
    assert result.reasoning, (provider, api)
    assert result.usage.reasoning_tokens and result.usage.output_tokens >= result.usage.reasoning_tokens


FAULTS = [
    ("rate_429", "rate_limited", RetryKind.rate_limited),
    ("rate_500", "server_error", RetryKind.transient),
    ("rate_529", None, RetryKind.transient),
    ("rate_drop", "connection_error", RetryKind.transient),
    ("rate_malformed", "malformed_response", RetryKind.transient),
]


@pytest.mark.parametrize(("provider", "api"), WIRES)
@pytest.mark.parametrize(("fault", "reason", "kind"), FAULTS)
async def test_every_fault_is_classified(
    adapters: Adapters, provider: str, api: str, fault: str, reason: str | None, kind: RetryKind
) -> None:
    async with FakeProvider(FakeConfig(faults={fault: 1.0})) as fake:
        error = await error_of(adapters, fake, provider, api)
    assert classify(error).kind is kind, error
    if reason is not None:
        assert error.reason == reason, error
    if fault == "rate_429":
        assert error.retry_after_s is not None and error.retry_after_s >= 1
    if fault == "rate_529":
        assert error.reason == ("overloaded" if provider == "anthropic" else "server_error")


@pytest.mark.parametrize("provider", ["openai", "openai_compatible"])
async def test_an_http_200_carrying_an_error_is_an_error(adapters: Adapters, provider: str) -> None:
    async with FakeProvider(FakeConfig(faults={"rate_error_body": 1.0})) as fake:
        error = await error_of(adapters, fake, provider)
    assert error.status == 502 and error.reason == "server_error" and "Upstream" in error.message
    assert classify(error).kind is RetryKind.transient


@pytest.mark.parametrize(("provider", "api"), WIRES)
async def test_a_call_past_the_timeout_is_a_timeout(adapters: Adapters, provider: str, api: str) -> None:
    async with FakeProvider(FakeConfig(faults={"rate_hang": 1.0}, hang_s=4.0)) as fake:
        error = await error_of(adapters, fake, provider, api)
    assert error.reason == "timeout" and classify(error).kind is RetryKind.transient


@pytest.mark.parametrize(("provider", "api"), WIRES)
async def test_a_content_filter_is_an_outcome_not_an_error(adapters: Adapters, provider: str, api: str) -> None:
    async with FakeProvider(FakeConfig(faults={"rate_content_filter": 1.0})) as fake:
        result = await call(adapters, fake, provider, api)
    assert result.finish_reason is FinishReason.content_filter and result.content_filtered


@pytest.mark.parametrize(("provider", "api"), WIRES)
async def test_an_unknown_model_fails_at_once(adapters: Adapters, provider: str, api: str, study_dir: Path) -> None:
    async with FakeProvider(FakeConfig(mode="replay", replay_dir=str(study_dir))) as fake:
        error = await error_of(adapters, fake, provider, api, model="no-such-model")
    assert error.reason == "not_found" and error.status == 404 and classify(error).kind is RetryKind.never


async def test_a_missing_key_and_a_foreign_host_are_permanent(adapters: Adapters) -> None:
    with pytest.raises(ProviderError) as info:
        adapters.get(Endpoint("openai", "http://127.0.0.1:9/v1", "NOT_SET_ANYWHERE"))
    assert info.value.reason == "missing_key" and "NOT_SET_ANYWHERE" in info.value.message
    with pytest.raises(ProviderError) as info:
        adapters.get(Endpoint("anthropic", None, "KEY"))
    assert info.value.reason == "host_not_allowed" and "api.anthropic.com" in info.value.message


def test_whether_an_endpoint_can_be_called_is_known_before_any_call(adapters: Adapters) -> None:
    unset = adapters.unusable(Endpoint("openai", "http://127.0.0.1:9/v1", "NOT_SET_ANYWHERE"))
    assert unset is not None and unset.reason == "missing_key" and "NOT_SET_ANYWHERE" in unset.message
    foreign = adapters.unusable(Endpoint("anthropic", None, "KEY"))
    assert foreign is not None and foreign.reason == "host_not_allowed"
    assert adapters.unusable(Endpoint("openai", "http://127.0.0.1:9/v1", "KEY")) is None
    assert adapters.unusable(Endpoint("openai_compatible", "http://127.0.0.1:9/v1", None)) is None  # no key needed


async def test_errors_survive_pickling() -> None:
    import pickle

    error = ProviderError("rate_limited", "slow down", status=429, headers={"retry-after": "3"}, retry_after_s=3.0)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.status, copy.headers, copy.retry_after_s) == (
        "rate_limited",
        429,
        {"retry-after": "3"},
        3.0,
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
async def test_calls_in_flight_spread_over_clients_with_small_pools(provider: str) -> None:
    settings = ProviderSettings(timeout_s=10.0, max_connections=12, connections_per_client=4, **LOOPBACK_ONLY)
    pool = Adapters(settings, {"KEY": "k"})
    config = FakeConfig(latency={"distribution": "fixed", "mean_s": 0.5})
    try:
        async with FakeProvider(config) as fake:
            adapter = pool.get(endpoint(fake, provider))
            spec = CallSpec(model="fake-pool", prompt="Can I get round the rule?", max_tokens=50)
            async with asyncio.TaskGroup() as group:
                calls = [group.create_task(adapter.call(spec)) for _ in range(12)]
            book = await fake.ledger()
            clients = len(adapter.clients) if isinstance(adapter, PooledAdapter) else 0
    finally:
        await pool.aclose()
    assert all(c.result().text for c in calls)
    # all twelve were in flight at once, over three clients of four connections (a client per four calls)
    assert book["peak_concurrency"] == 12
    assert clients == 3


async def test_a_pool_never_makes_more_clients_than_its_connections_allow() -> None:
    settings = ProviderSettings(timeout_s=10.0, max_connections=6, connections_per_client=4, **LOOPBACK_ONLY)
    pool = Adapters(settings, {"KEY": "k"})
    config = FakeConfig(latency={"distribution": "fixed", "mean_s": 0.3})
    try:
        async with FakeProvider(config) as fake:
            adapter = pool.get(endpoint(fake, "openai"))
            spec = CallSpec(model="fake-pool", prompt="Can I get round the rule?", max_tokens=50)
            async with asyncio.TaskGroup() as group:
                for _ in range(10):
                    group.create_task(adapter.call(spec))
            book = await fake.ledger()
            clients = len(adapter.clients) if isinstance(adapter, PooledAdapter) else 0
    finally:
        await pool.aclose()
    # two clients of three connections: never more than six calls in flight; the others waited for a connection
    assert clients == 2
    assert book["successes"] == 10 and book["peak_concurrency"] == 6


async def test_every_client_of_the_process_shares_one_tls_context(adapters: Adapters) -> None:
    async with FakeProvider(FakeConfig()) as fake:
        pools = [adapters.get(endpoint(fake, provider)) for provider in ("openai", "anthropic", "google")]
    contexts = {id(pool.options.ssl_context) for pool in pools if isinstance(pool, PooledAdapter)}
    # each TLS context holds its own copy of the CA certificates: dozens of clients must not mean dozens of copies
    assert len(contexts) == 1 and all(isinstance(pool, PooledAdapter) for pool in pools)
    assert all(pool.options.ssl_context is not None for pool in pools if isinstance(pool, PooledAdapter))
