"""Anthropic Messages. Sampling parameters are gone from SDK 2.x; thinking is adaptive or a budget."""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic

from workers.providers import errors as e
from workers.providers.base import Adapter, AdapterOptions, CallResult, CallSpec, FinishReason, ProviderError, Usage

_FINISH = {
    "end_turn": FinishReason.stop,
    "stop_sequence": FinishReason.stop,
    "max_tokens": FinishReason.length,
    "model_context_window_exceeded": FinishReason.length,
    "refusal": FinishReason.content_filter,
    "tool_use": FinishReason.tool_use,
}
_SPEND_LIMITS = (
    anthropic.ContractSpendLimitReachedError,
    anthropic.EnforcedSpendLimitReachedError,
    anthropic.PaymentRequiredError,
)
_EFFORTS = ("low", "medium", "high", "max")


def build_client(options: AdapterOptions) -> anthropic.AsyncAnthropic:
    timeout = options.timeout()
    return anthropic.AsyncAnthropic(
        api_key=options.api_key,
        base_url=options.base_url,
        max_retries=0,
        timeout=timeout,
        default_headers=options.extra_headers or None,
        http_client=anthropic.DefaultAsyncHttpxClient(**options.http_options()),
    )


def thinking_params(reasoning: str | int | None) -> dict[str, Any]:
    """Our ``reasoning`` setting as Anthropic's ``thinking`` (and ``output_config.effort``) parameters."""
    if reasoning is None:
        return {}
    if isinstance(reasoning, int):
        return {"thinking": {"type": "enabled", "budget_tokens": reasoning}}
    if reasoning == "disabled":
        return {"thinking": {"type": "disabled"}}
    params: dict[str, Any] = {"thinking": {"type": "adaptive"}}
    if reasoning in _EFFORTS:
        params["output_config"] = {"effort": reasoning}
    return params


class AnthropicAdapter(Adapter):
    provider = "anthropic"

    def __init__(self, options: AdapterOptions) -> None:
        self.client = build_client(options)

    async def aclose(self) -> None:
        await self.client.close()

    def _kwargs(self, spec: CallSpec) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": spec.model,
            "max_tokens": spec.max_tokens,
            "messages": [{"role": "user", "content": spec.prompt}],
            **thinking_params(spec.reasoning),
        }
        if spec.system is not None:
            kwargs["system"] = spec.system
        if spec.response_schema is not None:
            if "thinking" in kwargs and kwargs["thinking"]["type"] != "disabled":
                # forced tool use cannot be combined with thinking: ask for JSON output instead
                output = kwargs.setdefault("output_config", {})
                output["format"] = {"type": "json_schema", "schema": spec.response_schema}
            else:
                kwargs["tools"] = [
                    {
                        "name": spec.schema_name,
                        "description": "Record the answer.",
                        "input_schema": spec.response_schema,
                    }
                ]
                kwargs["tool_choice"] = {"type": "tool", "name": spec.schema_name}
        return kwargs

    async def call(self, spec: CallSpec) -> CallResult:
        kwargs = self._kwargs(spec)
        headers = {"Idempotency-Key": spec.idempotency_key} if spec.idempotency_key else None
        started = time.perf_counter()
        try:
            raw = await self.client.messages.with_raw_response.create(
                **kwargs, extra_body=spec.extra_body, extra_headers=headers
            )
            message = await raw.parse()
        except anthropic.APIStatusError as exc:
            raise _status_error(exc) from None
        except anthropic.APITimeoutError as exc:
            raise ProviderError(e.TIMEOUT, str(exc)) from None
        except anthropic.APIConnectionError as exc:
            raise ProviderError(e.CONNECTION, f"{exc} ({type(exc.__cause__).__name__})") from None
        except (anthropic.APIResponseValidationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProviderError(e.MALFORMED, f"the response could not be read: {exc}") from None
        latency_ms = round((time.perf_counter() - started) * 1000)
        return message_result(message, e.lower_headers(raw.headers), latency_ms)


def _status_error(exc: anthropic.APIStatusError) -> ProviderError:
    headers = e.lower_headers(exc.response.headers)
    reason = e.reason_for_status(exc.status_code)
    if isinstance(exc, anthropic.OverloadedError):
        reason = e.OVERLOADED
    elif isinstance(exc, _SPEND_LIMITS):
        reason = e.QUOTA_EXHAUSTED
    message = getattr(exc, "api_message", None) or exc.message
    return ProviderError(
        reason,
        str(message),
        status=exc.status_code,
        headers=headers,
        retry_after_s=e.retry_after(headers),
        code=exc.type,
    )


def message_result(message: Any, headers: dict[str, str], latency_ms: int) -> CallResult:
    texts: list[str] = []
    thinking: list[str] = []
    structured: dict[str, Any] | None = None
    for block in getattr(message, "content", None) or []:
        kind = getattr(block, "type", None)
        if kind == "text":
            texts.append(block.text)
        elif kind == "thinking":
            thinking.append(block.thinking)
        elif kind == "tool_use" and isinstance(getattr(block, "input", None), dict):
            structured = block.input
    usage = getattr(message, "usage", None)
    cache_read = getattr(usage, "cache_read_input_tokens", None)
    cache_write = getattr(usage, "cache_creation_input_tokens", None)
    input_tokens = getattr(usage, "input_tokens", None)
    if input_tokens is not None:
        input_tokens += (cache_read or 0) + (cache_write or 0)
    raw_finish = getattr(message, "stop_reason", None)
    text = "".join(texts)
    if structured is not None and not text:
        text = json.dumps(structured)
    return CallResult(
        text=text,
        finish_reason=_FINISH.get(raw_finish or "", FinishReason.other if raw_finish else FinishReason.stop),
        raw_finish_reason=raw_finish,
        usage=Usage(
            input_tokens=input_tokens,
            output_tokens=getattr(usage, "output_tokens", None),
            reasoning_tokens=getattr(getattr(usage, "output_tokens_details", None), "thinking_tokens", None),
            cached_tokens=cache_read,
        ),
        latency_ms=latency_ms,
        reasoning="\n\n".join(thinking) or None,
        provider_request_id=headers.get("request-id") or getattr(message, "id", None),
        structured=structured,
        rate_limit=e.rate_limit_state(headers),
    )
