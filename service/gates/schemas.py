"""The gate verdict contract: per config, each check with its figure, interval, threshold, test, p-value, verdict."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field

from service.gates.rules import Op, Verdict
from service.jobs.schemas import GateSpec


class PairedDifference(BaseModel):
    """Candidate minus baseline on the paired units, with its Agresti-Min 95% interval."""

    value: float | None
    ci95: tuple[float, float] | None
    margin: float = Field(description="a regression larger than this must be ruled out for the check to pass")


class CheckResult(BaseModel):
    """One check of the gate on one config."""

    index: int = Field(description="the check's position in the gate's checks")
    kind: Literal["absolute", "regression"]
    metric: str
    cases: str
    op: Op = Field(description="the passing side (absolute) or the better direction (regression)")
    figure: float | None = Field(description="the config's figure (regression: on the paired units)")
    ci95: tuple[float, float] | None = Field(description="the figure's Wilson 95% interval")
    threshold: float | None = None
    baseline: str | None = Field(default=None, description="the baseline as the gate names it")
    baseline_model_config_id: uuid.UUID | None = None
    baseline_figure: float | None = Field(default=None, description="the baseline's figure on the same units")
    difference: PairedDifference | None = None
    alpha: float | None = Field(default=None, description="a regression check's significance level")
    test: Literal["binomial_exact", "mcnemar_exact"] = Field(
        description="binomial_exact: one-sided exact binomial test against the threshold; mcnemar_exact: one-sided "
        "exact McNemar test on the discordant pairs"
    )
    p_value: float | None = Field(
        description="one-sided, in the failing direction: small means significantly worse than the threshold or the "
        "baseline"
    )
    n: int = Field(description="judged answers (absolute) or pairs of judged answers (regression)")
    units: int = Field(description="requests in the group (regression: of both configs)")
    missing: int = Field(description="units without a usable label: errored, unjudged or not final yet")
    missing_share: float | None
    verdict: Verdict
    reason: str


class ConfigGate(BaseModel):
    model_config_id: uuid.UUID
    name: str
    verdict: Verdict
    checks: list[CheckResult]


class GateResult(BaseModel):
    """The gate's verdict on a job: ``pass`` only if every check of every gated config passes, ``fail`` if any
    fails, else ``inconclusive``. Every model config of the job except the baselines is gated."""

    job_id: uuid.UUID
    state: str = Field(description="the job's state")
    final: bool = Field(
        description="the job is completed, failed or cancelled: no more work is dispatched, so the verdict stands"
    )
    verdict: Verdict
    passed: bool = Field(description='verdict == "pass"')
    gate: GateSpec
    configs: list[ConfigGate]
