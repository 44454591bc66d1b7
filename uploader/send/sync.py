"""`uploader sync`: follow every sent job to its platform status and its result.

Statuses come from the batch listings (one request per page of jobs); a tracked job no listing showed is
read on its own (GET job). The rows of a page whose result is due go at once to `concurrency` workers, so
results download while the listing goes on: each worker reads the job (GET job: the result's URL) and
downloads the result (streamed, size-capped, retried by `ApiClient.read`, hashed; held in memory up to
1 MiB) to `<results>/<reference_id>.json` (`<results>/<project_id>/<reference_id>.json` when the ledger tracks
jobs of several projects: one reference_id may name a job in each); a result given inline is stored in the
ledger.

No file is ever half-written, and the ledger names a file only once its data and its name are on disk: a
worker holds its download (in memory up to 1 MiB, else in an unnamed temporary file) and goes on to the next
row; a writer takes the held downloads a group at a time and settles the group off the event loop, under an
flock of the results folder (one sync at a time writes and records there): the rows are read again (a result
whose row changed status, or got a result from another sync meanwhile, is dropped), each file is placed
(`_placement`: nothing found in the folder is replaced), written to a temporary name and fsynced by a few
threads at once (fsyncs made at the same time share the file system's journal commits), the group's files are
renamed into place, one fsync of the directory makes the renames durable, and the group is recorded in one
ledger transaction. A kill between the renames and the record leaves whole files, which the next sync's
downloads find holding the same bytes and keep; a kill before a rename leaves a temporary file, removed by the
next sync. A job whose status changes after its result was fetched loses that result, file included (removed
before the change is committed), so it is fetched again. Each file is fsynced (not the file system as a
whole, as `syncfs` would: that also waits for other programs' writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from uploader.api import (
    MAX_RETRY_AFTER,
    ApiClient,
    ApiResult,
    PageTrail,
    job_is_gone,
    job_read_problem,
    listed_jobs,
    listing_problem,
    named_twice,
    run_loop,
    status_text,
)
from uploader.errors import ApiUnreachableError, FatalApiError
from uploader.ledger import (
    RESULT_STATUSES,
    Adoption,
    FetchedResult,
    Ledger,
    TrackedRow,
    adopt_jobs,
    background_checkpoints,
    record_gone,
    record_listed,
    record_results,
    result_files,
    results_to_record,
    small_page_cache,
    sync_batches,
    sync_counts,
    tracked_rows,
    utcnow,
)
from uploader.send.pacing import RateLimiter
from uploader.send.resolve import DEFAULT_BATCH_PROBES

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "SyncReport",
    "adopt",
    "adopt_async",
    "result_file_name",
    "sync_async",
    "sync_ledger",
]

#: The largest result downloaded (a bigger one is recorded as an error).
DEFAULT_MAX_RESULT_BYTES = 64 << 20
_SAFE = re.compile(r"[a-z0-9_-][a-z0-9._-]{0,150}")
_PART = ".part"
#: A download is held in memory up to this size, then in an unnamed temporary file.
_SPOOL_BYTES = 1 << 20
#: Threads writing and fsyncing result files (at most one per worker): a group's files are split among them.
DISK_THREADS = 8
#: Results recorded per ledger transaction (and per fsync of the results directory) ...
GROUP = 256
#: ... or fewer, once this many seconds passed since the last group was recorded ...
GROUP_SECONDS = 1.0
#: ... or once the downloads held in memory reach this many bytes. Workers wait while twice as many results
#: or bytes are held (the writer is a group behind).
GROUP_BYTES = 16 << 20


@dataclass
class SyncReport:
    """What one sync did, its live counters (for a progress display), and the ledger's counts after it
    (`sync_counts`)."""

    batches: int = 0
    pages: int = 0  #: listing requests
    job_reads: int = 0  #: GET job requests (fallback and results)
    changed: int = 0  #: rows whose platform status changed
    results: int = 0  #: results fetched
    result_errors: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    tracked: int = 0  #: tracked rows when the sync began, less those it found gone
    final: int = 0  #: tracked rows with a final platform status, as the sync goes
    checked: int = 0  #: tracked rows whose status this sync read
    mismatched: int = 0  #: rows a listing named their job for another reference_id (read on their own instead)
    #: (reference_id, job_id) of rows whose job the API says does not exist (GET job refused as not found, in a
    #: project that answered this sync): deleted at the platform, or never created. Recorded `failed`
    #: (`record_gone`), so a later sync no longer tracks them; `sync_ledger --watch` keeps those of every round.
    not_found: list[tuple[str, str]] = field(default_factory=list)

    @property
    def all_final(self) -> bool:
        return bool(self.counts) and self.counts["final"] == self.counts["tracked"]

    @property
    def nothing_to_wait_for(self) -> bool:
        """Every tracked job is final (a job the API does not know is no longer tracked): --watch ends."""
        return self.all_final


def set_aside(path: str, job_id: str) -> str | None:
    """Rename the result file of a job that is gone to `<name>+gone-<job_id>.json` beside it (the job_id
    escaped as file names are; no result's name holds a `+`); returns the new path, or None when there was no
    such file."""
    aside = _beside(path, f"gone-{result_file_name(job_id)}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    return aside


def result_file_name(reference_id: str) -> str:
    """A file name for the result of `reference_id`: `safe_name` of it, `.json`."""
    return f"{safe_name(reference_id)}.json"


def safe_name(text: str) -> str:
    """`text` as a file name: itself when it is lower-case letters, digits, `_`, `-` and `.` (not first), else
    every other byte written `%XX`, so two texts never share a name (on a case-insensitive file system too); a
    very long text is cut and suffixed with its hash."""
    if _SAFE.fullmatch(text):
        return text
    escaped = "".join(
        ch if _SAFE.fullmatch(ch) and ch != "." else "".join(f"%{b:02X}" for b in ch.encode()) for ch in text
    )
    if len(escaped) > 150:
        escaped = f"{escaped[:100]}~{hashlib.sha256(text.encode()).hexdigest()[:32]}"
    return escaped


def _beside(path: str, tag: str) -> str:
    """`<folder>/<name>+<tag>` for the result file `<folder>/<name>.json` (`tag` ends with .json, or gets it): a
    name no result file has (`safe_name` writes every `+` as %2B)."""
    stem = path[: -len(".json")] if path.endswith(".json") else path
    return f"{stem}+{tag if tag.endswith('.json') else tag + '.json'}"


def _placement(path: str, sha256: str) -> tuple[str, bool]:
    """Where a download whose bytes have `sha256` goes, and whether it is to be written: its own name when free;
    kept, unwritten, when a regular file there holds the same bytes (a sync killed before its record wrote it);
    else beside it as `<name>+<sha256 prefix>.json`, as a file found there is not this ledger's to replace (another
    ledger's result, a stale or foreign file, a folder): nothing found in the results folder is ever removed."""
    for candidate in (path, _beside(path, sha256[:16])):
        try:
            found = os.lstat(candidate)
        except FileNotFoundError:
            return candidate, True
        if stat.S_ISREG(found.st_mode):
            try:
                with open(candidate, "rb") as there:
                    if hashlib.file_digest(there, "sha256").hexdigest() == sha256:
                        return candidate, False
            except OSError:
                pass
    return _beside(path, sha256), True  # the full hash: the prefix's name is taken by other bytes


def _part(path: str) -> str:
    """The temporary name `path` is written under (a dot file: never taken for a result)."""
    folder, _, name = path.rpartition(os.sep)
    return f"{folder}{os.sep}.{name}{_PART}"


def _lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX)


def _write_parts(files: Sequence[tuple[str, IO[bytes]]]) -> None:
    """Each download written under its file's temporary name and fsynced (in a disk thread: creating and
    syncing files are slow system calls). A failure removes the temporary file it was writing."""
    for path, spool in files:
        part = _part(path)
        try:
            spool.seek(0)
            with open(part, "wb") as sink:
                shutil.copyfileobj(spool, sink)
                sink.flush()
                os.fsync(sink.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
            raise


def _rename_all(paths: Iterable[str]) -> None:
    """Written files renamed into place, then the renames made durable (one fsync of each folder they are in)."""
    folders: set[str] = set()
    for path in paths:
        os.replace(_part(path), path)
        folders.add(os.path.dirname(path))
    for folder in folders:
        _fsync_dir(Path(folder))


#: A download held until its group is written: its file, the bytes (spooled), how many of them are in memory.
_Held = tuple[str, IO[bytes], int]


@dataclass
class _Group:
    """Results fetched and not yet recorded: the rows to record, the downloads among them still to write
    (by file: a result fetched twice is written once, the later), the failures, and the bytes held."""

    fetched: list[FetchedResult] = field(default_factory=list)
    files: dict[str, IO[bytes]] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)
    held: int = 0

    def __len__(self) -> int:
        return len(self.fetched) + len(self.errors)

    def hold(self, fetched: FetchedResult, held: _Held | None) -> None:
        self.fetched.append(fetched)
        if held is not None:
            path, spool, in_memory = held
            earlier = self.files.pop(path, None)
            if earlier is not None:
                earlier.close()
            self.files[path] = spool
            self.held += in_memory

    def close(self) -> None:
        """Let go of the held downloads (written, or given up)."""
        for spool in self.files.values():
            spool.close()


def _paced(
    limiter: RateLimiter | None, request: Callable[[], Awaitable[ApiResult]]
) -> Callable[[], Awaitable[ApiResult]]:
    """`request`, each call of it waiting until --rate (`limiter`) lets one more request go."""
    if limiter is None:
        return request

    async def paced() -> ApiResult:
        while (wait := limiter.delay(time.monotonic())) > 0:
            await asyncio.sleep(wait)
        limiter.take(time.monotonic())
        return await request()

    return paced


def _fsync_dir(directory: Path) -> None:
    """The renames into `directory` made durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Sync:
    ledger: Ledger
    client: ApiClient
    results_dir: Path | None
    max_result_bytes: int
    concurrency: int
    rng: random.Random
    sleep: Callable[[float], Awaitable[Any]]
    max_retry_after: float
    limiter: RateLimiter | None = None
    on_progress: Callable[[SyncReport], None] | None = None
    report: SyncReport = field(default_factory=SyncReport)
    seen: bytearray = field(default_factory=bytearray)  #: a bit per row id: listed this sync
    answering: set[str] = field(default_factory=set)  #: projects that answered a listing or a job read
    gone: list[tuple[int, str]] = field(default_factory=list)  #: (row id, job_id) found gone, not yet recorded
    queue: asyncio.Queue[TrackedRow | None] = field(default_factory=lambda: asyncio.Queue(1))
    pending: _Group = field(default_factory=_Group)  #: fetched, not yet taken by the writer
    settling: _Group | None = None  #: taken by the writer: being written and recorded
    due: asyncio.Event = field(default_factory=asyncio.Event)  #: a group is due, or the workers are done
    room: asyncio.Condition = field(default_factory=asyncio.Condition)  #: the writer took a group
    workers_left: int = 0
    disk: ThreadPoolExecutor | None = None
    folder: str = ""  #: the results directory, ending with a separator
    #: The ledger tracks jobs of several projects: results go to `<results>/<project_id>/<reference_id>.json`
    #: (one reference_id may name a job in each project), else to `<results>/<reference_id>.json`.
    per_project: bool = False
    folders: set[str] = field(default_factory=set)  #: project folders made (and made durable) by this sync
    lock_fd: int | None = None  #: the results folder, open: its flock is held while a sync writes there
    settling_run: Future[tuple[int, list[str]]] | None = None  #: the settler's work on `settling`
    #: The result files the settler is writing (their `.part`s exist until renamed): what a second Ctrl-C, which
    #: ends the process before the settler can finish, leaves to remove.
    writing: list[str] = field(default_factory=list)

    async def read(self, request: Callable[[], Awaitable[ApiResult]], what: str, expect: str | None) -> dict[str, Any]:
        """`ApiClient.read`, each try paced by --rate."""
        return await self.client.read(
            _paced(self.limiter, request),
            what,
            expect=expect,
            rng=self.rng,
            sleep=self.sleep,
            max_retry_after=self.max_retry_after,
        )

    def progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.report)

    async def run(self) -> None:
        """Statuses, and the due results fetched by `concurrency` workers as the statuses come."""
        if self.results_dir is None:
            await self.statuses()
            return
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.folder = os.path.join(os.path.realpath(self.results_dir), "")  # the ledger names files absolutely
        self.per_project = len({project for project, _ in sync_batches(self.ledger.engine)}) > 1
        self.lock_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # flock takes a folder
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.clean)
            await self.fetch_results()
        finally:
            os.close(self.lock_fd)
            self.lock_fd = None

    def clean(self) -> None:
        """Remove the temporary files a killed sync left (never a result), under the folder's lock: a sync at
        work has none outside it (`settle`)."""
        assert self.results_dir is not None and self.lock_fd is not None
        _lock(self.lock_fd)
        try:
            for pattern in (f".*{_PART}", f"*/.*{_PART}"):
                for stale in self.results_dir.glob(pattern):
                    stale.unlink(missing_ok=True)
        finally:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    async def fetch_results(self) -> None:
        self.queue = asyncio.Queue(self.concurrency * 4)
        self.disk = ThreadPoolExecutor(min(DISK_THREADS, self.concurrency), thread_name_prefix="uploader-results")
        settler = ThreadPoolExecutor(1, thread_name_prefix="uploader-settle")
        self.workers_left = self.concurrency
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.concurrency):
                    group.create_task(self.worker())
                group.create_task(self.produce())
                group.create_task(self.writer(settler))
        except BaseExceptionGroup as failed:  # the first failure, as the callers know it
            raise failed.exceptions[0] from None
        finally:
            try:
                if self.settling_run is not None:  # the writer was stopped while a group settled: let it end
                    with contextlib.suppress(Exception):
                        self.settled(self.settling_run.result())
                settler.shutdown()
                self.disk.shutdown()
                self.record()
            except BaseException:  # a second Ctrl-C broke into the wait: the process ends with the settler
                for path in list(self.writing):
                    with contextlib.suppress(OSError):
                        os.unlink(_part(path))
                raise

    async def produce(self) -> None:
        await self.statuses()
        for _ in range(self.concurrency):
            await self.queue.put(None)

    async def list_batch(self, project: str, batch_id: str) -> None:
        """Page through one batch, recording each page's statuses; a listing that loops ends (policy.PageTrail),
        and the jobs it did not show are read on their own."""
        trail = PageTrail()
        token: str | None = ""
        while token is not None:
            data = await self.read(
                partial(self.client.list_batch_page, project, batch_id, token),
                f"batch {batch_id} of project {project}",
                None,
            )
            self.report.pages += 1
            self.answering.add(project)
            problem = listing_problem(data, project, batch_id)
            if problem is not None:
                raise ApiUnreachableError(f"the API answered the listing of batch {batch_id} with {problem}")
            await self.listed(project, [job for job in listed_jobs(data) if job[2]])
            token = trail.next(data)

    async def listed(self, project: str, jobs: list[tuple[str, str, str]]) -> None:
        """Record statuses (`record_listed`), mark their rows seen, and queue the rows whose result is due."""
        present = self.result_present if self.results_dir is not None else None
        page = record_listed(self.ledger.engine, project, jobs, utcnow(), self.forget, present)
        report = self.report
        report.mismatched += page.mismatched
        report.changed += page.changed
        report.final += page.more_final
        report.checked += len(page.seen)
        seen = self.seen
        for row_id in page.seen:
            if row_id >> 3 >= len(seen):
                seen.extend(bytes((row_id >> 3) - len(seen) + 4096))
            seen[row_id >> 3] |= 1 << (row_id & 7)
        self.progress()
        if self.results_dir is not None:
            for row in page.due:
                await self.queue.put(row)

    def target(self, project: str, reference_id: str) -> str:
        """Where the result of a job of `project` named `reference_id` goes (see `per_project`)."""
        if not self.per_project:
            return f"{self.folder}{result_file_name(reference_id)}"
        folder = f"{self.folder}{safe_name(project)}"
        if folder not in self.folders:
            os.makedirs(folder, exist_ok=True)
            _fsync_dir(Path(self.folder))  # the new folder's name made durable before any result in it
            self.folders.add(folder)
        return f"{folder}{os.sep}{result_file_name(reference_id)}"

    def result_present(self, path: str) -> bool:
        """Whether a recorded result file is in this sync's folder (at any depth: the layout may have changed)
        and still there; else the result is fetched again, into this folder."""
        return path.startswith(self.folder) and os.path.isfile(path)

    def was_seen(self, row_id: int) -> bool:
        return row_id >> 3 < len(self.seen) and bool(self.seen[row_id >> 3] & (1 << (row_id & 7)))

    def forget(self, stale: list[tuple[str, str | None]]) -> None:
        """Remove the files recorded for results made stale by a change of status (before the ledger forgets
        them). A file no row records is never removed (`_placement` writes beside it)."""
        for _, path in stale:
            if path is not None:
                Path(path).unlink(missing_ok=True)

    async def statuses(self) -> None:
        """Every batch's listing, then GET job for each tracked job no listing showed."""
        self.report.tracked, self.report.final = _tracked_and_final(self.ledger)
        default_batches: dict[str, str | None] = {}
        for project, batch in sync_batches(self.ledger.engine):
            if batch is None:
                if project not in default_batches:
                    default_batches[project] = await self.default_batch(project)
                batch = default_batches[project]
                if batch is None:
                    continue
            self.report.batches += 1
            await self.list_batch(project, batch)
        for page in tracked_rows(self.ledger.engine):
            missing = [row for row in page if not self.was_seen(row[0])]
            for start in range(0, len(missing), self.concurrency):
                try:
                    await asyncio.gather(*(self.read_one(row) for row in missing[start : start + self.concurrency]))
                finally:
                    self.record_gone()

    def record_gone(self) -> None:
        """Record the rows found gone since the last call (`record_gone`: failed, job_not_found); they are no
        longer tracked. Each one's result file is first set aside (`set_aside`): the data stays, and the name is
        free for the result of a job sent again (a file found there would be taken as that job's)."""
        gone, self.gone = self.gone, []
        if not gone:
            return
        files = result_files(self.ledger.engine, [row_id for row_id, _ in gone])
        moved = {
            row_id: aside for row_id, job_id in gone if row_id in files and (aside := set_aside(files[row_id], job_id))
        }
        self.report.tracked -= record_gone(self.ledger.engine, gone, utcnow(), moved)
        self.progress()

    async def default_batch(self, project: str) -> str | None:
        """The id of the project's default batch, learnt from one job known to be in it (None: no such job). A
        job the API does not know is recorded gone and the next one asked, up to DEFAULT_BATCH_PROBES; then
        None (the default batch's rows are read on their own)."""
        gone: list[str] = []  # passed over even if its row changed meanwhile (record_gone left it)
        while len(gone) < DEFAULT_BATCH_PROBES:
            known = self.ledger.known_job_in_default_batch(project, gone)
            if known is None:
                return None
            data = await self.read_unless_gone((known[0], project, known[1], known[2]))
            if data is None:
                self.record_gone()
                gone.append(known[2])
                continue
            batch_id = data.get("batch_id")
            if batch_id in (None, "") or isinstance(batch_id, bool) or not isinstance(batch_id, (str, int)):
                raise ApiUnreachableError(f"the API answered the read of job {known[2]} with no usable batch_id")
            return str(batch_id)
        return None

    async def read_job(self, project: str, job_id: str, reference_id: str | None = None) -> dict[str, Any]:
        """GET job's data; ApiUnreachableError when the answer is another job's (policy.job_read_problem): its
        status or result is then recorded for no row."""
        data = await self.read(partial(self.client.get_job, project, job_id), f"job {job_id}", None)
        self.report.job_reads += 1
        self.answering.add(project)
        problem = job_read_problem(data, job_id, reference_id)
        if problem is not None:
            raise ApiUnreachableError(f"the API answered the read of job {job_id} with {problem}: nothing recorded")
        return data

    async def read_unless_gone(self, row: TrackedRow) -> dict[str, Any] | None:
        """GET job of a tracked row; None when the API says the job does not exist (policy.job_is_gone): then
        it is reported (`SyncReport.not_found`) and kept for `record_gone`. A not found in a project that never
        answered may be the project's (or the key's access to it): raised (the sync stops)."""
        row_id, project, reference_id, job_id = row
        try:
            return await self.read_job(project, job_id, reference_id)
        except (FatalApiError, ApiUnreachableError) as exc:
            if not job_is_gone(exc.code, project in self.answering):
                raise
            self.report.job_reads += 1
            self.report.not_found.append((reference_id, job_id))
            self.gone.append((row_id, job_id))
            return None

    async def read_one(self, row: TrackedRow) -> None:
        """The fallback: one job's status from GET job (`read_unless_gone`)."""
        data = await self.read_unless_gone(row)
        status = status_text(data.get("status")) if data is not None else ""
        if status:
            await self.listed(row[1], [(row[2], row[3], status)])

    async def worker(self) -> None:
        """Fetch queued results until told to stop (None); one that fails is recorded and left for the next
        sync. The writer records them a group at a time."""
        try:
            while (row := await self.queue.get()) is not None:
                try:
                    fetched, held = await self.result(row)
                except (ApiUnreachableError, OSError) as exc:  # OSError: the results folder (full, a file in the way)
                    self.report.result_errors.append(f"{row[2]}: {exc}")
                    self.pending.errors.append((row[0], str(exc)))
                else:
                    self.pending.hold(fetched, held)
                await self.make_room()
        finally:
            self.workers_left -= 1
            self.due.set()

    async def make_room(self) -> None:
        """Wake the writer when a group is due; wait while it is a group behind (memory stays bounded)."""
        group = self.pending
        if len(group) < GROUP and group.held < GROUP_BYTES:
            return
        self.due.set()
        if len(group) >= 2 * GROUP or group.held >= 2 * GROUP_BYTES:
            async with self.room:
                await self.room.wait_for(lambda: self.pending is not group)

    async def writer(self, settler: ThreadPoolExecutor) -> None:
        """Record the held results a group at a time (when one is due, else every GROUP_SECONDS) until the
        workers are done."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GROUP_SECONDS):
                    await self.due.wait()
            self.due.clear()
            last = self.workers_left == 0
            group, self.pending = self.pending, _Group()
            async with self.room:
                self.room.notify_all()
            await self.record_group(group, settler)
            if last:
                return

    async def record_group(self, group: _Group, settler: ThreadPoolExecutor) -> None:
        """Settle the group (`settle`) on the settler's thread, its files written by the disk threads."""
        if not len(group):
            return
        self.settling = group
        self.settling_run = settler.submit(self.settle, group, self.disk)
        self.settled(await asyncio.wrap_future(self.settling_run))

    def settled(self, outcome: tuple[int, list[str]]) -> None:
        """The group being settled is recorded: (results recorded, files that could not be written)."""
        if self.settling is not None:
            self.settling.close()
        self.settling, self.settling_run = None, None
        self.report.results += outcome[0]
        self.report.result_errors += outcome[1]
        self.progress()

    def settle(self, group: _Group, disk: ThreadPoolExecutor | None) -> tuple[int, list[str]]:
        """Under the results folder's lock (one sync at a time writes and records there, across processes): the
        group's results that still apply (`results_to_record`: the row's status unchanged, no result recorded
        meanwhile) are placed (`_placement`), written (split among `disk`'s threads, or here), renamed into
        place and made durable, then recorded in one transaction with the failures. A file that cannot be
        written is its row's result error. Returns how many results were recorded, and the write failures."""
        latest = {one[0]: one for one in group.fetched}  # a row fetched twice: the later
        if self.lock_fd is not None:
            _lock(self.lock_fd)
        try:
            keep, dropped = results_to_record(self.ledger.engine, list(latest.values()), self.result_present)
            errors = [*group.errors, *dropped]
            failures: list[str] = []
            placed: list[FetchedResult] = []
            writes: list[tuple[str, IO[bytes]]] = []
            for row_id, path, inline, sha256, status in keep:
                if path is not None:
                    final, write = _placement(path, sha256)
                    if write:
                        writes.append((final, group.files[path]))
                    path = final
                placed.append((row_id, path, inline, sha256, status))
            if writes:
                self.writing = [path for path, _ in writes]
                try:
                    n = min(DISK_THREADS, len(writes)) if disk is not None else 1
                    if n > 1 and disk is not None:
                        shares = [disk.submit(_write_parts, writes[i::n]) for i in range(n)]
                        wait_all(shares)  # every thread done before any failure is handled: none writes after
                        for share in shares:
                            share.result()
                    else:
                        _write_parts(writes)
                    _rename_all([path for path, _ in writes])
                except OSError as exc:
                    written = {path for path, _ in writes}
                    for path in written:  # what the other disk threads wrote, not renamed: not left taking room
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(_part(path))
                    failures = [f"cannot write {f[1]}: {exc}" for f in placed if f[1] in written]
                    errors += [(f[0], f"cannot write {f[1]}: {exc}") for f in placed if f[1] in written]
                    placed = [f for f in placed if f[1] not in written]
            record_results(self.ledger.engine, placed, errors)
        finally:
            if self.lock_fd is not None:
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
        return len(placed), failures

    def record(self) -> None:
        """At the end: record what a failed sync left held (the writer recorded everything otherwise), its files
        written here (`settle`). The display is told, so its last line shows the counts the summary gives."""
        for group in (self.settling, self.pending):
            if group is None or not len(group):
                continue
            self.settling = group
            self.settled(self.settle(group, None))
        self.settling, self.pending = None, _Group()
        self.progress()

    async def result(self, row: TrackedRow) -> tuple[FetchedResult, _Held | None]:
        """One job's result, with the status the job's read gave: its URL downloaded (held for the writer, for
        its file), or the result given inline. A read whose status is not final gives none (ApiUnreachableError:
        the row's result error; the listing and the job disagree, and the next sync reads both again)."""
        row_id, project, reference_id, job_id = row
        data = await self.read_job(project, job_id, reference_id)
        status = status_text(data.get("status"))
        if status not in RESULT_STATUSES:
            raise ApiUnreachableError(
                f"the read of job {job_id} gives its status as {status or 'none'!r}, not final (its listing said "
                "final): no result taken"
            )
        value = data.get("result")
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            path, sha256, held = await self.download(value, self.target(project, reference_id), job_id)
            return (row_id, path, None, sha256, status), held
        inline = json.dumps(value)
        return (row_id, None, inline, hashlib.sha256(inline.encode()).hexdigest(), status), None

    async def download(self, url: str, path: str, job_id: str) -> tuple[str, str, _Held]:
        """The result at `url`, for the file `path`: the file, its sha256, and the download, held for the writer
        (which decides where it goes: `_placement`)."""
        spool = tempfile.SpooledTemporaryFile(_SPOOL_BYTES, dir=self.folder)
        try:
            data = await self.read(
                partial(self.client.download, url, cast(BinaryIO, spool), max_bytes=self.max_result_bytes),
                f"the result of job {job_id}",
                "sha256",
            )
        except BaseException:
            spool.close()
            raise
        size, sha256 = int(data["size"]), str(data["sha256"])
        return path, sha256, (path, spool, size if size <= _SPOOL_BYTES else 0)


def _tracked_and_final(ledger: Ledger) -> tuple[int, int]:
    counts = sync_counts(ledger.engine)
    return int(counts["tracked"]), int(counts["final"])


async def sync_async(
    ledger: Ledger,
    client: ApiClient,
    results_dir: Path | None = None,
    *,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    concurrency: int = 16,
    seed: int | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    max_retry_after: float = MAX_RETRY_AFTER,
    limiter: RateLimiter | None = None,
    on_progress: Callable[[SyncReport], None] | None = None,
) -> SyncReport:
    """One sync over `client`: statuses, and results when `results_dir` is given, fetched as the statuses come.
    Every request waits for `limiter` (--rate); `on_progress` sees the report as it changes. Raises
    FatalApiError when the key or project is refused, ApiUnreachableError when a listing or status read failed
    after its retries (a result that fails is recorded against its row instead)."""
    state = _Sync(
        ledger,
        client,
        results_dir,
        max_result_bytes,
        max(1, concurrency),
        random.Random(seed),
        sleep,
        max_retry_after,
        limiter,
        on_progress,
    )
    # memory flat in the ledger's size (the counts read every row too); the WAL checkpointed off the event loop
    with small_page_cache(ledger.engine), background_checkpoints(ledger.engine):
        await state.run()
        state.report.counts = sync_counts(ledger.engine)
    return state.report


def sync_ledger(
    ledger: Ledger,
    *,
    base_url: str,
    api_key: str,
    results_dir: Path | None = None,
    timeout: float = 30.0,
    concurrency: int = 16,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    max_retry_after: float = MAX_RETRY_AFTER,
    watch: float | None = None,
    on_round: Callable[[SyncReport], None] | None = None,
    rate: float | None = None,
    on_progress: Callable[[SyncReport], None] | None = None,
) -> SyncReport:
    """`sync_async` with its own client (a connection beside the workers' for the listing) and --rate; with
    `watch` (seconds), repeated until every tracked job is final; the report's `not_found` holds every round's."""
    limiter = RateLimiter(rate) if rate else None

    async def main() -> SyncReport:
        gone: list[tuple[str, str]] = []  # every round's: a job recorded gone is no longer read
        async with ApiClient(base_url, api_key, concurrency=concurrency + 1, timeout=timeout) as client:
            while True:
                report = await sync_async(
                    ledger,
                    client,
                    results_dir,
                    max_result_bytes=max_result_bytes,
                    concurrency=concurrency,
                    max_retry_after=max_retry_after,
                    limiter=limiter,
                    on_progress=on_progress,
                )
                gone += report.not_found
                report.not_found = list(gone)
                if on_round is not None:
                    on_round(report)
                if watch is None or report.nothing_to_wait_for:
                    return report
                await asyncio.sleep(watch)

    return run_loop(main())


async def adopt_async(
    ledger: Ledger,
    client: ApiClient,
    project_id: str,
    batch_ids: Sequence[str],
    *,
    seed: int | None = None,
    max_retry_after: float = MAX_RETRY_AFTER,
    limiter: RateLimiter | None = None,
) -> Adoption:
    """List each batch and record every job found (`adopt_jobs`), a page at a time, each request waiting for
    `limiter` (--rate); a job a page names for two reference_ids, or a reference_id it names with two jobs, is
    a conflict, recorded for neither. Raises FatalApiError / ApiUnreachableError as `ApiClient.read`."""
    total = Adoption()
    rng = random.Random(seed)
    for batch_id in batch_ids:
        trail = PageTrail()  # a listing that loops ends there
        token: str | None = ""
        while token is not None:
            data = await client.read(
                _paced(limiter, partial(client.list_batch_page, project_id, batch_id, token)),
                f"batch {batch_id} of project {project_id}",
                expect=None,
                rng=rng,
                max_retry_after=max_retry_after,
            )
            problem = listing_problem(data, project_id, batch_id)
            if problem is not None:
                raise ApiUnreachableError(f"the API answered the listing of batch {batch_id} with {problem}")
            jobs = listed_jobs(data)
            twice = named_twice(jobs)  # a page that contradicts itself: none of those jobs is taken
            done = adopt_jobs(ledger.engine, project_id, batch_id, [j for j in jobs if j[0] not in twice], utcnow())
            total.conflicts += [
                (ref, "the listing names it with two jobs, or its job for two") for ref in sorted(twice)
            ]
            total.adopted += done.adopted
            total.added += done.added
            total.known += done.known
            total.conflicts += done.conflicts
            token = trail.next(data)
        if trail.problem is not None:
            total.unfinished.append(f"the listing of batch {batch_id} does not end ({trail.problem})")
    return total


def adopt(
    ledger: Ledger,
    project_id: str,
    batch_ids: Sequence[str],
    *,
    base_url: str,
    api_key: str,
    timeout: float = 30.0,
    max_retry_after: float = MAX_RETRY_AFTER,
    rate: float | None = None,
) -> Adoption:
    """`adopt_async` with its own client and --rate."""

    async def main() -> Adoption:
        async with ApiClient(base_url, api_key, concurrency=1, timeout=timeout) as client:
            return await adopt_async(
                ledger,
                client,
                project_id,
                batch_ids,
                max_retry_after=max_retry_after,
                limiter=RateLimiter(rate) if rate else None,
            )

    return run_loop(main())
