"""The fake's pure parts: prompt extraction, sentence banks, profiles, rate windows, config merging, replay index."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.workers.fake.calls import STUDY, judgements, queries, recorded, responses_of
from workers.providers.fake import FakeConfig, LimitConfig, ModelProfile
from workers.providers.fake.common import Draws, ErrorReply, Wire
from workers.providers.fake.config import merge_config
from workers.providers.fake.limits import RateLimiter
from workers.providers.fake.parse import parse_anthropic, parse_chat, parse_gemini, parse_responses
from workers.providers.fake.replay import ReplayStore
from workers.providers.fake.simulate import build_profile, classify, compose, default_profile
from workers.providers.fake.wire import duration

USER_PARTS = [{"type": "input_text", "text": "U"}]


def test_prompt_is_system_then_user_in_every_format() -> None:
    chat = parse_chat(
        {"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}
    )
    responses = parse_responses({"model": "m", "instructions": "S", "input": [{"role": "user", "content": USER_PARTS}]})
    anthropic = parse_anthropic(
        {"model": "m", "system": [{"type": "text", "text": "S"}], "messages": [{"role": "user", "content": "U"}]}
    )
    gemini = parse_gemini(
        {"contents": [{"role": "user", "parts": [{"text": "U"}]}], "systemInstruction": {"parts": [{"text": "S"}]}},
        "models/m",
    )
    for parsed in (chat, responses, anthropic, gemini):
        assert (parsed.model, parsed.prompt, parsed.user) == ("m", "S\n\nU", "U")
    assert parse_chat({"model": "m", "messages": [{"role": "user", "content": "U"}]}).prompt == "U"
    assert gemini.wire is Wire.gemini


def test_what_a_request_asks_for_is_recognised() -> None:
    assert not parse_chat({"model": "m", "messages": [], "reasoning": {"exclude": True}}).wants_reasoning
    tools = {"tools": [{"name": "t"}], "tool_choice": {"type": "tool", "name": "t"}}
    assert parse_anthropic({"model": "m", "messages": [], **tools}).tool_name == "t"
    assert parse_anthropic({"model": "m", "messages": [], "thinking": {"type": "adaptive"}}).wants_reasoning
    config = {"responseMimeType": "application/json", "thinkingConfig": {"include_thoughts": True}}
    assert parse_gemini({"contents": [], "generationConfig": config}, "m").wants_reasoning
    off = {"thinkingConfig": {"includeThoughts": False}}
    assert not parse_gemini({"contents": [], "generationConfig": off}, "m").wants_reasoning


@pytest.mark.parametrize("seed", range(3))
def test_answers_are_60_to_250_words_except_hard_refusals(seed: int) -> None:
    profile = build_profile("any", None)
    kinds = set()
    for i in range(300):
        composed = compose(profile, Draws(seed, "any", f"prompt {i}"))
        kinds.add(composed.response_type)
        words = len(composed.text.split())
        if composed.response_type == "hard_refusal":
            assert words < 60
        else:
            assert 60 <= words <= 250
        assert classify(composed.text, Draws(0))["response_type"] == composed.response_type
    assert kinds == {"helps", "hard_refusal", "deflection"}


def test_profiles_derive_from_the_name_and_take_overrides() -> None:
    assert default_profile("fake-a") != default_profile("fake-b")
    assert default_profile("fake-a") == default_profile("fake-a")
    override = ModelProfile(helps=1, hard_refusal=0, deflection=0)
    forced = build_profile("fake-a", override)
    assert forced.helps == 1.0 and forced.engagement == default_profile("fake-a").engagement
    assert all(compose(forced, Draws(i)).response_type == "helps" for i in range(20))


def test_rate_window_retry_after() -> None:
    limiter = RateLimiter()
    limit = LimitConfig(rpm=2, tpm=None)
    assert limiter.check("m", limit, 10, now=100.0).allowed
    assert limiter.check("m", limit, 10, now=110.0).allowed
    rejected = limiter.check("m", limit, 10, now=120.0)
    assert not rejected.allowed and rejected.retry_after_s == 40 and rejected.exceeded == "requests"
    assert limiter.check("m", limit, 10, now=160.5).allowed  # the first call left the window
    assert limiter.check("other", limit, 10, now=120.0).allowed


def test_token_window() -> None:
    limiter = RateLimiter()
    limit = LimitConfig(rpm=None, tpm=100)
    assert limiter.check("m", limit, 60, now=0.0).allowed
    assert limiter.check("m", limit, 30, now=1.0).allowed
    rejected = limiter.check("m", limit, 50, now=2.0)
    assert not rejected.allowed and rejected.retry_after_s == 58 and rejected.exceeded == "tokens"
    assert rejected.state.remaining_tokens == 10
    assert limiter.check("m", limit, 500, now=3.0).retry_after_s == 60  # can never fit


def test_openai_reset_durations() -> None:
    assert duration(0.012) == "12ms"
    assert duration(1.5) == "1.5s"
    assert duration(360) == "6m0s"


def test_partial_config_merges_faults_and_replaces_limits() -> None:
    config = FakeConfig(limits={"a": {"rpm": 1}}, faults={"rate_429": 0.1})
    merged = merge_config(config, {"faults": {"rate_500": 0.2}, "limits": {"b": {"tpm": 5}}})
    assert merged.faults.rate_429 == 0.1 and merged.faults.rate_500 == 0.2
    assert set(merged.limits) == {"b"}
    with pytest.raises(ValidationError):
        merge_config(config, {"mode": "replay"})  # replay needs a folder
    with pytest.raises(ValidationError):
        FakeConfig(faults={"rate_typo": 1})
    with pytest.raises(ValidationError):
        ModelProfile(helps=0, hard_refusal=0, deflection=0)


def test_replay_index() -> None:
    store = ReplayStore.load(STUDY)
    assert store.slugs == {p.name.removesuffix(".jsonl.gz") for p in (STUDY / "responses").iterdir()}
    row, query = recorded("gemini-3-1-pro")
    answer = store.answer("google/gemini-3-1-pro", f"  {query}\n")
    assert not isinstance(answer, ErrorReply) and answer.text == row["response"]
    labels = store.judgement(row["response"], query)
    recorded_labels = judgements("gemini-3-1-pro")[row["case_id"]]
    assert labels is not None and labels["reasoning"] == recorded_labels["reasoning"]
    missing = store.answer("gemini-3-1-pro", "nobody asked this")
    assert isinstance(missing, ErrorReply) and missing.status == 404


def test_replay_usage_is_the_recorded_usage_for_every_answer() -> None:
    store = ReplayStore.load(STUDY)
    for slug in store.slugs:
        for row in responses_of(slug):
            answer = store.answer(slug, queries()[row["case_id"]])
            if row["status"] == "error":
                assert isinstance(answer, ErrorReply) and answer.status == 400
                continue
            assert not isinstance(answer, ErrorReply) and answer.text == row["response"]
            usage = row["usage"]
            recorded_usage = (usage["prompt_tokens"], usage["completion_tokens"], usage["reasoning_tokens"])
            assert (answer.usage.input, answer.usage.output, answer.usage.reasoning) == recorded_usage
