"""Cursor pagination: opaque cursors over a (sort key, id) position."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from service.errors import FieldError, ValidationFailed

T = TypeVar("T")
# the longest cursor this API writes is well under this (an ISO time and a UUID, or a 200-character name)
MAX_CURSOR_CHARS = 1024
# cursors hold ordinals, which Postgres keeps in a 32-bit integer
MAX_ORDINAL = 2**31 - 1


class Page(BaseModel, Generic[T]):
    """A page of a list, with the cursor of the next page (None on the last)."""

    items: list[T]
    next_cursor: str | None


def encode_cursor(*position: Any) -> str:
    raw = json.dumps([str(p) if not isinstance(p, int | float) else p for p in position]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *kinds: Callable[[Any], Any]) -> list[Any]:
    """The position a cursor encodes, each part read by its kind (``text``, ``ordinal``, ``an_id``, ``instant``);
    a 422 naming ``cursor`` when it is not one of ours, whatever it holds: nothing forged reaches a query."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        position = json.loads(base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()))
        if not isinstance(position, list) or len(position) != len(kinds):
            raise ValueError("not a position")
        return [kind(part) for kind, part in zip(kinds, position, strict=True)]
    except (ValueError, TypeError, UnicodeDecodeError, binascii.Error, RecursionError) as exc:
        raise ValidationFailed("the cursor is not valid", [FieldError("cursor", "not a cursor from this API")]) from exc


def text(part: Any) -> str:
    """A name or version: a string that Postgres can hold (no NUL)."""
    if not isinstance(part, str) or "\x00" in part:
        raise ValueError("not text")
    return part


def ordinal(part: Any) -> int:
    if not isinstance(part, int) or isinstance(part, bool) or not 0 <= part <= MAX_ORDINAL:
        raise ValueError("not an ordinal")
    return part


def an_id(part: Any) -> uuid.UUID:
    return uuid.UUID(text(part))


def instant(part: Any) -> datetime:
    """A timezone-aware time (the columns are UTC; a naive one cannot be compared with them)."""
    value = datetime.fromisoformat(text(part))
    if value.tzinfo is None:
        raise ValueError("no time zone")
    return value
