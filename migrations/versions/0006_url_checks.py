"""Attachment preflight: a verdict per distinct URL (`urls`), when a job's attachments were last checked
(`jobs.checked_at`) and the earliest expiry of its signed URLs (`jobs.expires_at`), and the `blocked` state of a job

`blocked` is a new value of jobs.status (a string column: no change to it here). Downgrading releases blocked
rows to pending, the state they had before they were checked.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 08:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "urls",
        sa.Column("url_hash", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("content_type", sa.Text(), nullable=True),
        sa.Column("length", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("checked_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("url_hash", name=op.f("pk_urls")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("checked_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    op.execute("UPDATE jobs SET status = 'pending', error_code = NULL, error_message = NULL WHERE status = 'blocked'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("checked_at")
    op.drop_table("urls")
