"""The executor's SQL: claiming units with leases, reclaiming dead leases, cache lookups, finishing jobs."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Table, func, literal, or_, select, update
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
from service.errors import reason_counts

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
    """A unit (request or judgement) leased to this process, with what its call needs.

    ``ref_id`` is the case for a request and the judged request for a judgement.
    """

    id: uuid.UUID
    ref_id: uuid.UUID
    sample_index: int
    attempts: int
    rate_limited: int
    error_repeats: int
    last_error: str | None
    job_id: uuid.UUID


Unit = type[Request] | type[Judgement]


def _table(model: Unit) -> Table:
    table: Table = model.__table__  # type: ignore[assignment]
    return table


def _config_column(model: Unit) -> Any:
    return _table(model).c.model_config_id if model is Request else _table(model).c.judge_config_id


def _ref_columns(model: Unit) -> tuple[Any, Any]:
    c = _table(model).c
    if model is Request:
        return c.case_id, c.sample_index
    return c.request_id, literal(0)


def _lease(model: Unit, which: Any, holder: str, lease_s: float) -> Any:
    """UPDATE ... SET leased ... RETURNING what a call needs, for the units ``which`` selects (Core, not the ORM's
    bulk update: this runs for every batch a lane leases)."""
    now = utcnow()
    table = _table(model)
    c = table.c
    ref, sample = _ref_columns(model)
    return (
        update(table)
        .where(which, c.state == UnitState.pending.value, or_(c.not_before.is_(None), c.not_before <= now))
        .values(
            state=UnitState.leased.value,
            leased_by=holder,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=c.attempts + 1,
            updated_at=now,
        )
        .returning(c.id, ref, sample, c.attempts, c.rate_limited, c.error_repeats, c.last_error, c.job_id)
    )


async def claim(
    session: AsyncSession,
    model: Unit,
    job_id: uuid.UUID,
    config_id: uuid.UUID,
    limit: int,
    holder: str,
    lease_s: float,
) -> list[Claimed]:
    """Lease up to ``limit`` due pending units of one config (SKIP LOCKED on Postgres). Commits."""
    now = utcnow()
    c = _table(model).c
    due = (
        select(c.id)
        .where(
            c.job_id == job_id,
            _config_column(model) == config_id,
            c.state == UnitState.pending.value,
            or_(c.not_before.is_(None), c.not_before <= now),
        )
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # a CTE computed once: as a plain IN (subquery), the planner may run the subquery again for every row it
        # joins, each time finding LIMIT other unlocked rows, and so lease far more than asked for
        chosen = due.with_for_update(skip_locked=True).cte("due").prefix_with("MATERIALIZED")
        which = c.id.in_(select(chosen.c.id))
    else:
        which = c.id.in_(due.scalar_subquery())
    rows = (await session.execute(_lease(model, which, holder, lease_s))).all()
    await session.commit()
    return [Claimed(*row) for row in rows]


async def reclaim_leases(session: AsyncSession, job_id: uuid.UUID) -> int:
    """Return expired leases, and leases of processes on this host that died, to pending. Commits."""
    now = utcnow()
    reclaimed = 0
    for model in (Request, Judgement):
        holders_query = select(model.leased_by).where(model.job_id == job_id, model.state == UnitState.leased)
        holders = {h for h in (await session.execute(holders_query.distinct())).scalars() if h}
        dead = [h for h in holders if holder_is_dead(h)]
        stmt = (
            update(model)
            .where(
                model.job_id == job_id,
                model.state == UnitState.leased,
                or_(model.lease_expires_at < now, model.leased_by.in_(dead)),
            )
            .values(state=UnitState.pending, leased_by=None, lease_expires_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        result = await session.execute(stmt)
        reclaimed += int(getattr(result, "rowcount", 0) or 0)
    await session.commit()
    return reclaimed


async def release_leases(session: AsyncSession, holder: str, job_id: uuid.UUID | None = None) -> None:
    """Give back this process's leases (a clean stop), or its leases of one job. Commits."""
    for model in (Request, Judgement):
        which = [model.state == UnitState.leased, model.leased_by == holder]
        if job_id is not None:
            which.append(model.job_id == job_id)
        stmt = (
            update(model)
            .where(*which)
            .values(state=UnitState.pending, leased_by=None, lease_expires_at=None, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        await session.execute(stmt)
    await session.commit()


async def prompts(session: AsyncSession, case_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await session.execute(select(Case.id, Case.user_query).where(Case.id.in_(case_ids)))
    return {row.id: row.user_query for row in rows.all()}


async def job_configs(session: AsyncSession, job_id: uuid.UUID, role: ConfigRole) -> list[ModelConfig]:
    query = (
        select(ModelConfig)
        .join(JobModelConfig, JobModelConfig.model_config_id == ModelConfig.id)
        .where(JobModelConfig.job_id == job_id, JobModelConfig.role == role)
        .order_by(JobModelConfig.position)
    )
    return list((await session.execute(query)).scalars())


async def current_configs(session: AsyncSession, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, ModelConfig]:
    """The configs as they are now (limits change while jobs run), bypassing the session's identity map."""
    query = select(ModelConfig).where(ModelConfig.id.in_(list(ids))).execution_options(populate_existing=True)
    return {config.id: config for config in (await session.execute(query)).scalars()}


def judgement_id(request_id: uuid.UUID, judge_id: uuid.UUID) -> uuid.UUID:
    """A judgement's identity: one per (answer, judge config)."""
    return uuid.uuid5(request_id, f"judge:{judge_id}")


async def unjudged_answers(session: AsyncSession, job_id: uuid.UUID, judge_id: uuid.UUID) -> list[uuid.UUID]:
    """Answers of the job that have no judgement row for this judge (e.g. stored before judging existed)."""
    judged = select(Judgement.request_id).where(Judgement.job_id == job_id, Judgement.judge_config_id == judge_id)
    query = select(Response.request_id).where(
        Response.job_id == job_id, Response.outcome == Outcome.answer, Response.request_id.not_in(judged)
    )
    return list((await session.execute(query)).scalars())


@dataclass(frozen=True)
class JudgeContext:
    rule: str
    defeat_condition: str | None
    family: str
    authority_type: str
    request: str
    answer: str
    reasoning: str | None


async def judge_contexts(session: AsyncSession, request_ids: list[uuid.UUID]) -> dict[uuid.UUID, JudgeContext]:
    """What the judge sees for each judged request: the case and the answer, not the model."""
    query = (
        select(
            Request.id,
            Case.unjust_policy,
            Case.defeat_condition,
            Case.family,
            Case.authority_type,
            Case.user_query,
            Response.text,
            Response.reasoning,
        )
        .join(Case, Case.id == Request.case_id)
        .join(Response, Response.request_id == Request.id)
        .where(Request.id.in_(request_ids))
    )
    out: dict[uuid.UUID, JudgeContext] = {}
    for row in (await session.execute(query)).all():
        out[row[0]] = JudgeContext(row[1], row[2], str(row[3].value), row[4], row[5], row[6], row[7])
    return out


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


async def finish_job(session: AsyncSession, job_id: uuid.UUID, state: JobState, error: str | None = None) -> bool:
    """Mark a running job ended (with why, if it failed); True for the one caller that did it (several workers may try
    at once). Commits."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.running)
        .values(state=state, finished_at=utcnow(), error=error)
        .execution_options(synchronize_session=False)
    )
    won = int(getattr(await session.execute(stmt), "rowcount", 0) or 0) == 1
    await session.commit()
    return won


async def end_job(session: AsyncSession, job_id: uuid.UUID) -> tuple[JobState, bool]:
    """End a job whose every unit is final: completed if at least one answer was judged, else failed with a line
    saying why. Returns that state and whether this caller ended it (several workers may try at once; the one that
    did sends the webhook). Commits."""
    if await any_judged(session, job_id):
        return JobState.completed, await finish_job(session, job_id, JobState.completed)
    error = nothing_judged(await failures(session, job_id))
    return JobState.failed, await finish_job(session, job_id, JobState.failed, error)


async def fail_job(session: AsyncSession, job_id: uuid.UUID, reason: str, error: str) -> bool:
    """End a job that has not ended as failed before it calls anything (a key is missing, say): its ``error`` set and
    every open unit failed with ``reason``, so that its counts are final. True for the one caller that did it.
    Commits."""
    now = utcnow()
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.state.in_((JobState.queued, JobState.running)))
        .values(state=JobState.failed, finished_at=now, error=error, paused_reason=None)
        .execution_options(synchronize_session=False)
    )
    if int(getattr(await session.execute(stmt), "rowcount", 0) or 0) != 1:
        await session.rollback()
        return False
    for model in (Request, Judgement):
        await session.execute(
            update(model)
            .where(model.job_id == job_id, model.state.not_in(FINAL))
            .values(
                state=UnitState.failed,
                failure_reason=reason,
                failure_detail=error,
                leased_by=None,
                lease_expires_at=None,
                not_before=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    await session.commit()
    return True


async def configs_to_call(session: AsyncSession, job_id: uuid.UUID) -> set[uuid.UUID]:
    """The configs the job would still call: targets with open requests, and every judge while any unit is open (an
    open request may yet give an answer to judge)."""
    targets = select(Request.model_config_id).where(Request.job_id == job_id, Request.state.not_in(FINAL)).distinct()
    found = set((await session.execute(targets)).scalars())
    if found or await open_units(session, job_id):
        judges = select(JobModelConfig.model_config_id).where(
            JobModelConfig.job_id == job_id, JobModelConfig.role == ConfigRole.judge
        )
        found |= set((await session.execute(judges)).scalars())
    return found


async def failures(session: AsyncSession, job_id: uuid.UUID) -> dict[str, dict[str, int]]:
    """The job's failed units by kind (``requests``, ``judgements``) and reason."""
    out: dict[str, dict[str, int]] = {"requests": {}, "judgements": {}}
    for kind, model in (("requests", Request), ("judgements", Judgement)):
        query = (
            select(model.failure_reason, func.count())
            .where(model.job_id == job_id, model.state == UnitState.failed)
            .group_by(model.failure_reason)
        )
        for reason, n in (await session.execute(query)).all():
            out[kind][reason or "unknown"] = n
    return out


def nothing_judged(failed: dict[str, dict[str, int]]) -> str:
    """The error line of a job that ended without a judged answer, e.g. ``no answer was judged: 168 judgements
    failed (missing_key: 168)``."""
    parts = [
        f"{n} {kind if n > 1 else kind[:-1]} failed ({reason_counts(reasons)})"
        for kind, reasons in failed.items()
        if (n := sum(reasons.values()))
    ]
    return "no answer was judged: " + ("; ".join(parts) if parts else "no response was an answer to judge")


async def job_state(session: AsyncSession, job_id: uuid.UUID) -> tuple[JobState, float | None, str | None]:
    row = (await session.execute(select(Job.state, Job.budget_usd, Job.paused_reason).where(Job.id == job_id))).one()
    return JobState(row[0]), row[1], row[2]


async def job_uses_cache(session: AsyncSession, job_id: uuid.UUID) -> bool:
    return bool((await session.execute(select(Job.use_cache).where(Job.id == job_id))).scalar_one())


async def any_judged(session: AsyncSession, job_id: uuid.UUID) -> bool:
    """At least one of the job's answers has a verdict."""
    query = select(Judgement.id).where(Judgement.job_id == job_id, Judgement.state == UnitState.succeeded).limit(1)
    return (await session.execute(query)).first() is not None
