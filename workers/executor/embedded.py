"""The executor: leases a job's units in batches, runs them under per-config concurrency and per-key limits,
writes outcomes in batches, and finishes the job when every unit is final.

It runs embedded (``defeater run``, ``defeater demo``, the API without Redis; local limits) and in every
``defeater worker`` (fleet-wide limits in Redis), where several processes work on one job: each leases its own
units with ``FOR UPDATE SKIP LOCKED``, so no unit is run twice, and the job ends on whichever sees it done first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.base import utcnow
from service.db.models import ConfigRole, Job, JobState, Judgement, ModelConfig, Request, Response, UnitState
from service.db.session import is_disconnect
from service.jobs.webhook import notify_finished
from workers.executor import ledger
from workers.executor.writer import ResultWriter, UnitUpdate
from workers.providers.errors import MISSING_KEY
from workers.tasks import Runtime, Stats, Target, reused_row, run_judgement, run_request

# while calls are in flight the loop looks again when one ends, when a lane may lease again, or for the job's check;
# never sooner than this after the last look
TICK_S = 0.05
# with nothing in hand: how often the job's state is checked and whether it is done
IDLE_TICK_S = 0.5
# after a claim that found nothing, a lane waits this long before asking the database again, doubling to the cap
QUIET_FIRST_S = 0.2
QUIET_CAP_S = 1.0
# after a claim that found fewer units than asked (they are arriving, e.g. answers to judge), a lane waits this long
# before asking again, so that it leases them in batches rather than a query per unit
PARTIAL_CLAIM_PAUSE_S = 0.5
# with nothing in hand and units still open (leased by others), dead holders' leases are looked for this often
RECLAIM_EVERY_S = 5.0
# the database went away (a restart, a failover): calls in flight go on, and the loop tries again after this long
DATABASE_RETRY_S = 1.0

log = logging.getLogger("defeater.executor")


@dataclass(frozen=True)
class RunOutcome:
    """How a run of a job ended: ``completed``, ``failed``, ``cancelled``, ``paused`` (budget) or ``stopped``."""

    job_id: uuid.UUID
    state: str
    stats: Stats


@dataclass
class _Run:
    """One job being worked on by this executor."""

    job_id: uuid.UUID
    lanes: list[_Lane]
    budget: float | None
    # the job's spend in the ledger when last read, and this run's own spend at that moment
    spent: float
    use_cache: bool
    stats: Stats = field(default_factory=Stats)
    spent_seen_at: float = 0.0
    checked_at: float = field(default_factory=time.monotonic)
    refreshed_at: float = field(default_factory=time.monotonic)
    reclaimed_at: float = field(default_factory=time.monotonic)
    prompts: dict[uuid.UUID, str] = field(default_factory=dict)
    # the database went away since the run last had nothing in hand: it may hold leases it does not know of
    unsure: bool = False
    # why the run is winding down (cancelled, paused, ended elsewhere), once known
    ending: str | None = None
    # set when a call ends, so that the loop starts the next one at once
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def over_budget(self) -> bool:
        """Spent at least the budget: the ledger's figure when last read, plus what this run spent since."""
        if self.budget is None:
            return False
        return self.spent + self.stats.spend_usd - self.spent_seen_at >= self.budget


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
        # after claims that found nothing, wait a little (longer each time) before asking the database again
        self.quiet_until = 0.0
        self.quiet_s = 0.0

    def want(self) -> int:
        """How many more units the lane would hold: up to twice its concurrency in hand."""
        return 2 * self.target.concurrency - self.in_flight - len(self.queue)

    def batch_floor(self) -> int:
        """The lane leases again once it wants at least this many (half its concurrency), so in batches."""
        return max(1, self.target.concurrency // 2)

    @property
    def pool(self) -> str:
        return "judge" if self.judge else "target"

    def found_nothing(self) -> None:
        self.quiet_s = min(self.quiet_s * 2, QUIET_CAP_S) if self.quiet_s else QUIET_FIRST_S
        self.quiet_until = time.monotonic() + self.quiet_s

    def found_some(self, all_asked: bool) -> None:
        self.quiet_s = 0.0
        if not all_asked:
            self.quiet_until = time.monotonic() + PARTIAL_CLAIM_PAUSE_S


def _done(lane: _Lane, tasks: set[asyncio.Task[None]], wake: asyncio.Event, task: asyncio.Task[None]) -> None:
    lane.in_flight -= 1
    tasks.discard(task)
    wake.set()


class EmbeddedExecutor:
    """Runs jobs inside this process. ``stop()`` makes ``run_job`` return after in-flight calls finish;
    ``abort()`` cuts the calls in flight short (their units go back to pending when the run ends)."""

    def __init__(self, runtime: Runtime, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.runtime = runtime
        self.sessionmaker = sessionmaker
        self.holder = ledger.holder_id()
        self._stopping = False
        self._calls: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        self._stopping = True

    def abort(self) -> None:
        self._stopping = True
        for task in list(self._calls):
            task.cancel()

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
        ending: str | None = None
        try:
            ending = await self._loop(run, writer, on_tick)
        finally:
            if self._calls:
                await asyncio.gather(*self._calls, return_exceptions=True)
            await writer.close()
            async with self.sessionmaker() as session:
                await ledger.release_leases(session, self.holder)
        return RunOutcome(job_id, await self._finish(run, ending), run.stats)

    async def _prepare(self, job_id: uuid.UUID) -> _Run | RunOutcome:
        """Reclaim dead leases, load the job's configs, check that this process can call them, and mark the job
        running (unless it has ended, or ends here because a config cannot be called)."""
        async with self.sessionmaker() as session:
            await ledger.reclaim_leases(session, job_id)
            configs = await ledger.job_configs(session, job_id, ConfigRole.target)
            judges = await ledger.job_configs(session, job_id, ConfigRole.judge)
            await self._judge_missing(session, job_id, [j.id for j in judges])
            state, budget, _ = await ledger.job_state(session, job_id)
            use_cache = await ledger.job_uses_cache(session, job_id)
            if state.final:
                return RunOutcome(job_id, state.value, Stats())
            if await self._cannot_call(session, job_id, configs, judges):
                state, _, _ = await ledger.job_state(session, job_id)
                return RunOutcome(job_id, state.value, Stats())
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
        return _Run(job_id, lanes, budget, spent, use_cache)

    async def _cannot_call(
        self, session: AsyncSession, job_id: uuid.UUID, configs: list[ModelConfig], judges: list[ModelConfig]
    ) -> bool:
        """Keys before money: when a config the job would still call cannot be called from this process (its key is
        not in the environment, its host is not allowed), the job fails now, before any call is paid, naming each
        such config and its variable. True when the job cannot run here."""
        needed = await ledger.configs_to_call(session, job_id)
        problems = [
            problem
            for role, group in (("model", configs), ("judge", judges))
            for config in group
            if config.id in needed and (problem := self._problem(role, config)) is not None
        ]
        if not problems:
            return False
        error = "; ".join(line for _, line in problems)
        log.info("job %s cannot run here: %s", job_id, error)  # the job's error says it to every client
        if await ledger.fail_job(session, job_id, problems[0][0], error):
            await notify_finished(session, self.runtime.settings, job_id)
        return True

    def _problem(self, role: str, config: ModelConfig) -> tuple[str, str] | None:
        """(reason, one line naming the config) when this process cannot call the config, else None."""
        problem = self.runtime.adapters.unusable(Target.of(config, 1).endpoint)
        if problem is None:
            return None
        if problem.reason == MISSING_KEY:
            return problem.reason, f'{role} "{config.name}" needs {config.api_key_env}, which is not set'
        return problem.reason, f'{role} "{config.name}": {problem.message}'

    async def _judge_missing(self, session: AsyncSession, job_id: uuid.UUID, judges: list[uuid.UUID]) -> None:
        """Give every stored answer its judgements (answers stored by an earlier run or an older version)."""
        writer = ResultWriter(self.sessionmaker, self.holder, 1.0, 1, judges)
        for judge in judges:
            for request_id in await ledger.unjudged_answers(session, job_id, judge):
                writer.add_pending_judgements(job_id, request_id, [judge])
        await writer.flush()

    async def _loop(self, run: _Run, writer: ResultWriter, on_tick: Callable[[Stats], None] | None) -> str | None:
        """Claim, start and await units until the job is done; returns why the loop ended (None: stopped)."""
        while True:
            try:
                ending = await self._tick(run, writer)
            except Exception as exc:
                if not is_disconnect(exc):
                    raise
                log.warning("job %s waits for the database (%s)", run.job_id, type(exc).__name__)
                run.unsure = True
                await asyncio.sleep(DATABASE_RETRY_S)
                continue
            if on_tick is not None:
                on_tick(run.stats)
            if ending is not None:
                return None if ending == "stopped" else ending

    async def _tick(self, run: _Run, writer: ResultWriter) -> str | None:
        """One round: check the job, lease and start what the lanes can take, then wait for a call to end (or for
        the next look). Returns why the loop should end, or None to go on."""
        if run.ending is None and run.over_budget():
            run.ending = await self._pause(run.job_id)
        elif run.ending is None and time.monotonic() - run.checked_at > IDLE_TICK_S:
            run.ending = await self._check(run)
        ending = run.ending
        if ending is not None or self._stopping:
            for lane in run.lanes:
                lane.queue.clear()  # leased but not started: released at the end of the run
            for task in self._calls & self.runtime.waiting:
                task.cancel()  # still waiting for a rate slot: nothing was sent, released likewise
        else:
            await self._refill(run, writer)
            self._start(run, writer)
        if self._calls:
            await _wait(run.wake, self._next_look(run))
            return None
        if any(lane.queue for lane in run.lanes):
            await asyncio.sleep(TICK_S)
            return None
        if ending is not None or self._stopping:
            return ending or "stopped"
        if await writer.flush() and run.unsure:
            # nothing queued, in flight or left to write, yet the database went away since the last such moment: a
            # lease taken as it went (its answer lost, or what its call needs not read) is one nobody runs; so every
            # lease this run holds on the job is given back
            for model in (Request, Judgement):
                writer.let_go_all(model)
            async with self.sessionmaker() as session:
                await ledger.release_leases(session, self.holder, run.job_id)
            run.unsure = False
        if await self._finished(run):
            return "completed"
        await _wait(run.wake, IDLE_TICK_S)  # backed-off units not due yet, or units other processes hold
        return None

    async def _check(self, run: _Run) -> str | None:
        """Every idle tick: has the job been cancelled (or ended elsewhere)? And every ``limits_refresh_s``: read
        the configs' limits and the job's spend again, so that a changed limit takes effect within seconds."""
        run.checked_at = time.monotonic()
        refresh = run.checked_at - run.refreshed_at > self.runtime.settings.executor.limits_refresh_s
        async with self.sessionmaker() as session:
            state, _, _ = await ledger.job_state(session, run.job_id)
            if refresh:
                configs = await ledger.current_configs(session, (lane.target.id for lane in run.lanes))
                if run.budget is not None:
                    run.spent, run.spent_seen_at = await ledger.spend(session, run.job_id), run.stats.spend_usd
        if refresh:
            run.refreshed_at = time.monotonic()
            default = self.runtime.settings.providers.default_max_concurrency
            for lane in run.lanes:
                lane.target = Target.of(configs[lane.target.id], default)
                self.runtime.key_limits(lane.target, lane.pool)  # reaches waiting calls
        if state is JobState.cancelled:
            return "cancelled"
        return None if state is JobState.running else "stopped"

    async def _pause(self, job_id: uuid.UUID) -> str:
        """The budget is spent: stop starting calls (those in flight finish) and say why on the job."""
        async with self.sessionmaker() as session:
            await ledger.set_job(session, job_id, paused_reason="budget")
        return "paused"

    def _next_look(self, run: _Run) -> float:
        """Seconds until the loop has something to do that no ending call will wake it for: the job's check, or a
        lane that wants units and may ask for them again."""
        now = time.monotonic()
        due = run.checked_at + IDLE_TICK_S
        for lane in run.lanes:
            if lane.want() >= lane.batch_floor():
                due = min(due, lane.quiet_until)
        return min(max(due - now, TICK_S), IDLE_TICK_S)

    async def _refill(self, run: _Run, writer: ResultWriter) -> None:
        """Lease more units for lanes whose queue runs low: up to twice the lane's concurrency in hand."""
        settings = self.runtime.settings.executor
        for lane in run.lanes:
            want = lane.want()
            if want < lane.batch_floor() or time.monotonic() < lane.quiet_until:
                continue
            asked = min(want, settings.claim_batch)
            async with self.sessionmaker() as session:
                claimed = await ledger.claim(
                    session, lane.model, run.job_id, lane.target.id, asked, self.holder, settings.lease_s
                )
                if not claimed:
                    lane.found_nothing()
                    continue
                lane.found_some(len(claimed) == asked)
                # if the database goes away before what their calls need is read, these units are leased but not
                # held (their leases are not renewed): the run gives them back once it has nothing in hand
                if lane.judge:
                    contexts = await ledger.judge_contexts(session, [u.ref_id for u in claimed])
                else:
                    await self._load_prompts(session, run, claimed)
                    hits = await self._cache_hits(session, run, lane.target, claimed)
            writer.hold(lane.model, claimed)
            if lane.judge:
                lane.queue.extend((u, contexts[u.ref_id]) for u in claimed)
                continue
            for unit in claimed:
                earlier = hits.get(unit.id)
                if earlier is not None:
                    row = reused_row(run.job_id, lane.target, unit, earlier)
                    writer.add(UnitUpdate(unit.id, UnitState.succeeded), row)
                    run.stats.reused += 1
                    run.stats.succeeded += 1
                else:
                    lane.queue.append((unit, run.prompts[unit.ref_id]))

    async def _load_prompts(self, session: AsyncSession, run: _Run, claimed: list[ledger.Claimed]) -> None:
        missing = list({u.ref_id for u in claimed} - run.prompts.keys())
        if missing:
            run.prompts.update(await ledger.prompts(session, missing))

    async def _cache_hits(
        self, session: AsyncSession, run: _Run, target: Target, claimed: list[ledger.Claimed]
    ) -> dict[uuid.UUID, Response]:
        if not run.use_cache:
            return {}
        keys = {u.id: target.cache_key(run.prompts[u.ref_id], u.sample_index) for u in claimed}
        found = await ledger.cached_answers(session, list(set(keys.values())))
        return {unit_id: found[key] for unit_id, key in keys.items() if key in found}

    def _start(self, run: _Run, writer: ResultWriter) -> None:
        for lane in run.lanes:
            while lane.queue and lane.in_flight < lane.target.concurrency:
                unit, payload = lane.queue.popleft()
                lane.in_flight += 1
                if lane.judge:
                    work = run_judgement(self.runtime, writer, run.stats, lane.target, unit, payload)
                else:
                    work = run_request(self.runtime, writer, run.stats, run.job_id, lane.target, unit, payload)
                task = asyncio.create_task(work)
                self._calls.add(task)
                task.add_done_callback(functools.partial(_done, lane, self._calls, run.wake))

    async def _finished(self, run: _Run) -> bool:
        """No unit of the job is open. Units still open elsewhere: leases of dead processes are taken back."""
        async with self.sessionmaker() as session:
            if not await ledger.open_units(session, run.job_id):
                return True
            if time.monotonic() - run.reclaimed_at > RECLAIM_EVERY_S:
                run.reclaimed_at = time.monotonic()
                await ledger.reclaim_leases(session, run.job_id)
        return False

    async def _finish(self, run: _Run, ending: str | None) -> str:
        """Record the job's end. Only a job whose every unit is final is completed (or failed, if nothing worked)."""
        async with self.sessionmaker() as session:
            if ending == "completed":
                state, ended_here = await ledger.end_job(session, run.job_id)
                if ended_here:
                    await notify_finished(session, self.runtime.settings, run.job_id)
                return state.value
        return ending or "stopped"


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until ``event`` is set or ``timeout_s`` has passed, then clear it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    event.clear()
