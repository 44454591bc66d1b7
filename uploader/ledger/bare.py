"""A SQLite ledger on a bare sqlite3 connection: what every connection to one is set up with (WAL, pragmas),
SQLite's errors in plain words, the bulk mode of a load, and a new ledger made without SQLAlchemy.

`uploader load` of a big manifest into a new ledger file runs on a bare connection from start to end and so
never imports SQLAlchemy (a quarter of a second of CPU, beside the slice processes); uploader.ledger.engine
sets up its own SQLite connections with the same `setup_connection`. Standard library only.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from uploader.errors import LedgerError
from uploader.ledger.locate import FileHold, discard_unused, hold_shared, release
from uploader.ledger.staging import BEGIN_IMMEDIATE, COMMIT, ROLLBACK

__all__ = [
    "AUTOCHECKPOINT_PAGES",
    "BUSY_TIMEOUT_MS",
    "NEW_LEDGER_SCHEMA",
    "PAGE_SIZE",
    "SCHEMA_HEAD",
    "BareLedger",
    "create_bare",
    "create_private_file",
    "damaged",
    "damaged_code",
    "enable_wal",
    "setup_connection",
    "sqlite_bulk_mode",
    "sqlite_file",
    "sqlite_refusal",
    "translate_sqlite_errors",
    "unwritable_files",
    "write_refusal",
]

BUSY_TIMEOUT_MS = 30_000
PAGE_SIZE = 16384
#: WAL pages after which a committing connection checkpoints the WAL itself, its commit waiting for the
#: checkpoint's two fsyncs (SQLite's default is 1,000). While a run or a sync goes on, `background_checkpoints` does it
#: first, off the event loop; this is the bound should that thread fall behind (or no such thread run).
AUTOCHECKPOINT_PAGES = 8000


def create_private_file(path: Path) -> None:
    """Create the SQLite file with mode 0600 before SQLite does: payloads can carry signed URLs."""
    if path.exists():
        return
    if not path.parent.is_dir():
        raise LedgerError(f"cannot create ledger {path}: folder {path.parent} does not exist")
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise LedgerError(f"cannot create ledger {path}: {exc.strerror}") from None


#: SQLite's primary result codes for a damaged file: SQLITE_CORRUPT ("database disk image is malformed")
#: and SQLITE_NOTADB ("file is not a database").
_DAMAGED_CODES = (11, 26)


def damaged(path: Path | str, reason: str, unchanged: bool = False) -> LedgerError:
    """The one message for a ledger file SQLite cannot read: which file, SQLite's reason, what to do.
    A file with no SQLite header may simply be the wrong file (a CSV passed as --ledger)."""
    where = shlex.quote(str(path))
    message = f"{path} is not a usable uploader ledger: {reason} (SQLite)."
    if unchanged:
        message += " It was left unchanged."
    if "not a database" in reason:
        return LedgerError(
            f"{message} Check that --ledger (or UPLOADER_LEDGER) names your ledger file; if it "
            "does, the file is destroyed: restore it from a backup."
        )
    return LedgerError(
        f"{message} Restore it from a backup, or copy what SQLite can still read into a new file "
        f'(sqlite3 {where} ".recover" | sqlite3 {where}.recovered) and pass '
        f"--ledger {where}.recovered."
    )


#: SQLite's result codes (the low byte of an extended code) of a file it may not write, cannot open, or has
#: no room for.
_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_FULL = 8, 14, 13


def sqlite_refusal(exc: sqlite3.Error, path: Path | None) -> LedgerError | None:
    """A full disk or a ledger that cannot be written, as a LedgerError naming where (None: anything else)."""
    code = sqlite_code(exc)
    what = str(exc).splitlines()[0]
    if code == _SQLITE_FULL:
        ledger = f"the ledger's folder ({path.parent})" if path is not None else "the ledger's disk"
        return LedgerError(
            f"ledger error: {what}: no space left in {ledger} or in SQLite's temporary folder "
            f"({sqlite_temp_folder()}, where a load keeps the rows it checks); free space there, or set "
            "TMPDIR to a roomier folder"
        )
    if code in (_SQLITE_READONLY, _SQLITE_CANTOPEN) and path is not None:
        return write_refusal(path)
    return None


def write_refusal(path: Path) -> LedgerError | None:
    """Why this user cannot write the ledger file `path` (a read-only mount, a folder or a file it may not
    write), as a LedgerError naming what to change; None if nothing stands in the way."""
    try:
        read_only_mount = bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return None
    if read_only_mount or not os.access(path.parent, os.W_OK):
        return LedgerError(
            f"ledger error: cannot write the ledger {path}: it is on a read-only file system or in a folder "
            f"this user may not write (SQLite writes {path.name}-wal and {path.name}-shm beside it); copy it "
            "to a writable folder and use that copy"
        )
    locked = unwritable_files(path)
    if locked:
        names = " and ".join(str(f) for f in locked)
        return LedgerError(
            f"ledger error: cannot write the ledger {path}: this user may not write {names} (their "
            "permissions); make them writable (`chmod u+w`), or use a copy of the ledger"
        )
    return None


def unwritable_files(path: Path) -> list[Path]:
    """The ledger file and its -wal and -shm files that exist and this user may not write."""
    files = (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
    return [f for f in files if f.exists() and not os.access(f, os.W_OK)]


def sqlite_temp_folder() -> str:
    """Where SQLite keeps its temporary files (a TEMP table, a big sort): the first of SQLITE_TMPDIR, TMPDIR,
    /var/tmp, /usr/tmp, /tmp that is a folder we may write, as SQLite's unix VFS looks for it."""
    for folder in (os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR"), "/var/tmp", "/usr/tmp", "/tmp"):
        if folder and os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            return folder
    return "."


def sqlite_code(exc: sqlite3.Error) -> int:
    """SQLite's primary result code of an error (the low byte of its extended code; 0 when it has none)."""
    return int(getattr(exc, "sqlite_errorcode", 0)) & 0xFF


def damaged_code(exc: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB (extended codes included)."""
    return sqlite_code(exc) in _DAMAGED_CODES


def enable_wal(cur: sqlite3.Cursor) -> None:
    """Switch to WAL (it persists in the file). Several processes opening a new ledger at once can get
    "database is locked" here at once, without SQLite's busy handler waiting: retry for a while."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def sqlite_bulk_mode(raw: sqlite3.Connection, *, new_file: bool) -> Iterator[bool]:
    """For one big insert into an empty SQLite ledger, on a bare driver connection: no per-row foreign-key
    check (the loader just wrote the one manifest row its rows point to), and, in a file this process has
    just created, a rollback journal instead of WAL, which would write every new page twice (to the log,
    then again at the checkpoint). A new page needs no rollback journal, so a crash still leaves the ledger
    as it was before the load. (Switching rewrites the file's header, which is why an older file keeps
    WAL: a failed load must leave it byte-for-byte unchanged.) The journal is switched only if no other
    connection has the file open (else SQLite refuses at once, and the load goes on in WAL). Yields
    whether it switched; WAL and the foreign-key checks are back afterwards."""
    raw.execute("PRAGMA foreign_keys = OFF")
    switched = False
    if new_file:
        raw.execute("PRAGMA busy_timeout = 0")
        try:
            switched = raw.execute("PRAGMA journal_mode = DELETE").fetchone()[0].lower() == "delete"
        except sqlite3.OperationalError:
            pass
        finally:
            raw.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        yield switched
    finally:
        if switched:
            enable_wal(raw.cursor())
        raw.execute("PRAGMA foreign_keys = ON")


def sqlite_file(raw: sqlite3.Connection) -> str:
    """The file of `raw`'s main database ('' for an in-memory or temporary one)."""
    return str(raw.execute("PRAGMA database_list").fetchone()[2])


def setup_connection(raw: sqlite3.Connection) -> None:
    """What every connection to a SQLite ledger starts with: BEGIN emitted by us, a busy timeout, WAL."""
    raw.isolation_level = None  # we emit BEGIN ourselves (see uploader.ledger.engine)
    cur = raw.cursor()
    cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # New files only (it cannot change later): a quarter of the page writes of 4 KiB pages when a big
    # manifest is loaded, and no slower to run from (figures: benchmarks/README.md).
    cur.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    enable_wal(cur)
    cur.execute("PRAGMA synchronous = NORMAL")  # durable against process crashes in WAL mode
    cur.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
    cur.execute("PRAGMA cache_size = -32768")  # 32 MiB: keeps index pages of big loads in memory
    cur.execute("PRAGMA foreign_keys = ON")
    cur.close()


@contextmanager
def translate_sqlite_errors(path: Path | None = None) -> Iterator[None]:
    """The driver's failures on a bare connection (disk full, read-only, a damaged file) as a LedgerError
    with a plain message; `path`: the ledger file, named in what to do."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise sqlite_refusal(exc, path) or LedgerError(f"ledger error: {str(exc).splitlines()[0]}") from exc
    except sqlite3.DatabaseError as exc:
        if damaged_code(exc):
            raise damaged(path or "the ledger file", str(exc).splitlines()[0]) from exc
        raise


#: The newest migration in migrations/versions (a test keeps it equal to Alembic's head).
SCHEMA_HEAD = "0010"

#: A new ledger's tables and indexes, as SQLAlchemy's `create_all` of uploader.ledger.models makes them on
#: SQLite, then Alembic's version table (tests/test_bare_ledger.py keeps the two ways alike, text for text).
NEW_LEDGER_SCHEMA = (
    (
        "CREATE TABLE manifests (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tpath TEXT NOT NULL, \n"
        "\tsize INTEGER NOT NULL, \n"
        "\tsha256 VARCHAR(64) NOT NULL, \n"
        "\toptions_hash VARCHAR(64) NOT NULL, \n"
        "\trow_count INTEGER NOT NULL, \n"
        "\tloaded_at DATETIME NOT NULL, \n"
        "\tconflicts INTEGER DEFAULT '0' NOT NULL, \n"
        "\tconflict_examples TEXT, \n"
        "\tchanged INTEGER DEFAULT '0' NOT NULL, \n"
        "\tCONSTRAINT pk_manifests PRIMARY KEY (id)\n"
        ")"
    ),
    "CREATE INDEX ix_manifests_sha256_options_hash ON manifests (sha256, options_hash)",
    (
        "CREATE TABLE batches (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tproject_id VARCHAR(255) NOT NULL, \n"
        "\tname VARCHAR(255) NOT NULL, \n"
        "\tbatch_id VARCHAR(64), \n"
        "\tcreated_at DATETIME NOT NULL, \n"
        "\tauto BOOLEAN DEFAULT 0 NOT NULL, \n"
        "\treserved_by VARCHAR(64), \n"
        "\tCONSTRAINT pk_batches PRIMARY KEY (id), \n"
        "\tCONSTRAINT uq_batches_project_id_name UNIQUE (project_id, name)\n"
        ")"
    ),
    (
        "CREATE TABLE workers (\n"
        "\towner VARCHAR(64) NOT NULL, \n"
        "\thostname VARCHAR(255) NOT NULL, \n"
        "\tpid INTEGER NOT NULL, \n"
        "\tstarted_at DATETIME NOT NULL, \n"
        "\theartbeat_at DATETIME NOT NULL, \n"
        "\tstopped_at DATETIME, \n"
        "\tsent INTEGER NOT NULL, \n"
        "\trate FLOAT, \n"
        "\tCONSTRAINT pk_workers PRIMARY KEY (owner)\n"
        ")"
    ),
    (
        "CREATE TABLE urls (\n"
        "\turl_hash VARCHAR(64) NOT NULL, \n"
        "\turl TEXT NOT NULL, \n"
        "\tverdict VARCHAR(16) NOT NULL, \n"
        "\tdetail TEXT NOT NULL, \n"
        "\thttp_status INTEGER, \n"
        "\tcontent_type TEXT, \n"
        "\tlength INTEGER, \n"
        "\tchecked_at DATETIME NOT NULL, \n"
        "\tCONSTRAINT pk_urls PRIMARY KEY (url_hash)\n"
        ")"
    ),
    (
        "CREATE TABLE activity (\n"
        "\towner VARCHAR(64) NOT NULL, \n"
        "\tminute DATETIME NOT NULL, \n"
        "\trequests INTEGER NOT NULL, \n"
        "\tcreated INTEGER NOT NULL, \n"
        "\trecovered INTEGER NOT NULL, \n"
        "\tfailed INTEGER NOT NULL, \n"
        "\tthrottled INTEGER NOT NULL, \n"
        "\tretried INTEGER NOT NULL, \n"
        "\tCONSTRAINT pk_activity PRIMARY KEY (owner, minute)\n"
        ")"
    ),
    (
        "CREATE TABLE jobs (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tproject_id VARCHAR(255) NOT NULL, \n"
        "\treference_id VARCHAR(255) NOT NULL, \n"
        "\twork_flow_id VARCHAR(255) NOT NULL, \n"
        "\tbatch_id VARCHAR(64), \n"
        "\tbody TEXT NOT NULL, \n"
        "\tbody_hash VARCHAR(64) NOT NULL, \n"
        "\textra TEXT, \n"
        "\tstatus VARCHAR(16) NOT NULL, \n"
        "\tjob_id VARCHAR(64), \n"
        "\trecovered BOOLEAN NOT NULL, \n"
        "\terror_code VARCHAR(64), \n"
        "\terror_message TEXT, \n"
        "\terror_details TEXT, \n"
        "\thttp_status INTEGER, \n"
        "\tattempts INTEGER NOT NULL, \n"
        "\tnot_before DATETIME, \n"
        "\tlease_owner VARCHAR(64), \n"
        "\tlease_token INTEGER NOT NULL, \n"
        "\tlease_expires_at DATETIME, \n"
        "\tcreated_at DATETIME NOT NULL, \n"
        "\tupdated_at DATETIME NOT NULL, \n"
        "\tmanifest_id INTEGER, \n"
        "\tmanifest_line INTEGER, \n"
        "\tsent_hashes TEXT, \n"
        "\tattempt_hash VARCHAR(64), \n"
        "\torigin VARCHAR(16), \n"
        "\tchecked_at DATETIME, \n"
        "\texpires_at DATETIME, \n"
        "\tplatform_status VARCHAR(255), \n"
        "\tplatform_status_at DATETIME, \n"
        "\tresult_path TEXT, \n"
        "\tresult TEXT, \n"
        "\tresult_sha256 VARCHAR(64), \n"
        "\tresult_error TEXT, \n"
        "\tCONSTRAINT pk_jobs PRIMARY KEY (id), \n"
        "\tCONSTRAINT uq_jobs_project_id_reference_id UNIQUE (project_id, reference_id), \n"
        "\tCONSTRAINT fk_jobs_manifest_id_manifests FOREIGN KEY(manifest_id) REFERENCES manifests (id)\n"
        ")"
    ),
    "CREATE INDEX ix_jobs_status_not_before_id ON jobs (status, not_before, id)",
    "CREATE INDEX ix_jobs_job_id ON jobs (job_id) WHERE job_id IS NOT NULL",
    (
        "CREATE TABLE alembic_version (\n"
        "\tversion_num VARCHAR(32) NOT NULL, \n"
        "\tCONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n"
        ")"
    ),
)


class BareLedger:
    """A ledger file open on a bare sqlite3 connection, held with LOCK_SH as `Ledger` holds its file (so that
    a command discarding the file it created waits for us: uploader.ledger.locate) until closed."""

    def __init__(self, raw: sqlite3.Connection, hold: FileHold) -> None:
        self.raw, self._hold = raw, hold

    def close(self) -> None:
        try:
            self.raw.close()
        finally:
            release(self._hold)


def create_bare(path: Path) -> BareLedger | None:
    """A new ledger in the SQLite file `path`, stamped with SCHEMA_HEAD (Alembic's "create, then stamp head"),
    on a bare connection set up as the engine sets up its own; the file is made private (mode 0600) first.
    None (nothing done) if the file was removed meanwhile or already holds tables (another process made it
    first): the caller then opens it the usual way. Interrupted before the schema is in, it removes the file."""
    create_private_file(path)
    hold = hold_shared(path)
    if hold is None:
        return None
    raw: sqlite3.Connection | None = None
    try:
        raw = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
        setup_connection(raw)
        raw.execute(BEGIN_IMMEDIATE)
        try:
            if raw.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raw.execute(ROLLBACK)
                raw.close()
                release(hold)
                return None
            for statement in NEW_LEDGER_SCHEMA:
                raw.execute(statement)
            raw.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (SCHEMA_HEAD,))
            raw.execute(COMMIT)
        except BaseException:
            if raw.in_transaction:
                raw.execute(ROLLBACK)
            raise
    except BaseException:  # a signal, a full disk: a file left without the schema is removed (under LOCK_EX)
        if raw is not None:
            raw.close()
        discard_unused(hold, path, _no_tables)
        raise
    return BareLedger(raw, hold)


def _no_tables(path: Path) -> bool:
    """Whether the SQLite file holds no table (one that is not a database at all is never removed)."""
    con = sqlite3.connect(path, timeout=5)
    try:
        return bool(con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0)
    except sqlite3.DatabaseError:
        return False
    finally:
        con.close()
