"""``GET /v1/jobs/{id}`` on a job whose units are written straight into the ledger: progress per phase and state,
errors by kind across both phases, tokens and spend (reused answers free), and the throughput window."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.base import utcnow
from service.db.models import Job, JobState, Judgement, Outcome, Request, Response, UnitState


async def test_status_counts_every_unit_once(
    client: httpx.AsyncClient, session: AsyncSession, starter: dict[str, Any], make_config: Any
) -> None:
    configs = [(await make_config())["id"] for _ in range(2)]
    body = {"dataset_id": starter["id"], "model_config_ids": configs, "filters": {"limit": 5}}
    job = (await client.post("/v1/jobs", json=body)).json()
    job_id, judge = uuid.UUID(job["id"]), uuid.UUID(job["judge_config_ids"][0])
    ids = list((await session.execute(select(Request.id).where(Request.job_id == job_id))).scalars())
    now, long_ago = utcnow(), utcnow() - timedelta(hours=2)
    answered, failed_now, failed_long_ago, leased = ids[:3], ids[3:5], ids[5], ids[6]
    await session.execute(update(Job).where(Job.id == job_id).values(state=JobState.running, started_at=long_ago))
    await session.execute(update(Request).where(Request.id.in_(answered)).values(state=UnitState.succeeded))
    await session.execute(
        update(Request).where(Request.id == failed_now[0]).values(state=UnitState.failed, failure_reason="bad_request")
    )
    await session.execute(update(Request).where(Request.id == failed_now[1]).values(state=UnitState.failed))
    await session.execute(
        update(Request)
        .where(Request.id == failed_long_ago)
        .values(state=UnitState.failed, failure_reason="bad_request", updated_at=long_ago)
    )
    await session.execute(update(Request).where(Request.id == leased).values(state=UnitState.leased))
    config_of = {r[0]: r[1] for r in (await session.execute(select(Request.id, Request.model_config_id))).all()}
    await session.execute(
        insert(Response),
        [{"request_id": r, "job_id": job_id, "model_config_id": config_of[r], "outcome": Outcome.answer, "text": "a",
          "cache_key": r.hex, "input_tokens": 10, "output_tokens": 5, "reasoning_tokens": 2, "cached_tokens": 1,
          "cost_usd": 0.25, "reused_from": ids[0] if r == answered[2] else None} for r in answered],
    )  # fmt: skip
    states = [(UnitState.succeeded, None), (UnitState.failed, "unscorable"), (UnitState.pending, None)]
    await session.execute(
        insert(Judgement),
        [{"id": uuid.uuid4(), "job_id": job_id, "request_id": r, "judge_config_id": judge, "state": state,
          "failure_reason": reason, "input_tokens": 100, "output_tokens": 20, "cost_usd": 0.125, "created_at": now}
         for r, (state, reason) in zip(answered, states, strict=True)],
    )  # fmt: skip
    await session.commit()

    status = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert status["progress"] == {
        "requests": {"total": 10, "pending": 3, "leased": 1, "succeeded": 3, "failed": 3},
        "judgements": {"total": 3, "pending": 1, "leased": 0, "succeeded": 1, "failed": 1},
    }
    assert status["errors_by_kind"] == {"bad_request": 2, "unknown": 1, "unscorable": 1}
    # two answers paid for (the third was reused) and three judge calls
    assert status["tokens"] == {"input": 2 * 10 + 3 * 100, "output": 2 * 5 + 3 * 20, "reasoning": 4, "cached": 2}
    assert status["cost_usd"] == 2 * 0.25 + 3 * 0.125
    # final in the last minute: 3 answered + 2 failed requests, 2 judgements; not the failure of two hours ago
    assert status["calls_per_second"] == round(7 / 60, 3)
    assert status["eta_seconds"] is not None
    # failed units are final while the job runs: they are warned of at once
    assert status["warnings"] == ["3 of 10 requests failed (bad_request: 2, unknown: 1)",
                                  "1 of 3 judgements failed (unscorable: 1)"]  # fmt: skip
    await session.execute(update(Job).where(Job.id == job_id).values(state=JobState.cancelled))
    await session.commit()
    # once it has ended, a failed judgement is an answer left unjudged, and what never ran is said too
    assert (await client.get(f"/v1/jobs/{job_id}")).json()["warnings"] == [
        "3 of 10 requests failed (bad_request: 2, unknown: 1)",
        "1 answer stayed unjudged (judge failed: unscorable: 1)",
        "4 of 10 requests were never run",
        "1 answer was never judged",
    ]
