"""``GET /v1/jobs/{id}/events``: the job's live status as Server-Sent Events, until it ends.

Each ``progress`` event carries the same status as ``GET /v1/jobs/{id}`` (progress, throughput, ETA, spend) plus
a row per model config: calls in flight, finished, failed and answered 429. An event is sent when something
changed, at most every ``interval`` seconds; a final ``end`` event names the state the job ended in, with its
``error`` (why it failed, or null) and ``warnings`` (as in the status). Status comes
from the ledger, so any API replica can serve the stream whichever workers run the job, and a client that
reconnects simply gets the current status.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sse_starlette import EventSourceResponse

from service.db.models import ConfigRole, JobModelConfig, JobState, Judgement, ModelConfig, UnitState
from service.db.models import Request as Unit
from service.deps import SessionDep
from service.jobs import service
from service.problems import NO_JOB

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# a comment line this often keeps proxies from closing a quiet stream
PING_S = 15


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`progress` events, then one `end` (state, error, warnings)",
        },
        **NO_JOB,
    },
)
async def job_events(
    job_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    interval: Annotated[float, Query(ge=0.2, le=60, description="seconds between status reads")] = 1.0,
) -> EventSourceResponse:
    """Follow a job: a ``progress`` event whenever its status changes, and ``end`` when it is over."""
    await service.get_job(session, job_id)  # an unknown job is a 404 before the stream starts
    # the request's session lives as long as the stream: end its transaction now (on SQLite it holds the lock)
    await session.rollback()
    return EventSourceResponse(_stream(request.app.state.sessionmaker, job_id, interval), ping=PING_S)


async def _stream(
    sessionmaker: async_sessionmaker[AsyncSession], job_id: uuid.UUID, interval: float
) -> AsyncIterator[dict[str, str]]:
    sent = None
    sequence = 0
    while True:
        async with sessionmaker() as session:
            job = await service.get_job(session, job_id)
            status = (await service.read_job(session, job)).model_dump(mode="json")
            configs = await live_by_config(session, job_id)
        data = json.dumps({"status": status, "configs": configs}, separators=(",", ":"))
        if data != sent:
            sequence += 1
            yield {"event": "progress", "id": str(sequence), "data": data}
            sent = data
        if JobState(status["state"]).final:
            end = {key: status[key] for key in ("id", "state", "error", "warnings")}
            yield {"event": "end", "data": json.dumps(end)}
            return
        await asyncio.sleep(interval)


async def live_by_config(session: AsyncSession, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """Per model config of the job: its units by state and the calls answered 429, target and judge alike."""
    query = (
        select(ModelConfig.id, ModelConfig.name, ModelConfig.provider, JobModelConfig.role)
        .join(JobModelConfig, JobModelConfig.model_config_id == ModelConfig.id)
        .where(JobModelConfig.job_id == job_id)
        .order_by(JobModelConfig.role, JobModelConfig.position)
    )
    rows: dict[uuid.UUID, dict[str, Any]] = {}
    for config_id, name, provider, role in (await session.execute(query)).all():
        rows[config_id] = {"model_config_id": str(config_id), "name": name, "provider": str(provider.value),
                           "role": ConfigRole(role).value, "in_flight": 0, "pending": 0, "succeeded": 0,
                           "failed": 0, "rate_limited": 0}  # fmt: skip
    for model, config in ((Unit, Unit.model_config_id), (Judgement, Judgement.judge_config_id)):
        counts = (
            select(config, model.state, func.count(), func.coalesce(func.sum(model.rate_limited), 0))
            .where(model.job_id == job_id)
            .group_by(config, model.state)
        )
        for config_id, state, n, limited in (await session.execute(counts)).all():
            row = rows.get(config_id)
            if row is None:
                continue
            key = "in_flight" if UnitState(state) is UnitState.leased else UnitState(state).value
            row[key] += n
            row["rate_limited"] += int(limited)
    return list(rows.values())
