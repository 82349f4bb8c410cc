"""``defeater submit``, ``status``, ``wait``, ``cancel`` and ``gate``: the CLI as a client of a running service (CI).

Registered on the main CLI by ``register``. Exit codes: ``service/exit_codes.py``; the HTTP side: ``service/client.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from service import client as api
from service.cli_progress import PhaseBars, phases_text, print_job_problems
from service.client_file import load_submission
from service.errors import DefeaterError
from service.exit_codes import ExitCode, for_job
from service.gates import text

out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)
P = ParamSpec("P")
R = TypeVar("R")

JobArg = Annotated[str, typer.Argument(help="the job's id")]


def _clear_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Every expected failure becomes one clear message (and its fields) and exit code ``ERROR``, never a traceback."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except DefeaterError as exc:
            err.print(f"[bold red]error:[/] {exc.detail}", highlight=False)
            for problem in exc.errors[1:] if len(exc.errors) > 1 else []:
                err.print(f"  - {problem}", highlight=False)
            raise typer.Exit(ExitCode.ERROR) from None
        except OSError as exc:
            err.print(f"[bold red]error:[/] {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}")
            raise typer.Exit(ExitCode.ERROR) from None

    return wrapper


def submit_command(
    file: Annotated[Path, typer.Argument(help="a YAML or JSON file: dataset, models, judges, filters, gate")],
    wait: Annotated[bool, typer.Option(help="follow the job until it ends (as `defeater wait`)")] = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="the same key and file again return the same job instead of a new one")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the job id (for JOB=$(...))")] = False,
) -> None:
    """Start a job on the service from a submission file; prints the job id (and with --wait, follows it)."""
    submission = load_submission(file)
    with api.ServiceClient() as client:
        job = api.submit(client, submission, idempotency_key)
        if quiet:
            out.print(job["id"], highlight=False)
        else:
            out.print(f"job {job['id']}: {job['state']} ({job['request_count']} requests)", highlight=False)
        if wait:
            raise typer.Exit(_follow(client, str(job["id"])))


def status_command(job_id: JobArg) -> None:
    """The job's state and progress."""
    with api.ServiceClient() as client:
        status = client.call("GET", f"/v1/jobs/{job_id}")
    out.print(f"job {status['id']}: {api.progress_line(status)}", highlight=False)


def wait_command(job_id: JobArg) -> None:
    """Follow a job until it ends: a bar per phase on a terminal, plain lines in a log.

    Exit 0 when it completed clean, 4 with warnings, 1 failed or cancelled; Ctrl-C (130) stops following, not the
    job."""
    with api.ServiceClient() as client:
        raise typer.Exit(_follow(client, job_id))


def cancel_command(job_id: JobArg) -> None:
    """Cancel a job on the service: nothing more is dispatched; calls in flight finish and are kept."""
    with api.ServiceClient() as client:
        status = client.call("POST", f"/v1/jobs/{job_id}/cancel")
    out.print(f"job {status['id']} is {status['state']}: {phases_text(status['progress'])}", highlight=False)


def _follow(client: api.ServiceClient, job_id: str) -> int:
    """Follow the job's events to its end; print its final state, error and warnings; return the exit code."""
    try:
        if out.is_terminal:
            _follow_bars(client, job_id)
        else:
            for name, data in client.events(job_id):
                if name == "progress":
                    out.print(api.progress_line(data["status"]), highlight=False)
    except KeyboardInterrupt:
        err.print(
            f"stopped following job {job_id}: it goes on on the service (`defeater wait {job_id}` follows it again, "
            f"`defeater cancel {job_id}` stops it)",
            highlight=False,
        )
        return ExitCode.INTERRUPTED
    status = client.call("GET", f"/v1/jobs/{job_id}")
    out.print(f"job {job_id} {status['state']}", highlight=False)
    warnings = status.get("warnings") or []
    print_job_problems(err, status.get("error"), warnings)
    return for_job(status["state"], warnings)


def _follow_bars(client: api.ServiceClient, job_id: str) -> None:
    line = [""]
    with PhaseBars(out, lambda: line[0]) as bars:
        for name, data in client.events(job_id):
            if name == "progress":
                status = data["status"]
                line[0] = api.figures_line(status)
                bars.update(status["progress"])


def gate_command(
    job_id: JobArg,
    junit: Annotated[Path | None, typer.Option(help="write the checks as JUnit XML here")] = None,
    summary: Annotated[Path | None, typer.Option(help="write a Markdown summary here (for a PR comment)")] = None,
) -> None:
    """The job's gate verdict. Exit 0: pass, 1: fail, 2: inconclusive, 5: error (no verdict)."""
    with api.ServiceClient() as client:
        gate = client.call("GET", f"/v1/jobs/{job_id}/gate")
    api.write_reports(job_id, gate, junit, summary)
    _print_gate(gate)
    raise typer.Exit(api.EXIT.get(gate["verdict"], ExitCode.ERROR))


def _print_gate(gate: dict[str, Any]) -> None:
    title = f"gate: {gate['verdict']}" + ("" if gate.get("final", True) else f" (so far: the job is {gate['state']})")
    table = Table("config", "check", "figure", "95% CI", "against", "p", "verdict", "why", title=title)
    for config in gate["configs"]:
        for check in config["checks"]:
            table.add_row(
                str(config.get("name") or config["model_config_id"]),
                text.check_name(check),
                text.number(check.get("figure")),
                text.interval(check.get("ci95")),
                text.against(check),
                text.number(check.get("p_value")),
                check["verdict"],
                text.why(check),
            )
    out.print(table)
    out.print(text.P_VALUE_LEGEND, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the client commands to the main CLI."""
    app.command("submit")(_clear_errors(submit_command))
    app.command("status")(_clear_errors(status_command))
    app.command("wait")(_clear_errors(wait_command))
    app.command("cancel")(_clear_errors(cancel_command))
    app.command("gate")(_clear_errors(gate_command))
