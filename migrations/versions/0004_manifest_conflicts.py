"""Remember each loaded manifest's conflicts

A reload of the same file with the same options is a no-op, but its conflicts (rows already sent with a
different payload, left unchanged) still stand: the reload repeats them instead of hiding them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 19:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("manifests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("conflicts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("conflict_examples", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("manifests", schema=None) as batch_op:
        batch_op.drop_column("conflict_examples")
        batch_op.drop_column("conflicts")
