"""benchmarks/limiter.py against the real Redis: its figures, and the limiter they measure holding a TPM limit."""

from __future__ import annotations

import argparse

import limiter


async def test_the_limiter_benchmark_keeps_a_tpm_budget_from_the_first_second() -> None:
    # 60,000 TPM at 0.99: 990 tokens a second; calls of 100-200 tokens that declare a bound of 2,000
    args = argparse.Namespace(
        tpm=60_000, seconds=5.0, workers=2, callers=5, upper=2_000, tokens="100-200", latency="0.1-0.2"
    )
    result = await limiter.measure(args)
    admitted = sum(result["tokens_per_5s"])
    # never more than the rate allows (plus a quarter second and one call) ...
    assert admitted <= 990 * (5.0 + 0.25) + 200
    # ... and not held back by the bound the calls declared (at 2,000 tokens a call that would be ~2,500 in 5 s)
    assert admitted >= 0.7 * 990 * 5.0
    assert result["fullest_window_over_limit"] == round(admitted / 60_000, 4)  # a run shorter than one window
    assert result["run_over_limit"] == round(admitted / 5.0 * 60 / 60_000, 4)
