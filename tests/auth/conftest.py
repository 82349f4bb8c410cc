"""Fixtures for access control: the API with tokens on, tokens made through the service layer, row counts."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.app import create_app
from service.auth.schemas import TokenCreate
from service.auth.service import create_token
from service.datasets.service import ensure_starter
from service.db.models import ApiToken, Dataset, Job, ModelConfig
from service.jobs.schemas import JobCreate, JobFilters
from service.jobs.service import create_job
from service.model_configs.schemas import ModelConfigCreate
from service.model_configs.service import register
from service.settings import AuthSettings, Settings

Issue = Callable[..., Awaitable[str]]
Snapshot = Callable[[], Awaitable[dict[str, Any]]]


@pytest.fixture
def secured_app(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> FastAPI:
    """The API with tokens required, on the test's rolled-back connection."""
    return create_app(settings.model_copy(update={"auth": AuthSettings(required=True)}), sessionmaker=sessionmaker)


@pytest.fixture
async def secured(secured_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``secured_app``, in-process (lifespan included)."""
    app = secured_app
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://defeater.test") as http:
            yield http


@pytest.fixture
def issue(sessionmaker: async_sessionmaker[AsyncSession]) -> Issue:
    """Make a token with these scopes: ``await issue("read", name=...)`` returns the token itself."""
    numbers = itertools.count()

    async def make(*scopes: str, name: str | None = None) -> str:
        body = TokenCreate.model_validate({"name": name or f"token-{next(numbers)}", "scopes": list(scopes)})
        async with sessionmaker() as session:
            issued = await create_token(session, body)
            await session.commit()
        return issued.plaintext

    return make


@dataclass(frozen=True)
class World:
    """What the requests under test point at: the starter dataset, a config and a queued job."""

    dataset_id: str
    config_id: str
    job_id: str


@pytest.fixture
async def world(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> World:
    async with sessionmaker() as session:
        starter = await ensure_starter(session)
        body = ModelConfigCreate(name="existing", provider="openai", model="m")
        config = (await register(session, body, settings.providers)).config
        body = JobCreate(dataset_id=starter.id, model_config_ids=[config.id], filters=JobFilters(limit=2))
        job = (await create_job(session, body, settings)).job
        await session.commit()
    return World(str(starter.id), str(config.id), str(job.id))


@pytest.fixture
def snapshot(sessionmaker: async_sessionmaker[AsyncSession], world: World) -> Snapshot:
    """What a refused request must leave as it was: row counts, the job's state, the config's limits."""

    async def take() -> dict[str, Any]:
        tables: dict[str, Any] = {"datasets": Dataset, "model_configs": ModelConfig, "jobs": Job, "tokens": ApiToken}
        async with sessionmaker() as session:
            found: dict[str, Any] = {
                n: await session.scalar(select(func.count()).select_from(t)) for n, t in tables.items()
            }
            found["job_state"] = await session.scalar(select(Job.state).where(Job.id == uuid.UUID(world.job_id)))
            found["limits"] = await session.scalar(
                select(ModelConfig.limits).where(ModelConfig.id == uuid.UUID(world.config_id))
            )
        return found

    return take


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
