"""The three providers' bodies and headers: successes, content filters, errors and rate-limit headers."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from typing import Any

from workers.providers.fake.common import Answer, ParsedRequest, Wire
from workers.providers.fake.limits import RateState

Headers = list[tuple[bytes, bytes]]

_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("service_unavailable", None),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    529: "overloaded_error",
}
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


# ---- successes ---------------------------------------------------------------------------------------------


def _chat(req: ParsedRequest, answer: Answer, request_id: str, filtered: bool) -> dict[str, Any]:
    usage = answer.usage
    message: dict[str, Any] = {"role": "assistant", "content": "" if filtered else answer.text, "refusal": None}
    if answer.reasoning and not filtered:
        message["reasoning"] = answer.reasoning  # OpenRouter / vLLM style
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "content_filter" if filtered else "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": usage.input,
            "completion_tokens": usage.output,
            "total_tokens": usage.input + usage.output,
            "prompt_tokens_details": {"cached_tokens": usage.cached},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
        },
    }


def _responses(req: ParsedRequest, answer: Answer, request_id: str, filtered: bool) -> dict[str, Any]:
    usage = answer.usage
    output: list[dict[str, Any]] = []
    if answer.reasoning and not filtered:
        summary = [{"type": "summary_text", "text": answer.reasoning}]
        output.append({"type": "reasoning", "id": f"rs_{request_id}", "summary": summary})
    if not filtered:
        content = [{"type": "output_text", "text": answer.text, "annotations": []}]
        message = {"type": "message", "id": f"msg_{request_id}", "role": "assistant", "status": "completed"}
        output.append({**message, "content": content})
    return {
        "id": f"resp_{request_id}",
        "object": "response",
        "created_at": time.time(),
        "model": req.model,
        "status": "incomplete" if filtered else "completed",
        "incomplete_details": {"reason": "content_filter"} if filtered else None,
        "error": None,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": usage.input,
            "input_tokens_details": {"cached_tokens": usage.cached},
            "output_tokens": usage.output,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning},
            "total_tokens": usage.input + usage.output,
        },
    }


def _anthropic_content(req: ParsedRequest, answer: Answer, request_id: str) -> tuple[list[dict[str, Any]], str]:
    content: list[dict[str, Any]] = []
    if answer.reasoning:
        content.append({"type": "thinking", "thinking": answer.reasoning, "signature": f"fake-{request_id}"})
    if req.tool_name and answer.structured is not None:
        tool = {"type": "tool_use", "id": f"toolu_{request_id}", "name": req.tool_name, "input": answer.structured}
        return [*content, tool], "tool_use"
    return [*content, {"type": "text", "text": answer.text}], "end_turn"


def _anthropic(req: ParsedRequest, answer: Answer, request_id: str, filtered: bool) -> dict[str, Any]:
    usage = answer.usage
    content, stop = ([], "refusal") if filtered else _anthropic_content(req, answer, request_id)
    return {
        "id": f"msg_{request_id}",
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            # Anthropic's input_tokens leaves out cache reads: the three input counts add up to the prompt
            "input_tokens": max(0, usage.input - usage.cached),
            "cache_read_input_tokens": usage.cached,
            "cache_creation_input_tokens": 0,
            "output_tokens": usage.output,
            "output_tokens_details": {"thinking_tokens": usage.reasoning},
        },
    }


def _gemini(req: ParsedRequest, answer: Answer, request_id: str, filtered: bool) -> dict[str, Any]:
    usage = answer.usage
    candidate: dict[str, Any] = {"finishReason": "SAFETY" if filtered else "STOP", "index": 0}
    if not filtered:
        parts: list[dict[str, Any]] = [{"text": answer.reasoning, "thought": True}] if answer.reasoning else []
        candidate["content"] = {"role": "model", "parts": [*parts, {"text": answer.text}]}
    return {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": usage.input,
            "candidatesTokenCount": usage.output - usage.reasoning,
            "thoughtsTokenCount": usage.reasoning,
            "cachedContentTokenCount": usage.cached,
            "totalTokenCount": usage.input + usage.output,
        },
        "modelVersion": req.model,
        "responseId": request_id,
    }


_SUCCESS = {Wire.chat: _chat, Wire.responses: _responses, Wire.anthropic: _anthropic, Wire.gemini: _gemini}


def success(req: ParsedRequest, answer: Answer, request_id: str, *, content_filter: bool = False) -> bytes:
    """The 200 body of ``answer`` in the request's format; ``content_filter`` gives a filtered, empty answer."""
    return dumps(_SUCCESS[req.wire](req, answer, request_id, content_filter))


# ---- errors ------------------------------------------------------------------------------------------------


def _gemini_details(retry_after_s: int | None) -> list[dict[str, Any]]:
    if retry_after_s is None:
        return []
    quota = {"quotaMetric": "generate_content_requests", "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}
    return [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [quota]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after_s}s"},
    ]


def error(
    wire: Wire, status: int, message: str, request_id: str, *, retry_after_s: int | None = None, kind: str = ""
) -> bytes:
    """An error body in the provider's format. ``kind`` refines OpenAI's 429 type ("requests" or "tokens")."""
    if wire is Wire.anthropic:
        error_type = _ANTHROPIC_ERRORS.get(status, "api_error")
        return dumps(
            {"type": "error", "error": {"type": error_type, "message": message}, "request_id": f"req_{request_id}"}
        )
    if wire is Wire.gemini:
        body = {"code": status, "message": message, "status": _GEMINI_STATUS.get(status, "UNKNOWN")}
        return dumps({"error": {**body, "details": _gemini_details(retry_after_s)}})
    error_type, code = _OPENAI_ERRORS.get(status, ("server_error", None))
    if status == 429 and kind:
        error_type = kind
    return dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})


# ---- headers -----------------------------------------------------------------------------------------------


def id_headers(wire: Wire, request_id: str) -> Headers:
    """The provider's request-id header (Gemini's id travels in the body as ``responseId``)."""
    if wire is Wire.anthropic:
        return [(b"request-id", f"req_{request_id}".encode())]
    return [(b"x-request-id", f"req_{request_id}".encode())]


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``12ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{math.ceil(rest)}s"


def _timestamp(seconds_from_now: float) -> str:
    when = datetime.fromtimestamp(math.ceil(time.time() + seconds_from_now), tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _rate_triple(prefix: str, limit: int, remaining: int, reset: str, anthropic: bool) -> Headers:
    names = ("limit", "remaining", "reset")
    values = (str(limit), str(remaining), reset)
    if anthropic:
        return [(f"anthropic-ratelimit-{prefix}-{n}".encode(), v.encode()) for n, v in zip(names, values, strict=True)]
    return [(f"x-ratelimit-{n}-{prefix}".encode(), v.encode()) for n, v in zip(names, values, strict=True)]


def rate_headers(wire: Wire, state: RateState) -> Headers:
    """Limit, remaining and reset headers of the limits configured (OpenAI and Anthropic; none for Gemini)."""
    if wire is Wire.gemini:
        return []
    anthropic = wire is Wire.anthropic
    reset = _timestamp if anthropic else duration
    headers: Headers = []
    if state.limit_requests is not None and state.remaining_requests is not None:
        triple = (state.limit_requests, state.remaining_requests, reset(state.reset_requests_s))
        headers += _rate_triple("requests", *triple, anthropic)
    if state.limit_tokens is not None and state.remaining_tokens is not None:
        triple = (state.limit_tokens, state.remaining_tokens, reset(state.reset_tokens_s))
        headers += _rate_triple("tokens", *triple, anthropic)
    return headers
