"""Where the ledger is: `--ledger`, else UPLOADER_LEDGER, else `uploader.db` here. Kept apart from engine.py
so that `uploader load` can know it before SQLAlchemy is imported (see uploader.load.prepare_load).

Also the ledger file's own lock (`hold_shared`, `discard_unused`): every Ledger on a SQLite file holds
`flock(LOCK_SH)` on it for its lifetime, so a command may remove a ledger file it created only when it gets
`LOCK_EX` at once, i.e. when no other process has the file open. On Linux flock locks are independent of
SQLite's own POSIX (fcntl) byte-range locks, so a discard also checks those: another program's SQLite
connection (the sqlite3 shell) takes only them. One descriptor per file and process is shared by all its
Ledgers and closed only when the last one is: closing any descriptor of a file drops every POSIX lock the
process holds on it, which would pull the locks from under SQLite's connections."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "COMPANIONS",
    "DEFAULT_LEDGER",
    "FileHold",
    "discard_unused",
    "hold_shared",
    "ledger_url",
    "location_problem",
    "new_ledger_file",
    "overwrites_ledger",
    "read_head",
    "release",
]

DEFAULT_LEDGER = "uploader.db"


def ledger_url(ledger: str | os.PathLike[str] | None) -> str:
    """Turn `--ledger` / UPLOADER_LEDGER (a file path or a SQLAlchemy URL) into a URL; LedgerError (one line)
    for what cannot hold a ledger (`location_problem`)."""
    value = str(ledger) if ledger else os.environ.get("UPLOADER_LEDGER") or DEFAULT_LEDGER
    problem = location_problem(value, _sqlite_database(value) if "://" in value else value)
    if problem is not None:
        from uploader.errors import LedgerError

        raise LedgerError(problem)
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().absolute()}"


def _sqlite_database(url: str) -> str | None:
    """The database part of a SQLite URL (`sqlite:///x.db` -> `x.db`, `sqlite://` -> ``); None for another
    database. Parsed by hand: this module is used before SQLAlchemy is imported."""
    scheme, _, rest = url.partition("://")
    if scheme.split("+", 1)[0].lower() != "sqlite":
        return None
    return rest.split("?", 1)[0][1:] if rest.startswith("/") else rest.split("?", 1)[0]


def location_problem(value: str, sqlite_file: str | None) -> str | None:
    """Why `value` (--ledger) cannot hold a ledger, or None: an in-memory SQLite database (`:memory:`,
    `sqlite://`) is gone when the command ends, and a folder is not a file. `sqlite_file`: its SQLite file
    as written (None: not SQLite)."""
    if sqlite_file is None:
        return None
    if sqlite_file in ("", ":memory:") or "mode=memory" in value:
        return (
            f"ledger {value!r} is an in-memory database, gone when the command ends: give a file "
            "(--ledger PATH) or a database server's URL"
        )
    if Path(sqlite_file).expanduser().is_dir():
        return f"ledger {value} is a folder: give a file in it, e.g. --ledger {Path(sqlite_file) / DEFAULT_LEDGER}"
    return None


def new_ledger_file(ledger: str | os.PathLike[str] | None) -> Path | None:
    """The ledger's SQLite file if it does not exist yet: the command that creates it may remove it again,
    and nobody else can be using it."""
    url = ledger_url(ledger)
    if not url.startswith("sqlite:///") or "?" in url:
        return None
    path = Path(url[len("sqlite:///") :])
    return None if path.exists() or str(path) in ("", ":memory:") else path


#: The files SQLite keeps beside a database: its log, its shared-memory index, its rollback journal.
COMPANIONS = ("-wal", "-shm", "-journal")


def overwrites_ledger(path: str | os.PathLike[str], ledger: str | os.PathLike[str] | None, what: str) -> str | None:
    """Why writing `path` (`what`: "-o", "--log-file") would destroy the ledger, or None: it is the ledger's
    SQLite file or one of its companions, by name or under another name (a link)."""
    from uploader.errors import LedgerError

    try:
        database = _sqlite_database(ledger_url(ledger))
    except LedgerError:  # a ledger that cannot be one is reported by the command itself
        return None
    if not database:
        return None
    target = os.path.realpath(path)
    for name in (database, *(database + suffix for suffix in COMPANIONS)):
        same = os.path.realpath(name) == target
        try:
            same = same or os.path.samefile(name, path)
        except OSError:
            pass
        if same:
            return f"{what} {path} is the ledger's file {name}: writing it would destroy the ledger; name another file"
    return None


#: A ledger file this process holds LOCK_SH on: (st_dev, st_ino).
FileHold = tuple[int, int]

_held: dict[FileHold, list[int]] = {}  #: file -> [descriptor, number of Ledgers using it]
_held_lock = threading.Lock()


def hold_shared(path: Path) -> FileHold | None:
    """Take LOCK_SH on the ledger file at `path` (waiting while a discard holds LOCK_EX), or share this
    process's. None when the file is gone or was discarded before the lock was had: open the path again."""
    with _held_lock:
        try:
            key = _key(os.stat(path))
        except FileNotFoundError:
            return None
        if key in _held:
            _held[key][1] += 1
            return key
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            from uploader.errors import LedgerError

            raise LedgerError(f"cannot open ledger {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            st = os.fstat(fd)
            if st.st_nlink == 0 or _key(st) != key or _key(os.stat(path)) != key:
                os.close(fd)  # unlinked (or replaced) meanwhile; no connection of ours is on that file
                return None
        except FileNotFoundError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        _held[key] = [fd, 1]
        return key


def read_head(path: Path, size: int) -> bytes:
    """The first `size` bytes of the ledger file, read through this process's held descriptor if it has
    one: opening and closing another would drop the POSIX locks of the SQLite connections it has on it."""
    with _held_lock:
        entry = _held.get(_key(os.stat(path)))
        if entry is not None:
            return os.pread(entry[0], size, 0)
        with open(path, "rb") as f:
            return f.read(size)


def release(key: FileHold) -> None:
    """One Ledger less on the file; the last one's close releases the lock (its engine is disposed)."""
    with _held_lock:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _held[key]
            os.close(entry[0])


def discard_unused(key: FileHold, path: Path, unused: Callable[[Path], bool]) -> bool:
    """Remove the ledger file (and its -wal, -shm) if this process is its only user (LOCK_EX at once, and no
    other program's SQLite connection holds its locks) and `unused(path)` says nothing was ever written; the
    check and the unlink happen under the locks, so no other process can open it in between. Releases this
    process's hold in any case; True if removed."""
    with _held_lock:
        entry = _held.pop(key, None)
        if entry is None:
            return False
        fd, users = entry
        try:
            if users != 1:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another process has it open
            try:
                before = _states(path)
                if before[0] is None or before[0][:2] != key or not unused(path):
                    return False
                with _sqlite_locks_free(path) as free:
                    # Nobody else's connection, and none came and wrote while `unused` looked.
                    if not free or _states(path) != before:
                        return False
                    for suffix in ("", "-wal", "-shm"):
                        Path(str(path) + suffix).unlink(missing_ok=True)
                    return True
            except FileNotFoundError:
                return False
        finally:
            if users != 1:
                _held[key] = [fd, users - 1]
            else:
                os.close(fd)


@contextmanager
def _sqlite_locks_free(path: Path) -> Iterator[bool]:
    """Yields whether no other process holds one of SQLite's POSIX (fcntl) locks on the file, which flock
    does not see: another program's connection (the sqlite3 shell) to a WAL database holds a read lock on its
    lock bytes for as long as it is open. If so, the whole file stays write-locked until the block ends,
    which keeps new connections out while it is removed. Only while this process has no connection to the
    file: closing this descriptor drops every POSIX lock the process holds on it."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            yield False
        else:
            yield True
    finally:
        os.close(fd)


def _states(path: Path) -> tuple[tuple[int, int, int, int] | None, ...]:
    """Inode, size and mtime of the ledger file and of its -wal (None: no such file): equal twice if
    nothing wrote in between."""
    states: list[tuple[int, int, int, int] | None] = []
    for suffix in ("", "-wal"):
        try:
            st = os.stat(str(path) + suffix)
        except FileNotFoundError:
            states.append(None)
        else:
            states.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(states)


def _key(st: os.stat_result) -> FileHold:
    return st.st_dev, st.st_ino
