"""workers.rate: a worker's request rate over its last heartbeat interval

`uploader status` showed a live worker's rate as its average since it started (0 until its first heartbeat,
and long after a pause); the heartbeat now also stores the rate since the previous heartbeat. Existing rows:
NULL (status falls back to the average).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 08:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rate", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("rate")
