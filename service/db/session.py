"""Engines and sessions. Built by the app's lifespan or a CLI command, never at import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
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


# asyncpg's errors for a server that went away, refuses connections for now, or is shutting down
_ASYNCPG_DISCONNECTS = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InterfaceError,
)


def is_disconnect(exc: BaseException) -> bool:
    """True when ``exc`` means the database could not be reached (restarting, failing over), not a bad statement."""
    if isinstance(exc, (OSError, TimeoutError, *_ASYNCPG_DISCONNECTS)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return True
        return exc.orig is not None and is_disconnect(exc.orig)
    cause = exc.__cause__
    return isinstance(cause, _ASYNCPG_DISCONNECTS) if cause is not None else False


def create_engine(settings: Settings, *, pooled: bool = True, pre_ping: bool = True) -> AsyncEngine:
    """An async engine for the configured database; SQLite gets its directory and pragmas.

    ``pre_ping`` checks each pooled connection before use (a round trip per checkout). Workers turn it off: they
    treat a dropped connection as a retryable error instead (``is_disconnect``), and the pool then drops the rest.
    """
    url = make_url(settings.database_url)
    kwargs: dict[str, Any] = {"echo": settings.database_echo}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    if pooled:
        kwargs.update(pool_size=settings.database_pool_size, max_overflow=settings.database_pool_size)
        kwargs["pool_pre_ping"] = pre_ping
    else:
        kwargs["poolclass"] = NullPool
    return create_async_engine(url, **kwargs)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
