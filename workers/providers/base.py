"""The adapter interface: what a call asks for (CallSpec), what it returns (CallResult), how it failed."""

from __future__ import annotations

import abc
import math
import ssl
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx2


class FinishReason(StrEnum):
    """Why generation stopped, across providers. Content filters and refusals are outcomes, not errors."""

    stop = "stop"
    length = "length"
    content_filter = "content_filter"
    tool_use = "tool_use"
    other = "other"


@dataclass(frozen=True)
class CallSpec:
    """One call: a single user message, optional system prompt, sampling and reasoning settings."""

    model: str
    prompt: str
    max_tokens: int
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    reasoning: str | int | None = None
    extra_body: dict[str, Any] | None = None
    # structured output (the judge): a JSON schema the answer must follow
    response_schema: dict[str, Any] | None = None
    schema_name: str = "answer"
    # sent as a header; providers ignore it, the fake provider uses it to recognise a repeated call
    idempotency_key: str | None = None

    def estimated_tokens(self) -> int:
        """A pre-call estimate for token-aware limits: prompt (~4 chars a token) plus the output allowance."""
        chars = len(self.prompt) + len(self.system or "")
        return math.ceil(chars / 4) + min(self.max_tokens, 2_000)


@dataclass(frozen=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None  # includes reasoning tokens, on every provider
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None

    @property
    def total(self) -> int:
        return (self.input_tokens or 0) + (self.output_tokens or 0)


@dataclass(frozen=True)
class RateLimitState:
    """What the provider's headers said about the key's remaining budget."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_s: float | None = None


@dataclass(frozen=True)
class CallResult:
    text: str
    finish_reason: FinishReason
    usage: Usage
    latency_ms: int
    reasoning: str | None = None
    raw_finish_reason: str | None = None
    provider_request_id: str | None = None
    # the structured answer when the provider returned one as data (a forced tool call)
    structured: dict[str, Any] | None = None
    rate_limit: RateLimitState | None = None

    @property
    def content_filtered(self) -> bool:
        return self.finish_reason is FinishReason.content_filter


class RetryKind(StrEnum):
    never = "never"  # permanent: fail now with the reason
    transient = "transient"  # back off with jitter and try again
    rate_limited = "rate_limited"  # wait for the provider's reset; pause the key for everyone


@dataclass(frozen=True)
class RetryDecision:
    kind: RetryKind
    reason: str
    retry_after_s: float | None = None


class ProviderError(Exception):
    """An SDK or transport failure, translated at the adapter boundary. Picklable (crosses processes)."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        retry_after_s: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        self.headers = headers or {}
        self.retry_after_s = retry_after_s
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {
            "status": self.status,
            "headers": self.headers,
            "retry_after_s": self.retry_after_s,
            "code": self.code,
        }
        return (_rebuild_error, (self.reason, self.message, kwargs))

    def __str__(self) -> str:
        status = f"HTTP {self.status} " if self.status is not None else ""
        return f"{status}{self.reason}: {self.message}"


def _rebuild_error(reason: str, message: str, kwargs: dict[str, Any]) -> ProviderError:
    return ProviderError(reason, message, **kwargs)


@dataclass
class AdapterOptions:
    """How an adapter's client is built: endpoint, key, timeout and pool size."""

    base_url: str | None
    api_key: str
    timeout_s: float
    max_connections: int
    extra_headers: dict[str, str] = field(default_factory=dict)
    # one TLS context for every client of the process: each context holds its own copy of the CA certificates, and
    # an endpoint may have dozens of clients (workers/providers/pool.py)
    ssl_context: ssl.SSLContext | None = None

    def limits(self) -> httpx2.Limits:
        """A pool as large as the concurrency (a full pool queues calls behind our own connections)."""
        return httpx2.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)

    def http_options(self) -> dict[str, Any]:
        """Keyword arguments for the adapter's httpx client: pool, timeout and the shared TLS context."""
        # no redirects: a host allowed to receive a key could pass the call (and a key in a header of its own, such
        # as x-api-key, which a redirect keeps) on to one that is not
        options: dict[str, Any] = {"limits": self.limits(), "timeout": self.timeout(), "follow_redirects": False}
        if self.ssl_context is not None:
            options["verify"] = self.ssl_context
        return options

    def timeout(self) -> httpx2.Timeout:
        return httpx2.Timeout(self.timeout_s, connect=10.0)


class Adapter(abc.ABC):
    """One provider's client. Adapters translate and classify; they never sleep, loop or retry."""

    provider: str

    @abc.abstractmethod
    async def call(self, spec: CallSpec) -> CallResult:
        """Make one call; raise ProviderError on any failure. Content filters return a result."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the client and its connection pool."""
