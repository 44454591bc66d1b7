"""Drop the (lease_owner, status) index on jobs

Every query by lease_owner also filters status = 'in_flight', which the (status, not_before, id) index
already narrows to the few rows in the air; the extra index only made every load write it for every row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 17:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_lease_owner_status"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_lease_owner_status"), ["lease_owner", "status"], unique=False)
