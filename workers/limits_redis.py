"""Fleet-wide limits in Redis: every worker process paces one (provider, model, key) together.

GCRA with reservations: a call reserves the next free slot in one atomic script (a single round trip) and sleeps
until it. Time comes from Redis (``TIME``), so worker clocks do not matter. A 429 pauses the key for the whole
fleet. Slots are reserved at most ``HORIZON_S`` ahead (``TOKEN_HORIZON_S`` with a TPM limit), so a changed limit
(passed on every reservation) takes effect within that time, and nothing is booked far into the future under a rate
that no longer holds. Under a TPM limit the fleet also keeps its own copy of the provider's sliding window (see
``_ACQUIRE``), and what a call reserves is learned from every worker's calls.

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

from workers.limits import EARLY_MARGIN, ESTIMATE_SPREAD, LEARN_AFTER, LEAST_WEIGHT, Reservation

KEY_PREFIX = "defeater:limit:"
# slots are booked at most this far ahead: a second's worth of slots per round trip under a requests-only limit; a key
# with a TPM limit books one call per round trip anyway, and what is booked ahead, at estimates, is what the window
# cannot yet correct (measured with benchmarks/limiter.py at 120,000 TPM: 1 s, 0.977-0.979 of the limit over the run;
# 0.25 s, 0.982-0.987; 0.1 s, 0.988)
HORIZON_S = 1.0
TOKEN_HORIZON_S = 0.1
# request slots of the last this many seconds that nobody booked (this worker's calls came a little late) may still be
# booked, while the key is in use: at 0.99 of the limit a sliding 60 s window then sees at most 0.99 + 0.25/60 of it.
# More is a burst the provider's window remembers for a minute.
CATCH_UP_S = 0.25
# the same for tokens, where the fleet's copy of the window keeps a catch-up from overfilling the provider's, and a
# quarter second lost 1.3-1.9% of the limit for good when the workers' loops ran late (fleet.py at 120,000 TPM)
TOKEN_CATCH_UP_S = 1.0
# a pacer told its next token slot is N s away sleeps until it enters the horizon, but at most this long: calls
# settling below their reservation bring it closer meanwhile, and waking after the slot costs nothing within the
# tokens' catch-up (waking every half horizon, 0.05 s, cost ~0.9 ms of CPU per call)
TOKEN_LOOK_AGAIN_S = 0.25
# the providers' TPM window, and the width of its buckets in the fleet's copy (the fleet's window is coarser than the
# provider's by up to a bucket: 0.17% of a minute)
WINDOW_S = 60.0
BUCKET_S = 0.1
# while Redis cannot be reached, waiting calls keep waiting and the pacer tries again after this long
REDIS_RETRY_S = 0.5
# a budget without limits looks for a pause of its key (a 429 another worker met) at most this often
PAUSE_CHECK_S = 0.5

log = logging.getLogger("defeater.limits")

# KEYS: requests TAT, tokens TAT, paused-until, token window, token usage.  ARGV: seconds per request (0: none),
# seconds per token (0: none), the call's token bound, horizon (seconds), calls waiting, catch-up (seconds), the token
# window's room (tokens; 0: no window), the window (seconds), a bucket of it (seconds), then the estimate's settings:
# calls seen before it follows the mean, its spread (in mean deviations), the early margin (times the most seen); then
# the tokens' catch-up (seconds).
# Returns "R<wait>:<n>:<bucket>:<tokens>:<expected>" (n slots are reserved, the first in <wait> seconds (in the past:
# at once) and the others one request interval apart; n > 1 only without a token limit; <bucket>: the window's bucket
# that holds the call, -1 without a window; <tokens>: what the call reserved, the fleet's estimate; <expected>: what
# the window counts for it until it settles, the mean once learned), "P<wait>" (the key is paused for
# <wait> seconds) or "L<wait>" (no slot within the horizon, or the window has no room for the tokens: ask again in
# <wait> seconds: under a requests-only limit when half of the horizon is free, so that a process with many calls
# waiting books them half a horizon at a time; under a TPM limit when the slot enters the horizon). Slots
# of the last <catch-up> seconds (for tokens, the tokens' catch-up) nobody booked are booked still, but only while the
# key is in use: a key idle for longer starts from now, never with a burst.
#
# The token window mirrors the provider's sliding one: tokens per bucket of time, by when the calls go out: what
# settled calls used (``_SETTLE`` corrects the bucket) and, for calls in flight, the mean use (until the mean is
# learned, the reservation; counting the reservation, a high quantile, for every call in flight and booked ahead held
# the window 1.5% short of the pacing). The pacing alone lets a window overfill when reservations shrink (a start
# learning what calls use, whose tokens given back are booked again while the provider's window still holds those
# calls); the window refuses what would not fit, so that becomes a pause of the pacing, not a 429 a minute later. An
# empty window takes any call, however big (one that asks more than the limit is the provider's to refuse; here it
# would wait for ever). Its hash holds the buckets and: t, the latest bucket booked; e, the buckets up to which are
# gone; s, the sum of the rest. A booking's window is its bucket, the window's worth before it, and one more (a
# minute back from a time within a bucket reaches into the bucket before), up to t.
#
# The token estimate (what a call reserves) is the fleet's, learned from every worker's settled calls (``_SETTLE``),
# as ``workers.limits.TokenEstimate`` learns in one process: each worker learning alone made the start reserve the
# bound, then twice the most seen, once per worker, and each such reservation given back was a burst.
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
local expected = tokens
local by_tokens = per_token > 0 and tokens > 0
if by_tokens then
  local usage = redis.call('HMGET', KEYS[5], 'n', 'most', 'mean', 'dev')
  local seen = tonumber(usage[1] or '0')
  if seen >= tonumber(ARGV[10]) then
    tokens = math.min(tokens, math.ceil(tonumber(usage[3]) + tonumber(ARGV[11]) * tonumber(usage[4])))
    expected = math.min(tokens, math.ceil(tonumber(usage[3])))
  elseif seen > 0 then
    tokens = math.min(tokens, tonumber(ARGV[12]) * tonumber(usage[2]))
    expected = tokens
  end
end
local request_tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if request_tat < now - tonumber(ARGV[6]) then
  request_tat = now
end
local token_tat = tonumber(redis.call('GET', KEYS[2]) or '0')
if token_tat < now - tonumber(ARGV[13]) then
  token_tat = now
end
local wait = 0
if per_request > 0 then
  wait = request_tat - now
end
if by_tokens then
  wait = math.max(wait, token_tat - now)
end
if wait > horizon then
  if by_tokens then
    return 'L' .. tostring(wait - horizon)
  end
  return 'L' .. tostring(wait - horizon / 2)
end
local bucket = -1
local room = tonumber(ARGV[7])
if by_tokens and room > 0 then
  local width = tonumber(ARGV[9])
  local span = math.floor(tonumber(ARGV[8]) / width + 0.5)
  local kept = math.ceil((horizon + tonumber(ARGV[13])) / width) + 2
  bucket = math.floor(math.max(wait, 0) / width + now / width)
  local state = redis.call('HMGET', KEYS[4], 't', 'e', 's')
  local top = math.max(tonumber(state[1] or '-1'), bucket)
  local edge = tonumber(state[2] or '-1')
  local sum = tonumber(state[3] or '0')
  local new_edge = top - span - kept
  if edge < 0 or new_edge - edge > span + kept then
    redis.call('DEL', KEYS[4])
    sum = 0
    edge = new_edge
  end
  -- the buckets first..last and the tokens they hold (none when last < first)
  local function buckets(first, last)
    local fields, held = {}, 0
    for i = first, last do
      fields[#fields + 1] = i
    end
    if #fields > 0 then
      for _, tokens_then in ipairs(redis.call('HMGET', KEYS[4], unpack(fields))) do
        held = held + tonumber(tokens_then or '0')
      end
    end
    return fields, held
  end
  local gone, gone_tokens = buckets(edge + 1, new_edge)
  if #gone > 0 then
    redis.call('HDEL', KEYS[4], unpack(gone))
    sum = sum - gone_tokens
  end
  edge = math.max(edge, new_edge)
  local _, older_tokens = buckets(edge + 1, bucket - span - 1)
  local held = sum - older_tokens
  redis.call('HSET', KEYS[4], 't', top, 'e', edge, 's', sum)
  redis.call('PEXPIRE', KEYS[4], math.ceil(tonumber(ARGV[8]) * 1000) + 60000)
  if held > 0 and held + expected > room then
    return 'L' .. tostring(math.max(wait, 0) + width)
  end
  redis.call('HINCRBY', KEYS[4], bucket, expected)
  redis.call('HINCRBY', KEYS[4], 's', expected)
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
if by_tokens then
  local tat = token_tat + tokens * per_token
  redis.call('SET', KEYS[2], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 60000)
end
return 'R' .. tostring(wait) .. ':' .. tostring(n) .. ':' .. tostring(bucket) .. ':' .. tostring(tokens) .. ':' ..
  tostring(expected)
"""

# KEYS: tokens TAT, token window, token usage.  ARGV: seconds per token, the tokens the call used, the tokens it
# reserved, its bucket (-1: none), the least weight of a call in the running means, the tokens its bucket counted.
# Corrects the pacing by what the call used over what it reserved, and the call's bucket (only while the window still
# keeps it: older ones are deleted) over what that counted; learns the fleet's estimate from it (as
# ``TokenEstimate.observe``).
_SETTLE = """
local used = tonumber(ARGV[2])
local more = used - tonumber(ARGV[3])
if more ~= 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat > 0 then
    redis.call('SET', KEYS[1], tostring(tat + tonumber(ARGV[1]) * more), 'KEEPTTL')
  end
end
more = used - tonumber(ARGV[6])
local bucket = tonumber(ARGV[4])
if more ~= 0 and bucket >= 0 and redis.call('HEXISTS', KEYS[2], bucket) == 1 then
  redis.call('HINCRBY', KEYS[2], bucket, more)
  redis.call('HINCRBY', KEYS[2], 's', more)
end
local usage = redis.call('HMGET', KEYS[3], 'n', 'most', 'mean', 'dev')
local seen = tonumber(usage[1] or '0') + 1
local most = math.max(tonumber(usage[2] or '0'), used)
local mean = used
local dev = 0
if seen > 1 then
  mean = tonumber(usage[3])
  dev = tonumber(usage[4])
  local weight = math.max(1 / seen, tonumber(ARGV[5]))
  dev = dev + (math.abs(used - mean) - dev) * weight
  mean = mean + (used - mean) * weight
end
redis.call('HSET', KEYS[3], 'n', seen, 'most', most, 'mean', tostring(mean), 'dev', tostring(dev))
redis.call('PEXPIRE', KEYS[3], 600000)
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
        self.keys = [
            f"{budget}:requests",
            f"{budget}:tokens",
            f"{KEY_PREFIX}{key}:paused",
            f"{budget}:window",
            f"{budget}:usage",
        ]
        self.safety = safety
        self.rpm = rpm
        self.tpm = tpm
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)
        self._pause = redis.register_script(_PAUSE)
        self._paused_for = redis.register_script(_PAUSED_FOR)
        self._pause_checked_at = -PAUSE_CHECK_S
        self._waiting: collections.deque[tuple[int, asyncio.Future[Reservation]]] = collections.deque()
        self._pacer: asyncio.Task[None] | None = None
        # a pause this process knows of (its own 429s, or one the pacer met), checked again just before a call
        self._paused_until = 0.0

    def update(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm, self.tpm = rpm, tpm

    def _per_request(self) -> float:
        return 60.0 / (self.rpm * self.safety) if self.rpm else 0.0

    def _per_token(self) -> float:
        return 60.0 / (self.tpm * self.safety) if self.tpm else 0.0

    def _horizon(self) -> float:
        return TOKEN_HORIZON_S if self.tpm else HORIZON_S

    def _window_room(self) -> int:
        """The tokens the fleet's copy of the provider's window may hold (0: no TPM limit, no window): halfway from the
        pacing's rate (``safety`` of the limit) to the limit, which leaves room for calls in flight using more than the
        mean (at 0.99 and 120,000 TPM: 600 tokens, about three standard deviations of that in the benchmarks)."""
        return int(self.tpm * WINDOW_S / 60.0 * (1.0 + self.safety) / 2) if self.tpm else 0

    async def acquire(self, upper: int) -> Reservation:
        """Wait for this call's slot across the fleet (and for any pause of the key to end); returns what was
        reserved: the tokens estimated when the slot was booked, and the window's bucket that holds it."""
        reserved = Reservation(upper)
        if not self.rpm and not self.tpm:
            await self._check_fleet_pause()
        else:
            granted: asyncio.Future[Reservation] = asyncio.get_running_loop().create_future()
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
            calls = 1 if self.tpm else sum(1 for _, future in self._waiting if not future.done())
            args: list[Any] = [
                self._per_request(),
                self._per_token(),
                upper,
                self._horizon(),
                calls,
                CATCH_UP_S,
                self._window_room(),
                WINDOW_S,
                BUCKET_S,
                LEARN_AFTER,
                ESTIMATE_SPREAD,
                EARLY_MARGIN,
                TOKEN_CATCH_UP_S,
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
                wait, count, bucket, tokens, expected = rest.split(":")
                at = int(bucket) if int(bucket) >= 0 else None
                reserved = Reservation(int(float(tokens)), at, int(float(expected)))
                self._hand_out(loop, float(wait), int(count), float(args[0]), reserved)
                continue
            seconds = max(float(rest), 0.0)
            if kind == "P":
                self._paused_until = max(self._paused_until, time.monotonic() + seconds)
            else:
                # calls settling below their reservation bring the slot closer, and the window frees room, meanwhile:
                # look again soon (a pacer that slept until the slot it was told of let those tokens go by unused)
                seconds = min(seconds, TOKEN_LOOK_AGAIN_S if self.tpm else HORIZON_S / 2)
            await asyncio.sleep(seconds)

    def _hand_out(
        self, loop: asyncio.AbstractEventLoop, wait: float, count: int, interval: float, reserved: Reservation
    ) -> None:
        """Hand ``count`` reserved slots to the calls first in line: the first in ``wait`` seconds, the others one
        request interval apart (slots already past are handed out at once). ``reserved``: what the first reserved
        (with a token limit there is only one; without, what each reserves does not matter)."""
        for i in range(count):
            while self._waiting and self._waiting[0][1].done():
                self._waiting.popleft()
            if not self._waiting:
                return  # calls cancelled meanwhile: their slots go unused
            _, granted = self._waiting.popleft()
            loop.call_later(max(wait + i * interval, 0.0), _grant, granted, reserved)

    async def settle(self, reserved: Reservation, actual_tokens: int | None) -> None:
        """Correct the reservation by the call's real usage, in the pacing and in the window's bucket that holds the
        call (best effort: Redis may be away)."""
        if self.tpm and actual_tokens is not None:
            bucket = -1 if reserved.bucket is None else reserved.bucket
            try:
                await self._settle(
                    keys=[self.keys[1], self.keys[3], self.keys[4]],
                    args=[self._per_token(), actual_tokens, reserved.tokens, bucket, LEAST_WEIGHT, reserved.counted],
                )
            except Exception as exc:
                log.warning("settling tokens failed (%s: %s)", type(exc).__name__, exc)

    async def pause(self, seconds: float) -> None:
        """Stop every process's calls on this key for ``seconds`` (the provider's reset after a 429)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        try:
            await self._pause(keys=self.keys[2:3], args=[seconds])
        except Exception as exc:  # this process still pauses; the others meet the 429 themselves
            log.warning("pausing the key fleet-wide failed (%s: %s)", type(exc).__name__, exc)


def _grant(granted: asyncio.Future[Reservation], reserved: Reservation) -> None:
    if not granted.done():
        granted.set_result(reserved)


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
