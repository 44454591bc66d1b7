"""The bulk half of a load on SQLite: copying the slice processes' slices, and the empty-ledger fast path.

A load into an empty SQLite ledger skips the staging table: rows go straight into `jobs`, from the slices
uploader.load.slices's slice processes wrote, or read here. Whatever goes wrong raises NotClean (or
staging.SliceProcessLost), and uploader.load.merge then takes its ordinary staging path, which reports problems.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from uploader.ledger import (
    BEGIN_IMMEDIATE,
    COMMIT,
    JOBS_ANY,
    MANIFEST_SET_ROWS,
    RECORD_MANIFEST,
    ROLLBACK,
    attach_slice,
    create_bare,
    detach_slice,
    insert_new,
    manifest_row,
    sqlite_bulk_mode,
    sqlite_file,
    translate_sqlite_errors,
    utcnow,
)
from uploader.load import slices as staging
from uploader.load.digest import Digest, manifest_digest
from uploader.manifest import check_unchanged, may_hold_expiry

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from uploader.load.source import ManifestLike

__all__ = [
    "NotClean",
    "bare_connection",
    "copy_parts",
    "insert_rows",
    "load_bare",
    "load_into_new_file",
    "part_defaults",
]


class NotClean(Exception):
    """The fast path met a problem; the staging path will find and report all of them."""


def part_defaults(manifest: ManifestLike) -> dict[str, str | None]:
    """The load's defaults, as uploader.ledger.slice_rows binds them."""
    defaults = staging.load_defaults(manifest)
    return dict(zip(("project_id", "work_flow_id", "batch_id"), defaults))


@contextlib.contextmanager
def bare_connection(engine: Engine) -> Iterator[sqlite3.Connection]:
    """The driver connection of a SQLite engine's, with the file to itself as far as this process goes (the
    engine's idle pooled connections closed first: the bulk mode needs that)."""
    engine.dispose()
    proxy = engine.raw_connection()
    raw = proxy.driver_connection
    assert isinstance(raw, sqlite3.Connection)  # the caller takes this path on SQLite only
    try:
        yield raw
    finally:
        proxy.close()


def load_into_new_file(
    ledger: Path, manifest: ManifestLike, options_hash: str, production: staging.Production
) -> tuple[int, bool] | None:
    """A big manifest's first load into a ledger file that does not exist yet, from start to end on a bare
    sqlite3 connection (uploader.ledger.create_bare), so without SQLAlchemy. As load_bare, returns the
    rows loaded and whether a payload may hold a signed URL. None: not tried (another process made the file
    first); NotClean: tried and given up (a problem, a slice process lost), the file holding an empty ledger.
    Either way the usual path then opens the file and loads."""
    with translate_sqlite_errors(ledger):
        bare = create_bare(ledger)
        if bare is None:
            return None
        try:
            digest = manifest_digest(manifest)
            loaded = load_bare(bare.raw, manifest, digest, options_hash, production, True, utcnow(), ledger)
        finally:
            bare.close()
    if loaded is None:
        raise NotClean
    return loaded


def load_bare(
    raw: sqlite3.Connection,
    manifest: ManifestLike,
    digest: Digest,
    options_hash: str,
    production: staging.Production | None,
    new_file: bool,
    now: dt.datetime,
    ledger: Path | None = None,
) -> tuple[int, bool] | None:
    """SQLite, empty ledger, on a bare connection (its file `ledger`, named in errors): rows go straight into
    `jobs` in one transaction, with no staging copy.

    Nobody can be working on an empty ledger, so holding the write lock while the file is read costs no
    one anything; the bulk mode (no per-row foreign-key check, a rollback journal instead of WAL) halves
    the writing. With `production`, slice processes stage the slices (uploader.load.slices) and each
    finished slice is copied in at C speed. A duplicate reference_id shows as a row the unique index
    skipped; on that or any other problem the transaction rolls back (the ledger file is untouched) and
    the staging path runs instead, which finds and reports every problem with its lines. Returns the
    number of rows loaded and whether any of their payloads may hold a signed URL, or None then.
    """
    path, size, sha = digest
    attached: list[str] = []
    try:
        with (
            translate_sqlite_errors(ledger),
            sqlite_bulk_mode(raw, new_file=new_file) as journal,
            _Flusher.of(raw, journal) as flush,
        ):
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
                        raw,
                        production,
                        lambda part: insert_new(stamp, mid, part),
                        part_defaults(manifest),
                        attached,
                        flush,
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
    flush: _Flusher | None = None,
) -> tuple[int, int, bool]:
    """Attach each slice's scratch file as soon as it is ready and copy it in with `sql_for(schema name)`;
    after each, ask `flush` to make what was written so far durable.
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
        with production.copying():
            changed += raw.execute(sql_for(name), params).rowcount
        if flush is not None:
            flush.request()
        sent += part.rows
        signed = signed or part.signed
    return sent, changed, signed


class _Flusher:
    """A thread that fsyncs the ledger file whenever asked (after each part is copied), while the load goes
    on: the commit's own fsync then waits only for the pages written since the last one, not for the whole
    file. In rollback-journal mode only (in WAL the pages go to the log); an extra fsync of pages SQLite has
    written never breaks its atomic commit, which rests on the journal being synced first."""

    def __init__(self, fd: int) -> None:
        self._fd, self._closing = fd, False
        self._wanted = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uploader-flush", daemon=True)
        self._thread.start()

    @classmethod
    @contextlib.contextmanager
    def of(cls, raw: sqlite3.Connection, journal: bool) -> Iterator[_Flusher | None]:
        """A flusher of `raw`'s main database file if it is in rollback-journal mode (`journal`), else None;
        stopped on leaving (before another load path might fork slice processes)."""
        file = sqlite_file(raw) if journal else ""
        try:
            fd = os.open(file, os.O_RDONLY) if file else -1
        except OSError:  # only a speed-up: the load goes on without it
            fd = -1
        if fd < 0:
            yield None
            return
        flusher = cls(fd)
        try:
            yield flusher
        finally:
            flusher.close()

    def request(self) -> None:
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closing:
                return
            try:
                os.fsync(self._fd)
            except OSError:  # the commit's own fsync meets it again and says so
                return

    def close(self) -> None:
        self._closing = True
        self._wanted.set()
        self._thread.join()
        os.close(self._fd)
