"""What the trust fixes need to know: payloads sent per attempt, how a job came to exist, reserved batches

- jobs.sent_hashes / attempt_hash: the payload hash of every attempt that may have created the job, so an
  FS_0001 after a payload change (or for a reference_id this ledger never sent) is not taken as success;
- jobs.origin: created / recovered / pre-existing;
- an index on jobs.job_id: a job_id already recorded for another row is a conflict, found by this index;
- manifests.changed: an identical reload is skipped only when no later load changed a row;
- batches.batch_id nullable, batches.auto, batches.reserved_by: a batch is reserved in the ledger before it
  is created at the API, so that two runs starting together create it once and both use its id.

Existing rows: an attempt made before this revision is taken to have sent the payload the row holds now
(the best knowledge there is); succeeded rows get origin created or recovered; earlier loads count as
having changed rows, so the first identical reload after the upgrade compares every row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 16:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sent_hashes", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("attempt_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("origin", sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_job_id"), ["job_id"], unique=False)
    with op.batch_alter_table("manifests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("changed", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.alter_column("batch_id", existing_type=sa.String(length=64), nullable=True)
        batch_op.add_column(sa.Column("auto", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("reserved_by", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE jobs SET sent_hashes = body_hash WHERE status IN ('in_flight', 'uncertain') "
        "OR (status IN ('pending', 'failed') AND attempts > 0)"
    )
    op.execute(
        "UPDATE jobs SET origin = CASE WHEN recovered THEN 'recovered' ELSE 'created' END WHERE status = 'succeeded'"
    )
    op.execute("UPDATE manifests SET changed = row_count")


def downgrade() -> None:
    op.execute("DELETE FROM batches WHERE batch_id IS NULL")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("reserved_by")
        batch_op.drop_column("auto")
        batch_op.alter_column("batch_id", existing_type=sa.String(length=64), nullable=False)
    with op.batch_alter_table("manifests", schema=None) as batch_op:
        batch_op.drop_column("changed")
    op.execute("UPDATE jobs SET status = 'succeeded' WHERE status = 'conflict'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_job_id"))
        batch_op.drop_column("origin")
        batch_op.drop_column("attempt_hash")
        batch_op.drop_column("sent_hashes")
