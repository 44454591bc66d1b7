"""The bulk half of a load on SQLite: copying the staging workers' slices, and the empty-ledger fast path.

A load into an empty SQLite ledger skips the staging table: rows go straight into `jobs`, from the slices
uploader.load.slices's worker processes wrote, or read here. Whatever goes wrong raises NotClean (or
staging.WorkerLost), and uploader.load.merge then takes its ordinary staging path, which reports problems.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from uploader.ledger import sqlite_bulk_mode, translate_errors
from uploader.load import slices as staging

if TYPE_CHECKING:
    from uploader.load.merge import ManifestLike

__all__ = ["JOB_COLUMNS", "MANIFEST_INSERT", "NotClean", "copy_parts", "insert_new", "load_into_empty",
           "manifest_row", "part_defaults", "part_rows"]


class NotClean(Exception):
    """The fast path met a problem; the staging path will find and report all of them."""


JOB_COLUMNS = (
    "project_id, reference_id, work_flow_id, batch_id, body, body_hash, extra, status, recovered, attempts, "
    "lease_token, created_at, updated_at, manifest_id, manifest_line"
)


#: The record of a loaded manifest, for the SQLAlchemy connection of a merge and the bare driver one here.
MANIFEST_INSERT = (
    "INSERT INTO manifests (path, size, sha256, options_hash, row_count, loaded_at, conflicts, conflict_examples, "
    "changed) VALUES (:p, :s, :h, :o, :n, :t, :c, :ce, :ch) RETURNING id"
)


def manifest_row(path: Path, size: int, sha: str, options_hash: str, rows: int, loaded_at: object,
                 conflicts: int = 0, conflict_examples: Sequence[str] = (), changed: int = 0,
                 label: str | None = None) -> dict[str, object]:
    """MANIFEST_INSERT's values (the conflicts' examples as a JSON list). `changed`: rows the load added or
    whose payload it updated, which makes an identical reload of any earlier manifest compare its rows.
    The manifest is recorded by its absolute path, or by `label` (a manifest read from stdin)."""
    return {"p": label or str(path.absolute()), "s": size, "h": sha, "o": options_hash, "n": rows, "t": loaded_at,
            "c": conflicts, "ce": json.dumps(list(conflict_examples)) if conflicts else None, "ch": changed}


def insert_new(stamp: str, mid: int, part: str | None = None) -> str:
    """INSERT of new pending rows, the per-load constants written into the SQL (fewer values to bind per
    row); from bound values, or with `part` from that attached scratch file. Duplicates are skipped,
    which the caller sees in the row count."""
    constants = f"'pending', 0, 0, 0, '{stamp}', '{stamp}', {int(mid)}"
    if part is None:
        values = f"VALUES (?, ?, ?, ?, ?, ?, ?, {constants}, ?)"
    else:
        values = (f"SELECT project_id, reference_id, work_flow_id, batch_id, body, body_hash, extra, {constants}, "
                  f"line FROM ({part_rows(part)}) WHERE true")
    return f"INSERT INTO jobs ({JOB_COLUMNS}) {values} ON CONFLICT (project_id, reference_id) DO NOTHING"


def part_rows(part: str) -> str:
    """The rows of an attached scratch file (uploader.load.slices.SCRATCH_COLUMNS) in STAGING_COLUMNS order;
    rows without `own` take the load's defaults, bound as :project_id, :work_flow_id and :batch_id."""
    own = [f"CASE WHEN own IS NULL THEN :{c} ELSE {c} END" for c in ("project_id", "work_flow_id", "batch_id")]
    return (f"SELECT line, {own[0]} AS project_id, reference_id, {own[1]} AS work_flow_id, {own[2]} AS batch_id, "
            f"body, body_hash, extra FROM {part}.staging")


def part_defaults(manifest: ManifestLike) -> dict[str, str | None]:
    """The load's defaults, as part_rows binds them."""
    defaults = staging.load_defaults(manifest)  # type: ignore[arg-type]
    return dict(zip(("project_id", "work_flow_id", "batch_id"), defaults))


def load_into_empty(
    engine: Engine, manifest: ManifestLike, path: Path, size: int, sha: str, options_hash: str,
    production: staging.Production | None, new_file: bool, now: dt.datetime,
) -> int | None:
    """SQLite, empty ledger: rows go straight into `jobs` in one transaction, with no staging copy.

    Nobody can be working on an empty ledger, so holding the write lock while the file is read costs no
    one anything; the bulk mode (no per-row foreign-key check, a rollback journal instead of WAL) halves
    the writing. With `production`, worker processes stage the slices (uploader.load.slices) and each
    finished slice is copied in at C speed. A duplicate reference_id shows as a row the unique index
    skipped; on that or any other problem the transaction rolls back (the ledger file is untouched) and
    the staging path runs instead, which finds and reports every problem with its lines. Returns the
    number of rows loaded, or None then.
    """
    engine.dispose()  # the bulk mode needs the file to itself: close our own idle pooled connections
    proxy = engine.raw_connection()
    raw = proxy.driver_connection
    attached: list[str] = []
    try:
        with translate_errors(), sqlite_bulk_mode(raw, new_file=new_file):  # type: ignore[arg-type]
            raw.execute("BEGIN IMMEDIATE")
            try:
                if raw.execute("SELECT 1 FROM jobs LIMIT 1").fetchone() is not None:
                    raise NotClean
                stamp = now.isoformat(" ", "microseconds")  # SQLAlchemy's own SQLite DateTime format
                mid = raw.execute(MANIFEST_INSERT, manifest_row(path, size, sha, options_hash, 0, stamp,
                                                                label=getattr(manifest, "label", None))).fetchone()[0]
                if production is not None:
                    sent, inserted = copy_parts(raw, production, lambda part: insert_new(stamp, mid, part),
                                                 part_defaults(manifest), attached)
                else:
                    sent, inserted = insert_rows(raw, manifest, stamp, mid)
                if manifest.problem_count or inserted != sent or sent == 0:
                    raise NotClean
                raw.execute("UPDATE manifests SET row_count = ?, changed = ? WHERE id = ?", (sent, sent, mid))
                raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:  # SQLite may have rolled back already (disk full, say)
                    raw.execute("ROLLBACK")
                raise
            finally:
                for name in attached:
                    raw.execute(f"DETACH DATABASE {name}")
    except (NotClean, staging.WorkerLost):
        return None
    finally:
        proxy.close()
    return sent


def insert_rows(raw: Any, manifest: ManifestLike, stamp: str, mid: int) -> tuple[int, int]:
    """The rows of the whole manifest, read here, bound and inserted. Returns (rows sent, rows inserted)."""
    cursor = raw.cursor()
    sql = insert_new(stamp, mid)
    sent = inserted = 0
    for chunk in manifest.chunk_tuples():
        if manifest.problem_count:
            raise NotClean
        cursor.executemany(sql, [row[1:] + row[:1] for row in staging.staged_rows(chunk)])
        inserted += cursor.rowcount
        sent += len(chunk)
    return sent, inserted


def copy_parts(
    raw: Any, production: staging.Production, sql_for: Callable[[str], str], params: dict[str, Any],
    attached: list[str],
) -> tuple[int, int]:
    """Attach each slice's scratch file as soon as it is ready and copy it in with `sql_for(schema name)`.
    Returns (rows the slices hold, rows the statements changed); raises NotClean if a slice had a problem
    or the file could not be cut, WorkerLost if a worker died."""
    sent = changed = 0
    for part in production.results():
        if part.problem_count or part.uncuttable:
            raise NotClean
        name = f"part{part.index}"
        raw.execute(f"ATTACH DATABASE ? AS {name}", (str(part.path),))
        attached.append(name)
        changed += raw.execute(sql_for(name), params).rowcount
        sent += part.rows
    return sent, changed
