"""Fleet-wide limits in Redis: every worker process paces one (provider, model, key) together.

GCRA with reservations: each call reserves the next free slot in one atomic script (a single round trip) and
sleeps until it. Time comes from Redis (``TIME``), so worker clocks do not matter. A 429 pauses the key for the
whole fleet. Limits are passed on every call, so a changed limit takes effect at the next call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from workers.limits import TOKEN_WINDOW_S

KEY_PREFIX = "defeater:limit:"

# KEYS: requests TAT, tokens TAT, paused-until.  ARGV: seconds per request (0: none), seconds per token (0: none),
# tokens, token burst (seconds).  Returns the seconds to wait (as a string): the pause if paused, else the slot.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local paused = tonumber(redis.call('GET', KEYS[3]) or '0')
if paused > now then
  return tostring(-(paused - now))
end
local wait = 0
local per_request = tonumber(ARGV[1])
if per_request > 0 then
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
  redis.call('SET', KEYS[1], tostring(tat + per_request), 'PX', math.ceil((tat + per_request - now) * 1000) + 60000)
  wait = tat - now
end
local per_token = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
if per_token > 0 and tokens > 0 then
  local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now - tonumber(ARGV[4]))
  local new_tat = tat + tokens * per_token
  redis.call('SET', KEYS[2], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 60000)
  wait = math.max(wait, tat - now)
end
return tostring(wait)
"""

# KEYS: tokens TAT.  ARGV: seconds per token, tokens to add (negative gives back).
_SETTLE = """
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > 0 then
  redis.call('SET', KEYS[1], tostring(tat + tonumber(ARGV[1]) * tonumber(ARGV[2])), 'KEEPTTL')
end
return 1
"""

# KEYS: paused-until.  ARGV: seconds.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local untill = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if untill > current then
  redis.call('SET', KEYS[1], tostring(untill), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return 1
"""


class RedisKeyLimits:
    """The limits of one key, shared by every process that uses the same Redis."""

    def __init__(self, redis: Redis, key: str, rpm: int | None, tpm: int | None, safety: float) -> None:
        self.redis = redis
        self.keys = [f"{KEY_PREFIX}{key}:{part}" for part in ("requests", "tokens", "paused")]
        self.safety = safety
        self.rpm = rpm
        self.tpm = tpm
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)
        self._pause = redis.register_script(_PAUSE)

    def update(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm, self.tpm = rpm, tpm

    def _per_request(self) -> float:
        return 60.0 / (self.rpm * self.safety) if self.rpm else 0.0

    def _per_token(self) -> float:
        return 60.0 / (self.tpm * self.safety) if self.tpm else 0.0

    async def acquire(self, estimated_tokens: int) -> None:
        """Reserve this call's slot across the fleet and sleep until it comes (or until a pause ends)."""
        while True:
            args: list[Any] = [self._per_request(), self._per_token(), estimated_tokens, TOKEN_WINDOW_S]
            wait = float(await self._acquire(keys=self.keys, args=args))
            if wait < 0:  # paused after a 429: wait it out, then reserve a slot
                await asyncio.sleep(-wait)
                continue
            if wait > 0:
                await asyncio.sleep(wait)
            return

    async def settle(self, estimated_tokens: int, actual_tokens: int | None) -> None:
        """Correct the reserved tokens by the call's real usage."""
        if self.tpm and actual_tokens is not None and actual_tokens != estimated_tokens:
            await self._settle(keys=self.keys[1:2], args=[self._per_token(), actual_tokens - estimated_tokens])

    async def pause(self, seconds: float) -> None:
        """Stop every process's calls on this key for ``seconds`` (the provider's reset after a 429)."""
        await self._pause(keys=self.keys[2:3], args=[seconds])


class RedisLimits:
    """Every key's fleet-wide limits, over one Redis connection pool."""

    def __init__(self, redis: Redis, safety: float = 0.99) -> None:
        self.redis = redis
        self.safety = safety
        self._keys: dict[str, RedisKeyLimits] = {}

    def for_key(self, key: str, rpm: int | None, tpm: int | None) -> RedisKeyLimits:
        limits = self._keys.get(key)
        if limits is None:
            limits = self._keys[key] = RedisKeyLimits(self.redis, key, rpm, tpm, self.safety)
        else:
            limits.update(rpm, tpm)
        return limits
