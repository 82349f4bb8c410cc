"""Fixtures for the execution engine: the fake provider, job factories (the committed ledger is tests/conftest.py's)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.datasets.service import ensure_starter
from service.jobs.schemas import JobCreate, JobFilters
from service.jobs.service import create_job
from service.model_configs.schemas import ModelConfigCreate
from service.model_configs.service import register
from service.settings import AuthSettings, ExecutorSettings, Settings
from tests.workers.processes import fake_process, run_env  # noqa: F401  (fixtures)
from workers.providers.fake import FakeConfig, FakeProvider

# the variable the configs' keys are in by default (set for the whole test session)
KEY_ENV = "FAKE_PROVIDER_KEY"
BASE_PATHS = {"openai": "/v1", "openai_compatible": "/v1", "anthropic": "", "google": ""}


@pytest.fixture
def work_settings(ledger_url: str) -> Settings:
    """Fast retries and small batches so that tests see every path quickly; API tokens off."""
    return Settings(
        database_url=ledger_url,
        auth=AuthSettings(required=False),
        executor=ExecutorSettings(
            backoff_base_s=0.01, backoff_cap_s=0.05, flush_interval_s=0.02, max_attempts=8, quarantine_after=5
        ),
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider(FakeConfig()) as server:
        yield server


@dataclass
class JobMaker:
    sessionmaker: async_sessionmaker[AsyncSession]
    settings: Settings

    async def __call__(
        self,
        fake: FakeProvider,
        models: list[tuple[str, str]],
        *,
        limit: int | None = 12,
        limits: dict[str, Any] | None = None,
        dataset_id: uuid.UUID | None = None,
        params: dict[str, Any] | None = None,
        judges: list[tuple[str, str]] | None = None,
        key_env: str = KEY_ENV,
        judge_key_env: str = KEY_ENV,
        **job: Any,
    ) -> uuid.UUID:
        """A job over ``limit`` starter cases for (provider, model) configs pointed at the fake, judged there too; the
        configs' keys in ``key_env`` and ``judge_key_env``."""
        async with self.sessionmaker() as session:
            judge_ids = [
                await self._register(session, fake, p, m, key_env=judge_key_env)
                for p, m in judges or [("openai", "judge-fake")]
            ]
            ids = [await self._register(session, fake, p, m, params, limits, key_env) for p, m in models]
            if dataset_id is None:
                dataset_id = (await ensure_starter(session)).id
            body = JobCreate(
                dataset_id=dataset_id,
                model_config_ids=ids,
                judge_config_ids=judge_ids,
                filters=JobFilters(limit=limit),
                **job,
            )
            created = await create_job(session, body, self.settings)
            await session.commit()
            return created.job.id

    async def _register(
        self,
        session: AsyncSession,
        fake: FakeProvider,
        provider: str,
        model: str,
        params: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        key_env: str = KEY_ENV,
    ) -> uuid.UUID:
        body = ModelConfigCreate.model_validate(
            {
                "name": f"{provider}-{model}-{uuid.uuid4().hex[:6]}",
                "provider": provider,
                "model": model,
                "base_url": fake.url + BASE_PATHS[provider],
                "api_key_env": key_env,
                "params": params or {},
                "limits": limits or {},
            }
        )
        return (await register(session, body, self.settings.providers)).config.id


@pytest.fixture
def make_job(ledger: async_sessionmaker[AsyncSession], work_settings: Settings) -> Callable[..., Any]:
    return JobMaker(ledger, work_settings)
