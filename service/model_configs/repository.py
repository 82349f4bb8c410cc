"""All SQL for model configs."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import ModelConfig


async def get_by_name(session: AsyncSession, name: str) -> ModelConfig | None:
    return (await session.execute(select(ModelConfig).where(ModelConfig.name == name))).scalar_one_or_none()


async def names(session: AsyncSession) -> list[str]:
    """Every config name, in order."""
    return list((await session.execute(select(ModelConfig.name).order_by(ModelConfig.name))).scalars())


async def list_page(session: AsyncSession, limit: int, after_name: str | None) -> Sequence[ModelConfig]:
    query = select(ModelConfig).order_by(ModelConfig.name).limit(limit)
    if after_name is not None:
        query = query.where(ModelConfig.name > after_name)
    return (await session.execute(query)).scalars().all()
