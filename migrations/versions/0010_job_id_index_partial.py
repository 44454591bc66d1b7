"""The job_id index holds only the rows that have a job_id: a load's new rows have none, and every lookup is
by value (`job_id = …`, `job_id IN (…)`), which such an index serves

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 21:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_HAS_JOB_ID = "job_id IS NOT NULL"


def upgrade() -> None:
    op.drop_index("ix_jobs_job_id", table_name="jobs")
    op.create_index(
        "ix_jobs_job_id",
        "jobs",
        ["job_id"],
        sqlite_where=sa.text(_HAS_JOB_ID),
        postgresql_where=sa.text(_HAS_JOB_ID),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_job_id", table_name="jobs")
    op.create_index("ix_jobs_job_id", "jobs", ["job_id"])
