"""The submit loop: claim → send → classify → record, concurrently, rate-limited, crash-safe.

Rows are claimed in small batches and the claim is committed before any request is sent; each result is
recorded within ~50 ms (group commits). A crash therefore loses at most the knowledge of requests in the
air, and those rows are sent again by the next run: the API refuses the duplicate reference_id with FS_0001,
the row is recorded `uncertain` at once (so no later run sends it again), and a batch listing recovers the
job_id, in this run or, failing that, in a later one or by `uploader reconcile`.

Stopping: the first Ctrl-C / SIGTERM stops claiming and lets requests in the air finish (bounded by the
timeout); the second cancels them. Either way every row this run still holds goes back to pending, its
attempt kept as possibly sent only when its request had been handed to the client (`Ledger.release`). Every
wait ends on the first signal — the pacer's pause, a Retry-After, the rate limiter, the claimer, the lookups'
backoff, and a ledger write waiting for another process's SQLite write lock (`signal.signal` handlers set
the flags at once, even while a ledger call blocks the loop; see StopFlag and uploader.ledger.engine.LockWait).

A run starts with one request in the air and widens as answers come (slow start, uploader.send.pacing); when
its first rows are all refused with the same permanent code it stops (uploader.send.watch). What holds it up
(the API unreachable, a 429 pause, rows waiting to retry) is told as it happens (`_Run._watch`, `trouble`).

No task dies silently: the senders, the claimer and the helpers are named tasks under one monitor
(`_Run._monitor`); one that raises stops the run (rows released as on any stop) with `TaskFailed`, exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uploader.api import (
    MAX_RETRY_AFTER,
    OUTAGE_CODES,
    PROTOCOL_ERROR_LIMIT,
    ApiResult,
    Decision,
    Verdict,
    classify,
    job_id_text,
    may_have_created,
    next_delay,
    retry_after_capped,
    retry_after_seconds,
    too_many_protocol_errors,
)
from uploader.errors import FatalApiError, InterruptedRun, LedgerError, UploaderError
from uploader.ledger import (
    Claim,
    Ledger,
    LedgerLocked,
    LockWait,
    Result,
    Status,
    background_checkpoints,
    record_activity,
    set_lock_wait,
    utcnow,
)
from uploader.send.pacing import Pacer, RateLimiter
from uploader.send.resolve import LATE_GRACE, Resolver, RunStopping
from uploader.send.summary import (
    ActivityMeter,
    Progress,
    RunSummary,
    activity_counts,
    fatal_message,
    progress_span,
)
from uploader.send.watch import SYSTEMATIC_ROWS, FirstAnswers, systematic_message

if TYPE_CHECKING:  # the run never builds a client: it is handed one
    from uploader.api import ApiClient

#: One record per API answer (_log_answer); the library adds no handler: the CLI does (uploader.cli.logs).
log = logging.getLogger("uploader.send")

__all__ = [
    "Progress",
    "RunOptions",
    "RunSummary",
    "StopFlag",
    "TaskFailed",
    "body_for_send",
    "lease_in_doubt",
    "lock_wait_notice",
    "nothing_to_send",
    "outcome_for",
    "submit",
]

#: The heartbeat shows the run's request count to `uploader status` at least this often (seconds).
STATUS_INTERVAL = 5.0
#: The heartbeat's delay while the run has sent nothing yet (seconds): `status` soon shows a new run's rate.
FIRST_HEARTBEAT = 1.0
#: The user is told the API is unreachable once it has been for this long (seconds), then every
#: OUTAGE_NOTICE_EVERY seconds while it lasts.
OUTAGE_NOTICE = 5.0
OUTAGE_NOTICE_EVERY = 30.0
#: A row's wait before its retry is shown (when nothing else is going on) once it is at least this long (s).
WAIT_SHOWN = 2.0
#: After a gentle stop, how long the last writes (results, releasing the rows) wait for a ledger whose
#: write lock another process holds, before the run gives up and exits (the rows stay in flight).
STOP_LOCK_GRACE = 3.0


@dataclass(frozen=True)
class RunOptions:
    """How hard and how long to push (the CLI's --concurrency, --rate, --max-attempts, --timeout)."""

    concurrency: int = 64
    rate: float | None = None
    max_attempts: int = 8
    timeout: float = 30.0
    #: How long a claim stays reserved to this run without a heartbeat; the heartbeat renews it every
    #: lease/4 s. Past it (the run died or stalled), other runs take the rows over and fence its answers.
    lease_seconds: float = 120.0
    flush_interval: float = 0.05
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    seed: int | None = None
    #: How long the API may be unreachable (no connection can be opened at all) before the run stops.
    #: Meanwhile the run pauses and retries without counting attempts, so an API restart fails no row.
    outage_seconds: float = 300.0
    #: The longest wait a Retry-After may impose (seconds); a longer hint is cut to it and the user told.
    max_retry_after: float = MAX_RETRY_AFTER
    #: Begin with one request in the air and widen by one per answer (uploader.send.pacing), so a run
    #: that every answer refuses (a wrong key, a wrong batch) stops after a few requests, not `concurrency`.
    slow_start: bool = True
    #: Rows the claimer keeps queued for the senders: four times the concurrency, within these bounds
    #: (`claim_size`): few enough that a stopped run holds few rows, enough that claims are few (each is a
    #: transaction, whose commit costs more CPU than the rows it claims).
    claim_size_min: int = 16
    #: The upper bound of `claim_size` (see `claim_size_min`).
    claim_size_max: int = 256
    #: How often the claimer looks again while the senders' queue is more than half full (seconds).
    claim_poll: float = 0.005
    #: How often the claimer looks again while rows are still in the air or their answers not yet recorded
    #: (seconds): those may come back pending (a retry) before the run can end. Also the shortest wait for
    #: a row's retry time.
    settle_poll: float = 0.01
    #: The longest wait for a row's retry time before claiming again (seconds): another run may release rows
    #: meanwhile.
    retry_wait_max: float = 1.0
    #: How often the resolver looks for uncertain rows waiting for a lookup (seconds; uploader.send.resolve).
    resolve_interval: float = 0.5
    #: Seconds after a row's last attempt was recorded during which a listing that misses it leaves it
    #: uncertain (its request may still wait at the server): the run lists once more after them.
    late_grace: float = LATE_GRACE
    #: How often `on_progress` is called (seconds): the progress line's refresh.
    progress_interval: float = 0.25
    #: The body on the wire from the body to send, just before each send and resend (`--sign`: storage URLs
    #: signed now, uploader.storage.PayloadSigner); the ledger keeps the body as loaded.
    prepare_payload: Callable[[str], str] | None = None

    @property
    def claim_size(self) -> int:
        """How many rows the claimer keeps queued for the senders: four times the concurrency, within bounds."""
        return max(self.claim_size_min, min(self.claim_size_max, self.concurrency * 4))


def lock_wait_notice(dialect: str, seconds: float) -> str:
    """What the run says while a write of it has waited `seconds` for the ledger: on SQLite, for another process's
    write lock; on PostgreSQL, for a statement the server has not finished (most often it waits for a lock
    another session holds, such as a `LOCK TABLE` or a long transaction)."""
    if dialect == "sqlite":
        return f"waiting for the ledger: another process holds its write lock ({seconds:.0f} s)"
    return (
        f"waiting for the ledger: its database has not finished a statement for {seconds:.0f} s (another session "
        "may hold a lock the run needs)"
    )


def trouble(
    now: float, down: float | None, throttled_until: float, retry_due: dict[int, tuple[float, str | None]] | None
) -> str | None:
    """What holds the run up at `now`, in a few words (Progress.trouble), or None. `down`: seconds the API has
    been unreachable; `throttled_until`: the end of a 429 pause; `retry_due`: rows waiting to retry (row → time
    due, code), given only when nothing else is being sent (then they are what the run waits for)."""
    if down is not None and down >= 1:
        return f"API unreachable for {down:.0f} s, retrying"
    if throttled_until > now:
        return f"throttled (429): paused {throttled_until - now:.0f} s"
    if retry_due:
        due, code = min(retry_due.values(), key=lambda w: w[0])
        wait = due - now
        if wait >= WAIT_SHOWN:
            n = len(retry_due)
            rows = "1 row waits" if n == 1 else f"{n} rows wait"
            return f"{rows} {wait:.0f} s to retry ({code})"
    return None


class StopFlag:
    """Gentle stop on the first signal, hard stop on the second.

    `trip` may run inside a `signal.signal` handler, between any two bytecodes of the main thread — also
    while a ledger write blocks the event loop waiting for SQLite's lock (that wait polls `gentle`). So it
    only sets the flags and hands the loop-side work (waking every wait, cancelling on a hard stop) to the
    loop with `call_soon_threadsafe`, which also wakes a loop asleep in its selector.
    """

    def __init__(self) -> None:
        self.gentle = False
        self.hard = False
        self.reason: str | None = None
        self.signum: int | None = None  #: the first signal that tripped it (the CLI exits 128 + it)
        self._waiters: list[asyncio.Task[Any]] = []
        self._wakers: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def trip(self) -> None:
        if self.gentle:
            self.hard = True
        self.gentle = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._act)
        except RuntimeError:  # the loop closed meanwhile
            pass

    async def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`; return at once on a stop (the waits outside the submit loop: batch
        creation and the wait for another run's batch). The caller checks `gentle` afterwards."""
        if self.gentle:
            return
        event = asyncio.Event()
        wake = event.set
        self._wakers.append(wake)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await event.wait()
        finally:
            self._wakers.remove(wake)

    def _act(self) -> None:
        """On the loop: end every wait; on a hard stop, cancel the requests in the air too."""
        for wake in self._wakers:
            wake()
        if self.hard:
            for task in self._waiters:
                task.cancel()


class TaskFailed(UploaderError):
    """A task of the run raised: the run stopped (its rows are released); nothing was marked failed."""


def task_failed(task: str, exc: BaseException) -> TaskFailed:
    """The error a run stops with when its task `task` raised `exc`. An UploaderError is the user's to fix (a
    storage URL that cannot be signed: the credentials, the extra): its own message on one line, and its
    exit code. Anything else is a bug: named with the task, to be reported. Pure."""
    released = "nothing was marked failed; the rows this run held are pending again"
    if isinstance(exc, UploaderError):
        stopped = TaskFailed(f"{exc}. The run stopped: {released}; run the same command again once this is fixed.")
        stopped.exit_code = exc.exit_code
        return stopped
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return TaskFailed(
        f"the run stopped: its task {task!r} failed ({what}). {released.capitalize()}. Please report this; run "
        "the same command again to resume."
    )


def lease_in_doubt(leased_at: float, now: float, lease_seconds: float) -> bool:
    """Whether a claim's lease may have lapsed before its send: more than half the lease has passed since it
    was claimed or last renewed (monotonic seconds; a healthy run renews every quarter; a claim made before a
    renewal that came this late counts from its claim). A run stalled that long (SIGSTOP, a suspended machine,
    a blocked loop) must ask the ledger whether the row is still its own before sending: another run may have
    taken it over and finished it."""
    return now - leased_at > lease_seconds / 2


def body_for_send(body: str, batch_id: str | None) -> str:
    """The JSON body to POST: the ledger's body, plus the row's batch_id when the body has none (a batch the
    run gave the row after loading, uploader.send.batches; the stored body stays as loaded, so reloading the
    manifest still compares equal). Cheap on the hot path: no parsing unless the text names a batch_id."""
    if not batch_id:
        return body
    prefix = '{"batch_id":' + json.dumps(batch_id)
    if '"batch_id"' not in body:
        rest = body.lstrip()[1:].lstrip()
        return prefix + ("}" if rest.startswith("}") else "," + rest)
    obj = json.loads(body)
    if obj.get("batch_id") not in (None, ""):
        return body  # the row's own batch (its manifest's batch_id): it takes precedence
    obj.pop("batch_id", None)
    return json.dumps({"batch_id": batch_id, **obj}, ensure_ascii=False, separators=(",", ":"))


def outcome_for(claim: Claim, decision: Decision, result: ApiResult, opts: RunOptions, delay: float) -> Result:
    """Where a claimed row goes after one answer (pure: the state diagram's arrows out of in_flight).

    An answer that may have come from an API that created the job (policy.may_have_created) never fails
    the row: when the attempts are used up it goes `uncertain` and a batch listing decides; so does a
    success answer that does not fit the request (Verdict.PROTOCOL)."""
    sent = may_have_created(result)
    if decision.verdict is Verdict.SUCCEEDED:
        job_id = job_id_text((result.data or {}).get("job_id"))
        return Result(
            claim.id,
            claim.lease_token,
            Status.SUCCEEDED,
            job_id=job_id,
            http_status=result.http_status,
            may_have_created=sent,
            origin="created",
        )
    details = json.dumps(result.errors, ensure_ascii=False) if result.errors else None
    message = decision.message
    status = Status.PENDING
    if decision.verdict is Verdict.PROTOCOL:
        status = Status.UNCERTAIN
    elif decision.verdict is Verdict.PERMANENT:
        status = Status.FAILED
    elif decision.verdict is Verdict.RETRYABLE and claim.attempts >= opts.max_attempts:
        status = Status.UNCERTAIN if sent else Status.FAILED
        if sent:
            message = (
                f"{decision.message or decision.code}; attempts used up, but the last one may have "
                "reached the API: the batch listing decides"
            )
    retry = status is Status.PENDING  # sent again after `delay`; a 429 or a run-fatal answer costs no attempt
    return Result(
        claim.id,
        claim.lease_token,
        status,
        error_code=decision.code,
        error_message=message,
        error_details=details,
        http_status=result.http_status,
        may_have_created=sent,
        not_before=utcnow() + dt.timedelta(seconds=delay) if retry else None,
        refund_attempt=retry and decision.verdict in (Verdict.THROTTLED, Verdict.FATAL),
    )


class _Run:
    """One run's moving parts; `submit` below is the public entry."""

    def __init__(self, ledger: Ledger, client: ApiClient, opts: RunOptions, stop: StopFlag) -> None:
        self.ledger, self.client, self.opts, self.stop = ledger, client, opts, stop
        self.rng = random.Random(opts.seed)
        self.progress = Progress()
        self.activity = ActivityMeter()  #: the counters above, per minute, for the ledger (uploader report)
        self.owner = ""
        self.queue: asyncio.Queue[Claim] = asyncio.Queue()
        self.results: list[Result] = []
        #: Held rows whose request was handed to the client, by id: the lease token of that claim. Kept until
        #: the answer is recorded; a stop releases these rows with their attempt as sent, the others without.
        self.started: dict[int, int] = {}
        #: Claimed rows not yet sent, by id: when they were claimed (monotonic, before the claim's statement).
        self.claimed_at: dict[int, float] = {}
        #: When the last lease renewal began (monotonic), and the last one that came too late for the leases
        #: before it (a stall: `lease_in_doubt`); a claim older than a stall may have been taken over.
        self.renewed_at = self.stalled_at = time.monotonic()
        self.busy = 0
        self.pacer = Pacer(
            opts.concurrency,
            self.rng,
            backoff_base=opts.backoff_base,
            backoff_cap=opts.backoff_cap,
            outage_seconds=opts.outage_seconds,
            max_retry_after=opts.max_retry_after,
            slow_start=opts.slow_start,
        )
        self.fatal: FatalApiError | None = None
        self.protocol_example: str | None = None  #: the first answer that did not fit its request
        self.ledger_error: LedgerError | None = None  #: the ledger refused a write: the run stops
        self.failed_task: TaskFailed | None = None  #: a task of the run raised: the run stops
        self.resolver = Resolver(
            ledger,
            client,
            self.progress,
            self.rng,
            flush=self._flush,
            halted=lambda: self.fatal is not None or self.ledger_error is not None,
            sleep=self._sleep,
            max_retry_after=opts.max_retry_after,
            max_attempts=opts.max_attempts,
            late_grace=opts.late_grace,
        )
        self.limiter = RateLimiter(opts.rate) if opts.rate else None
        self.closing_since: float | None = None  #: when the run began its last writes (the finally block)
        self.on_progress: Callable[[Progress], None] | None = None
        self.first = FirstAnswers(0)  #: the first rows' answers: a systematic error stops the run (_run sets it)
        #: This run's rows waiting to retry after a retryable error: row id → (monotonic time due, code).
        self.retry_due: dict[int, tuple[float, str | None]] = {}
        #: Every row this run put back to pending to send again: row id → monotonic time due. The claims take
        #: them by this, not by their `not_before` alone (a wall-clock time: a clock stepped back postpones it).
        self.own_retries: dict[int, float] = {}
        self.outage_told = 0.0  #: how long the current outage had lasted when the user was last told
        self.outage_began: float | None = None  #: when the outage the user was told of began (monotonic)
        self.unreachable_message: str | None = None  #: the last failed connection, in the user's words

    # -- the loop ----------------------------------------------------------------------------------------

    async def run(self, on_progress: Callable[[Progress], None] | None) -> None:
        self.on_progress = on_progress
        previous = set_lock_wait(self.ledger.engine, LockWait(self._lock_give_up, self._lock_waiting))
        try:
            with background_checkpoints(self.ledger.engine):
                await self._run(on_progress)
        finally:
            set_lock_wait(self.ledger.engine, previous)

    async def _run(self, on_progress: Callable[[Progress], None] | None) -> None:
        counts = self.ledger.counts()
        self.progress.total, self.progress.done_before = progress_span(counts)
        self.resolver.waiting = counts["uncertain"] > 0  # left by an earlier run: resolved by this one
        self.first = FirstAnswers(min(SYSTEMATIC_ROWS, counts["pending"] + counts["in_flight"]))
        self.owner = self._register()
        self.stop._wakers.append(self.pacer.wake)
        side: dict[asyncio.Task[Any], str] = {}

        def start(coro: Any, name: str) -> asyncio.Task[Any]:
            task = asyncio.create_task(coro, name=name)
            side[task] = name
            return task

        senders = [start(self._sender(), f"sender {i + 1}") for i in range(self.opts.concurrency)]
        helpers = [
            start(self._flusher(), "flusher"),
            start(self._heartbeat(), "heartbeat"),
            start(self._resolve_loop(), "resolver"),
        ]
        if on_progress:
            helpers.append(start(self._report(on_progress), "progress"))
        claimer = start(self._claimer(), "claimer")
        drain = asyncio.create_task(self._drain(claimer), name="run")
        self.stop._waiters.extend([claimer, *senders, drain])  # a second signal cancels the requests in the air
        if self.stop.gentle:  # a signal before the handlers knew this run's tasks
            self.pacer.wake()
        try:
            await self._monitor(drain, side)
        except LedgerError as exc:
            self._halt(exc)
        finally:
            for task in [*senders, *helpers, claimer, drain]:
                task.cancel()
            await asyncio.gather(*senders, *helpers, claimer, drain, return_exceptions=True)
            self._close(on_progress)
        if self.failed_task is not None:
            raise self.failed_task
        if self.ledger_error is not None:
            raise LedgerError(
                f"{self.ledger_error}. The run stopped: every result recorded before is kept, and the rows "
                "that were in the air are sent again (without duplicates) by the next run. Fix the cause "
                "(disk space, permissions, the database server), then run the same command again."
            ) from self.ledger_error

    def _register(self) -> str:
        """Register this run as a worker in the ledger; its owner token."""
        try:
            return self.ledger.register_worker()
        except LedgerLocked as exc:  # stopped while another process held the ledger: nothing was claimed
            if exc.interrupted:
                raise InterruptedRun() from None
            raise

    def _close(self, on_progress: Callable[[Progress], None] | None) -> None:
        """After the run's tasks ended: record the last results, release the rows still held, sign off."""
        # Each step on its own: a ledger that refused one write (disk full) may still take the next,
        # and whatever is not written stays in_flight, sent again by the next run: at once, as the
        # rows of a stopped run (or, if even stop_worker failed, of a dead pid on this host).
        self.closing_since = time.monotonic()
        steps = (self._flush, self._activity, lambda: self.ledger.release(self.owner, self.started))
        unreachable: LedgerError | None = None  #: a stopped run's last writes failed: told, not its exit
        for step in (*steps, lambda: self.ledger.stop_worker(self.owner)):
            try:
                step()
            except LedgerError as exc:
                if self.stop.gentle and self.ledger_error is None and not getattr(exc, "interrupted", False):
                    unreachable = unreachable or exc
                else:
                    self._halt(exc)
        if self.results and self.ledger_error is None:
            locked = "the ledger stayed locked by another process"
            cause = f"the ledger failed ({unreachable})" if unreachable else locked
            self.progress.notices.append(
                f"{cause}: {len(self.results)} answers could not be recorded and the rows this run held stay in "
                "flight; the next run sends them again (the API refuses the jobs that exist with FS_0001 and the "
                "run finds their job_ids)"
            )
        elif unreachable is not None:
            self.progress.notices.append(f"the ledger failed while the run stopped ({unreachable})")
        if on_progress:
            self.progress.trouble = None  # the run is over: nothing holds it up
            self.progress.retrying_now = len(self.retry_due)
            on_progress(self.progress)

    async def _drain(self, claimer: asyncio.Task[Any]) -> None:
        """The run's main line: claim until nothing is left, wait for the senders, then the last lookups; and
        again while they made rows pending (not found by a listing: sent again, within their attempts)."""
        await asyncio.wait([claimer])
        if claimer.cancelled() or claimer.exception() is not None:
            return  # the monitor reports it
        while True:
            await self.queue.join()
            if self._stopping:
                return
            # Every uncertain row of the ledger, not only this run's: another machine's run may still be
            # resolving its own, and the counts this run reports (and its exit code) come after this.
            self.resolver.waiting = True
            await self._resolve_all(final=True)
            if self._stopping or self.ledger.next_wakeup(self.owner) is None:
                return
            await self._claimer()  # what the lookups made pending, and whatever else became claimable

    async def _monitor(self, drain: asyncio.Task[Any], side: dict[asyncio.Task[Any], str]) -> None:
        """Wait for `drain`; a side task that raises (or is cancelled by anything but a second signal) first
        stops the run with `TaskFailed` naming it — no task dies silently (after procrastinate's
        `_monitor_side_tasks`: one `asyncio.wait(..., FIRST_COMPLETED)` over every named task)."""
        names = {drain: "run", **side}
        waiting: set[asyncio.Task[Any]] = {drain, *side}
        while waiting:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled() and (task is drain or self.stop.hard):
                    continue  # cancelled by a second signal, or below
                exc: BaseException | None = asyncio.CancelledError() if task.cancelled() else task.exception()
                if exc is None:
                    continue  # the claimer ends when nothing is left to claim; `drain` when the run is done
                if isinstance(exc, LedgerError):
                    self._halt(exc)
                elif self.failed_task is None:
                    self.failed_task = task_failed(names[task], exc)
                self.pacer.wake()
                drain.cancel()
            if drain in done:
                return

    def _lock_give_up(self) -> bool:
        """Whether a ledger write waiting for another process's write lock stops waiting (uploader.ledger.engine):
        during the run, on the first signal (the run is stopping anyway); in the last writes after a stop
        or a ledger error, after STOP_LOCK_GRACE seconds; on a second signal, at once."""
        if self.stop.hard:
            return True
        if self.closing_since is None:
            return self.stop.gentle
        return (
            self.stop.gentle or self.ledger_error is not None
        ) and time.monotonic() - self.closing_since > STOP_LOCK_GRACE

    def _lock_waiting(self, seconds: float) -> None:
        """Say that the run waits for the ledger, every few seconds (SQLite: from inside the blocked write;
        PostgreSQL: from the thread that watches its statements, the run's own thread being blocked)."""
        self.progress.notices.append(lock_wait_notice(self.ledger.engine.dialect.name, seconds))
        if self.on_progress:
            self.on_progress(self.progress)

    async def _sleep(self, seconds: float) -> None:
        """Sleep that a stop ends at once (RunStopping): the lookups' backoff and Retry-After waits."""
        await self.pacer.sleep(seconds)
        if self._stopping:
            raise RunStopping

    def _halt(self, exc: LedgerError) -> None:
        """The ledger refused a write: stop claiming and sending (the first error is the one reported). A
        write that stopped waiting for the ledger's lock because the run is stopping is no error."""
        if getattr(exc, "interrupted", False):
            return
        if self.ledger_error is None:
            self.ledger_error = exc
        self.pacer.wake()

    @property
    def _stopping(self) -> bool:
        return (
            self.stop.gentle or self.fatal is not None or self.ledger_error is not None or self.failed_task is not None
        )

    async def _claimer(self) -> None:
        try:
            await self._claim_loop()
        except LedgerError as exc:
            self._halt(exc)

    async def _claim_loop(self) -> None:
        size = self.opts.claim_size
        while not self._stopping:
            room = size - self.queue.qsize()
            if room < size // 2:
                await asyncio.sleep(self.opts.claim_poll)
                continue
            claimed_at = time.monotonic()
            due = [row for row, at in self.own_retries.items() if at <= claimed_at]
            claims = self.ledger.claim(self.owner, room, self.opts.lease_seconds, due=due)
            for c in claims:
                self.claimed_at[c.id] = claimed_at
                self.retry_due.pop(c.id, None)
                self.own_retries.pop(c.id, None)
                self.started.pop(c.id, None)  # a lease of ours taken over: the claim kept that attempt as sent
                self.queue.put_nowait(c)
            if claims:
                await asyncio.sleep(0)
                continue
            if self.queue.qsize() or self.busy or self.results:
                await asyncio.sleep(self.opts.settle_poll)
                continue
            wake = self.ledger.next_wakeup(self.owner)
            if wake is None:
                return
            wait = (wake - utcnow()).total_seconds()
            await self.pacer.sleep(min(self.opts.retry_wait_max, max(self.opts.settle_poll, wait)))

    async def _sender(self) -> None:
        while True:
            claim = await self.queue.get()
            self.busy += 1
            try:
                if self._stopping:
                    continue  # left in_flight: released to pending at the end
                await self._send(claim)
            finally:
                self.busy -= 1
                self.queue.task_done()

    def _unreachable(self, decision: Decision) -> tuple[float, Decision]:
        """The request never reached the API: the API is down, not the row. Pause every sender and do not
        count the attempt (as for a 429), or a restart of a few seconds would fail whole batches; stop the run
        once the API has been unreachable for too long. Returns the pause and the decision to record."""
        self.progress.unreachable += 1
        self.unreachable_message = decision.message
        delay, down_for = self.pacer.unreachable()
        if down_for is not None and self.fatal is None:
            self.fatal = FatalApiError(
                f"cannot connect to the API for {down_for:.0f} s ({decision.message}). Nothing was marked "
                "failed; run the same command again once the API is reachable.",
                decision.code,
            )
        return delay, Decision(Verdict.THROTTLED, decision.code, decision.message)

    def _wire_body(self, claim: Claim) -> str:
        """The body to POST, made just before each send: `body_for_send`, then `opts.prepare_payload`."""
        body = body_for_send(claim.body, claim.batch_id)
        return body if self.opts.prepare_payload is None else self.opts.prepare_payload(body)

    async def _send(self, claim: Claim) -> None:
        if not await self.pacer.acquire(lambda: self._stopping):
            return  # left in_flight: released to pending at the end
        try:
            if self.limiter is not None and not await self._paced(self.limiter):
                return  # stopping: left in_flight, released to pending at the end
            claimed_at = self.claimed_at.pop(claim.id, 0.0)
            leased = claimed_at if claimed_at < self.stalled_at else max(claimed_at, self.renewed_at)
            if lease_in_doubt(leased, time.monotonic(), self.opts.lease_seconds) and not self.ledger.reaffirm(
                claim.id, claim.lease_token, self.opts.lease_seconds
            ):
                self.progress.lost_leases += 1
                return  # another run took the row over while this one stalled: its row, its request
            body = self._wire_body(claim)
            sent_at = time.monotonic()
            self.started[claim.id] = claim.lease_token
            result = await self.client.create_job(claim.project_id, body)
        finally:
            flying = self.pacer.release()
        self.progress.requests += 1
        decision = classify(result, reference_id=claim.reference_id)
        if log.isEnabledFor(logging.INFO):
            _log_answer(claim, result, decision, time.monotonic() - sent_at)
        self._answered(claim, decision, result.http_status is not None)
        delay = 0.0
        if decision.verdict is Verdict.EXISTS:
            # The job exists; its job_id is looked up by listing the batch (the resolver). Recorded as
            # `uncertain` at once, so a crash or stop before the lookup cannot make every later run send
            # the row again (else each kill would add its whole unresolved backlog to the next run's sends).
            outcome = Result(
                claim.id, claim.lease_token, Status.UNCERTAIN, error_code=decision.code,
                error_message="the job exists but its job_id is not known yet: the run looks it up; if it "
                              "stays uncertain, run `uploader reconcile`",
                http_status=result.http_status,
            )  # fmt: skip
            self._count(outcome)
            self.results.append(outcome)
            self.resolver.waiting = True
            return
        if decision.verdict is Verdict.PROTOCOL:
            self._protocol_error(decision.code, f"reference_id {claim.reference_id!r}: {decision.message}")
        elif decision.verdict is Verdict.FATAL:
            self.fatal = self.fatal or FatalApiError(
                fatal_message(decision, result), decision.code, result.http_status, project_id=claim.project_id
            )
            self.pacer.wake()
        elif decision.verdict is Verdict.RETRYABLE and decision.code in OUTAGE_CODES:
            delay, decision = self._unreachable(decision)
        elif decision.verdict in (Verdict.RETRYABLE, Verdict.THROTTLED):
            hint = retry_after_seconds(result.retry_after, dt.datetime.now(dt.UTC))
            if hint is not None and retry_after_capped(hint, self.opts.max_retry_after):
                self._capped(hint)
            if decision.verdict is Verdict.THROTTLED:
                # Retry-After is a floor added to a backoff growing with the 429 rounds in a row: a hint of 0
                # (or a date in the past) cannot make the whole run retry as fast as it can.
                delay = self.pacer.throttle_delay(hint)
                self.progress.throttled += 1
                self.pacer.throttled(delay, flying)
            else:
                delay = next_delay(
                    decision,
                    claim.attempts,
                    hint,
                    self.rng,
                    base=self.opts.backoff_base,
                    cap=self.opts.backoff_cap,
                    max_retry_after=self.opts.max_retry_after,
                )
        self._record(claim, outcome_for(claim, decision, result, self.opts, delay), delay)

    def _answered(self, claim: Claim, decision: Decision, answered: bool) -> None:
        """After an answer (`answered`: the API itself answered): widen or keep the window (a run-fatal answer
        does not widen it); stop the run when its first rows all met the same permanent error."""
        if answered:
            self.pacer.answered(
                throttled=decision.verdict is Verdict.THROTTLED, grow=decision.verdict is not Verdict.FATAL
            )
        if self.first.add(claim.id, claim.reference_id, decision, answered) and self.fatal is None:
            self.fatal = FatalApiError(systematic_message(self.first), self.first.code)
            self.pacer.wake()

    def _record(self, claim: Claim, outcome: Result, delay: float) -> None:
        """Count an outcome (a failed row under its code; a row to retry after `delay` as retrying now) and
        queue it for the ledger."""
        self._count(outcome)
        if outcome.status is Status.FAILED:
            self.progress.failed_row(outcome.error_code, outcome.error_message, claim.reference_id)
        elif outcome.status is Status.PENDING and not outcome.refund_attempt:
            self.retry_due[claim.id] = (time.monotonic() + delay, outcome.error_code)
        if outcome.status is Status.PENDING:
            self.own_retries[claim.id] = time.monotonic() + delay
        self.results.append(outcome)

    async def _paced(self, limiter: RateLimiter) -> bool:
        """Wait until --rate lets one more request go; False if the run stops meanwhile."""
        while (wait := limiter.delay(time.monotonic())) > 0:
            await self.pacer.sleep(wait)
            if self._stopping:
                return False
        limiter.take(time.monotonic())
        return True

    def _capped(self, hint: float) -> None:
        """A Retry-After longer than --max-retry-after: count it; say so once (progress line, summary)."""
        p = self.progress
        p.retry_after_capped += 1
        p.retry_after_longest = max(p.retry_after_longest, hint)
        if p.retry_after_capped == 1:
            p.notices.append(
                f"the API asked to wait {hint:.0f} s (Retry-After); waiting {self.opts.max_retry_after:g} s at "
                "most (--max-retry-after)"
            )

    def _protocol_error(self, code: str | None, example: str) -> None:
        """Count an answer that does not fit its request; too many stop the run (exit 1): the server
        answering is not the API, or is broken, and every row it answers would need a lookup."""
        self.progress.protocol_errors += 1
        self.protocol_example = self.protocol_example or example
        if too_many_protocol_errors(self.progress.protocol_errors) and self.fatal is None:
            self.fatal = FatalApiError(
                f"{self.progress.protocol_errors} answers did not fit their requests (a job_id that is missing or "
                f"not a string/integer, another reference_id, or another row's job_id; the limit is "
                f"{PROTOCOL_ERROR_LIMIT}), e.g. {self.protocol_example}. The run stopped: is --base-url the API? "
                "Those rows are uncertain and are looked up by listing their batch (`uploader reconcile` or the "
                "next run); rows not sent stay pending.",
                code,
            )
            self.pacer.wake()  # end any pause now: the run stops

    def _count(self, r: Result) -> None:
        p = self.progress
        if r.status is Status.SUCCEEDED:
            p.succeeded += 1
            p.recovered += r.recovered
        elif r.status is Status.FAILED:
            p.failed += 1
        elif r.status is Status.UNCERTAIN:
            p.uncertain += 1
            self.resolver.mine.add(r.id)
            self.resolver.answered[r.id] = time.monotonic()
            self.resolver.waiting = True  # the batch listing decides
        elif not r.refund_attempt:
            p.retrying += 1

    # -- recording, leases, lookups ----------------------------------------------------------------------

    def _flush(self) -> None:
        if self.results:
            batch, self.results = self.results, []
            duplicates: list[int] = []
            try:
                _, ignored = self.ledger.record(batch, duplicates=duplicates)
            except LedgerError:
                self.results[:0] = batch  # not recorded: kept for one more try when the run ends
                raise
            self.progress.ignored += ignored
            for r in batch:  # recorded (or fenced: the row is no longer ours to release)
                if self.started.get(r.id) == r.lease_token:
                    del self.started[r.id]
            if duplicates:
                self._duplicates(batch, duplicates)

    def _duplicates(self, batch: list[Result], ids: list[int]) -> None:
        """Successes the ledger refused (their job_id is another row's), and the rows demoted with them:
        uncertain now, for the listing to settle; each refused answer counts as a protocol error."""
        mine = {r.id for r in batch if r.status is Status.SUCCEEDED}
        self.resolver.waiting = True
        for rid in ids:
            if rid in mine:  # counted as succeeded by _count; a demoted holder shows in the ledger's counts
                self.progress.succeeded -= 1
                self.progress.uncertain += 1
                self.resolver.mine.add(rid)
                self._protocol_error(
                    "duplicate_job_id",
                    "a job_id the API had already answered for another row "
                    "(`uploader export --status uncertain` shows them)",
                )

    async def _flusher(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.opts.flush_interval)
                self._flush()
        except LedgerError as exc:
            self._halt(exc)

    async def _heartbeat(self) -> None:
        """Renew this run's leases every lease/4 s; show its request count and current rate to `status` every
        few seconds (the first time after a second, so a new run does not show 0 requests/s for long)."""
        every = max(0.1, self.opts.lease_seconds / 4)
        tick = min(every, STATUS_INTERVAL)
        renewed = last_at = time.monotonic()
        last_sent = 0
        try:
            while True:
                await asyncio.sleep(min(tick, FIRST_HEARTBEAT) if last_sent == 0 else tick)
                now, sent = time.monotonic(), self.progress.requests
                rate = (sent - last_sent) / (now - last_at) if now > last_at else None
                last_at, last_sent = now, sent
                renew = now - renewed >= every - tick / 2
                self.ledger.heartbeat(self.owner, self.opts.lease_seconds, sent, renew=renew, rate=rate)
                self._activity()
                if renew:
                    if lease_in_doubt(self.renewed_at, now, self.opts.lease_seconds):
                        self.stalled_at = now  # this renewal came too late to keep every lease before it
                    renewed, self.renewed_at = time.monotonic(), now
        except LedgerError as exc:
            self._halt(exc)

    def _activity(self) -> None:
        """Write this run's counts of the current minute to the ledger, when they changed."""
        if minute := self.activity.tick(utcnow(), activity_counts(self.progress)):
            record_activity(self.ledger.engine, self.owner, *minute)

    async def _resolve_loop(self) -> None:
        try:
            while True:  # at once first: rows an earlier (killed) run left uncertain
                await self._resolve_all(final=False)
                await asyncio.sleep(self.opts.resolve_interval)
        except LedgerError as exc:
            self._halt(exc)

    async def _resolve_all(self, final: bool) -> None:
        """Find the job_ids of rows refused with FS_0001, by listing their batch (uploader.send.resolve)."""
        fatal = await self.resolver.resolve(final)
        self.fatal = self.fatal or fatal
        if fatal is not None:
            self.pacer.wake()

    async def _report(self, on_progress: Callable[[Progress], None]) -> None:
        while True:
            await asyncio.sleep(self.opts.progress_interval)
            self._watch(time.monotonic())
            on_progress(self.progress)

    def _watch(self, now: float) -> None:
        """Say what holds the run up, as it happens: the API unreachable (a notice after OUTAGE_NOTICE s, then
        every OUTAGE_NOTICE_EVERY s, and when it answers again), a 429 pause, rows waiting to retry."""
        p, pacer = self.progress, self.pacer
        p.retrying_now = len(self.retry_due)
        down = now - pacer.outage_since if pacer.outage_since is not None else None
        if down is None and self.outage_began is not None:
            p.notices.append(f"the API answers again, after {now - self.outage_began:.0f} s unreachable")
            self.outage_told, self.outage_began = 0.0, None
        if (
            down is not None
            and down >= OUTAGE_NOTICE
            and (not self.outage_told or down - self.outage_told >= OUTAGE_NOTICE_EVERY)
        ):
            self.outage_told, self.outage_began = down, pacer.outage_since
            p.notices.append(
                f"API unreachable for {down:.0f} s, retrying ({self.unreachable_message}); nothing is "
                "marked failed meanwhile"
            )
        if self.stop.gentle:
            p.trouble = f"stopping: {self.pacer.in_air} in the air (Ctrl-C again: cancel them)"
            return
        p.trouble = trouble(
            now,
            down,
            pacer.pause_until if pacer.throttle_rounds else 0.0,
            None if self.queue.qsize() or self.busy else self.retry_due,
        )


def nothing_to_send(ledger: Ledger, counts: dict[str, int]) -> RunSummary:
    """The summary of a run that found nothing to send (a rerun over a finished ledger): no HTTP at all."""
    total, done = progress_span(counts)
    progress = Progress(total=total, done_before=done)
    return RunSummary(counts, progress, ledger.error_codes(limit=5), 0.0, False, None, ledger.error_details(limit=5))


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
    stop._loop = asyncio.get_running_loop()
    previous = _install_signal_handlers(stop) if handle_signals else {}
    started = time.monotonic()
    try:
        await run.run(on_progress)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    counts, codes, details = _final_reads(ledger, run)
    fatal = str(run.fatal) if run.fatal else None
    summary = RunSummary(counts, run.progress, codes, time.monotonic() - started, stop.gentle, fatal, details)
    if run.fatal is not None:
        raise _FatalWithSummary(run.fatal, summary)
    return summary


def _final_reads(ledger: Ledger, run: _Run) -> tuple[dict[str, int], dict[str, int], list[dict[str, Any]]]:
    """The ledger's counts, error codes and their details, for the summary (not status(): it scans the whole
    table). After a stop they are read as the run's last writes wait: a PostgreSQL session holding a lock on
    `jobs` (which keeps out even readers) makes a stopped run give them up, `{}, {}, []`, rather than wait."""

    def read() -> tuple[dict[str, int], dict[str, int], list[dict[str, Any]]]:
        return ledger.counts(), ledger.error_codes(limit=5), ledger.error_details(limit=5)

    if not run.stop.gentle:
        return read()
    previous = set_lock_wait(ledger.engine, LockWait(run._lock_give_up, run._lock_waiting))
    try:
        return read()
    except LedgerLocked as exc:
        if not exc.interrupted:
            raise
        return {}, {}, []
    finally:
        set_lock_wait(ledger.engine, previous)


def _install_signal_handlers(stop: StopFlag) -> dict[signal.Signals, Any]:
    """SIGINT and SIGTERM trip `stop` from a `signal.signal` handler; returns the handlers to put back.

    Not `loop.add_signal_handler`: its callbacks run only when the loop gets control, and a ledger call
    waiting for SQLite's lock holds it (a SIGTERM would wait for the lock). A Python handler runs between
    bytecodes, so the lock wait, which retries in short slices, sees the flag at once. Only the main thread
    may set handlers: elsewhere none are installed (the caller can still stop the run with `stop.trip()`).
    """
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        stop.signum = stop.signum or signum
        stop.trip()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # not the main thread
            pass
    return previous


def _log_answer(claim: Claim, result: ApiResult, decision: Decision, seconds: float) -> None:
    """One record per API answer on the `uploader.send` logger: DEBUG for a success, INFO otherwise (the CLI's
    -v shows the second, -vv both, --log-file writes both as JSON lines). Never the key or the payload."""
    ok = decision.verdict is Verdict.SUCCEEDED
    log.log(
        logging.DEBUG if ok else logging.INFO,
        "%s attempt %d: HTTP %s %s (%.0f ms)",
        claim.reference_id,
        claim.attempts,
        result.http_status,
        decision.code or decision.verdict.value,
        seconds * 1000,
        extra={
            "event": "request",
            "method": "POST",
            "endpoint": "create_job",
            "reference_id": claim.reference_id,
            "project_id": claim.project_id,
            "attempt": claim.attempts,
            "http_status": result.http_status,
            "code": decision.code,
            "latency_ms": round(seconds * 1000, 1),
            "outcome": decision.verdict.value,
        },
    )


class _FatalWithSummary(FatalApiError):
    """A fatal API error, carrying the run's summary for the CLI."""

    def __init__(self, exc: FatalApiError, summary: RunSummary) -> None:
        super().__init__(str(exc), exc.code, exc.http_status, exc.project_id)
        self.summary = summary
