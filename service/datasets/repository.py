"""All SQL for datasets and cases."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import Case, Dataset, Family

CASE_INSERT_BATCH = 2_000


async def get(session: AsyncSession, dataset_id: uuid.UUID) -> Dataset | None:
    return await session.get(Dataset, dataset_id)


async def get_by_name(session: AsyncSession, name: str, version: str | None = None) -> Dataset | None:
    """The dataset with that name and version, or the newest of that name when no version is given."""
    query = select(Dataset).where(Dataset.name == name)
    if version is not None:
        query = query.where(Dataset.version == version)
    query = query.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(1)
    return (await session.execute(query)).scalar_one_or_none()


async def names(session: AsyncSession) -> list[str]:
    """Every dataset name, once, in order."""
    return list((await session.execute(select(Dataset.name).distinct().order_by(Dataset.name))).scalars())


async def versions(session: AsyncSession, name: str) -> list[str]:
    """The versions of a dataset name, oldest first."""
    query = select(Dataset.version).where(Dataset.name == name).order_by(Dataset.created_at, Dataset.id)
    return list((await session.execute(query)).scalars())


async def list_page(session: AsyncSession, limit: int, after: tuple[str, str] | None) -> Sequence[Dataset]:
    query = select(Dataset).order_by(Dataset.name, Dataset.version).limit(limit)
    if after is not None:
        query = query.where((Dataset.name > after[0]) | ((Dataset.name == after[0]) & (Dataset.version > after[1])))
    return (await session.execute(query)).scalars().all()


async def insert_cases(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert case rows in batches: one multi-row statement per batch, no ORM objects."""
    for start in range(0, len(rows), CASE_INSERT_BATCH):
        await session.execute(insert(Case), rows[start : start + CASE_INSERT_BATCH])


async def list_cases(
    session: AsyncSession,
    dataset_id: uuid.UUID,
    *,
    limit: int,
    after_ordinal: int | None,
    family: Family | None,
    authority_type: str | None,
) -> Sequence[Case]:
    query = select(Case).where(Case.dataset_id == dataset_id).order_by(Case.ordinal).limit(limit)
    if after_ordinal is not None:
        query = query.where(Case.ordinal > after_ordinal)
    if family is not None:
        query = query.where(Case.family == family)
    if authority_type is not None:
        query = query.where(Case.authority_type == authority_type)
    return (await session.execute(query)).scalars().all()


async def family_counts(session: AsyncSession, dataset_id: uuid.UUID) -> dict[str, int]:
    query = select(Case.family, func.count()).where(Case.dataset_id == dataset_id).group_by(Case.family)
    return {family.value: count for family, count in (await session.execute(query)).all()}
