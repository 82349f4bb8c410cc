"""``defeater submit``, ``status``, ``wait`` and ``gate``: the CLI as a client of a running service (for CI).

Registered on the main CLI by ``register``. See ``service/client.py`` for the exit codes and the HTTP side.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service import client as api
from service.client_file import load_submission
from service.errors import DefeaterError
from service.exit_codes import ExitCode

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
    """Follow a job until it ends: a progress bar on a terminal, plain lines in a log. Exit 0 when it completed."""
    with api.ServiceClient() as client:
        raise typer.Exit(_follow(client, job_id))


def _follow(client: api.ServiceClient, job_id: str) -> int:
    state = "unknown"
    if sys.stdout.isatty():
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=out) as bar:
            task = bar.add_task("requests", total=None)
            for name, data in client.events(job_id):
                if name == "progress":
                    requests = data["status"]["progress"]["requests"]
                    bar.update(task, total=requests["total"], completed=requests["succeeded"] + requests["failed"],
                               description=api.progress_line(data["status"]))  # fmt: skip
                elif name == "end":
                    state = data["state"]
    else:
        for name, data in client.events(job_id):
            if name == "progress":
                out.print(api.progress_line(data["status"]), highlight=False)
            elif name == "end":
                state = data["state"]
    out.print(f"job {job_id} {state}", highlight=False)
    return 0 if state == "completed" else 1


def gate_command(
    job_id: JobArg,
    junit: Annotated[Path | None, typer.Option(help="write the checks as JUnit XML here")] = None,
    summary: Annotated[Path | None, typer.Option(help="write a Markdown summary here (for a PR comment)")] = None,
) -> None:
    """The job's gate verdict. Exit 0: pass, 1: fail, 2: inconclusive (or an error)."""
    with api.ServiceClient() as client:
        gate = client.call("GET", f"/v1/jobs/{job_id}/gate")
    api.write_reports(job_id, gate, junit, summary)
    _print_gate(gate)
    raise typer.Exit(api.EXIT.get(gate["verdict"], 2))


def _print_gate(gate: dict[str, Any]) -> None:
    table = Table("config", "check", "figure", "95% CI", "against", "p", "verdict", title=f"gate: {gate['verdict']}")
    for config in gate["configs"]:
        for check in config["checks"]:
            table.add_row(
                str(config.get("name") or config["model_config_id"]),
                f"{check['metric']} ({check['cases']})",
                api.number(check.get("figure")),
                api.interval(check.get("ci95")),
                api.against(check),
                api.number(check.get("p_value")),
                check["verdict"],
            )
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add the client commands to the main CLI."""
    app.command("submit")(_clear_errors(submit_command))
    app.command("status")(_clear_errors(status_command))
    app.command("wait")(_clear_errors(wait_command))
    app.command("gate")(_clear_errors(gate_command))
