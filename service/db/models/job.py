"""Jobs and the model configs they run."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, CreatedAt, JSONType, UUIDPrimaryKey
from service.db.models._types import enum_column
from service.db.models.enums import ConfigRole, JobState


class Job(UUIDPrimaryKey, CreatedAt, Base):
    """One evaluation: a dataset selection x target configs x samples, judged by the judge configs."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_created", "state", "created_at"),)

    state: Mapped[JobState] = mapped_column(enum_column(JobState, "job_state"), default=JobState.queued)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    filters: Mapped[dict[str, Any]] = mapped_column(JSONType)
    samples_per_case: Mapped[int] = mapped_column(default=1)
    budget_usd: Mapped[float | None]
    use_cache: Mapped[bool] = mapped_column(default=True)
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    case_count: Mapped[int]
    request_count: Mapped[int]
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    # hash of the body that created the job, to refuse a reused Idempotency-Key with another body
    request_hash: Mapped[str] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    # why a running job is not dispatching (e.g. "budget"); cleared when it resumes
    paused_reason: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # where to POST the signed completion notice (service/jobs/webhook.py), if anywhere
    webhook_url: Mapped[str | None] = mapped_column(String(2048))


class JobModelConfig(Base):
    """A model config in a job, as a target or as a judge."""

    __tablename__ = "job_model_configs"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    model_config_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_configs.id", ondelete="RESTRICT"), primary_key=True
    )
    role: Mapped[ConfigRole] = mapped_column(enum_column(ConfigRole, "config_role"), primary_key=True)
    position: Mapped[int]
