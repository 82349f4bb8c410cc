"""``POST /v1/jobs/{id}/retry``: a finished job's failed units go back to pending and the job back to running."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.base import utcnow
from service.db.models import ConfigRole, Job, JobState, Judgement, Request, UnitState
from service.jobs.repository import config_ids

SERVER_ERROR = "server_error after 6 attempts"


async def _job(client: httpx.AsyncClient, starter: dict[str, Any], make_config: Any) -> uuid.UUID:
    body = {"dataset_id": starter["id"], "model_config_ids": [(await make_config())["id"]], "filters": {"limit": 6}}
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["id"])


def _fail(unit: Request | Judgement, reason: str | None) -> None:
    unit.state = UnitState.failed
    unit.failure_reason, unit.failure_detail = reason, f"HTTP 500 {reason}: boom"
    unit.attempts, unit.rate_limited, unit.error_repeats, unit.last_error = 8, 2, 3, "server_error|500|boom"


async def _finished(session: AsyncSession, job_id: uuid.UUID, state: JobState = JobState.failed) -> None:
    """The job as a run leaves it: of its six requests, two failed (a server error, a bad request) and four
    succeeded; of their judgements, one is unscorable and three succeeded."""
    job = await session.get(Job, job_id)
    assert job is not None
    requests = list((await session.execute(select(Request).where(Request.job_id == job_id))).scalars())
    judge_id = (await config_ids(session, job_id))[ConfigRole.judge][0]
    _fail(requests[0], SERVER_ERROR)
    _fail(requests[1], "bad_request")
    for i, request in enumerate(requests[2:]):
        request.state, request.attempts = UnitState.succeeded, 1
        judgement = Judgement(id=uuid.uuid4(), job_id=job_id, request_id=request.id, judge_config_id=judge_id,
                              state=UnitState.succeeded, attempts=1)  # fmt: skip
        if i == 0:  # three answers that did not validate
            _fail(judgement, "unscorable")
            judgement.rate_limited, judgement.error_repeats, judgement.last_error = 0, 3, "invalid verdict"
        session.add(judgement)
    job.state, job.error = state, "something went wrong"
    job.started_at, job.finished_at = utcnow() - timedelta(minutes=5), utcnow() - timedelta(minutes=1)
    await session.commit()


async def _units(session: AsyncSession, job_id: uuid.UUID) -> dict[uuid.UUID, tuple[Any, ...]]:
    """Every unit of the job as (state, attempts, rate_limited, error_repeats, last_error, reason, detail, updated)."""
    out: dict[uuid.UUID, tuple[Any, ...]] = {}
    for model in (Request, Judgement):
        for u in (await session.execute(select(model).where(model.job_id == job_id))).scalars():
            await session.refresh(u)
            out[u.id] = (u.state, u.attempts, u.rate_limited, u.error_repeats, u.last_error, u.failure_reason,
                         u.failure_detail, u.leased_by, u.not_before, u.updated_at)  # fmt: skip
    return out


@pytest.mark.parametrize("ended", [JobState.failed, JobState.completed])
async def test_a_finished_jobs_failed_units_go_back_to_pending_and_the_job_runs_again(
    ended: JobState, client: httpx.AsyncClient, session: AsyncSession, starter: dict[str, Any], make_config: Any
) -> None:
    job_id = await _job(client, starter, make_config)
    await _finished(session, job_id, ended)
    before = await _units(session, job_id)
    started = (await client.get(f"/v1/jobs/{job_id}")).json()["started_at"]

    response = await client.post(f"/v1/jobs/{job_id}/retry")

    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "running" and job["finished_at"] is None and job["error"] is None
    assert job["started_at"] == started
    assert job["retried"] == {"requests": 2, "judgements": 1}
    assert job["progress"]["requests"] | {"total": 0} == {"total": 0, "pending": 2, "leased": 0, "succeeded": 4,
                                                          "failed": 0}  # fmt: skip
    assert job["progress"]["judgements"]["pending"] == 1 and job["errors_by_kind"] == {}
    after = await _units(session, job_id)
    reopened = {unit for unit, row in before.items() if row[0] is UnitState.failed}
    assert len(reopened) == 3
    for unit in reopened:  # as if never tried: a fresh budget for the retry policy
        unscorable = before[unit][5] == "unscorable"
        # but an unscorable judgement is asked again under the next re-ask's idempotency key, not the first one
        kept = (3, "invalid verdict") if unscorable else (0, None)
        assert after[unit][:9] == (UnitState.pending, 0, 0, *kept, None, None, None, None)
    assert {u: after[u] for u in before if u not in reopened} == {u: before[u] for u in before if u not in reopened}
    assert (await client.get(f"/v1/jobs/{job_id}")).json()["state"] == "running"


@pytest.mark.parametrize(
    ("body", "retried"),
    [
        ({"reasons": ["server_error"]}, {"requests": 1, "judgements": 0}),
        ({"reasons": [SERVER_ERROR, "unscorable"]}, {"requests": 1, "judgements": 1}),
        ({"reasons": ["bad_request", "server_error"], "phase": "requests"}, {"requests": 2, "judgements": 0}),
        ({"phase": "judgements"}, {"requests": 0, "judgements": 1}),
        ({"phase": "requests"}, {"requests": 2, "judgements": 0}),
        ({}, {"requests": 2, "judgements": 1}),
    ],
)
async def test_reasons_and_phase_choose_which_failed_units_go_back(
    body: dict[str, Any],
    retried: dict[str, int],
    client: httpx.AsyncClient,
    session: AsyncSession,
    starter: dict[str, Any],
    make_config: Any,
) -> None:
    job_id = await _job(client, starter, make_config)
    await _finished(session, job_id)
    response = await client.post(f"/v1/jobs/{job_id}/retry", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["retried"] == retried
    progress = response.json()["progress"]
    assert progress["requests"]["pending"] == retried["requests"]
    assert progress["requests"]["failed"] == 2 - retried["requests"]
    assert progress["judgements"]["pending"] == retried["judgements"]


async def test_a_job_that_is_not_finished_or_has_nothing_to_retry_is_a_conflict(
    client: httpx.AsyncClient, session: AsyncSession, starter: dict[str, Any], make_config: Any, problem: Any
) -> None:
    queued = await _job(client, starter, make_config)
    body = problem(await client.post(f"/v1/jobs/{queued}/retry"), 409)
    assert "is queued" in body["detail"] and body["errors"][0]["field"] == "state"

    cancelled = await _job(client, starter, make_config)
    await _finished(session, cancelled)
    assert (await client.post(f"/v1/jobs/{cancelled}/retry", json={"phase": "judgements"})).status_code == 202
    body = problem(await client.post(f"/v1/jobs/{cancelled}/retry"), 409)  # running now
    assert "is running" in body["detail"] and body["errors"][0] == {"field": "state", "message": "the job is running"}
    assert (await client.post(f"/v1/jobs/{cancelled}/cancel")).json()["state"] == "cancelled"
    body = problem(await client.post(f"/v1/jobs/{cancelled}/retry"), 409)
    assert "is cancelled" in body["detail"] and "new job" in body["detail"]

    finished = await _job(client, starter, make_config)
    await _finished(session, finished, JobState.completed)
    before = await _units(session, finished)
    body = problem(await client.post(f"/v1/jobs/{finished}/retry", json={"reasons": ["unscorable"],
                                                                       "phase": "requests"}), 409)  # fmt: skip
    assert (
        body["detail"].startswith("nothing to retry") and "failed requests with reason 'unscorable'" in body["detail"]
    )
    assert body["errors"][0]["field"] == "reasons"
    assert await _units(session, finished) == before
    assert (await client.get(f"/v1/jobs/{finished}")).json()["state"] == "completed"

    clean = await _job(client, starter, make_config)
    job = await session.get(Job, clean)
    assert job is not None
    job.state, job.finished_at = JobState.completed, utcnow()
    await session.commit()
    body = problem(await client.post(f"/v1/jobs/{clean}/retry"), 409)
    assert body["detail"] == f"nothing to retry: job {clean} has no failed units"
    problem(await client.post(f"/v1/jobs/{uuid.uuid4()}/retry"), 404)


async def test_an_unknown_reason_or_phase_is_refused_naming_the_field_and_the_valid_values(
    client: httpx.AsyncClient, session: AsyncSession, starter: dict[str, Any], make_config: Any, problem: Any
) -> None:
    job_id = await _job(client, starter, make_config)
    await _finished(session, job_id)
    before = await _units(session, job_id)

    body = problem(await client.post(f"/v1/jobs/{job_id}/retry", json={"reasons": ["server_error", "sever_eror"]}), 422)
    assert [e["field"] for e in body["errors"]] == ["reasons[1]"]
    for value in ("bad_request", "server_error", SERVER_ERROR, "unscorable"):
        assert value in body["errors"][0]["message"] and value in body["detail"]

    body = problem(await client.post(f"/v1/jobs/{job_id}/retry", json={"phase": "answers"}), 422)
    assert body["errors"][0]["field"] == "phase"
    assert "requests" in body["errors"][0]["message"] and "judgements" in body["errors"][0]["message"]

    for bad, field in (({"reasons": []}, "reasons"), ({"reason": ["x"]}, "reason"), ([1], "body")):
        body = problem(await client.post(f"/v1/jobs/{job_id}/retry", json=bad), 422)
        assert body["errors"][0]["field"] == field
    assert await _units(session, job_id) == before
    assert (await client.get(f"/v1/jobs/{job_id}")).json()["state"] == "failed"
