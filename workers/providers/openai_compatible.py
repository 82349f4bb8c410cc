"""OpenAI-compatible endpoints (OpenRouter, vLLM, ...): the OpenAI adapter with another endpoint and key."""

from __future__ import annotations

from workers.providers.openai import OpenAIAdapter


class OpenAICompatibleAdapter(OpenAIAdapter):
    """Same wire format; the differences (a 200 carrying an error, ``message.reasoning``) are handled there."""

    provider = "openai_compatible"
