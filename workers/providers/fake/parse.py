"""Reading a model call out of each wire format's request body: model, system text, user text, what it asks for."""

from __future__ import annotations

from typing import Any

from workers.providers.fake.common import ParsedRequest, Wire


class BadRequest(ValueError):
    """The body is not a request the fake understands (answered with a 400 in the provider's format)."""


def _text(content: Any) -> str:
    """The text of a message content: a string, or a list of text parts / blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n\n".join(_text(part) for part in content if _text(part))
    if isinstance(content, dict):
        text = content.get("text")
        if isinstance(text, str):
            return text
        return _text(content.get("content")) if "content" in content else ""
    return ""


def _join(texts: list[str]) -> str:
    return "\n\n".join(t for t in texts if t)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("`model` is required")
    return model


def _split_messages(messages: Any, system_roles: tuple[str, ...]) -> tuple[list[str], list[str]]:
    if isinstance(messages, str):
        return [], [messages]
    if not isinstance(messages, list):
        raise BadRequest("the messages are missing")
    system: list[str] = []
    user: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role", "user")
        if role in system_roles:
            system.append(_text(message.get("content")))
        elif role == "user":
            user.append(_text(message.get("content")))
    return system, user


def parse_chat(body: dict[str, Any]) -> ParsedRequest:
    """OpenAI Chat Completions. Reasoning text is off with ``reasoning_effort="none"`` or ``reasoning.exclude``."""
    system, user = _split_messages(body.get("messages"), ("system", "developer"))
    reasoning = body.get("reasoning")
    excluded = isinstance(reasoning, dict) and bool(reasoning.get("exclude"))
    return ParsedRequest(
        wire=Wire.chat,
        model=_model(body),
        system=_join(system),
        user=_join(user),
        wants_reasoning=not excluded and body.get("reasoning_effort") != "none",
    )


def parse_responses(body: dict[str, Any]) -> ParsedRequest:
    """OpenAI Responses: ``instructions`` + ``input`` (a string or message items)."""
    system, user = _split_messages(body.get("input"), ("system", "developer"))
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        system.insert(0, instructions)
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    return ParsedRequest(
        wire=Wire.responses,
        model=_model(body),
        system=_join(system),
        user=_join(user),
        wants_reasoning=effort != "none",
    )


def _forced_tool(body: dict[str, Any]) -> str | None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list) or not tools or not isinstance(choice, dict):
        return None
    if choice.get("type") == "tool" and isinstance(choice.get("name"), str):
        return str(choice["name"])
    first = tools[0]
    if choice.get("type") == "any" and isinstance(first, dict) and isinstance(first.get("name"), str):
        return str(first["name"])
    return None


def parse_anthropic(body: dict[str, Any]) -> ParsedRequest:
    """Anthropic Messages. Thinking text comes back when ``thinking`` is enabled or adaptive (not omitted)."""
    _, user = _split_messages(body.get("messages"), ())
    thinking = body.get("thinking")
    wants = (
        isinstance(thinking, dict)
        and thinking.get("type") in ("enabled", "adaptive")
        and thinking.get("display") != "omitted"
    )
    return ParsedRequest(
        wire=Wire.anthropic,
        model=_model(body),
        system=_text(body.get("system")),
        user=_join(user),
        tool_name=_forced_tool(body),
        wants_reasoning=wants,
    )


def _include_thoughts(config: dict[str, Any]) -> bool:
    thinking = config.get("thinkingConfig") or config.get("thinking_config")
    if not isinstance(thinking, dict):
        return False
    return bool(thinking.get("includeThoughts") or thinking.get("include_thoughts"))


def _system_instruction(value: Any) -> str:
    return _text(value.get("parts")) if isinstance(value, dict) else _text(value)


def parse_gemini(body: dict[str, Any], model: str) -> ParsedRequest:
    """Gemini generateContent (the model comes from the path). Thought parts need ``include_thoughts``."""
    user: list[str] = []
    for content in body.get("contents") or []:
        if isinstance(content, dict) and content.get("role", "user") == "user":
            user.append(_text(content.get("parts")))
    config = body.get("generationConfig") or body.get("generation_config") or {}
    if not isinstance(config, dict):
        raise BadRequest("`generationConfig` must be an object")
    return ParsedRequest(
        wire=Wire.gemini,
        model=model.removeprefix("models/"),
        system=_system_instruction(body.get("systemInstruction") or body.get("system_instruction")),
        user=_join(user),
        wants_reasoning=_include_thoughts(config),
    )
