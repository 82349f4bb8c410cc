"""Batched result writes: one transaction per batch of outcomes, no ORM objects on the hot path."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.base import utcnow
from service.db.models import Request, Response, UnitState

_REQUESTS: Table = Request.__table__  # type: ignore[assignment]
_RESPONSES: Table = Response.__table__  # type: ignore[assignment]


@dataclass
class UnitUpdate:
    """The new state of one leased request: final (succeeded / failed) or back to pending after a delay."""

    id: uuid.UUID
    state: UnitState
    not_before: datetime | None = None
    rate_limited: int = 0
    last_error: str | None = None
    error_repeats: int = 0
    failure_reason: str | None = None
    failure_detail: str | None = None


@dataclass
class _Batch:
    responses: list[dict[str, Any]] = field(default_factory=list)
    updates: list[UnitUpdate] = field(default_factory=list)


class ResultWriter:
    """Collects outcomes and writes them every ``interval_s`` or every ``max_batch`` outcomes.

    A response and its request's new state go in the same transaction; the update only applies while this
    process still holds the lease, and a response already stored for the request is left as it is.
    """

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], holder: str, interval_s: float, max_batch: int
    ) -> None:
        self.sessionmaker = sessionmaker
        self.holder = holder
        self.interval_s = interval_s
        self.max_batch = max_batch
        self._batch = _Batch()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="result-writer")

    def add(self, update_: UnitUpdate, response: dict[str, Any] | None = None) -> None:
        if response is not None:
            self._batch.responses.append(response)
        self._batch.updates.append(update_)
        if len(self._batch.updates) >= self.max_batch:
            self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything collected so far, in one transaction."""
        async with self._lock:
            batch, self._batch = self._batch, _Batch()
            if not batch.updates:
                return
            async with self.sessionmaker() as session:
                if batch.responses:
                    await session.execute(_insert_ignoring_duplicates(session), batch.responses)
                await session.execute(_UPDATE, [self._params(u) for u in batch.updates])
                await session.commit()
            self.written += len(batch.updates)

    def _params(self, u: UnitUpdate) -> dict[str, Any]:
        return {
            "b_id": u.id,
            "b_holder": self.holder,
            "state": u.state.value,
            "not_before": u.not_before,
            "rate_limited": u.rate_limited,
            "last_error": u.last_error,
            "error_repeats": u.error_repeats,
            "failure_reason": u.failure_reason,
            "failure_detail": u.failure_detail,
            "updated_at": utcnow(),
        }

    async def close(self) -> None:
        """Stop the background loop and write what is left."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()


_UPDATE = (
    update(_REQUESTS)
    .where(_REQUESTS.c.id == bindparam("b_id"), _REQUESTS.c.leased_by == bindparam("b_holder"))
    .values(
        state=bindparam("state"),
        not_before=bindparam("not_before"),
        rate_limited=bindparam("rate_limited"),
        last_error=bindparam("last_error"),
        error_repeats=bindparam("error_repeats"),
        failure_reason=bindparam("failure_reason"),
        failure_detail=bindparam("failure_detail"),
        updated_at=bindparam("updated_at"),
        leased_by=None,
        lease_expires_at=None,
    )
)


def _insert_ignoring_duplicates(session: AsyncSession) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(_RESPONSES).on_conflict_do_nothing(index_elements=["request_id"])
    return sqlite_insert(_RESPONSES).on_conflict_do_nothing(index_elements=["request_id"])
