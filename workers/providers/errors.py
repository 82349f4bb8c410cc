"""Reading retry hints from headers and bodies, and classifying a ProviderError for the one retry policy."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from workers.providers.base import ProviderError, RateLimitState, RetryDecision, RetryKind

# reasons an adapter gives; the classification below keys on them
RATE_LIMITED = "rate_limited"
QUOTA_EXHAUSTED = "quota_exhausted"
SERVER_ERROR = "server_error"
OVERLOADED = "overloaded"
TIMEOUT = "timeout"
CONNECTION = "connection_error"
MALFORMED = "malformed_response"
BAD_REQUEST = "bad_request"
AUTH = "auth_error"
PERMISSION = "permission_denied"
NOT_FOUND = "not_found"
MISSING_KEY = "missing_key"
HOST_NOT_ALLOWED = "host_not_allowed"
# the config names a key variable that may not be sent to its host (providers.key_hosts)
KEY_NOT_ALLOWED = "key_not_allowed"
PROVIDER_ERROR = "provider_error"

_TRANSIENT = {SERVER_ERROR, OVERLOADED, TIMEOUT, CONNECTION, MALFORMED}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")


def reason_for_status(status: int) -> str:
    if status == 429:
        return RATE_LIMITED
    if status in (408, 409):
        return TIMEOUT if status == 408 else SERVER_ERROR
    if status == 529:
        return OVERLOADED
    if status >= 500:
        return SERVER_ERROR
    return {401: AUTH, 402: QUOTA_EXHAUSTED, 403: PERMISSION, 404: NOT_FOUND}.get(status, BAD_REQUEST)


def classify(error: ProviderError) -> RetryDecision:
    """The single classification every adapter's errors go through."""
    if error.reason == RATE_LIMITED:
        return RetryDecision(RetryKind.rate_limited, error.reason, error.retry_after_s)
    if error.reason in _TRANSIENT:
        return RetryDecision(RetryKind.transient, error.reason, error.retry_after_s)
    return RetryDecision(RetryKind.never, error.reason)


def parse_duration(value: str) -> float | None:
    """``1.5s``, ``6m0s``, ``120ms``, ``2h30m`` -> seconds (OpenAI's reset headers)."""
    match = _DURATION.match(value.strip())
    if not match or not any(match.groups()):
        return None
    h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def _seconds_until(value: str) -> float | None:
    """An RFC 3339 timestamp (Anthropic's reset headers) or an HTTP date -> seconds from now."""
    when: datetime | None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``retry-after`` or the providers' reset headers."""
    if value := headers.get("retry-after-ms"):
        try:
            return float(value) / 1000
        except ValueError:
            pass
    if value := headers.get("retry-after"):
        try:
            return float(value)
        except ValueError:
            if (seconds := _seconds_until(value)) is not None:
                return seconds
    return _exhausted_reset(headers)


def _exhausted_reset(headers: Mapping[str, str]) -> float | None:
    """The reset of the exhausted dimension (remaining 0), from OpenAI's or Anthropic's rate-limit headers."""
    resets: dict[str, float] = {}
    exhausted: set[str] = set()
    for name, value in headers.items():
        for prefix, parse in (("x-ratelimit-", parse_duration), ("anthropic-ratelimit-", _seconds_until)):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if rest.startswith("reset-") and (seconds := parse(value)) is not None:
                resets[rest[len("reset-") :]] = seconds
            elif rest.endswith("-reset") and (seconds := parse(value)) is not None:
                resets[rest[: -len("-reset")]] = seconds
            elif (rest.startswith("remaining-") or rest.endswith("-remaining")) and value.strip() == "0":
                exhausted.add(rest.replace("remaining-", "").replace("-remaining", ""))
    chosen = [resets[d] for d in exhausted if d in resets]
    if chosen:
        return max(chosen)
    return min(resets.values()) if resets else None


def rate_limit_state(headers: Mapping[str, str]) -> RateLimitState | None:
    """Remaining requests and tokens, from OpenAI's or Anthropic's rate-limit headers."""

    def number(*names: str) -> int | None:
        for name in names:
            if (value := headers.get(name)) is not None:
                try:
                    return int(float(value))
                except ValueError:
                    return None
        return None

    requests = number("x-ratelimit-remaining-requests", "anthropic-ratelimit-requests-remaining")
    tokens = number("x-ratelimit-remaining-tokens", "anthropic-ratelimit-tokens-remaining")
    if requests is None and tokens is None:
        return None
    reset = headers.get("x-ratelimit-reset-requests")
    reset_s = parse_duration(reset) if reset else None
    if reset_s is None and (value := headers.get("anthropic-ratelimit-requests-reset")):
        reset_s = _seconds_until(value)
    return RateLimitState(requests, tokens, reset_s)


def lower_headers(headers: Any) -> dict[str, str]:
    """Any SDK's response headers as a plain dict with lower-case names."""
    if headers is None:
        return {}
    return {str(k).lower(): str(v) for k, v in headers.items()}
