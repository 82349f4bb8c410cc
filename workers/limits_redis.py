"""Fleet-wide limits in Redis: every worker process paces one (provider, model, key) together.

GCRA with reservations: a call reserves the next free slot in one atomic script (a single round trip) and sleeps
until it. Time comes from Redis (``TIME``), so worker clocks do not matter. A 429 pauses the key for the whole
fleet. Slots are reserved at most ``HORIZON_S`` ahead, so a changed limit (passed on every reservation) takes
effect within that time, and nothing is booked far into the future under a rate that no longer holds.

In each process one pacer per key reserves slots for the calls waiting there, first come first served, so the
Redis traffic follows the call rate, not the number of waiting calls. Under a requests-only limit it books every slot
that falls within the horizon for the calls waiting, in one round trip. A budget with no limit at all asks Redis
nothing per call: it only looks for a fleet-wide pause, at most every ``PAUSE_CHECK_S``.

Target and judge traffic have separate budgets (``pool``) on one key; the 429 pause is the key's, for both.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from redis.asyncio import Redis

from workers.limits import TokenEstimate

KEY_PREFIX = "defeater:limit:"
# slots are booked at most this far ahead
HORIZON_S = 1.0
# slots (and tokens) of the last this many seconds that nobody booked (this worker's calls came a little late, or
# calls settled below their reservation) may still be booked, while the key is in use: at 0.99 of the limit a sliding
# 60 s window then sees at most 0.99 + 0.25/60 of it. More is a burst the provider's window remembers for a minute:
# with 6 s of tokens, a start that lagged (reservations of max_tokens given back late) came back as 28,000 tokens in
# 10 s at 120,000 TPM, and the window that held them answered 429s a minute later
CATCH_UP_S = 0.25
# while Redis cannot be reached, waiting calls keep waiting and the pacer tries again after this long
REDIS_RETRY_S = 0.5
# a budget without limits looks for a pause of its key (a 429 another worker met) at most this often
PAUSE_CHECK_S = 0.5

log = logging.getLogger("defeater.limits")

# KEYS: requests TAT, tokens TAT, paused-until.  ARGV: seconds per request (0: none), seconds per token (0: none),
# tokens, horizon (seconds), calls waiting, catch-up (seconds).  Returns "R<wait>:<n>" (n slots
# are reserved, the first in <wait> seconds (in the past: at once) and the others one request interval apart; n > 1
# only without a token limit), "P<wait>" (the key is paused for <wait> seconds) or "L<wait>" (no slot within the
# horizon: ask again when half of it is free, so that a process with many calls waiting books them half a horizon at
# a time). Slots of the last <catch-up> seconds nobody booked are booked still, but only while the key is in use:
# a key idle for longer starts from now, never with a burst.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local paused = tonumber(redis.call('GET', KEYS[3]) or '0')
if paused > now then
  return 'P' .. tostring(paused - now)
end
local horizon = tonumber(ARGV[4])
local per_request = tonumber(ARGV[1])
local per_token = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local request_tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if request_tat < now - tonumber(ARGV[6]) then
  request_tat = now
end
local token_tat = tonumber(redis.call('GET', KEYS[2]) or '0')
if token_tat < now - tonumber(ARGV[6]) then
  token_tat = now
end
local wait = 0
if per_request > 0 then
  wait = request_tat - now
end
if per_token > 0 and tokens > 0 then
  wait = math.max(wait, token_tat - now)
end
if wait > horizon then
  return 'L' .. tostring(wait - horizon / 2)
end
local n = 1
local calls = tonumber(ARGV[5])
if per_token == 0 and calls > 1 then
  if per_request > 0 then
    n = math.min(calls, math.floor((horizon - wait) / per_request) + 1)
  else
    n = calls
  end
end
if per_request > 0 then
  local tat = request_tat + n * per_request
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 60000)
end
if per_token > 0 and tokens > 0 then
  local tat = token_tat + tokens * per_token
  redis.call('SET', KEYS[2], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 60000)
end
return 'R' .. tostring(wait) .. ':' .. tostring(n)
"""

# KEYS: tokens TAT.  ARGV: seconds per token, tokens to add (negative gives back).
_SETTLE = """
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > 0 then
  redis.call('SET', KEYS[1], tostring(tat + tonumber(ARGV[1]) * tonumber(ARGV[2])), 'KEEPTTL')
end
return 1
"""

# KEYS: paused-until.  Returns the seconds the key is still paused for (0: not paused).
_PAUSED_FOR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
return tostring(math.max(paused - now, 0))
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
    """The limits of one key's budget, shared by every process that uses the same Redis."""

    def __init__(
        self, redis: Redis, key: str, rpm: int | None, tpm: int | None, safety: float, pool: str = "target"
    ) -> None:
        self.redis = redis
        budget = f"{KEY_PREFIX}{pool}:{key}"
        self.keys = [f"{budget}:requests", f"{budget}:tokens", f"{KEY_PREFIX}{key}:paused"]
        self.safety = safety
        self.rpm = rpm
        self.tpm = tpm
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)
        self._pause = redis.register_script(_PAUSE)
        self._paused_for = redis.register_script(_PAUSED_FOR)
        self._pause_checked_at = -PAUSE_CHECK_S
        self._waiting: collections.deque[tuple[int, asyncio.Future[int]]] = collections.deque()
        self._pacer: asyncio.Task[None] | None = None
        # a pause this process knows of (its own 429s, or one the pacer met), checked again just before a call
        self._paused_until = 0.0
        self.tokens = TokenEstimate()

    def estimate(self, upper: int) -> int:
        return self.tokens.of(upper) if self.tpm else upper

    def update(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm, self.tpm = rpm, tpm

    def _per_request(self) -> float:
        return 60.0 / (self.rpm * self.safety) if self.rpm else 0.0

    def _per_token(self) -> float:
        return 60.0 / (self.tpm * self.safety) if self.tpm else 0.0

    async def acquire(self, upper: int) -> int:
        """Wait for this call's slot across the fleet (and for any pause of the key to end); returns the tokens
        reserved, estimated when the slot was booked."""
        reserved = upper
        if not self.rpm and not self.tpm:
            await self._check_fleet_pause()
        else:
            granted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._waiting.append((upper, granted))
            if self._pacer is None or self._pacer.done():
                self._pacer = asyncio.create_task(self._pace(), name=f"pacer {self.keys[0]}")
            reserved = await granted
        while (delay := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        return reserved

    async def _check_fleet_pause(self) -> None:
        """No limit to pace by: learn of a pause another worker set, asking Redis at most every PAUSE_CHECK_S."""
        now = time.monotonic()
        if now - self._pause_checked_at < PAUSE_CHECK_S:
            return
        self._pause_checked_at = now
        try:
            seconds = float(await self._paused_for(keys=self.keys[2:3]))
        except Exception as exc:  # no Redis: this process still pauses on its own 429s
            log.warning("rate limiter unreachable (%s: %s)", type(exc).__name__, exc)
            return
        if seconds > 0:
            self._paused_until = max(self._paused_until, now + seconds)

    async def _pace(self) -> None:
        """Reserve slots for this process's waiting calls, in order, while any wait."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            upper, granted = self._waiting[0]
            if granted.done():  # its call was cancelled
                self._waiting.popleft()
                continue
            tokens = self.estimate(upper)
            calls = 1 if self.tpm else sum(1 for _, future in self._waiting if not future.done())
            args: list[Any] = [
                self._per_request(),
                self._per_token(),
                tokens,
                HORIZON_S,
                calls,
                CATCH_UP_S,
            ]
            try:
                reply = await self._acquire(keys=self.keys, args=args)
            except Exception as exc:  # no Redis, no fleet-wide limit: calls wait rather than risk a 429 storm
                log.warning("rate limiter unreachable (%s: %s); calls on this key wait", type(exc).__name__, exc)
                await asyncio.sleep(REDIS_RETRY_S)
                continue
            text = reply.decode() if isinstance(reply, bytes) else str(reply)
            kind, rest = text[0], text[1:]
            if kind == "R":
                wait, _, count = rest.partition(":")
                self._hand_out(loop, float(wait), int(count or 1), float(args[0]), tokens)
                continue
            seconds = max(float(rest), 0.0)
            if kind == "P":
                self._paused_until = max(self._paused_until, time.monotonic() + seconds)
            else:
                # calls settling below their reservation bring the slot closer meanwhile: look again soon (a pacer
                # that slept until the slot it was told of let those tokens go by unused)
                seconds = min(seconds, HORIZON_S / 2)
            await asyncio.sleep(seconds)

    def _hand_out(self, loop: asyncio.AbstractEventLoop, wait: float, count: int, interval: float, tokens: int) -> None:
        """Hand ``count`` reserved slots to the calls first in line: the first in ``wait`` seconds, the others one
        request interval apart (slots already past are handed out at once). ``tokens``: what the first reserved
        (with a token limit there is only one; without, what each reserves does not matter)."""
        for i in range(count):
            while self._waiting and self._waiting[0][1].done():
                self._waiting.popleft()
            if not self._waiting:
                return  # calls cancelled meanwhile: their slots go unused
            _, granted = self._waiting.popleft()
            loop.call_later(max(wait + i * interval, 0.0), _grant, granted, tokens)

    async def settle(self, reserved: int, actual_tokens: int | None) -> None:
        """Correct the reserved tokens by the call's real usage (best effort: Redis may be away)."""
        if actual_tokens is not None:
            self.tokens.observe(actual_tokens)
        if self.tpm and actual_tokens is not None and actual_tokens != reserved:
            try:
                await self._settle(keys=self.keys[1:2], args=[self._per_token(), actual_tokens - reserved])
            except Exception as exc:
                log.warning("settling tokens failed (%s: %s)", type(exc).__name__, exc)

    async def pause(self, seconds: float) -> None:
        """Stop every process's calls on this key for ``seconds`` (the provider's reset after a 429)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        try:
            await self._pause(keys=self.keys[2:3], args=[seconds])
        except Exception as exc:  # this process still pauses; the others meet the 429 themselves
            log.warning("pausing the key fleet-wide failed (%s: %s)", type(exc).__name__, exc)


def _grant(granted: asyncio.Future[int], tokens: int) -> None:
    if not granted.done():
        granted.set_result(tokens)


class RedisLimits:
    """Every key's fleet-wide limits, over one Redis connection pool."""

    def __init__(self, redis: Redis, safety: float = 0.99) -> None:
        self.redis = redis
        self.safety = safety
        self._keys: dict[tuple[str, str], RedisKeyLimits] = {}

    def for_key(self, key: str, rpm: int | None, tpm: int | None, pool: str = "target") -> RedisKeyLimits:
        limits = self._keys.get((pool, key))
        if limits is None:
            limits = self._keys[pool, key] = RedisKeyLimits(self.redis, key, rpm, tpm, self.safety, pool)
        else:
            limits.update(rpm, tpm)
        return limits
