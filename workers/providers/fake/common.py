"""Small shared types of the fake provider: what a request asks, what it is answered, and the hash draws."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Wire(StrEnum):
    """The four request formats the fake speaks."""

    chat = "chat"
    responses = "responses"
    anthropic = "anthropic"
    gemini = "gemini"


@dataclass(frozen=True)
class ParsedRequest:
    """One model call, read from any of the wire formats."""

    wire: Wire
    model: str
    system: str
    user: str
    tool_name: str | None = None  # Anthropic forced tool use: answer with this tool
    wants_reasoning: bool = True  # the request does not turn reasoning text off (see parse.py)

    @property
    def prompt(self) -> str:
        """``system + "\\n\\n" + user``, or the user text alone when there is no system text."""
        return f"{self.system}\n\n{self.user}" if self.system else self.user


@dataclass(frozen=True)
class TokenUsage:
    """Tokens of one answer; ``output`` includes ``reasoning`` (as OpenAI and Anthropic count)."""

    input: int
    output: int
    reasoning: int = 0
    cached: int = 0


@dataclass(frozen=True)
class Answer:
    """A successful answer before it is put on the wire."""

    text: str
    usage: TokenUsage
    reasoning: str | None = None
    structured: dict[str, Any] | None = field(default=None, hash=False)  # the judge's labels, when valid


@dataclass(frozen=True)
class ErrorReply:
    """An answer that is an HTTP error (replayed recorded errors, unknown models or queries)."""

    status: int
    message: str


def tokens(text: str) -> int:
    """The fake's token estimate: a token per 4 characters, rounded up."""
    return math.ceil(len(text) / 4)


class Draws:
    """Uniform numbers in [0, 1) drawn from a sha256 of the given parts: the same parts, the same numbers."""

    def __init__(self, *parts: object) -> None:
        self._digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
        self._next = 0

    def uniform(self) -> float:
        if self._next + 4 > len(self._digest):
            self._digest = hashlib.sha256(self._digest).digest()
            self._next = 0
        value = int.from_bytes(self._digest[self._next : self._next + 4], "big") / 2**32
        self._next += 4
        return value

    def index(self, n: int) -> int:
        """An index in ``range(n)``."""
        return min(int(self.uniform() * n), n - 1)
