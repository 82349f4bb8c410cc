"""``/healthz`` (the process answers) and ``/readyz`` (the database, and Redis when configured, answer)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

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
    checks: dict[str, str] = {}
    try:
        async with request.app.state.sessionmaker() as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports any failure as a state, it does not raise
        checks["database"] = f"unreachable: {type(exc).__name__}"
    queue = getattr(request.app.state, "queue", None)
    if queue is not None:
        try:
            await queue.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
    body = {"status": "ok" if all(v == "ok" for v in checks.values()) else "unavailable", "checks": checks}
    return body if body["status"] == "ok" else JSONResponse(body, status_code=503)
