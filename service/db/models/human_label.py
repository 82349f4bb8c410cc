"""Reviewers' labels on a job's answers, for measuring the judge against people."""

from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, CreatedAt, UUIDPrimaryKey
from service.db.models._types import enum_column
from service.db.models.enums import ResponseType


class HumanLabel(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "human_labels"
    __table_args__ = (UniqueConstraint("request_id", "reviewer"),)

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    reviewer: Mapped[str] = mapped_column(String(100))
    response_type: Mapped[ResponseType] = mapped_column(enum_column(ResponseType, "human_response_type"))
    engages_with_defeat: Mapped[bool]
    independent_harm: Mapped[bool]
