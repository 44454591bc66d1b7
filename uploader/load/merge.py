"""Load a manifest into the ledger, all or nothing.

Rows stream from the manifest into a TEMP staging table (SQLite keeps it outside the ledger file), the
cross-row checks run as SQL over it, and only when nothing is wrong does one short `BEGIN IMMEDIATE`
transaction merge it into `jobs`. An invalid manifest therefore never touches the ledger file, and the
write lock is held only for the merge, not for the parse. Two shortcuts on SQLite: a big manifest is read by
worker processes (uploader.load.slices) whose slices are copied into staging; and an empty ledger takes its
rows straight into `jobs` (uploader.load.bulk), falling back to the staging path on any problem.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, text

from uploader.errors import ManifestError, Problem
from uploader.ledger import read_tx, translate_errors
from uploader.load import bulk as bulk_load
from uploader.load import slices as staging

if TYPE_CHECKING:
    from uploader.ledger import Ledger

__all__ = ["LoadReport", "ManifestLike", "file_sha256", "load_manifest"]

#: Examples of updated / conflicting reference_ids kept for the report.
EXAMPLES = 5
#: Duplicate-line problems fetched (the rest are only counted).
MAX_DUPLICATE_PROBLEMS = 1000


class ManifestLike(Protocol):
    """What the loader needs of a manifest (uploader.manifest.reader.Manifest fits)."""

    path: Path
    unit: str
    problems: list[Problem]
    problem_count: int
    splittable: bool  #: whether uploader.load.slices may read slices of it in worker processes

    def chunk_tuples(self, size: int = ...) -> Iterator[Sequence[tuple[Any, ...]]]:
        """Good rows as tuples in StagedJob field order: (line, project_id, reference_id, work_flow_id,
        batch_id, body, extra). Per-row problems go to `problems` / `problem_count` meanwhile."""
        ...


@dataclass(frozen=True)
class LoadReport:
    """What a load did: the counts `uploader load` prints."""

    manifest: str
    rows: int
    new: int = 0
    unchanged: int = 0
    updated: int = 0
    conflicts: int = 0
    updated_examples: tuple[str, ...] = ()
    conflict_examples: tuple[str, ...] = ()
    already_loaded: bool = False
    seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)


#: The last load of this very file with these options, if no later load added or changed a row: only then
#: does the ledger still hold exactly its payloads (M1, then an edited M2, then M1 again must merge M1).
_ALREADY_LOADED = """
SELECT m.row_count, m.conflicts, m.conflict_examples FROM manifests m
WHERE m.sha256 = :sha AND m.options_hash = :opt
  AND NOT EXISTS (SELECT 1 FROM manifests later WHERE later.id > m.id AND later.changed > 0)
ORDER BY m.id DESC LIMIT 1
"""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def load_manifest(
    ledger: Ledger, manifest: ManifestLike, options_hash: str, production: staging.Production | None = None,
) -> LoadReport:
    """Validate and merge one manifest into `ledger`; raise ManifestError (ledger untouched) if anything is
    wrong.

    `production`: worker processes already staging this manifest (started before the ledger was even
    opened, when it is new; else started here if the manifest suits); closed in any case. A ledger whose
    SQLite file this process created (`ledger.new_file`) is loaded in bulk mode (see engine.sqlite_bulk_mode)."""
    import time

    engine, new_file = ledger.engine, ledger.new_file
    started = time.perf_counter()
    path = Path(manifest.path)
    label = getattr(manifest, "label", None)
    shown = label or str(path)
    try:
        size = path.stat().st_size
        sha = file_sha256(path)
        with read_tx(engine) as conn:
            seen = conn.execute(text(_ALREADY_LOADED), {"sha": sha, "opt": options_hash}).first()
            empty = conn.execute(text("SELECT 1 FROM jobs LIMIT 1")).first() is None
        if seen is not None:
            rows, conflicts, examples = seen
            return LoadReport(shown, rows, unchanged=rows - conflicts, conflicts=conflicts,
                              conflict_examples=tuple(json.loads(examples or "[]")), already_loaded=True)
        sqlite = engine.dialect.name == "sqlite"
        if sqlite and production is None:
            production = staging.Production.start(manifest)  # type: ignore[arg-type]
        if sqlite and empty:
            loaded = bulk_load.load_into_empty(engine, manifest, path, size, sha, options_hash, production,
                                               new_file, _utcnow())
            if loaded is not None:
                return LoadReport(shown, loaded, new=loaded, seconds=time.perf_counter() - started)
        with translate_errors(), engine.connect() as conn:
            try:
                rows = _stage(conn, manifest, production)
                _check(conn, manifest)
                conn.rollback()
                report = _merge(conn, path, size, sha, options_hash, rows, label)
            finally:
                conn.rollback()
                conn.exec_driver_sql("DROP TABLE IF EXISTS staging")
                conn.commit()
        return LoadReport(**{**report.__dict__, "seconds": time.perf_counter() - started})
    finally:
        if production is not None:
            production.close()


_STAGING_DDL = f"CREATE TEMPORARY TABLE staging ({staging.STAGING_COLUMNS})"


def _placeholders(conn: Connection, n: int) -> str:
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return ", ".join([mark] * n)


def _stager(conn: Connection) -> Callable[[list[tuple]], None]:
    """How rows get into staging: one executemany per chunk; COPY on PostgreSQL (psycopg 3), which streams
    the rows in one command instead of one round trip per batch of parameters."""
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        driver_conn = conn.connection.driver_connection

        def copy(rows: list[tuple]) -> None:
            with driver_conn.cursor() as cursor, cursor.copy("COPY staging FROM STDIN") as out:
                for row in rows:
                    out.write_row(row)

        return copy
    insert = f"INSERT INTO staging VALUES ({_placeholders(conn, 8)})"
    return lambda rows: conn.exec_driver_sql(insert, rows)


def _stage(conn: Connection, manifest: ManifestLike, production: staging.Production | None = None) -> int:
    """Stream the manifest into the staging table; returns the number of good rows staged. With
    `production` (SQLite), the workers' scratch files are copied in instead, unless one of them met a
    problem: then the manifest is read here after all, to find and report every problem."""
    conn.exec_driver_sql("DROP TABLE IF EXISTS staging")
    conn.exec_driver_sql(_STAGING_DDL)
    attached: list[str] = []
    try:
        total: int | None = None
        if production is not None:
            try:
                total, _ = bulk_load.copy_parts(conn.connection.driver_connection, production,
                                                lambda part: f"INSERT INTO staging {bulk_load.part_rows(part)}",
                                                bulk_load.part_defaults(manifest), attached)
            except (bulk_load.NotClean, staging.WorkerLost):
                total = None  # read the manifest here after all, to find and report every problem
        if total is None:
            conn.exec_driver_sql("DELETE FROM staging")
            stage_rows = _stager(conn)
            total = 0
            for chunk in manifest.chunk_tuples():
                params = staging.staged_rows(chunk)
                if params:
                    stage_rows(params)
                    total += len(params)
        conn.exec_driver_sql("CREATE INDEX staging_key ON staging (project_id, reference_id)")
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE staging")  # autovacuum never analyzes TEMP tables: plan the merge well
        conn.commit()  # commits only the TEMP table: the ledger file is not written
    finally:
        conn.rollback()
        raw = conn.connection.driver_connection
        for name in attached:  # outside any transaction, as SQLite wants
            raw.execute(f"DETACH DATABASE {name}")  # type: ignore[union-attr]
    return total


def _check(conn: Connection, manifest: ManifestLike) -> None:
    """Cross-row checks in SQL, then raise every problem at once."""
    dup_filter = """
        FROM staging s JOIN (
            SELECT project_id, reference_id, MIN(line) AS first_line FROM staging
            GROUP BY project_id, reference_id HAVING COUNT(*) > 1
        ) d ON d.project_id = s.project_id AND d.reference_id = s.reference_id
        WHERE s.line <> d.first_line
    """
    dup_count = conn.exec_driver_sql(f"SELECT COUNT(*) {dup_filter}").scalar_one()
    problems = list(manifest.problems)
    total = manifest.problem_count + dup_count
    if dup_count:
        rows = conn.exec_driver_sql(
            f"SELECT s.line, s.reference_id, d.first_line {dup_filter} ORDER BY s.line "
            f"LIMIT {MAX_DUPLICATE_PROBLEMS}"
        )
        where = "row" if manifest.unit == "row" else "line"
        for line, ref, first in rows:
            problems.append(
                Problem(
                    str(manifest.path),
                    line,
                    "reference_id",
                    f"duplicate reference_id {ref!r} (first on {where} {first})",
                    unit=manifest.unit,
                )
            )
    if total:
        raise ManifestError(problems, total=total)
    if not conn.exec_driver_sql("SELECT 1 FROM staging LIMIT 1").first():
        raise ManifestError([Problem(str(manifest.path), None, None, "the manifest has no rows")])


_COUNTS = """
SELECT
  COALESCE(SUM(CASE WHEN j.id IS NULL THEN 1 ELSE 0 END), 0),
  COALESCE(SUM(CASE WHEN j.body_hash = s.body_hash THEN 1 ELSE 0 END), 0),
  COALESCE(SUM(CASE WHEN j.body_hash <> s.body_hash AND j.status IN ('pending', 'failed') THEN 1 ELSE 0 END), 0),
  COALESCE(SUM(CASE WHEN j.body_hash <> s.body_hash AND j.status NOT IN ('pending', 'failed') THEN 1 ELSE 0 END), 0)
FROM staging s LEFT JOIN jobs j ON j.project_id = s.project_id AND j.reference_id = s.reference_id
"""

_EXAMPLES = """
SELECT s.reference_id FROM staging s JOIN jobs j
  ON j.project_id = s.project_id AND j.reference_id = s.reference_id
WHERE j.body_hash <> s.body_hash AND j.status {op} ('pending', 'failed')
ORDER BY s.line LIMIT {n}
"""

_UPDATE = """
UPDATE jobs SET body = s.body, body_hash = s.body_hash, extra = s.extra, work_flow_id = s.work_flow_id,
  batch_id = s.batch_id, status = 'pending', attempts = 0, not_before = NULL, error_code = NULL,
  error_message = NULL, error_details = NULL, http_status = NULL, updated_at = :now,
  manifest_id = :mid, manifest_line = s.line
FROM staging s
WHERE jobs.project_id = s.project_id AND jobs.reference_id = s.reference_id
  AND jobs.body_hash <> s.body_hash AND jobs.status IN ('pending', 'failed')
"""

_INSERT = """
INSERT INTO jobs (project_id, reference_id, work_flow_id, batch_id, body, body_hash, extra, status, recovered,
  attempts, lease_token, created_at, updated_at, manifest_id, manifest_line)
SELECT s.project_id, s.reference_id, s.work_flow_id, s.batch_id, s.body, s.body_hash, s.extra, 'pending', false,
  0, 0, :now, :now, :mid, s.line
FROM staging s WHERE true
ON CONFLICT (project_id, reference_id) DO NOTHING
"""


def _lock_jobs(conn: Connection) -> None:
    """Keep other writers out of `jobs` for the merge, so its counts hold until it commits. SQLite: done by
    BEGIN IMMEDIATE. PostgreSQL: a self-conflicting table lock; readers go on, claims and other loads wait."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")


def _merge(
    staging_conn: Connection, path: Path, size: int, sha: str, options_hash: str, rows: int, label: str | None = None
) -> LoadReport:
    """The one short writing transaction: counts, updates, inserts, the manifest record (`label`: what the
    manifest is recorded as, when not its path)."""
    conn = staging_conn.execution_options(sqlite_begin="IMMEDIATE")
    now = _utcnow()
    with translate_errors(), conn.begin():
        _lock_jobs(conn)
        empty = conn.execute(text("SELECT 1 FROM jobs LIMIT 1")).first() is None
        if empty:
            new, unchanged, updated, conflicts = rows, 0, 0, 0
        else:
            new, unchanged, updated, conflicts = conn.execute(text(_COUNTS)).one()
        upd_ex = con_ex = ()
        if conflicts:
            con_ex = tuple(r[0] for r in conn.execute(text(_EXAMPLES.format(op="NOT IN", n=EXAMPLES))))
        record = bulk_load.manifest_row(path, size, sha, options_hash, rows, now, conflicts, con_ex, new + updated,
                                        label=label)
        mid = conn.execute(text(bulk_load.MANIFEST_INSERT), record).scalar_one()
        if updated:
            upd_ex = tuple(r[0] for r in conn.execute(text(_EXAMPLES.format(op="IN", n=EXAMPLES))))
            conn.execute(text(_UPDATE), {"now": now, "mid": mid})
        if new:
            conn.execute(text(_INSERT), {"now": now, "mid": mid})
    return LoadReport(label or str(path), rows, new, unchanged, updated, conflicts, upd_ex, con_ex)

