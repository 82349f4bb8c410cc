"""``GET /v1/jobs/{id}/results`` served from the per-process cache while the ledger is unchanged, recomputed as soon
as it changes, and always the same figures as the uncached computation."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.app import create_app
from service.db.models import Case, Family, Job, JobState, Judgement, Outcome, Request, Response, UnitState
from service.results import repository
from service.results.cache import ResultsCache, results_json
from service.results.repository import Helped, pair_up
from service.results.service import results
from service.settings import Settings


@pytest.fixture
async def api(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[FastAPI]:
    app = create_app(settings, sessionmaker=sessionmaker)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def http(api: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


async def _job(http: httpx.AsyncClient) -> dict[str, Any]:
    dataset = next(d for d in (await http.get("/v1/datasets")).json()["items"] if d["name"] == "starter")
    configs = []
    for name in ("cache-a", "cache-b"):
        response = await http.post("/v1/model-configs", json={"name": name, "provider": "openai", "model": "m"})
        configs.append(response.json()["id"])
    body = {"dataset_id": dataset["id"], "model_config_ids": configs, "filters": {"limit": 12}}
    job: dict[str, Any] = (await http.post("/v1/jobs", json=body)).json()
    return job


async def _answer_all_but_one_judgement(session: AsyncSession, job_id: uuid.UUID, judge_id: uuid.UUID) -> uuid.UUID:
    """Every request answered; every answer judged (defeated cases of the first config help) but one, whose
    judgement is still pending: returns that judgement's id."""
    query = select(Request.id, Request.model_config_id, Case.family).join(Case).where(Request.job_id == job_id)
    rows = (await session.execute(query)).all()
    first = min(r.model_config_id for r in rows)
    await session.execute(update(Request).where(Request.job_id == job_id).values(state=UnitState.succeeded))
    await session.execute(
        insert(Response),
        [{"request_id": r.id, "job_id": job_id, "model_config_id": r.model_config_id, "outcome": Outcome.answer,
          "text": "an answer", "cache_key": r.id.hex} for r in rows],
    )  # fmt: skip
    ids = [uuid.uuid4() for _ in rows]
    await session.execute(
        insert(Judgement),
        [{"id": i, "job_id": job_id, "request_id": r.id, "judge_config_id": judge_id, "state": UnitState.succeeded,
          "response_type": "helps" if r.model_config_id == first and r.family is not Family.control
          else "hard_refusal", "engages_with_defeat": False, "independent_harm": False}
         for i, r in zip(ids, rows, strict=True)],
    )  # fmt: skip
    await session.execute(
        update(Judgement)
        .where(Judgement.id == ids[0])
        .values(state=UnitState.pending, response_type=None, engages_with_defeat=None, independent_harm=None)
    )
    await session.commit()
    return ids[0]


async def _uncached(session: AsyncSession, job_id: uuid.UUID) -> Any:
    session.expire_all()
    job = await session.get(Job, job_id)
    assert job is not None
    return json.loads((await results(session, job)).model_dump_json())


async def test_results_are_served_again_until_the_ledger_changes(
    api: FastAPI, http: httpx.AsyncClient, session: AsyncSession
) -> None:
    job = await _job(http)
    job_id, url = uuid.UUID(job["id"]), f"/v1/jobs/{job['id']}/results"
    pending = await _answer_all_but_one_judgement(session, job_id, uuid.UUID(job["judge_config_ids"][0]))
    # no freshness window: every change shows at the next read
    cache = api.state.results_cache = ResultsCache(running_fresh_s=0.0)

    first = (await http.get(url)).json()
    assert cache.computed == 1
    assert first == await _uncached(session, job_id)
    assert first["overall"]["all"]["open"] == 1
    assert (await http.get(url)).json() == first and cache.computed == 1  # unchanged: not computed again

    # the last judgement arrives: a unit became final
    await session.execute(
        update(Judgement).where(Judgement.id == pending)
        .values(state=UnitState.succeeded, response_type="deflection", engages_with_defeat=True, independent_harm=True)
    )  # fmt: skip
    await session.commit()
    second = (await http.get(url)).json()
    assert cache.computed == 2
    assert second == await _uncached(session, job_id) != first
    assert second["overall"]["all"]["open"] == 0

    # a label rewritten in place: no count moves, the newest updated_at does
    await session.execute(update(Judgement).where(Judgement.id == pending).values(response_type="hard_refusal"))
    await session.commit()
    third = (await http.get(url)).json()
    assert cache.computed == 3
    assert third == await _uncached(session, job_id) != second

    # the job finishes: its state is part of the figures; then it is served from the cache
    await session.execute(update(Job).where(Job.id == job_id).values(state=JobState.completed))
    await session.commit()
    finished = (await http.get(url)).json()
    assert finished["state"] == "completed" and cache.computed == 4
    for _ in range(3):
        assert (await http.get(url)).json() == finished
    assert cache.computed == 4
    assert finished == await _uncached(session, job_id)


async def test_a_running_jobs_results_are_at_most_the_freshness_window_old(
    api: FastAPI, http: httpx.AsyncClient, session: AsyncSession
) -> None:
    job = await _job(http)
    job_id, url = uuid.UUID(job["id"]), f"/v1/jobs/{job['id']}/results"
    pending = await _answer_all_but_one_judgement(session, job_id, uuid.UUID(job["judge_config_ids"][0]))
    cache = api.state.results_cache = ResultsCache(running_fresh_s=0.5)
    first = (await http.get(url)).json()
    await session.execute(
        update(Judgement).where(Judgement.id == pending)
        .values(state=UnitState.succeeded, response_type="helps", engages_with_defeat=False, independent_harm=False)
    )  # fmt: skip
    await session.commit()
    assert (await http.get(url)).json() == first and cache.computed == 1  # within the window: as computed
    await asyncio.sleep(0.6)
    assert (await http.get(url)).json() == await _uncached(session, job_id) != first
    assert cache.computed == 2
    # a change of the job's state is never hidden by the window
    await session.execute(update(Job).where(Job.id == job_id).values(state=JobState.running))
    await session.commit()
    assert (await http.get(url)).json()["state"] == "running" and cache.computed == 3


def test_an_unfinished_jobs_entry_expires_and_the_least_recent_job_is_dropped() -> None:
    cache = ResultsCache(max_jobs=2, running_fresh_s=0.0, running_max_age_s=0.0)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    cache.put(a, ("running", 1), b"a")
    assert cache.fresh(a, "running") is None
    assert cache.get(a, ("running", 1), final=False) is None  # older than the running window
    assert cache.get(a, ("running", 1), final=True) == b"a"
    assert cache.get(a, ("running", 2), final=True) is None  # another version
    cache.put(b, ("completed", 1), b"b")
    cache.put(c, ("completed", 1), b"c")
    assert cache.get(a, ("running", 1), final=True) is None
    assert cache.get(b, ("completed", 1), final=True) == b"b"


async def test_comparisons_are_the_same_paired_in_sql_or_answer_by_answer(
    http: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await _job(http)
    job_id = uuid.UUID(job["id"])
    await _answer_all_but_one_judgement(session, job_id, uuid.UUID(job["judge_config_ids"][0]))
    in_sql = await _uncached(session, job_id)
    monkeypatch.setattr(repository, "MASK_BITS", 1)  # two configs: more than the masks may hold
    by_answer = await _uncached(session, job_id)
    assert in_sql["comparisons"] == by_answer["comparisons"] and len(in_sql["comparisons"]) == 1
    assert in_sql["comparisons"][0]["pairs"] > 0


def test_pairing_counts_every_two_configs_on_their_common_units() -> None:
    configs = [uuid.UUID(int=n) for n in (3, 1, 2)]  # bit i is configs[i]; pairs ordered by the ids as strings
    found = [Helped(labelled=0b111, helps=0b001, units=2), Helped(labelled=0b011, helps=0b011, units=1)]
    pairs = {(p.a, p.b): (p.pairs, p.a_yes, p.b_yes, p.a_only, p.b_only) for p in pair_up(found, configs)}
    one, two, three = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)
    assert list(pairs) == [(one, two), (one, three), (two, three)]
    assert pairs[one, two] == (2, 0, 0, 0, 0)
    assert pairs[one, three] == (3, 1, 3, 0, 2)
    assert pairs[two, three] == (2, 0, 2, 0, 2)


async def test_with_a_sessionmaker_a_running_job_never_waits_for_a_recomputation(
    api: FastAPI, http: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    job = await _job(http)
    job_id = uuid.UUID(job["id"])
    pending = await _answer_all_but_one_judgement(session, job_id, uuid.UUID(job["judge_config_ids"][0]))
    await session.execute(update(Job).where(Job.id == job_id).values(state=JobState.running))
    await session.commit()
    cache = ResultsCache(running_fresh_s=0.2, sessionmaker=sessionmaker)
    row = await session.get(Job, job_id)
    assert row is not None
    first = await results_json(session, row, cache)
    await session.execute(
        update(Judgement).where(Judgement.id == pending)
        .values(state=UnitState.succeeded, response_type="helps", engages_with_defeat=False, independent_harm=False)
    )  # fmt: skip
    await session.commit()
    await asyncio.sleep(0.25)
    # older than the window: the last figures at once, while they are computed again in the background
    assert await results_json(session, row, cache) == first and cache.computed == 1
    await cache.settle()
    assert cache.computed == 2
    assert json.loads(await results_json(session, row, cache)) == await _uncached(session, job_id) != json.loads(first)
