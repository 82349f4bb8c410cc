"""``GET /v1/jobs/{id}`` while jobs run: the job's row is read on every request, its unit counts are at most a
second old and never waited for.

Counting a running job's units reads every one of its rows (requests, judgements, responses), and a release
pipeline polls while workers write. So each API process keeps the last count per job: younger than ``fresh_s``, it
is served as it is; older, it is served once more while a new count is made in the background (one at a time per
job), so a poll never waits behind a count. A job whose state changed since its count (it started, finished, was
cancelled) and any job in a final state are counted before answering: the status that says ``completed`` has the
exact final figures. Everything else in the status (state, timestamps, error) comes from the job's row, read now.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.background import SingleFlight
from service.db.models import Job, JobState
from service.jobs.schemas import JobRead
from service.jobs.service import Measured, compose, measure

FRESH_S = 1.0
MAX_JOBS = 256

log = logging.getLogger("defeater.api")


@dataclass(frozen=True)
class _Entry:
    state: str
    measured: Measured
    at: float


class StatusCache:
    """The latest unit counts of the ``max_jobs`` most recently read running jobs, in this process."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], fresh_s: float = FRESH_S, max_jobs: int = MAX_JOBS
    ) -> None:
        self.sessionmaker = sessionmaker
        self.fresh_s = fresh_s
        self.max_jobs = max_jobs
        self._entries: OrderedDict[uuid.UUID, _Entry] = OrderedDict()
        self._refreshing = SingleFlight()
        self.counted = 0  # how many counts were made, in the request or in the background: for tests

    async def read(self, session: AsyncSession, job: Job) -> JobRead:
        """The job's status: its row as it is now, its units as last counted (see the module's docstring)."""
        state = JobState(job.state)
        entry = self._entries.get(job.id)
        if entry is None or entry.state != state.value or state.final:
            measured = await measure(session, job)
            self.counted += 1
            self._keep(job.id, state, measured)
            return compose(job, measured)
        if time.monotonic() - entry.at >= self.fresh_s:
            job_id = job.id
            self._refreshing.start(job_id, lambda: self._refresh(job_id), name=f"status {job_id}")
        self._entries.move_to_end(job.id)
        return compose(job, entry.measured)

    async def settle(self) -> None:
        """Wait for the counts being made in the background (tests; shutdown)."""
        await self._refreshing.settle()

    async def close(self) -> None:
        await self._refreshing.close()

    def _keep(self, job_id: uuid.UUID, state: JobState, measured: Measured) -> None:
        if state.final:  # a final job is counted at every read: nothing to keep
            self._entries.pop(job_id, None)
            return
        self._entries[job_id] = _Entry(state.value, measured, time.monotonic())
        self._entries.move_to_end(job_id)
        while len(self._entries) > self.max_jobs:
            self._entries.popitem(last=False)

    async def _refresh(self, job_id: uuid.UUID) -> None:
        try:
            async with self.sessionmaker() as session:
                job = await session.get(Job, job_id)
                if job is None:
                    self._entries.pop(job_id, None)
                    return
                measured = await measure(session, job)
                self.counted += 1
                self._keep(job_id, JobState(job.state), measured)
        except Exception as exc:  # the next poll tries again; until then the last count is served
            log.warning("counting job %s's units failed (%s)", job_id, type(exc).__name__)
