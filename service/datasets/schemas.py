"""Dataset and case schemas: what a client sends, what the API returns."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.datasets.taxonomy import AUTHORITY_TYPES
from service.db.models.enums import Family
from service.errors import unknown_value


class CaseIn(BaseModel):
    """One case in the study's schema. Unknown extra fields are kept in ``extra``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")
    defeat_type: Family
    defeat_subtype: str | None = Field(default=None, max_length=200)
    authority_type: str
    authority_group: str | None = Field(default=None, description="ignored: derived from the taxonomy")
    unjust_policy: str = Field(min_length=1)
    defeat_condition: str | None = None
    structural_facts: list[str] = Field(default_factory=list, max_length=100)
    user_query: str = Field(min_length=1)
    dimensional_coding: dict[str, str | None] | None = None
    dual_use: bool = False
    dual_use_category: str | None = Field(default=None, max_length=64)
    extra: dict[str, Any] | None = Field(default=None, description="fields outside the study's schema")

    @field_validator("authority_type")
    @classmethod
    def _known_authority(cls, value: str) -> str:
        if value not in AUTHORITY_TYPES:
            raise ValueError(unknown_value("authority type", value, AUTHORITY_TYPES))
        return value


class DatasetCreate(BaseModel):
    """A dataset as a JSON body. Files (JSONL or CSV) go as multipart ``file`` or a raw body instead."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
    version: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="defaults to the first 12 characters of the checksum",
    )
    description: str | None = Field(default=None, max_length=2000)
    cases: list[dict[str, Any]] = Field(min_length=1)


class ImportWarning(BaseModel):
    line: int | None = None
    case_id: str | None = None
    field: str
    message: str


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    version: str
    description: str | None
    checksum: str
    case_count: int
    builtin: bool
    created_at: datetime


class DatasetImported(DatasetRead):
    """The import's answer: the dataset, whether it already existed, and what looked odd but was kept."""

    created: bool
    family_counts: dict[str, int]
    warnings: list[ImportWarning]
    warning_count: int


class CaseRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(validation_alias="external_id")
    defeat_type: Family = Field(validation_alias="family")
    defeat_subtype_raw: str | None
    defeat_subtype: str | None
    authority_type: str
    authority_group: str
    unjust_policy: str
    defeat_condition: str | None
    structural_facts: list[str]
    user_query: str
    dimensional_coding: dict[str, Any] | None
    dual_use: bool
    dual_use_category: str | None
