"""A job's live progress as ``defeater run`` and ``defeater wait`` show it: both phases, requests and judgements.

On a terminal: a bar per phase and a line of figures under them. In a log (CI): the same as plain lines. Both
read the job's progress in the API's shape (``{"requests": {total, succeeded, failed, ...}, "judgements": ...}``),
so that a run and a wait of the same job show the same counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

PHASES = ("requests", "judgements")


def done(counts: Mapping[str, Any]) -> int:
    """Units of a phase that reached a final state."""
    return int(counts["succeeded"]) + int(counts["failed"])


def phases_text(progress: Mapping[str, Mapping[str, Any]]) -> str:
    """Both phases on one line: ``requests 12/40 (failed 1), judgements 9/11``."""
    parts = []
    for phase in PHASES:
        counts = progress[phase]
        failed = f" (failed {counts['failed']})" if counts["failed"] else ""
        parts.append(f"{phase} {done(counts)}/{counts['total']}{failed}")
    return ", ".join(parts)


class _Progress(Progress):
    """Rich's progress display with a line of text under the bars."""

    def __init__(self, *columns: ProgressColumn, console: Console, line: Callable[[], str]) -> None:
        self._line = line
        super().__init__(*columns, console=console)

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if text := self._line():
            yield Text(text)


class PhaseBars:
    """A bar per phase (requests, judgements) and a line of figures under them (from ``line``), for a terminal."""

    def __init__(self, console: Console, line: Callable[[], str]) -> None:
        columns = (
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
        )
        self._progress = _Progress(*columns, console=console, line=line)
        self._tasks = {phase: self._progress.add_task(phase, total=None, note="") for phase in PHASES}

    def __enter__(self) -> PhaseBars:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def update(self, progress: Mapping[str, Mapping[str, Any]]) -> None:
        """Show these counts (the line of figures is read at every refresh)."""
        for phase, task in self._tasks.items():
            counts = progress[phase]
            note = f"failed {counts['failed']}" if counts["failed"] else ""
            self._progress.update(task, total=counts["total"], completed=done(counts), note=note)
        self._progress.refresh()


def print_job_problems(console: Console, error: str | None, warnings: Iterable[str]) -> None:
    """A job's error (one line) and its warnings, as ``run`` and ``wait`` end with them."""
    if error:
        console.print(f"[bold red]error:[/] {error}", highlight=False)
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
