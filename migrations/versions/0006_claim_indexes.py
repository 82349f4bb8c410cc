"""lanes claim a config's pending units: indexes on (job, config, state, not_before)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

Workers lease a config's due pending units in batches. With only (job, state) to go by, a claim for a config with
nothing pending scanned every pending unit of the job's other configs; these indexes go straight to the config's
own. They replace the (job, config) indexes, whose prefix they keep for the results' aggregation.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_requests_job_config_state", "requests", ["job_id", "model_config_id", "state", "not_before"])
    op.drop_index("ix_requests_job_config", table_name="requests")
    op.create_index("ix_judgements_job_judge_state", "judgements", ["job_id", "judge_config_id", "state", "not_before"])
    op.drop_index("ix_judgements_job_judge", table_name="judgements")


def downgrade() -> None:
    op.create_index("ix_judgements_job_judge", "judgements", ["job_id", "judge_config_id"])
    op.drop_index("ix_judgements_job_judge_state", table_name="judgements")
    op.create_index("ix_requests_job_config", "requests", ["job_id", "model_config_id"])
    op.drop_index("ix_requests_job_config_state", table_name="requests")
