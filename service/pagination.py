"""Cursor pagination: opaque cursors over a (sort key, id) position."""

from __future__ import annotations

import base64
import json
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from service.errors import FieldError, ValidationFailed

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of a list, with the cursor of the next page (None on the last)."""

    items: list[T]
    next_cursor: str | None


def encode_cursor(*position: Any) -> str:
    raw = json.dumps([str(p) if not isinstance(p, int | float) else p for p in position]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    """The position a cursor encodes; a 422 naming ``cursor`` when it is not one of ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("the cursor is not valid", [FieldError("cursor", "not a cursor from this API")]) from exc
    if not isinstance(position, list) or len(position) != arity:
        raise ValidationFailed("the cursor is not valid", [FieldError("cursor", "not a cursor from this API")])
    return position
