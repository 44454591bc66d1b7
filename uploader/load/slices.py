"""Rows of a manifest on their way into the ledger: staging rows, and staging them in parallel.

A big first load is bound by CPU, not disk: reading and checking rows, building bodies and hashing them in
Python, and SQLite's own inserting each take about as long as the others. So a `Production` forks slice
processes that cut a CSV/TSV (without quotes) or JSONL file into slices on line ends (a Parquet file into
row ranges), read them, and write their rows into scratch SQLite files of their own. The loader attaches
each finished scratch file and copies it into the ledger with one INSERT … SELECT, at C speed, while the
slice processes go on with the next slices. Nothing here touches the ledger.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import mmap
import os
import pickle
import re
import shutil
import signal
import sqlite3
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from uploader.ledger import (
    BEGIN,
    COMMIT,
    SCRATCH_ROW,
    SCRATCH_ROW_NO_EXTRA,
    SCRATCH_ROW_OWN,
    SCRATCH_SETUP,
    StagingRow,
    many_rows,
)
from uploader.manifest import Span, may_hold_expiry

if TYPE_CHECKING:
    from uploader.load.source import ManifestLike
    from uploader.manifest import StagedJob

__all__ = [
    "MIN_SPLIT_BYTES",
    "PartResult",
    "Production",
    "SliceProcessLost",
    "body_hashes",
    "load_defaults",
    "staged_rows",
    "write_part",
]

_READ_BLOCK = 1 << 20
#: Below this size a file is loaded in one process: forking would cost more than it saves.
MIN_SPLIT_BYTES = 4 << 20
Defaults = tuple[str, str, "str | None"]
#: Rows a scratch file's INSERT takes at once (uploader.ledger.many_rows); at most 8 values a row, so 400
#: bound values, far below SQLite's limit.
_GROUP = 50
_GROUPED = {sql: many_rows(sql, _GROUP) for sql in (SCRATCH_ROW, SCRATCH_ROW_NO_EXTRA, SCRATCH_ROW_OWN)}


def load_defaults(manifest: ManifestLike) -> Defaults:
    """The load's project_id, work_flow_id and batch_id, as rows that do not override them carry them."""
    opts = manifest.options
    return opts.project_id or "", opts.work_flow_id or "", opts.batch_id or None


def body_hashes(bodies: Iterable[str]) -> list[str]:
    """Each body's payload hash (sha256 of its UTF-8, in hex): what a reload compares to find changed jobs.
    The one definition of it, for every way rows are staged."""
    sha = hashlib.sha256
    return [sha(b).hexdigest() for b in map(str.encode, bodies)]


#: A StagingRow from a tuple of its fields, at C speed (StagingRow(...) and ._make run Python per row).
_staging_row = partial(tuple.__new__, StagingRow)


def staged_rows(chunk: Sequence[StagedJob]) -> list[StagingRow]:
    """A chunk of jobs as staging rows (each job with its payload's hash)."""
    hashes = body_hashes([t[5] for t in chunk])
    return [_staging_row((t[0], t[1], t[2], t[3], t[4], t[5], h, t[6])) for t, h in zip(chunk, hashes)]


@dataclass(frozen=True)
class PartResult:
    """One slice written to a scratch file: how many good rows, whether any row had a problem, whether
    the file turned out not to be cuttable (a quote or a bare CR anywhere a slice process looked), and
    whether any payload may hold a signed URL (False: none does, see uploader.manifest.may_hold_expiry)."""

    index: int
    path: Path
    rows: int
    problem_count: int
    uncuttable: bool = False
    signed: bool = True


class SliceProcessLost(Exception):
    """A slice process died or failed: the caller loads the manifest in one process instead."""


class _Orphaned(Exception):
    """The parent process is gone (killed): nobody will read the scratch files."""


#: The part a slice process works on when it works on none (more than any part: parts <= 10).
_IDLE = 255
#: A CR that does not end a line (CRLF): a line break of some reader's, and not of another's.
_BARE_CR = re.compile(rb"\r(?!\n)")
#: How often a slice process held at its gate looks again, in seconds: at first, and at the longest (a
#: copy takes a tenth of a second or so; a loader stopped with Ctrl-Z should not keep it busy).
_POLL, _POLL_MAX = 0.001, 0.004


class _Board:
    """What the loader and its slice processes see of each other, in memory shared across the fork: whether
    the loader is copying a part into the ledger, and which part each slice process is working on."""

    def __init__(self, processes: int) -> None:
        self._mem = mmap.mmap(-1, 1 + processes)  # anonymous and shared: the forks see each other's writes
        self._mem[1:] = bytes([_IDLE]) * processes
        self._processes = processes
        #: Slice processes that go on while the loader copies: the cores it leaves them (at least one).
        self._running = max(1, (os.cpu_count() or 1) - 1)

    @contextlib.contextmanager
    def copying(self) -> Iterator[None]:
        self._mem[0] = 1
        try:
            yield
        finally:
            self._mem[0] = 0

    @contextlib.contextmanager
    def working(self, k: int, part: int) -> Iterator[None]:
        self._mem[1 + k] = part
        try:
            yield
        finally:
            self._mem[1 + k] = _IDLE

    def may_go_on(self, k: int) -> bool:
        """Whether slice process k may go on now: yes unless the loader is copying and as many slice
        processes as it leaves cores to are on earlier parts (which the loader needs first)."""
        if not self._mem[0]:
            return True
        mine = self._mem[1 + k]
        return sum(1 for j in range(self._processes) if self._mem[1 + j] < mine) < self._running

    def close(self) -> None:
        self._mem.close()


class _Gate:
    """Where a slice process waits, between chunks, while `_Board.may_go_on` says no: on 2 cores, the
    loader's copy of a part (the load's one step that cannot be spread) then has a core to itself, not a
    third of two. Gives up (raises _Orphaned) if the loader is gone."""

    def __init__(self, board: _Board, k: int, parent: int) -> None:
        self._board, self._k, self._parent = board, k, parent

    def wait(self) -> None:
        poll = _POLL
        while not self._board.may_go_on(self._k):
            if os.getppid() != self._parent:
                raise _Orphaned
            time.sleep(poll)
            poll = min(2 * poll, _POLL_MAX)


def write_part(
    manifest: ManifestLike,
    index: int,
    span: Span | None,
    path: Path,
    parent: int | None = None,
    gate: _Gate | None = None,
) -> PartResult:
    """Read one slice and write its rows into a new scratch SQLite file (uploader.ledger.staging). Stops at
    the first problem: the caller then loads the slow way, which reports every problem. With `parent` (a
    pid), gives up as soon as that process is no longer its parent; with `gate`, passes it before each chunk."""
    conn = sqlite3.connect(path, isolation_level=None)
    rows, signed = 0, False
    try:
        for statement in SCRATCH_SETUP:
            conn.execute(statement)
        conn.execute(BEGIN)
        for chunk in manifest.chunk_columns(span=span) if span is None or span.end > span.start else ():
            if manifest.problem_count:
                break
            if parent is not None and os.getppid() != parent:
                raise _Orphaned
            if gate is not None:
                gate.wait()
            hashes = body_hashes(chunk.bodies)
            signed = signed or may_hold_expiry("".join(chunk.bodies))
            if chunk.own is not None:
                extras = chunk.extras or [None] * len(chunk.lines)
                _insert(conn, SCRATCH_ROW_OWN, (chunk.lines, chunk.refs, chunk.bodies, hashes, extras, *chunk.own))
            elif chunk.extras is None:
                _insert(conn, SCRATCH_ROW_NO_EXTRA, (chunk.lines, chunk.refs, chunk.bodies, hashes))
            else:
                _insert(conn, SCRATCH_ROW, (chunk.lines, chunk.refs, chunk.bodies, hashes, chunk.extras))
            rows += len(chunk.lines)
        conn.execute(COMMIT)
    finally:
        conn.close()
    return PartResult(index, path, rows, manifest.problem_count, signed=signed)


def _insert(conn: sqlite3.Connection, sql: str, columns: tuple[Sequence[object], ...]) -> None:
    """Insert rows given as columns with one of the SCRATCH_ROW statements, in order: _GROUP rows per
    statement (its grouped form), the last few one by one."""
    width, n = len(columns), len(columns[0])
    whole = n - n % _GROUP
    flat = list(chain.from_iterable(zip(*columns)))
    step = width * _GROUP
    conn.executemany(_GROUPED[sql], [flat[i : i + step] for i in range(0, whole * width, step)])
    if whole < n:
        conn.executemany(sql, zip(*(column[whole:] for column in columns)))


def can_fork() -> bool:
    """Forking is safe only where it is the norm (Linux) and when no other thread could hold a lock."""
    return sys.platform.startswith("linux") and threading.active_count() == 1 and (os.cpu_count() or 1) > 1


class Production:
    """Slice processes staging the slices of one manifest into scratch files, in the background.

    The file is cut into `parts` slices of about equal size (the first and the last half as long: see _share), each
    starting after a line end (Parquet: into row ranges). Slice process k takes slices k, k + processes, …,
    finds their bounds and line numbers itself (so it can start before
    the parent has read the file), and checks that its slices have no bare CR and, in a CSV/TSV, no quote
    character (a quoted field may hold a line break, so a cut could fall inside a row); if one has, it reports
    that slice as uncuttable, and the loader, taking slices in order, loads the whole file the slow way.
    Results arrive in slice order without any queue. `close()` kills the slice processes (they ignore SIGINT:
    Ctrl-C is the parent's to handle) and removes the scratch files.
    """

    def __init__(self, manifest: ManifestLike, processes: int = 2, parts: int = 8) -> None:
        self.parts = parts
        parent = os.getpid()
        self._procs: list[tuple[int, BinaryIO]] = []
        self._done: list[PartResult] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="uploader-load-"))
        self._board = _Board(processes)
        # Slice processes block on reading this until it closes: when we close it, or die (then they clean up)
        alive_r, self._alive = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        # Ctrl-C waits until every fork is recorded (and the slice processes ignore it), so close() finds them all
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for k in range(processes):
                r, wfd = os.pipe()
                pid = os.fork()
                if pid == 0:  # the slice process: never returns
                    for fd in (r, self._alive, *(pipe.fileno() for _, pipe in self._procs)):
                        os.close(fd)  # only our parent may hold these, so that it and we see each other go
                    _work(manifest, k, processes, parts, self.workdir, wfd, alive_r, parent, blocked, self._board)
                os.close(wfd)
                self._procs.append((pid, os.fdopen(r, "rb")))
        except BaseException:
            self.close()
            raise
        finally:
            os.close(alive_r)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    @staticmethod
    def suits(manifest: ManifestLike) -> bool:
        """Whether a manifest is worth loading this way at all (its contents are checked by the slice processes)."""
        try:
            size = manifest.path.stat().st_size
        except OSError:
            return False
        return manifest.splittable and size >= MIN_SPLIT_BYTES and can_fork()

    @classmethod
    def start(cls, manifest: ManifestLike) -> Production | None:
        """Slice processes for this manifest if it suits, and the system lets us fork them; else None (the load
        then reads the file in one process, only slower)."""
        if not cls.suits(manifest):
            return None
        try:
            return cls(manifest)
        except OSError:  # no processes or no temp folder to be had
            return None

    def copying(self) -> contextlib.AbstractContextManager[None]:
        """Around the loader's copy of a part: the slice processes on later parts wait meanwhile (_Gate)."""
        return self._board.copying()

    def results(self) -> Iterator[PartResult]:
        """Each slice's result, in slice order (waiting for the slower slice process as needed). A second pass
        (after a first one gave up) yields the same results again: the scratch files stay until close()."""
        for i in range(self.parts):
            if i == len(self._done):
                self._done.append(_receive(self._procs[i % len(self._procs)][1]))
            yield self._done[i]

    def close(self) -> None:
        # A second Ctrl-C (or SIGTERM) waits until this is done: breaking in, it would leave slice processes
        # behind (they would notice the parent gone and clean up, but only after it exited).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for pid, pipe in self._procs:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                pipe.close()
            self._procs = []
            if self._alive >= 0:
                os.close(self._alive)
                self._alive = -1
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._board.close()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _work(
    manifest: ManifestLike,
    k: int,
    processes: int,
    parts: int,
    workdir: Path,
    wfd: int,
    alive: int,
    parent: int,
    sigmask: set[int | signal.Signals],
    board: _Board,
) -> None:
    """A slice process's life: its slices in order, each result down the pipe; then wait for the parent to kill
    us, and exit without any of its clean-up (atexit, buffers). If the parent dies first (it holds the
    write end of `alive`), the scratch files are removed here: nobody else would."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # an event loop's wakeup pipe belongs to the parent
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it kills us
        signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # nor do we hold the terminal or a pipe the caller waits on (`| tee`)
            os.dup2(devnull, fd)
        gc.disable()  # rows are acyclic; the collector would only rescan them (and copy the parent's pages)
        with os.fdopen(wfd, "wb") as out, _Cutter(manifest, parts) as cutter:
            for i in range(k, parts, processes):
                span = cutter.span(i)
                path = workdir / f"part{i}.db"
                if span is None:
                    result = PartResult(i, path, 0, 0, uncuttable=True)
                else:
                    with board.working(k, i):
                        result = write_part(manifest, i, span, path, parent, _Gate(board, k, parent))
                _send(out, result)
                if result.problem_count or result.uncuttable:
                    break
        code = 0
        os.read(alive, 1)  # EOF: the parent died (it closes `alive` only after killing us)
        raise _Orphaned
    except (_Orphaned, BrokenPipeError):
        shutil.rmtree(workdir, ignore_errors=True)
    except BaseException:  # noqa: BLE001 - the parent sees the pipe close and loads in one process
        pass
    finally:
        os._exit(code)


class _Cutter:
    """Finds slice bounds of one file on line ends and counts the lines before them, reading forward only
    (a slice process asks for its slices in increasing order). A CSV/TSV's first slice starts after its header
    line, and a quote in a slice (or before the first) makes it uncuttable; a JSONL file has neither a header
    nor that problem (a JSON string cannot hold a raw line break). A bare CR makes either uncuttable."""

    def __init__(self, manifest: ManifestLike, parts: int) -> None:
        self._f = open(manifest.path, "rb")
        self._size = manifest.identity[2]  # the parent's size, the same in every slice process (the load
        # refuses a file written to meanwhile: uploader.manifest.check_unchanged)
        self._parts, self._header = parts, tuple(manifest.columns)
        self._csv = manifest.format in ("csv", "tsv")
        self._rows = _parquet_rows(manifest.path) if manifest.format == "parquet" else None
        self._pos = self._lines = 0  # bytes read so far, and the line ends among them

    def __enter__(self) -> _Cutter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def _bound(self, i: int) -> int:
        """Where slice i starts: after the first line end at or after its nominal offset (slice 0: after
        the header line; `parts`: the end of the file)."""
        if i >= self._parts:
            return self._size
        if i == 0:
            return self._after_header() if self._csv else 0
        nominal = max(_share(self._size, i, self._parts), 1)
        self._f.seek(nominal - 1)
        offset = nominal - 1
        while True:
            block = self._f.read(_READ_BLOCK)
            if not block:
                return self._size
            at = block.find(b"\n")
            if at >= 0:
                return offset + at + 1
            offset += len(block)

    def _after_header(self) -> int:
        """Where a CSV/TSV's rows start: after its header, the first line that is not blank (as the reader
        takes it: blank lines before the header are skipped, and a BOM opens the file)."""
        self._f.seek(0)
        offset = 0
        for line in self._f:
            blank = (line[3:] if offset == 0 and line.startswith(b"\xef\xbb\xbf") else line) in (b"\n", b"\r\n")
            offset += len(line)
            if not blank or offset >= self._size:
                break
        return min(offset, self._size)

    def span(self, i: int) -> Span | None:
        """Slice i, or None if it is not safe to cut (its bytes checked; slice 0's from the file's start,
        header included). In Parquet: rows, which can always be cut."""
        if self._rows is not None:
            start, end = _share(self._rows, i, self._parts), _share(self._rows, i + 1, self._parts)
            return Span(start, end, start, self._header)
        start, end = self._bound(i), self._bound(i + 1)
        start, end = min(start, end), max(start, end)
        checked = 0 if i == 0 else start  # the bytes before are other slices: their own process checks them
        self._f.seek(self._pos)
        first_line = 0
        while self._pos < end:
            checking = self._pos >= checked
            block = self._f.read(min(_READ_BLOCK, (end if checking else checked) - self._pos))
            if not block:
                break
            if checking:
                if block.endswith(b"\r") and self._pos + len(block) < end:
                    block += self._f.read(1)  # keep a CRLF in one block
                if (b"\r" in block and _BARE_CR.search(block)) or (self._csv and b'"' in block):
                    return None
            if self._pos <= start < self._pos + len(block):
                first_line = self._lines + block.count(b"\n", 0, start - self._pos) + 1
            self._lines += block.count(b"\n")
            self._pos += len(block)
        if start == end:
            first_line = self._lines + 1
        return Span(start, end, first_line, self._header)


def _share(total: int, i: int, parts: int) -> int:
    """Where slice i of `parts` starts, nominally, in `total` (bytes or rows): the first and the last slice
    are half as long as the others, so that the loader, which can copy nothing before the first, starts
    sooner, and its copy of the last, which nothing overlaps, ends sooner."""
    if i <= 0 or parts < 2:
        return 0 if i <= 0 else total
    return min(total, total * (2 * i - 1) // (2 * parts - 2))


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq  # the parent imported it already, to read the schema

    return int(pq.ParquetFile(path).metadata.num_rows)


def _send(out: BinaryIO, result: PartResult) -> None:
    data = pickle.dumps(result)
    out.write(struct.pack("<I", len(data)) + data)
    out.flush()


def _receive(pipe: BinaryIO) -> PartResult:
    head = pipe.read(4)
    if len(head) < 4:
        raise SliceProcessLost("a slice process ended without its result")
    data = pipe.read(struct.unpack("<I", head)[0])
    result = pickle.loads(data)
    if not isinstance(result, PartResult):
        raise SliceProcessLost("a slice process sent something unexpected")
    return result
