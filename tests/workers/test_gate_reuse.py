"""A regression gate whose baseline answers come from an earlier job through the response cache: the baseline model
is not called again, and the gate still pairs the candidate with it on the same cases.

Here rather than in tests/gates because it runs jobs through the executor against the fake provider, with this
folder's fixtures."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.models import ConfigRole, Response
from service.gates.service import evaluate_job, set_gate
from service.jobs import repository as jobs_repo
from service.jobs.schemas import GateCheck, GateSpec
from service.jobs.service import get_job
from service.settings import Settings
from tests.workers.test_executor import run
from workers.providers.fake import FakeConfig, FakeProvider
from workers.providers.fake.config import ModelProfile

PROFILES = {
    "fake-strong": ModelProfile(helps=0.95, hard_refusal=0.05, deflection=0),
    "fake-weak": ModelProfile(helps=0.05, hard_refusal=0.95, deflection=0),
}


async def test_a_regression_gate_reuses_the_baselines_answers_from_an_earlier_job(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, make_job: Any
) -> None:
    async with FakeProvider(FakeConfig(models=PROFILES)) as fake:
        first = await make_job(fake, [("openai", "fake-strong")], limit=40)
        await run(ledger, work_settings, first)
        # the strong model again (a new config, the same fingerprint), beside a weak candidate; gated on the strong
        second = await make_job(fake, [("openai", "fake-weak"), ("openai", "fake-strong")], limit=40)
        async with ledger() as session:
            baseline = (await jobs_repo.config_ids(session, second))[ConfigRole.target][1]
            gate = GateSpec(checks=[GateCheck(metric="helps_rate", cases="defeated", baseline=str(baseline))])
            await set_gate(session, await get_job(session, second), gate)
            await session.commit()
        outcome = await run(ledger, work_settings, second)
        book = (await fake.ledger())["by_model"]

    assert outcome.state == "completed" and outcome.stats.reused == 40
    assert book["fake-strong"]["successes"] == 40  # called for the first job only
    assert book["fake-weak"]["successes"] == 40
    async with ledger() as session:
        reused = (
            await session.execute(
                select(Response.reused_from).where(Response.job_id == second, Response.model_config_id == baseline)
            )
        ).all()
        assert len(reused) == 40 and all(r.reused_from is not None for r in reused)
        result = await evaluate_job(session, await get_job(session, second))

    assert result.verdict == "fail" and result.final
    [config] = result.configs
    [check] = config.checks
    assert check.baseline_model_config_id == baseline and check.verdict == "fail"
    assert check.n > 20 and check.p_value is not None and check.p_value < 0.05
    assert check.figure is not None and check.baseline_figure is not None and check.figure < check.baseline_figure
