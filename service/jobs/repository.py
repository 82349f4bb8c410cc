"""All SQL for jobs and their units of work."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import String, case, cast, false, func, insert, literal, select, true, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import (
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
from service.jobs.schemas import JobFilters, Tokens, UnitCounts

REQUEST_INSERT_BATCH = 5_000
REQUEST_COLUMNS = (
    "id", "job_id", "model_config_id", "case_id", "sample_index", "state", "attempts", "created_at", "updated_at",
)  # fmt: skip


class CaseRef(NamedTuple):
    id: uuid.UUID
    external_id: str


async def select_cases(session: AsyncSession, dataset_id: uuid.UUID, filters: JobFilters) -> list[CaseRef]:
    """The dataset's cases that pass the filters (before ``limit``), in dataset order."""
    query = select(Case.id, Case.external_id).where(Case.dataset_id == dataset_id).order_by(Case.ordinal)
    if filters.families:
        query = query.where(Case.family.in_(filters.families))
    if filters.authority_types:
        query = query.where(Case.authority_type.in_(filters.authority_types))
    if filters.dual_use is not None:
        query = query.where(Case.dual_use.is_(filters.dual_use))
    if filters.case_ids:
        query = query.where(Case.external_id.in_(filters.case_ids))
    return [CaseRef(*row) for row in (await session.execute(query)).all()]


async def missing_case_ids(session: AsyncSession, dataset_id: uuid.UUID, case_ids: list[str]) -> list[str]:
    query = select(Case.external_id).where(Case.dataset_id == dataset_id, Case.external_id.in_(case_ids))
    found = set((await session.execute(query)).scalars())
    return [c for c in case_ids if c not in found]


async def insert_requests(session: AsyncSession, rows: list[tuple[Any, ...]]) -> None:
    """Insert request rows (in ``REQUEST_COLUMNS`` order) in bulk, inside the session's transaction.

    COPY on Postgres; multi-row INSERT statements, a batch at a time, elsewhere. No ORM objects either way.
    """
    connection = await session.connection()
    if not rows:
        return
    if connection.dialect.name == "postgresql":
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


class UnitSummary(NamedTuple):
    """A job's units at a glance: counts by state per phase, errors by kind, and how many became final lately."""

    requests: UnitCounts
    judgements: UnitCounts
    errors_by_kind: dict[str, int]
    finished_since: int


async def unit_summary(session: AsyncSession, job_id: uuid.UUID, since: datetime | None) -> UnitSummary:
    """Counts of the job's requests and judgements by state, failures by reason, and the units that reached a final
    state since ``since`` (none when ``since`` is None): one query, grouped by (phase, state, failure reason)."""
    final = (UnitState.succeeded, UnitState.failed)
    parts = []
    for phase, model in (("requests", Request), ("judgements", Judgement)):
        recent = model.state.in_(final) & (model.updated_at >= since) if since is not None else false()
        parts.append(
            select(
                literal(phase).label("phase"),
                cast(model.state, String).label("state"),
                model.failure_reason,
                func.count(),
                func.coalesce(func.sum(case((recent, 1), else_=0)), 0),
            )
            .where(model.job_id == job_id)
            .group_by(model.state, model.failure_reason)
        )
    counts = {"requests": UnitCounts(), "judgements": UnitCounts()}
    errors: dict[str, int] = {}
    finished = 0
    for phase, state, reason, n, recently in (await session.execute(union_all(*parts))).all():
        unit = counts[phase]
        setattr(unit, state, getattr(unit, state) + n)
        unit.total += n
        finished += int(recently)
        if state == UnitState.failed.value:
            key = reason or "unknown"
            errors[key] = errors.get(key, 0) + n
    return UnitSummary(counts["requests"], counts["judgements"], errors, finished)


async def usage(session: AsyncSession, job_id: uuid.UUID) -> tuple[Tokens, float]:
    """Tokens and spend of the job's target and judge calls (reused answers cost nothing). One query."""
    r = select(
        func.coalesce(func.sum(Response.input_tokens), 0),
        func.coalesce(func.sum(Response.output_tokens), 0),
        func.coalesce(func.sum(Response.reasoning_tokens), 0),
        func.coalesce(func.sum(Response.cached_tokens), 0),
        func.coalesce(func.sum(Response.cost_usd), 0.0),
    ).where(Response.job_id == job_id, Response.reused_from.is_(None))
    j = select(
        func.coalesce(func.sum(Judgement.input_tokens), 0),
        func.coalesce(func.sum(Judgement.output_tokens), 0),
        func.coalesce(func.sum(Judgement.cost_usd), 0.0),
    ).where(Judgement.job_id == job_id)
    # each side is one row: joined on true, not a cartesian product of tables
    r_row, j_row = r.subquery("r"), j.subquery("j")
    query = select(*r_row.c, *j_row.c).select_from(r_row.join(j_row, true()))
    row = (await session.execute(query)).one()
    r_in, r_out, r_reason, r_cached, r_cost, j_in, j_out, j_cost = (v or 0 for v in row)
    tokens = Tokens(input=r_in + j_in, output=r_out + j_out, reasoning=r_reason, cached=r_cached)
    return tokens, float(r_cost) + float(j_cost)


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
