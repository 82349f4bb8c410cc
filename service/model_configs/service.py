"""Registering model configs: immutable, found again by their definition."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import ModelConfig, Provider
from service.errors import Conflict, FieldError, NotFound, ValidationFailed
from service.model_configs.repository import get_by_name
from service.model_configs.schemas import Limits, ModelConfigCreate, Params, provider_problems
from service.settings import DefaultJudge


@dataclass(frozen=True)
class Registered:
    config: ModelConfig
    created: bool


async def register(session: AsyncSession, body: ModelConfigCreate) -> Registered:
    """Store a new config, or return the one registered with the same body. Flushes; the caller commits."""
    problems = provider_problems(body)
    if problems:
        raise ValidationFailed(f"the config does not fit provider {body.provider.value}: {problems[0]}", problems)
    existing = await get_by_name(session, body.name)
    if existing is not None:
        return _same_or_conflict(existing, body)
    config = ModelConfig(
        id=uuid.uuid4(),
        name=body.name,
        provider=body.provider,
        model=body.model,
        base_url=body.base_url,
        api_key_env=body.api_key_env,
        params=body.params.model_dump(exclude_none=True),
        limits=body.limits.model_dump(exclude_none=True),
        fingerprint=body.fingerprint(),
        definition_hash=body.definition_hash(),
    )
    try:
        async with session.begin_nested():
            session.add(config)
            await session.flush()
    except IntegrityError:
        existing = await get_by_name(session, body.name)
        if existing is None:
            raise
        return _same_or_conflict(existing, body)
    return Registered(config, created=True)


def _same_or_conflict(existing: ModelConfig, body: ModelConfigCreate) -> Registered:
    if existing.definition_hash == body.definition_hash():
        return Registered(existing, created=False)
    raise Conflict(
        f"a different model config is already registered as {body.name!r}; configs are immutable",
        [FieldError("name", "in use by a config with other settings; register the new one under a new name")],
    )


async def get(session: AsyncSession, config_id: uuid.UUID) -> ModelConfig:
    config = await session.get(ModelConfig, config_id)
    if config is None:
        raise NotFound(f"no model config {config_id}")
    return config


async def resolve(session: AsyncSession, ref: str) -> ModelConfig:
    """A config by id or by name."""
    config: ModelConfig | None
    try:
        config = await session.get(ModelConfig, uuid.UUID(ref))
    except ValueError:
        config = await get_by_name(session, ref)
    if config is None:
        raise NotFound(f"no model config {ref!r}")
    return config


def default_judge_body(judge: DefaultJudge) -> ModelConfigCreate:
    return ModelConfigCreate(
        name=judge.name,
        provider=Provider(judge.provider),
        model=judge.model,
        base_url=judge.base_url,
        api_key_env=judge.api_key_env,
        params=Params(max_tokens=judge.max_tokens, reasoning=judge.reasoning),
        limits=Limits(),
    )
