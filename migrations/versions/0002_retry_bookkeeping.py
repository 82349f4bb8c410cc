"""retry bookkeeping on units (429 count, last error, repeats) and a job's pause reason

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("requests", "judgements"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("rate_limited", sa.Integer(), server_default="0", nullable=False))
            batch.add_column(sa.Column("last_error", sa.Text(), nullable=True))
            batch.add_column(sa.Column("error_repeats", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("paused_reason", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("paused_reason")
    for table in ("requests", "judgements"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("error_repeats")
            batch.drop_column("last_error")
            batch.drop_column("rate_limited")
