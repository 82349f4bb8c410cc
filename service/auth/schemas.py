"""API token schemas. Only ``TokenCreated`` carries the token itself, once, in the answer that made it."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.auth.scopes import Scope, ordered

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]*")


class TokenCreate(BaseModel):
    """A token to make: a unique name saying who or what uses it, and at least one scope."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, examples=["release-ci"])
    scopes: list[Scope] = Field(min_length=1, examples=[["submit"]])

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("use letters, digits and . _ : @ / - (starting with a letter or digit)")
        return value

    @field_validator("scopes")
    @classmethod
    def _ordered(cls, value: list[Scope]) -> list[Scope]:
        return ordered(value)


class TokenRead(BaseModel):
    """A token as lists show it: its name and first characters, never the token or its hash."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str = Field(description="the token's first characters, to tell tokens apart")
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None = Field(description="to the minute: updated at most once a minute")
    revoked_at: datetime | None


class TokenCreated(TokenRead):
    """The answer to a create: the token itself is in it this once; only its hash is kept."""

    token: str = Field(description="send as `Authorization: Bearer <token>`; it cannot be shown again")
