"""All SQL for jobs and their units of work."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import func, insert, select
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


async def unit_counts(session: AsyncSession, model: type[Request] | type[Judgement], job_id: uuid.UUID) -> UnitCounts:
    query = select(model.state, func.count()).where(model.job_id == job_id).group_by(model.state)
    counts = UnitCounts()
    for state, n in (await session.execute(query)).all():
        setattr(counts, UnitState(state).value, n)
        counts.total += n
    return counts


async def finished_since(session: AsyncSession, job_id: uuid.UUID, since: datetime) -> int:
    """Units of the job that reached a final state since ``since``: the recent throughput."""
    total = 0
    for model in (Request, Judgement):
        query = select(func.count()).where(
            model.job_id == job_id,
            model.state.in_((UnitState.succeeded, UnitState.failed)),
            model.updated_at >= since,
        )
        total += (await session.execute(query)).scalar_one()
    return total


async def usage(session: AsyncSession, job_id: uuid.UUID) -> tuple[Tokens, float]:
    """Tokens and spend of the job's target and judge calls (reused answers cost nothing)."""
    r = (
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
    j = (
        await session.execute(
            select(
                func.coalesce(func.sum(Judgement.input_tokens), 0),
                func.coalesce(func.sum(Judgement.output_tokens), 0),
                func.coalesce(func.sum(Judgement.cost_usd), 0.0),
            ).where(Judgement.job_id == job_id)
        )
    ).one()
    r_in, r_out, r_reason, r_cached, r_cost = (v or 0 for v in r)
    j_in, j_out, j_cost = (v or 0 for v in j)
    tokens = Tokens(input=r_in + j_in, output=r_out + j_out, reasoning=r_reason, cached=r_cached)
    return tokens, float(r_cost) + float(j_cost)


async def errors_by_kind(session: AsyncSession, job_id: uuid.UUID) -> dict[str, int]:
    out: dict[str, int] = {}
    for model in (Request, Judgement):
        query = (
            select(model.failure_reason, func.count())
            .where(model.job_id == job_id, model.state == UnitState.failed)
            .group_by(model.failure_reason)
        )
        for reason, n in (await session.execute(query)).all():
            key = reason or "unknown"
            out[key] = out.get(key, 0) + n
    return out


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
