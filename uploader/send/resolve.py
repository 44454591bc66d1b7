"""The resolver: finding the job_ids of `uncertain` rows by listing their batches, for a run and for
`uploader reconcile` alike (one implementation, so both settle the same ledger the same way).

Apart from the submit loop (uploader.send.submit) because this is the one part of a run with its own state
and its own API calls (batch listings, GET job; each retried by `ApiClient.read`, 429 included). The loop's
`_Run` owns one `Resolver`: each FS_0001 answer sets `waiting`, a background task calls `resolve` every
`RunOptions.resolve_interval`, and the run calls it once more (`final`) after its last send; `reconcile`
(uploader.send.runner) makes one `final` round. Job state is written only through the ledger
(`Ledger.resolve_uncertain`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from uploader.api import MAX_RETRY_AFTER, job_is_gone
from uploader.errors import ApiUnreachableError, FatalApiError
from uploader.ledger import Ledger, utcnow
from uploader.send.summary import Progress

if TYPE_CHECKING:  # handed the run's client, never builds one
    from uploader.api import ApiClient

__all__ = ["DEFAULT_BATCH_PROBES", "LATE_GRACE", "Resolver", "RunStopping"]

#: Jobs of a default batch read to learn its id, when the API does not know the first ones.
DEFAULT_BATCH_PROBES = 3
#: Seconds after a row's last attempt was recorded during which a listing that misses it does not fail it:
#: the request may still wait at the server (the listing is read again once they have passed).
LATE_GRACE = 10.0


class RunStopping(Exception):
    """Raised by the run's `sleep` when the run stops during a wait: the lookup ends where it is."""


def _nothing() -> None:
    """No results held in memory (reconcile)."""


def _never() -> bool:
    """Never halted (reconcile)."""
    return False


class RowBits:
    """A set of row ids, one bit each (1.25 MB for ids up to 10 million): the rows this run made uncertain."""

    def __init__(self) -> None:
        self.bits = bytearray()

    def add(self, *ids: int) -> None:
        for rid in ids:
            if rid >> 3 >= len(self.bits):
                self.bits.extend(bytes((rid >> 3) - len(self.bits) + 4096))
            self.bits[rid >> 3] |= 1 << (rid & 7)

    def take(self, ids: Iterable[int]) -> int:
        """Remove `ids` from the set; returns how many of them were in it."""
        taken = 0
        for rid in ids:
            if rid >> 3 < len(self.bits) and self.bits[rid >> 3] & (1 << (rid & 7)):
                self.bits[rid >> 3] &= ~(1 << (rid & 7)) & 0xFF
                taken += 1
        return taken


class Resolver:
    """The resolver of one run (or of one `reconcile`): which uncertain rows wait, which a full listing
    missed, the default batches' ids. `progress` counts the rows it settles."""

    def __init__(
        self,
        ledger: Ledger,
        client: ApiClient,
        progress: Progress,
        rng: random.Random,
        *,
        flush: Callable[[], None] = _nothing,
        halted: Callable[[], bool] = _never,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_retry_after: float = MAX_RETRY_AFTER,
        max_attempts: int | None = None,
        late_grace: float = LATE_GRACE,
    ) -> None:
        self.ledger, self.client, self.progress, self.rng = ledger, client, progress, rng
        self.late_grace = late_grace
        self.late = 0  #: rows the last round left uncertain: missed by a listing begun within `late_grace`
        #: a row a complete listing did not find is sent again while it has had fewer attempts (None: always)
        self.max_attempts = max_attempts
        self.sleep = sleep  #: every backoff here: the run's, which a stop ends at once (RunStopping)
        self.max_retry_after = max_retry_after
        self.flush = flush  #: records the run's results still in memory, so that the lookup sees them
        self.halted = halted  #: the run met a fatal API error or a ledger error: look nothing up
        self.lock = asyncio.Lock()
        self.waiting = False  #: uncertain rows may wait for a lookup (set on each FS_0001)
        self.missed: set[int] = set()  #: uncertain rows a full listing did not find: not searched again
        self.default_batches: dict[str, str] = {}
        #: The last lookup the API did not answer (after the read's retries), or answered with a listing that
        #: cannot settle its rows (it loops, or contradicts itself); those rows wait for a later round.
        self.unreachable: ApiUnreachableError | None = None
        self.demoted = 0  #: rows the last `resolve` made give up a job_id (transitions.holder_yields)
        #: the rows this run made uncertain (`Progress.uncertain`), told apart from those an earlier run left
        self.mine = RowBits()
        #: When this run's rows became uncertain (row id → monotonic time of the answer): whether a listing
        #: began after the grace is judged by this clock, which no NTP step moves.
        self.answered: dict[int, float] = {}

    async def resolve(self, final: bool) -> FatalApiError | None:
        """Find the job_ids of the ledger's uncertain rows by listing their batches. Returns the fatal API
        error a read met (the run stops on it), else None."""
        async with self.lock:
            try:
                self.demoted = 0
                self.late = 0
                fatal = await self._resolve(final)
                if fatal is None and final and self.demoted:  # rows that gave up a job_id: their own lookup now
                    fatal = await self._resolve(final)
                if fatal is None and final and self.late:  # their requests have had the grace: list once more
                    rows = "1 row" if self.late == 1 else f"{self.late} rows"
                    self.progress.notices.append(
                        f"{rows} not in the batch listing read just after the last attempt: listing again in "
                        f"{self.late_grace:g} s (the API may still be creating the job)"
                    )
                    await self.sleep(self.late_grace)
                    fatal = await self._resolve(final)
                return fatal
            except RunStopping:
                self.waiting = True  # not looked up: the next run (or `reconcile`) does it
                return None

    async def _resolve(self, final: bool) -> FatalApiError | None:
        """Look up the job_ids of the ledger's `uncertain` rows (this run's FS_0001 answers, lost or
        malformed answers, and any an earlier run left) by listing their batches; the ledger settles what
        was found (succeeded or conflict) and sends again (or, its attempts spent, fails) what a full listing
        did not find, except FS_0001 rows.
        A row stays uncertain while its batch cannot be listed (the default batch's id is learnt from a job
        of ours in it, so it may have to wait for a success) or, for FS_0001, when a full listing does not
        find it; a later round, a later run or `reconcile` resolves it."""
        if not (self.waiting or (final and self.missed)) or self.halted():
            return None
        self.waiting = False  # an FS_0001 arriving while we look sets it again
        self.flush()
        waiting = False
        for project, batch, rows in self.ledger.uncertain_groups():
            rows = [(rid, ref) for rid, ref in rows if final or rid not in self.missed]
            if not rows:
                continue
            try:
                batch_id = batch or await self._default_batch(project)
                if batch_id is None:
                    waiting = True  # a later success in the default batch reveals its id
                    continue
                started, started_at = utcnow(), time.monotonic()
                found = await self.client.find_job_ids(
                    project,
                    batch_id,
                    [ref for _, ref in rows],
                    rng=self.rng,
                    sleep=self.sleep,
                    max_retry_after=self.max_retry_after,
                )
            except FatalApiError as exc:
                return exc
            except ApiUnreachableError as exc:
                self.unreachable = exc
                waiting = True  # the API is struggling: next round
                continue
            hits = {rid: found[ref] for rid, ref in rows if ref in found}
            missing = [rid for rid, ref in rows if ref not in found]
            self.missed.update(missing)
            missing = [rid for rid, ref in rows if ref not in found and ref not in found.ambiguous]
            if found.ambiguous:  # a listing that contradicts itself settles none of those rows
                self.unreachable = ApiUnreachableError(
                    f"the listing of batch {batch_id} of project {project} names {len(found.ambiguous)} "
                    "reference_ids with two jobs, or their job for two reference_ids: those rows stay uncertain"
                )
            if not found.complete:  # a listing that loops says nothing of the jobs it did not show
                self.unreachable = ApiUnreachableError(
                    f"the listing of batch {batch_id} of project {project} does not end ({found.problem}): "
                    "the rows it did not show stay uncertain"
                )
                missing = []
            # A listing that ended normally is complete: a row it did not find was not created, or its request
            # still waits at the server (unless the API said FS_0001). The ledger makes it pending, to be sent
            # again (FS_0001 refuses a twin), or failed once its attempts are spent; FS_0001 rows stay uncertain.
            after = started - dt.timedelta(seconds=self.late_grace)
            aged = [rid for rid in missing if started_at - self.answered.get(rid, started_at) > self.late_grace]
            done = self.ledger.resolve_uncertain(hits, missing, self.max_attempts, listed_after=after, aged=aged)
            if done.late:
                self.late += done.late
                waiting = True
            self.progress.succeeded += done.succeeded
            self.progress.recovered += done.succeeded
            self.progress.conflict += done.conflict
            self.progress.failed += done.failed
            self.progress.requeued += done.requeued
            own = self.mine.take(done.left)  # rows this run made uncertain; the rest an earlier run left so
            self.progress.uncertain -= own
            self.progress.settled_earlier += done.total - own
            if done.demoted:  # rows that gave up another row's job_id: uncertain, looked up in the next round
                self.progress.succeeded -= done.demoted
                self.progress.uncertain += done.demoted
                self.mine.add(*done.demoted_ids)
                self.demoted += done.demoted
                waiting = True
        if waiting:
            self.waiting = True
        return None

    async def _default_batch(self, project: str) -> str | None:
        """The default batch's id, learnt from any job of ours in it (GET job answers its batch_id); None
        while the ledger knows no such job. A job the API says does not exist (policy.job_is_gone: a job-level
        not found; `uploader sync` records it) is passed over for the next one, up to DEFAULT_BATCH_PROBES;
        when none is left, that refusal is raised. ApiUnreachableError / FatalApiError as `ApiClient.read`."""
        if project in self.default_batches:
            return self.default_batches[project]
        self.flush()
        gone: list[str] = []
        refused: FatalApiError | ApiUnreachableError | None = None
        while (known := self.ledger.known_job_in_default_batch(project, gone)) is not None:
            try:
                batch_id = await self.client.batch_of_job(
                    project, known[2], rng=self.rng, sleep=self.sleep, max_retry_after=self.max_retry_after
                )
            except (FatalApiError, ApiUnreachableError) as exc:
                if not job_is_gone(exc.code, False) or len(gone) + 1 >= DEFAULT_BATCH_PROBES:
                    raise
                refused = exc
                gone.append(known[2])
                continue
            self.default_batches[project] = batch_id
            return batch_id
        if refused is not None:
            raise refused
        return None
