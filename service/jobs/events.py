"""``GET /v1/jobs/{id}/events``: the job's live status as Server-Sent Events, until it ends.

Each ``progress`` event carries the same status as ``GET /v1/jobs/{id}`` (progress, throughput, ETA, spend) plus
a row per model config: calls in flight, finished, failed and answered 429. An event is sent when something
changed, at most every ``interval`` seconds; a final ``end`` event names the state the job ended in, with its
``error`` (why it failed, or null) and ``warnings`` (as in the status). Status comes
from the ledger, read in a short session per read (the job's unit counts through the API's ``StatusCache``), so any
API replica can serve the stream whichever workers run the job, a stream holds no database connection between reads,
and a client that reconnects simply gets the current status.

Streams are bounded (docs/security.md, "Event streams"): a token (with tokens off, a client address) holds at most
``DEFEATER_EVENTS__MAX_STREAMS_PER_CLIENT`` at once in a process (429 with ``Retry-After`` beyond); a stream checks
its token every ``token_recheck_s`` and ends with a ``close`` event (``token_revoked``) once it is revoked, and ends
with ``close`` (``max_lifetime``: reconnect) after ``max_lifetime_s``, so none outlives its token or runs for ever.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from service.auth import service as auth
from service.auth.guard import Principal
from service.db.models import ConfigRole, JobModelConfig, JobState, Judgement, ModelConfig, UnitState
from service.db.models import Request as Unit
from service.deps import SessionDep
from service.errors import TooManyRequests
from service.jobs import service
from service.jobs.status_cache import StatusCache
from service.problems import NO_JOB, problem
from service.settings import EventSettings

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# a comment line this often keeps proxies from closing a quiet stream
PING_S = 15
# what a client refused a stream is asked to wait: a stream of its own ends, or it polls meanwhile
RETRY_AFTER_S = 10


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`progress` events, then one `end` (state, error, warnings), or one `close` (reason: "
            "`max_lifetime`, reconnect; `token_revoked`, stop)",
        },
        **NO_JOB,
        429: problem(
            "this token (tokens off: this client address) holds as many streams as it may "
            "(DEFEATER_EVENTS__MAX_STREAMS_PER_CLIENT); Retry-After says when to try again",
            {"Retry-After": {"description": "seconds to wait before asking again", "schema": {"type": "integer"}}},
        ),
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
    # the request's session lives as long as the stream: end its transaction now, so that it holds no connection
    # (and on SQLite no lock) while the stream runs; the stream reads in short sessions of its own
    await session.rollback()
    principal: Principal = request.state.principal
    streams: EventStreams = request.app.state.event_streams
    address = request.client.host if request.client else "unknown"
    slot = streams.acquire(f"token {principal.token_id}" if principal.token_id else f"address {address}")
    watch = _Watch(request.app.state.sessionmaker, getattr(request.app.state, "status_cache", None), streams,
                   job_id, interval, principal.token_id)  # fmt: skip
    # released when the stream ends, or after the response if the stream never started (a client gone at once)
    return EventSourceResponse(_stream(watch, slot), ping=PING_S, background=BackgroundTask(slot.release))


async def _stream(watch: _Watch, slot: Slot) -> AsyncIterator[dict[str, Any]]:
    try:
        async for event in watch.events():
            yield event
    finally:
        slot.release()


@dataclass
class _Watch:
    """One stream: reads the job's status when due, and ends on the job's end, its token's revocation or its age."""

    sessionmaker: async_sessionmaker[AsyncSession]
    cache: StatusCache | None
    streams: EventStreams
    job_id: uuid.UUID
    interval: float
    token_id: uuid.UUID | None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        limits = self.streams.settings
        started = next_read = next_check = time.monotonic()
        sent, sequence = None, 0
        while True:
            now = time.monotonic()
            if now >= next_read:
                status, data = await self._read()
                if data != sent:
                    sequence, sent = sequence + 1, data
                    yield {"event": "progress", "id": str(sequence), "data": data}
                if JobState(status["state"]).final:
                    end = {key: status[key] for key in ("id", "state", "error", "warnings")}
                    yield {"event": "end", "data": json.dumps(end)}
                    return
                next_read = now + self.interval
            if now >= next_check and self.token_id is not None:
                if not await self._token_live():
                    yield _close("token_revoked", "the API token of this stream was revoked")
                    return
                next_check = now + limits.token_recheck_s
            if now - started >= limits.max_lifetime_s:
                yield _close("max_lifetime", "the stream reached its maximum lifetime: reconnect to follow on", 1000)
                return
            wake = min(next_read, next_check if self.token_id else next_read, started + limits.max_lifetime_s)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))

    async def _read(self) -> tuple[dict[str, Any], str]:
        """The job's status and the ``progress`` event's data, in a short session (nothing held between reads)."""
        async with self.sessionmaker() as session:
            job = await service.get_job(session, self.job_id)
            read = self.cache.read(session, job) if self.cache is not None else service.read_job(session, job)
            status = (await read).model_dump(mode="json")
            configs = await live_by_config(session, self.job_id)
        return status, json.dumps({"status": status, "configs": configs}, separators=(",", ":"))

    async def _token_live(self) -> bool:
        assert self.token_id is not None
        async with self.sessionmaker() as session:
            return await auth.is_live(session, self.token_id)


def _close(reason: str, detail: str, retry_ms: int | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"event": "close", "data": json.dumps({"reason": reason, "detail": detail})}
    if retry_ms is not None:
        event["retry"] = retry_ms  # how soon a browser's EventSource reconnects
    return event


class Slot:
    """One open stream's place; released once, however many times ``release`` is called."""

    def __init__(self, streams: EventStreams, client: str) -> None:
        self._streams, self._client, self._held = streams, client, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._streams.release(self._client)


class EventStreams:
    """The event streams open in this API process, counted per client (a token, or an address with tokens off)."""

    def __init__(self, settings: EventSettings) -> None:
        self.settings = settings
        self._open: Counter[str] = Counter()

    def acquire(self, client: str) -> Slot:
        """A place for one more stream of ``client``; a 429 when it holds ``max_streams_per_client`` already."""
        limit = self.settings.max_streams_per_client
        if self._open[client] >= limit:
            raise TooManyRequests(
                f"{limit} event streams are open for this client already (DEFEATER_EVENTS__MAX_STREAMS_PER_CLIENT): "
                "close one, or poll GET /v1/jobs/{id}",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._open[client] += 1
        return Slot(self, client)

    def release(self, client: str) -> None:
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]

    def open(self, client: str) -> int:
        """Streams ``client`` holds open now."""
        return self._open[client]


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
