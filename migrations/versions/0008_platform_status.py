"""After sending: each job's platform status and its time (`uploader sync`), and its result (a file's path or
the inline result, its sha256, the last error fetching it)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 09:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("platform_status", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("platform_status_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("result_path", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("result", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("result_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("result_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("result_error")
        batch_op.drop_column("result_sha256")
        batch_op.drop_column("result")
        batch_op.drop_column("result_path")
        batch_op.drop_column("platform_status_at")
        batch_op.drop_column("platform_status")
