"""Units of work and what they produced: target requests, their responses, and judgements."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, CreatedAt, utcnow
from service.db.models._types import enum_column
from service.db.models.enums import Outcome, ResponseType, UnitState

# the failure reason of a judgement whose judge gave no valid verdict in every answer it was allowed
UNSCORABLE = "unscorable"


class _Unit(CreatedAt):
    """The state machine shared by requests and judgements: pending -> leased -> succeeded | failed."""

    # calls made (a cache hit makes none); 429s are counted apart and have their own, larger budget
    attempts: Mapped[int] = mapped_column(default=0)
    rate_limited: Mapped[int] = mapped_column(default=0, server_default="0")
    # the last failure's signature and how many times in a row it repeated: identical repeats are quarantined
    last_error: Mapped[str | None] = mapped_column(Text)
    error_repeats: Mapped[int] = mapped_column(default=0, server_default="0")
    lease_expires_at: Mapped[datetime | None]
    leased_by: Mapped[str | None] = mapped_column(String(200))
    # earliest time of the next attempt (backoff); NULL means now
    not_before: Mapped[datetime | None]
    failure_reason: Mapped[str | None] = mapped_column(String(64))
    failure_detail: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Request(_Unit, Base):
    """One target call: job x model config x case x sample. Its id derives from those four."""

    __tablename__ = "requests"
    __table_args__ = (
        UniqueConstraint("job_id", "model_config_id", "case_id", "sample_index"),
        # claim pending work by job
        Index("ix_requests_job_state", "job_id", "state", "not_before"),
        # claim a config's pending work (a worker's lane); aggregate by config (x family, through cases)
        Index("ix_requests_job_config_state", "job_id", "model_config_id", "state", "not_before"),
        # the reconciler's sweep of expired leases
        Index("ix_requests_state_lease", "state", "lease_expires_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    model_config_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("model_configs.id", ondelete="RESTRICT"))
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id", ondelete="RESTRICT"))
    sample_index: Mapped[int] = mapped_column(default=0)
    state: Mapped[UnitState] = mapped_column(enum_column(UnitState, "request_state"), default=UnitState.pending)


class Response(CreatedAt, Base):
    """What a target call returned: text, reasoning, finish reason, usage, latency, cost."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_job_config", "job_id", "model_config_id"),)

    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    model_config_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("model_configs.id", ondelete="RESTRICT"))
    outcome: Mapped[Outcome] = mapped_column(enum_column(Outcome, "outcome"))
    text: Mapped[str] = mapped_column(Text)
    reasoning: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(64))
    input_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    reasoning_tokens: Mapped[int | None]
    cached_tokens: Mapped[int | None]
    latency_ms: Mapped[int | None]
    provider_request_id: Mapped[str | None] = mapped_column(String(200))
    cost_usd: Mapped[float | None]
    # the response cache: hash of (config fingerprint, rendered prompt, sample index)
    cache_key: Mapped[str] = mapped_column(String(64), index=True)
    # set when this answer was reused from an earlier identical call instead of paid for again
    reused_from: Mapped[uuid.UUID | None]


class Judgement(_Unit, Base):
    """One judge call on one answer; its labels are NULL until it succeeds, never guessed."""

    __tablename__ = "judgements"
    __table_args__ = (
        UniqueConstraint("request_id", "judge_config_id"),
        Index("ix_judgements_job_state", "job_id", "state", "not_before"),
        Index("ix_judgements_job_judge_state", "job_id", "judge_config_id", "state", "not_before"),
        Index("ix_judgements_state_lease", "state", "lease_expires_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    judge_config_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("model_configs.id", ondelete="RESTRICT"))
    state: Mapped[UnitState] = mapped_column(enum_column(UnitState, "judgement_state"), default=UnitState.pending)
    response_type: Mapped[ResponseType | None] = mapped_column(enum_column(ResponseType, "response_type"))
    engages_with_defeat: Mapped[bool | None]
    independent_harm: Mapped[bool | None]
    reasoning: Mapped[str | None] = mapped_column(Text)
    raw_text: Mapped[str | None] = mapped_column(Text)
    prompt_version: Mapped[str | None] = mapped_column(String(64))
    input_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    latency_ms: Mapped[int | None]
    cost_usd: Mapped[float | None]
