"""Load a manifest into the ledger, all or nothing.

Rows stream from the manifest into a TEMP staging table (SQLite keeps it outside the ledger file), the
cross-row checks run as SQL over it, and only when nothing is wrong does one short `BEGIN IMMEDIATE`
transaction merge it into `jobs`. An invalid manifest therefore never touches the ledger file, and the
write lock is held only for the merge, not for the parse. Two shortcuts on SQLite: a big manifest is read by
slice processes (uploader.load.slices) whose slices are copied into staging; and an empty ledger takes its
rows straight into `jobs` (uploader.load.bulk), falling back to the staging path on any problem.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text

from uploader.errors import ManifestError, Problem
from uploader.ledger import (
    ALREADY_LOADED,
    JOBS_ANY,
    LOCK_JOBS,
    MERGE_CHANGED,
    MERGE_COUNTS,
    MERGE_EXTRA,
    MERGE_NEW,
    RECORD_MANIFEST,
    STAGING_ANALYZE,
    STAGING_ANY,
    STAGING_CLEAR,
    STAGING_COPY,
    STAGING_DROP,
    STAGING_DUPLICATE_COUNT,
    STAGING_INDEX,
    STAGING_TABLE,
    StagingRow,
    detach_slice,
    manifest_row,
    merge_examples,
    read_tx,
    staging_duplicates,
    staging_from_slice,
    staging_insert,
    translate_errors,
    utcnow,
)
from uploader.load import bulk as bulk_load
from uploader.load import slices as staging
from uploader.load.digest import manifest_digest
from uploader.load.report import LoadReport
from uploader.manifest import check_unchanged

if TYPE_CHECKING:
    from uploader.ledger import Ledger
    from uploader.load.source import ManifestLike
    from uploader.manifest import FileIdentity

__all__ = ["LoadReport", "load_manifest"]

#: Examples of updated / conflicting reference_ids kept for the report.
EXAMPLES = 5
#: Duplicate-line problems fetched (the rest are only counted).
MAX_DUPLICATE_PROBLEMS = 1000


def load_manifest(
    ledger: Ledger,
    manifest: ManifestLike,
    options_hash: str,
    production: staging.Production | None = None,
    bulk: bool = True,
) -> LoadReport:
    """Validate and merge one manifest into `ledger`; raise ManifestError (ledger untouched) if anything is
    wrong. `bulk` False: the empty-ledger fast path was tried already (PreparedLoad.load_new) and gave up.

    `production`: slice processes already staging this manifest (started before the ledger was even
    opened, when it is new; else started here if the manifest suits); closed in any case. A ledger whose
    SQLite file this process created (`ledger.new_file`) is loaded in bulk mode (see
    uploader.ledger.bare.sqlite_bulk_mode)."""
    import time

    engine, new_file = ledger.engine, ledger.new_file
    started = time.perf_counter()
    label = manifest.label
    shown = label or str(manifest.path)
    try:
        digest = path, size, sha = manifest_digest(manifest)  # of the file as its reading began
        with read_tx(engine) as conn:
            seen = conn.execute(text(ALREADY_LOADED), {"sha": sha, "opt": options_hash}).first()
            empty = conn.execute(text(JOBS_ANY)).first() is None
        if seen is not None:
            rows, conflicts, examples = seen
            return LoadReport(
                shown,
                rows,
                unchanged=rows - conflicts,
                conflicts=conflicts,
                conflict_examples=tuple(json.loads(examples or "[]")),
                already_loaded=True,
            )
        sqlite = engine.dialect.name == "sqlite"
        if sqlite and production is None:
            production = staging.Production.start(manifest)
        if sqlite and empty and bulk:
            with bulk_load.bare_connection(engine) as raw:
                loaded = bulk_load.load_bare(raw, manifest, digest, options_hash, production, new_file, utcnow())
            if loaded is not None:
                new, signed = loaded
                return LoadReport(shown, new, new=new, seconds=time.perf_counter() - started, signed_possible=signed)
        with translate_errors(), engine.connect() as conn:
            try:
                rows = _stage(conn, manifest, production)
                _check(conn, manifest)
                conn.rollback()
                report = _merge(conn, path, size, sha, options_hash, rows, label, manifest.identity)
            except BaseException:
                with contextlib.suppress(Exception):  # what went wrong is told, not the clean-up's own trouble
                    drop_staging(conn)
                raise
            drop_staging(conn)
        return LoadReport(**{**report.__dict__, "seconds": time.perf_counter() - started})
    finally:
        if production is not None:
            production.close()


def drop_staging(conn: Connection) -> None:
    """Drop the staging table, in a deferred transaction (it is TEMP: no lock of the ledger is needed). On
    SQLite the connection is closed instead: its TEMP database goes with it at once, where DROP TABLE frees
    its pages one by one (half a second for a million rows). Not on a connection an interrupt invalidated:
    its table went with it, and a new one would wait for the write lock the old one may still hold until the
    process ends."""
    if conn.invalidated:
        return
    if conn.dialect.name == "sqlite":
        conn.invalidate()  # the pool opens a new connection when one is next needed
        return
    conn.rollback()
    conn = conn.execution_options(sqlite_begin="DEFERRED")
    conn.exec_driver_sql(STAGING_DROP)
    conn.commit()


def _stager(conn: Connection) -> Callable[[list[StagingRow]], None]:
    """How rows get into staging: one executemany per chunk; COPY on PostgreSQL (psycopg 3), which streams
    the rows in one command instead of one round trip per batch of parameters."""
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        driver_conn = conn.connection.driver_connection
        assert driver_conn is not None

        def copy(rows: list[StagingRow]) -> None:
            with driver_conn.cursor() as cursor, cursor.copy(STAGING_COPY) as out:
                for row in rows:
                    out.write_row(row)

        return copy
    insert = staging_insert("?" if conn.dialect.paramstyle == "qmark" else "%s")

    def execute(rows: list[StagingRow]) -> None:
        conn.exec_driver_sql(insert, rows)

    return execute


def _sqlite(conn: Connection) -> sqlite3.Connection:
    """The bare driver connection under `conn`, on SQLite (where a Production's slices are copied)."""
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    return raw


def _stage(conn: Connection, manifest: ManifestLike, production: staging.Production | None = None) -> int:
    """Stream the manifest into the staging table; returns the number of good rows staged. With
    `production` (SQLite), the slice processes' scratch files are copied in instead, unless one of them met a
    problem: then the manifest is read here after all, to find and report every problem."""
    conn.exec_driver_sql(STAGING_DROP)
    conn.exec_driver_sql(STAGING_TABLE)
    attached: list[str] = []
    try:
        total: int | None = None
        if production is not None:
            try:
                total, _, _ = bulk_load.copy_parts(
                    _sqlite(conn), production, staging_from_slice, bulk_load.part_defaults(manifest), attached
                )
            except (bulk_load.NotClean, staging.SliceProcessLost):
                total = None  # read the manifest here after all, to find and report every problem
        if total is None:
            conn.exec_driver_sql(STAGING_CLEAR)
            stage_rows = _stager(conn)
            total = 0
            for chunk in manifest.chunk_tuples():
                params = staging.staged_rows(chunk)
                if params:
                    stage_rows(params)
                    total += len(params)
        conn.exec_driver_sql(STAGING_INDEX)
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(STAGING_ANALYZE)
        conn.commit()  # commits only the TEMP table: the ledger file is not written
    finally:
        if not conn.invalidated:  # an interrupt in a statement invalidates it: its attachments went with it
            conn.rollback()
            for name in attached:  # outside any transaction, as SQLite wants
                _sqlite(conn).execute(detach_slice(name))
    return total


def _check(conn: Connection, manifest: ManifestLike) -> None:
    """Cross-row checks in SQL, then raise every problem at once."""
    dup_count = conn.exec_driver_sql(STAGING_DUPLICATE_COUNT).scalar_one()
    problems = list(manifest.problems)
    total = manifest.problem_count + dup_count
    if dup_count:
        rows = conn.exec_driver_sql(staging_duplicates(MAX_DUPLICATE_PROBLEMS))
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
    if not conn.exec_driver_sql(STAGING_ANY).first():
        raise ManifestError([Problem(str(manifest.path), None, None, "the manifest has no rows")])


def _lock_jobs(conn: Connection) -> None:
    """Keep other writers out of `jobs` for the merge, so its counts hold until it commits. SQLite: done by
    BEGIN IMMEDIATE. PostgreSQL: a self-conflicting table lock; readers go on, claims and other loads wait."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(LOCK_JOBS)


def _merge(
    staging_conn: Connection,
    path: Path,
    size: int,
    sha: str,
    options_hash: str,
    rows: int,
    label: str | None,
    identity: FileIdentity,
) -> LoadReport:
    """The one short writing transaction: counts, updates, inserts, the manifest record (`label`: what the
    manifest is recorded as, when not its path), committed only if the file is still as its reading began
    (`identity`)."""
    conn = staging_conn.execution_options(sqlite_begin="IMMEDIATE")
    now = utcnow()
    with translate_errors(), conn.begin():
        _lock_jobs(conn)
        empty = conn.execute(text(JOBS_ANY)).first() is None
        new: int
        unchanged: int
        updated: int
        conflicts: int
        if empty:
            new, unchanged, updated, conflicts = rows, 0, 0, 0
        else:
            new, unchanged, updated, conflicts = conn.execute(text(MERGE_COUNTS)).one()
        upd_ex: tuple[str, ...] = ()
        con_ex: tuple[str, ...] = ()
        if conflicts:
            con_ex = tuple(r[0] for r in conn.execute(text(merge_examples(updated=False, limit=EXAMPLES))))
        extras = 0 if empty else max(0, conn.execute(text(MERGE_EXTRA)).rowcount)
        changed = new + updated + extras
        record = manifest_row(path, size, sha, options_hash, rows, now, conflicts, con_ex, changed, label=label)
        mid = conn.execute(text(RECORD_MANIFEST), record).scalar_one()
        if updated:
            upd_ex = tuple(r[0] for r in conn.execute(text(merge_examples(updated=True, limit=EXAMPLES))))
            conn.execute(text(MERGE_CHANGED), {"now": now, "mid": mid})
        if new:
            inserted = conn.execute(text(MERGE_NEW), {"now": now, "mid": mid}).rowcount
            if inserted != new:  # the counts and the ledger must agree, or nothing is loaded
                raise ManifestError(
                    [Problem(str(path), None, None, f"{new} rows were new but {inserted} went in; nothing was loaded")]
                )
        check_unchanged(path, identity)
    return LoadReport(label or str(path), rows, new, unchanged, updated, conflicts, upd_ex, con_ex)
