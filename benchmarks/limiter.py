"""The fleet-wide limiter alone, under a TPM limit: how fast does it reach the limit, and how full does a provider's
sliding 60 s window get? No provider, database or worker process: W limiters (one per simulated worker, each with its
own pacer, as in W processes; the token estimate and the window are the fleet's, in Redis) share one key on the real
Redis, C callers each, and every call "uses" a random number of tokens and "takes" a random latency before it
settles.

Run: .venv/bin/python benchmarks/limiter.py [--tpm 120000] [--seconds 130] [--workers 3] [--callers 10]
                                            [--upper 2200] [--tokens 120-330] [--latency 0.25-0.75]
Prints tokens per 5 s, the fullest 60 s window over the limit (at 0.1 s steps; above 1.0 a provider would answer 429),
the mean window, the steady rate (from 10 s on) and the whole run's rate over the limit, and a JSON line of those
figures. Redis db 9 is flushed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import time
from typing import Any

from redis.asyncio import Redis

from workers.limits_redis import RedisLimits

REDIS_URL = "redis://127.0.0.1:6379/9"
STEP_S = 0.1
WINDOW_S = 60


def _span(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    return float(low), float(high or low)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    redis = Redis.from_url(REDIS_URL)
    await redis.flushdb()
    admitted: collections.Counter[int] = collections.Counter()
    started = time.monotonic()
    tokens_low, tokens_high = _span(args.tokens)
    latency_low, latency_high = _span(args.latency)
    workers = [RedisLimits(Redis.from_url(REDIS_URL)) for _ in range(args.workers)]

    async def caller(limits: RedisLimits) -> None:
        while time.monotonic() - started < args.seconds:
            key = limits.for_key("bench", None, args.tpm)
            reserved = await key.acquire(args.upper)
            used = random.randint(int(tokens_low), int(tokens_high))
            admitted[int((time.monotonic() - started) / STEP_S)] += used
            await asyncio.sleep(random.uniform(latency_low, latency_high))
            await key.settle(reserved, used)

    try:
        await asyncio.gather(*(caller(w) for w in workers for _ in range(args.callers)))
    finally:
        await redis.flushdb()
        for w in workers:
            await w.redis.aclose()
        await redis.aclose()
    steps = [admitted[i] for i in range(int(args.seconds / STEP_S))]
    per_window = int(WINDOW_S / STEP_S)
    windows = [sum(steps[i : i + per_window]) for i in range(0, max(len(steps) - per_window + 1, 1))]
    per_5s = int(5 / STEP_S)
    settled_from = int(10 / STEP_S)
    return {
        "benchmark": "limiter_tpm",
        "tpm": args.tpm,
        "workers": args.workers,
        "callers": args.callers,
        "tokens_per_5s": [sum(steps[i : i + per_5s]) for i in range(0, len(steps), per_5s)],
        "fullest_window_over_limit": round(max(windows) / args.tpm, 4),
        "mean_window_over_limit": round(sum(windows) / len(windows) / args.tpm, 4),
        "steady_over_limit": round(sum(steps[settled_from:]) / (args.seconds - 10) * 60 / args.tpm, 4),
        "run_over_limit": round(sum(steps) / args.seconds * 60 / args.tpm, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tpm", type=int, default=120_000)
    parser.add_argument("--seconds", type=float, default=130, help="at least 70: one whole window after the start")
    parser.add_argument("--workers", type=int, default=3, help="limiters, each as one worker process would have")
    parser.add_argument("--callers", type=int, default=10, help="calls in flight per limiter")
    parser.add_argument("--upper", type=int, default=2_200, help="a call's bound (prompt + max_tokens)")
    parser.add_argument("--tokens", default="120-330", help="what a call really uses, uniform in this range")
    parser.add_argument("--latency", default="0.25-0.75", help="seconds a call takes, uniform in this range")
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    print("tokens per 5 s:", result["tokens_per_5s"])
    for name in ("fullest_window_over_limit", "mean_window_over_limit", "steady_over_limit", "run_over_limit"):
        print(f"{name.replace('_', ' ')}: {result[name]}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
