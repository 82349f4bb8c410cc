"""Registering model configs: immutable, found again by their definition."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import ModelConfig, Provider
from service.errors import Conflict, FieldError, NotFound, ValidationFailed, field_errors, unknown_value
from service.model_configs import repository
from service.model_configs.repository import get_by_name
from service.model_configs.schemas import Limits, ModelConfigCreate, ModelConfigPatch, Params, provider_problems
from service.settings import DefaultJudge, ProviderSettings, Settings


@dataclass(frozen=True)
class Registered:
    config: ModelConfig
    created: bool


async def register(session: AsyncSession, body: ModelConfigCreate, providers: ProviderSettings) -> Registered:
    """Store a new config, or return the one registered with the same body. Flushes; the caller commits.

    A config whose key variable may not be sent to its host (``providers.key_hosts``) is refused, naming the field:
    the worker would refuse it anyway, and a refusal now tells whoever sent it at once."""
    problems = provider_problems(body)
    if problems:
        raise ValidationFailed(f"the config does not fit provider {body.provider.value}: {problems[0]}", problems)
    refusal = providers.refusal(body.provider.value, body.base_url, body.api_key_env)
    if refusal is not None:
        raise ValidationFailed(
            f"model config {body.name!r} may not call where it says: {refusal.field}: {refusal.message}",
            [FieldError(refusal.field, refusal.message)],
        )
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
    if _body_of(existing, Limits.model_validate(body.limits.model_dump())).definition_hash() == body.definition_hash():
        raise Conflict(
            f"model config {body.name!r} is registered with other limits",
            [FieldError("limits", f"differ from the registered ones; change them with PATCH /v1/model-configs/"
                                  f"{existing.id}")],
        )  # fmt: skip
    raise Conflict(
        f"a different model config is already registered as {body.name!r}; configs are immutable",
        [FieldError("name", "in use by a config with other settings; register the new one under a new name")],
    )


def _body_of(config: ModelConfig, limits: Limits) -> ModelConfigCreate:
    """The registration body of a stored config, with the given limits."""
    return ModelConfigCreate(
        name=config.name,
        provider=config.provider,
        model=config.model,
        base_url=config.base_url,
        api_key_env=config.api_key_env,
        params=Params.model_validate(config.params),
        limits=limits,
    )


async def update_limits(session: AsyncSession, config_id: uuid.UUID, patch: ModelConfigPatch) -> ModelConfig:
    """Merge new limits into a config (running jobs pick them up within seconds). Flushes; the caller commits."""
    immutable = sorted((patch.model_extra or {}).keys())
    if immutable:
        problems = [FieldError(name, "immutable: register a new config to change it") for name in immutable]
        raise ValidationFailed("only a model config's limits can change", problems)
    config = await get(session, config_id)
    merged = {key: value for key, value in {**config.limits, **patch.limits}.items() if value is not None}
    try:
        limits = Limits.model_validate(merged)
    except ValidationError as exc:
        problems = field_errors(exc.errors(), ("limits",))
        raise ValidationFailed(f"invalid limits: {problems[0]}", problems) from None
    config.limits = limits.model_dump(exclude_none=True)
    # the same body posted again (with the new limits) finds this config
    config.definition_hash = _body_of(config, limits).definition_hash()
    await session.flush()
    return config


async def get(session: AsyncSession, config_id: uuid.UUID) -> ModelConfig:
    config = await session.get(ModelConfig, config_id)
    if config is None:
        raise NotFound(f"no model config {config_id}")
    return config


async def resolve(session: AsyncSession, ref: str) -> ModelConfig:
    """A config by id or by name; an unknown one is a ``NotFound`` naming the closest name and the others."""
    config: ModelConfig | None
    try:
        config = await session.get(ModelConfig, uuid.UUID(ref))
    except ValueError:
        config = await get_by_name(session, ref)
    if config is None:
        known = await repository.names(session)
        raise NotFound(unknown_value("model config", ref, known))
    return config


async def register_default_judge(session: AsyncSession, settings: Settings) -> ModelConfig:
    """The service's default judge, registered on first use; one the provider rules refuse (an operator's
    ``default_judge`` and ``providers.key_hosts`` that disagree) is a 422 naming ``judge_config_ids``."""
    try:
        return (await register(session, default_judge_body(settings.default_judge), settings.providers)).config
    except ValidationFailed as exc:
        message = f"the service's default judge cannot be used ({exc.detail}); name a judge"
        raise ValidationFailed(message, [FieldError("judge_config_ids", message)]) from None


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
