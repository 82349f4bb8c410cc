"""``defeater worker``: arq tasks over Postgres and Redis, running the same unit code as the embedded executor.

Postgres is the truth; Redis only carries wake-ups. Task ids are deterministic (``req:<id>:<attempt>``), so an
enqueue repeated by the reconciler is harmless, and every task checks the ledger before doing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from arq import Retry, cron
from arq.connections import ArqRedis, RedisSettings
from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.base import utcnow
from service.db.models import Case, ConfigRole, Job, JobState, Judgement, ModelConfig, Request, UnitState
from service.db.session import create_engine, create_sessionmaker, is_disconnect
from service.jobs.webhook import notify_finished
from service.settings import Settings
from workers.executor import ledger
from workers.executor.writer import ResultWriter, UnitUpdate, Written
from workers.limits_redis import RedisLimits
from workers.providers.prices import PriceTable
from workers.providers.registry import Adapters
from workers.tasks import Runtime, Stats, Target, reused_row, run_judgement, run_request

RECONCILE_EVERY_S = 15
# a worker checks whether a job it wrote to is done at most this often (the check counts the job's open units)
FINISH_CHECK_S = 1.0
JOB_TIMEOUT_S = 6 * 3600
# a task sent back to the queue because its key is backlogged comes back after at most this long
MAX_DEFER_S = 5.0
# a task that finds the database unreachable (restarting, say) runs again after this many seconds
DATABASE_RETRY_S = 2

log = logging.getLogger("defeater.worker")


def request_task_id(unit_id: uuid.UUID, attempt: int) -> str:
    return f"req:{unit_id}:{attempt}"


def judgement_task_id(unit_id: uuid.UUID, attempt: int) -> str:
    return f"jdg:{unit_id}:{attempt}"


async def enqueue_units(redis: ArqRedis, kind: str, units: list[tuple[uuid.UUID, int, datetime | None]]) -> None:
    """Enqueue tasks for (unit id, attempts so far, due time) of one kind; an existing task id is left alone."""
    function, task_id = (
        ("run_request_task", request_task_id) if kind == "requests" else ("run_judgement_task", judgement_task_id)
    )
    for unit_id, attempt, due in units:
        defer = due if due is not None and due > datetime.now(UTC) else None
        await redis.enqueue_job(function, str(unit_id), _job_id=task_id(unit_id, attempt), _defer_until=defer)


async def startup(ctx: dict[str, Any]) -> None:
    settings = Settings()
    engine = create_engine(settings, pre_ping=False)
    ctx["engine"] = engine
    ctx["sessionmaker"] = create_sessionmaker(engine)
    ctx["settings"] = settings
    ctx["runtime"] = Runtime(
        settings=settings,
        adapters=Adapters(settings.providers),
        limits=RedisLimits(ctx["redis"], settings.providers.rate_safety),
        prices=PriceTable.load(settings.providers.prices_file),
    )
    ctx["holder"] = ledger.holder_id()
    ctx["stats"] = Stats()
    ctx["targets"] = {}
    ctx["finish_checks"] = set()
    ctx["background"] = set()
    ctx["jobs"] = {}

    async def after_commit(written: Written) -> None:
        await _follow_up(ctx, written)

    executor = settings.executor
    ctx["writer"] = ResultWriter(
        ctx["sessionmaker"], ctx["holder"], executor.flush_interval_s, executor.flush_batch,
        after_commit=after_commit, lease_s=executor.lease_s,
    )  # fmt: skip
    ctx["writer"].start()
    ctx["refresher"] = asyncio.create_task(_refresh_loop(ctx), name="refresh-targets")


async def shutdown(ctx: dict[str, Any]) -> None:
    ctx["refresher"].cancel()
    for task in list(ctx["background"]):
        task.cancel()
    await ctx["writer"].close()
    async with ctx["sessionmaker"]() as session:
        await ledger.release_leases(session, ctx["holder"])
    await ctx["runtime"].adapters.aclose()
    await ctx["engine"].dispose()


async def _follow_up(ctx: dict[str, Any], written: Written) -> None:
    """After a commit: judge new answers, retry backed-off units, finish jobs whose units are all final."""
    redis: ArqRedis = ctx["redis"]
    await enqueue_units(redis, "judgements", [(j, 0, None) for j in written.new_judgements])
    await enqueue_units(redis, "requests", [(u.id, u.attempt, u.not_before) for u in written.retried_requests])
    await enqueue_units(redis, "judgements", [(u.id, u.attempt, u.not_before) for u in written.retried_judgements])
    for job_id in written.job_ids:
        _check_finished_soon(ctx, job_id)


def _check_finished_soon(ctx: dict[str, Any], job_id: uuid.UUID) -> None:
    """Check whether the job is done ``FINISH_CHECK_S`` from now: one check for all the writes until then, and
    always one after the last write, so a job completes within that time of its last unit's write."""
    scheduled: set[uuid.UUID] = ctx["finish_checks"]
    if job_id in scheduled:
        return

    async def check() -> None:
        await asyncio.sleep(FINISH_CHECK_S)
        scheduled.discard(job_id)
        try:
            await finish_if_done(ctx, job_id)
        except Exception as exc:  # the reconciler finishes it later
            log.warning("checking whether job %s is done failed (%s)", job_id, type(exc).__name__)

    scheduled.add(job_id)
    task = asyncio.create_task(check(), name=f"finish-check {job_id}")
    ctx["background"].add(task)
    task.add_done_callback(ctx["background"].discard)


async def finish_if_done(ctx: dict[str, Any], job_id: uuid.UUID) -> None:
    async with ctx["sessionmaker"]() as session:
        state, _, _ = await ledger.job_state(session, job_id)
        if state is JobState.running and not await ledger.open_units(session, job_id):
            final = JobState.completed if await ledger.any_succeeded(session, job_id) else JobState.failed
            if await ledger.finish_job(session, job_id, final):
                await notify_finished(session, ctx["settings"], job_id)


async def dispatch(ctx: dict[str, Any], job_id: str) -> int:
    """Start a job: mark it running and enqueue a task per open unit. Idempotent."""
    job = uuid.UUID(job_id)
    async with ctx["sessionmaker"]() as session:
        state, _, _ = await ledger.job_state(session, job)
        if state.final:
            return 0
        await ledger.set_job(session, job, state=JobState.running, started_at=func.coalesce(Job.started_at, utcnow()))
    return await enqueue_open(ctx, job)


async def enqueue_open(ctx: dict[str, Any], job_id: uuid.UUID) -> int:
    """Enqueue every pending unit of the job (deterministic task ids: queued ones are not doubled)."""
    count = 0
    for kind, model in (("requests", Request), ("judgements", Judgement)):
        query = select(model.id, model.attempts, model.not_before).where(
            model.job_id == job_id, model.state == UnitState.pending
        )
        async with ctx["sessionmaker"]() as session:
            units = [(row[0], row[1], row[2]) for row in (await session.execute(query)).all()]
        await enqueue_units(ctx["redis"], kind, units)
        count += len(units)
    return count


async def _job_info(ctx: dict[str, Any], session: AsyncSession, job_id: uuid.UUID) -> tuple[bool, list[uuid.UUID]]:
    """Whether the job reuses cached answers, and its judges: fixed at creation, so read once per process."""
    if job_id not in ctx["jobs"]:
        judges = [c.id for c in await ledger.job_configs(session, job_id, ConfigRole.judge)]
        ctx["jobs"][job_id] = (await ledger.job_uses_cache(session, job_id), judges)
    info: tuple[bool, list[uuid.UUID]] = ctx["jobs"][job_id]
    return info


async def _unit(
    session: AsyncSession, model: ledger.Unit, unit_id: uuid.UUID
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, int, str | None] | str:
    """The task's unit if it is pending and its job running: (job, config, case or judged request, sample, and
    for a request its prompt), or why not. One query."""
    columns: tuple[Any, ...]
    if model is Request:
        columns = (Request.model_config_id, Request.case_id, Request.sample_index, Case.user_query)
    else:
        columns = (Judgement.judge_config_id, Judgement.request_id, literal(0), literal(None))
    query = select(model.job_id, *columns, Job.state, model.state).join(Job, Job.id == model.job_id)
    if model is Request:
        query = query.join(Case, Case.id == Request.case_id)
    row = (await session.execute(query.where(model.id == unit_id))).first()
    if row is None:
        return "unknown"
    job_id, config_id, ref_id, sample_index, prompt, job_state, state = row
    if JobState(job_state) is not JobState.running:
        return f"job {JobState(job_state).value}"
    if UnitState(state) is not UnitState.pending:
        return f"unit {UnitState(state).value}"
    return job_id, config_id, ref_id, sample_index, prompt


async def _claim(
    ctx: dict[str, Any], session: AsyncSession, model: ledger.Unit, unit_id: uuid.UUID
) -> ledger.Claimed | None:
    """Lease the unit (last, after every read, so a failed read leaves no lease behind) and keep it alive."""
    unit = await ledger.claim_one(session, model, unit_id, ctx["holder"], ctx["settings"].executor.lease_s)
    if unit is not None:
        ctx["writer"].hold(model, [unit])
    return unit


async def _target(ctx: dict[str, Any], session: AsyncSession, config_id: uuid.UUID, pool: str) -> Target:
    """The config as a Target; the refresher keeps it (and its limits) current."""
    target: Target | None = ctx["targets"].get((config_id, pool))
    if target is None:
        config = await session.get(ModelConfig, config_id)
        assert config is not None
        target = ctx["targets"][config_id, pool] = Target.of(config, ctx["settings"].providers.default_max_concurrency)
    return target


async def refresh_targets(ctx: dict[str, Any]) -> None:
    """Read the configs in use again and apply their limits, also to calls already waiting for a slot."""
    if not ctx["targets"]:
        return
    async with ctx["sessionmaker"]() as session:
        configs = await ledger.current_configs(session, {config_id for config_id, _ in ctx["targets"]})
    default = ctx["settings"].providers.default_max_concurrency
    for config_id, pool in list(ctx["targets"]):
        if config_id in configs:
            target = ctx["targets"][config_id, pool] = Target.of(configs[config_id], default)
            ctx["runtime"].key_limits(target, pool)


async def _refresh_loop(ctx: dict[str, Any]) -> None:
    every = ctx["settings"].executor.limits_refresh_s
    while True:
        await asyncio.sleep(every)
        try:
            await refresh_targets(ctx)
        except Exception as exc:  # the database may be away for a while: keep the limits we have
            log.warning("reading model configs again failed (%s)", type(exc).__name__)


def _defer_if_backlogged(ctx: dict[str, Any], target: Target, pool: str) -> None:
    """Send the task back to the queue for a while when its key has enough calls waiting in this process.

    A task waiting for a rate-limit slot holds one of the worker's task slots, and arq re-checks every running
    task on each poll; deferring keeps both small. The delay is the local backlog at the key's full rate (a lower
    bound: other workers share the rate), with jitter so deferred tasks come back spread out.
    """
    backlog = ctx["runtime"].key_limits(target, pool).backlog_s()
    executor = ctx["settings"].executor
    if backlog > executor.max_local_backlog_s:
        # never longer than MAX_DEFER_S: a deferred task must see a raised limit within seconds
        longest = max(MAX_DEFER_S, executor.limits_refresh_s)
        raise Retry(defer=min(backlog * ctx["runtime"].rng.uniform(1.0, 1.5), longest))


@contextlib.contextmanager
def _retry_if_database_away(ctx: dict[str, Any], model: ledger.Unit, unit_id: uuid.UUID) -> Iterator[None]:
    """A task that could not reach the database runs again shortly; a lease it may have taken is let go."""
    try:
        yield
    except Exception as exc:
        if not is_disconnect(exc):
            raise
        ctx["writer"].let_go(model, [unit_id])
        log.warning("task for %s %s waits for the database: %s", model.__tablename__, unit_id, type(exc).__name__)
        raise Retry(defer=DATABASE_RETRY_S) from exc


@contextlib.contextmanager
def _let_go_if_cancelled(ctx: dict[str, Any], model: ledger.Unit, unit_id: uuid.UUID) -> Iterator[None]:
    """A call cut off by the worker stopping: its lease is let go, to expire and be reclaimed."""
    try:
        yield
    except asyncio.CancelledError:
        ctx["writer"].let_go(model, [unit_id])
        raise


async def run_request_task(ctx: dict[str, Any], request_id: str) -> str:
    """One target call, if the request is still pending and due and its job still running."""
    unit_id = uuid.UUID(request_id)
    with _retry_if_database_away(ctx, Request, unit_id):
        async with ctx["sessionmaker"]() as session:
            found = await _unit(session, Request, unit_id)
            if isinstance(found, str):
                return found
            job_id, config_id, _, sample, prompt = found
            assert prompt is not None
            use_cache, judges = await _job_info(ctx, session, job_id)
            target = await _target(ctx, session, config_id, "target")
            _defer_if_backlogged(ctx, target, "target")
            key = target.cache_key(prompt, sample)
            earlier = await ledger.cached_answers(session, [key]) if use_cache else {}
            unit = await _claim(ctx, session, Request, unit_id)
    if unit is None:
        return "not due"
    if earlier:
        row = reused_row(job_id, target, unit, next(iter(earlier.values())))
        ctx["writer"].add(UnitUpdate(unit.id, UnitState.succeeded), row, judges)
        return "reused"
    with _let_go_if_cancelled(ctx, Request, unit.id):
        await run_request(ctx["runtime"], ctx["writer"], ctx["stats"], job_id, target, unit, prompt, judges)
    return "called"


async def run_judgement_task(ctx: dict[str, Any], judgement_id: str) -> str:
    """One judge call, if the judgement is still pending and due and its job still running."""
    unit_id = uuid.UUID(judgement_id)
    with _retry_if_database_away(ctx, Judgement, unit_id):
        async with ctx["sessionmaker"]() as session:
            found = await _unit(session, Judgement, unit_id)
            if isinstance(found, str):
                return found
            _, judge_id, request_id, _, _ = found
            judge = await _target(ctx, session, judge_id, "judge")
            _defer_if_backlogged(ctx, judge, "judge")
            context = (await ledger.judge_contexts(session, [request_id]))[request_id]
            unit = await _claim(ctx, session, Judgement, unit_id)
    if unit is None:
        return "not due"
    with _let_go_if_cancelled(ctx, Judgement, unit.id):
        await run_judgement(ctx["runtime"], ctx["writer"], ctx["stats"], judge, unit, context)
    return "called"


async def reconcile(ctx: dict[str, Any]) -> int:
    """Postgres is the truth: reclaim dead leases, re-enqueue open units of running jobs, finish finished jobs."""
    async with ctx["sessionmaker"]() as session:
        running = list((await session.execute(select(Job.id).where(Job.state == JobState.running))).scalars())
        queued = list((await session.execute(select(Job.id).where(Job.state == JobState.queued))).scalars())
    for job_id in queued:
        await dispatch(ctx, str(job_id))
    total = 0
    for job_id in running:
        async with ctx["sessionmaker"]() as session:
            await ledger.reclaim_leases(session, job_id)
        total += await enqueue_open(ctx, job_id)
        await finish_if_done(ctx, job_id)
    return total


def worker_settings(settings: Settings) -> dict[str, Any]:
    """arq's WorkerSettings for this deployment."""
    assert settings.redis_url, "DEFEATER_REDIS_URL is required for `defeater worker`"
    return {
        "functions": [dispatch, run_request_task, run_judgement_task],
        "cron_jobs": [cron(reconcile, second=set(range(0, 60, RECONCILE_EVERY_S)), run_at_startup=True)],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "max_jobs": settings.executor.worker_max_jobs,
        # a task may wait its turn under a slow rate limit for long; the call itself has its own timeout
        "job_timeout": JOB_TIMEOUT_S,
        "job_completion_wait": int(settings.providers.timeout_s + 30),
        "keep_result": 60,
        "max_tries": 1000,
        "handle_signals": True,
    }
