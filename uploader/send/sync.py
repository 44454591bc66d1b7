"""`uploader sync`: follow every sent job to its platform status and its result.

Statuses come from the batch listings (one request per page of jobs); a tracked job no listing showed is
read on its own (GET job). Jobs with a final status get their result: a URL is downloaded (streamed,
size-capped, retried by `ApiClient.read`, hashed) to `<results>/<reference_id>.json` through a temporary
file renamed into place, so no file is ever half-written; a result given inline is stored in the ledger.
The ledger records each result as it lands: a rerun, even after a kill, fetches only what is missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from uploader.api import MAX_RETRY_AFTER, ApiClient, listed_jobs
from uploader.errors import ApiUnreachableError
from uploader.ledger import (
    Adoption,
    FetchedResult,
    Ledger,
    TrackedRow,
    adopt_jobs,
    record_results,
    record_statuses,
    results_due,
    sync_batches,
    sync_counts,
    tracked_rows,
    utcnow,
)

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


@dataclass
class SyncReport:
    """What one sync did, and the ledger's counts after it (`sync_counts`)."""

    batches: int = 0
    pages: int = 0  #: listing requests
    job_reads: int = 0  #: GET job requests (fallback and results)
    changed: int = 0  #: rows whose platform status changed
    results: int = 0  #: results fetched
    result_errors: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def all_final(self) -> bool:
        return bool(self.counts) and self.counts["final"] == self.counts["tracked"]


def result_file_name(reference_id: str) -> str:
    """A file name for the result of `reference_id`: the id itself when it is lower-case letters, digits,
    `_`, `-` and `.` (not first), else every other byte written `%XX`, so two ids never share a name (on a
    case-insensitive file system too); a very long id is cut and suffixed with its hash."""
    if _SAFE.fullmatch(reference_id):
        return f"{reference_id}.json"
    escaped = "".join(
        ch if _SAFE.fullmatch(ch) and ch != "." else "".join(f"%{b:02X}" for b in ch.encode()) for ch in reference_id
    )
    if len(escaped) > 150:
        escaped = f"{escaped[:100]}~{hashlib.sha256(reference_id.encode()).hexdigest()[:32]}"
    return f"{escaped}.json"


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
    report: SyncReport = field(default_factory=SyncReport)
    seen: set[str] = field(default_factory=set)

    async def read(self, request: Callable[[], Awaitable[Any]], what: str, expect: str | None) -> dict[str, Any]:
        return await self.client.read(
            request, what, expect=expect, rng=self.rng, sleep=self.sleep, max_retry_after=self.max_retry_after
        )

    async def list_batch(self, project: str, batch_id: str) -> None:
        """Page through one batch, recording each page's statuses."""
        token = ""
        tokens = {token}
        while True:
            data = await self.read(
                partial(self.client.list_batch_page, project, batch_id, token),
                f"batch {batch_id} of project {project}",
                None,
            )
            self.report.pages += 1
            jobs = [(job_id, status) for _, job_id, status in listed_jobs(data) if status]
            self.seen.update(job_id for job_id, _ in jobs)
            self.report.changed += record_statuses(self.ledger.engine, project, jobs, utcnow())
            nxt = data.get("next_page_token")
            token = str(nxt) if nxt else ""
            if not token or token in tokens:
                return
            tokens.add(token)

    async def statuses(self) -> None:
        """Every batch's listing, then GET job for each tracked job no listing showed."""
        default_batches: dict[str, str | None] = {}
        for project, batch in sync_batches(self.ledger.engine):
            if batch is None:
                if project not in default_batches:
                    known = self.ledger.known_job_in_default_batch(project)
                    default_batches[project] = (
                        None
                        if known is None
                        else await self.client.batch_of_job(
                            project, known, rng=self.rng, sleep=self.sleep, max_retry_after=self.max_retry_after
                        )
                    )
                batch = default_batches[project]
                if batch is None:
                    continue
            self.report.batches += 1
            await self.list_batch(project, batch)
        for page in tracked_rows(self.ledger.engine):
            missing = [row for row in page if row[3] not in self.seen]
            for start in range(0, len(missing), self.concurrency):
                await asyncio.gather(*(self.read_one(row) for row in missing[start : start + self.concurrency]))

    async def read_one(self, row: TrackedRow) -> None:
        """The fallback: one job's status from GET job."""
        _, project, _, job_id = row
        data = await self.read(partial(self.client.get_job, project, job_id), f"job {job_id}", None)
        self.report.job_reads += 1
        status = data.get("status")
        if isinstance(status, str) and status:
            self.report.changed += record_statuses(self.ledger.engine, project, [(job_id, status)], utcnow())

    async def results(self) -> None:
        """Fetch every due result, `concurrency` at a time, recording each page's outcomes in one transaction;
        one that fails is recorded and left for the next sync."""
        if self.results_dir is None:
            return
        self.results_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.results_dir.glob(f".*{_PART}"):  # left by a killed sync: never a result
            stale.unlink(missing_ok=True)
        gate = asyncio.Semaphore(self.concurrency)
        after = 0
        while rows := results_due(self.ledger.engine, after, self.concurrency * 8):
            after = rows[-1][0]
            outcomes = await asyncio.gather(*(self.attempt(gate, row) for row in rows))
            fetched = [o for o in outcomes if len(o) == 4]
            errors = [o for o in outcomes if len(o) == 2]
            record_results(self.ledger.engine, fetched, errors)
            self.report.results += len(fetched)

    async def attempt(self, gate: asyncio.Semaphore, row: TrackedRow) -> FetchedResult | tuple[int, str]:
        """One result fetched, or (row id, why not)."""
        async with gate:
            try:
                return await self.result(row)
            except ApiUnreachableError as exc:
                self.report.result_errors.append(f"{row[2]}: {exc}")
                return row[0], str(exc)

    async def result(self, row: TrackedRow) -> FetchedResult:
        """One job's result: its URL downloaded to its file, or the result given inline."""
        row_id, project, reference_id, job_id = row
        data = await self.read(partial(self.client.get_job, project, job_id), f"job {job_id}", None)
        self.report.job_reads += 1
        value = data.get("result")
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            path, sha256 = await self.download(value, reference_id, job_id)
            return row_id, str(path), None, sha256
        inline = json.dumps(value)
        return row_id, None, inline, hashlib.sha256(inline.encode()).hexdigest()

    async def download(self, url: str, reference_id: str, job_id: str) -> tuple[Path, str]:
        """The result at `url` in its file (written whole or not at all) and its sha256. A file already there
        was renamed into place by a sync killed before it could record it: it is kept, not fetched again."""
        assert self.results_dir is not None
        path = self.results_dir / result_file_name(reference_id)
        if path.exists():
            return path, hashlib.sha256(path.read_bytes()).hexdigest()
        part = path.with_name(f".{path.name}{_PART}")
        try:
            with part.open("wb") as sink:
                data = await self.read(
                    partial(self.client.download, url, sink, max_bytes=self.max_result_bytes),
                    f"the result of job {job_id}",
                    "sha256",
                )
                await asyncio.to_thread(os.fsync, sink.fileno())  # off the event loop: other fetches go on
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
        return path, str(data["sha256"])


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
) -> SyncReport:
    """One sync over `client`: statuses, then results when `results_dir` is given. Raises FatalApiError when the
    key or project is refused, ApiUnreachableError when a listing or status read failed after its retries (a
    result that fails is recorded against its row instead)."""
    state = _Sync(
        ledger, client, results_dir, max_result_bytes, max(1, concurrency), random.Random(seed), sleep, max_retry_after
    )
    await state.statuses()
    await state.results()
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
) -> SyncReport:
    """`sync_async` with its own client; with `watch` (seconds), repeated until every tracked job is final."""

    async def main() -> SyncReport:
        async with ApiClient(base_url, api_key, concurrency=concurrency, timeout=timeout) as client:
            while True:
                report = await sync_async(
                    ledger,
                    client,
                    results_dir,
                    max_result_bytes=max_result_bytes,
                    concurrency=concurrency,
                    max_retry_after=max_retry_after,
                )
                if on_round is not None:
                    on_round(report)
                if watch is None or report.all_final:
                    return report
                await asyncio.sleep(watch)

    return asyncio.run(main())


async def adopt_async(
    ledger: Ledger,
    client: ApiClient,
    project_id: str,
    batch_ids: Sequence[str],
    *,
    seed: int | None = None,
    max_retry_after: float = MAX_RETRY_AFTER,
) -> Adoption:
    """List each batch and record every job found (`adopt_jobs`), a page at a time. Raises FatalApiError /
    ApiUnreachableError as `ApiClient.read`."""
    total = Adoption()
    rng = random.Random(seed)
    for batch_id in batch_ids:
        token = ""
        tokens = {token}
        while True:
            data = await client.read(
                partial(client.list_batch_page, project_id, batch_id, token),
                f"batch {batch_id} of project {project_id}",
                expect=None,
                rng=rng,
                max_retry_after=max_retry_after,
            )
            done = adopt_jobs(ledger.engine, project_id, batch_id, listed_jobs(data), utcnow())
            total.adopted += done.adopted
            total.added += done.added
            total.known += done.known
            total.conflicts += done.conflicts
            nxt = data.get("next_page_token")
            token = str(nxt) if nxt else ""
            if not token or token in tokens:
                break
            tokens.add(token)
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
) -> Adoption:
    """`adopt_async` with its own client."""

    async def main() -> Adoption:
        async with ApiClient(base_url, api_key, concurrency=1, timeout=timeout) as client:
            return await adopt_async(ledger, client, project_id, batch_ids, max_retry_after=max_retry_after)

    return asyncio.run(main())
