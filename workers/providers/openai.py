"""OpenAI: Chat Completions by default, the Responses API when asked (for reasoning summaries)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import openai

from workers.providers import errors as e
from workers.providers.base import Adapter, AdapterOptions, CallResult, CallSpec, FinishReason, ProviderError, Usage

T = TypeVar("T")
_CHAT_FINISH = {
    "stop": FinishReason.stop,
    "length": FinishReason.length,
    "content_filter": FinishReason.content_filter,
    "tool_calls": FinishReason.tool_use,
    "function_call": FinishReason.tool_use,
}
# OpenRouter puts numeric codes in a 200 body's `error`; 402 is out of credits
_OPENROUTER_CODES = {402: e.QUOTA_EXHAUSTED, 429: e.RATE_LIMITED, 408: e.TIMEOUT}


def build_client(options: AdapterOptions) -> openai.AsyncOpenAI:
    timeout = options.timeout()
    return openai.AsyncOpenAI(
        api_key=options.api_key,
        base_url=options.base_url,
        max_retries=0,
        timeout=timeout,
        default_headers=options.extra_headers or None,
        http_client=openai.DefaultAsyncHttpxClient(**options.http_options()),
    )


async def guarded(call: Callable[[], Awaitable[T]]) -> T:
    """Run an SDK call, turning every OpenAI SDK or transport failure into a ProviderError."""
    try:
        return await call()
    except openai.APIStatusError as exc:
        headers = e.lower_headers(exc.response.headers)
        code = exc.code if isinstance(exc.code, str) else None
        reason = e.reason_for_status(exc.status_code)
        if code == "insufficient_quota":
            reason = e.QUOTA_EXHAUSTED
        raise ProviderError(
            reason,
            exc.message,
            status=exc.status_code,
            headers=headers,
            retry_after_s=e.retry_after(headers),
            code=code,
        ) from None
    except openai.APITimeoutError as exc:
        raise ProviderError(e.TIMEOUT, str(exc)) from None
    except openai.APIConnectionError as exc:
        raise ProviderError(e.CONNECTION, f"{exc} ({type(exc.__cause__).__name__})") from None
    except (openai.APIResponseValidationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProviderError(e.MALFORMED, f"the response could not be read: {exc}") from None


class OpenAIAdapter(Adapter):
    provider = "openai"

    def __init__(self, options: AdapterOptions, *, api: str = "chat") -> None:
        self.client = build_client(options)
        self.api = api

    async def aclose(self) -> None:
        await self.client.close()

    async def call(self, spec: CallSpec) -> CallResult:
        if self.api == "responses":
            return await self._responses(spec)
        return await self._chat(spec)

    def _headers(self, spec: CallSpec) -> dict[str, str] | None:
        return {"Idempotency-Key": spec.idempotency_key} if spec.idempotency_key else None

    async def _chat(self, spec: CallSpec) -> CallResult:
        messages: list[dict[str, str]] = []
        if spec.system is not None:
            messages.append({"role": "system", "content": spec.system})
        messages.append({"role": "user", "content": spec.prompt})
        kwargs: dict[str, Any] = {"model": spec.model, "messages": messages, "max_completion_tokens": spec.max_tokens}
        if spec.temperature is not None:
            kwargs["temperature"] = spec.temperature
        if spec.top_p is not None:
            kwargs["top_p"] = spec.top_p
        if isinstance(spec.reasoning, str):
            kwargs["reasoning_effort"] = spec.reasoning
        if spec.response_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": spec.schema_name, "schema": spec.response_schema, "strict": True},
            }
        started = time.perf_counter()

        async def create() -> Any:
            raw = await self.client.chat.completions.with_raw_response.create(
                **kwargs, extra_body=spec.extra_body, extra_headers=self._headers(spec)
            )
            return raw, raw.parse()

        raw, completion = await guarded(create)
        latency_ms = round((time.perf_counter() - started) * 1000)
        headers = e.lower_headers(raw.headers)
        return chat_result(completion, headers, latency_ms)

    async def _responses(self, spec: CallSpec) -> CallResult:
        kwargs: dict[str, Any] = {"model": spec.model, "input": spec.prompt, "max_output_tokens": spec.max_tokens}
        if spec.system is not None:
            kwargs["instructions"] = spec.system
        if spec.temperature is not None:
            kwargs["temperature"] = spec.temperature
        if spec.top_p is not None:
            kwargs["top_p"] = spec.top_p
        if isinstance(spec.reasoning, str):
            kwargs["reasoning"] = {"effort": spec.reasoning, "summary": "auto"}
        if spec.response_schema is not None:
            kwargs["text"] = {
                "format": {"type": "json_schema", "name": spec.schema_name, "schema": spec.response_schema}
            }
        started = time.perf_counter()

        async def create() -> Any:
            raw = await self.client.responses.with_raw_response.create(
                **kwargs, extra_body=spec.extra_body, extra_headers=self._headers(spec)
            )
            return raw, raw.parse()

        raw, response = await guarded(create)
        latency_ms = round((time.perf_counter() - started) * 1000)
        return responses_result(response, e.lower_headers(raw.headers), latency_ms)


def _openrouter_error(completion: Any) -> ProviderError | None:
    """An HTTP 200 whose body is an error (OpenRouter after routing): an error, not an answer."""
    extra = getattr(completion, "model_extra", None) or {}
    error = extra.get("error")
    if not error or getattr(completion, "choices", None):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
    status = code if isinstance(code, int) else None
    reason = _OPENROUTER_CODES.get(status or 0) or (e.reason_for_status(status) if status else e.PROVIDER_ERROR)
    return ProviderError(reason, message, status=status)


def chat_result(completion: Any, headers: dict[str, str], latency_ms: int) -> CallResult:
    """A chat completion (possibly sparse: the SDK validates nothing) as a CallResult."""
    if (error := _openrouter_error(completion)) is not None:
        raise error
    choices = getattr(completion, "choices", None) or []
    if not choices:
        raise ProviderError(e.MALFORMED, "the response has no choices")
    choice = choices[0]
    message = choice.message
    extra = getattr(message, "model_extra", None) or {}
    reasoning = extra.get("reasoning") or extra.get("reasoning_content")
    usage = getattr(completion, "usage", None)
    details = getattr(usage, "completion_tokens_details", None)
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    raw_finish = choice.finish_reason
    return CallResult(
        text=message.content or "",
        finish_reason=_CHAT_FINISH.get(raw_finish or "", FinishReason.other if raw_finish else FinishReason.stop),
        raw_finish_reason=raw_finish,
        usage=Usage(
            input_tokens=getattr(usage, "prompt_tokens", None),
            output_tokens=getattr(usage, "completion_tokens", None),
            reasoning_tokens=getattr(details, "reasoning_tokens", None),
            cached_tokens=getattr(prompt_details, "cached_tokens", None),
        ),
        latency_ms=latency_ms,
        reasoning=reasoning if isinstance(reasoning, str) and reasoning else None,
        provider_request_id=headers.get("x-request-id") or getattr(completion, "id", None),
        rate_limit=e.rate_limit_state(headers),
    )


def responses_result(response: Any, headers: dict[str, str], latency_ms: int) -> CallResult:
    texts: list[str] = []
    summaries: list[str] = []
    for item in getattr(response, "output", None) or []:
        kind = getattr(item, "type", None)
        if kind == "message":
            texts += [c.text for c in item.content or [] if getattr(c, "type", None) == "output_text"]
        elif kind == "reasoning":
            summaries += [s.text for s in getattr(item, "summary", None) or [] if getattr(s, "text", None)]
            summaries += [c.text for c in getattr(item, "content", None) or [] if getattr(c, "text", None)]
    status = getattr(response, "status", None)
    incomplete = getattr(getattr(response, "incomplete_details", None), "reason", None)
    if incomplete == "content_filter":
        finish = FinishReason.content_filter
    elif incomplete == "max_output_tokens":
        finish = FinishReason.length
    else:
        finish = FinishReason.stop if status in (None, "completed") else FinishReason.other
    usage = getattr(response, "usage", None)
    return CallResult(
        text="".join(texts),
        finish_reason=finish,
        raw_finish_reason=incomplete or status,
        usage=Usage(
            input_tokens=getattr(usage, "input_tokens", None),
            output_tokens=getattr(usage, "output_tokens", None),
            reasoning_tokens=getattr(getattr(usage, "output_tokens_details", None), "reasoning_tokens", None),
            cached_tokens=getattr(getattr(usage, "input_tokens_details", None), "cached_tokens", None),
        ),
        latency_ms=latency_ms,
        reasoning="\n\n".join(summaries) or None,
        provider_request_id=headers.get("x-request-id") or getattr(response, "id", None),
        rate_limit=e.rate_limit_state(headers),
    )
