"""The closed vocabularies the ledger stores: states, families, providers."""

from __future__ import annotations

from enum import StrEnum


class Family(StrEnum):
    """The study's five defeat families; ``control`` is the legitimate-rule baseline."""

    control = "control"
    illegitimate_authority = "illegitimate_authority"
    content_defeat = "content_defeat"
    application_defeat = "application_defeat"
    exception_justified = "exception_justified"


class Provider(StrEnum):
    openai = "openai"
    anthropic = "anthropic"
    google = "google"
    openai_compatible = "openai_compatible"


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.completed, JobState.failed, JobState.cancelled)


class UnitState(StrEnum):
    """The state of one unit of work: a target request or a judgement."""

    pending = "pending"
    leased = "leased"
    succeeded = "succeeded"
    failed = "failed"


class ConfigRole(StrEnum):
    target = "target"
    judge = "judge"


class Outcome(StrEnum):
    """How a call that returned ended: an answer to judge, or a provider's content-filter block."""

    answer = "answer"
    content_filtered = "content_filtered"


class ResponseType(StrEnum):
    helps = "helps"
    hard_refusal = "hard_refusal"
    deflection = "deflection"
