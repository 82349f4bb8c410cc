"""Gemini generateContent through google-genai, pinned to httpx2 (no silent switch to aiohttp)."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from workers.providers import errors as e
from workers.providers.base import Adapter, AdapterOptions, CallResult, CallSpec, FinishReason, ProviderError, Usage

_FINISH = {
    "STOP": FinishReason.stop,
    "MAX_TOKENS": FinishReason.length,
    "SAFETY": FinishReason.content_filter,
    "RECITATION": FinishReason.content_filter,
    "BLOCKLIST": FinishReason.content_filter,
    "PROHIBITED_CONTENT": FinishReason.content_filter,
    "SPII": FinishReason.content_filter,
    "MODEL_ARMOR": FinishReason.content_filter,
}
_LEVELS = {"minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH"}


def build_client(options: AdapterOptions, http: httpx2.AsyncClient) -> genai.client.AsyncClient:
    http_options = types.HttpOptions(
        base_url=options.base_url,
        timeout=math.ceil(options.timeout_s * 1000),  # milliseconds
        headers=options.extra_headers or None,
        httpx_async_client=http,  # keeps google-genai on httpx2 even when aiohttp is installed
    )
    return genai.Client(api_key=options.api_key, http_options=http_options).aio


def thinking_config(reasoning: str | int | None) -> types.ThinkingConfig | None:
    if reasoning is None:
        return None
    if isinstance(reasoning, int):
        return types.ThinkingConfig(thinking_budget=reasoning, include_thoughts=reasoning != 0)
    return types.ThinkingConfig(thinking_level=types.ThinkingLevel(_LEVELS[reasoning]), include_thoughts=True)


class GoogleAdapter(Adapter):
    provider = "google"

    def __init__(self, options: AdapterOptions) -> None:
        # ours to close: the SDK does not close a client it was given
        self.http = httpx2.AsyncClient(**options.http_options())
        self.client = build_client(options, self.http)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.http.aclose()

    def _config(self, spec: CallSpec) -> types.GenerateContentConfig:
        config = types.GenerateContentConfig(
            system_instruction=spec.system,
            max_output_tokens=spec.max_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            thinking_config=thinking_config(spec.reasoning),
            # every HTTP call must pass through our limiter: no hidden continuation requests
            automatic_continuation=False,
        )
        if spec.response_schema is not None:
            config.response_mime_type = "application/json"
            config.response_json_schema = spec.response_schema
        if spec.idempotency_key:
            config.http_options = types.HttpOptions(headers={"Idempotency-Key": spec.idempotency_key})
        return config

    async def call(self, spec: CallSpec) -> CallResult:
        config = self._config(spec)
        started = time.perf_counter()
        try:
            response = await self.client.models.generate_content(model=spec.model, contents=spec.prompt, config=config)
        except genai_errors.APIError as exc:
            raise _status_error(exc) from None
        except httpx2.TimeoutException as exc:
            raise ProviderError(e.TIMEOUT, f"{type(exc).__name__}: {exc}") from None
        except httpx2.TransportError as exc:
            raise ProviderError(e.CONNECTION, f"{type(exc).__name__}: {exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise ProviderError(e.MALFORMED, f"the response could not be read: {exc}") from None
        latency_ms = round((time.perf_counter() - started) * 1000)
        return response_result(response, latency_ms)


def _retry_delay(details: Any) -> float | None:
    for detail in (details or {}).get("error", {}).get("details", []) or []:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = e.parse_duration(str(detail.get("retryDelay", "")))
            if delay is not None:
                return delay
    return None


def _per_day_quota(details: Any) -> bool:
    for detail in (details or {}).get("error", {}).get("details", []) or []:
        for violation in detail.get("violations", []) or []:
            if "PerDay" in str(violation.get("quotaId", "")):
                return True
    return False


def _status_error(exc: genai_errors.APIError) -> ProviderError:
    response = getattr(exc, "response", None)
    headers = e.lower_headers(getattr(response, "headers", None))
    status = int(exc.code) if exc.code else None
    reason = e.reason_for_status(status) if status else e.PROVIDER_ERROR
    if status == 429 and _per_day_quota(exc.details):
        reason = e.QUOTA_EXHAUSTED
    retry_after = _retry_delay(exc.details) or e.retry_after(headers)
    return ProviderError(
        reason, str(exc.message or exc), status=status, headers=headers, retry_after_s=retry_after, code=exc.status
    )


def response_result(response: Any, latency_ms: int) -> CallResult:
    candidates = getattr(response, "candidates", None) or []
    texts: list[str] = []
    thoughts: list[str] = []
    raw_finish: str | None = None
    if candidates:
        candidate = candidates[0]
        finish = getattr(candidate, "finish_reason", None)
        raw_finish = getattr(finish, "value", None) or (str(finish) if finish else None)
        for part in getattr(getattr(candidate, "content", None), "parts", None) or []:
            if getattr(part, "text", None):
                (thoughts if getattr(part, "thought", False) else texts).append(part.text)
    elif getattr(response, "prompt_feedback", None) is not None:
        raw_finish = "PROMPT_BLOCKED"
    usage = getattr(response, "usage_metadata", None)
    candidates_tokens = getattr(usage, "candidates_token_count", None)
    thought_tokens = getattr(usage, "thoughts_token_count", None)
    output = (
        None
        if candidates_tokens is None and thought_tokens is None
        else (candidates_tokens or 0) + (thought_tokens or 0)
    )
    headers = e.lower_headers(getattr(getattr(response, "sdk_http_response", None), "headers", None))
    finish_reason = (
        FinishReason.content_filter
        if raw_finish == "PROMPT_BLOCKED"
        else _FINISH.get(raw_finish or "", FinishReason.other if raw_finish else FinishReason.stop)
    )
    return CallResult(
        text="".join(texts),
        finish_reason=finish_reason,
        raw_finish_reason=raw_finish,
        # Gemini's candidate count excludes thoughts; ours includes reasoning like the other providers
        usage=Usage(
            input_tokens=getattr(usage, "prompt_token_count", None),
            output_tokens=output,
            reasoning_tokens=thought_tokens,
            cached_tokens=getattr(usage, "cached_content_token_count", None),
        ),
        latency_ms=latency_ms,
        reasoning="".join(thoughts) or None,
        provider_request_id=getattr(response, "response_id", None) or headers.get("x-request-id"),
        rate_limit=e.rate_limit_state(headers),
    )
