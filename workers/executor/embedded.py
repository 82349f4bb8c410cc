"""The in-process executor: leases a job's requests, runs them under per-config concurrency and per-key
limits, writes outcomes in batches, and finishes the job when every unit is final."""

from __future__ import annotations

import asyncio
import collections
import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.base import utcnow
from service.db.models import ConfigRole, Job, JobState, Judgement, Request, Response, UnitState
from service.jobs.webhook import notify_finished
from workers.executor import ledger
from workers.executor.writer import ResultWriter, UnitUpdate
from workers.tasks import Runtime, Stats, Target, reused_row, run_judgement, run_request

TICK_S = 0.05
IDLE_TICK_S = 0.5
EMPTY_CLAIM_PAUSE_S = 0.2


@dataclass(frozen=True)
class RunOutcome:
    """How a run of a job ended: ``completed``, ``failed``, ``cancelled``, ``paused`` (budget) or ``stopped``."""

    job_id: uuid.UUID
    state: str
    stats: Stats


@dataclass
class _Run:
    job_id: uuid.UUID
    lanes: list[_Lane]
    budget: float | None
    spent: float
    refreshed_at: float = field(default_factory=time.monotonic)


class _Lane:
    """One config's local queue of leased units and its in-flight count: target requests, or judgements.

    Judges get lanes of their own, so judging never waits behind target calls and the other way round.
    """

    def __init__(self, target: Target, judge: bool = False) -> None:
        self.target = target
        self.judge = judge
        self.model: ledger.Unit = Judgement if judge else Request
        self.queue: collections.deque[tuple[ledger.Claimed, Any]] = collections.deque()
        self.in_flight = 0
        # after a claim that found nothing, wait a little before asking the database again
        self.quiet_until = 0.0


def _done(lane: _Lane, tasks: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
    lane.in_flight -= 1
    tasks.discard(task)


class EmbeddedExecutor:
    """Runs jobs inside this process. ``stop()`` makes ``run_job`` return after in-flight calls finish."""

    def __init__(self, runtime: Runtime, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.runtime = runtime
        self.sessionmaker = sessionmaker
        self.holder = ledger.holder_id()
        self.stats = Stats()
        self._stopping = False
        self._prompts: dict[uuid.UUID, str] = {}
        self._use_cache = True

    def stop(self) -> None:
        self._stopping = True

    async def run_job(self, job_id: uuid.UUID, on_tick: Callable[[Stats], None] | None = None) -> RunOutcome:
        """Work on the job until every unit is final, it is cancelled or paused, or ``stop()`` is called."""
        run = await self._prepare(job_id)
        if isinstance(run, RunOutcome):
            return run
        settings = self.runtime.settings.executor
        judges = [lane.target.id for lane in run.lanes if lane.judge]
        writer = ResultWriter(
            self.sessionmaker, self.holder, settings.flush_interval_s, settings.flush_batch, judges,
            lease_s=settings.lease_s,
        )  # fmt: skip
        writer.start()
        tasks: set[asyncio.Task[None]] = set()
        ending: str | None = None
        try:
            ending = await self._loop(run, writer, tasks, on_tick)
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await writer.close()
            async with self.sessionmaker() as session:
                await ledger.release_leases(session, self.holder)
        return RunOutcome(job_id, await self._finish(job_id, ending), self.stats)

    async def _prepare(self, job_id: uuid.UUID) -> _Run | RunOutcome:
        """Reclaim dead leases, load the job's configs, and mark it running (unless it has ended)."""
        async with self.sessionmaker() as session:
            await ledger.reclaim_leases(session, job_id)
            configs = await ledger.job_configs(session, job_id, ConfigRole.target)
            judges = await ledger.job_configs(session, job_id, ConfigRole.judge)
            await self._judge_missing(session, job_id, [j.id for j in judges])
            state, budget, _ = await ledger.job_state(session, job_id)
            self._use_cache = await ledger.job_uses_cache(session, job_id)
            if state.final:
                return RunOutcome(job_id, state.value, self.stats)
            # started_at keeps the first start: a resumed job's throughput and ETA count from there
            await ledger.set_job(
                session,
                job_id,
                state=JobState.running,
                started_at=func.coalesce(Job.started_at, utcnow()),
                paused_reason=None,
            )
            spent = await ledger.spend(session, job_id)
        default = self.runtime.settings.providers.default_max_concurrency
        lanes = [_Lane(Target.of(c, default)) for c in configs] + [_Lane(Target.of(j, default), True) for j in judges]
        return _Run(job_id, lanes, budget, spent)

    async def _judge_missing(self, session: AsyncSession, job_id: uuid.UUID, judges: list[uuid.UUID]) -> None:
        """Give every stored answer its judgements (answers stored by an earlier run or an older version)."""
        writer = ResultWriter(self.sessionmaker, self.holder, 1.0, 1, judges)
        for judge in judges:
            for request_id in await ledger.unjudged_answers(session, job_id, judge):
                writer.add_pending_judgements(job_id, request_id, [judge])
        await writer.flush()

    async def _loop(
        self,
        run: _Run,
        writer: ResultWriter,
        tasks: set[asyncio.Task[None]],
        on_tick: Callable[[Stats], None] | None,
    ) -> str | None:
        """Claim, start and await units until the job is done; returns why the loop ended (None: stopped)."""
        ending: str | None = None
        last_check = 0.0
        while True:
            if ending is None and run.budget is not None and run.spent + self.stats.spend_usd >= run.budget:
                ending = await self._pause(run.job_id)
            if ending is None and time.monotonic() - last_check > IDLE_TICK_S:
                last_check = time.monotonic()
                ending = await self._check(run)
            if ending is not None or self._stopping:
                for lane in run.lanes:
                    lane.queue.clear()  # leased but not started: released at the end of the run
            else:
                await self._refill(run.job_id, run.lanes, writer)
                self._start(run.job_id, run.lanes, writer, tasks)
            if on_tick is not None:
                on_tick(self.stats)
            if tasks:
                await asyncio.wait(tasks, timeout=TICK_S, return_when=asyncio.FIRST_COMPLETED)
            elif any(lane.queue for lane in run.lanes):
                await asyncio.sleep(TICK_S)
            elif ending is not None or self._stopping:
                return ending
            else:
                await writer.flush()
                if await self._finished(run.job_id):
                    return "completed"
                await asyncio.sleep(IDLE_TICK_S)  # only backed-off units remain: wait for them to fall due

    async def _check(self, run: _Run) -> str | None:
        """Every idle tick: has the job been cancelled? And every ``limits_refresh_s``: read the configs' limits
        again, so that a limit changed while the job runs takes effect within seconds."""
        refresh = time.monotonic() - run.refreshed_at > self.runtime.settings.executor.limits_refresh_s
        async with self.sessionmaker() as session:
            state, _, _ = await ledger.job_state(session, run.job_id)
            if refresh:
                configs = await ledger.current_configs(session, (lane.target.id for lane in run.lanes))
        if refresh:
            run.refreshed_at = time.monotonic()
            default = self.runtime.settings.providers.default_max_concurrency
            for lane in run.lanes:
                lane.target = Target.of(configs[lane.target.id], default)
                self.runtime.key_limits(lane.target, "judge" if lane.judge else "target")  # reaches waiting calls
        return "cancelled" if state is JobState.cancelled else None

    async def _pause(self, job_id: uuid.UUID) -> str:
        """The budget is spent: stop starting calls (those in flight finish) and say why on the job."""
        async with self.sessionmaker() as session:
            await ledger.set_job(session, job_id, paused_reason="budget")
        return "paused"

    async def _refill(self, job_id: uuid.UUID, lanes: list[_Lane], writer: ResultWriter) -> None:
        """Lease more units for lanes whose queue runs low: up to twice the lane's concurrency in hand."""
        settings = self.runtime.settings.executor
        for lane in lanes:
            want = 2 * lane.target.concurrency - lane.in_flight - len(lane.queue)
            if want < max(1, lane.target.concurrency // 2) or time.monotonic() < lane.quiet_until:
                continue
            async with self.sessionmaker() as session:
                claimed = await ledger.claim(
                    session, lane.model, job_id, lane.target.id, min(want, settings.claim_batch), self.holder,
                    settings.lease_s,
                )  # fmt: skip
                if not claimed:
                    lane.quiet_until = time.monotonic() + EMPTY_CLAIM_PAUSE_S
                    continue
                writer.hold(lane.model, claimed)
                if lane.judge:
                    contexts = await ledger.judge_contexts(session, [u.ref_id for u in claimed])
                    lane.queue.extend((u, contexts[u.ref_id]) for u in claimed)
                    continue
                await self._load_prompts(session, claimed)
                hits = await self._cache_hits(session, lane.target, claimed)
            for unit in claimed:
                earlier = hits.get(unit.id)
                if earlier is not None:
                    writer.add(UnitUpdate(unit.id, UnitState.succeeded), reused_row(job_id, lane.target, unit, earlier))
                    self.stats.reused += 1
                    self.stats.succeeded += 1
                else:
                    lane.queue.append((unit, self._prompts[unit.ref_id]))

    async def _load_prompts(self, session: AsyncSession, claimed: list[ledger.Claimed]) -> None:
        missing = list({u.ref_id for u in claimed} - self._prompts.keys())
        if missing:
            self._prompts.update(await ledger.prompts(session, missing))

    async def _cache_hits(
        self, session: AsyncSession, target: Target, claimed: list[ledger.Claimed]
    ) -> dict[uuid.UUID, Response]:
        if not self._use_cache:
            return {}
        keys = {u.id: target.cache_key(self._prompts[u.ref_id], u.sample_index) for u in claimed}
        found = await ledger.cached_answers(session, list(set(keys.values())))
        return {unit_id: found[key] for unit_id, key in keys.items() if key in found}

    def _start(
        self, job_id: uuid.UUID, lanes: list[_Lane], writer: ResultWriter, tasks: set[asyncio.Task[None]]
    ) -> None:
        for lane in lanes:
            while lane.queue and lane.in_flight < lane.target.concurrency:
                unit, payload = lane.queue.popleft()
                lane.in_flight += 1
                if lane.judge:
                    work = run_judgement(self.runtime, writer, self.stats, lane.target, unit, payload)
                else:
                    work = run_request(self.runtime, writer, self.stats, job_id, lane.target, unit, payload)
                task = asyncio.create_task(work)
                tasks.add(task)
                task.add_done_callback(functools.partial(_done, lane, tasks))

    async def _finished(self, job_id: uuid.UUID) -> bool:
        async with self.sessionmaker() as session:
            return not await ledger.open_units(session, job_id)

    async def _finish(self, job_id: uuid.UUID, ending: str | None) -> str:
        """Record the job's end. Only a job whose every unit is final is completed (or failed, if nothing worked)."""
        async with self.sessionmaker() as session:
            if ending == "completed":
                state = JobState.completed if await ledger.any_succeeded(session, job_id) else JobState.failed
                if await ledger.finish_job(session, job_id, state):
                    await notify_finished(session, self.runtime.settings, job_id)
                return state.value
        return ending or "stopped"
