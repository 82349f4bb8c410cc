"""All SQL for API tokens."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import ApiToken


async def get_by_hash(session: AsyncSession, token_hash: str) -> ApiToken | None:
    query = select(ApiToken).where(ApiToken.token_hash == token_hash)
    return (await session.execute(query)).scalar_one_or_none()


async def get_by_name(session: AsyncSession, name: str) -> ApiToken | None:
    return (await session.execute(select(ApiToken).where(ApiToken.name == name))).scalar_one_or_none()


async def get(session: AsyncSession, token_id: uuid.UUID) -> ApiToken | None:
    return await session.get(ApiToken, token_id)


async def list_all(session: AsyncSession) -> Sequence[ApiToken]:
    """Every token, revoked ones too, oldest first (there are few)."""
    return (await session.execute(select(ApiToken).order_by(ApiToken.created_at, ApiToken.name))).scalars().all()
