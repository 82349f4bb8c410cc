"""Fixtures: a simulated fake and a replaying fake per module (fresh config and ledger per test), the real SDKs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from anthropic import AsyncAnthropic
from google import genai
from google.genai import types
from openai import AsyncOpenAI

from tests.workers.fake.calls import STUDY, SDKs
from workers.providers.fake import FakeConfig, FakeProvider


def default_config() -> FakeConfig:
    return FakeConfig(hang_s=1.0)


@pytest.fixture(scope="module")
async def simulated_fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider(default_config()) as provider:
        yield provider


@pytest.fixture
def fake(simulated_fake: FakeProvider) -> FakeProvider:
    """A simulated fake provider, its config and ledger fresh for the test; ``fake.update(...)`` changes it."""
    simulated_fake.update(**default_config().model_dump())
    simulated_fake.reset()
    return simulated_fake


@pytest.fixture(scope="module")
async def replay_fake() -> AsyncIterator[FakeProvider]:
    """A fake provider replaying the study's recorded answers and judgements (loaded once per module)."""
    if not (STUDY / "cases.jsonl").exists():
        pytest.fail(f"the study data is not at {STUDY}")
    async with FakeProvider(FakeConfig(mode="replay", replay_dir=str(STUDY))) as provider:
        yield provider


@pytest.fixture
def replay(replay_fake: FakeProvider) -> FakeProvider:
    replay_fake.reset()
    return replay_fake


@pytest.fixture
async def sdks() -> AsyncIterator[Callable[..., SDKs]]:
    """``sdks(fake or url, timeout=...)``: the three real SDK clients pointed at the fake, retries off; closed after."""
    opened: list[SDKs] = []

    def make(target: FakeProvider | str, timeout: float = 10.0) -> SDKs:
        url = target if isinstance(target, str) else target.url
        options = types.HttpOptions(base_url=url, timeout=int(timeout * 1000))
        clients = SDKs(
            openai=AsyncOpenAI(api_key="x", base_url=url + "/v1", max_retries=0, timeout=timeout),
            anthropic=AsyncAnthropic(api_key="x", base_url=url, max_retries=0, timeout=timeout),
            gemini=genai.Client(api_key="x", http_options=options).aio,
        )
        opened.append(clients)
        return clients

    yield make
    for clients in opened:
        await clients.openai.close()
        await clients.anthropic.close()
        await clients.gemini.aclose()
