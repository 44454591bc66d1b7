"""Engine set-up and in-process Alembic migrations: the only place that knows SQLite from PostgreSQL.

SQLite is opened in WAL mode with a busy timeout, and the driver's own transaction handling is switched off
so that we emit BEGIN ourselves: writers ask for `BEGIN IMMEDIATE` (take the write lock up front, so two
writers never deadlock on a lock upgrade), readers get a plain deferred BEGIN.

While `uploader run` sends, its writes wait for another process's write lock in short slices (`LockWait`,
`set_lock_wait`) rather than inside one 30 s busy timeout: between slices Python runs signal handlers, so a
SIGTERM ends the wait at once, and the run says that it is waiting. On PostgreSQL a statement waits for the
locks it needs inside the server: there a thread of the LockWait (`_StatementWatch`) cancels the run's statement
that is still running when the LockWait gives up.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, DateTime, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, OperationalError

from uploader.errors import LedgerError, LedgerTooNewError
from uploader.ledger.address import parse_url, shown_ledger, shown_url
from uploader.ledger.bare import (
    BUSY_TIMEOUT_MS,
    SCHEMA_HEAD,
    create_private_file,
    damaged,
    damaged_code,
    setup_connection,
    sqlite_bulk_mode,
    sqlite_refusal,
    translate_sqlite_errors,
    unwritable_files,
    write_refusal,
)
from uploader.ledger.locate import DEFAULT_LEDGER, ledger_url, read_head

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Dialect, ExceptionContext

__all__ = [
    "DEFAULT_LEDGER",
    "SCHEMA_HEAD",
    "LedgerLocked",
    "LedgerNotUpgraded",
    "LockWait",
    "background_checkpoints",
    "create_new",
    "driver_sql",
    "driver_time",
    "ledger_name",
    "ledger_url",
    "migrate",
    "open_engine",
    "read_tx",
    "script_location",
    "set_lock_wait",
    "sqlite_bulk_mode",
    "translate_errors",
    "write_tx",
]

#: Seconds between a background checkpointer's checkpoints (a run writes ~1,000 pages a second).
CHECKPOINT_EVERY = 1.0
#: With a LockWait: how long one try for the write lock blocks inside SQLite (between tries Python runs).
LOCK_SLICE_MS = 100
#: With a LockWait: give up waiting for another process's write lock after this long (seconds).
LOCK_WAIT_LIMIT = 600.0
#: PostgreSQL: seconds after a statement's cancel was sent, still unanswered, when its connection is severed.
SEVER_AFTER = 1.0
#: PostgreSQL: seconds a cancel request may take before it is abandoned.
CANCEL_TIMEOUT = 10.0
#: PostgreSQL: libpq's connect_timeout (its least) for new connections after one was severed.
SEVERED_CONNECT_TIMEOUT = 2


class LedgerLocked(LedgerError):
    """Another process held the ledger's write lock for too long, or the run stopped while waiting."""

    def __init__(self, message: str, *, interrupted: bool = False) -> None:
        super().__init__(message)
        self.interrupted = interrupted  #: the wait ended because the run is stopping, not on a failure


@dataclass
class LockWait:
    """How a process's writes wait for SQLite's write lock when another process holds it.

    `give_up()` is polled between slices (a signal handler sets what it reads): True ends the wait with
    LedgerLocked(interrupted=True). `waiting(seconds)` is told after `notice_after` seconds and then every
    `notice_every` seconds, so the user hears why nothing moves. After `limit` seconds: LedgerLocked.
    """

    give_up: Callable[[], bool]
    waiting: Callable[[float], None]
    limit: float = LOCK_WAIT_LIMIT
    notice_after: float = 2.0
    notice_every: float = 10.0


_LOCK_WAITS: weakref.WeakKeyDictionary[Engine, LockWait] = weakref.WeakKeyDictionary()


def set_lock_wait(engine: Engine, wait: LockWait | None) -> LockWait | None:
    """Make the engine's write transactions wait for the SQLite write lock as `wait` says (None: only
    SQLite's own 30 s busy timeout). On PostgreSQL: a statement still running when `wait` gives up (or after
    its limit) is cancelled, and raises LedgerLocked as a SQLite wait would. Returns the wait it replaces (to
    put back)."""
    old = _WATCHES.pop(engine, None)
    if old is not None:
        old.close()
    previous = _LOCK_WAITS.pop(engine, None)
    if wait is None:
        return previous
    _LOCK_WAITS[engine] = wait
    if engine.dialect.name != "sqlite":
        watch = _WATCHES[engine] = _StatementWatch(wait)
        watch.severed_at = old.severed_at if old is not None else None
    return previous


class _StatementWatch:
    """PostgreSQL's LockWait: the engine's statements in progress, and a thread that cancels those still
    running (after LOCK_SLICE_MS) once the wait gives up, or after its limit. The statement then fails with
    QueryCanceled, which the engine's `handle_error` hook turns into LedgerLocked. A statement still running
    after the wait's `notice_after` is told (`waiting`, from this thread: the thread that runs the statement
    is blocked in it), then every `notice_every` seconds."""

    def __init__(self, wait: LockWait) -> None:
        self.wait = wait
        self._lock = threading.Lock()
        self._running: dict[int, tuple[Any, float]] = {}  #: id(DBAPI cursor) → (the cursor, monotonic start)
        self._cancelled: dict[int, bool] = {}  #: id(DBAPI cursor) → whether it was the wait giving up
        #: When a connection whose cancel went unanswered was severed (monotonic; None: none since the last
        #: statement that ended normally). Meanwhile new connections wait less (`_setup_postgresql`).
        self.severed_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="uploader-statement-watch", daemon=True)
        self._thread.start()

    def started(self, cursor: Any) -> None:
        with self._lock:
            self._running[id(cursor)] = (cursor, time.monotonic())

    def ended(self, cursor: Any) -> bool | None:
        """The statement of `cursor` is over: whether it was cancelled because the wait gave up (True), after
        the limit (False), or not at all (None)."""
        with self._lock:
            self._running.pop(id(cursor), None)
            cancelled = self._cancelled.pop(id(cursor), None)
            if cancelled is None:
                self.severed_at = None  # the server answers again
            return cancelled

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        slice_seconds = LOCK_SLICE_MS / 1000
        told: dict[tuple[int, float], float] = {}  #: (cursor, its start) → how long it had run when told
        cancelled_at: dict[int, float] = {}  #: cursor → when its cancel was sent (until it is severed)
        while not self._stop.wait(slice_seconds):
            now = time.monotonic()
            with self._lock:
                running = [(key, cursor, start) for key, (cursor, start) in self._running.items()]
            told = {k: v for k, v in told.items() if any(k == (key, start) for key, _, start in running)}
            for key, cursor, start in running:
                if now - start < slice_seconds:
                    continue
                gave_up = self.wait.give_up()
                if not gave_up and now - start <= self.wait.limit:
                    self._tell(told, (key, start), now - start)
                    continue
                with self._lock:
                    if key not in self._running:
                        continue  # ended meanwhile
                    if key in self._cancelled:
                        if now - cancelled_at.get(key, now) > SEVER_AFTER:
                            if _sever(cursor):  # the cancel went unanswered: the connection itself is dead
                                self.severed_at = now
                            cancelled_at.pop(key, None)
                        continue
                    self._cancelled[key] = gave_up
                    cancelled_at[key] = now
                threading.Thread(target=_cancel, args=(cursor,), name="uploader-cancel", daemon=True).start()
            cancelled_at = {k: v for k, v in cancelled_at.items() if any(k == key for key, _, _ in running)}

    def _tell(self, told: dict[tuple[int, float], float], statement: tuple[int, float], waited: float) -> None:
        """Tell the wait of a statement that has run `waited` seconds, when it is time to (see LockWait)."""
        last = told.get(statement)
        if waited < self.wait.notice_after or (last is not None and waited - last < self.wait.notice_every):
            return
        told[statement] = waited
        try:
            self.wait.waiting(waited)
        except Exception:  # noqa: BLE001 - a notice that cannot be shown must not end the watch
            pass


def _cancel(cursor: Any) -> None:
    """Ask the server to cancel `cursor`'s statement: a request over a connection of its own, safe from any
    thread, sent from a thread of its own (a server that does not answer would hold it: libpq's PQcancel has
    no timeout) so that the watch goes on and severs the connection if the cancel goes unanswered."""
    try:
        connection = cursor.connection
        cancel_safe = getattr(connection, "cancel_safe", None)  # psycopg 3.2+: bounded by a timeout
        if cancel_safe is not None:
            cancel_safe(timeout=CANCEL_TIMEOUT)
        else:
            connection.cancel()
    except Exception:  # noqa: BLE001 - unanswered or refused: the watch severs the connection
        pass


def _sever(cursor: Any) -> bool:
    """Shut down the socket of `cursor`'s connection (a duplicate of its descriptor: the driver still owns and
    closes the original). The statement blocked in reading its answer then fails at once, as on a dropped
    connection: the way out when a cancel cannot reach the server, or its answer cannot come back (a network
    that stopped forwarding, without closing; no keepalive would notice for a minute or more). Whether it did
    (not for a connection still being made, or closed meanwhile)."""
    try:
        duplicate = socket.socket(fileno=os.dup(cursor.connection.pgconn.socket))
    except Exception:  # noqa: BLE001 - no socket (closed meanwhile, or not made yet): nothing to sever
        return False
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    finally:
        duplicate.close()
    return True


_WATCHES: weakref.WeakKeyDictionary[Engine, _StatementWatch] = weakref.WeakKeyDictionary()
#: PostgreSQL's SQLSTATE of a statement cancelled on request (query_canceled).
_CANCELLED = "57014"


def _connect_after_sever(watch: _StatementWatch | None, cparams: dict[str, Any]) -> None:
    """After a dead connection was severed: a new one is refused at once if the wait gives up (the command is
    stopping: waiting for a server that stopped answering would hold it), else given SEVERED_CONNECT_TIMEOUT."""
    if watch is None or watch.severed_at is None:
        return
    if watch.wait.give_up():
        raise LedgerLocked(
            "stopped while the ledger's database did not answer (its connection stalled)", interrupted=True
        )
    given = int(cparams.get("connect_timeout", SEVERED_CONNECT_TIMEOUT))
    cparams["connect_timeout"] = min(given, SEVERED_CONNECT_TIMEOUT)


def _setup_postgresql(engine: Engine) -> None:
    """The hooks of `_StatementWatch` (they do nothing while the engine has no LockWait)."""

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Dialect, record: object, cargs: object, cparams: dict[str, Any]) -> None:
        _connect_after_sever(_WATCHES.get(engine), cparams)

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Connection, cursor: Any, *_: object) -> None:
        watch = _WATCHES.get(engine)
        if watch is not None:
            watch.started(cursor)

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Connection, cursor: Any, *_: object) -> None:
        watch = _WATCHES.get(engine)
        if watch is not None:
            watch.ended(cursor)

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        watch = _WATCHES.get(engine)
        cursor = getattr(context.execution_context, "cursor", None)
        if watch is None or cursor is None:
            return
        cancelled = watch.ended(cursor)
        if cancelled is None and getattr(context.original_exception, "sqlstate", None) == _CANCELLED:
            cancelled = watch.wait.give_up() or None  # our cancel of the statement before, arriving late
        _raise_if_waited(watch, cancelled, context.original_exception)

    dialect = engine.dialect
    original_commit, original_connect = dialect.do_commit, dialect.connect

    def do_commit(dbapi_connection: Any) -> None:
        _watched(_WATCHES.get(engine), _Pending(dbapi_connection), original_commit, dbapi_connection)

    def connect(*cargs: Any, **cparams: Any) -> Any:
        return _watched(_WATCHES.get(engine), _Pending(None), original_connect, *cargs, **cparams)

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.connect = connect  # type: ignore[method-assign]


class _Pending:
    """A call the watch follows besides statements (a COMMIT, a new connection): its DBAPI connection, which a
    cancel and a sever reach through `.connection`, as through a cursor (None while connecting: only told)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection


def _watched(watch: _StatementWatch | None, pending: _Pending, call: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """`call(*args, **kw)`, followed by `watch` (told after 2 s, cancelled and severed when the wait gives up)."""
    if watch is None:
        return call(*args, **kw)
    watch.started(pending)
    try:
        result = call(*args, **kw)
    except Exception as exc:
        _raise_if_waited(watch, watch.ended(pending), exc)
        raise
    watch.ended(pending)
    return result


def _raise_if_waited(watch: _StatementWatch, cancelled: bool | None, exc: BaseException) -> None:
    """The LedgerLocked for a call the watch cancelled (`cancelled`: because the wait gave up, or after its
    limit); nothing for one it did not."""
    if cancelled is None:
        return
    if cancelled:
        raise LedgerLocked(
            "stopped while a ledger statement waited (another session holds a lock)", interrupted=True
        ) from exc
    raise LedgerLocked(
        f"ledger error: a statement waited over {watch.wait.limit:.0f} s (another session holds a lock on "
        "the ledger's tables); gave up. Find it (pg_stat_activity, pg_locks), let it finish or stop it"
    ) from exc


def script_location() -> str:
    """Where the Alembic scripts are: inside the installed package, or `migrations/` in a source tree."""
    package = Path(__file__).resolve().parent.parent  # uploader/ (this file is uploader/ledger/engine.py)
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return str(candidate)
    raise LedgerError("the ledger migrations are missing from this installation of uploader")


def _sqlite_path(url: str | URL) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


#: The first 16 bytes of every SQLite database file.
_SQLITE_MAGIC = b"SQLite format 3\x00"
#: The tables every ledger has (a database with other tables and none of these is someone else's).
_LEDGER_TABLES = frozenset({"alembic_version", "jobs", "manifests", "batches", "workers"})


def _not_a_ledger(name: object, tables: set[str], strict: bool) -> LedgerError | None:
    """A database that holds tables but is not a ledger (`strict`, SQLite: any table that is not ours; a
    PostgreSQL database may be shared, so there only tables whose names clash with ours), else None."""
    tables = {t for t in tables if not t.startswith("sqlite_")}  # SQLite's own (sqlite_stat1, sqlite_sequence)
    if not tables or ({"alembic_version", "jobs"} <= tables):
        return None
    foreign = sorted(tables - _LEDGER_TABLES)
    if not strict and not (tables & _LEDGER_TABLES):
        return None
    shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "") if foreign else ", ".join(sorted(tables))
    return LedgerError(
        f"{name} is a database but not an uploader ledger (it has the tables {shown}); it was left unchanged. "
        "Pass --ledger with the ledger's file (or URL), or a new file name to start a ledger."
    )


def _check_sqlite_file(path: Path) -> None:
    """Refuse, before anything writes to it, an existing file that is not a readable SQLite database or is
    someone else's database: the engine's first connection would switch it to WAL and the migrations would
    add our tables to it. A quick look (the header, then the table names), not a full integrity check;
    damage found later is reported the same way (see `_setup_sqlite`)."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return  # a folder is refused by SQLite itself; an empty file is a new ledger
        if read_head(path, len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
            raise damaged(path, "file is not a database", unchanged=True)
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc.strerror}") from None
    refusal = write_refusal(path) if unwritable_files(path) else None
    if refusal is not None:  # SQLite would open it read-only, and leave a WAL file's -wal/-shm behind
        raise refusal
    try:
        # Read-write, though it only reads: a read-only connection would leave a WAL file's -wal/-shm behind.
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open ledger {path}: {exc}") from None
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError:
        return  # locked or busy: the engine waits and reports that as usual
    except sqlite3.DatabaseError as exc:
        raise damaged(path, str(exc).splitlines()[0], unchanged=True) from None
    finally:
        db.close()
    problem = _not_a_ledger(path, tables, strict=True)
    if problem is not None:
        raise problem


def open_engine(url: str, *, create: bool = True) -> Engine:
    """Create an engine for a ledger URL, with SQLite pragmas and explicit BEGIN handling."""
    try:
        parsed = parse_url(url)
        path = _sqlite_path(parsed)
        if path is not None:
            if not path.exists() and not create:
                raise LedgerError(f"no ledger at {path} (load a manifest first, or pass --ledger)")
            _check_sqlite_file(path)
            create_private_file(path)
        options = _postgresql_options(parsed) if parsed.get_backend_name() == "postgresql" else {}
        engine = create_engine(parsed, future=True, **options)
    except ValueError:  # SQLAlchemy's parser: int(port)
        raise LedgerError(f"cannot use the ledger URL {shown_ledger(url)}: its port is not a number") from None
    except (ArgumentError, ImportError) as exc:
        raise LedgerError(f"cannot use the ledger URL {shown_ledger(url)}: {exc}") from None
    if engine.dialect.name == "sqlite":
        _setup_sqlite(engine)
    else:
        _setup_postgresql(engine)
    return engine


# SQLAlchemy's pool logs what it cannot do while it closes or resets a connection (a signal breaking in: "Exception
# closing connection", a traceback); with no handler configured, Python's last resort prints it on stderr. The
# error itself reaches the code that closes the ledger; an application that configures logging still sees it.
logging.getLogger("sqlalchemy.pool").addHandler(logging.NullHandler())


#: Seconds to wait for a PostgreSQL server's answer while connecting (libpq's connect_timeout), unless the URL
#: sets its own: a server that accepts the connection and says nothing is an error, not a silent hang.
CONNECT_TIMEOUT = 10
#: libpq's TCP keepalives and user timeout, unless the URL sets its own: a connection whose peer vanished
#: (a partition, a NAT that forgot the flow) fails within about a minute instead of blocking for hours.
_TCP_SETTINGS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


def _postgresql_options(url: URL) -> dict[str, Any]:
    """create_engine's options for a PostgreSQL ledger: READ COMMITTED, whatever the database's default (the claims,
    `FOR UPDATE SKIP LOCKED`, are written for it; SERIALIZABLE fails them with 40001), and the connection settings
    above where the URL does not choose."""
    settings: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, **_TCP_SETTINGS}
    return {
        "isolation_level": "READ COMMITTED",
        "connect_args": {key: value for key, value in settings.items() if key not in url.query},
    }


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        """A damaged file found by any statement (the first connection's pragmas included): one clear
        LedgerError naming the file instead of SQLAlchemy's DatabaseError and its traceback."""
        exc = context.original_exception
        if isinstance(exc, sqlite3.DatabaseError) and damaged_code(exc):
            raise damaged(engine.url.database or "the ledger", str(exc).splitlines()[0]) from exc
        if isinstance(exc, sqlite3.Error):
            refusal = sqlite_refusal(exc, _sqlite_path(str(engine.url)))
            if refusal is not None:
                raise refusal from exc

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        setup_connection(dbapi_conn)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        wait = _LOCK_WAITS.get(conn.engine) if mode == "IMMEDIATE" else None
        if wait is None:
            conn.exec_driver_sql(f"BEGIN {mode}")
        else:
            # The sqlite3 connection of this SQLite engine (SQLAlchemy types it `Any | None`).
            _begin_waiting(cast(sqlite3.Connection, conn.connection.driver_connection), wait)


@contextmanager
def background_checkpoints(engine: Engine, every: float = CHECKPOINT_EVERY) -> Iterator[None]:
    """While inside, a thread of its own checkpoints a SQLite ledger's WAL every `every` seconds, from a
    connection of its own, so that the commits of a run's event loop do not wait for a checkpoint's fsyncs
    (tens of ms each; the whole loop stops meanwhile). A PASSIVE checkpoint waits for no one: busy, it is
    tried again next time. Nothing happens on PostgreSQL."""
    path = _sqlite_path(str(engine.url))
    if path is None:
        yield
        return
    stop = threading.Event()
    thread = threading.Thread(target=_checkpoint_until, args=(path, stop, every), name="uploader-checkpoint")
    thread.daemon = True  # never what keeps a process alive: the last connection to close checkpoints anyway
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _checkpoint_until(path: Path, stop: threading.Event, every: float) -> None:
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error:
        return  # the writers' own autocheckpoint remains
    try:
        while not stop.wait(every):
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                pass  # locked, or the file went away: next time, else the writers' autocheckpoint
    finally:
        conn.close()


def _begin_waiting(raw: sqlite3.Connection, wait: LockWait) -> None:
    """BEGIN IMMEDIATE, waiting for another process's write lock in LOCK_SLICE_MS slices (see LockWait).
    Once the lock is ours nothing in a WAL transaction waits again; the usual busy timeout is back for that."""
    started = time.monotonic()
    told = 0.0
    raw.execute(f"PRAGMA busy_timeout = {LOCK_SLICE_MS}")
    try:
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
            waited = time.monotonic() - started
            if wait.give_up():
                raise LedgerLocked("stopped while waiting for the ledger's write lock", interrupted=True)
            if waited > wait.limit:
                raise LedgerLocked(
                    f"ledger error: another process has held the ledger's write lock for {waited:.0f} s; gave "
                    "up waiting. Find it (another `uploader load` or `run`, or a sqlite3 shell in a "
                    "transaction), let it finish or stop it"
                )
            if waited >= wait.notice_after and (not told or waited - told >= wait.notice_every):
                told = waited
                wait.waiting(waited)
    finally:
        raw.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


#: A `:name` parameter, as SQLAlchemy's text() finds them (not `::` casts, not an escaped `\\:`).
_NAMED = re.compile(r"(?<![:\w\x5c]):(\w+)(?!:)")


def driver_sql(dialect: Dialect, sql: str) -> str:
    """`sql` with `:name` parameters in the driver's own style, for `Connection.exec_driver_sql` with dict
    parameters (the hot statements of a run: no per-row parameter processing by SQLAlchemy). sqlite3 reads
    `:name` itself; a `pyformat` driver (psycopg) gets `%(name)s`, its literal `%` doubled."""
    if dialect.name == "sqlite":
        return sql
    if dialect.paramstyle != "pyformat":
        raise LedgerError(f"unsupported database driver parameter style {dialect.paramstyle!r}")
    return _pyformat(sql)


@functools.lru_cache(maxsize=64)
def _pyformat(sql: str) -> str:
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


def driver_time(dialect: Dialect) -> Callable[[Any], Any]:
    """A datetime as SQLAlchemy's DateTime binds it for `dialect` (SQLite stores text: its exact format, which
    comparisons depend on), for parameters that go straight to the driver (`driver_sql`)."""
    return DateTime().dialect_impl(dialect).bind_processor(dialect) or _same


def _same(value: Any) -> Any:
    return value


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A writing transaction: takes the write lock up front; rolls back on any exception."""
    with translate_errors(), engine.connect() as conn:
        conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            yield conn


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    """A reading transaction: one consistent snapshot."""
    with translate_errors(), engine.connect() as conn, conn.begin():
        yield conn


@contextmanager
def reading(source: Engine | Connection) -> Iterator[Connection]:
    """A reading transaction on `source`: an Engine's own (`read_tx`), or the one a Connection the caller
    holds is in (so that several queries read one snapshot, as `uploader status` does)."""
    if isinstance(source, Connection):
        yield source
        return
    with read_tx(source) as conn:
        yield conn


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver failures (disk full, locked, read-only) into a LedgerError with a plain message."""
    try:
        with translate_sqlite_errors():  # from the bare driver connection of a bulk load
            yield
    except OperationalError as exc:
        raise LedgerError(f"ledger error: {_driver_message(exc)}") from exc
    except DataError as exc:  # PostgreSQL enforces lengths and ranges SQLite does not, e.g. VARCHAR(255)
        raise LedgerError(f"the ledger refused a value: {_driver_message(exc)}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise LedgerError(f"lost the ledger connection: {_driver_message(exc)}") from exc
        if _refused_by_the_server(exc):
            raise LedgerError(f"ledger error: {_driver_message(exc)}") from exc
        if getattr(exc.orig, "sqlstate", None) in _MISSING:
            raise LedgerError(
                f"ledger error: {_driver_message(exc)}: the ledger's database lacks part of the ledger's schema "
                "(a partial restore, a clean-up). Restore the database from a backup, or pass --ledger a new one"
            ) from exc
        raise


#: SQLSTATE classes (PostgreSQL) of a server that refuses what it would otherwise do: a transaction state it
#: imposes (25: read-only after a failover, an idle-in-transaction timeout), resources (53: disk full, too many
#: connections), an operator (57), a system error (58); and a privilege taken away (42501). Not a bug of ours.
_REFUSAL_CLASSES = ("25", "53", "57", "58")
_NO_PRIVILEGE = "42501"
#: SQLSTATEs (PostgreSQL) of a table or column of the schema that is not there: undefined_table, undefined_column.
_MISSING = ("42P01", "42703")


def _refused_by_the_server(exc: DBAPIError) -> bool:
    """Whether a driver error says the database refused for reasons of its own (`_REFUSAL_CLASSES`)."""
    state = getattr(exc.orig, "sqlstate", None)
    return isinstance(state, str) and (state[:2] in _REFUSAL_CLASSES or state == _NO_PRIVILEGE)


def _driver_message(exc: DBAPIError) -> str:
    return str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc).splitlines()[0]


def _alembic_config(conn: Connection) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", script_location())
    cfg.attributes["connection"] = conn
    return cfg


def create_new(engine: Engine) -> bool:
    """A SQLite file this process has just created: the models' schema in one go, stamped with the head
    revision. That is Alembic's own recipe for a new database ("create_all, then stamp head"), done without
    importing Alembic or replaying every migration, which would be a sizeable part of a small load's time
    (figures: benchmarks/README.md). False (nothing done) if another process got there first: then `migrate`
    runs as usual."""
    from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table

    from uploader.ledger.models import METADATA

    version = Table(
        "alembic_version",
        MetaData(),
        Column("version_num", String(32), nullable=False),
        PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
    )  # as Alembic makes it
    with translate_errors(), engine.connect() as conn:
        conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            if conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar():
                return False
            METADATA.create_all(conn)
            version.create(conn)
            conn.execute(version.insert().values(version_num=SCHEMA_HEAD))
    return True


class LedgerNotUpgraded(LedgerError):
    """The ledger's schema is older than this uploader's, and the command writes nothing, so it does not upgrade
    it (`empty`: the database holds no ledger at all yet)."""

    def __init__(self, message: str, *, empty: bool = False) -> None:
        super().__init__(message)
        self.empty = empty


def migrate(engine: Engine, *, upgrade: bool = True) -> None:
    """Bring the ledger to the newest schema; refuse one written by a newer uploader. A ledger stamped with
    SCHEMA_HEAD (every open of an up-to-date ledger) is checked without importing Alembic and reading its
    scripts, a sizeable part of a rerun's time (tests/test_migrations.py keeps SCHEMA_HEAD at Alembic's head).
    Without `upgrade` (a command that writes nothing), an older ledger raises LedgerNotUpgraded instead."""
    with translate_errors(), engine.connect() as conn:
        current = _current_revisions(conn)
        conn.rollback()
    if current == {SCHEMA_HEAD}:
        return
    _migrate_with_alembic(engine, upgrade)


def _migrate_with_alembic(engine: Engine, upgrade: bool) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory

    with translate_errors(), engine.connect() as conn:
        cfg = _alembic_config(conn)
        script = ScriptDirectory.from_config(cfg)
        heads = set(script.get_heads())
        current = _current_revisions(conn)
        conn.rollback()
        if current == heads:
            return
        problem = _not_a_ledger(
            ledger_name(engine), set(inspect(conn).get_table_names()), strict=engine.dialect.name == "sqlite"
        )
        conn.rollback()
        if problem is not None:
            raise problem
        unknown = [rev for rev in current if _unknown_revision(script, rev)]
        if unknown:
            raise LedgerTooNewError(
                f"the ledger is at schema revision {', '.join(sorted(unknown))}, which this version of "
                "uploader does not know: it was written by a newer uploader. Upgrade uploader to use it."
            )
        if not upgrade:
            name = ledger_name(engine)
            if not current:
                raise LedgerNotUpgraded(f"the ledger {name} holds no ledger yet", empty=True)
            raise LedgerNotUpgraded(
                f"the ledger {name} was written by an older uploader (schema revision "
                f"{', '.join(sorted(current))}, this one's is {', '.join(sorted(heads))}); this command writes "
                "nothing, so it does not upgrade it. Any other command does (`uploader status`), after which "
                "older uploaders refuse the ledger"
            )
        conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            _lock_for_migration(conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")  # reads the revision again, now under the lock


def ledger_name(engine: Engine) -> str:
    """The ledger as messages name it: its file, or its URL without the password."""
    if engine.dialect.name == "sqlite" and engine.url.database:
        return engine.url.database
    return shown_url(engine.url)


#: Any fixed 64-bit key: PostgreSQL advisory locks are named by numbers.
_MIGRATION_LOCK = 0x75706C6F61646572  # "uploader"


def _lock_for_migration(conn: Connection) -> None:
    """One migrator at a time, when several runs open a new ledger at once. SQLite: BEGIN IMMEDIATE does
    it. PostgreSQL: a transaction-scoped advisory lock (DDL alone would race: "relation already exists")."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})


def _current_revisions(conn: Connection) -> set[str]:
    if not inspect(conn).has_table("alembic_version"):
        return set()
    return {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}


def _unknown_revision(script: ScriptDirectory, rev: str) -> bool:
    from alembic.util import CommandError

    try:
        return script.get_revision(rev) is None
    except CommandError:
        return True
