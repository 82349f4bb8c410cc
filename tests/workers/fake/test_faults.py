"""Each injected fault reaches each SDK as the exception (or finish reason) a real provider's would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import anthropic
import httpx2
import openai
import pytest
from google.genai import errors as genai_errors
from google.genai import types

from tests.workers.fake.calls import SDKs, chat, gemini, messages, responses
from workers.providers.fake import FakeProvider


def only(fault: str) -> dict[str, float]:
    return {"rate_hang": 0.0, "rate_drop": 0.0, "rate_429": 0.0, "rate_500": 0.0, "rate_529": 0.0} | {fault: 1.0}


async def test_429(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    fake.update(faults=only("rate_429"))
    clients = sdks(fake)
    with pytest.raises(openai.RateLimitError) as openai_error:
        await chat(clients, "m", "q")
    assert openai_error.value.response.headers["retry-after"] == "1"
    assert openai_error.value.code == "rate_limit_exceeded" and openai_error.value.request_id
    with pytest.raises(anthropic.RateLimitError) as anthropic_error:
        await messages(clients, "m", "q")
    assert anthropic_error.value.response.headers["retry-after"] == "1"
    assert anthropic_error.value.type == "rate_limit_error" and anthropic_error.value.request_id
    with pytest.raises(genai_errors.ClientError) as gemini_error:
        await gemini(clients, "m", "q")
    assert gemini_error.value.code == 429 and gemini_error.value.status == "RESOURCE_EXHAUSTED"
    retry_info = [d for d in gemini_error.value.details["error"]["details"] if d["@type"].endswith("RetryInfo")]
    assert retry_info == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]


async def test_500(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    fake.update(faults=only("rate_500"))
    clients = sdks(fake)
    with pytest.raises(openai.InternalServerError) as openai_error:
        await responses(clients, "m", "q")
    assert openai_error.value.status_code == 500
    with pytest.raises(anthropic.InternalServerError) as anthropic_error:
        await messages(clients, "m", "q")
    assert anthropic_error.value.type == "api_error"
    with pytest.raises(genai_errors.ServerError) as gemini_error:
        await gemini(clients, "m", "q")
    assert gemini_error.value.code == 500


async def test_529_overloaded(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    fake.update(faults=only("rate_529"))
    clients = sdks(fake)
    with pytest.raises(anthropic.OverloadedError) as anthropic_error:
        await messages(clients, "m", "q")
    assert anthropic_error.value.status_code == 529 and anthropic_error.value.type == "overloaded_error"
    with pytest.raises(openai.InternalServerError) as openai_error:  # 503 outside Anthropic
        await chat(clients, "m", "q")
    assert openai_error.value.status_code == 503
    with pytest.raises(genai_errors.ServerError) as gemini_error:
        await gemini(clients, "m", "q")
    assert gemini_error.value.code == 503 and gemini_error.value.status == "UNAVAILABLE"


async def test_hang_times_out_the_client(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    fake.update(faults=only("rate_hang"), hang_s=5.0)
    clients = sdks(fake, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        await chat(clients, "m", "q")
    with pytest.raises(anthropic.APITimeoutError):
        await messages(clients, "m", "q")
    with pytest.raises(httpx2.ReadTimeout):  # google-genai does not wrap transport errors
        await gemini(clients, "m", "q")
    for _ in range(50):  # the fake notices each client leave, and records a "hang", not a success
        ledger = await fake.ledger()
        if ledger["in_flight"] == 0:
            break
        await asyncio.sleep(0.02)
    assert ledger["by_status"] == {"hang": 3} and ledger["successes"] == 0


async def test_hang_then_answers_a_patient_client(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    fake.update(faults=only("rate_hang"), hang_s=0.3)
    completion = await chat(sdks(fake), "m", "q")
    assert completion.choices[0].finish_reason == "stop"
    assert (await fake.ledger())["by_status"] == {"200": 1}


async def test_drop_closes_the_connection(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    fake.update(faults=only("rate_drop"))
    clients = sdks(fake)
    with pytest.raises(openai.APIConnectionError) as openai_error:
        await chat(clients, "m", "q")
    assert isinstance(openai_error.value.__cause__, httpx2.RemoteProtocolError)
    with pytest.raises(anthropic.APIConnectionError):
        await messages(clients, "m", "q")
    with pytest.raises(httpx2.RemoteProtocolError):
        await gemini(clients, "m", "q")
    assert (await fake.ledger())["by_status"] == {"drop": 3}


async def test_malformed_body_fails_to_parse(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    fake.update(faults={"rate_malformed": 1.0})
    clients = sdks(fake)
    for call in (chat, responses, messages, gemini):
        with pytest.raises(json.JSONDecodeError):
            await call(clients, "m", "q")
    assert (await fake.ledger())["by_status"] == {"malformed": 4}


async def test_content_filter_finish_reasons(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    fake.update(faults={"rate_content_filter": 1.0})
    clients = sdks(fake)
    completion = await chat(clients, "m", "q")
    assert completion.choices[0].finish_reason == "content_filter" and completion.choices[0].message.content == ""
    response = await responses(clients, "m", "q")
    assert response.status == "incomplete" and response.incomplete_details.reason == "content_filter"
    assert response.output_text == ""
    message = await messages(clients, "m", "q")
    assert message.stop_reason == "refusal" and message.content == []
    result = await gemini(clients, "m", "q")
    assert result.candidates[0].finish_reason == types.FinishReason.SAFETY and result.text is None


async def test_faults_are_deterministic_and_a_retry_can_succeed(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    fake.update(faults={"rate_500": 0.5})
    clients = sdks(fake)

    async def outcomes() -> list[str]:
        results = []
        for _ in range(10):
            try:
                await chat(clients, "m", "the same question")
                results.append("ok")
            except openai.InternalServerError:
                results.append("500")
        return results

    first = await outcomes()
    assert "ok" in first and "500" in first
    fake.reset()
    assert await outcomes() == first
