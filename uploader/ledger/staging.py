"""The load's staging SQL: the TEMP staging table a merge checks, and the scratch file of each slice.

A load streams a manifest's rows into a staging table, checks them there and only then merges them into
`jobs` (uploader.ledger.loading). The forked slice readers (uploader.load.slices) write their rows into
scratch SQLite files of their own, copied into staging or `jobs` later. Those processes fork before
SQLAlchemy is imported, so this module imports nothing but the standard library.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "BEGIN",
    "BEGIN_IMMEDIATE",
    "COMMIT",
    "ROLLBACK",
    "SCRATCH_COLUMNS",
    "SCRATCH_ROW",
    "SCRATCH_ROW_NO_EXTRA",
    "SCRATCH_ROW_OWN",
    "SCRATCH_SETUP",
    "STAGING_ANALYZE",
    "STAGING_ANY",
    "STAGING_CLEAR",
    "STAGING_COLUMNS",
    "STAGING_COPY",
    "STAGING_DROP",
    "STAGING_DUPLICATE_COUNT",
    "STAGING_INDEX",
    "STAGING_TABLE",
    "StagingRow",
    "attach_slice",
    "detach_slice",
    "many_rows",
    "slice_rows",
    "staging_duplicates",
    "staging_from_slice",
    "staging_insert",
]

#: Transaction control on a bare sqlite3 connection (the driver's own transaction handling is off).
BEGIN = "BEGIN"
BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"  #: takes the write lock up front
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"


class StagingRow(NamedTuple):
    """One row of the staging table: a manifest's job with its payload's hash after the payload."""

    line: int
    project_id: str
    reference_id: str
    work_flow_id: str
    batch_id: str | None
    body: str
    body_hash: str
    extra: str | None


#: Columns of the staging table, in StagingRow's order.
STAGING_COLUMNS = """
    line INTEGER NOT NULL,
    project_id TEXT NOT NULL,
    reference_id TEXT NOT NULL,
    work_flow_id TEXT NOT NULL,
    batch_id TEXT,
    body TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    extra TEXT
"""
#: A scratch file's table: as staging, but project_id, work_flow_id and batch_id are only stored (with
#: `own` = 1) for rows that do not have the load's defaults: binding three more strings per row would cost
#: the slice reader a third more time.
SCRATCH_COLUMNS = """
    line INTEGER NOT NULL,
    reference_id TEXT NOT NULL,
    body TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    extra TEXT,
    own INTEGER,
    project_id TEXT,
    work_flow_id TEXT,
    batch_id TEXT
"""

# --- a slice's scratch file (written by a forked slice reader) ---------------------------------------------

#: A new scratch file, in order: 64 KiB pages (a sixteenth of the reads and writes of 4 KiB pages), no
#: journal and no syncing (it is scratch: a crash only loses it), then its table.
SCRATCH_SETUP = (
    "PRAGMA page_size = 65536",
    "PRAGMA journal_mode = OFF",
    "PRAGMA synchronous = OFF",
    f"CREATE TABLE staging ({SCRATCH_COLUMNS})",
)
#: A row with the load's defaults: (line, reference_id, body, body_hash, extra).
SCRATCH_ROW = "INSERT INTO staging (line, reference_id, body, body_hash, extra) VALUES (?, ?, ?, ?, ?)"
#: A row with the load's defaults and no extra: (line, reference_id, body, body_hash), one value fewer to
#: bind than SCRATCH_ROW for the most common manifest (nothing but reference_id and image_url).
SCRATCH_ROW_NO_EXTRA = "INSERT INTO staging (line, reference_id, body, body_hash) VALUES (?, ?, ?, ?)"
#: A row with its own project_id, work_flow_id, batch_id: (line, reference_id, body, body_hash, extra,
#: project_id, work_flow_id, batch_id).
SCRATCH_ROW_OWN = "INSERT INTO staging VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)"


def many_rows(insert: str, n: int) -> str:
    """One of the SCRATCH_ROW statements for `n` rows at once (its VALUES tuple repeated, the rows' values
    bound one after the other): a slice reader's executemany then steps a statement per `n` rows instead of
    per row, which saves the driver's work per statement (figures: benchmarks/README.md)."""
    head, values = insert.split(" VALUES ")
    return f"{head} VALUES {', '.join([values] * n)}"


def attach_slice(name: str) -> str:
    """ATTACH of a scratch file as schema `name`; binds the file's path."""
    return f"ATTACH DATABASE ? AS {name}"


def detach_slice(name: str) -> str:
    return f"DETACH DATABASE {name}"


def slice_rows(name: str) -> str:
    """The rows of the scratch file attached as `name`, in STAGING_COLUMNS order; rows without `own` take
    the load's defaults, bound as :project_id, :work_flow_id and :batch_id."""
    own = [f"CASE WHEN own IS NULL THEN :{c} ELSE {c} END" for c in ("project_id", "work_flow_id", "batch_id")]
    return (
        f"SELECT line, {own[0]} AS project_id, reference_id, {own[1]} AS work_flow_id, {own[2]} AS batch_id, "
        f"body, body_hash, extra FROM {name}.staging"
    )


# --- the TEMP staging table of a merge (SQLite keeps it outside the ledger file) ---------------------------

STAGING_TABLE = f"CREATE TEMPORARY TABLE staging ({STAGING_COLUMNS})"
STAGING_DROP = "DROP TABLE IF EXISTS staging"
STAGING_CLEAR = "DELETE FROM staging"
#: PostgreSQL (psycopg 3): the rows streamed in one command.
STAGING_COPY = "COPY staging FROM STDIN"
STAGING_INDEX = "CREATE INDEX staging_key ON staging (project_id, reference_id)"
#: PostgreSQL: autovacuum never analyzes TEMP tables, so the merge is planned well only after this.
STAGING_ANALYZE = "ANALYZE staging"
STAGING_ANY = "SELECT 1 FROM staging LIMIT 1"


def staging_insert(mark: str) -> str:
    """INSERT of one StagingRow, with the driver's placeholder `mark` (`?` or `%s`)."""
    return f"INSERT INTO staging VALUES ({', '.join([mark] * len(StagingRow._fields))})"


def staging_from_slice(name: str) -> str:
    """INSERT into staging of the scratch file attached as `name` (binds as slice_rows)."""
    return f"INSERT INTO staging {slice_rows(name)}"


#: Rows whose (project_id, reference_id) an earlier line of the manifest already has.
_DUPLICATES = """
    FROM staging s JOIN (
        SELECT project_id, reference_id, MIN(line) AS first_line FROM staging
        GROUP BY project_id, reference_id HAVING COUNT(*) > 1
    ) d ON d.project_id = s.project_id AND d.reference_id = s.reference_id
    WHERE s.line <> d.first_line
"""
STAGING_DUPLICATE_COUNT = f"SELECT COUNT(*) {_DUPLICATES}"


def staging_duplicates(limit: int) -> str:
    """The first `limit` duplicate rows: (line, reference_id, line of its first occurrence)."""
    return f"SELECT s.line, s.reference_id, d.first_line {_DUPLICATES} ORDER BY s.line LIMIT {int(limit)}"
