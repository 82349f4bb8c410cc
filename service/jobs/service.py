"""Creating jobs (job, config links and every request row in one transaction), reading and cancelling them."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.datasets import service as datasets
from service.db.base import utcnow
from service.db.models import ConfigRole, Dataset, Job, JobState, ModelConfig, UnitState
from service.errors import Conflict, FieldError, NotFound, ValidationFailed, reason_counts
from service.gates.validation import ConfigRef, check_spec
from service.jobs import repository
from service.jobs.repository import CaseRef
from service.jobs.schemas import (
    JobCreate,
    JobFilters,
    JobRead,
    JobRetry,
    JobSummary,
    Progress,
    RetriedUnits,
    RetryPhase,
    Tokens,
)
from service.jobs.webhook_target import Allowed, creation_problem, without_credentials
from service.model_configs import service as configs
from service.settings import Settings

THROUGHPUT_WINDOW = timedelta(seconds=60)
# how errors_by_kind names a failed unit that has no failure reason
UNKNOWN_REASON = "unknown"
_FIRST_WORD = re.compile(r"[\w.-]+")


@dataclass(frozen=True)
class Created:
    job: Job
    created: bool


def request_id(job_id: uuid.UUID, config_id: uuid.UUID, case_id: uuid.UUID, sample: int) -> uuid.UUID:
    """A request's identity: the same (job, config, case, sample) always gives the same id (a UUIDv5)."""
    return uuid.uuid5(job_id, f"{config_id}:{case_id}:{sample}")


def request_ids(job_id: uuid.UUID, config_id: uuid.UUID, case_ids: list[uuid.UUID], samples: int) -> list[uuid.UUID]:
    """``request_id`` for every case x sample of one config, in that order, without re-hashing the common prefix."""
    prefix = hashlib.sha1(job_id.bytes + f"{config_id}:".encode(), usedforsecurity=False)
    out: list[uuid.UUID] = []
    for case_id in case_ids:
        case_prefix = prefix.copy()
        case_prefix.update(f"{case_id}:".encode())
        for sample in range(samples):
            h = case_prefix.copy()
            h.update(str(sample).encode())
            out.append(uuid.UUID(bytes=h.digest()[:16], version=5))
    return out


def _check_webhook(url: str, settings: Settings) -> None:
    """A 422 naming ``webhook_url`` when the service cannot sign it or may not call it (``webhook_target``)."""
    if settings.webhook_secret is None:
        raise ValidationFailed(
            "this service cannot sign webhooks: DEFEATER_WEBHOOK_SECRET is not set",
            [FieldError("webhook_url", "needs the service's DEFEATER_WEBHOOK_SECRET to sign with")],
        )
    problem = creation_problem(url, Allowed.parse(settings.webhooks.allowed_hosts))
    if problem is not None:
        raise ValidationFailed(f"webhook_url {problem}", [FieldError("webhook_url", problem)])


async def create_job(
    session: AsyncSession, body: JobCreate, settings: Settings, idempotency_key: str | None = None
) -> Created:
    """Validate the body against the ledger and write the job with all its request rows. Flushes only.

    The Idempotency-Key's hash is of the body as sent, names and all (ids in their canonical spelling): the same
    body with the same key returns the job it created even if a name in it has since come to mean something else
    (a newer version of a dataset), since a retry means "the job I asked for", not a new one.
    """
    _check_sizes(body, settings)
    body_hash = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    if idempotency_key is not None:
        earlier = await repository.get_by_idempotency_key(session, idempotency_key)
        if earlier is not None:
            return _replay(earlier, body_hash)
    if body.webhook_url is not None:
        _check_webhook(str(body.webhook_url), settings)
    plan = await _plan(session, body, settings)
    job = Job(
        id=uuid.uuid4(),
        state=JobState.queued,
        dataset_id=plan.dataset.id,
        filters=body.filters.model_dump(mode="json", exclude_none=True),
        samples_per_case=body.samples_per_case,
        budget_usd=body.budget_usd,
        use_cache=body.use_cache,
        webhook_url=str(body.webhook_url) if body.webhook_url else None,
        gate=body.gate.model_dump(mode="json", exclude_none=True) if body.gate else None,
        case_count=len(plan.cases),
        request_count=len(plan.cases) * len(plan.targets) * body.samples_per_case,
        idempotency_key=idempotency_key,
        request_hash=body_hash,
    )
    try:
        async with session.begin_nested():
            session.add(job)
            await session.flush()
            await repository.insert_config_links(session, _links(job.id, plan))
            await repository.insert_requests(session, _request_rows(job, plan))
    except IntegrityError:
        # the same Idempotency-Key arrived twice at once: the other request created the job
        earlier = await repository.get_by_idempotency_key(session, idempotency_key) if idempotency_key else None
        if earlier is None:
            raise
        return _replay(earlier, body_hash)
    return Created(job, created=True)


def _replay(earlier: Job, body_hash: str) -> Created:
    if earlier.request_hash != body_hash:
        raise Conflict(
            "this Idempotency-Key was used for a job with a different body",
            [FieldError("Idempotency-Key", "reused with a different request body")],
        )
    return Created(earlier, created=False)


@dataclass(frozen=True)
class _Plan:
    dataset: Dataset
    cases: list[CaseRef]
    targets: list[ModelConfig]
    judges: list[ModelConfig]


async def _plan(session: AsyncSession, body: JobCreate, settings: Settings) -> _Plan:
    """The job's dataset, configs and cases, each named in the body by id or by name (as the CLI names them)."""
    try:
        dataset = await datasets.resolve(session, body.dataset_id)
    except NotFound as exc:
        raise ValidationFailed(f"dataset_id: {exc.detail}", [FieldError("dataset_id", exc.detail)]) from None
    targets = await _configs(session, body.model_config_ids, "model_config_ids")
    if body.judge_config_ids is None:
        judges = [await configs.register_default_judge(session, settings)]
    else:
        judges = await _configs(session, body.judge_config_ids, "judge_config_ids")
    cases = await _cases(session, dataset.id, body.filters)
    total = len(cases) * len(targets) * body.samples_per_case
    if total > settings.jobs.max_requests:
        raise ValidationFailed(
            f"the job would make {total} requests; the limit is {settings.jobs.max_requests}",
            [FieldError("filters", "select fewer cases, configs or samples")],
        )
    if body.gate:
        check_spec(body.gate, [ConfigRef(c.id, c.name) for c in targets], prefix="gate.")
    return _Plan(dataset, cases, targets, judges)


def _check_sizes(body: JobCreate, settings: Settings) -> None:
    """The job's lists and counts against the limits, before any query: each config named costs a lookup."""
    limits = settings.jobs
    sizes = [
        ("model_config_ids", len(body.model_config_ids), limits.max_model_configs, "configs per job"),
        ("judge_config_ids", len(body.judge_config_ids or ()), limits.max_judge_configs, "judge configs per job"),
        ("samples_per_case", body.samples_per_case, limits.max_samples_per_case, "samples per case"),
    ]
    errors = [FieldError(name, f"at most {most} {what}") for name, size, most, what in sizes if size > most]
    if errors:
        raise ValidationFailed(f"{errors[0].field}: {errors[0].message}", errors)


async def _configs(session: AsyncSession, refs: list[str], field_name: str) -> list[ModelConfig]:
    """The configs named (by id or name) in ``refs``; each unknown or repeated one is an error at its index."""
    errors: list[FieldError] = []
    found: list[ModelConfig] = []
    seen: set[uuid.UUID] = set()
    for i, ref in enumerate(refs):
        try:
            config = await configs.resolve(session, ref)
        except NotFound as exc:
            errors.append(FieldError(f"{field_name}[{i}]", exc.detail))
            continue
        if config.id in seen:
            errors.append(FieldError(f"{field_name}[{i}]", f"model config {config.name!r} is listed twice"))
            continue
        seen.add(config.id)
        found.append(config)
    if errors:
        raise ValidationFailed(f"{errors[0].field}: {errors[0].message}", errors)
    return found


async def _cases(session: AsyncSession, dataset_id: uuid.UUID, filters: JobFilters) -> list[CaseRef]:
    if filters.case_ids:
        missing = await repository.missing_case_ids(session, dataset_id, filters.case_ids)
        if missing:
            shown = ", ".join(map(repr, missing[:10]))
            raise ValidationFailed(
                f"{len(missing)} case id(s) are not in the dataset: {shown}",
                [FieldError("filters.case_ids", f"not in the dataset: {shown}")],
            )
    cases = await repository.select_cases(session, dataset_id, filters)
    if filters.limit is not None and len(cases) > filters.limit:
        cases = stable_subset(cases, filters.limit)
    if not cases:
        raise ValidationFailed("the filters select no cases", [FieldError("filters", "no case passes them")])
    return cases


def stable_subset(cases: list[CaseRef], limit: int) -> list[CaseRef]:
    """``limit`` cases picked by a hash of their ids, kept in dataset order.

    The same limit always picks the same cases, and a larger limit keeps every case of a smaller one.
    """

    def rank(c: CaseRef) -> bytes:
        return hashlib.sha256(c.external_id.encode()).digest()

    chosen = {c.id for c in sorted(cases, key=rank)[:limit]}
    return [c for c in cases if c.id in chosen]


def _links(job_id: uuid.UUID, plan: _Plan) -> list[dict[str, object]]:
    rows = [
        {"job_id": job_id, "model_config_id": c.id, "role": ConfigRole.target, "position": i}
        for i, c in enumerate(plan.targets)
    ]
    rows += [
        {"job_id": job_id, "model_config_id": c.id, "role": ConfigRole.judge, "position": i}
        for i, c in enumerate(plan.judges)
    ]
    return rows


def _request_rows(job: Job, plan: _Plan) -> list[tuple[object, ...]]:
    """Every request of the job as a row in ``repository.REQUEST_COLUMNS`` order."""
    now = utcnow()
    pending = UnitState.pending.value
    samples = job.samples_per_case
    case_ids = [case.id for case in plan.cases]
    pairs = [(case_id, sample) for case_id in case_ids for sample in range(samples)]
    rows: list[tuple[object, ...]] = []
    for config_id in [config.id for config in plan.targets]:
        ids = request_ids(job.id, config_id, case_ids, samples)
        rows.extend(
            (rid, job.id, config_id, case_id, sample, pending, 0, now, now)
            for rid, (case_id, sample) in zip(ids, pairs, strict=True)
        )
    return rows


async def get_job(session: AsyncSession, job_id: uuid.UUID) -> Job:
    job = await session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


@dataclass(frozen=True)
class Measured:
    """What a job's status reads from its units, and when: the costly part of ``read_job``."""

    at: datetime
    seconds: float
    units: repository.UnitSummary
    links: dict[ConfigRole, list[uuid.UUID]]
    answers: repository.Usage


async def measure(session: AsyncSession, job: Job) -> Measured:
    """Count the job's units by phase and state, its recent throughput, tokens and spend."""
    now = utcnow()
    # a finished job's throughput is the one it ended with, not one that decays as time passes
    end = job.finished_at if JobState(job.state).final and job.finished_at is not None else now
    window_start = max(end - THROUGHPUT_WINDOW, job.started_at or end)
    seconds = (end - window_start).total_seconds()
    units = await repository.unit_summary(session, job.id, window_start if seconds > 0 else None)
    links = await repository.config_ids(session, job.id)
    return Measured(now, seconds, units, links, await repository.answer_usage(session, job.id))


async def read_job(session: AsyncSession, job: Job) -> JobRead:
    """The job's status: state, progress by phase and state, throughput, ETA, tokens, spend, errors."""
    return compose(job, await measure(session, job))


def compose(job: Job, measured: Measured) -> JobRead:
    """The job's status from its row (read now) and its units (as ``measured``)."""
    units, links = measured.units, measured.links
    requests, judgements = units.requests, units.judgements
    answers, judge = measured.answers, units.judge_usage
    tokens = Tokens(
        input=answers.input + judge.input, output=answers.output + judge.output, reasoning=answers.reasoning,
        cached=answers.cached,
    )  # fmt: skip
    cost = answers.cost_usd + judge.cost_usd
    rate = units.finished_since / measured.seconds if measured.seconds > 0 else 0.0
    judges = max(len(links[ConfigRole.judge]), 1)
    # every open request still owes its own call and one judgement per judge
    remaining = (requests.pending + requests.leased) * (1 + judges) + judgements.pending + judgements.leased
    eta = remaining / rate if rate > 0 and not JobState(job.state).final else None
    return JobRead(
        **JobSummary.model_validate(job).model_dump(),
        model_config_ids=links[ConfigRole.target],
        judge_config_ids=links[ConfigRole.judge],
        filters=job.filters,
        budget_usd=job.budget_usd,
        use_cache=job.use_cache,
        webhook_url=without_credentials(job.webhook_url) if job.webhook_url else None,
        gate=job.gate,
        progress=Progress(requests=requests, judgements=judgements),
        calls_per_second=round(rate, 3),
        eta_seconds=round(eta, 1) if eta is not None else None,
        cost_usd=round(cost, 6),
        tokens=tokens,
        errors_by_kind=units.errors_by_kind,
        error=job.error,
        warnings=warnings(units, len(links[ConfigRole.judge]), JobState(job.state).final),
    )


def warnings(units: repository.UnitSummary, judges: int, final: bool) -> list[str]:
    """What a job's figures leave out, a sentence each: failed requests, failed judgements (once the job has ended
    with one judge: the answers they leave unjudged) and, in a job that ended early (cancelled), units never run.
    Empty for a clean job."""
    requests, judgements = units.requests, units.judgements
    out: list[str] = []
    if requests.failed:
        out.append(
            f"{requests.failed} of {requests.total} requests failed ({reason_counts(units.failures['requests'])})"
        )
    if judgements.failed:
        reasons = reason_counts(units.failures["judgements"])
        if final and judges == 1:
            out.append(f"{_count(judgements.failed, 'answer', 'answers')} stayed unjudged (judge failed: {reasons})")
        else:
            out.append(f"{judgements.failed} of {judgements.total} judgements failed ({reasons})")
    if final and requests.pending + requests.leased:
        out.append(f"{requests.pending + requests.leased} of {requests.total} requests were never run")
    if final and judgements.pending + judgements.leased:
        out.append(f"{_count(judgements.pending + judgements.leased, 'answer was', 'answers were')} never judged")
    return out


def _count(n: int, one: str, many: str) -> str:
    """``1 answer``, ``5 answers`` (with the verb that follows, if given in both)."""
    return f"{n} {one if n == 1 else many}"


async def cancel_job(session: AsyncSession, job: Job) -> Job:
    """Stop dispatching the job's work. Calls in flight finish and are kept. Flushes only."""
    state = JobState(job.state)
    if state is JobState.cancelled:
        return job
    if state.final:
        raise Conflict(f"job {job.id} is already {state.value}", [FieldError("state", f"the job is {state.value}")])
    job.state = JobState.cancelled
    job.finished_at = utcnow()
    await session.flush()
    return job


@dataclass(frozen=True)
class Retried:
    """A retried job (``running`` again), how many units went back to pending, and when the job had ended."""

    job: Job
    units: RetriedUnits
    ended_at: datetime | None


async def retry_job(session: AsyncSession, job_id: uuid.UUID, body: JobRetry) -> Retried:
    """Put a failed or completed job's failed units (all, or those of ``body``'s phase and reasons) back to pending
    and the job back to ``running``, for the executor to run them again. Units that succeeded are left as they are.
    Flushes only: after the commit, the caller wakes whoever runs jobs."""
    job = await repository.lock_job(session, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    state = JobState(job.state)
    if state not in (JobState.completed, JobState.failed):
        why = (
            "a cancelled job stays cancelled: start a new job"
            if state is JobState.cancelled
            else "retry it once it ends"
        )
        raise Conflict(f"job {job.id} is {state.value}: {why}", [FieldError("state", f"the job is {state.value}")])
    phases = [body.phase] if body.phase is not None else list(RetryPhase)
    found = {phase: await repository.failure_reasons(session, job.id, phase) for phase in RetryPhase}
    if body.reasons is not None and any(found.values()):
        _check_reasons(body.reasons, [r for counts in found.values() for r in counts])
    counts: dict[str, int] = {}
    for phase in phases:
        chosen = [r for r in found[phase] if body.reasons is None or _matches(r, body.reasons)]
        counts[phase.value] = await repository.reopen_failed(session, job.id, phase, chosen) if chosen else 0
    if not any(counts.values()):
        raise Conflict(f"nothing to retry: job {job.id} has no {_filter_words(body)}", [_filter_field(body)])
    ended_at = job.finished_at
    job.state, job.finished_at, job.error, job.paused_reason = JobState.running, None, None, None
    await session.flush()
    return Retried(job, RetriedUnits(**counts), ended_at)


def _shown(reason: str | None) -> str:
    return UNKNOWN_REASON if reason is None else reason


def _matches(reason: str | None, wanted: list[str]) -> bool:
    """A failure reason is wanted when it is named in full or by its first word (``server_error after 6 attempts``
    by ``server_error``)."""
    shown = _shown(reason)
    first = _FIRST_WORD.match(shown)
    return shown in wanted or (first is not None and first.group() in wanted)


def _check_reasons(wanted: list[str], present: list[str | None]) -> None:
    """Every reason asked for names a failure of the job: a 422 listing the job's reasons otherwise."""
    unknown = [(i, r) for i, r in enumerate(wanted) if not any(_matches(p, [r]) for p in present)]
    if not unknown:
        return
    valid = sorted({_shown(p) for p in present} | {m.group() for p in present if (m := _FIRST_WORD.match(_shown(p)))})
    listed = ", ".join(valid)
    raise ValidationFailed(
        f"{unknown[0][1]!r} is not a reason any unit of this job failed for; valid values: {listed}",
        [FieldError(f"reasons[{i}]", f"{r!r} is not a failure reason of this job; valid values: {listed}")
         for i, r in unknown],
    )  # fmt: skip


def _filter_words(body: JobRetry) -> str:
    what = f"failed {body.phase.value}" if body.phase is not None else "failed units"
    return what + (f" with reason {', '.join(map(repr, body.reasons))}" if body.reasons else "")


def _filter_field(body: JobRetry) -> FieldError:
    if body.reasons is not None:
        return FieldError("reasons", f"no failed {body.phase.value if body.phase else 'unit'} matches them")
    if body.phase is not None:
        return FieldError("phase", f"no {body.phase.value} failed")
    return FieldError("state", "no unit of the job failed")
