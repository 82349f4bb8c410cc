"""Evaluating a job's gate: every check on every gated config, from the results' counts and the paired labels.

``evaluate`` is pure (counts in, verdicts out) so that the rules can be exercised on recorded data without a
database; ``evaluate_job`` gathers the counts with SQL and calls it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import Job, JobState
from service.errors import FieldError, NotFound
from service.gates import repository, rules
from service.gates.evidence import Evidence, PairCell, config_counts, coverage, in_group, paired, rate_count
from service.gates.rules import DEFAULT_MARGIN, Coverage, Outcome, Verdict
from service.gates.schemas import CheckResult, ConfigGate, GateResult, PairedDifference
from service.gates.validation import ConfigRef, baselines, check_spec, direction, resolve
from service.jobs.schemas import GateCheck, GateSpec
from service.results import repository as results_repo


@dataclass(frozen=True)
class Evaluation:
    verdict: Verdict
    configs: list[ConfigGate]


def gated(spec: GateSpec, configs: Sequence[ConfigRef]) -> list[ConfigRef]:
    """The configs the checks apply to: all of the job's but the baselines."""
    skip = baselines(spec, configs)
    return [c for c in configs if c.id not in skip]


def evaluate(spec: GateSpec, configs: Sequence[ConfigRef], evidence: Evidence) -> Evaluation:
    """The gate's verdict on each gated config and overall: pass only if every check passes, fail if any fails."""
    out = []
    for config in gated(spec, configs):
        checks = [_check(spec, i, check, config, configs, evidence) for i, check in enumerate(spec.checks)]
        verdict = rules.combine([c.verdict for c in checks])
        out.append(ConfigGate(model_config_id=config.id, name=config.name, verdict=verdict, checks=checks))
    return Evaluation(rules.combine([c.verdict for c in out]), out)


def _check(
    spec: GateSpec, index: int, check: GateCheck, config: ConfigRef, configs: Sequence[ConfigRef], evidence: Evidence
) -> CheckResult:
    keep = in_group(check.cases)
    op = direction(check)
    assert op is not None, "a validated check has a direction"
    counts = config_counts(evidence.cells, config.id, keep)
    if check.baseline is None:
        assert check.threshold is not None, "a validated absolute check has a threshold"
        count, n = rate_count(check.metric, counts)
        cover = coverage(counts)
        outcome = rules.absolute(count, n, op, check.threshold, cover, spec.max_unjudged_share)
        return _result(index, check, op, outcome, cover)
    base = resolve(check.baseline, configs)
    assert base is not None, "a validated regression check names a config of the job"
    cover = coverage(counts) + coverage(config_counts(evidence.cells, base.id, keep))
    pairs = paired(evidence.pairs.get((config.id, base.id), ()), check.metric, keep)
    margin = DEFAULT_MARGIN if check.margin is None else check.margin
    outcome = rules.regression(pairs, op, check.alpha, margin, cover, spec.max_unjudged_share)
    return _result(index, check, op, outcome, cover, base, margin)


def _result(
    index: int,
    check: GateCheck,
    op: rules.Op,
    outcome: Outcome,
    cover: Coverage,
    base: ConfigRef | None = None,
    margin: float = DEFAULT_MARGIN,
) -> CheckResult:
    difference = None
    if base is not None:
        ci = outcome.difference_ci95
        difference = PairedDifference(value=outcome.difference, ci95=ci, margin=margin)
    return CheckResult(
        index=index,
        kind="absolute" if base is None else "regression",
        metric=check.metric,
        cases=check.cases,
        op=op,
        figure=outcome.figure,
        ci95=outcome.ci95,
        threshold=check.threshold,
        baseline=check.baseline,
        baseline_model_config_id=base.id if base else None,
        baseline_figure=outcome.baseline_figure,
        difference=difference,
        alpha=check.alpha if base else None,
        test="binomial_exact" if base is None else "mcnemar_exact",
        p_value=outcome.p_value,
        n=outcome.n,
        units=cover.units,
        missing=cover.missing,
        missing_share=cover.share,
        verdict=outcome.verdict,
        reason=outcome.reason,
    )


def stored_spec(job: Job) -> GateSpec:
    """The job's gate, or 404 naming the missing gate."""
    if job.gate is None:
        raise NotFound(
            f"job {job.id} has no gate", [FieldError("gate", "none was given; set one with POST /v1/jobs/{id}/gate")]
        )
    return GateSpec.model_validate(job.gate)


async def evaluate_job(session: AsyncSession, job: Job) -> GateResult:
    """The job's gate on what the job has so far (``final`` says whether more can come). 404 without a gate."""
    spec = stored_spec(job)
    configs = await repository.target_configs(session, job.id)
    cells = await results_repo.cells(session, job.id)
    pairs: dict[tuple[uuid.UUID, uuid.UUID], list[PairCell]] = {}
    for baseline in baselines(spec, configs):  # one pass over the job per baseline pairs it with every candidate
        by_candidate = await repository.pair_cells(session, job.id, baseline)
        pairs |= {(candidate, baseline): found for candidate, found in by_candidate.items()}
    evaluation = evaluate(spec, configs, Evidence(cells, pairs))
    state = JobState(job.state)
    return GateResult(
        job_id=job.id,
        state=state.value,
        final=state.final,
        verdict=evaluation.verdict,
        passed=evaluation.verdict == "pass",
        gate=spec,
        configs=evaluation.configs,
    )


async def set_gate(session: AsyncSession, job: Job, spec: GateSpec) -> None:
    """Set or replace the job's gate after checking it against the job's configs; nothing changes if it does not
    fit. Flushes only."""
    check_spec(spec, await repository.target_configs(session, job.id))
    job.gate = spec.model_dump(mode="json", exclude_none=True)
    await session.flush()
