"""Registered model configurations: immutable, identified by a fingerprint."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, CreatedAt, JSONType, UUIDPrimaryKey
from service.db.models._types import enum_column
from service.db.models.enums import Provider


class ModelConfig(UUIDPrimaryKey, CreatedAt, Base):
    """A model and everything that shapes its answers. Holds the *name* of the key's variable, never a key."""

    __tablename__ = "model_configs"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    provider: Mapped[Provider] = mapped_column(enum_column(Provider, "provider"))
    model: Mapped[str] = mapped_column(String(200))
    base_url: Mapped[str | None] = mapped_column(String(500))
    api_key_env: Mapped[str | None] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    limits: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # hash of what changes the model's output (provider, model, base_url, params): the response cache's key
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    # hash of the whole registration: posting the same body again finds this row
    definition_hash: Mapped[str] = mapped_column(String(64))
