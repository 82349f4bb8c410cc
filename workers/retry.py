"""The one retry policy: what happens to a unit after a failed call."""

from __future__ import annotations

import random
from dataclasses import dataclass

from service.settings import ExecutorSettings
from workers.providers.base import RetryDecision, RetryKind

DEFAULT_RATE_LIMIT_WAIT_S = 2.0


@dataclass(frozen=True)
class Next:
    """Either a final failure with a reason, or another try after ``delay_s``."""

    final: bool
    reason: str
    delay_s: float = 0.0


def backoff(attempt: int, settings: ExecutorSettings, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
    ceiling = min(settings.backoff_cap_s, settings.backoff_base_s * 2 ** max(attempt - 1, 0))
    return (rng or random).uniform(0, ceiling)


def next_step(
    decision: RetryDecision,
    *,
    attempts: int,
    rate_limited: int,
    error_repeats: int,
    settings: ExecutorSettings,
    rng: random.Random | None = None,
) -> Next:
    """Decide a failed unit's fate. ``attempts`` and ``rate_limited`` include the call that just failed.

    429s wait for the provider's reset (the caller pauses the key for everyone) and have their own budget;
    transient failures back off with jitter; an identical failure repeated ``quarantine_after`` times in a row is
    quarantined rather than retried until the attempts run out; permanent failures end at once.
    """
    if decision.kind is RetryKind.never:
        return Next(True, decision.reason)
    if decision.kind is RetryKind.rate_limited:
        if rate_limited >= settings.max_rate_limited:
            return Next(True, f"{decision.reason}: still limited after {rate_limited} waits")
        wait = decision.retry_after_s if decision.retry_after_s is not None else DEFAULT_RATE_LIMIT_WAIT_S
        return Next(False, decision.reason, wait + (rng or random).uniform(0, 0.25))
    if error_repeats >= settings.quarantine_after:
        return Next(True, f"quarantined: {decision.reason} repeated {error_repeats} times")
    if attempts - rate_limited >= settings.max_attempts:
        return Next(True, f"{decision.reason} after {attempts - rate_limited} attempts")
    delay = backoff(attempts - rate_limited, settings, rng)
    if decision.retry_after_s is not None:
        delay = max(delay, decision.retry_after_s)
    return Next(False, decision.reason, delay)
