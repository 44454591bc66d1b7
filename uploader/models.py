"""SQLAlchemy models of the ledger: the single source of truth for what was sent and what came back.

Times are naive UTC datetimes. The migrations in `migrations/versions/` must match these models exactly
(a test compares them).
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "Batch", "Job", "LoadedManifest", "Status", "Worker"]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Status(str, enum.Enum):
    """The state of one job row; the legal moves between them live in ledger.py."""

    PENDING = "pending"  #: waiting to be sent (or to be re-sent once `not_before` has passed)
    IN_FLIGHT = "in_flight"  #: claimed by a worker under a lease; a request may be in the air
    SUCCEEDED = "succeeded"  #: the API created the job (or it was found existing); job_id is known
    FAILED = "failed"  #: permanent error, or retries exhausted; `uploader retry` sends it again
    UNCERTAIN = "uncertain"  #: the job exists (FS_0001) but its job_id could not be looked up yet

    def __str__(self) -> str:
        return self.value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class LoadedManifest(Base):
    """One loaded manifest file: lets an identical reload be a fast no-op and rows point to their source."""

    __tablename__ = "manifests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))  # files over 2 GiB
    sha256: Mapped[str] = mapped_column(String(64))
    options_hash: Mapped[str] = mapped_column(String(64))
    row_count: Mapped[int] = mapped_column(Integer)
    loaded_at: Mapped[dt.datetime] = mapped_column(DateTime)
    conflicts: Mapped[int] = mapped_column(Integer, server_default="0")  #: repeated by an identical reload
    conflict_examples: Mapped[str | None] = mapped_column(Text)  #: JSON list of the first few reference_ids

    __table_args__ = (Index(None, "sha256", "options_hash"),)


class Job(Base):
    """One job: the exact body to send, and everything the API answered about it."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[str] = mapped_column(String(255))
    reference_id: Mapped[str] = mapped_column(String(255))
    work_flow_id: Mapped[str] = mapped_column(String(255))
    batch_id: Mapped[str | None] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    body_hash: Mapped[str] = mapped_column(String(64))
    extra: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=Status.PENDING.value)
    job_id: Mapped[str | None] = mapped_column(String(64))
    recovered: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_details: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[dt.datetime | None] = mapped_column(DateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_token: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime)
    manifest_id: Mapped[int | None] = mapped_column(ForeignKey("manifests.id"))
    manifest_line: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint("project_id", "reference_id"),
        Index(None, "status", "not_before", "id"),
    )


class Batch(Base):
    """A batch created by `--batch-name`: stored before any job is sent so every rerun reuses it."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    batch_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)

    __table_args__ = (UniqueConstraint("project_id", "name"),)


class Worker(Base):
    """A run that claims rows: its heartbeat keeps its leases alive; a dead one's rows are reclaimed."""

    __tablename__ = "workers"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime)
    stopped_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    sent: Mapped[int] = mapped_column(Integer, default=0)
