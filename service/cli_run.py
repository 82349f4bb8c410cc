"""``defeater run``: create (or resume) a job and execute it embedded, with a live progress display; and
``defeater retry``: run a finished job's failed units again (on the service, or embedded on the local ledger)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
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
from service.datasets.service import STARTER_NAME
from service.errors import DefeaterError, FieldError, ValidationFailed
from service.exit_codes import ExitCode
from service.jobs import service as jobs
from service.jobs.schemas import JobRead, JobRetry, RetryPhase
from service.results.display import print_results
from service.results.service import results
from service.settings import Settings
from workers.executor.embedded import EmbeddedExecutor, RunOutcome
from workers.tasks import Runtime, Stats

EXIT_CODES = {"completed": 0, "failed": 1, "cancelled": 1, "paused": 3, "stopped": 130}
PLAIN_EVERY_S = 5.0


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
    done_before = status.progress.requests.succeeded + status.progress.requests.failed
    try:
        with _interrupts(executor), _reporter(status.request_count, done_before, output != "json") as tick:
            outcome = await executor.run_job(status.id, on_tick=tick)
    finally:
        await runtime.adapters.aclose()
    async with sessionmaker() as session:
        job = await jobs.get_job(session, status.id)
        final = await jobs.read_job(session, job)
        figures = await results(session, job)
    _summary(outcome, final, output)
    if output != "json":
        print_results(out, figures)
    return EXIT_CODES.get(outcome.state, 1)


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
    """Run a failed or completed job's failed units again (all, or by --reason and --phase); nothing that succeeded
    is called again. With DEFEATER_URL set the service runs them; otherwise they run here, on the local ledger, as
    with `defeater run --resume`."""
    job_id, body = _job_id(job, "JOB"), JobRetry(reasons=reason or None, phase=phase)
    if os.environ.get("DEFEATER_URL"):
        raise typer.Exit(_retry_on_service(str(job_id), body, wait, output))
    settings = Settings()
    async with local_db(settings) as sessionmaker:
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


@contextmanager
def _reporter(total: int, done_before: int, visible: bool) -> Iterator[Callable[[Stats], None]]:
    """A live progress bar on a terminal, a plain line every few seconds otherwise."""
    started = time.monotonic()

    def figures(stats: Stats) -> str:
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = (stats.succeeded + stats.failed - stats.reused) / elapsed
        left = total - done_before - stats.succeeded - stats.failed
        eta = f"{left / rate:.0f}s" if rate > 0 else "-"
        return (
            f"in flight {stats.in_flight}  retrying {stats.retries}  failed {stats.failed}  "
            f"{rate:.1f} calls/s  ETA {eta}  ${stats.spend_usd:.4f}"
        )

    if not visible:
        yield lambda stats: None
        return
    if not out.is_terminal:
        last = [0.0]

        def plain(stats: Stats) -> None:
            if time.monotonic() - last[0] >= PLAIN_EVERY_S:
                last[0] = time.monotonic()
                done = done_before + stats.succeeded + stats.failed
                out.print(f"{done}/{total} done  {figures(stats)}", highlight=False)

        yield plain
        return
    columns = (BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=False) as progress:
        task = progress.add_task("", total=total, completed=done_before)

        def live(stats: Stats) -> None:
            done = done_before + stats.succeeded + stats.failed
            progress.update(task, completed=done, description=figures(stats))

        yield live


def _summary(outcome: RunOutcome, status: JobRead, output: str) -> None:
    if output == "json":
        out.print_json(status.model_dump_json())
        return
    print_status(status)
    s = outcome.stats
    out.print(f"run ended: {outcome.state}; {s.calls} calls, {s.reused} answers reused, {s.rate_limited} rate-limited")
    for reason, n in sorted(status.errors_by_kind.items()):
        out.print(f"  failed: {reason}: {n}")
    if outcome.state in ("paused", "stopped"):
        out.print(
            f"continue with: defeater run --resume {status.id}" + (" --budget N" if outcome.state == "paused" else "")
        )
