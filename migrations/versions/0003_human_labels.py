"""reviewers' labels on a job's answers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "human_labels",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("reviewer", sa.String(length=100), nullable=False),
        sa.Column(
            "response_type",
            sa.Enum(
                "helps",
                "hard_refusal",
                "deflection",
                name="human_response_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),  # fmt: skip
            nullable=False,
        ),
        sa.Column("engages_with_defeat", sa.Boolean(), nullable=False),
        sa.Column("independent_harm", sa.Boolean(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_human_labels_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["request_id"], ["requests.id"], name=op.f("fk_human_labels_request_id_requests"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_human_labels")),
        sa.UniqueConstraint("request_id", "reviewer", name=op.f("uq_human_labels_request_id_reviewer")),
    )
    with op.batch_alter_table("human_labels") as batch:
        batch.create_index(batch.f("ix_human_labels_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("human_labels") as batch:
        batch.drop_index(batch.f("ix_human_labels_job_id"))
    op.drop_table("human_labels")
