"""Local pacing: even spacing under an RPM limit, token debt, and a pause that holds every caller."""

from __future__ import annotations

import asyncio
import time

import pytest

from workers.limits import KeyLimits, Limits, TokenEstimate


async def test_rpm_is_paced_evenly_not_in_bursts() -> None:
    limits = KeyLimits(rpm=1200, tpm=None, safety=1.0)  # one call every 50 ms
    started = time.monotonic()
    stamps = []
    for _ in range(11):
        await limits.acquire(10)
        stamps.append(time.monotonic() - started)
    assert 0.45 <= stamps[-1] <= 0.8
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert min(gaps[1:]) >= 0.035


async def test_a_pause_holds_every_caller_until_it_ends() -> None:
    limits = KeyLimits(rpm=None, tpm=None, safety=1.0)
    await limits.pause(0.3)
    started = time.monotonic()
    await asyncio.gather(*(limits.acquire(1) for _ in range(5)))
    assert time.monotonic() - started >= 0.29


async def test_tokens_over_the_estimate_are_taken_from_the_next_call() -> None:
    limits = KeyLimits(rpm=None, tpm=60_000, safety=1.0)  # 6,000 tokens per 6 s bucket, 1,000 a second
    await limits.settle(await limits.acquire(5_000), 5_900)
    started = time.monotonic()
    await limits.acquire(1_000)  # 1,000 + 900 owed, with 1,000 free: waits for ~900 to leak, about 0.9 s
    assert 0.75 <= time.monotonic() - started <= 1.5


async def test_calls_already_waiting_follow_a_changed_limit() -> None:
    source = Limits(safety=1.0)
    slow = source.for_key("k", 60, None)  # one call a second: six calls would take five seconds
    started = time.monotonic()
    waiting = [asyncio.create_task(slow.acquire(1)) for _ in range(6)]
    await asyncio.sleep(0.2)
    source.for_key("k", 6_000, None)  # the same key, now 100 a second
    await asyncio.gather(*waiting)
    assert time.monotonic() - started < 2.0


async def test_target_and_judge_traffic_have_separate_budgets_but_share_a_pause() -> None:
    source = Limits(safety=1.0)
    target, judge = source.for_key("k", 60, None), source.for_key("k", 60, None, pool="judge")
    started = time.monotonic()
    await asyncio.gather(target.acquire(1), judge.acquire(1))  # one call each, at once: no shared budget
    assert time.monotonic() - started < 0.3
    await target.pause(0.3)  # a 429 stops the provider key, whoever made the call
    started = time.monotonic()
    await KeyLimits(None, None, 1.0).acquire(1)
    paused = source.for_key("k", None, None, pool="judge")
    await paused.acquire(1)
    assert time.monotonic() - started >= 0.28


@pytest.mark.parametrize("tpm", [60_000, None])
async def test_a_tpm_budget_reserves_what_calls_really_use_once_it_has_seen_some(tpm: int | None) -> None:
    limits = Limits(safety=1.0).for_key("k", None, tpm)
    assert limits.estimate(2_050) == 2_050  # nothing seen yet: the caller's bound (prompt plus max_tokens)
    for used in (180, 220, 200, 190, 210):
        await limits.settle(await limits.acquire(2_050), used)
    # with a TPM limit, a high quantile of what the calls used (never above the bound); without one, no need
    estimate = limits.estimate(2_050)
    assert (220 <= estimate <= 300) if tpm else estimate == 2_050
    assert limits.estimate(100) == 100


async def test_calls_waiting_when_the_first_settles_reserve_by_it_not_by_their_bound() -> None:
    limits = KeyLimits(rpm=None, tpm=60_000, safety=1.0)  # 6,000 tokens per 6 s bucket, 1,000 a second
    started = time.monotonic()
    first = await limits.acquire(3_500)  # nothing seen: the bound
    waiting = [asyncio.create_task(limits.acquire(3_500)) for _ in range(4)]
    await asyncio.sleep(0.1)
    await limits.settle(first, 200)
    # they start over by twice what the first used and fit at once (at 3,500 each they would wait 14 s)
    assert [r.tokens for r in await asyncio.gather(*waiting)] == [400] * 4
    assert time.monotonic() - started < 1.0


def test_the_estimate_covers_the_spread_of_usage_and_follows_a_change() -> None:
    estimate = TokenEstimate()
    for _ in range(50):
        estimate.observe(200)
    assert estimate.of(100_000) == 200  # no spread: the mean
    estimate.observe(10_000)  # a long answer: more room for the next calls, not all of it
    assert 200 < estimate.of(100_000) < 10_000
    for _ in range(300):
        estimate.observe(1_000)
    assert estimate.of(100_000) == pytest.approx(1_000, rel=0.05)
