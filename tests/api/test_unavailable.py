"""A database that cannot be reached is a 503 with Retry-After, not a 500: a polling client asks again."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from service import api_errors


def _app() -> FastAPI:
    app = FastAPI()
    api_errors.install(app)

    @app.get("/away")
    async def away() -> None:
        raise ConnectionRefusedError("connect call failed ('127.0.0.1', 5432)")

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    return app


async def test_a_database_out_of_reach_is_503_with_retry_after() -> None:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        away, bug = await client.get("/away"), await client.get("/bug")
    assert away.status_code == 503 and away.headers["retry-after"] == str(api_errors.RETRY_AFTER_S)
    assert away.headers["content-type"] == "application/problem+json"
    assert away.json()["type"].endswith("unavailable") and "5432" not in away.text
    assert bug.status_code == 500 and "a bug" not in bug.text
