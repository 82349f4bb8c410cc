"""API tokens: who may call the REST API, and with which scopes. Holds a hash of each token, never the token."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, CreatedAt, JSONType, UUIDPrimaryKey


class ApiToken(UUIDPrimaryKey, CreatedAt, Base):
    """A bearer token. ``token_hash`` (SHA-256, hex) finds it; ``prefix`` (its first characters) names it to people.

    Revoking sets ``revoked_at`` and keeps the row, so that a list still shows which token was used until when.
    """

    __tablename__ = "api_tokens"

    name: Mapped[str] = mapped_column(String(100), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # scope names ("read", "submit", "admin"), as given when the token was made
    scopes: Mapped[list[str]] = mapped_column(JSONType)
    # set at most once a minute per token, so that reads do not all become writes
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
