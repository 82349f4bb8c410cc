"""Rate limits (RPM, TPM, headers), the ledger (duplicates, idempotent replays, concurrency) and run-time control."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
from google.genai import errors as genai_errors

from tests.workers.fake.calls import STUDY, SDKs, chat, gemini, messages, recorded
from workers.providers.fake import FakeProvider

ROOT = Path(__file__).parents[3]


async def test_rpm_limit_lets_exactly_the_limit_through(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    fake.update(limits={"fake-limited": {"rpm": 5}})
    client = sdks(fake).openai

    async def one(i: int) -> object:
        try:
            return await client.chat.completions.with_raw_response.create(
                model="fake-limited", messages=[{"role": "user", "content": f"q{i}"}]
            )
        except openai.RateLimitError as exc:
            return exc

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(i)) for i in range(20)]
    results = [t.result() for t in tasks]
    rejected = [r for r in results if isinstance(r, openai.RateLimitError)]
    accepted = [r for r in results if not isinstance(r, openai.RateLimitError)]
    assert len(accepted) == 5 and len(rejected) == 15
    for error in rejected:
        headers = error.response.headers
        assert int(headers["retry-after"]) >= 1
        assert headers["x-ratelimit-limit-requests"] == "5" and headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in accepted)  # type: ignore[attr-defined]
    assert remaining == [0, 1, 2, 3, 4]
    ledger = await fake.ledger()
    assert ledger["by_status"] == {"200": 5, "429": 15}
    assert ledger["by_model"]["fake-limited"]["rate_limited"] == 15


async def test_limits_in_anthropic_and_gemini_formats(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    fake.update(limits={"*": {"rpm": 1}})
    clients = sdks(fake)
    raw = await clients.anthropic.messages.with_raw_response.create(
        model="a", max_tokens=10, messages=[{"role": "user", "content": "q"}]
    )
    assert raw.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert raw.headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = datetime.fromisoformat(raw.headers["anthropic-ratelimit-requests-reset"].replace("Z", "+00:00"))
    assert 0 < (reset - datetime.now(UTC)).total_seconds() <= 61
    with pytest.raises(anthropic.RateLimitError) as anthropic_error:
        await messages(clients, "a", "q2")
    assert int(anthropic_error.value.response.headers["retry-after"]) >= 1
    await gemini(clients, "g", "q")  # "*" gives every model its own window
    with pytest.raises(genai_errors.ClientError) as gemini_error:
        await gemini(clients, "g", "q2")
    details = gemini_error.value.details["error"]["details"]
    delay = next(d["retryDelay"] for d in details if d["@type"].endswith("RetryInfo"))
    assert int(delay.removesuffix("s")) >= 1


async def test_tpm_limit(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    fake.update(limits={"m": {"tpm": 150}})
    clients = sdks(fake)
    await chat(clients, "m", "a short question")  # a simulated answer is well under 150 tokens
    with pytest.raises(openai.RateLimitError) as error:
        for i in range(5):
            await chat(clients, "m", f"another question {i}")
    assert error.value.type == "tokens" and int(error.value.response.headers["retry-after"]) >= 1
    assert error.value.response.headers["x-ratelimit-limit-tokens"] == "150"
    # the ledger counts the tokens of the calls let through (the refused ones took no room), never above the limit
    entry = (await fake.ledger())["by_model"]["m"]
    assert 0 < entry["tokens"] <= 150 and entry["successes"] == entry["calls"] - entry["rate_limited"]
    # and when they came: the window's fullest moment, tokens per second, and the 429s per second
    assert entry["peak_window_tokens"] == entry["tokens"] and sum(entry["tokens_per_s"]) == entry["tokens"]
    assert sum(entry["rate_limited_per_s"].values()) == entry["rate_limited"] == 1


async def test_duplicates_and_idempotent_replays(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    clients = sdks(fake)
    client = clients.openai
    await chat(clients, "m", "same")
    await chat(clients, "m", "same")
    await chat(clients, "m", "other")
    headers = {"Idempotency-Key": "job-1"}
    first = await client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "keyed"}], extra_headers=headers
    )
    again = await client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "keyed"}], extra_headers=headers
    )
    assert again.request_id == first.request_id and again.parse().id == first.parse().id
    ledger = await fake.ledger()
    assert ledger["calls"] == 5 and ledger["successes"] == 4 and ledger["by_status"] == {"200": 5}
    assert ledger["idempotent_replays"] == 1 and ledger["duplicate_successes"] == 1
    assert [d["count"] for d in ledger["duplicates"]] == [2]
    fake.update(honour_idempotency_key=False)
    await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "keyed"}], extra_headers=headers
    )
    assert (await fake.ledger())["duplicate_successes"] == 2


async def test_concurrency_and_achieved_rate(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    fake.update(latency={"distribution": "uniform", "mean_s": 0.2, "spread": 0.2})
    clients = sdks(fake)
    async with asyncio.TaskGroup() as group:
        for i in range(12):
            group.create_task(chat(clients, "m", f"q{i}"))
    ledger = await fake.ledger()
    assert ledger["peak_concurrency"] == 12 and ledger["in_flight"] == 0
    stats = ledger["by_model"]["m"]
    assert stats["successes"] == 12 and stats["peak_concurrency"] == 12
    assert stats["first_at"] <= stats["last_at"] and stats["achieved_rpm"] > 0


async def test_control_endpoints(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    await chat(sdks(fake), "m", "q")
    async with httpx2.AsyncClient(base_url=fake.url) as http:
        assert (await http.get("/_fake/ledger")).json()["calls"] == 1
        changed = await http.put("/_fake/config", json={"faults": {"rate_500": 1.0}, "limits": {"m": {"rpm": 9}}})
        assert changed.status_code == 200
        config = (await http.get("/_fake/config")).json()
        assert config["faults"]["rate_500"] == 1.0 and config["faults"]["rate_429"] == 0.0
        assert config["limits"] == {"m": {"rpm": 9, "tpm": None}}
        assert (await http.put("/_fake/config", json={"faults": {"rate_500": 7}})).status_code == 422
        assert (await http.post("/_fake/reset")).status_code == 200
        assert (await http.get("/_fake/ledger")).json()["calls"] == 0
    with pytest.raises(openai.InternalServerError):
        await chat(sdks(fake), "m", "q")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_module_runs_as_a_subprocess(sdks: Callable[..., SDKs], tmp_path: Path) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "workers.providers.fake", "--port", str(port), "--mode", "replay"]
    log = tmp_path / "fake.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([*command, "--replay-dir", str(STUDY)], cwd=ROOT, stderr=stderr)
    try:
        url = f"http://127.0.0.1:{port}"
        assert (await _wait_until_up(url, process))["mode"] == "replay", log.read_text()
        row, query = recorded("grok-4")
        completion = await chat(sdks(url), "grok-4", query)
        assert completion.choices[0].message.content == row["response"]
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _wait_until_up(url: str, process: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + 15
    async with httpx2.AsyncClient(base_url=url) as http:
        while True:
            try:
                config: dict[str, object] = (await http.get("/_fake/config")).json()
                return config
            except httpx2.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "the fake did not start"
                await asyncio.sleep(0.1)
