"""Engines and sessions. Built by the app's lifespan or a CLI command, never at import."""

from __future__ import annotations

import enum
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from service.settings import Settings


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy own transactions (so SAVEPOINT works) and make SQLite behave like a server database.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # take the write lock at the start: concurrent writers in one process wait (busy_timeout) instead of
    # failing with SQLITE_BUSY when a read transaction tries to become a write one
    conn.exec_driver_sql("BEGIN IMMEDIATE")


# asyncpg's errors for a server that went away, refuses connections for now, or is shutting down. Not its
# InterfaceError in general: that is also what a statement the client library refuses raises (more than 32,767
# bind parameters, a value of the wrong type), and such a request fails the same way however often it is retried
_ASYNCPG_UNREACHABLE = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)
# a statement cut short by statement_timeout (or a cancel), or a lock not granted within lock_timeout
_ASYNCPG_SLOW = (asyncpg.exceptions.QueryCanceledError, asyncpg.exceptions.LockNotAvailableError)


class Trouble(enum.Enum):
    """Why a database operation failed for now, when asking again later may succeed."""

    unreachable = "unreachable"  # restarting, failing over, refusing connections
    slow = "slow"  # a statement or the wait for a pooled connection ran out of time


def trouble(exc: BaseException) -> Trouble | None:
    """The passing trouble ``exc`` shows, or None when it is an error in the statement or the code (not retryable).

    Follows SQLAlchemy's wrapping (``orig``) and the driver's (``__cause__``) down to the driver's own error.
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        found = _own_trouble(current)
        if found is not None:
            return found
        seen += 1
        orig = current.orig if isinstance(current, DBAPIError) else None
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def _own_trouble(exc: BaseException) -> Trouble | None:
    if isinstance(exc, (*_ASYNCPG_SLOW, PoolTimeout)):
        return Trouble.slow
    if isinstance(exc, (OSError, *_ASYNCPG_UNREACHABLE)):  # OSError: refused, reset, DNS, connect timeouts
        return Trouble.unreachable
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:  # SQLAlchemy's dialect saw the connection die
        return Trouble.unreachable
    if isinstance(exc, asyncpg.exceptions.InterfaceError) and "connection is closed" in str(exc):
        return Trouble.unreachable
    if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(("database is locked", "database is busy")):
        return Trouble.slow  # another writer held the file past busy_timeout
    return None


def is_disconnect(exc: BaseException) -> bool:
    """True when ``exc`` is passing trouble (the database unreachable or too slow just now), not a bad statement:
    the same operation may succeed when tried again."""
    return trouble(exc) is not None


def create_engine(
    settings: Settings, *, pooled: bool = True, pre_ping: bool = True, request_timeouts: bool = False
) -> AsyncEngine:
    """An async engine for the configured database; SQLite gets its directory and pragmas.

    ``pre_ping`` checks each pooled connection before use (a round trip per checkout). Workers turn it off: they
    treat a dropped connection as a retryable error instead (``is_disconnect``), and the pool then drops the rest.
    ``request_timeouts``: the API's engine, whose callers wait: ``settings.database_timeouts`` bound each statement
    (on Postgres), the wait for a pooled connection and the connect. Workers and migrations run without them.
    """
    url = make_url(settings.database_url)
    kwargs: dict[str, Any] = {"echo": settings.database_echo}
    timeouts = settings.database_timeouts
    if request_timeouts and pooled:
        kwargs["pool_timeout"] = timeouts.pool_s
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    if request_timeouts:
        kwargs["connect_args"] = {
            "timeout": timeouts.connect_s,
            "server_settings": {"statement_timeout": str(round(timeouts.statement_s * 1000))},
        }
    if pooled:
        kwargs.update(pool_size=settings.database_pool_size, max_overflow=settings.database_pool_size)
        kwargs["pool_pre_ping"] = pre_ping
    else:
        kwargs["poolclass"] = NullPool
    return create_async_engine(url, **kwargs)


async def without_statement_timeout(session: AsyncSession) -> None:
    """Lift the statement timeout for the rest of ``session``'s transaction (on Postgres; a no-op elsewhere): for
    work whose length grows with its input by design, such as writing a job's request rows."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await connection.exec_driver_sql("SET LOCAL statement_timeout = 0")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
