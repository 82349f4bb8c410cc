"""The exit codes of every ``defeater`` command: one table, documented in ``docs/ci.md``.

A release pipeline branches on them, so each outcome has a code of its own: a gate that cannot be decided (2) is
never confused with a service that cannot be reached (5).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a command's exit status means."""

    OK = 0  # done: the job completed with every unit judged, the gate passed, the command did what it says
    FAILED = 1  # the gate failed; the job ended failed or cancelled
    INCONCLUSIVE = 2  # the gate's verdict is inconclusive: not proven either way
    PAUSED = 3  # the job stopped at its budget (continue with a larger one)
    WARNINGS = 4  # the job completed, but some of its units failed or stayed unjudged (see its warnings)
    ERROR = 5  # nothing was decided: bad input or usage, unreachable service, refused token or request
    INTERRUPTED = 130  # Ctrl-C: the command stopped (a job it ran is stopped, not failed; one it watched goes on)


def for_job(state: str, warnings: list[str] | None = None) -> ExitCode:
    """The exit code of a command that ran or followed a job to its end (``run``, ``wait``, ``submit --wait``).

    ``stopped`` is a run's own Ctrl-C (the job stays resumable); any state that is not an end is taken as a failure
    rather than a success, so that nothing unexpected passes a pipeline.
    """
    if state == "completed":
        return ExitCode.WARNINGS if warnings else ExitCode.OK
    if state == "paused":
        return ExitCode.PAUSED
    if state == "stopped":
        return ExitCode.INTERRUPTED
    return ExitCode.FAILED
