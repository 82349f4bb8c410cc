"""The call ledger: every model call, its outcome, duplicates, idempotent replays and concurrency."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

SUCCESS = "200"
IDEMPOTENT_REPLAY = "idempotent_replay"  # answered from the idempotency store; shown under "200" in by_status
RATE_LIMITED = "429"
MAX_DUPLICATES = 100


class Ticket(NamedTuple):
    """A call's place in the ledger: how many calls of its (model, prompt) came before, and the ledger's generation."""

    attempt: int
    generation: int


@dataclass
class _ModelStats:
    calls: int = 0
    successes: int = 0
    rate_limited: int = 0
    in_flight: int = 0
    peak_concurrency: int = 0
    first_at: float | None = None
    last_at: float | None = None
    # tokens of the calls let through the limits (what a TPM window counts), and when the first and last came
    tokens: int = 0
    tokens_first_at: float | None = None
    tokens_last_at: float | None = None
    # the most tokens the model's TPM window held, and per whole second since the first admitted call: the tokens
    # admitted, and the calls answered 429 (where a limiter overfills the window, and when)
    peak_window_tokens: int = 0
    tokens_per_s: Counter[int] = field(default_factory=Counter)
    rate_limited_per_s: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        span = (self.last_at or 0.0) - (self.first_at or 0.0)
        token_span = (self.tokens_last_at or 0.0) - (self.tokens_first_at or 0.0)
        return {
            "calls": self.calls,
            "successes": self.successes,
            "rate_limited": self.rate_limited,
            "peak_concurrency": self.peak_concurrency,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "achieved_rpm": self.successes / span * 60 if span > 0 else None,
            "tokens": self.tokens,
            "achieved_tpm": self.tokens / token_span * 60 if token_span > 0 else None,
            "peak_window_tokens": self.peak_window_tokens,
            "tokens_per_s": [self.tokens_per_s[s] for s in range(max(self.tokens_per_s, default=-1) + 1)],
            "rate_limited_per_s": dict(sorted(self.rate_limited_per_s.items())),
        }

    def second(self, now: float) -> int:
        return int(now - self.tokens_first_at) if self.tokens_first_at is not None else 0


class Ledger:
    """Counts kept in memory; ``snapshot()`` is what ``GET /_fake/ledger`` returns."""

    def __init__(self) -> None:
        self.generation = 0
        self.reset()

    def reset(self) -> None:
        """Forget every call; calls still in flight are left out of the fresh ledger when they finish."""
        self.generation += 1
        self.calls = 0
        self.by_status: Counter[str] = Counter()
        self.successes = 0
        self.idempotent_replays = 0
        self.duplicate_successes = 0
        self.in_flight = 0
        self.peak_concurrency = 0
        self._per_prompt_calls: Counter[tuple[str, str]] = Counter()
        self._per_prompt_successes: Counter[tuple[str, str]] = Counter()
        # calls per Idempotency-Key (a unit of the caller's work), whatever their outcome
        self._per_unit_calls: Counter[str] = Counter()
        self._models: dict[str, _ModelStats] = {}

    def begin(self, model: str, prompt_sha256: str) -> Ticket:
        """Count a call arriving."""
        key = (model, prompt_sha256)
        earlier = self._per_prompt_calls[key]
        self._per_prompt_calls[key] = earlier + 1
        self.calls += 1
        self.in_flight += 1
        self.peak_concurrency = max(self.peak_concurrency, self.in_flight)
        stats = self._models.setdefault(model, _ModelStats())
        stats.calls += 1
        stats.in_flight += 1
        stats.peak_concurrency = max(stats.peak_concurrency, stats.in_flight)
        return Ticket(earlier, self.generation)

    def admitted(self, model: str, tokens: int, window_tokens: int = 0) -> None:
        """Count the tokens of a call the limits let through (``window_tokens``: its TPM window's sum with them)."""
        now = time.time()
        stats = self._models.setdefault(model, _ModelStats())
        stats.tokens += tokens
        stats.tokens_first_at = stats.tokens_first_at or now
        stats.tokens_last_at = now
        stats.tokens_per_s[stats.second(now)] += tokens
        stats.peak_window_tokens = max(stats.peak_window_tokens, window_tokens)

    def finish(self, model: str, prompt_sha256: str, outcome: str, generation: int, unit: str | None = None) -> None:
        """Count a call's outcome: an HTTP status ("200", "429", ...), "malformed", "drop", "hang" or a replay.

        ``unit`` is the caller's Idempotency-Key: two different units may send the same prompt (two models giving
        the judge the same answer to the same case); only repeats of one unit, or of a keyless prompt, are
        duplicates.
        """
        if generation != self.generation:
            return
        self.in_flight -= 1
        stats = self._models.setdefault(model, _ModelStats())
        stats.in_flight -= 1
        if unit:
            self._per_unit_calls[unit] += 1
        if outcome == IDEMPOTENT_REPLAY:
            self.idempotent_replays += 1
            self.by_status[SUCCESS] += 1
            return
        self.by_status[outcome] += 1
        if outcome == RATE_LIMITED:
            stats.rate_limited += 1
            stats.rate_limited_per_s[stats.second(time.time())] += 1
        if outcome == SUCCESS:
            self._success(model, f"{prompt_sha256}:{unit}" if unit else prompt_sha256, stats)

    def _success(self, model: str, prompt_sha256: str, stats: _ModelStats) -> None:
        now = time.time()
        self.successes += 1
        key = (model, prompt_sha256)
        self._per_prompt_successes[key] += 1
        if self._per_prompt_successes[key] > 1:
            self.duplicate_successes += 1
        stats.successes += 1
        stats.first_at = stats.first_at or now
        stats.last_at = now

    def snapshot(self, by_unit: bool = False) -> dict[str, Any]:
        """The ledger as JSON-ready data; ``by_unit`` adds the calls per Idempotency-Key (large for a large run)."""
        repeated = sorted(
            ((key, count) for key, count in self._per_prompt_successes.items() if count > 1), key=lambda kc: -kc[1]
        )
        duplicates = [
            {"model": model, "prompt_sha256": sha, "count": count} for (model, sha), count in repeated[:MAX_DUPLICATES]
        ]
        return {
            "calls": self.calls,
            "by_status": dict(self.by_status),
            "successes": self.successes,
            "idempotent_replays": self.idempotent_replays,
            "duplicate_successes": self.duplicate_successes,
            "duplicates": duplicates,
            "peak_concurrency": self.peak_concurrency,
            "in_flight": self.in_flight,
            "by_model": {model: stats.as_dict() for model, stats in self._models.items()},
        } | ({"by_unit": dict(self._per_unit_calls)} if by_unit else {})
