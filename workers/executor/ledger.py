"""The executor's SQL: claiming units with leases, reclaiming dead leases, cache lookups, finishing jobs."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.base import utcnow
from service.db.models import (
    Case,
    ConfigRole,
    Job,
    JobModelConfig,
    JobState,
    Judgement,
    ModelConfig,
    Outcome,
    Request,
    Response,
    UnitState,
)

FINAL = (UnitState.succeeded, UnitState.failed)


def holder_id() -> str:
    """Who holds a lease: host, process and a token for this run."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(holder: str) -> bool:
    """True when the holder was a process on this host that no longer exists."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class Claimed:
    """A request leased to this process, with what the call needs."""

    id: uuid.UUID
    model_config_id: uuid.UUID
    case_id: uuid.UUID
    sample_index: int
    attempts: int
    rate_limited: int
    error_repeats: int
    last_error: str | None


async def claim_requests(
    session: AsyncSession, job_id: uuid.UUID, config_id: uuid.UUID, limit: int, holder: str, lease_s: float
) -> list[Claimed]:
    """Lease up to ``limit`` due pending requests of one config (SKIP LOCKED on Postgres). Commits."""
    now = utcnow()
    due = (
        select(Request.id)
        .where(
            Request.job_id == job_id,
            Request.model_config_id == config_id,
            Request.state == UnitState.pending,
            or_(Request.not_before.is_(None), Request.not_before <= now),
        )
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(Request)
        .where(Request.id.in_(due.scalar_subquery()))
        .values(
            state=UnitState.leased,
            leased_by=holder,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=Request.attempts + 1,
            updated_at=now,
        )
        .returning(
            Request.id,
            Request.model_config_id,
            Request.case_id,
            Request.sample_index,
            Request.attempts,
            Request.rate_limited,
            Request.error_repeats,
            Request.last_error,
        )
        .execution_options(synchronize_session=False)
    )
    rows = (await session.execute(stmt)).all()
    await session.commit()
    return [Claimed(**row._mapping) for row in rows]


async def reclaim_leases(session: AsyncSession, job_id: uuid.UUID) -> int:
    """Return expired leases, and leases of processes on this host that died, to pending. Commits."""
    now = utcnow()
    holders_query = select(Request.leased_by).where(Request.job_id == job_id, Request.state == UnitState.leased)
    holders = {h for h in (await session.execute(holders_query.distinct())).scalars() if h}
    dead = [h for h in holders if holder_is_dead(h)]
    stmt = (
        update(Request)
        .where(
            Request.job_id == job_id,
            Request.state == UnitState.leased,
            or_(Request.lease_expires_at < now, Request.leased_by.in_(dead)),
        )
        .values(state=UnitState.pending, leased_by=None, lease_expires_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(stmt)
    await session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


async def release_leases(session: AsyncSession, holder: str) -> None:
    """Give back this process's leases (a clean stop). Commits."""
    stmt = (
        update(Request)
        .where(Request.state == UnitState.leased, Request.leased_by == holder)
        .values(state=UnitState.pending, leased_by=None, lease_expires_at=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    await session.execute(stmt)
    await session.commit()


async def prompts(session: AsyncSession, case_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await session.execute(select(Case.id, Case.user_query).where(Case.id.in_(case_ids)))
    return {row.id: row.user_query for row in rows.all()}


async def target_configs(session: AsyncSession, job_id: uuid.UUID) -> list[ModelConfig]:
    query = (
        select(ModelConfig)
        .join(JobModelConfig, JobModelConfig.model_config_id == ModelConfig.id)
        .where(JobModelConfig.job_id == job_id, JobModelConfig.role == ConfigRole.target)
        .order_by(JobModelConfig.position)
    )
    return list((await session.execute(query)).scalars())


async def cached_answers(session: AsyncSession, keys: list[str]) -> dict[str, Response]:
    """Earlier answers (paid for, not themselves reused) for these cache keys."""
    if not keys:
        return {}
    query = select(Response).where(
        Response.cache_key.in_(keys), Response.outcome == Outcome.answer, Response.reused_from.is_(None)
    )
    found: dict[str, Response] = {}
    for response in (await session.execute(query)).scalars():
        found.setdefault(response.cache_key, response)
    return found


async def open_units(session: AsyncSession, job_id: uuid.UUID) -> dict[str, int]:
    """How many of the job's units are not final, by kind and state."""
    out: dict[str, int] = {}
    for kind, model in (("requests", Request), ("judgements", Judgement)):
        query = (
            select(model.state, func.count())
            .where(model.job_id == job_id, model.state.not_in(FINAL))
            .group_by(model.state)
        )
        for state, n in (await session.execute(query)).all():
            out[f"{kind}.{UnitState(state).value}"] = n
    return out


async def next_due(session: AsyncSession, job_id: uuid.UUID) -> datetime | None:
    """When the earliest backed-off pending request becomes due."""
    query = select(func.min(Request.not_before)).where(Request.job_id == job_id, Request.state == UnitState.pending)
    value: datetime | None = (await session.execute(query)).scalar_one()
    return value


async def spend(session: AsyncSession, job_id: uuid.UUID) -> float:
    paid = select(func.coalesce(func.sum(Response.cost_usd), 0.0)).where(
        Response.job_id == job_id, Response.reused_from.is_(None)
    )
    judged = select(func.coalesce(func.sum(Judgement.cost_usd), 0.0)).where(Judgement.job_id == job_id)
    paid_usd = (await session.execute(paid)).scalar_one() or 0.0
    judged_usd = (await session.execute(judged)).scalar_one() or 0.0
    return float(paid_usd) + float(judged_usd)


async def set_job(session: AsyncSession, job_id: uuid.UUID, **values: Any) -> None:
    await session.execute(
        update(Job).where(Job.id == job_id).values(**values).execution_options(synchronize_session=False)
    )
    await session.commit()


async def job_state(session: AsyncSession, job_id: uuid.UUID) -> tuple[JobState, float | None, str | None]:
    row = (await session.execute(select(Job.state, Job.budget_usd, Job.paused_reason).where(Job.id == job_id))).one()
    return JobState(row[0]), row[1], row[2]


async def job_uses_cache(session: AsyncSession, job_id: uuid.UUID) -> bool:
    return bool((await session.execute(select(Job.use_cache).where(Job.id == job_id))).scalar_one())


async def any_succeeded(session: AsyncSession, job_id: uuid.UUID) -> bool:
    query = select(Request.id).where(Request.job_id == job_id, Request.state == UnitState.succeeded).limit(1)
    return (await session.execute(query)).first() is not None
