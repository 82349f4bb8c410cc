"""Fixtures: a migrated database per backend (SQLite file, real Postgres), each test rolled back; the API."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from service.app import create_app
from service.datasets.service import ensure_starter
from service.db.migrate import upgrade
from service.db.session import create_engine, create_sessionmaker
from service.settings import DEFAULT_KEY_HOSTS, AuthSettings, Settings

ROOT = Path(__file__).resolve().parent.parent
STUDY_DIR = Path(os.environ.get("DEFEATER_STUDY_DATA", ROOT.parent / "shared" / "data" / "blind-refusal"))
POSTGRES_ADMIN_URL = os.environ.get("DEFEATER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
LOOPBACK = ["127.0.0.1", "localhost"]
# Where configs may send which key (docs/security.md, "Provider keys"): the official variables to their own hosts (so
# a config without a base_url registers; no call goes there, see below) and to the fake on loopback; the fake's key,
# and the variables tests leave unset to see a job fail for a missing key, to loopback alone.
SUITE_KEY_HOSTS = {
    **{name: [*hosts, *LOOPBACK] for name, hosts in DEFAULT_KEY_HOSTS.items()},
    **dict.fromkeys(
        ("FAKE_PROVIDER_KEY", "NOT_SET_KEY", "NO_SUCH_KEY", "NO_JUDGE_KEY", "NO_KEY_A", "NO_KEY_B"), LOOPBACK
    ),
    "OTHER_KEY": ["api.openai.com", *LOOPBACK],  # a second OpenAI key
}
# The suite's provider settings, for this process and (through tests/workers/processes.py `run_env`) the processes it
# starts. Nothing in the tests may reach a real provider: the adapters refuse any host but loopback.
PROVIDER_ENV = {
    "DEFEATER_PROVIDERS__ALLOWED_HOSTS": json.dumps(LOOPBACK),
    "DEFEATER_PROVIDERS__KEY_HOSTS": json.dumps(SUITE_KEY_HOSTS),
    "DEFEATER_PROVIDERS__KEYLESS_HOSTS": json.dumps(LOOPBACK),
}
os.environ.update(PROVIDER_ENV)
os.environ["FAKE_PROVIDER_KEY"] = "fake-key-not-a-secret"
# The suite starts `defeater` and the fake as subprocesses hundreds of times: let them keep the project's compiled
# modules (a machine that sets PYTHONDONTWRITEBYTECODE otherwise has each start compile them all again, ~1 s a start)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@pytest.fixture(scope="session")
def study_dir() -> Path:
    """The study's real data (cases, answers, labels), read in place from the shared folder."""
    if not (STUDY_DIR / "cases.jsonl").exists():
        pytest.fail(f"the study data is not at {STUDY_DIR}; set DEFEATER_STUDY_DATA")
    return STUDY_DIR


@pytest.fixture(scope="session")
def study_cases_bytes(study_dir: Path) -> bytes:
    return (study_dir / "cases.jsonl").read_bytes()


async def _create_postgres_database() -> tuple[str, str]:
    name = f"defeater_test_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


async def _drop_postgres_database(name: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def migrated_database(backend: str, folder: Path) -> AsyncIterator[str]:
    """A new database on ``backend``, built by the real migrations, dropped afterwards."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{folder / 'ledger.db'}"
        name = None
    else:
        name, url = await _create_postgres_database()
    engine = create_engine(Settings(database_url=url), pooled=False)
    await upgrade(engine)
    await engine.dispose()
    try:
        yield Settings(database_url=url).database_url
    finally:
        if name:
            await _drop_postgres_database(name)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A fresh database per backend for the whole session; tests on it are rolled back."""
    async with migrated_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
async def ledger_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A database whose writes are committed (the executor runs many sessions at once), per backend."""
    async with migrated_database(request.param, tmp_path_factory.mktemp("ledger")) as url:
        yield url


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(Settings(database_url=ledger_url))
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session:
        await ensure_starter(session)
        await session.commit()
    yield sessionmaker
    await engine.dispose()


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=database_url))
    yield engine
    await engine.dispose()


@pytest.fixture
def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgres"


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction that is rolled back after the test: each test starts clean."""
    async with engine.connect() as conn:
        transaction = await conn.begin()
        try:
            yield conn
        finally:
            await transaction.rollback()


@pytest.fixture
def sessionmaker(connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    """Sessions on the test's connection; their commits become savepoints of the test's transaction."""
    return async_sessionmaker(
        bind=connection, expire_on_commit=False, autoflush=False, join_transaction_mode="create_savepoint"
    )


@pytest.fixture
async def session(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as session:
        yield session


@pytest.fixture
def settings(database_url: str) -> Settings:
    """The database's settings, API tokens off: tests/auth builds its apps with tokens on."""
    return Settings(database_url=database_url, auth=AuthSettings(required=False))


@pytest.fixture
async def client(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    """The API in-process (lifespan included), on the test's rolled-back connection. Tokens are off, so it answers
    to loopback names only (service/middleware.py): the base URL is one."""
    app = create_app(settings, sessionmaker=sessionmaker)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            yield http


@pytest.fixture
def make_config(client: httpx.AsyncClient) -> Callable[..., Any]:
    """Register a model config through the API: ``await make_config(name=..., **overrides)``."""
    counter = iter(range(1_000_000))

    async def create(**overrides: Any) -> dict[str, Any]:
        body = {"name": f"cfg-{next(counter)}", "provider": "openai", "model": "gpt-test"} | overrides
        response = await client.post("/v1/model-configs", json=body)
        assert response.status_code in (200, 201), response.text
        result: dict[str, Any] = response.json()
        return result

    return create


@pytest.fixture
async def starter(client: httpx.AsyncClient) -> dict[str, Any]:
    """The built-in starter dataset as the API lists it."""
    items = (await client.get("/v1/datasets")).json()["items"]
    found: dict[str, Any] = next(d for d in items if d["name"] == "starter")
    return found


@pytest.fixture
def problem() -> Callable[[httpx.Response, int], dict[str, Any]]:
    """Assert a response is problem+json with the status, and return its body."""

    def check(response: httpx.Response, status: int) -> dict[str, Any]:
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        body: dict[str, Any] = response.json()
        assert body["status"] == status and body["title"] and body["detail"]
        return body

    return check


@pytest.fixture
def env_without_defeater(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment for subprocesses: no DEFEATER_ settings but a private SQLite file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFEATER_")}
    env["DEFEATER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    yield env


@dataclass
class Recorded:
    """One request a ``Recorder`` got."""

    host: str
    path: str
    headers: dict[str, str]
    body: bytes


class Recorder:
    """A tiny HTTP server on loopback (IPv4 and IPv6, one port) standing for a webhook receiver or an attacker's
    host: it records every request and answers ``status`` (with a ``Location`` back to itself for a 3xx)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.status = "204 No Content"
        self.port = 0

    def url(self, path: str = "/hooks/defeater") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append(Recorded(headers.get("host", ""), lines[0].split(" ")[1], headers, body))
        location = f"Location: {self.url('/elsewhere')}\r\n" if self.status.startswith("3") else ""
        writer.write(f"HTTP/1.1 {self.status}\r\n{location}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    found = Recorder()
    v4 = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    found.port = v4.sockets[0].getsockname()[1]
    v6 = await asyncio.start_server(found.handle, "::1", found.port)
    yield found
    for server in (v4, v6):
        server.close()
        await server.wait_closed()
