"""All SQL for jobs and their units of work."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import String, case, cast, false, func, insert, literal, null, or_, select, union_all, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.base import utcnow
from service.db.models import (
    UNSCORABLE,
    Case,
    ConfigRole,
    Job,
    JobModelConfig,
    JobState,
    Judgement,
    Request,
    Response,
    UnitState,
)
from service.db.session import without_statement_timeout
from service.jobs.schemas import JobFilters, RetryPhase, UnitCounts

REQUEST_INSERT_BATCH = 5_000
# values of one IN list per statement (see ``chunked``)
ID_CHUNK = 10_000
REQUEST_COLUMNS = (
    "id", "job_id", "model_config_id", "case_id", "sample_index", "state", "attempts", "created_at", "updated_at",
)  # fmt: skip


class CaseRef(NamedTuple):
    id: uuid.UUID
    external_id: str


async def select_cases(session: AsyncSession, dataset_id: uuid.UUID, filters: JobFilters) -> list[CaseRef]:
    """The dataset's cases that pass the filters (before ``limit``), in dataset order."""
    query = select(Case.ordinal, Case.id, Case.external_id).where(Case.dataset_id == dataset_id)
    if filters.families:
        query = query.where(Case.family.in_(filters.families))
    if filters.authority_types:
        query = query.where(Case.authority_type.in_(filters.authority_types))
    if filters.dual_use is not None:
        query = query.where(Case.dual_use.is_(filters.dual_use))
    if not filters.case_ids:
        return [CaseRef(i, e) for _, i, e in (await session.execute(query.order_by(Case.ordinal))).all()]
    rows: list[Any] = []
    for chunk in chunked(filters.case_ids):
        rows += (await session.execute(query.where(Case.external_id.in_(chunk)))).all()
    return [CaseRef(i, e) for _, i, e in sorted(rows, key=lambda row: row[0])]


async def missing_case_ids(session: AsyncSession, dataset_id: uuid.UUID, case_ids: list[str]) -> list[str]:
    found: set[str] = set()
    for chunk in chunked(case_ids):
        query = select(Case.external_id).where(Case.dataset_id == dataset_id, Case.external_id.in_(chunk))
        found.update((await session.execute(query)).scalars())
    return [c for c in case_ids if c not in found]


def chunked(values: Sequence[str]) -> Iterator[Sequence[str]]:
    """``values`` in slices of ``ID_CHUNK``: a statement binds each value of an IN list as a parameter, and both
    drivers cap a statement's parameters (asyncpg at 32,767, SQLite at 32,766), below the 100,000 a job may name."""
    for start in range(0, len(values), ID_CHUNK):
        yield values[start : start + ID_CHUNK]


async def insert_requests(session: AsyncSession, rows: list[tuple[Any, ...]]) -> None:
    """Insert request rows (in ``REQUEST_COLUMNS`` order) in bulk, inside the session's transaction.

    COPY on Postgres; multi-row INSERT statements, a batch at a time, elsewhere. No ORM objects either way.
    """
    connection = await session.connection()
    if not rows:
        return
    if connection.dialect.name == "postgresql":
        # a job's rows (up to jobs.max_requests) take as long as they take: the API's statement timeout is for
        # statements whose length a client does not choose
        await without_statement_timeout(session)
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.copy_records_to_table(Request.__tablename__, records=rows, columns=REQUEST_COLUMNS)
        return
    for start in range(0, len(rows), REQUEST_INSERT_BATCH):
        batch = [dict(zip(REQUEST_COLUMNS, row, strict=True)) for row in rows[start : start + REQUEST_INSERT_BATCH]]
        await session.execute(insert(Request), batch)


async def insert_config_links(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    await session.execute(insert(JobModelConfig), rows)


async def get_by_idempotency_key(session: AsyncSession, key: str) -> Job | None:
    return (await session.execute(select(Job).where(Job.idempotency_key == key))).scalar_one_or_none()


async def config_ids(session: AsyncSession, job_id: uuid.UUID) -> dict[ConfigRole, list[uuid.UUID]]:
    query = (
        select(JobModelConfig.role, JobModelConfig.model_config_id)
        .where(JobModelConfig.job_id == job_id)
        .order_by(JobModelConfig.role, JobModelConfig.position)
    )
    out: dict[ConfigRole, list[uuid.UUID]] = {ConfigRole.target: [], ConfigRole.judge: []}
    for role, config_id in (await session.execute(query)).all():
        out[role].append(config_id)
    return out


class Usage(NamedTuple):
    """Tokens and spend of a set of calls."""

    input: int = 0
    output: int = 0
    reasoning: int = 0
    cached: int = 0
    cost_usd: float = 0.0


class UnitSummary(NamedTuple):
    """A job's units at a glance: counts by state per phase, errors by kind, how many became final lately, and what
    the judge calls used."""

    requests: UnitCounts
    judgements: UnitCounts
    errors_by_kind: dict[str, int]
    finished_since: int
    judge_usage: Usage
    # errors_by_kind apart by phase: {"requests": {reason: n}, "judgements": {reason: n}}
    failures: dict[str, dict[str, int]]


async def unit_summary(session: AsyncSession, job_id: uuid.UUID, since: datetime | None) -> UnitSummary:
    """Counts of the job's requests and judgements by state, failures by reason, the units that reached a final state
    since ``since`` (none when ``since`` is None) and the judge calls' usage: one query, one pass over each table,
    grouped by (phase, state, failure reason)."""
    final = (UnitState.succeeded, UnitState.failed)
    parts = []
    for phase, model in (("requests", Request), ("judgements", Judgement)):
        recent = model.state.in_(final) & (model.updated_at >= since) if since is not None else false()
        used = (
            (func.sum(Judgement.input_tokens), func.sum(Judgement.output_tokens), func.sum(Judgement.cost_usd))
            if model is Judgement
            else (null(), null(), null())
        )
        parts.append(
            select(
                literal(phase).label("phase"),
                cast(model.state, String).label("state"),
                model.failure_reason,
                func.count(),
                func.coalesce(func.sum(case((recent, 1), else_=0)), 0),
                *used,
            )
            .where(model.job_id == job_id)
            .group_by(model.state, model.failure_reason)
        )
    counts = {"requests": UnitCounts(), "judgements": UnitCounts()}
    errors: dict[str, int] = {}
    failures: dict[str, dict[str, int]] = {"requests": {}, "judgements": {}}
    finished = tokens_in = tokens_out = 0
    cost = 0.0
    for phase, state, reason, n, recently, used_in, used_out, used_cost in (
        await session.execute(union_all(*parts))
    ).all():
        unit = counts[phase]
        setattr(unit, state, getattr(unit, state) + n)
        unit.total += n
        finished += int(recently)
        tokens_in, tokens_out, cost = tokens_in + (used_in or 0), tokens_out + (used_out or 0), cost + (used_cost or 0)
        if state == UnitState.failed.value:
            key = reason or "unknown"
            errors[key] = errors.get(key, 0) + n
            failures[phase][key] = failures[phase].get(key, 0) + n
    judge = Usage(input=tokens_in, output=tokens_out, cost_usd=float(cost))
    return UnitSummary(counts["requests"], counts["judgements"], errors, finished, judge, failures)


async def answer_usage(session: AsyncSession, job_id: uuid.UUID) -> Usage:
    """Tokens and spend of the job's target calls (reused answers cost nothing)."""
    row = (
        await session.execute(
            select(
                func.coalesce(func.sum(Response.input_tokens), 0),
                func.coalesce(func.sum(Response.output_tokens), 0),
                func.coalesce(func.sum(Response.reasoning_tokens), 0),
                func.coalesce(func.sum(Response.cached_tokens), 0),
                func.coalesce(func.sum(Response.cost_usd), 0.0),
            ).where(Response.job_id == job_id, Response.reused_from.is_(None))
        )
    ).one()
    r_in, r_out, r_reason, r_cached, r_cost = (v or 0 for v in row)
    return Usage(r_in, r_out, r_reason, r_cached, float(r_cost))


async def list_page(
    session: AsyncSession, limit: int, state: JobState | None, before: tuple[datetime, uuid.UUID] | None
) -> Sequence[Job]:
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Job.state == state)
    if before is not None:
        query = query.where((Job.created_at < before[0]) | ((Job.created_at == before[0]) & (Job.id < before[1])))
    return (await session.execute(query)).scalars().all()


async def prompt_version(session: AsyncSession, job_id: uuid.UUID) -> str | None:
    """The judge prompt version the job's verdicts were given under (the newest, if it changed)."""
    query = (
        select(Judgement.prompt_version)
        .where(Judgement.job_id == job_id, Judgement.prompt_version.is_not(None))
        .order_by(Judgement.updated_at.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


_UNITS: dict[RetryPhase, type[Request] | type[Judgement]] = {
    RetryPhase.requests: Request,
    RetryPhase.judgements: Judgement,
}


async def lock_job(session: AsyncSession, job_id: uuid.UUID) -> Job | None:
    """The job as it is now, its row locked until the transaction ends (on Postgres; SQLite has one writer)."""
    query = select(Job).where(Job.id == job_id).with_for_update().execution_options(populate_existing=True)
    return (await session.execute(query)).scalar_one_or_none()


async def failure_reasons(session: AsyncSession, job_id: uuid.UUID, phase: RetryPhase) -> dict[str | None, int]:
    """The job's failed units of one phase, counted by failure reason (None: failed without one)."""
    model = _UNITS[phase]
    query = (
        select(model.failure_reason, func.count())
        .where(model.job_id == job_id, model.state == UnitState.failed)
        .group_by(model.failure_reason)
    )
    return {reason: int(n) for reason, n in (await session.execute(query)).all()}


async def reopen_failed(
    session: AsyncSession, job_id: uuid.UUID, phase: RetryPhase, reasons: Collection[str | None]
) -> int:
    """Put the job's failed units of one phase whose reason is one of ``reasons`` back to pending, as if never tried:
    no lease, no backoff, no failure, and their attempt counters at zero, so the retry policy gives them a fresh
    budget. Returns how many. Flushes only."""
    model = _UNITS[phase]
    named = [r for r in reasons if r is not None]
    which = [model.failure_reason.in_(named)] + ([model.failure_reason.is_(None)] if None in reasons else [])
    # an unscorable judgement keeps its re-ask count: it is asked again under idempotency keys not used yet
    reasked = model.failure_reason == UNSCORABLE
    stmt = (
        update(model)
        .where(model.job_id == job_id, model.state == UnitState.failed, or_(*which))
        .values(
            state=UnitState.pending,
            attempts=0,
            rate_limited=0,
            error_repeats=case((reasked, model.error_repeats), else_=0),
            last_error=case((reasked, model.last_error), else_=None),
            leased_by=None,
            lease_expires_at=None,
            not_before=None,
            failure_reason=None,
            failure_detail=None,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return int(getattr(await session.execute(stmt), "rowcount", 0) or 0)
