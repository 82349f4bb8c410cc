"""``/v1/model-configs``: register, list and read model configs."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from service.deps import SessionDep, SettingsDep
from service.model_configs import repository, service
from service.model_configs.schemas import ModelConfigCreate, ModelConfigPatch, ModelConfigRead
from service.pagination import Page, decode_cursor, encode_cursor, text
from service.problems import problem

router = APIRouter(prefix="/v1/model-configs", tags=["model configs"])


@router.post(
    "",
    status_code=201,
    response_model=ModelConfigRead,
    responses={
        200: {"description": "an identical config was already registered", "model": ModelConfigRead},
        409: problem("the name is taken by a config with other settings or limits"),
    },
)
async def register_model_config(
    body: ModelConfigCreate, session: SessionDep, settings: SettingsDep, response: Response
) -> ModelConfigRead:
    """Register a config; posting an identical one again returns the existing config with 200.

    ``api_key_env`` must be a variable the operator lets configs use, and ``base_url`` one of the hosts its key may be
    sent to (a config without a key: a host the operator lets such configs call); anything else is a 422 naming the
    field (docs/security.md, "Provider keys")."""
    registered = await service.register(session, body, settings.providers)
    await session.commit()
    if not registered.created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/model-configs/{registered.config.id}"
    return ModelConfigRead.model_validate(registered.config)


@router.get("", response_model=Page[ModelConfigRead])
async def list_model_configs(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> Page[ModelConfigRead]:
    after = decode_cursor(cursor, text)[0] if cursor else None
    rows = await repository.list_page(session, limit + 1, after)
    items = [ModelConfigRead.model_validate(r) for r in rows[:limit]]
    next_cursor = encode_cursor(items[-1].name) if len(rows) > limit else None
    return Page[ModelConfigRead](items=items, next_cursor=next_cursor)


@router.get("/{config_id}", response_model=ModelConfigRead, responses={404: problem("no such model config")})
async def read_model_config(config_id: uuid.UUID, session: SessionDep) -> ModelConfigRead:
    return ModelConfigRead.model_validate(await service.get(session, config_id))


@router.patch("/{config_id}", response_model=ModelConfigRead, responses={404: problem("no such model config")})
async def update_model_config_limits(
    config_id: uuid.UUID, body: ModelConfigPatch, session: SessionDep
) -> ModelConfigRead:
    """Change a config's limits (rpm, tpm, max_concurrency); workers running its jobs apply them within seconds.

    Only ``limits`` can change: a config's model and parameters are fixed, since answers are tied to them.
    """
    config = await service.update_limits(session, config_id, body)
    await session.commit()
    return ModelConfigRead.model_validate(config)
