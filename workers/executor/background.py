"""Embedded mode behind the API: with no Redis, jobs posted to ``defeater api`` run inside the API process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.models import Job, JobState
from workers.executor.embedded import EmbeddedExecutor
from workers.tasks import Runtime

log = logging.getLogger("defeater.runner")
POLL_S = 2.0


class BackgroundRunner:
    """Picks up queued and running jobs (oldest first, a few at a time) and runs them with the embedded executor.

    ``wake()`` after a job is created starts it at once; a restart picks up where the last process stopped.
    """

    def __init__(self, runtime: Runtime, sessionmaker: async_sessionmaker[AsyncSession], max_jobs: int = 4) -> None:
        self.runtime = runtime
        self.sessionmaker = sessionmaker
        self.max_jobs = max_jobs
        self._running: dict[uuid.UUID, tuple[EmbeddedExecutor, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="embedded-runner")

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping:
            for job_id in await self._due():
                executor = EmbeddedExecutor(self.runtime, self.sessionmaker)
                task = asyncio.create_task(self._run(executor, job_id), name=f"job-{job_id}")
                self._running[job_id] = (executor, task)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            self._wake.clear()

    async def _due(self) -> list[uuid.UUID]:
        free = self.max_jobs - len(self._running)
        if free <= 0:
            return []
        query = (
            select(Job.id)
            .where(Job.state.in_((JobState.queued, JobState.running)), Job.paused_reason.is_(None))
            .order_by(Job.created_at)
            .limit(free + len(self._running))
        )
        async with self.sessionmaker() as session:
            ids = list((await session.execute(query)).scalars())
        return [i for i in ids if i not in self._running][:free]

    async def _run(self, executor: EmbeddedExecutor, job_id: uuid.UUID) -> None:
        try:
            outcome = await executor.run_job(job_id)
            log.info("job %s: %s", job_id, outcome.state)
        except Exception:  # the job stays in the ledger as it was; it is logged and retried on the next poll
            log.exception("job %s stopped with an error", job_id)
            await asyncio.sleep(POLL_S)
        finally:
            self._running.pop(job_id, None)
            self._wake.set()

    async def stop(self) -> None:
        """Stop dispatching; calls in flight finish and are written; leases are given back."""
        self._stopping = True
        self._wake.set()
        for executor, _ in list(self._running.values()):
            executor.stop()
        await asyncio.gather(*(task for _, task in list(self._running.values())), return_exceptions=True)
        if self._task is not None:
            await self._task
        await self.runtime.adapters.aclose()
