"""The retry policy: permanent failures end at once, 429s wait for the reset, transient ones back off."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from service.settings import ExecutorSettings
from workers.providers.base import ProviderError, RetryDecision, RetryKind
from workers.providers.errors import classify, parse_duration, reason_for_status, retry_after
from workers.retry import Next, backoff, next_step

SETTINGS = ExecutorSettings(max_attempts=4, max_rate_limited=10, quarantine_after=3, backoff_base_s=1, backoff_cap_s=30)


def step(
    kind: RetryKind, attempts: int = 1, rate_limited: int = 0, repeats: int = 1, after: float | None = None
) -> Next:
    decision = RetryDecision(kind, "why", after)
    return next_step(decision, attempts=attempts, rate_limited=rate_limited, error_repeats=repeats, settings=SETTINGS)


def test_statuses_are_classified_like_the_design_says() -> None:
    statuses = (400, 401, 402, 403, 404, 408, 409, 422, 429, 500, 503, 529)
    kinds = {s: classify(ProviderError(reason_for_status(s), "x", status=s)).kind for s in statuses}
    assert kinds == {
        400: RetryKind.never, 401: RetryKind.never, 402: RetryKind.never, 403: RetryKind.never,
        404: RetryKind.never, 408: RetryKind.transient, 409: RetryKind.transient, 422: RetryKind.never,
        429: RetryKind.rate_limited, 500: RetryKind.transient, 503: RetryKind.transient, 529: RetryKind.transient,
    }  # fmt: skip
    assert classify(ProviderError("quota_exhausted", "x", status=429)).kind is RetryKind.never


def test_permanent_failures_end_at_once() -> None:
    result = step(RetryKind.never)
    assert result.final and result.reason == "why"


def test_rate_limits_wait_for_the_reset_and_have_their_own_budget() -> None:
    waiting = step(RetryKind.rate_limited, attempts=9, rate_limited=8, after=7.0)
    assert not waiting.final and 7.0 <= waiting.delay_s <= 7.25
    assert step(RetryKind.rate_limited, attempts=10, rate_limited=10).final


def test_transient_failures_stop_after_the_attempts_not_counting_429s() -> None:
    assert not step(RetryKind.transient, attempts=5, rate_limited=2).final
    assert step(RetryKind.transient, attempts=6, rate_limited=2).final


def test_identical_repeats_are_quarantined() -> None:
    result = step(RetryKind.transient, attempts=3, repeats=3)
    assert result.final and result.reason.startswith("quarantined")


@given(attempt=st.integers(0, 40), seed=st.integers())
def test_backoff_is_full_jitter_under_the_cap(attempt: int, seed: int) -> None:
    delay = backoff(attempt, SETTINGS, random.Random(seed))
    assert 0 <= delay <= min(SETTINGS.backoff_cap_s, SETTINGS.backoff_base_s * 2 ** max(attempt - 1, 0))


def test_retry_after_is_read_from_every_header_style() -> None:
    assert retry_after({"retry-after": "3"}) == 3
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    openai = {"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "1.5s"}
    assert retry_after(openai | {"x-ratelimit-remaining-requests": "0"}) == 360
    assert retry_after(openai | {"x-ratelimit-remaining-tokens": "0"}) == 1.5
    assert retry_after(openai) == 1.5
    assert 1 < (retry_after({"anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00Z"}) or 0)
    assert 9 < (retry_after({"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"}) or 0)
    assert retry_after({}) is None
    assert parse_duration("120ms") == 0.12 and parse_duration("2h30m") == 9000 and parse_duration("soon") is None
