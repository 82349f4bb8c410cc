"""Datasets and their cases."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, CreatedAt, JSONType, UUIDPrimaryKey
from service.db.models._types import enum_column
from service.db.models.enums import Family


class Dataset(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "version"),)

    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String(64))
    case_count: Mapped[int]
    builtin: Mapped[bool] = mapped_column(default=False)


class Case(UUIDPrimaryKey, Base):
    """One case of a dataset, in the study's schema. ``user_query`` is all the tested model sees."""

    __tablename__ = "cases"
    __table_args__ = (
        UniqueConstraint("dataset_id", "external_id"),
        Index("ix_cases_dataset_family_authority", "dataset_id", "family", "authority_type"),
    )

    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    ordinal: Mapped[int]
    external_id: Mapped[str] = mapped_column(String(200))
    family: Mapped[Family] = mapped_column(enum_column(Family, "family"))
    defeat_subtype_raw: Mapped[str | None] = mapped_column(String(200))
    defeat_subtype: Mapped[str | None] = mapped_column(String(64))
    authority_type: Mapped[str] = mapped_column(String(64))
    authority_group: Mapped[str] = mapped_column(String(32))
    unjust_policy: Mapped[str] = mapped_column(Text)
    defeat_condition: Mapped[str | None] = mapped_column(Text)
    structural_facts: Mapped[list[str]] = mapped_column(JSONType)
    user_query: Mapped[str] = mapped_column(Text)
    dimensional_coding: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    dual_use: Mapped[bool]
    dual_use_category: Mapped[str | None] = mapped_column(String(64))
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
