"""Issue 15, item 6: long id lists. 100,000 case ids (what the schema allows) make a job on both backends; more
configs than the limits allow are refused with a 422 before a single query; a statement the database driver refuses
is an error of the request, never a "database cannot be reached" 503 that clients retry for ever."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from service.datasets.parsing import ValidatedCases
from service.datasets.service import import_cases, load_starter
from service.db.models import Case
from service.db.session import is_disconnect

Problem = Callable[[httpx.Response, int], dict[str, Any]]
MAX_CASE_IDS = 100_000  # JobFilters.case_ids' max_length


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement the engine runs inside the block."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def _dataset_of(session: AsyncSession, count: int) -> str:
    """A dataset of ``count`` cases (the starter's first case under new ids), stored directly: the API's upload
    path is not what is under test."""
    template = load_starter().cases[0]
    cases = [
        replace(template, case=template.case.model_copy(update={"id": f"case-{i:06d}"}), line=None)
        for i in range(count)
    ]
    outcome = await import_cases(session, ValidatedCases(cases, [], 0), name="many-cases")
    await session.commit()
    return str(outcome.dataset.id)


async def test_a_job_may_name_the_100000_case_ids_the_schema_allows(
    client: httpx.AsyncClient, session: AsyncSession, make_config: Callable[..., Any]
) -> None:
    dataset_id = await _dataset_of(session, MAX_CASE_IDS)
    config = await make_config()
    case_ids = [f"case-{i:06d}" for i in reversed(range(MAX_CASE_IDS))]  # any order: the job keeps dataset order
    body = {"dataset_id": dataset_id, "model_config_ids": [config["id"]], "filters": {"case_ids": case_ids}}
    response = await client.post("/v1/jobs", json=body, timeout=120)
    assert response.status_code == 202, response.text[:500]
    assert response.json()["case_count"] == MAX_CASE_IDS


async def test_an_unknown_id_among_100000_is_named(
    client: httpx.AsyncClient, session: AsyncSession, make_config: Callable[..., Any], problem: Problem
) -> None:
    dataset_id = await _dataset_of(session, 40_000)
    config = await make_config()
    case_ids = [f"case-{i:06d}" for i in range(40_000)] + ["no-such-case"]
    body = {"dataset_id": dataset_id, "model_config_ids": [config["id"]], "filters": {"case_ids": case_ids}}
    error = problem(await client.post("/v1/jobs", json=body, timeout=120), 422)
    assert error["errors"][0]["field"] == "filters.case_ids" and "'no-such-case'" in error["errors"][0]["message"]


@pytest.mark.parametrize(("field", "most"), [("judge_config_ids", 16), ("model_config_ids", 64)])
async def test_too_many_configs_are_refused_before_any_query(
    client: httpx.AsyncClient, engine: AsyncEngine, problem: Problem, field: str, most: int
) -> None:
    body: dict[str, Any] = {"dataset_id": "starter", "model_config_ids": ["a-config"], field: []}
    body[field] = [f"config-{i}" for i in range(20_000)]  # 20,000 lookups, one per name, before the limits
    started = time.monotonic()
    with statements(engine) as ran:
        response = await client.post("/v1/jobs", json=body)
    took = time.monotonic() - started
    error = problem(response, 422)
    assert error["errors"] == [{"field": field, "message": f"at most {most} {_what(field)}"}]
    assert ran == [] and took < 2


def _what(field: str) -> str:
    return "judge configs per job" if field == "judge_config_ids" else "configs per job"


async def test_a_statement_the_driver_refuses_is_not_a_lost_database(session: AsyncSession, backend: str) -> None:
    """More bind parameters than the driver takes (asyncpg: 32,767; SQLite: as built, here 250,000): an error of
    the statement, which no retry fixes. It used to be answered "the database cannot be reached", 503."""
    ids = [str(i) for i in range(300_000 if backend == "sqlite" else 40_000)]
    with pytest.raises(Exception) as raised:
        await session.execute(select(Case.id).where(Case.external_id.in_(ids)))
    assert not is_disconnect(raised.value)
