"""The result writer: outcomes survive a database that goes away, and leases in hand stay alive."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select, update
from sqlalchemy.engine.url import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.datasets.service import ensure_starter
from service.db.base import utcnow
from service.db.models import ConfigRole, Request, UnitState
from service.db.session import create_engine, create_sessionmaker
from service.settings import Settings
from tests.conftest import migrated_database
from tests.workers.conftest import JobMaker
from workers.executor import ledger as units
from workers.executor.writer import ResultWriter, UnitUpdate
from workers.providers.fake import FakeProvider


@pytest.fixture
async def postgres(tmp_path: Path) -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], str]]:
    async with migrated_database("postgres", tmp_path) as url:
        engine = create_engine(Settings(database_url=url))
        sessionmaker = create_sessionmaker(engine)
        async with sessionmaker() as session:
            await ensure_starter(session)
            await session.commit()
        yield sessionmaker, url
        await engine.dispose()


async def _set_reachable(url: str, reachable: bool) -> None:
    """Let clients into the database, or shut them out and cut the connections they have (an outage)."""
    name = make_url(url).database
    admin = await asyncpg.connect(host="127.0.0.1", port=5432, database="postgres")
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(reachable).lower()}')
        if not reachable:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
    finally:
        await admin.close()


async def _leased(
    sessionmaker: async_sessionmaker[AsyncSession],
    make: Callable[..., Any],
    fake: FakeProvider,
    n: int,
    holder: str,
    lease_s: float,
) -> list[units.Claimed]:
    job_id = await make(fake, [("openai", "fake-gpt")], limit=n)
    async with sessionmaker() as session:
        config = (await units.job_configs(session, job_id, ConfigRole.target))[0]
        return await units.claim(session, Request, job_id, config.id, n, holder, lease_s)


async def _states(sessionmaker: async_sessionmaker[AsyncSession], ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    async with sessionmaker() as session:
        rows = await session.execute(
            select(Request.id, Request.state, Request.lease_expires_at).where(Request.id.in_(ids))
        )
        return {row[0]: (UnitState(row[1]), row[2]) for row in rows.all()}


async def test_outcomes_written_while_the_database_is_away_are_kept_and_written_when_it_is_back(
    postgres: tuple[async_sessionmaker[AsyncSession], str], fake: FakeProvider
) -> None:
    sessionmaker, url = postgres
    make = JobMaker(sessionmaker, Settings(database_url=url))
    holder = units.holder_id()
    first, second = await _leased(sessionmaker, make, fake, 2, holder, 60)
    writer = ResultWriter(sessionmaker, holder, 0.02, 100)
    writer.add(UnitUpdate(first.id, UnitState.failed, failure_reason="bad_request"))
    await _set_reachable(url, False)
    try:
        assert await writer.flush() is False
        writer.add(UnitUpdate(second.id, UnitState.failed, failure_reason="bad_request"))
        assert await writer.flush() is False
    finally:
        await _set_reachable(url, True)
    assert await writer.flush() is True
    states = await _states(sessionmaker, [first.id, second.id])
    assert {state for state, _ in states.values()} == {UnitState.failed}
    assert writer.written == 2


async def test_leases_in_hand_are_renewed_and_the_ones_let_go_are_not(
    ledger: async_sessionmaker[AsyncSession], make_job: Callable[..., Any], fake: FakeProvider
) -> None:
    holder = units.holder_id()
    kept, dropped, done = await _leased(ledger, make_job, fake, 3, holder, 2)
    writer = ResultWriter(ledger, holder, 0.02, 100, lease_s=300)
    writer.hold(Request, [kept, dropped, done])
    writer.let_go(Request, [dropped.id])
    writer.add(UnitUpdate(done.id, UnitState.failed, failure_reason="bad_request"))
    assert await writer.flush() is True
    assert writer.holding(Request) == 1
    assert await writer.renew() == 1
    states = await _states(ledger, [kept.id, dropped.id, done.id])
    assert states[kept.id][1] > utcnow() + timedelta(seconds=290)
    assert states[dropped.id][1] < utcnow() + timedelta(seconds=3)
    assert states[done.id] == (UnitState.failed, None)


async def test_a_lease_of_a_worker_that_vanished_returns_to_pending_once_it_expires(
    ledger: async_sessionmaker[AsyncSession], make_job: Callable[..., Any], fake: FakeProvider
) -> None:
    # a holder on another host: its process cannot be checked, so only the expiry frees its units
    (unit,) = await _leased(ledger, make_job, fake, 1, "another-host:1:abcdef12", 30)
    async with ledger() as session:
        job_id = (await session.execute(select(Request.job_id).where(Request.id == unit.id))).scalar_one()
        assert await units.reclaim_leases(session, job_id) == 0
        past = utcnow() - timedelta(seconds=1)  # the lease ran out: nobody renewed it
        await session.execute(update(Request).where(Request.id == unit.id).values(lease_expires_at=past))
        await session.commit()
        assert await units.reclaim_leases(session, job_id) == 1
    assert (await _states(ledger, [unit.id]))[unit.id][0] is UnitState.pending
