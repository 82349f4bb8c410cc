"""Per-model sliding 60 s windows of requests (RPM) and tokens (TPM); a rejected call takes no room."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from workers.providers.fake.config import LimitConfig

WINDOW_S = 60.0


@dataclass(frozen=True)
class RateState:
    """What the rate-limit headers say after a call: limits, what remains, seconds until the window frees room."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float = 0.0
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float = 0.0

    @property
    def window_tokens(self) -> int:
        """The tokens the TPM window holds (0 without a TPM limit)."""
        if self.limit_tokens is None or self.remaining_tokens is None:
            return 0
        return self.limit_tokens - self.remaining_tokens


@dataclass(frozen=True)
class Decision:
    """Whether a call is let through; when not, how long to wait (whole seconds, at least 1) and why."""

    allowed: bool
    state: RateState
    retry_after_s: int = 0
    exceeded: str = ""  # "requests" or "tokens"


@dataclass
class _Window:
    times: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def prune(self, now: float) -> None:
        edge = now - WINDOW_S
        while self.times and self.times[0] <= edge:
            self.times.popleft()
        while self.tokens and self.tokens[0][0] <= edge:
            self.token_sum -= self.tokens.popleft()[1]

    def wait_for_requests(self, rpm: int, now: float) -> float:
        """Seconds until one more request fits under ``rpm``."""
        excess = len(self.times) - rpm
        if excess < 0:
            return 0.0
        if rpm == 0:
            return WINDOW_S
        return self.times[excess] + WINDOW_S - now

    def wait_for_tokens(self, tpm: int, amount: int, now: float) -> float:
        """Seconds until ``amount`` more tokens fit under ``tpm``."""
        if self.token_sum + amount <= tpm:
            return 0.0
        if amount > tpm:
            return WINDOW_S
        freed = 0
        for at, count in self.tokens:
            freed += count
            if self.token_sum - freed + amount <= tpm:
                return at + WINDOW_S - now
        return WINDOW_S


def _retry_after(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))


class RateLimiter:
    """The windows of every model; limits come with each check, so they can change at run time."""

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def reset(self) -> None:
        self._windows.clear()

    def check(self, model: str, limit: LimitConfig | None, amount: int, now: float) -> Decision:
        """Let a call of ``amount`` tokens through (and record it), or say how long to wait."""
        if limit is None or (limit.rpm is None and limit.tpm is None):
            return Decision(True, RateState())
        window = self._windows.setdefault(model, _Window())
        window.prune(now)
        if limit.rpm is not None and (wait := window.wait_for_requests(limit.rpm, now)) > 0:
            return Decision(False, self._state(window, limit, now), _retry_after(wait), "requests")
        if limit.tpm is not None and (wait := window.wait_for_tokens(limit.tpm, amount, now)) > 0:
            return Decision(False, self._state(window, limit, now), _retry_after(wait), "tokens")
        window.times.append(now)
        window.tokens.append((now, amount))
        window.token_sum += amount
        return Decision(True, self._state(window, limit, now))

    @staticmethod
    def _state(window: _Window, limit: LimitConfig, now: float) -> RateState:
        oldest_request = window.times[0] + WINDOW_S - now if window.times else 0.0
        oldest_tokens = window.tokens[0][0] + WINDOW_S - now if window.tokens else 0.0
        return RateState(
            limit_requests=limit.rpm,
            remaining_requests=None if limit.rpm is None else max(0, limit.rpm - len(window.times)),
            reset_requests_s=max(0.0, oldest_request),
            limit_tokens=limit.tpm,
            remaining_tokens=None if limit.tpm is None else max(0, limit.tpm - window.token_sum),
            reset_tokens_s=max(0.0, oldest_tokens),
        )
