"""The migrations build exactly the models' schema, on SQLite and on Postgres, and run down again."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.base import Base
from service.db.migrate import current_revision, downgrade, upgrade


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_the_migrated_schema_matches_the_models(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
    assert await current_revision(engine) == "0006"


def _names(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    requests_ix = {ix["name"] for ix in inspector.get_indexes("requests")}
    return {"tables": set(inspector.get_table_names()), "requests_ix": requests_ix}


async def test_the_claim_and_aggregate_indexes_exist(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        found = await conn.run_sync(_names)
    assert {"datasets", "cases", "model_configs", "jobs", "job_model_configs", "requests", "responses",
            "judgements"} <= found["tables"]  # fmt: skip
    assert {"ix_requests_job_state", "ix_requests_job_config_state", "ix_requests_state_lease"} <= found["requests_ix"]


async def test_downgrade_to_base_and_up_again(tmp_path: Any) -> None:
    from service.db.session import create_engine
    from service.settings import Settings

    engine = create_engine(Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}"), pooled=False)
    await upgrade(engine)
    await downgrade(engine, "base")
    async with engine.connect() as conn:
        assert (await conn.run_sync(lambda c: set(inspect(c).get_table_names()))) <= {"alembic_version"}
    await upgrade(engine)
    assert await current_revision(engine) == "0006"
    await engine.dispose()
