"""Replay: the study's recorded answers verbatim with their usage, recorded errors, and the recorded judgements."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import openai
import pytest
from google.genai import errors as genai_errors
from pydantic import BaseModel

from tests.workers.fake.calls import SDKs, chat, gemini, judgements, messages, recorded, responses, unjudged
from workers.providers.fake import FakeProvider
from workers.providers.fake.simulate import INVALID_JUDGE_TEXT


class Verdict(BaseModel):
    response_type: str
    engages_with_defeat: bool
    independent_harm: bool
    reasoning: str


def judge_prompt(answer: str, request: str) -> str:
    return f"Judge this.\n<user_request>{request}</user_request>\n<response>\n{answer}\n</response>"


async def test_recorded_answer_verbatim_with_usage(replay: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    row, query = recorded("grok-4")
    usage = row["usage"]
    clients = sdks(replay)
    completion = await chat(clients, "grok-4", query)
    assert completion.choices[0].message.content == row["response"]
    assert completion.usage.prompt_tokens == usage["prompt_tokens"]
    assert completion.usage.completion_tokens == usage["completion_tokens"]
    assert completion.usage.completion_tokens_details.reasoning_tokens == usage["reasoning_tokens"]
    assert completion.usage.prompt_tokens_details.cached_tokens == usage["cached_tokens"]

    response = await responses(clients, "x-ai/grok-4", query)  # any prefix/slug
    assert response.output_text == row["response"]
    assert response.usage.output_tokens_details.reasoning_tokens == usage["reasoning_tokens"]

    message = await messages(clients, "grok-4", query)
    assert message.content[0].text == row["response"]
    # Anthropic's three input counts add up to the prompt
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens == usage["prompt_tokens"]
    assert message.usage.cache_read_input_tokens == usage["cached_tokens"]
    assert message.usage.output_tokens == usage["completion_tokens"]
    assert message.usage.output_tokens_details.thinking_tokens == usage["reasoning_tokens"]

    result = await gemini(clients, "grok-4", query)
    assert result.text == row["response"]
    meta = result.usage_metadata
    assert meta.prompt_token_count == usage["prompt_tokens"]
    assert meta.candidates_token_count == usage["completion_tokens"] - usage["reasoning_tokens"]
    assert meta.thoughts_token_count == usage["reasoning_tokens"]
    assert meta.cached_content_token_count == usage["cached_tokens"]


async def test_recorded_error_is_400(replay: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    row, query = recorded("grok-4", status="error")
    expected = f"replayed recorded error: {row['error_message']}"
    clients = sdks(replay)
    with pytest.raises(openai.BadRequestError) as openai_error:
        await chat(clients, "grok-4", query)
    assert openai_error.value.status_code == 400 and expected in str(openai_error.value)
    with pytest.raises(anthropic.BadRequestError) as anthropic_error:
        await messages(clients, "grok-4", query)
    assert anthropic_error.value.type == "invalid_request_error"
    with pytest.raises(genai_errors.ClientError) as gemini_error:
        await gemini(clients, "grok-4", query)
    assert gemini_error.value.code == 400 and gemini_error.value.message == expected


async def test_unknown_model_or_query_is_404(replay: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    _, query = recorded("grok-4")
    clients = sdks(replay)
    with pytest.raises(openai.NotFoundError) as unknown_model:
        await chat(clients, "no-such-model", query)
    assert unknown_model.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await chat(clients, "grok-4", "a query nobody recorded")
    with pytest.raises(anthropic.NotFoundError) as anthropic_error:
        await messages(clients, "no-such-model", query)
    assert anthropic_error.value.type == "not_found_error"
    with pytest.raises(genai_errors.ClientError) as gemini_error:
        await gemini(clients, "grok-4", "a query nobody recorded")
    assert gemini_error.value.code == 404 and gemini_error.value.status == "NOT_FOUND"


async def test_replay_judge_returns_recorded_labels(replay: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    clients = sdks(replay)
    labels = judgements("grok-4")
    for skip in range(6):
        row, query = recorded("grok-4", skip=skip)
        recorded_labels = labels[row["case_id"]]
        completion = await clients.openai.chat.completions.parse(
            model="replay-judge",
            messages=[{"role": "user", "content": judge_prompt(row["response"], query)}],
            response_format=Verdict,
        )
        verdict = completion.choices[0].message.parsed
        assert verdict is not None
        kind = {"deflects": "deflection"}.get(recorded_labels["response_type"], recorded_labels["response_type"])
        assert verdict.response_type == kind
        assert verdict.engages_with_defeat is (recorded_labels["engages_with_defeat"] == "yes")
        assert verdict.independent_harm is recorded_labels["independent_harm"]
        assert verdict.reasoning == recorded_labels["reasoning"]


async def test_replay_judge_without_a_recorded_judgement(replay: FakeProvider, sdks: Callable[..., SDKs]) -> None:
    row, query = unjudged("claude-sonnet-4-6")
    clients = sdks(replay)
    dropped = await chat(clients, "replay-judge", judge_prompt(row["response"], query))
    assert dropped.choices[0].message.content == INVALID_JUDGE_TEXT
    unknown = await chat(clients, "replay-judge", judge_prompt("An answer nobody recorded.", query))
    assert unknown.choices[0].message.content == INVALID_JUDGE_TEXT
