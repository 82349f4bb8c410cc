"""Issue 15, item 1: a ``submit`` token holder chooses a config's ``base_url`` and ``api_key_env``; before the key rules
(``providers.key_hosts``) a config naming ``DEFEATER_DATABASE_URL`` (or ``PATH``, ``DEFEATER_WEBHOOK_SECRET``, another
provider's key) with ``base_url`` on the attacker's host made the worker send that variable's value there as its
bearer key. Replayed here against a listener on loopback posing as the attacker's host: loopback is a host the
worker may call (``allowed_hosts``), so the only thing between the key and the listener is the key rule."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.app import create_app
from service.datasets.service import ensure_starter
from service.db.models import Job, ModelConfig, Provider
from service.exit_codes import ExitCode
from service.jobs.schemas import JobCreate, JobFilters
from service.jobs.service import create_job
from service.model_configs.schemas import ModelConfigCreate
from service.model_configs.service import register
from service.settings import (
    DEFAULT_KEY_HOSTS,
    AuthSettings,
    DefaultJudge,
    ExecutorSettings,
    ProviderSettings,
    Settings,
)
from tests.workers.processes import BIN
from workers.executor.embedded import EmbeddedExecutor
from workers.providers.base import CallSpec, ProviderError
from workers.providers.registry import Adapters, Endpoint
from workers.tasks import Runtime

FAKE_KEY_ENV = "FAKE_PROVIDER_KEY"
# an operator's rules for a deployment whose fake provider is on loopback: its key may go there, the official
# variables (the defaults) to their providers alone; the worker's fence lets loopback be called at all
RULES = ProviderSettings(
    allowed_hosts=["127.0.0.1"], key_hosts={**DEFAULT_KEY_HOSTS, FAKE_KEY_ENV: ["127.0.0.1"]}, keyless_hosts=[]
)
# (provider, the variable an attacker names): each holds something the listener must never see
ATTACKS = [
    ("openai", "DEFEATER_DATABASE_URL"),
    ("openai", "PATH"),
    ("openai", "DEFEATER_WEBHOOK_SECRET"),
    ("anthropic", "ANTHROPIC_API_KEY"),
]
PATHS = {"openai": "/v1", "anthropic": ""}
ANSWER = {
    "id": "chatcmpl-listener", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}  # fmt: skip


class Listener:
    """The attacker's host: an HTTP server on loopback that records every request's headers, and answers as OpenAI."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                seen.append({k.lower(): v for k, v in self.headers.items()})
                self.rfile.read(int(self.headers.get("content-length", 0)))
                body = json.dumps(ANSWER).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the stdlib's name)
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def holding(self, secret: str) -> list[dict[str, str]]:
        return [r for r in self.requests if any(secret in value for value in r.values())]


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The worker's environment: a value planted in each variable an attacker names (PATH keeps its own)."""
    values = {
        "DEFEATER_DATABASE_URL": f"postgresql://planted-{uuid.uuid4().hex}@db/ledger",
        "DEFEATER_WEBHOOK_SECRET": f"planted-{uuid.uuid4().hex}",
        "ANTHROPIC_API_KEY": f"sk-ant-{uuid.uuid4().hex}",
        FAKE_KEY_ENV: "fake-key-not-a-secret",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values | {"PATH": os.environ["PATH"]}


# ---- refused when the config is created -------------------------------------------------------------------------


@pytest.fixture
def settings(database_url: str) -> Settings:
    """The API of this module runs under RULES (tokens off, as the suite's other API tests)."""
    return Settings(database_url=database_url, auth=AuthSettings(required=False), providers=RULES)


@pytest.mark.parametrize(("provider", "variable"), ATTACKS)
async def test_an_attacker_config_is_refused_when_it_is_created(
    client: httpx.AsyncClient, problem: Any, listener: Listener, provider: str, variable: str
) -> None:
    body = {"name": "exfiltrate", "provider": provider, "model": "m", "base_url": listener.url + PATHS[provider],
            "api_key_env": variable}  # fmt: skip
    error = problem(await client.post("/v1/model-configs", json=body), 422)
    # a variable no config may name is blamed; a real key is blamed on where it would go
    field = "base_url" if variable == "ANTHROPIC_API_KEY" else "api_key_env"
    assert [e["field"] for e in error["errors"]] == [field], error
    assert variable in error["errors"][0]["message"]
    assert (await client.get("/v1/model-configs")).json()["items"] == []


async def test_a_config_without_a_key_reaches_only_the_hosts_an_operator_allows(
    client: httpx.AsyncClient, problem: Any
) -> None:
    # an OpenAI-compatible server without auth carries no key, but the worker would still call where it says
    body = {"name": "metadata", "provider": "openai_compatible", "model": "m", "base_url": "http://169.254.169.254/v1"}
    error = problem(await client.post("/v1/model-configs", json=body), 422)
    assert [e["field"] for e in error["errors"]] == ["base_url"]
    # a URL that two parsers could read as two hosts is refused whatever the host
    tricky = body | {"base_url": "http://api.openai.com@127.0.0.1:9/v1", "api_key_env": "OPENAI_API_KEY"}
    error = problem(await client.post("/v1/model-configs", json=tricky | {"provider": "openai"}), 422)
    assert [e["field"] for e in error["errors"]] == ["base_url"]


@asynccontextmanager
async def api(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[httpx.AsyncClient]:
    """The API in-process under ``settings``, on the test's rolled-back connection."""
    app = create_app(settings, sessionmaker=sessionmaker)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client,
    ):
        yield client


async def test_the_default_rules_send_the_official_keys_to_the_official_hosts_alone(
    database_url: str, sessionmaker: async_sessionmaker[AsyncSession], problem: Any
) -> None:
    settings = Settings(database_url=database_url, auth=AuthSettings(required=False), providers=ProviderSettings())
    async with api(settings, sessionmaker) as client:
        base = {"name": "gpt", "provider": "openai", "model": "gpt-5.4"}
        elsewhere = await client.post("/v1/model-configs", json=base | {"base_url": "https://openrouter.ai/api/v1"})
        assert [e["field"] for e in problem(elsewhere, 422)["errors"]] == ["base_url"]
        assert "api.openai.com" in elsewhere.json()["errors"][0]["message"]
        # the same key to its own provider, and each official provider's usual variable, are fine
        for i, (provider, variable) in enumerate([("openai", None), ("anthropic", None), ("google", None),
                                                  ("google", "GOOGLE_API_KEY")]):  # fmt: skip
            body = {"name": f"ok-{i}", "provider": provider, "model": "m", "api_key_env": variable}
            assert (await client.post("/v1/model-configs", json=body)).status_code == 201
        # but OPENAI_API_KEY is not Anthropic's
        crossed = await client.post("/v1/model-configs", json=base | {"provider": "anthropic", "name": "x",
                                                                      "api_key_env": "OPENAI_API_KEY"})  # fmt: skip
        assert [e["field"] for e in problem(crossed, 422)["errors"]] == ["api_key_env"]


async def test_a_default_judge_the_rules_refuse_is_named_when_a_job_is_created(
    database_url: str, sessionmaker: async_sessionmaker[AsyncSession], problem: Any
) -> None:
    judge = DefaultJudge(base_url="http://127.0.0.1:9/v1")  # OPENAI_API_KEY, by default, to api.openai.com alone
    settings = Settings(database_url=database_url, auth=AuthSettings(required=False), default_judge=judge,
                        providers=ProviderSettings())  # fmt: skip
    async with api(settings, sessionmaker) as client:
        config = await client.post("/v1/model-configs", json={"name": "gpt", "provider": "openai", "model": "m"})
        starter = next(d for d in (await client.get("/v1/datasets")).json()["items"] if d["name"] == "starter")
        body = {"dataset_id": starter["id"], "model_config_ids": [config.json()["id"]], "filters": {"limit": 1}}
        error = problem(await client.post("/v1/jobs", json=body), 422)
    assert [e["field"] for e in error["errors"]] == ["judge_config_ids"]


def test_an_operator_cannot_make_a_service_variable_a_key() -> None:
    for name in ("DEFEATER_DATABASE_URL", "DEFEATER_WEBHOOK_SECRET", "defeater_api_token", "PATH"):
        with pytest.raises(ValidationError, match=name):
            ProviderSettings(key_hosts={name: ["127.0.0.1"]})
    with pytest.raises(ValidationError, match="no scheme"):
        ProviderSettings(key_hosts={"OPENAI_API_KEY": ["https://api.openai.com/v1"]})


def test_the_cli_refuses_them_too(env_without_defeater: dict[str, str], tmp_path: Path) -> None:
    """``defeater configs register`` and ``-m provider:model@base_url`` register through the same rule (the default
    rules here: no DEFEATER_ setting in the environment)."""
    env = env_without_defeater
    config = tmp_path / "configs.yaml"
    config.write_text("name: leak\nprovider: openai\nmodel: m\nbase_url: http://127.0.0.1:9/v1\n"
                      "api_key_env: DEFEATER_WEBHOOK_SECRET\n")  # fmt: skip
    registered = subprocess.run([BIN / "defeater", "configs", "register", str(config)], env=env, capture_output=True,
                                text=True, timeout=60)  # fmt: skip
    assert registered.returncode == ExitCode.ERROR and "api_key_env" in registered.stderr + registered.stdout
    assert "Traceback" not in registered.stderr
    created = subprocess.run([BIN / "defeater", "jobs", "create", "-m", "openai:gpt@http://127.0.0.1:9/v1"], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert created.returncode == ExitCode.ERROR and "base_url" in created.stderr + created.stdout
    listed = subprocess.run([BIN / "defeater", "configs", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert "leak" not in listed.stdout and "127.0.0.1" not in listed.stdout
    # nor can an operator's setting make the database URL a key: the command refuses to start, saying why
    misconfigured = env | {"DEFEATER_PROVIDERS__KEY_HOSTS": '{"DEFEATER_DATABASE_URL": ["127.0.0.1"]}'}
    refused = subprocess.run([BIN / "defeater", "configs", "list"], env=misconfigured, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert refused.returncode == ExitCode.ERROR and "DEFEATER_DATABASE_URL can never be" in refused.stderr


# ---- refused again by the worker, before it sends ---------------------------------------------------------------


def stored(provider: str, base_url: str, variable: str) -> ModelConfig:
    """A config row as it was stored before the rule: written directly, no check on the way in."""
    return ModelConfig(id=uuid.uuid4(), name=f"stored-{uuid.uuid4().hex[:8]}", provider=Provider(provider), model="m",
                       base_url=base_url, api_key_env=variable, params={}, limits={}, fingerprint=uuid.uuid4().hex * 2,
                       definition_hash=uuid.uuid4().hex)  # fmt: skip


async def run_job(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, target: ModelConfig) -> Job:
    """A one-case job of ``target``, judged by a config the rules allow, run by the embedded executor."""
    async with sessionmaker() as session:
        judge = stored("openai", "http://127.0.0.1:9/v1", FAKE_KEY_ENV)
        target = await session.merge(target)  # a new row, or one registered before
        session.add(judge)
        await session.flush()
        starter = await ensure_starter(session)
        body = JobCreate(dataset_id=starter.id, model_config_ids=[target.id], judge_config_ids=[judge.id],
                         filters=JobFilters(limit=1), use_cache=False)  # fmt: skip
        job_id = (await create_job(session, body, settings)).job.id
        await session.commit()
    runtime = Runtime.build(settings)
    try:
        await EmbeddedExecutor(runtime, sessionmaker).run_job(job_id)
    finally:
        await runtime.adapters.aclose()
    async with sessionmaker() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        return job


@pytest.mark.parametrize(("provider", "variable"), ATTACKS)
async def test_a_config_stored_before_the_rule_never_sends_its_key(
    ledger: async_sessionmaker[AsyncSession], ledger_url: str, listener: Listener, planted: dict[str, str],
    provider: str, variable: str,
) -> None:  # fmt: skip
    settings = Settings(database_url=ledger_url, providers=RULES, executor=ExecutorSettings(max_attempts=1))
    job = await run_job(ledger, settings, stored(provider, listener.url + PATHS[provider], variable))
    assert listener.requests == []  # not a connection's worth: the worker refused before it built a client
    assert job.state.value == "failed" and job.error is not None and variable in job.error
    assert planted[variable] not in job.error


async def test_a_mapping_changed_since_a_config_was_registered_is_applied_by_the_worker(
    ledger: async_sessionmaker[AsyncSession], ledger_url: str, listener: Listener, planted: dict[str, str]
) -> None:
    then = RULES.model_copy(update={"key_hosts": {FAKE_KEY_ENV: ["127.0.0.1"]}})
    body = ModelConfigCreate(name=f"then-{uuid.uuid4().hex[:6]}", provider=Provider.openai, model="m",
                             base_url=listener.url + "/v1", api_key_env=FAKE_KEY_ENV)  # fmt: skip
    async with ledger() as session:
        config = (await register(session, body, then)).config
        await session.commit()
    # the operator has since taken the fake's key off the rules
    now = Settings(database_url=ledger_url, providers=RULES.model_copy(update={"key_hosts": dict(DEFAULT_KEY_HOSTS)}))
    job = await run_job(ledger, now, config)
    assert listener.requests == [] and job.state.value == "failed" and FAKE_KEY_ENV in (job.error or "")


def test_the_listener_is_a_host_the_worker_calls_when_the_rules_allow(
    listener: Listener, planted: dict[str, str]
) -> None:
    """The control: the same listener, with the key the rules send there, gets the call (and that key alone)."""

    async def call() -> None:
        adapters = Adapters(RULES)
        try:
            spec = CallSpec(model="m", prompt="hello", max_tokens=5)
            await adapters.get(Endpoint("openai", listener.url + "/v1", FAKE_KEY_ENV)).call(spec)
        finally:
            await adapters.aclose()

    asyncio.run(call())
    assert [r["authorization"] for r in listener.requests] == [f"Bearer {planted[FAKE_KEY_ENV]}"]


@pytest.mark.parametrize(("provider", "variable"), ATTACKS)
def test_a_worker_refuses_each_attack_before_it_builds_a_client(
    listener: Listener, planted: dict[str, str], provider: str, variable: str
) -> None:
    """What a distributed worker does first with a unit's config (``Adapters.get``)."""
    adapters = Adapters(RULES)
    with pytest.raises(ProviderError) as refused:
        adapters.get(Endpoint(provider, listener.url + PATHS[provider], variable))
    assert refused.value.reason == "key_not_allowed" and planted[variable] not in str(refused.value)
    assert listener.requests == []


def test_which_unlisted_variables_are_set_cannot_be_probed(listener: Listener) -> None:
    """``errors_by_kind`` once told ``missing_key`` (not set) from a call's answer (set): a reader could probe the
    worker's environment. A variable the rules do not list is refused alike, set or not, before the environment is
    read."""
    adapters = Adapters(RULES, {"SET_BUT_UNLISTED": "a-value"})
    reasons = {
        name: adapters.unusable(Endpoint("openai", listener.url + "/v1", name))
        for name in ("SET_BUT_UNLISTED", "NOT_SET_NOR_LISTED")
    }
    assert {name: (e.reason if e else None) for name, e in reasons.items()} == {
        "SET_BUT_UNLISTED": "key_not_allowed",
        "NOT_SET_NOR_LISTED": "key_not_allowed",
    }
    messages = {name: str(e).replace(name, "NAME") for name, e in reasons.items()}
    assert messages["SET_BUT_UNLISTED"] == messages["NOT_SET_NOR_LISTED"]
    assert listener.requests == []
