"""The submit loop: claim → send → classify → record, concurrently, rate-limited, crash-safe.

Rows are claimed in small batches and the claim is committed before any request is sent; each result is
recorded within ~50 ms (group commits). A crash therefore loses at most the knowledge of requests in the
air, and those rows are sent again by the next run: the API refuses the duplicate reference_id with FS_0001
and a batch listing recovers the job_id.

Stopping: the first Ctrl-C / SIGTERM stops claiming and lets requests in the air finish (bounded by the
timeout); the second cancels them. Either way every row this run still holds goes back to pending.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from uploader.client import ApiClient
from uploader.errors import ApiUnreachableError, FatalApiError
from uploader.ledger import Claim, Ledger, Result, utcnow
from uploader.models import Status
from uploader.policy import ApiResult, Decision, Verdict, classify, next_delay, retry_after_seconds

__all__ = ["Progress", "RunOptions", "RunSummary", "StopFlag", "outcome_for", "submit"]


@dataclass(frozen=True)
class RunOptions:
    """How hard and how long to push (the CLI's --concurrency, --rate, --max-attempts, --timeout)."""

    concurrency: int = 64
    rate: float | None = None
    max_attempts: int = 8
    timeout: float = 30.0
    lease_seconds: float = 120.0
    flush_interval: float = 0.05
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    seed: int | None = None


@dataclass
class Progress:
    """Live counters of this run, handed to the progress callback."""

    total: int = 0
    done_before: int = 0
    succeeded: int = 0
    failed: int = 0
    retrying: int = 0
    recovered: int = 0
    uncertain: int = 0
    ignored: int = 0
    throttled: int = 0
    requests: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.done_before + self.succeeded + self.failed + self.uncertain


@dataclass(frozen=True)
class RunSummary:
    """What a finished (or stopped) run did, and what the ledger holds now."""

    counts: dict[str, int]
    progress: Progress
    error_codes: dict[str, int]
    seconds: float
    interrupted: bool
    fatal: str | None

    @property
    def requests_per_second(self) -> float:
        return self.progress.requests / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        p = self.progress
        return {
            "counts": self.counts,
            "this_run": {
                "requests": p.requests,
                "succeeded": p.succeeded,
                "recovered": p.recovered,
                "failed": p.failed,
                "uncertain": p.uncertain,
                "retries": p.retrying,
                "throttled": p.throttled,
                "ignored_stale_results": p.ignored,
            },
            "top_error_codes": self.error_codes,
            "seconds": round(self.seconds, 3),
            "requests_per_second": round(self.requests_per_second, 1),
            "interrupted": self.interrupted,
            "fatal": self.fatal,
        }


class StopFlag:
    """Gentle stop on the first signal, hard stop on the second."""

    def __init__(self) -> None:
        self.gentle = False
        self.hard = False
        self.reason: str | None = None
        self._waiters: list[asyncio.Task[Any]] = []

    def trip(self) -> None:
        if self.gentle:
            self.hard = True
            for task in self._waiters:
                task.cancel()
        self.gentle = True


def outcome_for(claim: Claim, decision: Decision, result: ApiResult, opts: RunOptions, delay: float) -> Result:
    """Where a claimed row goes after one answer (pure: the state diagram's arrows out of in_flight)."""
    details = json.dumps(result.errors, ensure_ascii=False) if result.errors else None
    common = dict(error_code=decision.code, error_message=decision.message, error_details=details)
    base = dict(id=claim.id, lease_token=claim.lease_token, http_status=result.http_status)
    if decision.verdict is Verdict.SUCCEEDED:
        job_id = (result.data or {}).get("job_id")
        return Result(**base, status=Status.SUCCEEDED, job_id=str(job_id))
    if decision.verdict is Verdict.PERMANENT:
        return Result(**base, status=Status.FAILED, **common)
    if decision.verdict is Verdict.RETRYABLE and claim.attempts >= opts.max_attempts:
        return Result(**base, status=Status.FAILED, **common)
    not_before = utcnow() + dt.timedelta(seconds=delay)
    refund = decision.verdict in (Verdict.THROTTLED, Verdict.FATAL)
    return Result(**base, status=Status.PENDING, not_before=not_before, refund_attempt=refund, **common)


class _Run:
    """One run's moving parts; `submit` below is the public entry."""

    def __init__(self, ledger: Ledger, client: ApiClient, opts: RunOptions, stop: StopFlag) -> None:
        self.ledger, self.client, self.opts, self.stop = ledger, client, opts, stop
        self.rng = random.Random(opts.seed)
        self.progress = Progress()
        self.owner = ""
        self.queue: asyncio.Queue[Claim] = asyncio.Queue()
        self.results: list[Result] = []
        self.lookups: dict[tuple[str, str | None], list[Claim]] = {}
        self.resolving = asyncio.Lock()
        self.busy = 0
        self.pause_until = 0.0
        self.fatal: FatalApiError | None = None
        self.default_batches: dict[str, str] = {}
        self.limiter: Any = None
        if opts.rate:
            from aiolimiter import AsyncLimiter

            self.limiter = AsyncLimiter(opts.rate, 1.0)

    # -- the loop ----------------------------------------------------------------------------------------

    async def run(self, on_progress: Callable[[Progress], None] | None) -> None:
        counts = self.ledger.counts()
        self.progress.total = sum(counts.values())
        self.progress.done_before = counts["succeeded"] + counts["failed"] + counts["uncertain"]
        self.owner = self.ledger.register_worker()
        senders = [asyncio.create_task(self._sender()) for _ in range(self.opts.concurrency)]
        helpers = [
            asyncio.create_task(self._flusher()),
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._resolver()),
        ]
        if on_progress:
            helpers.append(asyncio.create_task(self._report(on_progress)))
        claimer = asyncio.create_task(self._claimer())
        self.stop._waiters.extend([claimer, *senders])
        try:
            await claimer
            await self.queue.join()
            await self._resolve_all(final=not self.stop.gentle)
        except asyncio.CancelledError:
            if not self.stop.hard:
                raise
        finally:
            for task in senders + helpers:
                task.cancel()
            await asyncio.gather(*senders, *helpers, return_exceptions=True)
            self._flush()
            self.ledger.release(self.owner)
            self.ledger.stop_worker(self.owner)
            if on_progress:
                on_progress(self.progress)

    async def _claimer(self) -> None:
        batch = max(16, min(256, self.opts.concurrency * 2))
        while not self.stop.gentle and self.fatal is None:
            room = batch - self.queue.qsize()
            if room < batch // 2:
                await asyncio.sleep(0.005)
                continue
            claims = self.ledger.claim(self.owner, room, self.opts.lease_seconds)
            for c in claims:
                self.queue.put_nowait(c)
            if claims:
                await asyncio.sleep(0)
                continue
            if self.queue.qsize() or self.busy or self.results:
                await asyncio.sleep(0.01)
                continue
            wake = self.ledger.next_wakeup()
            if wake is None:
                return
            await asyncio.sleep(min(1.0, max(0.01, (wake - utcnow()).total_seconds())))

    async def _sender(self) -> None:
        while True:
            claim = await self.queue.get()
            self.busy += 1
            try:
                if self.stop.gentle or self.fatal is not None:
                    continue  # left in_flight: released to pending at the end
                await self._send(claim)
            finally:
                self.busy -= 1
                self.queue.task_done()

    async def _send(self, claim: Claim) -> None:
        wait = self.pause_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self.limiter is not None:
            await self.limiter.acquire()
        result = await self.client.create_job(claim.project_id, claim.body)
        self.progress.requests += 1
        decision = classify(result)
        delay = 0.0
        if decision.verdict is Verdict.EXISTS:
            self.lookups.setdefault((claim.project_id, claim.batch_id), []).append(claim)
            return
        if decision.verdict is Verdict.FATAL:
            self.fatal = self.fatal or FatalApiError(_fatal_message(decision, result), decision.code, result.http_status)
        elif decision.verdict in (Verdict.RETRYABLE, Verdict.THROTTLED):
            hint = retry_after_seconds(result.retry_after, dt.datetime.now(dt.UTC))
            delay = next_delay(decision, claim.attempts, hint, self.rng)
            if decision.verdict is Verdict.THROTTLED:
                self.progress.throttled += 1
                self.pause_until = max(self.pause_until, time.monotonic() + delay)
        outcome = outcome_for(claim, decision, result, self.opts, delay)
        self._count(outcome)
        self.results.append(outcome)

    def _count(self, r: Result) -> None:
        p = self.progress
        if r.status is Status.SUCCEEDED:
            p.succeeded += 1
            p.recovered += r.recovered
        elif r.status is Status.FAILED:
            p.failed += 1
        elif r.status is Status.UNCERTAIN:
            p.uncertain += 1
        elif not r.refund_attempt:
            p.retrying += 1

    # -- recording, leases, lookups ----------------------------------------------------------------------

    def _flush(self) -> None:
        if self.results:
            batch, self.results = self.results, []
            _, ignored = self.ledger.record(batch)
            self.progress.ignored += ignored

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.opts.flush_interval)
            self._flush()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.opts.lease_seconds / 4))
            self.ledger.heartbeat(self.owner, self.opts.lease_seconds, self.progress.requests)

    async def _resolver(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self._resolve_all(final=False)

    async def _resolve_all(self, final: bool) -> None:
        """Find the job_ids of rows refused with FS_0001, by listing their batch."""
        async with self.resolving:
            await self._resolve(final)

    async def _resolve(self, final: bool) -> None:
        for key in list(self.lookups):
            project, batch = key
            claims = self.lookups.pop(key, [])
            if not claims:
                continue
            batch_id = batch or await self._default_batch(project)
            if batch_id is None and not final:
                self.lookups.setdefault(key, []).extend(claims)  # wait: a later success reveals its id
                continue
            found: dict[str, str] = {}
            if batch_id is not None and self.fatal is None:
                try:
                    found = await self.client.find_job_ids(project, batch_id, [c.reference_id for c in claims])
                except FatalApiError as exc:
                    self.fatal = self.fatal or exc
                except ApiUnreachableError:
                    found = {}
            for c in claims:
                job_id = found.get(c.reference_id)
                if job_id:
                    r = Result(c.id, c.lease_token, Status.SUCCEEDED, job_id=job_id, recovered=True)
                else:
                    r = Result(
                        c.id,
                        c.lease_token,
                        Status.UNCERTAIN,
                        error_code="FS_0001",
                        error_message="the job exists but its job_id was not found; run `uploader reconcile`",
                    )
                self._count(r)
                self.results.append(r)

    async def _default_batch(self, project: str) -> str | None:
        """The default batch's id, learnt from any job of ours in it (GET job answers its batch_id)."""
        if project in self.default_batches:
            return self.default_batches[project]
        self._flush()
        job_id = self.ledger.known_job_in_default_batch(project)
        if job_id is None:
            return None
        result = await self.client.get_job(project, job_id)
        batch_id = (result.data or {}).get("batch_id") if result.success else None
        if batch_id:
            self.default_batches[project] = str(batch_id)
        return batch_id

    async def _report(self, on_progress: Callable[[Progress], None]) -> None:
        while True:
            await asyncio.sleep(0.25)
            on_progress(self.progress)


def _fatal_message(decision: Decision, result: ApiResult) -> str:
    code = decision.code or f"HTTP {result.http_status}"
    hints = {
        "auth-failure": "the API key was refused: check --api-key / PLAYMENT_API_KEY",
        "unauthorized": "the API key may not use this project",
        "resource_error": "the project was not found: check --project-id",
        "PR_0001": "the project was not found: check --project-id",
    }
    hint = hints.get(decision.code or "", "the API refused the run")
    if result.http_status == 401:
        hint = hints["auth-failure"]
    return f"{hint} ({code}). Nothing was marked failed; fix it and run the same command again."


async def submit(
    ledger: Ledger,
    client: ApiClient,
    opts: RunOptions,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    stop: StopFlag | None = None,
    handle_signals: bool = True,
) -> RunSummary:
    """Send every sendable row of the ledger; returns when none is left, on a stop, or on a fatal error."""
    stop = stop or StopFlag()
    run = _Run(ledger, client, opts, stop)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.trip)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
    started = time.monotonic()
    try:
        await run.run(on_progress)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    status = ledger.status()
    codes = dict(Counter(status.error_codes).most_common(5))
    fatal = str(run.fatal) if run.fatal else None
    summary = RunSummary(status.counts, run.progress, codes, time.monotonic() - started, stop.gentle, fatal)
    if run.fatal is not None:
        raise _FatalWithSummary(run.fatal, summary)
    return summary


class _FatalWithSummary(FatalApiError):
    """A fatal API error, carrying the run's summary for the CLI."""

    def __init__(self, exc: FatalApiError, summary: RunSummary) -> None:
        super().__init__(str(exc), exc.code, exc.http_status)
        self.summary = summary
