"""``defeater worker``: every worker process works on every running job, leasing units in batches from Postgres.

Each worker runs a ``BackgroundRunner``: per running job an ``EmbeddedExecutor`` whose lanes lease units with
``FOR UPDATE SKIP LOCKED`` (so no unit runs twice), call the providers under fleet-wide limits in Redis
(``RedisLimits``), and write outcomes in batches. Waiting for a rate slot costs a future, not a queue task.

Postgres is the truth; arq carries wake-ups only: ``dispatch(job_id)`` after a job is created (the runners also
look for new jobs every ``POLL_S``), and the ``reconcile`` cron, which takes back the leases of workers that died
and ends jobs whose units are all final. Redis being flushed loses nothing but those wake-ups and the limiters'
state (which starts again from the next call).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from arq import cron
from arq.connections import RedisSettings
from sqlalchemy import select

from service.db.models import Job, JobState
from service.db.session import create_engine, create_sessionmaker
from service.jobs.webhook import notify_finished
from service.settings import Settings
from workers.executor import ledger
from workers.executor.background import BackgroundRunner
from workers.limits_redis import RedisLimits
from workers.providers.prices import PriceTable
from workers.providers.registry import Adapters, preload_sdks
from workers.tasks import Runtime

RECONCILE_EVERY_S = 15
# a worker looks for jobs to work on this often; a dispatch task it runs wakes it at once
POLL_S = 1.0

log = logging.getLogger("defeater.worker")


async def startup(ctx: dict[str, Any]) -> None:
    settings = Settings()
    engine = create_engine(settings, pre_ping=False)
    ctx["engine"] = engine
    ctx["sessionmaker"] = create_sessionmaker(engine)
    ctx["settings"] = settings
    runtime = Runtime(
        settings=settings,
        adapters=Adapters(settings.providers),
        limits=RedisLimits(ctx["redis"], settings.providers.rate_safety),
        prices=PriceTable.load(settings.providers.prices_file),
    )
    await asyncio.to_thread(preload_sdks)  # before any call, not at the first one, in the loop
    ctx["runner"] = BackgroundRunner(runtime, ctx["sessionmaker"], settings.executor.max_jobs_per_process, POLL_S)
    ctx["runner"].start()


async def shutdown(ctx: dict[str, Any]) -> None:
    """Calls in flight finish (for up to ``shutdown_grace_s``) and are written; the rest of the leases go back."""
    await ctx["runner"].stop(grace_s=ctx["settings"].executor.shutdown_grace_s)
    await ctx["engine"].dispose()


async def dispatch(ctx: dict[str, Any], job_id: str) -> str:
    """A job was created: this worker's runner looks for it now (the others within ``POLL_S``)."""
    ctx["runner"].wake()
    return f"woken for {job_id}"


async def finish_if_done(ctx: dict[str, Any], job_id: uuid.UUID) -> None:
    """End a running job whose every unit is final (the one process that ends it sends its webhook)."""
    async with ctx["sessionmaker"]() as session:
        state, _, _ = await ledger.job_state(session, job_id)
        if state is JobState.running and not await ledger.open_units(session, job_id):
            _, ended_here = await ledger.end_job(session, job_id)
            if ended_here:
                await notify_finished(session, ctx["settings"], job_id)


async def reconcile(ctx: dict[str, Any]) -> int:
    """Postgres is the truth: take back expired leases and those of dead workers, end finished jobs. Returns how
    many leases went back to pending."""
    async with ctx["sessionmaker"]() as session:
        running = list((await session.execute(select(Job.id).where(Job.state == JobState.running))).scalars())
    reclaimed = 0
    for job_id in running:
        async with ctx["sessionmaker"]() as session:
            reclaimed += await ledger.reclaim_leases(session, job_id)
        await finish_if_done(ctx, job_id)
    if running:
        ctx["runner"].wake()
    return reclaimed


def worker_settings(settings: Settings) -> dict[str, Any]:
    """arq's WorkerSettings for this deployment."""
    assert settings.redis_url, "DEFEATER_REDIS_URL is required for `defeater worker`"
    return {
        "functions": [dispatch],
        "cron_jobs": [cron(reconcile, second=set(range(0, 60, RECONCILE_EVERY_S)), run_at_startup=True)],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "max_jobs": 10,
        "job_timeout": 120,
        "keep_result": 60,
        "max_tries": 5,
        "handle_signals": True,
    }
