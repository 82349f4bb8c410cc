"""Each wire format parses in its official SDK: text, usage, finish reason, request id, reasoning."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import httpx2
from google.genai import types

from tests.workers.fake.calls import SDKs, chat, gemini, messages, responses
from workers.providers.fake import FakeProvider
from workers.providers.fake.common import Draws
from workers.providers.fake.simulate import build_profile, compose

SYSTEM = "You are a careful assistant."
USER = "My landlord's rule bans bikes in the hall. How do I store mine?"
PROMPT = f"{SYSTEM}\n\n{USER}"


def thinker(fake: FakeProvider) -> str:
    fake.update(models={"fake-thinker": {"reasoning": True}, "fake-plain": {"reasoning": False}})
    return "fake-thinker"


def expected_text(model: str) -> str:
    return compose(build_profile(model, None), Draws(0, model, PROMPT)).text


async def test_openai_chat(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    raw = await sdks(fake).openai.chat.completions.with_raw_response.create(
        model="fake-plain", messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    )
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.message.content == expected_text("fake-plain")
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == math.ceil(len(PROMPT) / 4)
    assert completion.usage.completion_tokens == math.ceil(len(choice.message.content) / 4)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert raw.request_id and raw.request_id.startswith("req_") and completion._request_id == raw.request_id


async def test_openai_chat_reasoning_openrouter_style(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    completion = await chat(sdks(fake), thinker(fake), USER, SYSTEM)
    reasoning = completion.choices[0].message.reasoning
    assert isinstance(reasoning, str) and reasoning
    details = completion.usage.completion_tokens_details
    assert details.reasoning_tokens == math.ceil(len(reasoning) / 4)
    text_tokens = math.ceil(len(completion.choices[0].message.content) / 4)
    assert completion.usage.completion_tokens == text_tokens + details.reasoning_tokens
    excluded = await chat(sdks(fake), "fake-thinker", USER, SYSTEM, extra_body={"reasoning": {"exclude": True}})
    assert (excluded.choices[0].message.model_extra or {}).get("reasoning") is None


async def test_openai_responses(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    model = thinker(fake)
    response = await responses(sdks(fake), model, USER, SYSTEM, reasoning={"effort": "low", "summary": "auto"})
    assert response.status == "completed"
    assert response.output_text == expected_text(model)
    summaries = [s.text for item in response.output if item.type == "reasoning" for s in item.summary]
    assert len(summaries) == 1 and summaries[0]
    assert response.usage.input_tokens == math.ceil(len(PROMPT) / 4)
    assert response.usage.output_tokens_details.reasoning_tokens == math.ceil(len(summaries[0]) / 4)
    assert response._request_id and response.id.startswith("resp_")


async def test_anthropic_messages(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    model = thinker(fake)
    client = sdks(fake).anthropic
    raw = await client.messages.with_raw_response.create(
        model=model,
        max_tokens=1000,
        system=SYSTEM,
        messages=[{"role": "user", "content": USER}],
        thinking={"type": "adaptive"},
    )
    message = await raw.parse()
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "text"]
    assert message.content[1].text == expected_text(model)
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == math.ceil(len(PROMPT) / 4)
    thinking_tokens = math.ceil(len(message.content[0].thinking) / 4)
    assert message.usage.output_tokens_details.thinking_tokens == thinking_tokens
    assert raw.request_id == message._request_id and raw.request_id.startswith("req_")
    plain = await messages(sdks(fake), model, USER, SYSTEM)  # no thinking asked: no thinking block
    assert [block.type for block in plain.content] == ["text"]


async def test_gemini_generate_content(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    model = thinker(fake)
    thinking = types.ThinkingConfig(include_thoughts=True, thinking_budget=1024)
    response = await gemini(sdks(fake), model, USER, SYSTEM, thinking_config=thinking)
    parts = response.candidates[0].content.parts
    assert [bool(p.thought) for p in parts] == [True, False]
    assert response.text == expected_text(model)
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage.prompt_token_count == math.ceil(len(PROMPT) / 4)
    assert usage.thoughts_token_count == math.ceil(len(parts[0].text) / 4)
    assert usage.candidates_token_count == math.ceil(len(response.text) / 4)
    assert response.response_id


async def test_gemini_v1beta_and_models_prefix(fake: FakeProvider) -> None:
    options = types.HttpOptions(base_url=fake.url, api_version="v1beta", timeout=10_000)
    from google import genai

    async with genai.Client(api_key="x", http_options=options).aio as client:
        response = await client.models.generate_content(model="models/fake-plain", contents=USER)
    assert response.text == compose(build_profile("fake-plain", None), Draws(0, "fake-plain", USER)).text


async def test_same_prompt_same_answer_in_every_format(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    clients = sdks(fake)
    first = await chat(clients, "fake-a", USER, SYSTEM)
    again = await chat(clients, "fake-a", USER, SYSTEM)
    via_responses = await responses(clients, "fake-a", USER, SYSTEM)
    via_anthropic = await messages(clients, "fake-a", USER, SYSTEM)
    via_gemini = await gemini(clients, "fake-a", USER, SYSTEM)
    text = first.choices[0].message.content
    assert text == again.choices[0].message.content == via_responses.output_text
    assert text == via_anthropic.content[0].text == via_gemini.text
    # the ledger keys on (model, system + "\n\n" + user), whatever the format
    ledger = await fake.ledger()
    sha = hashlib.sha256(PROMPT.encode()).hexdigest()
    assert ledger["duplicates"] == [{"model": "fake-a", "prompt_sha256": sha, "count": 5}]


async def test_models_behave_differently(fake: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    clients = sdks(fake)
    answers = {
        model: [(await chat(clients, model, f"question {i}")).choices[0].message.content for i in range(3)]
        for model in ("fake-a", "fake-b", "fake-c")
    }
    assert len({tuple(texts) for texts in answers.values()}) == 3


async def test_missing_key_is_401_in_each_format(fake: FakeProvider) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    async with httpx2.AsyncClient(base_url=fake.url) as http:
        chat_reply = await http.post("/v1/chat/completions", json=body)
        anthropic_reply = await http.post("/v1/messages", json=body, headers={"authorization": "Bearer"})
        gemini_reply = await http.post("/v1/models/m:generateContent", json={"contents": [{"parts": [{"text": "x"}]}]})
    assert chat_reply.status_code == 401 and chat_reply.json()["error"]["code"] == "invalid_api_key"
    assert anthropic_reply.status_code == 401 and anthropic_reply.json()["error"]["type"] == "authentication_error"
    assert gemini_reply.status_code == 401 and gemini_reply.json()["error"]["status"] == "UNAUTHENTICATED"
