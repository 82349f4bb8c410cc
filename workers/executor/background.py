"""Runs jobs in this process: the API's embedded mode (no Redis), and every ``defeater worker`` (with Redis).

A runner looks for queued and running jobs (oldest first, up to ``max_jobs`` at a time) and runs each with an
``EmbeddedExecutor``. Embedded, it is the only process; in a fleet every worker's runner works on every running
job at once, each leasing its own units from the ledger.
"""

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
    """Picks up queued and running jobs and runs them with the embedded executor.

    ``wake()`` after a job is created starts it at once; a restart picks up where the last process stopped. A job
    whose run fails (the database away for longer than the run waits, say) is run again after ``poll_s``.
    """

    def __init__(
        self,
        runtime: Runtime,
        sessionmaker: async_sessionmaker[AsyncSession],
        max_jobs: int = 4,
        poll_s: float = POLL_S,
    ) -> None:
        self.runtime = runtime
        self.sessionmaker = sessionmaker
        self.max_jobs = max_jobs
        self.poll_s = poll_s
        self._running: dict[uuid.UUID, tuple[EmbeddedExecutor, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="job-runner")

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> list[uuid.UUID]:
        return list(self._running)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                due = await self._due()
            except Exception as exc:  # the database is away: look again at the next poll
                log.warning("looking for jobs failed (%s)", type(exc).__name__)
                due = []
            for job_id in due:
                executor = EmbeddedExecutor(self.runtime, self.sessionmaker)
                task = asyncio.create_task(self._run(executor, job_id), name=f"job-{job_id}")
                self._running[job_id] = (executor, task)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()

    async def _due(self) -> list[uuid.UUID]:
        free = self.max_jobs - len(self._running)
        if free <= 0 or self._stopping:
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
        except Exception:  # the job stays in the ledger as it was; it is logged and run again after a poll
            log.exception("job %s stopped with an error", job_id)
            await asyncio.sleep(self.poll_s)
        finally:
            self._running.pop(job_id, None)
            self._wake.set()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop dispatching; calls in flight finish and are written; leases are given back. After ``grace_s``
        (if given) the calls still in flight are cut short, and their units go back to pending."""
        self._stopping = True
        self._wake.set()
        for executor, _ in list(self._running.values()):
            executor.stop()
        tasks = [task for _, task in list(self._running.values())]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s)
            if late:
                for executor, _ in list(self._running.values()):
                    executor.abort()
                await asyncio.gather(*late, return_exceptions=True)
        if self._task is not None:
            await self._task
        await self.runtime.adapters.aclose()
