"""Issue 15, item 5: a slow database is a quick 503 with Retry-After, never a 30-second wait and then a 500; /readyz
answers inside the readiness probe's 3 s (k8s/api-deployment.yaml) however the database behaves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine.url import make_url

from service.app import create_app
from service.db.session import create_engine, create_sessionmaker
from service.settings import AuthSettings, DatabaseTimeouts, Settings
from tests.conftest import migrated_database

PROBE_TIMEOUT_S = 3.0  # the readiness probe's timeoutSeconds in k8s/


@pytest.fixture
async def postgres_url(tmp_path: Path) -> AsyncIterator[str]:
    """A database of its own: these tests need the app's real engine and pool, not the suite's shared connection."""
    async with migrated_database("postgres", tmp_path) as url:
        yield url


@asynccontextmanager
async def api(url: str, **timeouts: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The API on its own engine (pool of 1 + 1 overflow), tokens off, nothing executed."""
    settings = Settings(
        database_url=url,
        database_pool_size=1,
        database_timeouts=DatabaseTimeouts(**timeouts),
        auth=AuthSettings(required=False),
    )
    app = create_app(settings, run_jobs=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client


@asynccontextmanager
async def table_locked(url: str, table: str) -> AsyncIterator[None]:
    """Another session holds an exclusive lock on ``table``: every statement that reads it waits."""
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


async def timed(call: Awaitable[httpx.Response], within_s: float) -> tuple[httpx.Response, float]:
    """The response and the seconds it took; a failure (not a hung test) when it takes longer than ``within_s``."""
    start = time.monotonic()
    async with asyncio.timeout(within_s):
        response = await call
    return response, time.monotonic() - start


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["type"].endswith("/unavailable")


async def test_a_statement_waiting_on_a_lock_is_cut_off_with_a_503(postgres_url: str) -> None:
    async with api(postgres_url, statement_s=1.0) as client, table_locked(postgres_url, "model_configs"):
        response, took = await timed(client.get("/v1/model-configs"), within_s=5)
    assert_unavailable(response)
    assert "too busy" in response.json()["detail"]
    assert 0.9 < took < 3


async def test_no_free_pooled_connection_is_a_503_within_the_pool_timeout(postgres_url: str) -> None:
    async with api(postgres_url, statement_s=20, pool_s=0.5) as client, table_locked(postgres_url, "model_configs"):
        # two requests wait on the lock, holding the pool's two connections
        held = [asyncio.ensure_future(client.get("/v1/model-configs")) for _ in range(2)]
        await asyncio.sleep(0.5)
        response, took = await timed(client.get("/v1/datasets"), within_s=5)
        assert_unavailable(response)
        assert took < 2
        ready, ready_took = await timed(client.get("/readyz"), within_s=PROBE_TIMEOUT_S + 2)
    assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("too slow")
    assert ready_took < PROBE_TIMEOUT_S
    # once the lock goes, the held requests finish normally
    assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]


async def test_readyz_answers_within_the_probe_timeout_when_the_database_never_answers(postgres_url: str) -> None:
    """A database host that accepts connections and says nothing (a hung server, a half-open network path)."""
    silent: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hung = make_url(postgres_url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    settings = Settings(database_url=hung, auth=AuthSettings(required=False))
    engine = create_engine(settings)
    try:
        app = create_app(settings, run_jobs=False)
        app.state.sessionmaker = create_sessionmaker(engine)  # (the lifespan would wait on the database itself)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            ready, took = await timed(client.get("/readyz"), within_s=PROBE_TIMEOUT_S + 5)
    finally:
        await engine.dispose()
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()
    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"]["database"].startswith("no answer")
    assert took < PROBE_TIMEOUT_S
