"""``/v1/jobs``: start, list, read, cancel and retry evaluation jobs."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response

from service.db.models import JobState
from service.deps import SessionDep, SettingsDep
from service.jobs import repository, service
from service.jobs.schemas import JobCreate, JobRead, JobRetry, JobRetryRead, JobSummary
from service.jobs.status_cache import StatusCache
from service.pagination import Page, an_id, decode_cursor, encode_cursor, instant
from service.problems import NO_JOB, problem

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


async def _start_work(request: Request, job_id: uuid.UUID, task_id: str) -> None:
    """After the commit: wake this process's runner (embedded), or hand the job to the workers through Redis (ids
    only; a deterministic task id, so that a repeated enqueue is harmless)."""
    if getattr(request.app.state, "runner", None) is not None:
        request.app.state.runner.wake()
    if getattr(request.app.state, "queue", None) is not None:
        await request.app.state.queue.enqueue_job("dispatch", str(job_id), _job_id=task_id)


@router.post(
    "",
    status_code=202,
    response_model=JobRead,
    responses={
        200: {"description": "a job was already created with this Idempotency-Key and body", "model": JobRead},
        404: problem("no such dataset or model config (the closest names listed)"),
        409: problem("the Idempotency-Key was used for a job with another body"),
    },
)
async def create_job(
    body: JobCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> JobRead:
    """Start a job: writes the job and all its request rows at once; work begins in the background."""
    created = await service.create_job(session, body, settings, idempotency_key)
    await session.commit()
    await _start_work(request, created.job.id, f"dispatch:{created.job.id}")
    response.status_code = 202 if created.created else 200
    response.headers["Location"] = f"/v1/jobs/{created.job.id}"
    return await service.read_job(session, created.job)


@router.get("", response_model=Page[JobSummary])
async def list_jobs(
    session: SessionDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[JobSummary]:
    """Jobs, newest first."""
    before = None
    if cursor:
        created_at, job_id = decode_cursor(cursor, instant, an_id)
        before = (created_at, job_id)
    rows = await repository.list_page(session, limit + 1, state, before)
    items = [JobSummary.model_validate(r) for r in rows[:limit]]
    next_cursor = encode_cursor(items[-1].created_at.isoformat(), items[-1].id) if len(rows) > limit else None
    return Page[JobSummary](items=items, next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobRead, responses=NO_JOB)
async def read_job(job_id: uuid.UUID, session: SessionDep, request: Request) -> JobRead:
    """State, progress per phase and state, throughput, ETA, tokens, spend and errors by kind. While the job runs,
    its unit counts may be up to a second old; a finished job's are exact."""
    job = await service.get_job(session, job_id)
    cache: StatusCache | None = getattr(request.app.state, "status_cache", None)
    return await (cache.read(session, job) if cache is not None else service.read_job(session, job))


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    responses={**NO_JOB, 409: problem("the job is already over (completed, failed or cancelled)")},
)
async def cancel_job(job_id: uuid.UUID, session: SessionDep) -> JobRead:
    """Stop dispatching; calls in flight finish and are kept."""
    job = await service.cancel_job(session, await service.get_job(session, job_id))
    await session.commit()
    return await service.read_job(session, job)


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=JobRetryRead,
    responses={
        **NO_JOB,
        409: problem("the job is queued, running or cancelled, or no failed unit matches"),
        422: problem("an unknown field, phase or failure reason (the valid ones listed)"),
    },
)
async def retry_job(
    job_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    body: Annotated[JobRetry | None, Body()] = None,
) -> JobRetryRead:
    """Run a finished job's failed units again: the job goes from ``failed`` or ``completed`` back to ``running``.

    Without a body, every failed target request and judgement goes back to pending; ``phase`` keeps to one phase,
    ``reasons`` to the units that failed for those reasons (as ``errors_by_kind`` names them, or by their first
    word). Their attempt counters start again from zero, so the retry policy gives them a fresh budget. Nothing that
    succeeded is touched or called again; a request that succeeds now gets its judgements. The job then ends as any
    job does (and its webhook, if it has one, is sent again). The answer is the job's status with ``retried``: how
    many requests and judgements went back to pending. 409 for a job that is queued, running or cancelled, or when no
    failed unit matches; 422 for an unknown phase or a reason none of the job's units failed for.
    """
    retried = await service.retry_job(session, job_id, body or JobRetry())
    await session.commit()
    ended = retried.ended_at.isoformat() if retried.ended_at else "never"
    await _start_work(request, job_id, f"dispatch:{job_id}:retry:{ended}")
    status = await service.read_job(session, retried.job)
    return JobRetryRead(**status.model_dump(), retried=retried.units)
