"""The ledger's tables: the single source of truth for what was sent and what came back.

SQLAlchemy Core tables, not ORM classes: nothing maps rows to objects, and importing the ORM would slow
every command's start.

Times are naive UTC datetimes. The migrations in `migrations/versions/` must match these tables exactly
(a test compares them).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.sql.expression import false, text

from uploader.ledger.states import Status

__all__ = ["METADATA", "Status", "activity", "batches", "jobs", "manifests", "merged_hashes", "urls", "workers"]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


METADATA = MetaData(naming_convention=NAMING_CONVENTION)

#: One loaded manifest file: lets an identical reload be a fast no-op and rows point to their source.
manifests = Table(
    "manifests",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("path", Text, nullable=False),
    Column("size", BigInteger().with_variant(Integer(), "sqlite"), nullable=False),  # files over 2 GiB
    Column("sha256", String(64), nullable=False),
    Column("options_hash", String(64), nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("loaded_at", DateTime, nullable=False),
    Column("conflicts", Integer, server_default="0", nullable=False),  # repeated by an identical reload
    Column("conflict_examples", Text),  # JSON list of the first few reference_ids
    # Rows this load added or whose payload it changed: an identical reload may skip only when no later
    # load changed anything (else the ledger no longer holds exactly this manifest's payloads).
    Column("changed", Integer, server_default="0", nullable=False),
    Index(None, "sha256", "options_hash"),
)

#: One job: the exact body to send, and everything the API answered about it.
jobs = Table(
    "jobs",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("project_id", String(255), nullable=False),
    Column("reference_id", String(255), nullable=False),
    Column("work_flow_id", String(255), nullable=False),
    Column("batch_id", String(64)),
    Column("body", Text, nullable=False),
    Column("body_hash", String(64), nullable=False),
    Column("extra", Text),
    Column("status", String(16), default=Status.PENDING.value, nullable=False),
    Column("job_id", String(64)),
    Column("recovered", Boolean, default=False, nullable=False),
    Column("error_code", String(64)),
    Column("error_message", Text),
    Column("error_details", Text),
    Column("http_status", Integer),
    Column("attempts", Integer, default=0, nullable=False),
    Column("not_before", DateTime),
    Column("lease_owner", String(64)),
    Column("lease_token", Integer, default=0, nullable=False),
    Column("lease_expires_at", DateTime),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("manifest_id", ForeignKey("manifests.id")),
    Column("manifest_line", Integer),
    # Space-separated body_hash of every earlier attempt that may have created the job (its answer was
    # lost or ambiguous): an FS_0001 is a clean recovery only when this holds the current body_hash alone.
    Column("sent_hashes", Text),
    # body_hash of the attempt in the air, set by the claim; merged into sent_hashes when its answer is lost.
    Column("attempt_hash", String(64)),
    # How the job came to exist: created (this ledger's request), recovered (FS_0001 after our own earlier
    # send of the same payload), pre-existing (FS_0001 and this ledger never sent it before).
    Column("origin", String(16)),
    # When the preflight last found every attachment of this payload good (or blocked the row); None: never,
    # or the payload changed since.
    Column("checked_at", DateTime),
    # The earliest expiry of the signed attachment URLs of this payload, as the preflight read it (None: none
    # signed, or not checked): a row checked long ago is still blocked when its link is about to expire.
    Column("expires_at", DateTime),
    # The job's status on the platform as `uploader sync` last read it, verbatim (words are not all
    # documented), and when it was first seen with that status.
    Column("platform_status", String(255)),
    Column("platform_status_at", DateTime),
    # Where the job's result was written (`sync --results DIR`), or the result itself when the platform
    # gave it inline rather than as a URL; its sha256; the last failure to fetch it (retried by the next sync).
    Column("result_path", Text),
    Column("result", Text),
    Column("result_sha256", String(64)),
    Column("result_error", Text),
    UniqueConstraint("project_id", "reference_id"),
    Index(None, "status", "not_before", "id"),
    # Only the rows that have a job_id (migration 0010): a load's new rows need no entry; lookups are by value.
    Index(None, "job_id", sqlite_where=text("job_id IS NOT NULL"), postgresql_where=text("job_id IS NOT NULL")),
)

#: A batch this ledger creates (`--batch-name`, or the run's own batch): reserved in the ledger before the
#: API is asked, so that one run creates it and every other run (and rerun) uses its id.
batches = Table(
    "batches",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("project_id", String(255), nullable=False),
    Column("name", String(255), nullable=False),
    Column("batch_id", String(64)),  # None while the reserving run creates it
    Column("created_at", DateTime, nullable=False),
    # The run's own batch for the project (one per project), used for rows with no batch of their own.
    Column("auto", Boolean, server_default=false(), nullable=False),
    # The worker (run) that reserved the name and is creating the batch; None once batch_id is known.
    Column("reserved_by", String(64)),
    UniqueConstraint("project_id", "name"),
)

#: A run that claims rows: its heartbeat keeps its leases alive; a dead one's rows are reclaimed.
workers = Table(
    "workers",
    METADATA,
    Column("owner", String(64), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("heartbeat_at", DateTime, nullable=False),
    Column("stopped_at", DateTime),
    Column("sent", Integer, default=0, nullable=False),
    # Requests per second over the last heartbeat interval (NULL before the second heartbeat).
    Column("rate", Float),
)

#: The preflight verdict on one attachment URL (an image or a frame): one row per distinct URL, shared by
#: every job that uses it, so a rerun checks only URLs never checked or checked too long ago.
urls = Table(
    "urls",
    METADATA,
    # sha256 of the URL: URLs run to 8 KiB, longer than a PostgreSQL index entry may be.
    Column("url_hash", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    Column("verdict", String(16), nullable=False),  # ok, unreachable, http_error, not_media, empty
    Column("detail", Text, nullable=False),  # why, in words ("HTTP 404", "timed out (...)")
    Column("http_status", Integer),
    Column("content_type", Text),
    Column("length", BigInteger().with_variant(Integer(), "sqlite")),
    Column("checked_at", DateTime, nullable=False),
)

#: What one run (a worker) did in one minute (UTC): the throughput chart of `uploader report`. The run writes
#: its in-memory counters here about once per heartbeat (never per request), so the chart shows every
#: request and every 429, not only each row's last answer.
activity = Table(
    "activity",
    METADATA,
    Column("owner", String(64), primary_key=True),  # the worker (workers.owner)
    Column("minute", DateTime, primary_key=True),  # its start, naive UTC
    Column("requests", Integer, nullable=False),  # job creation requests answered (or failed to connect)
    Column("created", Integer, nullable=False),  # rows that succeeded with a job this run created
    Column("recovered", Integer, nullable=False),  # rows that succeeded with a job found existing
    Column("failed", Integer, nullable=False),  # rows failed
    Column("throttled", Integer, nullable=False),  # answers HTTP 429
    Column("retried", Integer, nullable=False),  # rows put back to retry after a retryable error
)


def merged_hashes(column: str) -> str:
    """SQL: `sent_hashes` with the hash in `column` added once (space-separated), unchanged where that column is
    NULL. SQLite and PostgreSQL alike; in an UPDATE, every SET expression reads the row as it was before."""
    return (
        f"CASE WHEN {column} IS NULL THEN sent_hashes "
        f"WHEN sent_hashes IS NULL OR sent_hashes = '' THEN {column} "
        f"WHEN (' ' || sent_hashes || ' ') LIKE ('% ' || {column} || ' %') THEN sent_hashes "
        f"ELSE sent_hashes || ' ' || {column} END"
    )
