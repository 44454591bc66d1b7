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
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import false

__all__ = ["Activity", "Base", "Batch", "CheckedUrl", "Job", "LoadedManifest", "Status", "Worker"]

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
    UNCERTAIN = "uncertain"  #: the job may exist (FS_0001, an ambiguous last attempt, an answer that does not
    #: match the request) and its job_id is not known yet: a batch listing decides
    CONFLICT = "conflict"  #: the job exists (job_id known) but may hold other data than the manifest says
    BLOCKED = "blocked"  #: never sent: an attachment failed its preflight check (`uploader check`); released
    #: by `uploader retry --blocked`, or sent anyway by `run --allow-blocked`

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
    #: Rows this load added or whose payload it changed: an identical reload may skip only when no later
    #: load changed anything (else the ledger no longer holds exactly this manifest's payloads).
    changed: Mapped[int] = mapped_column(Integer, server_default="0")

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
    #: Space-separated body_hash of every earlier attempt that may have created the job (its answer was
    #: lost or ambiguous): an FS_0001 is a clean recovery only when this holds the current body_hash alone.
    sent_hashes: Mapped[str | None] = mapped_column(Text)
    #: body_hash of the attempt in the air, set by the claim; merged into sent_hashes when its answer is lost.
    attempt_hash: Mapped[str | None] = mapped_column(String(64))
    #: How the job came to exist: created (this ledger's request), recovered (FS_0001 after our own earlier
    #: send of the same payload), pre-existing (FS_0001 and this ledger never sent it before).
    origin: Mapped[str | None] = mapped_column(String(16))
    #: When the preflight last found every attachment of this payload good (or blocked the row); None: never,
    #: or the payload changed since.
    checked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    #: The earliest expiry of the signed attachment URLs of this payload, as the preflight read it (None: none
    #: signed, or not checked): a row checked long ago is still blocked when its link is about to expire.
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    #: The job's status on the platform as `uploader sync` last read it, verbatim (words are not all
    #: documented), and when it was first seen with that status.
    platform_status: Mapped[str | None] = mapped_column(String(255))
    platform_status_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    #: Where the job's result was written (`sync --results DIR`), or the result itself when the platform
    #: gave it inline rather than as a URL; its sha256; the last failure to fetch it (retried by the next sync).
    result_path: Mapped[str | None] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text)
    result_sha256: Mapped[str | None] = mapped_column(String(64))
    result_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("project_id", "reference_id"),
        Index(None, "status", "not_before", "id"),
        Index(None, "job_id"),
    )


class Batch(Base):
    """A batch this ledger creates (`--batch-name`, or the run's own batch): reserved in the ledger before
    the API is asked, so that one run creates it and every other run (and rerun) uses its id."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    batch_id: Mapped[str | None] = mapped_column(String(64))  #: None while the reserving run creates it
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    #: The run's own batch for the project (one per project), used for rows with no batch of their own.
    auto: Mapped[bool] = mapped_column(Boolean, server_default=false())
    #: The worker (run) that reserved the name and is creating the batch; None once batch_id is known.
    reserved_by: Mapped[str | None] = mapped_column(String(64))

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
    #: Requests per second over the last heartbeat interval (NULL before the second heartbeat).
    rate: Mapped[float | None] = mapped_column(Float)


class Activity(Base):
    """What one run (a worker) did in one minute (UTC): the throughput chart of `uploader report`. The run
    writes its in-memory counters here about once per heartbeat (never per request), so the chart shows
    every request and every 429, not only each row's last answer."""

    __tablename__ = "activity"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)  #: the worker (workers.owner)
    minute: Mapped[dt.datetime] = mapped_column(DateTime, primary_key=True)  #: its start, naive UTC
    requests: Mapped[int] = mapped_column(Integer)  #: job creation requests answered (or failed to connect)
    created: Mapped[int] = mapped_column(Integer)  #: rows that succeeded with a job this run created
    recovered: Mapped[int] = mapped_column(Integer)  #: rows that succeeded with a job found existing
    failed: Mapped[int] = mapped_column(Integer)  #: rows failed
    throttled: Mapped[int] = mapped_column(Integer)  #: answers HTTP 429
    retried: Mapped[int] = mapped_column(Integer)  #: rows put back to retry after a retryable error


class CheckedUrl(Base):
    """The preflight verdict on one attachment URL (an image or a frame): one row per distinct URL, shared
    by every job that uses it, so a rerun checks only URLs never checked or checked too long ago."""

    __tablename__ = "urls"

    #: sha256 of the URL: URLs run to 8 KiB, longer than a PostgreSQL index entry may be.
    url_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    verdict: Mapped[str] = mapped_column(String(16))  #: ok, unreachable, http_error, not_media, empty
    detail: Mapped[str] = mapped_column(Text)  #: why, in words ("HTTP 404", "timed out (...)")
    http_status: Mapped[int | None] = mapped_column(Integer)
    content_type: Mapped[str | None] = mapped_column(Text)
    length: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    checked_at: Mapped[dt.datetime] = mapped_column(DateTime)
