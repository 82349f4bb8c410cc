"""The computed results of recent jobs, per API process, served again while the job's ledger has not changed.

A poll of a job costs one cheap query (``repository.version``: per unit table, the rows, the final ones and the
newest ``updated_at``); the figures are recomputed only when that version or the job's state moved. A finished job's
version stops moving, so its results are computed once. The recomputation's SQL is awaited on the loop; the pure
part (``build`` and the JSON encoding) runs in a worker thread so that other requests are not held behind it.

Freshness: while a job runs its ledger changes all the time, so its results are computed at most once per
``RUNNING_FRESH_S``: an entry of a job that is not final is served without looking at the ledger for that long, and
figures are at most that old. Past it, the version decides. Every write that can change a figure changes a count (a
unit becoming final, or going back to pending) or stamps a newer ``updated_at``; the one blind spot is writes that
move no count and are stamped no later than the newest stamp already seen (clocks of different hosts apart), so an
entry of a job that is not final is never served more than ``RUNNING_MAX_AGE_S`` after it was computed. A final job's
entry is checked against the version at every read (a cancelled job's calls in flight still land).

With a sessionmaker of its own (the API's, when it owns its engine), the cache never makes a poll of a running job
wait for a recomputation once it has an entry in the job's state: an entry older than ``RUNNING_FRESH_S`` is served
once more while the figures are computed again in the background, one recomputation per job at a time. Figures
are then as old as ``RUNNING_FRESH_S`` plus one recomputation; a change of the job's state is computed at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.background import SingleFlight
from service.db.models import Job, JobState
from service.results import repository
from service.results.service import Facts, build, read_facts

log = logging.getLogger("defeater.api")

RUNNING_FRESH_S = 5.0
RUNNING_MAX_AGE_S = 10.0
MAX_JOBS = 32


@dataclass(frozen=True)
class _Entry:
    key: tuple[Any, ...]
    body: bytes
    computed_at: float


class ResultsCache:
    """The results of the ``max_jobs`` most recently read jobs, as JSON bodies keyed by the ledger's version."""

    def __init__(
        self,
        max_jobs: int = MAX_JOBS,
        running_fresh_s: float = RUNNING_FRESH_S,
        running_max_age_s: float = RUNNING_MAX_AGE_S,
        sessionmaker: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self._refreshing = SingleFlight()
        self._entries: OrderedDict[uuid.UUID, _Entry] = OrderedDict()
        self._max_jobs = max_jobs
        self._running_fresh_s = running_fresh_s
        self._running_max_age_s = running_max_age_s
        self.computed = 0  # how many times the figures were computed, not served again: for tests and metrics

    def fresh(self, job_id: uuid.UUID, state: str) -> bytes | None:
        """The entry of a job that is not final, computed in the same state less than ``running_fresh_s`` ago."""
        entry = self._entries.get(job_id)
        if entry is None or entry.key[0] != state or time.monotonic() - entry.computed_at >= self._running_fresh_s:
            return None
        return entry.body

    def stale(self, job_id: uuid.UUID, state: str) -> bytes | None:
        """With a sessionmaker: the entry of a job that is not final, computed in the same state, however old; one
        older than ``running_fresh_s`` is computed again in the background meanwhile."""
        entry = self._entries.get(job_id)
        if self.sessionmaker is None or entry is None or entry.key[0] != state:
            return None
        if time.monotonic() - entry.computed_at >= self._running_fresh_s:
            self._refreshing.start(job_id, lambda: self._refresh(job_id), name=f"results {job_id}")
        return entry.body

    async def _refresh(self, job_id: uuid.UUID) -> None:
        assert self.sessionmaker is not None
        try:
            async with self.sessionmaker() as session:
                job = await session.get(Job, job_id)
                if job is not None:
                    key = (JobState(job.state).value, *await repository.version(session, job.id))
                    body = await anyio.to_thread.run_sync(_render, await read_facts(session, job))
                    self.computed += 1
                    self.put(job_id, key, body)
        except Exception as exc:  # the next poll tries again; until then the last figures are served
            log.warning("computing job %s's results failed (%s)", job_id, type(exc).__name__)

    async def settle(self) -> None:
        """Wait for the recomputations running in the background (tests; shutdown)."""
        await self._refreshing.settle()

    async def close(self) -> None:
        await self._refreshing.close()

    def get(self, job_id: uuid.UUID, key: tuple[Any, ...], final: bool) -> bytes | None:
        """The entry computed at this version (of a job that is not final: less than ``running_max_age_s`` ago)."""
        entry = self._entries.get(job_id)
        if entry is None or entry.key != key:
            return None
        if not final and time.monotonic() - entry.computed_at > self._running_max_age_s:
            return None
        self._entries.move_to_end(job_id)
        return entry.body

    def put(self, job_id: uuid.UUID, key: tuple[Any, ...], body: bytes) -> None:
        self._entries[job_id] = _Entry(key, body, time.monotonic())
        self._entries.move_to_end(job_id)
        while len(self._entries) > self._max_jobs:
            self._entries.popitem(last=False)


def _render(facts: Facts) -> bytes:
    return build(facts).model_dump_json().encode()


async def results_json(session: AsyncSession, job: Job, cache: ResultsCache) -> bytes:
    """The job's results as the JSON body of ``GET /v1/jobs/{id}/results``: from the cache while the ledger is
    unchanged, otherwise computed (SQL on the loop, the rest in a thread) and kept."""
    state = JobState(job.state)
    if not state.final and (body := cache.fresh(job.id, state.value) or cache.stale(job.id, state.value)):
        return body
    # the version is read before the facts: an entry may hold figures newer than its key, never older
    key = (state.value, *await repository.version(session, job.id))
    body = cache.get(job.id, key, state.final)
    if body is None:
        facts = await read_facts(session, job)
        body = await anyio.to_thread.run_sync(_render, facts)
        cache.computed += 1
        cache.put(job.id, key, body)
    return body
