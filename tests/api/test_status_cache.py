"""Polls of a running job: unit counts at most ``fresh_s`` old, refreshed in the background, never waited for; a
state change or a final job is counted before answering."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.models import Job, JobState, Request, UnitState
from service.jobs import service
from service.jobs.status_cache import StatusCache


async def _job(client: httpx.AsyncClient, starter: dict[str, Any], make_config: Any) -> uuid.UUID:
    body = {"dataset_id": starter["id"], "model_config_ids": [(await make_config())["id"]], "filters": {"limit": 6}}
    return uuid.UUID((await client.post("/v1/jobs", json=body)).json()["id"])


async def _finish(session: AsyncSession, job_id: uuid.UUID, n: int) -> None:
    ids = (await session.execute(select(Request.id).where(Request.job_id == job_id))).scalars().all()
    await session.execute(update(Request).where(Request.id.in_(ids[:n])).values(state=UnitState.succeeded))
    await session.commit()


async def test_a_running_job_is_served_from_its_last_count_and_recounted_in_the_background(
    client: httpx.AsyncClient,
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    starter: dict[str, Any],
    make_config: Any,
) -> None:
    job_id = await _job(client, starter, make_config)
    await session.execute(update(Job).where(Job.id == job_id).values(state=JobState.running))
    await session.commit()
    cache = StatusCache(sessionmaker, fresh_s=0.2)
    job = await service.get_job(session, job_id)
    assert (await cache.read(session, job)).progress.requests.succeeded == 0 and cache.counted == 1

    await _finish(session, job_id, 2)
    # within fresh_s: the last count, no new one
    assert (await cache.read(session, job)).progress.requests.succeeded == 0 and cache.counted == 1
    await asyncio.sleep(0.25)
    # older: still served at once, while a new count is made in the background
    assert (await cache.read(session, job)).progress.requests.succeeded == 0
    await cache.settle()
    assert cache.counted == 2
    status = await cache.read(session, job)
    assert status.progress.requests.succeeded == 2
    assert status.progress == (await service.read_job(session, job)).progress


async def test_a_changed_state_and_a_final_job_are_counted_before_answering(
    client: httpx.AsyncClient,
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    starter: dict[str, Any],
    make_config: Any,
) -> None:
    job_id = await _job(client, starter, make_config)
    cache = StatusCache(sessionmaker, fresh_s=60)
    job = await service.get_job(session, job_id)
    await cache.read(session, job)  # counted while queued
    await session.execute(update(Job).where(Job.id == job_id).values(state=JobState.running))
    await _finish(session, job_id, 3)
    await session.refresh(job)
    assert (await cache.read(session, job)).progress.requests.succeeded == 3  # a new state: counted now

    await _finish(session, job_id, 6)
    await session.execute(update(Job).where(Job.id == job_id).values(state=JobState.completed))
    await session.commit()
    await session.refresh(job)
    for _ in range(2):  # every read of a final job counts: its figures are exact
        final = await cache.read(session, job)
        assert final.state is JobState.completed and final.progress.requests.succeeded == 6
    assert cache.counted == 4
