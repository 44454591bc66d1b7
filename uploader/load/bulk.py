"""The bulk half of a load on SQLite: copying the slice processes' slices, and the empty-ledger fast path.

A load into an empty SQLite ledger skips the staging table: rows go straight into `jobs`, from the slices
uploader.load.slices's slice processes wrote, or read here. Whatever goes wrong raises NotClean (or
staging.SliceProcessLost), and uploader.load.merge then takes its ordinary staging path, which reports problems.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from uploader.ledger import (
    BEGIN_IMMEDIATE,
    COMMIT,
    JOBS_ANY,
    MANIFEST_SET_ROWS,
    RECORD_MANIFEST,
    ROLLBACK,
    attach_slice,
    detach_slice,
    insert_new,
    manifest_row,
    sqlite_bulk_mode,
    translate_errors,
)
from uploader.load import slices as staging
from uploader.manifest import check_unchanged, may_hold_expiry

if TYPE_CHECKING:
    from uploader.load.source import ManifestLike

__all__ = ["NotClean", "copy_parts", "insert_rows", "load_into_empty", "part_defaults"]


class NotClean(Exception):
    """The fast path met a problem; the staging path will find and report all of them."""


def part_defaults(manifest: ManifestLike) -> dict[str, str | None]:
    """The load's defaults, as uploader.ledger.slice_rows binds them."""
    defaults = staging.load_defaults(manifest)
    return dict(zip(("project_id", "work_flow_id", "batch_id"), defaults))


def load_into_empty(
    engine: Engine,
    manifest: ManifestLike,
    path: Path,
    size: int,
    sha: str,
    options_hash: str,
    production: staging.Production | None,
    new_file: bool,
    now: dt.datetime,
) -> tuple[int, bool] | None:
    """SQLite, empty ledger: rows go straight into `jobs` in one transaction, with no staging copy.

    Nobody can be working on an empty ledger, so holding the write lock while the file is read costs no
    one anything; the bulk mode (no per-row foreign-key check, a rollback journal instead of WAL) halves
    the writing. With `production`, slice processes stage the slices (uploader.load.slices) and each
    finished slice is copied in at C speed. A duplicate reference_id shows as a row the unique index
    skipped; on that or any other problem the transaction rolls back (the ledger file is untouched) and
    the staging path runs instead, which finds and reports every problem with its lines. Returns the
    number of rows loaded and whether any of their payloads may hold a signed URL, or None then.
    """
    engine.dispose()  # the bulk mode needs the file to itself: close our own idle pooled connections
    proxy = engine.raw_connection()
    raw = proxy.driver_connection
    assert isinstance(raw, sqlite3.Connection)  # the caller takes this path on SQLite only
    attached: list[str] = []
    try:
        with translate_errors(), sqlite_bulk_mode(raw, new_file=new_file):
            raw.execute(BEGIN_IMMEDIATE)
            try:
                if raw.execute(JOBS_ANY).fetchone() is not None:
                    raise NotClean
                stamp = now.isoformat(" ", "microseconds")  # SQLAlchemy's own SQLite DateTime format
                mid: int = raw.execute(
                    RECORD_MANIFEST, manifest_row(path, size, sha, options_hash, 0, stamp, label=manifest.label)
                ).fetchone()[0]
                if production is not None:
                    sent, inserted, signed = copy_parts(
                        raw, production, lambda part: insert_new(stamp, mid, part), part_defaults(manifest), attached
                    )
                else:
                    sent, inserted, signed = insert_rows(raw, manifest, stamp, mid)
                if manifest.problem_count or inserted != sent or sent == 0:
                    raise NotClean
                raw.execute(MANIFEST_SET_ROWS, (sent, sent, mid))
                check_unchanged(path, manifest.identity)
                raw.execute(COMMIT)
            except BaseException:
                if raw.in_transaction:  # SQLite may have rolled back already (disk full, say)
                    raw.execute(ROLLBACK)
                raise
            finally:
                for name in attached:
                    raw.execute(detach_slice(name))
    except (NotClean, staging.SliceProcessLost):
        return None
    finally:
        proxy.close()
    return sent, signed


def insert_rows(raw: sqlite3.Connection, manifest: ManifestLike, stamp: str, mid: int) -> tuple[int, int, bool]:
    """The rows of the whole manifest, read here, bound and inserted. Returns (rows sent, rows inserted,
    whether a payload may hold a signed URL)."""
    cursor = raw.cursor()
    sql = insert_new(stamp, mid)
    sent = inserted = 0
    signed = False
    for chunk in manifest.chunk_tuples():
        if manifest.problem_count:
            raise NotClean
        cursor.executemany(sql, [row[1:] + row[:1] for row in staging.staged_rows(chunk)])
        signed = signed or may_hold_expiry("".join([job[5] for job in chunk]))
        inserted += cursor.rowcount
        sent += len(chunk)
    return sent, inserted, signed


def copy_parts(
    raw: sqlite3.Connection,
    production: staging.Production,
    sql_for: Callable[[str], str],
    params: Mapping[str, str | None],
    attached: list[str],
) -> tuple[int, int, bool]:
    """Attach each slice's scratch file as soon as it is ready and copy it in with `sql_for(schema name)`.
    Returns (rows the slices hold, rows the statements changed, whether a payload may hold a signed URL);
    raises NotClean if a slice had a problem or the file could not be cut, SliceProcessLost if a slice
    process died."""
    sent = changed = 0
    signed = False
    for part in production.results():
        if part.problem_count or part.uncuttable:
            raise NotClean
        name = f"part{part.index}"
        raw.execute(attach_slice(name), (str(part.path),))
        attached.append(name)
        changed += raw.execute(sql_for(name), params).rowcount
        sent += part.rows
        signed = signed or part.signed
    return sent, changed, signed
