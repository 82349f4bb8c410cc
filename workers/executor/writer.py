"""Batched result writes: one transaction per batch of outcomes, no ORM objects on the hot path."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.base import utcnow
from service.db.models import Judgement, Request, Response, UnitState
from workers.executor.ledger import Claimed, Unit, judgement_id

log = logging.getLogger("defeater.writer")

_REQUESTS: Table = Request.__table__  # type: ignore[assignment]
_RESPONSES: Table = Response.__table__  # type: ignore[assignment]
_JUDGEMENTS: Table = Judgement.__table__  # type: ignore[assignment]


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


# what a finished judgement call stores on its row (all None until it succeeds)
JUDGEMENT_FIELDS = (
    "response_type",
    "engages_with_defeat",
    "independent_harm",
    "reasoning",
    "raw_text",
    "prompt_version",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "cost_usd",
)


@dataclass
class _Batch:
    responses: list[dict[str, Any]] = field(default_factory=list)
    judgements: list[dict[str, Any]] = field(default_factory=list)
    updates: list[UnitUpdate] = field(default_factory=list)
    judged: list[tuple[UnitUpdate, dict[str, Any]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.responses) + len(self.judgements) + len(self.updates) + len(self.judged)

    def extend(self, later: _Batch) -> None:
        self.responses += later.responses
        self.judgements += later.judgements
        self.updates += later.updates
        self.judged += later.judged


# a failed write is tried again after this many seconds, doubling up to the cap
RETRY_FIRST_S = 0.2
RETRY_CAP_S = 5.0
# how long ``close`` keeps trying to write what is left before giving up (the leases then expire)
CLOSE_PATIENCE_S = 60.0
# at most this many ids in one lease-renewal statement
RENEW_CHUNK = 1000


class ResultWriter:
    """Collects outcomes and writes them every ``interval_s`` or every ``max_batch`` outcomes.

    A response and its request's new state go in the same transaction; the update only applies while this
    process still holds the lease, and a response already stored for the request is left as it is. So a batch
    can be written again after a failure (the database restarting, say): it is kept and retried, never dropped.

    With ``lease_s``, the writer also keeps the leases of the units in hand (``hold``) alive: every quarter of
    ``lease_s`` it pushes their expiry forward, so a short lease can be used and a worker that dies (on any
    host) gives its units back within ``lease_s``.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        holder: str,
        interval_s: float,
        max_batch: int,
        judges: list[uuid.UUID] | None = None,
        lease_s: float | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.holder = holder
        self.lease_s = lease_s
        # units leased and not yet written, with their jobs
        self._held: dict[Unit, dict[uuid.UUID, uuid.UUID]] = {Request: {}, Judgement: {}}
        self._renewed_at = time.monotonic()
        self._failures = 0
        self.judges = judges or []
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

    def hold(self, model: Unit, units: Iterable[Claimed]) -> None:
        """Units just leased by this process: their leases are renewed until their outcome is written."""
        self._held[model].update((unit.id, unit.job_id) for unit in units)

    def let_go(self, model: Unit, ids: Iterable[uuid.UUID]) -> None:
        """Units this process will not finish after all: their leases are left to expire."""
        for unit_id in ids:
            self._held[model].pop(unit_id, None)

    def let_go_all(self, model: Unit) -> None:
        """Let go of every unit of this kind held."""
        self._held[model].clear()

    def holding(self, model: Unit) -> int:
        """How many units of this kind the writer keeps leases alive for."""
        return len(self._held[model])

    def add(
        self, update_: UnitUpdate, response: dict[str, Any] | None = None, judges: list[uuid.UUID] | None = None
    ) -> None:
        """A request's new state, with its response; an answer gets a pending judgement per judge of its job."""
        if response is not None:
            self._batch.responses.append(response)
            if response["outcome"] == "answer":
                self._batch.judgements.extend(self._new_judgements(response, judges))
        self._batch.updates.append(update_)
        self._maybe_wake()

    def add_pending_judgements(self, job_id: uuid.UUID, request_id: uuid.UUID, judges: list[uuid.UUID]) -> None:
        """Pending judgements for an answer stored earlier (not through this writer)."""
        base = {"request_id": request_id, "job_id": job_id}
        self._batch.judgements.extend(j for j in self._new_judgements(base) if j["judge_config_id"] in judges)

    def add_judgement(self, update_: UnitUpdate, values: dict[str, Any] | None = None) -> None:
        """A judgement's new state, with what the judge answered (labels stay null unless it validated)."""
        self._batch.judged.append((update_, values or {}))
        self._maybe_wake()

    def _maybe_wake(self) -> None:
        if len(self._batch) >= self.max_batch:
            self._wake.set()

    def _new_judgements(self, response: dict[str, Any], judges: list[uuid.UUID] | None = None) -> list[dict[str, Any]]:
        now = utcnow()
        return [
            {
                "id": judgement_id(response["request_id"], judge),
                "job_id": response["job_id"],
                "request_id": response["request_id"],
                "judge_config_id": judge,
                "state": UnitState.pending.value,
                "attempts": 0,
                "rate_limited": 0,
                "error_repeats": 0,
                "created_at": now,
                "updated_at": now,
            }
            for judge in (self.judges if judges is None else judges)
        ]

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self._pause_s())
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()
            if self.lease_s is not None and time.monotonic() - self._renewed_at >= self.lease_s / 4:
                await self.renew()

    def _pause_s(self) -> float:
        """The flush interval; after failed writes, a doubling wait so a database that is down is not hammered."""
        if not self._failures:
            return self.interval_s
        return float(min(RETRY_FIRST_S * 2 ** (self._failures - 1), RETRY_CAP_S))

    async def flush(self) -> bool:
        """Write everything collected so far, in one transaction. False: it failed and is kept for the next try."""
        async with self._lock:
            batch, self._batch = self._batch, _Batch()
            if not len(batch):
                return True
            try:
                await self._write(batch)
            except Exception as exc:  # the database went away (or worse): keep every outcome, try again later
                self._failures += 1
                batch.extend(self._batch)
                self._batch = batch
                log.warning("writing %d outcomes failed (%s); will try again", len(batch), _short(exc))
                return False
            self._failures = 0
            self.written += len(batch)
            for u in batch.updates:
                self._held[Request].pop(u.id, None)
            for u, _ in batch.judged:
                self._held[Judgement].pop(u.id, None)
        return True

    async def _write(self, batch: _Batch) -> None:
        async with self.sessionmaker() as session:
            if batch.responses:
                await session.execute(_insert_ignoring_duplicates(session, _RESPONSES), batch.responses)
            if batch.judgements:
                await session.execute(_insert_ignoring_duplicates(session, _JUDGEMENTS), batch.judgements)
            if batch.updates:
                await session.execute(_UPDATE, [self._params(u) for u in batch.updates])
            if batch.judged:
                params = [self._params(u) | {f: v.get(f) for f in JUDGEMENT_FIELDS} for u, v in batch.judged]
                await session.execute(_UPDATE_JUDGEMENT, params)
            await session.commit()

    async def renew(self) -> int:
        """Push forward the expiry of every lease in hand; returns how many were renewed (0 when it failed)."""
        assert self.lease_s is not None
        self._renewed_at = time.monotonic()
        expires = utcnow() + timedelta(seconds=self.lease_s)
        renewed = 0
        try:
            async with self.sessionmaker() as session:
                for model, held in self._held.items():
                    ids = list(held)
                    for start in range(0, len(ids), RENEW_CHUNK):
                        stmt = (
                            update(model)
                            .where(
                                model.id.in_(ids[start : start + RENEW_CHUNK]),
                                model.leased_by == self.holder,
                                model.state == UnitState.leased,
                            )
                            .values(lease_expires_at=expires)
                            .execution_options(synchronize_session=False)
                        )
                        renewed += int(getattr(await session.execute(stmt), "rowcount", 0) or 0)
                await session.commit()
        except Exception as exc:  # the next round tries again; a lease lost meanwhile is the ledger's to settle
            log.warning("renewing leases failed (%s)", _short(exc))
            return 0
        return renewed

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
        """Stop the background loop and write what is left (trying for up to ``CLOSE_PATIENCE_S``)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        deadline = time.monotonic() + CLOSE_PATIENCE_S
        while not await self.flush():
            if time.monotonic() > deadline:
                log.error("gave up writing %d outcomes; their units' leases will expire", len(self._batch))
                return
            await asyncio.sleep(self._pause_s())


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _unit_update(table: Table, extra: tuple[str, ...] = ()) -> Any:
    """UPDATE of one unit by id, applied only while this process holds its lease (executemany)."""
    values: dict[str, Any] = {
        name: bindparam(name)
        for name in (
            "state",
            "not_before",
            "rate_limited",
            "last_error",
            "error_repeats",
            "failure_reason",
            "failure_detail",
            "updated_at",
            *extra,
        )
    }
    return (
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.leased_by == bindparam("b_holder"))
        .values(**values, leased_by=None, lease_expires_at=None)
    )


_UPDATE = _unit_update(_REQUESTS)
_UPDATE_JUDGEMENT = _unit_update(_JUDGEMENTS, JUDGEMENT_FIELDS)


def _insert_ignoring_duplicates(session: AsyncSession, table: Table) -> Any:
    """INSERT that leaves a row already there alone (a unit finished twice after a lost lease)."""
    key = list(table.primary_key.columns.keys())
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(table).on_conflict_do_nothing(index_elements=key)
    return sqlite_insert(table).on_conflict_do_nothing(index_elements=key)
