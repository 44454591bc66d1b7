"""manifests.size as a 64-bit integer on PostgreSQL

A manifest file may be larger than 2 GiB: PostgreSQL's INTEGER is 32-bit. SQLite's INTEGER is already 64-bit,
so SQLite ledgers are left as they are (the model maps BigInteger to INTEGER there).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("manifests", "size", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("manifests", "size", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
