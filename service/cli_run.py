"""``defeater run``: create (or resume) a job and execute it embedded, with a live progress display; and
``defeater retry``: run a finished job's failed units again (on the service, or embedded on the local ledger)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import client as api
from service.cli import (
    AuthorityOpt,
    BudgetOpt,
    CaseIdOpt,
    ConfigOpt,
    DatasetOpt,
    DualUseOpt,
    FamilyOpt,
    FormatOpt,
    JobFlags,
    JudgeOpt,
    LimitOpt,
    ModelOpt,
    SamplesOpt,
    app,
    command,
    create_job_from_flags,
    err,
    local_db,
    out,
    print_status,
)
from service.cli_client import _follow
from service.cli_progress import PhaseBars, phases_text, print_job_problems
from service.datasets.service import STARTER_NAME
from service.errors import DefeaterError, FieldError, ValidationFailed
from service.exit_codes import ExitCode, for_job
from service.jobs import service as jobs
from service.jobs.schemas import JobRead, JobRetry, RetryPhase
from service.results.display import print_results
from service.results.schemas import Results
from service.results.service import results
from service.settings import Settings
from workers.executor.embedded import EmbeddedExecutor, RunOutcome
from workers.tasks import Runtime, Stats

PLAIN_EVERY_S = 5.0
# how often the display reads the job's counts from the ledger
POLL_S = 1.0


@app.command("run")
@command
async def run_command(
    model: ModelOpt = [],  # noqa: B006
    config: ConfigOpt = [],  # noqa: B006
    judge: JudgeOpt = [],  # noqa: B006
    dataset: DatasetOpt = STARTER_NAME,
    family: FamilyOpt = [],  # noqa: B006
    authority: AuthorityOpt = [],  # noqa: B006
    case_id: CaseIdOpt = [],  # noqa: B006
    dual_use: DualUseOpt = None,
    limit: LimitOpt = None,
    samples: SamplesOpt = 1,
    budget: BudgetOpt = None,
    resume: Annotated[
        str | None, typer.Option(help="continue this job (after a crash, Ctrl-C or a budget stop)")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="pay again for calls made before")] = False,
    output: FormatOpt = "table",
) -> None:
    """Run a job embedded, against the real providers (keys from the environment): Ctrl-C stops cleanly."""
    settings = Settings()
    flags = JobFlags(
        model, config, judge, dataset, family, authority, dual_use, limit, samples, budget, not no_cache, case_id
    )
    async with local_db(settings) as sessionmaker:
        async with sessionmaker() as session:
            status = await (
                _resume(session, resume, budget) if resume else create_job_from_flags(session, flags, settings)
            )
        code = await execute(sessionmaker, settings, status, output)
    raise typer.Exit(code)


async def execute(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, status: JobRead, output: str
) -> int:
    """Run the job in this process with a live display (Ctrl-C stops it cleanly), print how it ended and its
    results, and return the exit code: where ``defeater run`` and ``defeater retry`` on the local ledger end."""
    if output != "json":
        out.print(f"job [bold]{status.id}[/]: {status.request_count} requests ({status.case_count} cases)")
    runtime = Runtime.build(settings)
    executor = EmbeddedExecutor(runtime, sessionmaker)
    try:
        async with _reporter(sessionmaker, status, runtime, output != "json") as live:
            with _interrupts(executor):
                outcome = await executor.run_job(status.id, on_tick=live.tick)
            final, figures = await _final(sessionmaker, status.id)
            live.finish(final)
    finally:
        await runtime.adapters.aclose()
    shown = _shown_state(outcome, final)
    _summary(outcome, final, output, shown)
    if output != "json" and final.progress.judgements.succeeded:
        print_results(out, figures.model_copy(update={"state": shown}) if shown else figures)
    # last, where a terminal or a CI log shows it: why the job failed, and what it lacks
    print_job_problems(err, final.error, final.warnings)
    return for_job(outcome.state, final.warnings)


@app.command("retry")
@command
async def retry_command(
    job: Annotated[str, typer.Argument(help="the job's id")],
    reason: Annotated[
        list[str],
        typer.Option(help="only units that failed for this reason (as the job's errors show it, or its first word)"),
    ] = [],  # noqa: B006
    phase: Annotated[RetryPhase | None, typer.Option(help="only target requests, or only judgements")] = None,
    wait: Annotated[
        bool, typer.Option(help="with DEFEATER_URL: follow the job until it ends (as `defeater wait`)")
    ] = False,
    output: FormatOpt = "table",
) -> None:
    """Run a finished job's failed units again (all, or by --reason and --phase); nothing that succeeded runs again.

    With DEFEATER_URL set the service runs them; otherwise they run here, on the local ledger, as with
    `defeater run --resume`."""
    job_id, body = _job_id(job, "JOB"), JobRetry(reasons=reason or None, phase=phase)
    if os.environ.get("DEFEATER_URL"):
        raise typer.Exit(_retry_on_service(str(job_id), body, wait, output))
    settings = Settings()
    async with local_db(settings, create=False) as sessionmaker:
        async with sessionmaker() as session:
            retried = await jobs.retry_job(session, job_id, body)
            await session.commit()
            status = await jobs.read_job(session, retried.job)
        if output != "json":
            out.print(_retried(status.id, retried.units.requests, retried.units.judgements), highlight=False)
        code = await execute(sessionmaker, settings, status, output)
    raise typer.Exit(code)


def _retry_on_service(job_id: str, body: JobRetry, wait: bool, output: str) -> int:
    """POST the retry to the service; with ``wait``, follow the job as `defeater wait` does."""
    with api.ServiceClient() as client:
        status = client.call("POST", f"/v1/jobs/{job_id}/retry", json=body.model_dump(mode="json", exclude_none=True))
        if output == "json" and not wait:
            out.print_json(data=status)
        else:
            out.print(_retried(job_id, status["retried"]["requests"], status["retried"]["judgements"]), highlight=False)
        return _follow(client, job_id) if wait else ExitCode.OK


def _retried(job_id: object, requests: int, judgements: int) -> str:
    return f"job {job_id}: {requests} failed request(s) and {judgements} failed judgement(s) back to pending; running"


def _job_id(ref: str, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(ref)
    except ValueError:
        raise ValidationFailed(f"{name} {ref!r} is not a job id", [FieldError(name, "not a UUID")]) from None


async def _final(sessionmaker: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> tuple[JobRead, Results]:
    """The job's status and results as the run leaves them."""
    async with sessionmaker() as session:
        job = await jobs.get_job(session, job_id)
        return await jobs.read_job(session, job), await results(session, job)


async def _resume(session: AsyncSession, job_ref: str, budget: float | None) -> JobRead:
    job_id = _job_id(job_ref, "--resume")
    job = await jobs.get_job(session, job_id)
    if budget is not None:
        job.budget_usd = budget
        job.paused_reason = None
        await session.commit()
    status = await jobs.read_job(session, job)
    if status.state.final:
        raise DefeaterError(f"job {job_id} is already {status.state.value}; nothing to resume")
    return status


@contextmanager
def _interrupts(executor: EmbeddedExecutor) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) stops dispatching; calls in flight finish and are written. A second Ctrl-C aborts."""
    loop = asyncio.get_running_loop()
    hits = 0

    def on_signal() -> None:
        nonlocal hits
        hits += 1
        if hits > 1:
            raise KeyboardInterrupt
        err.print("stopping: waiting for calls in flight (Ctrl-C again to abort)")
        executor.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@dataclass
class LiveRun:
    """What a run shows while it works: the job's counts in the ledger (read every ``POLL_S``) and this run's calls
    (``Stats``, every tick of the executor). ``finish`` shows the job's final status, the one the summary prints."""

    status: JobRead
    runtime: Runtime
    # the job's spend before this run: the run's own spend is added to it, so the bar's figure is the ledger's
    spent_before: float = 0.0
    stats: Stats = field(default_factory=Stats)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    final: bool = False

    def tick(self, stats: Stats) -> None:
        """The executor's tick: this run's live counters."""
        self.stats = stats

    def finish(self, status: JobRead) -> None:
        """The run is over: from now on the figures are the ledger's final ones, and calls/s stays as it ended."""
        self.status, self.ended, self.final = status, time.monotonic(), True

    def spend(self) -> float:
        return self.status.cost_usd if self.final else self.spent_before + self.stats.spend_usd

    def figures(self) -> str:
        """Calls really in flight (those waiting for a rate slot apart), retries, calls/s, cache hits, ETA, spend."""
        s = self.stats
        waiting = len(self.runtime.waiting) if not self.final else 0
        in_flight = max(s.in_flight - waiting, 0)
        parts = [f"in flight {in_flight}" + (f" (+{waiting} waiting for a rate slot)" if waiting else "")]
        if s.retries:
            parts.append(f"{s.retries} retries")
        elapsed = max((self.ended or time.monotonic()) - self.started, 1e-6)
        parts.append(f"{s.calls / elapsed:.1f} calls/s" if s.calls else "no calls")
        if s.reused:
            parts.append(f"{s.reused} answers from cache")
        if self.status.eta_seconds is not None and not self.final:
            parts.append(f"ETA {self.status.eta_seconds:.0f} s")
        parts.append(f"${self.spend():.4f}")
        return ", ".join(parts)

    def line(self) -> str:
        """Both phases and the figures, for a log."""
        return f"{phases_text(self.status.progress.model_dump())}; {self.figures()}"


@asynccontextmanager
async def _reporter(
    sessionmaker: async_sessionmaker[AsyncSession], status: JobRead, runtime: Runtime, visible: bool
) -> AsyncIterator[LiveRun]:
    """Live progress of both phases: bars on a terminal, a plain line every few seconds (and at the end) otherwise.
    Call ``finish`` on what it yields with the job's final status."""
    live = LiveRun(status, runtime, spent_before=status.cost_usd)
    if not visible:
        yield live
        return
    bars = PhaseBars(out, live.figures) if out.is_terminal else None
    printed = [time.monotonic()]

    def show() -> None:
        if bars is not None:
            bars.update(live.status.progress.model_dump())
        elif live.final or time.monotonic() - printed[0] >= PLAIN_EVERY_S:
            printed[0] = time.monotonic()
            out.print(live.line(), highlight=False)

    async def poll() -> None:
        while True:
            await asyncio.sleep(POLL_S)
            async with sessionmaker() as session:
                live.status = await jobs.read_job(session, await jobs.get_job(session, status.id))
            show()

    with bars if bars is not None else nullcontext():
        if bars is not None:
            show()  # the counts the job starts from, not a bar without a total until the first read
        poller = asyncio.create_task(poll())
        try:
            yield live
        finally:
            poller.cancel()
            with suppress(asyncio.CancelledError):
                await poller
            if live.final:
                show()


def _shown_state(outcome: RunOutcome, status: JobRead) -> str | None:
    """What to call the job when a run stopped it (Ctrl-C) or its budget paused it: the ledger keeps such a job
    ``running`` so that ``--resume`` can continue it, but nothing runs it any more. None: the ledger's state."""
    if outcome.state in ("stopped", "paused") and not status.state.final:
        return f"{outcome.state} (resumable)"
    return None


def _summary(outcome: RunOutcome, status: JobRead, output: str, shown: str | None) -> None:
    """The job as the run leaves it (``shown`` in place of the ledger's state)."""
    if output == "json":
        out.print_json(status.model_dump_json())
    else:
        print_status(status, state=shown)
        s = outcome.stats
        out.print(
            f"run ended: {outcome.state}; {s.calls} calls, {s.reused} answers from cache, {s.rate_limited} rate-limited"
        )
        for reason, n in sorted(status.errors_by_kind.items()):
            out.print(f"  failed: {reason}: {n}")
        if outcome.state in ("paused", "stopped"):
            resume = f"continue with: defeater run --resume {status.id}"
            out.print(resume + (" --budget-usd N" if outcome.state == "paused" else ""))
