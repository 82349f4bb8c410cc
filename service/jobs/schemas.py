"""Job schemas: the create body (with filters and gate), the status read, list summaries."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AnyUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    UrlConstraints,
    field_validator,
    model_validator,
)

from service.datasets.taxonomy import AUTHORITY_GROUPS, AUTHORITY_TYPES
from service.db.models.enums import Family, JobState
from service.errors import unknown_value

RATE_METRICS: Final = (
    "helps_rate",
    "refusal_rate",
    "hard_refusal_rate",
    "deflection_rate",
    "engagement_rate",
    "independent_harm_rate",
)
CATEGORIES: Final = ("helps", "pure_rule_blind", "safety_grounded", "engaged_only", "engaged_and_safety")
METRICS: Final = RATE_METRICS + tuple(f"categories.{c}" for c in CATEGORIES)
_CASES_PATTERN = re.compile(r"^(defeated|control|all|(family|authority_type|authority_group|dual_use):(.+))$")


class JobFilters(BaseModel):
    """Which cases of the dataset the job runs. ``limit`` takes a stable pseudo-random subset."""

    model_config = ConfigDict(extra="forbid")

    families: list[Family] | None = Field(default=None, min_length=1)
    authority_types: list[str] | None = Field(default=None, min_length=1)
    dual_use: bool | None = None
    case_ids: list[str] | None = Field(default=None, min_length=1, max_length=100_000)
    limit: StrictInt | None = Field(
        default=None,
        ge=1,
        description=(
            "at most this many cases, picked by a hash of their ids: the same limit on the same dataset "
            "always picks the same cases, and a larger limit keeps the cases of a smaller one"
        ),
    )

    @field_validator("authority_types")
    @classmethod
    def _known_authorities(cls, value: list[str] | None) -> list[str] | None:
        unknown = [a for a in value or [] if a not in AUTHORITY_TYPES]
        if unknown:
            raise ValueError("; ".join(unknown_value("authority type", a, AUTHORITY_TYPES) for a in unknown))
        return value


class GateCheck(BaseModel):
    """One check: an absolute threshold on a figure, or a paired regression test against a baseline config."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description=f"one of {', '.join(METRICS)}")
    cases: str = Field(
        default="defeated",
        description="defeated | control | all | family:<key> | authority_type:<key> | authority_group:<key> | "
        "dual_use:<true|false>",
    )
    op: Literal[">=", "<="] | None = Field(
        default=None,
        description="absolute check: the passing side of the threshold; regression check: which way is better "
        '(">=" higher), defaulting per metric and case group (helps/engagement on defeated cases: higher; refusal, '
        "hard refusal, deflection, pure rule-blind on defeated: lower; helps on control: lower, refusal: higher)",
    )
    threshold: StrictFloat | None = Field(default=None, ge=0, le=1)
    baseline: str | None = Field(default=None, description="a model config id or name in this job")
    alpha: StrictFloat = Field(default=0.05, gt=0, lt=1, description="the significance level of a regression check")
    margin: StrictFloat | None = Field(
        default=None,
        ge=0,
        le=1,
        description="regression check only (default 0.05): it passes when the paired difference's 95% interval "
        "rules out a regression larger than this; a significant regression fails; otherwise inconclusive",
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRICS:
            raise ValueError(unknown_value("metric", value, METRICS))
        return value

    @field_validator("cases")
    @classmethod
    def _known_group(cls, value: str) -> str:
        match = _CASES_PATTERN.match(value)
        allowed: dict[str, Any] = {
            "family": [f.value for f in Family],
            "authority_type": AUTHORITY_TYPES,
            "authority_group": tuple(AUTHORITY_GROUPS),
            "dual_use": ("true", "false"),
        }
        if not match:
            groups = ["defeated", "control", "all", *(f"{kind}:{key}" for kind in allowed for key in allowed[kind])]
            shown = "defeated, control, all, family:<key>, authority_type:<key>, authority_group:<key>, dual_use:<bool>"
            raise ValueError(unknown_value("case group", value, groups, shown))
        kind, key = match.group(2), match.group(3)
        if kind and key not in allowed[kind]:
            raise ValueError(unknown_value(kind.replace("_", " "), key, allowed[kind]))
        return value

    @model_validator(mode="after")
    def _absolute_or_paired(self) -> GateCheck:
        if self.baseline is None and (self.threshold is None or self.op is None):
            raise ValueError("a check needs op and threshold, or a baseline for a paired regression test")
        return self


class GateSpec(BaseModel):
    """A list of checks applied to every model config of the job except the baselines."""

    model_config = ConfigDict(extra="forbid")

    max_unjudged_share: StrictFloat = Field(
        default=0.02,
        ge=0,
        le=1,
        description="a check whose case group has a larger share of errored, unjudged or unfinished units is "
        "inconclusive",
    )
    checks: list[GateCheck] = Field(min_length=1, max_length=100)


def _canonical_ref(value: Any) -> Any:
    """An id in its canonical spelling (so that the same job body hashes alike however its ids are written); a
    name as it is."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            return value
    return value


Ref = Annotated[str, BeforeValidator(_canonical_ref), Field(min_length=1, max_length=300)]


def _no_credentials(url: AnyUrl) -> AnyUrl:
    # a password in a URL ends up in logs, proxies and every reader's view of the job: the signature authenticates
    if url.username is not None or url.password is not None:
        raise ValueError("must not contain credentials (user:password@): the receiver checks X-Defeater-Signature")
    return url


# http(s) only, as long as the column that keeps it, and no userinfo (service/jobs/webhook_target.py checks the host)
WebhookUrl = Annotated[
    AnyUrl, UrlConstraints(max_length=2048, allowed_schemes=["http", "https"]), AfterValidator(_no_credentials)
]


class JobCreate(BaseModel):
    """A job to start. The dataset and the configs are named as in the CLI: by id or by name."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: Ref = Field(
        description="the dataset's id, its name (its most recently imported version) or name@version"
    )
    model_config_ids: list[Ref] = Field(min_length=1, description="model configs to evaluate, each by id or name")
    judge_config_ids: list[Ref] | None = Field(
        default=None,
        min_length=1,
        description="judge configs, each by id or name; defaults to the service's default judge",
    )
    filters: JobFilters = Field(default_factory=JobFilters)
    samples_per_case: StrictInt = Field(default=1, ge=1)
    budget_usd: StrictFloat | None = Field(default=None, gt=0)
    use_cache: bool = Field(default=True, description="reuse identical earlier calls instead of paying again")
    webhook_url: WebhookUrl | None = Field(
        default=None,
        description="POSTed once when the job completes or fails, signed with the service's DEFEATER_WEBHOOK_SECRET "
        "(X-Defeater-Signature: sha256=HMAC of '<X-Defeater-Timestamp>.<body>'); a public host (unless the operator "
        "allows others), no credentials in the URL",
    )
    gate: GateSpec | None = None


class UnitCounts(BaseModel):
    total: int = 0
    pending: int = 0
    leased: int = 0
    succeeded: int = 0
    failed: int = 0


class Progress(BaseModel):
    requests: UnitCounts
    judgements: UnitCounts


class Tokens(BaseModel):
    input: int = 0
    output: int = 0
    reasoning: int = 0
    cached: int = 0


class JobSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    state: JobState
    dataset_id: uuid.UUID
    case_count: int
    request_count: int
    samples_per_case: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobRead(JobSummary):
    model_config_ids: list[uuid.UUID]
    judge_config_ids: list[uuid.UUID]
    filters: dict[str, Any]
    budget_usd: float | None
    use_cache: bool
    webhook_url: str | None = None
    gate: dict[str, Any] | None
    progress: Progress
    calls_per_second: float
    eta_seconds: float | None
    cost_usd: float
    tokens: Tokens
    errors_by_kind: dict[str, int]
    error: str | None = Field(
        description="why the job failed, in one line: e.g. a config whose key is not set in the process that would "
        'call it (`judge "default-judge" needs OPENAI_API_KEY, which is not set`), or no answer judged'
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="empty for a clean job; otherwise a short sentence per problem: units that failed (while the job "
        "runs too: a failed unit is final), e.g. `3 of 168 requests failed (rate_limited: 2, bad_request: 1)`, and, "
        "once the job has ended, answers that stayed unjudged and units never run (a cancelled job)",
    )


class RetryPhase(StrEnum):
    """The phase of a job's units: its target calls, or its judge calls."""

    requests = "requests"
    judgements = "judgements"


class JobRetry(BaseModel):
    """Which failed units of a finished job go back to pending; nothing given: every failed unit of both phases."""

    model_config = ConfigDict(extra="forbid")

    reasons: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="only units that failed for one of these reasons: a reason as `errors_by_kind` shows it "
        "(`server_error after 6 attempts`) or its first word (`server_error`); `unknown` is a failure without one",
    )
    phase: RetryPhase | None = Field(default=None, description="only target requests, or only judgements")


class RetriedUnits(BaseModel):
    """How many failed units of each phase went back to pending."""

    requests: int = 0
    judgements: int = 0


class JobRetryRead(JobRead):
    """The job after a retry (``running`` again), with how many of its failed units went back to pending."""

    retried: RetriedUnits
