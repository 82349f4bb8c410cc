"""The embedded executor against the fake provider, through the real SDKs."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.models import Job, JobState, Judgement, ModelConfig, Request, Response, UnitState
from service.jobs.schemas import JobRead
from service.jobs.service import get_job, read_job
from service.model_configs.schemas import ModelConfigPatch
from service.model_configs.service import update_limits
from service.settings import Settings
from workers.executor import ledger as ledger_sql
from workers.executor.embedded import EmbeddedExecutor, RunOutcome
from workers.providers.fake import FakeConfig, FakeProvider
from workers.tasks import Runtime

WIRES = [("openai", "fake-gpt"), ("anthropic", "fake-claude"), ("google", "fake-gemini")]


async def run(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, job_id: uuid.UUID) -> RunOutcome:
    runtime = Runtime.build(settings)
    try:
        return await EmbeddedExecutor(runtime, sessionmaker).run_job(job_id)
    finally:
        await runtime.adapters.aclose()


async def states(sessionmaker: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> dict[str, int]:
    async with sessionmaker() as session:
        query = select(Request.state, func.count()).where(Request.job_id == job_id).group_by(Request.state)
        return {UnitState(s).value: n for s, n in (await session.execute(query)).all()}


async def responses(sessionmaker: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> list[Response]:
    async with sessionmaker() as session:
        return list((await session.execute(select(Response).where(Response.job_id == job_id))).scalars())


async def test_every_wire_format_completes_a_job(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, fake: FakeProvider, make_job: Any
) -> None:
    job_id = await make_job(fake, WIRES)
    outcome = await run(ledger, work_settings, job_id)
    assert outcome.state == "completed"
    assert await states(ledger, job_id) == {"succeeded": 36}
    stored = await responses(ledger, job_id)
    assert len(stored) == 36
    assert all(r.text and r.input_tokens and r.output_tokens and r.latency_ms is not None for r in stored)
    assert all(r.provider_request_id for r in stored)
    ledger_ = await fake.ledger()
    assert ledger_["successes"] == 72 and ledger_["duplicate_successes"] == 0  # 36 answers, 36 judge calls
    assert ledger_["idempotent_replays"] == 0  # nothing was asked twice
    async with ledger() as session:
        judged = (await session.execute(select(Judgement).where(Judgement.job_id == job_id))).scalars().all()
    assert len(judged) == 36 and all(j.state is UnitState.succeeded for j in judged)
    assert all(j.response_type and j.engages_with_defeat is not None and j.prompt_version for j in judged)
    async with ledger() as session:
        job = await session.get(Job, job_id)
        assert job is not None and job.state.value == "completed" and job.finished_at is not None


async def test_faults_at_ten_percent_each_still_finish_every_request(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, make_job: Any
) -> None:
    faults = {
        "rate_429": 0.1, "rate_500": 0.1, "rate_529": 0.1, "rate_hang": 0.1, "rate_drop": 0.1,
        "rate_malformed": 0.1, "rate_content_filter": 0.1,
    }  # fmt: skip
    settings = work_settings.model_copy(
        update={"providers": work_settings.providers.model_copy(update={"timeout_s": 1.0})}
    )
    async with FakeProvider(FakeConfig(faults=faults, hang_s=3.0, seed=7)) as fake:
        job_id = await make_job(fake, WIRES, limit=15)
        outcome = await run(ledger, settings, job_id)
        counts = await states(ledger, job_id)
        assert outcome.state == "completed"
        assert sum(counts.values()) == 45 and set(counts) <= {"succeeded", "failed"}
        assert counts["succeeded"] >= 35
        async with ledger() as session:
            failed = (
                await session.execute(
                    select(Request).where(Request.job_id == job_id, Request.state == UnitState.failed)
                )
            ).scalars()
            assert all(r.failure_reason and r.failure_detail for r in failed)
        filtered = [r for r in await responses(ledger, job_id) if r.outcome.value == "content_filtered"]
        assert filtered and all(r.finish_reason == "content_filter" for r in filtered)
        assert (await fake.ledger())["duplicate_successes"] == 0
        async with ledger() as session:
            query = select(Judgement.state, func.count()).where(Judgement.job_id == job_id).group_by(Judgement.state)
            judged = dict((await session.execute(query)).all())
        answers = sum(1 for r in await responses(ledger, job_id) if r.outcome.value == "answer")
        assert sum(judged.values()) == answers and set(judged) <= {UnitState.succeeded, UnitState.failed}


async def job_status(sessionmaker: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> JobRead:
    """The job's status as ``GET /v1/jobs/{id}`` shows it."""
    async with sessionmaker() as session:
        return await read_job(session, await get_job(session, job_id))


async def config_name(sessionmaker: async_sessionmaker[AsyncSession], config_id: uuid.UUID) -> str:
    async with sessionmaker() as session:
        config = await session.get(ModelConfig, config_id)
        assert config is not None
        return config.name


@pytest.mark.parametrize("role", ["model", "judge"])
async def test_a_missing_key_fails_the_job_before_any_call_is_paid(
    ledger: async_sessionmaker[AsyncSession],
    work_settings: Settings,
    fake: FakeProvider,
    make_job: Any,
    monkeypatch: Any,
    role: str,
) -> None:
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    keys = {"key_env": "NOT_SET_KEY"} if role == "model" else {"judge_key_env": "NOT_SET_KEY"}
    job_id = await make_job(fake, [("openai", "fake-gpt")], limit=3, **keys)
    outcome = await run(ledger, work_settings, job_id)
    assert outcome.state == "failed"
    assert (await fake.ledger())["calls"] == 0  # not one target call paid for an answer nobody could judge
    status = await job_status(ledger, job_id)
    config_id = (status.model_config_ids if role == "model" else status.judge_config_ids)[0]
    error = f'{role} "{await config_name(ledger, config_id)}" needs NOT_SET_KEY, which is not set'
    assert status.state is JobState.failed and status.error == error and status.finished_at is not None
    # the counts are final: every request failed, for that reason
    assert status.progress.requests.failed == 3 and status.errors_by_kind == {"missing_key": 3}
    assert status.warnings == ["3 of 3 requests failed (missing_key: 3)"]
    async with ledger() as session:
        rows = (await session.execute(select(Request).where(Request.job_id == job_id))).scalars().all()
    assert all(r.failure_detail == error and r.attempts == 0 for r in rows)
    # a later run (the key set by then) finds the job ended and calls nothing
    monkeypatch.setenv("NOT_SET_KEY", "now-set")
    assert (await run(ledger, work_settings, job_id)).state == "failed"
    assert (await fake.ledger())["calls"] == 0


async def test_every_config_missing_its_key_is_named(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, fake: FakeProvider, make_job: Any
) -> None:
    job_id = await make_job(
        fake, [("openai", "fake-a"), ("anthropic", "fake-b")], limit=2, key_env="NO_KEY_A", judge_key_env="NO_KEY_B"
    )
    assert (await run(ledger, work_settings, job_id)).state == "failed"
    status = await job_status(ledger, job_id)
    names = [await config_name(ledger, i) for i in [*status.model_config_ids, *status.judge_config_ids]]
    assert status.error == "; ".join(
        [f'model "{names[0]}" needs NO_KEY_A, which is not set', f'model "{names[1]}" needs NO_KEY_A, which is not set',
         f'judge "{names[2]}" needs NO_KEY_B, which is not set']
    )  # fmt: skip
    assert (await fake.ledger())["calls"] == 0


async def test_a_job_with_no_judged_answer_fails_saying_why(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, make_job: Any
) -> None:
    async with FakeProvider(FakeConfig(faults={"rate_content_filter": 1.0})) as fake:
        job_id = await make_job(fake, [("openai", "fake-filtered")], limit=3)
        outcome = await run(ledger, work_settings, job_id)
    # every call answered, but no answer was there to judge: nothing to report a rate on
    assert outcome.state == "failed"
    status = await job_status(ledger, job_id)
    assert status.progress.requests.succeeded == 3 and status.progress.judgements.total == 0
    assert status.error == "no answer was judged: no response was an answer to judge"


async def test_an_identical_call_is_reused_not_paid_again(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, fake: FakeProvider, make_job: Any
) -> None:
    first = await make_job(fake, [("openai", "fake-reuse")], limit=5)
    await run(ledger, work_settings, first)
    second = await make_job(fake, [("openai", "fake-reuse")], limit=5)
    outcome = await run(ledger, work_settings, second)
    assert outcome.stats.reused == 5
    assert (await fake.ledger())["by_model"]["fake-reuse"]["successes"] == 5  # the target was not called again
    reused = await responses(ledger, second)
    originals = {r.request_id: r.text for r in await responses(ledger, first)}
    assert all(r.reused_from in originals and r.text == originals[r.reused_from] and r.cost_usd == 0 for r in reused)
    fresh = await make_job(fake, [("openai", "fake-reuse")], limit=5, use_cache=False)
    await run(ledger, work_settings, fresh)
    assert (await fake.ledger())["by_model"]["fake-reuse"]["successes"] == 10


async def test_rate_limits_hold_and_a_429_pauses_the_key(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, make_job: Any
) -> None:
    async with FakeProvider(FakeConfig(limits={"*": {"rpm": 120}})) as fake:
        job_id = await make_job(fake, [("openai", "fake-paced")], limit=10, limits={"rpm": 120})
        outcome = await run(ledger, work_settings, job_id)
        entry = (await fake.ledger())["by_model"]["fake-paced"]
        assert outcome.state == "completed" and entry["successes"] == 10
        assert entry["rate_limited"] == 0
        # n successes span n - 1 gaps: the even pacing gives (n - 1) / span <= the limit
        assert entry["achieved_rpm"] * 9 / 10 <= 120
    async with FakeProvider(FakeConfig(faults={"rate_429": 0.4}, seed=3)) as fake:
        # 429s with `retry-after: 1`: the key pauses for everyone, the requests wait and then succeed
        job_id = await make_job(fake, [("anthropic", "fake-overdriven")], limit=6)
        started = time.monotonic()
        outcome = await run(ledger, work_settings, job_id)
        assert outcome.state == "completed" and outcome.stats.rate_limited >= 1
        assert time.monotonic() - started >= 1.0
        assert await states(ledger, job_id) == {"succeeded": 6}
        async with ledger() as session:
            query = select(func.sum(Request.rate_limited), func.max(Request.attempts)).where(Request.job_id == job_id)
            limited, attempts = (await session.execute(query)).one()
            query = select(func.sum(Judgement.rate_limited)).where(Judgement.job_id == job_id)
            limited += (await session.execute(query)).scalar_one() or 0
        assert limited == outcome.stats.rate_limited and attempts >= 2  # targets and judges, each counted


async def test_a_budget_pauses_the_job_and_resume_continues(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, fake: FakeProvider, make_job: Any
) -> None:
    job_id = await make_job(fake, [("openai", "fake-budget")], limit=20, budget_usd=1e-9, limits={"max_concurrency": 2})
    outcome = await run(ledger, work_settings, job_id)
    assert outcome.state == "paused"
    counts = await states(ledger, job_id)
    assert counts.get("pending", 0) >= 16 and "leased" not in counts  # the calls in flight finished, no more
    async with ledger() as session:
        job = await session.get(Job, job_id)
        assert job is not None and job.paused_reason == "budget" and job.started_at is not None
        first_start = job.started_at
        job.budget_usd = 100.0
        await session.commit()
    assert (await run(ledger, work_settings, job_id)).state == "completed"
    async with ledger() as session:
        job = await session.get(Job, job_id)
        assert job is not None and job.started_at == first_start and job.paused_reason is None
    assert await states(ledger, job_id) == {"succeeded": 20}
    assert (await fake.ledger())["duplicate_successes"] == 0


async def test_cancel_stops_dispatching_and_keeps_what_finished(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, make_job: Any
) -> None:
    async with FakeProvider(FakeConfig(latency={"distribution": "fixed", "mean_s": 0.2})) as fake:
        job_id = await make_job(fake, [("openai", "fake-slow")], limit=60, limits={"max_concurrency": 4})
        task = asyncio.create_task(run(ledger, work_settings, job_id))
        await asyncio.sleep(0.8)
        async with ledger() as session:
            job = await session.get(Job, job_id)
            assert job is not None
            job.state = JobState.cancelled
            await session.commit()
        outcome = await task
    assert outcome.state == "cancelled"
    counts = await states(ledger, job_id)
    assert 0 < counts["succeeded"] < 60 and "leased" not in counts
    assert len(await responses(ledger, job_id)) == counts["succeeded"]


async def test_a_limit_changed_while_the_job_runs_takes_effect_within_seconds(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, make_job: Any
) -> None:
    settings = work_settings.model_copy(
        update={"executor": work_settings.executor.model_copy(update={"limits_refresh_s": 0.2})}
    )
    async with FakeProvider(FakeConfig()) as fake:
        # 12 calls at 20 rpm would take 33 s; the limit is raised after the first call
        job_id = await make_job(fake, [("openai", "fake-slow-key")], limit=12, limits={"rpm": 20})
        started = time.monotonic()
        running = asyncio.create_task(run(ledger, settings, job_id))
        while (await fake.ledger())["by_model"].get("fake-slow-key", {}).get("successes", 0) < 1:
            await asyncio.sleep(0.05)
        async with ledger() as session:
            config_id = (
                await session.execute(select(Request.model_config_id).where(Request.job_id == job_id))
            ).scalar()
            assert config_id is not None
            await update_limits(session, config_id, ModelConfigPatch(limits={"rpm": 6_000}))
            await session.commit()
        outcome = await running
        assert outcome.state == "completed" and await states(ledger, job_id) == {"succeeded": 12}
        assert time.monotonic() - started < 8


async def test_stopping_drops_the_calls_still_waiting_for_a_rate_slot(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, fake: FakeProvider, make_job: Any
) -> None:
    # 12 calls at 6 a minute: one now, the next in 10 s; stopping must not wait for those slots
    job_id = await make_job(fake, [("openai", "fake-gpt")], limits={"rpm": 6})
    runtime = Runtime.build(work_settings)
    executor = EmbeddedExecutor(runtime, ledger)
    try:
        running = asyncio.create_task(executor.run_job(job_id))
        while (await fake.ledger())["successes"] < 1:
            await asyncio.sleep(0.05)
        started = time.monotonic()
        executor.stop()
        outcome = await running
    finally:
        await runtime.adapters.aclose()
    assert outcome.state == "stopped" and time.monotonic() - started < 5
    # the first answer is kept; the rest, never sent, are pending again (no lease left behind)
    assert (await fake.ledger())["by_model"]["fake-gpt"]["calls"] == 1
    assert await states(ledger, job_id) == {"succeeded": 1, "pending": 11}


@pytest.mark.parametrize("read", ["claim", "prompts", "judge_contexts"])
async def test_units_leased_when_the_database_drops_are_given_back_not_held_forever(
    ledger: async_sessionmaker[AsyncSession],
    work_settings: Settings,
    fake: FakeProvider,
    make_job: Any,
    monkeypatch: Any,
    read: str,
) -> None:
    # the connection drops as a batch is leased (the lease commits, its answer is lost), or right after, while what
    # its calls need is read: those units must be run (here by the same run, once the database answers), not kept
    # leased by a live process that will never run them (the job then never ends, or waits for the leases to expire)
    real = getattr(ledger_sql, read)
    dropped = []

    async def drop_once(session: AsyncSession, *args: Any) -> Any:
        if dropped:
            return await real(session, *args)
        dropped.append(await real(session, *args) if read == "claim" else args)
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        raise ConnectionResetError("the database went away")

    monkeypatch.setattr(ledger_sql, read, drop_once)
    job_id = await make_job(fake, [("openai", "fake-gpt")], limit=6)
    outcome = await asyncio.wait_for(run(ledger, work_settings, job_id), 30)  # leases last 60 s: not by expiry
    assert dropped and dropped[0] and outcome.state == "completed"
    assert await states(ledger, job_id) == {"succeeded": 6}
    async with ledger() as session:
        judged = (await session.execute(select(Judgement.state).where(Judgement.job_id == job_id))).scalars().all()
    assert sorted(j.value for j in judged) == ["succeeded"] * 6
    assert (await fake.ledger())["duplicate_successes"] == 0
