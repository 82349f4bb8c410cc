"""Local pacing per (provider, model, key): requests and tokens per minute, and a pause after a 429.

Paced evenly (one request every 60/rpm seconds) rather than in bursts, so that a provider's sliding one-minute
window never sees more than the limit. aiolimiter does the waiting; limiters are built inside the running loop.
When the limits change, calls already waiting start over under the new ones, so a change takes effect at once.

Target and judge traffic draw on separate budgets (``pool``), each with its own config's limits, so judging
never eats the target calls' rate and the other way round; a 429 pauses the provider key for both.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiolimiter import AsyncLimiter

TOKEN_WINDOW_S = 6.0  # the token bucket holds this many seconds' worth of the TPM limit


# calls settled on a budget before its token estimate follows their real usage, and how far above their mean it
# reserves, in mean absolute deviations
LEARN_AFTER = 5
ESTIMATE_SPREAD = 3.0
# until then, a call reserves this many times the most a settled call used (the first, the caller's upper bound)
EARLY_MARGIN = 2
# the running mean and deviation weigh each call 1/n at first, then never less than this (slowly moving means)
LEAST_WEIGHT = 0.05


class TokenEstimate:
    """What a call on one budget is expected to use, for a TPM limit: the caller's upper bound (the prompt plus the
    output allowance, often max_tokens) until a call has settled, ``EARLY_MARGIN`` times the most a settled call used
    until ``LEARN_AFTER`` have, then the running mean of their real usage plus ``ESTIMATE_SPREAD`` running mean
    deviations (a high quantile); never above the bound.

    Reserving thousands of tokens for a call that uses two hundred held a TPM budget to a fraction of its limit until
    each call settled. Reserving the mean (or 1.25x it) let the calls in flight that use more than that overfill the
    provider's window before they settled (15 429s per 1,000 calls at 120,000 TPM). ``settle`` still corrects every
    reservation by the call's real usage."""

    def __init__(self) -> None:
        self.mean = 0.0
        self.deviation = 0.0
        self.seen = 0
        self.most = 0

    def of(self, upper: int) -> int:
        if not self.seen:
            return upper
        if self.seen < LEARN_AFTER:
            return min(upper, EARLY_MARGIN * self.most)
        return min(upper, math.ceil(self.mean + ESTIMATE_SPREAD * self.deviation))

    def observe(self, actual: int) -> bool:
        """Learn from a settled call; True when the estimate changed its footing (the first call, or learned)."""
        self.seen += 1
        self.most = max(self.most, actual)
        if self.seen == 1:
            self.mean = float(actual)
            return True
        weight = max(1.0 / self.seen, LEAST_WEIGHT)  # plain means at first, then slowly moving ones
        self.deviation += (abs(actual - self.mean) - self.deviation) * weight
        self.mean += (actual - self.mean) * weight
        return self.seen == LEARN_AFTER


@dataclass(frozen=True, slots=True)
class Reservation:
    """What ``acquire`` booked for a call: the tokens reserved (the estimate when its turn came) and, on a fleet-wide
    budget with a TPM limit, the bucket of the token window that holds the call and the tokens it counted there until
    the call settles (the mean use, where the reservation is a high quantile); ``settle`` corrects both."""

    tokens: int
    bucket: int | None = None
    counted: int = 0


class KeyLimiter(Protocol):
    """What a call needs from its key's limits, local (this process) or fleet-wide (Redis)."""

    async def acquire(self, upper: int) -> Reservation:
        """Wait for the call's turn; returns what was reserved for it (the estimate when its turn came: estimated
        when the call arrived, every call already waiting would keep reserving ``upper`` after the first settled)."""
        ...

    async def settle(self, reserved: Reservation, actual_tokens: int | None) -> None: ...

    async def pause(self, seconds: float) -> None: ...


class LimitsSource(Protocol):
    def for_key(self, key: str, rpm: int | None, tpm: int | None, pool: str = "target") -> KeyLimiter: ...


class Pause:
    """Until when a provider key is paused (after a 429): shared by the key's target and judge budgets."""

    def __init__(self) -> None:
        self.until = 0.0


class KeyLimits:
    """The limits of one key's budget. ``acquire`` before a call, ``settle`` after it with the real usage."""

    def __init__(self, rpm: int | None, tpm: int | None, safety: float, pause: Pause | None = None) -> None:
        self.safety = safety
        self._pause = pause or Pause()
        self.token_debt = 0
        self.rpm: int | None = None
        self.tpm: int | None = None
        self._requests: AsyncLimiter | None = None
        self._tokens: AsyncLimiter | None = None
        self._changed = asyncio.Event()
        self.tokens = TokenEstimate()
        self.update(rpm, tpm)

    def estimate(self, upper: int) -> int:
        return self.tokens.of(upper) if self.tpm else upper

    def update(self, rpm: int | None, tpm: int | None) -> None:
        """Apply new limits (they can change while a job runs); waiting calls start over under them."""
        if rpm == self.rpm and tpm == self.tpm:
            return
        if rpm != self.rpm:
            self.rpm = rpm
            self._requests = AsyncLimiter(1, 60.0 / (rpm * self.safety)) if rpm else None
        if tpm != self.tpm:
            self.tpm = tpm
            per_window = tpm * self.safety * TOKEN_WINDOW_S / 60.0 if tpm else 0
            self._tokens = AsyncLimiter(per_window, TOKEN_WINDOW_S) if tpm else None
        self._restart_waiting()

    def _restart_waiting(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def acquire(self, upper: int) -> Reservation:
        """Wait until this key may make one more call of at most ``upper`` tokens; returns what was reserved."""
        await self.wait_unpaused()
        debt, self.token_debt = self.token_debt, 0
        reserved = self.estimate(upper)

        def amount() -> int:
            nonlocal reserved
            reserved = self.estimate(upper)
            return max(reserved + debt, 0)

        await self._take("_tokens", amount)
        await self._take("_requests", lambda: 1)
        await self.wait_unpaused()
        return Reservation(reserved)

    async def _take(self, which: str, amount: Callable[[], int]) -> None:
        """Take ``amount()`` from the current limiter; if the limits (or the token estimate) change meanwhile, start
        over under the new."""
        while (limiter := getattr(self, which)) is not None:
            want = min(amount(), limiter.max_rate)
            if not want:
                return
            if limiter.has_capacity(want):
                await limiter.acquire(want)
                return
            taking = asyncio.ensure_future(limiter.acquire(want))
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                done, _ = await asyncio.wait({taking, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                if not taking.done():
                    taking.cancel()
            if taking in done:
                return

    async def settle(self, reserved: Reservation, actual_tokens: int | None) -> None:
        """Correct the reservation by the call's real usage (a shortfall is taken from the next call)."""
        if actual_tokens is not None and self.tokens.observe(actual_tokens) and self._tokens is not None:
            self._restart_waiting()  # the estimate changed its footing: waiting calls reserve by the new one
        if self._tokens is not None and actual_tokens is not None:
            self.token_debt += actual_tokens - reserved.tokens

    async def pause(self, seconds: float) -> None:
        """Stop every call on this key for ``seconds`` (the provider's reset after a 429)."""
        self._pause.until = max(self._pause.until, time.monotonic() + seconds)

    async def wait_unpaused(self) -> None:
        while (delay := self._pause.until - time.monotonic()) > 0:
            await asyncio.sleep(delay)


class Limits:
    """All keys' limits in this process, a budget per (pool, key)."""

    def __init__(self, safety: float = 0.99) -> None:
        self.safety = safety
        self._keys: dict[tuple[str, str], KeyLimits] = {}
        self._pauses: dict[str, Pause] = {}

    def for_key(self, key: str, rpm: int | None, tpm: int | None, pool: str = "target") -> KeyLimits:
        limits = self._keys.get((pool, key))
        if limits is None:
            pause = self._pauses.setdefault(key, Pause())
            limits = self._keys[pool, key] = KeyLimits(rpm, tpm, self.safety, pause)
        else:
            limits.update(rpm, tpm)
        return limits
