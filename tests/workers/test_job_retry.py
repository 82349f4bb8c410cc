"""Retrying a job through the API with the embedded runner: what failed is called again, what succeeded is not."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.app import create_app
from service.db.models import Judgement, Request, UnitState
from service.settings import Settings
from workers.providers.fake import FakeConfig, FakeProvider


async def _ended(client: httpx.AsyncClient, job_id: uuid.UUID) -> dict[str, Any]:
    """The job's status once it has ended (the embedded runner works on it meanwhile)."""
    async with asyncio.timeout(90):
        while True:
            status: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}")).json()
            if status["state"] in ("completed", "failed", "cancelled"):
                return status
            await asyncio.sleep(0.1)


async def _unit_ids(sessionmaker: async_sessionmaker[AsyncSession], job_id: uuid.UUID, state: UnitState) -> set[str]:
    async with sessionmaker() as session:
        found: set[str] = set()
        for model in (Request, Judgement):
            query = select(model.id).where(model.job_id == job_id, model.state == state)
            found |= {str(i) for i in (await session.execute(query)).scalars()}
    return found


def _calls_of(units: set[str], by_key: dict[str, int]) -> dict[str, int]:
    """The fake's calls per Idempotency-Key, for these units (a judge's re-asks carry ``<unit>:reask-N``)."""
    return {key: n for key, n in by_key.items() if key.split(":")[0] in units}


async def test_a_retried_job_runs_what_failed_to_completion_and_calls_nothing_that_succeeded(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, make_job: Any
) -> None:
    # one call in four answers 500 and is not tried again (one attempt each), and half the judge's answers do not
    # validate (two asks each): some requests and some judgements fail, some of them unscorable
    executor = work_settings.executor.model_copy(update={"max_attempts": 1, "judge_parse_attempts": 2})
    settings = work_settings.model_copy(update={"executor": executor})
    config = FakeConfig(faults={"rate_500": 0.25}, judge_invalid_rate=0.5, seed=7)
    async with FakeProvider(config) as fake:
        job_id = await make_job(fake, [("openai", "fake-a"), ("anthropic", "fake-b")], limit=20)
        app = create_app(settings, sessionmaker=ledger, run_jobs=True)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
                first = await _ended(client, job_id)
                failed = {phase: first["progress"][phase]["failed"] for phase in ("requests", "judgements")}
                assert first["state"] == "completed" and failed["requests"] > 0 and failed["judgements"] > 0
                assert any(reason.startswith("server_error") for reason in first["errors_by_kind"])
                assert first["errors_by_kind"].get("unscorable", 0) > 0
                succeeded = await _unit_ids(ledger, job_id, UnitState.succeeded)
                retried = await _unit_ids(ledger, job_id, UnitState.failed)
                before = (await fake.ledger(by_unit=True))["by_unit"]

                fake.update(faults={"rate_500": 0.0}, judge_invalid_rate=0.0)
                response = await client.post(f"/v1/jobs/{job_id}/retry")
                assert response.status_code == 202, response.text
                assert response.json()["state"] == "running" and response.json()["retried"] == failed
                second = await _ended(client, job_id)

    assert second["state"] == "completed" and second["errors_by_kind"] == {}
    assert second["progress"]["requests"] == {"total": 40, "pending": 0, "leased": 0, "succeeded": 40, "failed": 0}
    # every request that succeeded at last has been judged, those that failed the first time too
    assert second["progress"]["judgements"] == {"total": 40, "pending": 0, "leased": 0, "succeeded": 40, "failed": 0}
    after = (await fake.ledger(by_unit=True))["by_unit"]
    assert _calls_of(succeeded, after) == _calls_of(succeeded, before)  # not one call more for what had succeeded
    for unit in retried:
        assert sum(_calls_of({unit}, after).values()) > sum(_calls_of({unit}, before).values()), unit
