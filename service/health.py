"""``/healthz`` (the process answers) and ``/readyz`` (the database, and Redis when configured, answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.db.session import Trouble, trouble
from service.settings import DatabaseTimeouts

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    responses={503: {"description": "the database (or Redis) does not answer: `checks` says which"}},
)
async def readyz(request: Request) -> dict[str, Any] | JSONResponse:
    """Ready when the database (and Redis, when configured) answer, each within
    ``DEFEATER_DATABASE_TIMEOUTS__READY_CHECK_S``: a slow dependency is a quick 503, never a probe timeout."""
    settings = getattr(request.app.state, "settings", None)
    limit_s = (settings.database_timeouts if settings is not None else DatabaseTimeouts()).ready_check_s

    async def database() -> None:
        async with request.app.state.sessionmaker() as session:
            await session.execute(text("SELECT 1"))

    checks = {"database": await _check(database, limit_s)}
    queue = getattr(request.app.state, "queue", None)
    if queue is not None:
        checks["redis"] = await _check(queue.ping, limit_s)
    body = {"status": "ok" if all(v == "ok" for v in checks.values()) else "unavailable", "checks": checks}
    return body if body["status"] == "ok" else JSONResponse(body, status_code=503)


async def _check(probe: Callable[[], Awaitable[object]], limit_s: float) -> str:
    """``ok``, or why not: a state to report, never an exception. The probe runs as a task that is cancelled, not
    awaited, past ``limit_s``: its cleanup (a rollback on a hung connection) must not hold the answer up."""
    task = asyncio.ensure_future(probe())
    done, _ = await asyncio.wait({task}, timeout=limit_s)
    if not done:
        task.cancel()
        _ABANDONED.add(task)
        task.add_done_callback(_forget)
        return f"no answer within {limit_s:g} s"
    exc = task.exception()
    if exc is None:
        return "ok"
    return f"{'too slow' if trouble(exc) is Trouble.slow else 'unreachable'}: {type(exc).__name__}"


# probes given up on, kept referenced until their cancellation completes (the loop holds tasks only weakly)
_ABANDONED: set[asyncio.Future[object]] = set()


def _forget(task: asyncio.Future[object]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a late failure of an abandoned probe is not an error of anyone's
