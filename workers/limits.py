"""Local pacing per (provider, model, key): requests and tokens per minute, and a pause after a 429.

Paced evenly (one request every 60/rpm seconds) rather than in bursts, so that a provider's sliding one-minute
window never sees more than the limit. aiolimiter does the waiting; limiters are built inside the running loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from aiolimiter import AsyncLimiter

TOKEN_WINDOW_S = 6.0  # the token bucket holds this many seconds' worth of the TPM limit


class KeyLimiter(Protocol):
    """What a call needs from its key's limits, local (this process) or fleet-wide (Redis)."""

    async def acquire(self, estimated_tokens: int) -> None: ...

    async def settle(self, estimated_tokens: int, actual_tokens: int | None) -> None: ...

    async def pause(self, seconds: float) -> None: ...


class LimitsSource(Protocol):
    def for_key(self, key: str, rpm: int | None, tpm: int | None) -> KeyLimiter: ...


class KeyLimits:
    """The limits of one key. ``acquire`` before a call, ``settle`` after it with the real usage."""

    def __init__(self, rpm: int | None, tpm: int | None, safety: float) -> None:
        self.safety = safety
        self.paused_until = 0.0
        self.token_debt = 0
        self.rpm: int | None = None
        self.tpm: int | None = None
        self._requests: AsyncLimiter | None = None
        self._tokens: AsyncLimiter | None = None
        self.update(rpm, tpm)

    def update(self, rpm: int | None, tpm: int | None) -> None:
        """Apply new limits (they can change while a job runs)."""
        if rpm != self.rpm:
            self.rpm = rpm
            self._requests = AsyncLimiter(1, 60.0 / (rpm * self.safety)) if rpm else None
        if tpm != self.tpm:
            self.tpm = tpm
            per_window = tpm * self.safety * TOKEN_WINDOW_S / 60.0 if tpm else 0
            self._tokens = AsyncLimiter(per_window, TOKEN_WINDOW_S) if tpm else None

    async def acquire(self, estimated_tokens: int) -> None:
        """Wait until this key may make one more call of about ``estimated_tokens``."""
        await self.wait_unpaused()
        if self._tokens is not None:
            amount = max(estimated_tokens + self.token_debt, 0)
            self.token_debt = 0
            if amount:
                await self._tokens.acquire(min(amount, self._tokens.max_rate))
        if self._requests is not None:
            await self._requests.acquire()
        await self.wait_unpaused()

    async def settle(self, estimated_tokens: int, actual_tokens: int | None) -> None:
        """Correct the token estimate by the call's real usage (a shortfall is taken from the next call)."""
        if self._tokens is not None and actual_tokens is not None:
            self.token_debt += actual_tokens - estimated_tokens

    async def pause(self, seconds: float) -> None:
        """Stop every call on this key for ``seconds`` (the provider's reset after a 429)."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    async def wait_unpaused(self) -> None:
        while (delay := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)


class Limits:
    """All keys' limits in this process."""

    def __init__(self, safety: float = 0.99) -> None:
        self.safety = safety
        self._keys: dict[str, KeyLimits] = {}

    def for_key(self, key: str, rpm: int | None, tpm: int | None) -> KeyLimits:
        limits = self._keys.get(key)
        if limits is None:
            limits = self._keys[key] = KeyLimits(rpm, tpm, self.safety)
        else:
            limits.update(rpm, tpm)
        return limits
