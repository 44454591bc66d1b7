"""The batch a run puts its jobs in: reserved in the ledger, created once at the API, reused ever after.

Every run that needs a batch (`--batch-name N`, or the ledger's own batch for a project: the default, so
that every job's batch id is known and an FS_0001 can always be resolved by listing it) first reserves it
in the ledger (`Ledger.reserve_batch`, one transaction: of runs starting together exactly one wins). The
winner creates it at the API and records its id; the others wait for the id and use it. A reservation
whose owner died (its pid is gone on this host) or went silent (no heartbeat for `stale_after` seconds) is
taken over; a winner that fails gives its reservation up so that another run can try.

Creation follows the job requests' policy (uploader.api.policy): `classify`, `next_delay` with Retry-After,
a bounded number of attempts, FATAL stops at once; a 429 costs no attempt, and an API that cannot be
connected to at all pauses the creation until `outage_seconds` (as it pauses the sending). A creation whose
answer was lost (timeout, dropped connection, 5xx) and whose retry is refused as a duplicate name
(BATCH_CREATION) probably created the batch: for `--batch-name` the run stops and says how to go on; the
ledger's own batch simply takes a new name (the lost one may exist, empty). A Retry-After is cut to the
run's --max-retry-after (and the user told).

Stopping: every wait here (a retry's backoff or Retry-After, an outage pause, the wait for another run's
batch) ends at once on the run's first signal (`stop`, the run's StopFlag) with InterruptedRun, and the
reservation is given up; a creation request in the air is let finish (bounded by the timeout: its batch is
recorded if it was created), unless a second signal cancels it (uploader.send.runner).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from uploader.api import (
    MAX_RETRY_AFTER,
    OUTAGE_CODES,
    Verdict,
    backoff_delay,
    classify,
    next_delay,
    retry_after_capped,
    retry_after_seconds,
)
from uploader.errors import ApiError, FatalApiError, InterruptedRun, LedgerError
from uploader.send.pacing import FIRST_CONTACT_LIMIT, MAX_OUTAGE_PAUSE
from uploader.send.summary import redirect_message

if TYPE_CHECKING:
    from uploader.api import ApiClient, ApiResult, Decision
    from uploader.ledger import BatchSlot, Ledger
    from uploader.send.submit import StopFlag

__all__ = ["BatchPolicy", "auto_batch_name", "ensure_batch", "owner_token", "reservation_dead"]

DESCRIPTION = "created by uploader"
#: Longest batch name we make (the ledger's column holds 255).
_NAME_MAX = 200
#: A throttled (429) try does not use up an attempt, as for jobs; at most this many in one creation.
MAX_THROTTLED = 50
#: The creator shows its reservation alive at least this often (seconds), also while it waits to retry.
HEARTBEAT = 2.0
#: A waiting run says so once it has waited this long (seconds).
SAY_WAITING_AFTER = 1.0


@dataclass(frozen=True)
class BatchPolicy:
    """How hard one batch creation tries (the run's --max-attempts, --timeout and --max-retry-after)."""

    max_attempts: int = 8
    timeout: float = 30.0
    seed: int | None = None
    #: How long the API may be unreachable (no connection at all) before the run stops (RunOptions').
    outage_seconds: float = 300.0
    #: The longest wait a Retry-After may impose (the run's --max-retry-after).
    max_retry_after: float = MAX_RETRY_AFTER
    #: A run waiting for another run's batch looks again after this long (seconds), doubling each time up
    #: to `wait_poll_max`: the batch is usually created within a request's time.
    wait_poll_first: float = 0.02
    #: The longest interval between two looks at another run's batch (seconds).
    wait_poll_max: float = 0.5

    @property
    def stale_after(self) -> float:
        """A reservation with no heartbeat for this long is taken over: its owner cannot be in a request
        (at most `timeout`) nor between heartbeats; generous, because the owner may use a longer timeout."""
        return 2 * self.timeout + 60.0


def owner_token(host: str | None = None, pid: int | None = None) -> str:
    """Who reserves a batch: `token:pid@host` (64 characters at most), unique per creation attempt."""
    host = host if host is not None else socket.gethostname()
    pid = pid if pid is not None else os.getpid()
    return f"{uuid.uuid4().hex[:12]}:{pid}@{host}"[:64]


def reservation_dead(
    reserved_by: str,
    reserved_at: dt.datetime,
    now: dt.datetime,
    stale_after: float,
    host: str,
    alive: Callable[[int], bool],
) -> bool:
    """Whether a reservation may be taken over: its owner's pid is gone on this host, or it has shown no
    heartbeat for `stale_after` seconds (a dead owner on another host, a frozen one, a reused pid)."""
    if (now - reserved_at).total_seconds() > stale_after:
        return True
    _, _, where = reserved_by.partition(":")
    pid_text, _, owner_host = where.partition("@")
    if pid_text.isdigit() and owner_host and owner_host == host[: len(owner_host)]:
        return not alive(int(pid_text))
    return False


def auto_batch_name(manifest_name: str | None, now: dt.datetime, suffix: str) -> str:
    """The ledger's own batch: the manifest's file name, the date (UTC) and a short suffix that keeps two
    ledgers (or a retried name) from colliding, e.g. `images.csv 2026-12-02 16:40 UTC 3f9a1c`."""
    stem = (manifest_name or "uploader")[: _NAME_MAX - 30]
    return f"{stem} {now:%Y-%m-%d %H:%M} UTC {suffix}"


def _suffix() -> str:
    return uuid.uuid4().hex[:6]


async def _pause(seconds: float, stop: StopFlag | None) -> None:
    """Wait `seconds`; the run's first signal ends the wait at once with InterruptedRun."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    await stop.sleep(seconds)
    _check(stop)


def _check(stop: StopFlag | None) -> None:
    """InterruptedRun if the run was told to stop."""
    if stop is not None and stop.gentle:
        raise InterruptedRun()


async def ensure_batch(
    ledger: Ledger,
    get_client: Callable[[], Awaitable[ApiClient]],
    project_id: str,
    name: str | None,
    policy: BatchPolicy,
    *,
    manifest_name: str | None = None,
    notice: Callable[[str], None] | None = None,
    stop: StopFlag | None = None,
) -> str:
    """The id of the project's batch `name` (None: the ledger's own batch), created at the API by exactly
    one of the runs that want it; the others wait for it. `stop` (the run's StopFlag) ends every wait."""
    from uploader.ledger import pid_alive, utcnow

    notice = notice or (lambda _message: None)
    host = socket.gethostname()
    auto = name is None
    owner = owner_token(host)
    started = asyncio.get_running_loop().time()
    said = False
    pause = policy.wait_poll_first
    while True:
        _check(stop)
        wanted = name if name is not None else auto_batch_name(manifest_name, utcnow(), _suffix())
        slot = ledger.reserve_batch(project_id, wanted, owner, auto=auto)
        if slot.batch_id:
            return slot.batch_id
        took_over = False
        if slot.reserved_by != owner:
            assert slot.reserved_by is not None
            if not reservation_dead(slot.reserved_by, slot.reserved_at, utcnow(), policy.stale_after, host, pid_alive):
                if not said and asyncio.get_running_loop().time() - started >= SAY_WAITING_AFTER:
                    notice(
                        f"waiting for another run to create batch {slot.name!r} "
                        f"(reserved by {slot.reserved_by.partition(':')[2]})"
                    )
                    said = True
                await _pause(pause, stop)
                pause = min(policy.wait_poll_max, pause * 2)
                continue
            new_name = auto_batch_name(manifest_name, utcnow(), _suffix()) if auto else None
            if not ledger.take_over_batch(slot, owner, new_name):
                continue
            slot = ledger.batch_slot(slot.id) or slot
            took_over = True
        return await _create_reserved(ledger, get_client, slot, owner, policy, took_over, manifest_name, notice, stop)


async def _create_reserved(
    ledger: Ledger,
    get_client: Callable[[], Awaitable[ApiClient]],
    slot: BatchSlot,
    owner: str,
    policy: BatchPolicy,
    took_over: bool,
    manifest_name: str | None,
    notice: Callable[[str], None],
    stop: StopFlag | None = None,
) -> str:
    """Create the batch this run reserved and record its id; on any failure (or a stop) give the
    reservation up."""
    try:
        name, batch_id = await _create(
            ledger, await get_client(), slot, owner, policy, took_over, manifest_name, notice, stop
        )
    except BaseException:
        try:
            ledger.cancel_reservation(slot.id, owner)
        except Exception:  # the ledger refused the write: the reservation goes stale and is taken over
            pass
        raise
    where = f"batch {name!r} (id {batch_id}) in project {slot.project_id}"
    try:
        held = ledger.complete_batch(slot.id, batch_id)
    except LedgerError as exc:  # the id is known only here: the rerun cannot find it by name
        raise LedgerError(f"{exc}. Created {where} but could not record it: rerun with --batch-id {batch_id}") from exc
    if held == batch_id:
        notice(f"created {where}; reruns of this ledger use it")
    else:
        notice(f"created {where}, but another run recorded batch id {held} first: this run uses that one")
    return held


async def _create(
    ledger: Ledger,
    client: ApiClient,
    slot: BatchSlot,
    owner: str,
    policy: BatchPolicy,
    maybe_created: bool,
    manifest_name: str | None,
    notice: Callable[[str], None],
    stop: StopFlag | None = None,
) -> tuple[str, str]:
    """POST the batch, retrying as for jobs; its final name and its id. `maybe_created`: an earlier try (or
    the dead run whose reservation this is) may have created it without the answer arriving."""
    rng = random.Random(policy.seed)
    name, project = slot.name, slot.project_id
    attempts = throttled = outages = 0
    down_since: float | None = None  #: since when no connection could be opened (None: it could)
    told = False  #: the user was told that a Retry-After was cut to --max-retry-after
    while True:
        _check(stop)
        ledger.refresh_reservation(slot.id, owner)
        result = await client.create_batch(project, name, DESCRIPTION)
        decision = classify(result, expect="batch_id")
        if decision.code not in OUTAGE_CODES:
            down_since, outages = None, 0
        if decision.verdict is Verdict.SUCCEEDED:
            return name, str((result.data or {})["batch_id"])
        detail = " ".join(str(x) for x in (decision.code or result.http_status, decision.message) if x)
        if decision.verdict is Verdict.FATAL:
            raise _fatal_error(name, project, decision, result, detail)
        if result.success is False and decision.code == "BATCH_CREATION":
            name = _other_name(slot, name, maybe_created, manifest_name, notice)
            ledger.refresh_reservation(slot.id, owner, name)
            maybe_created = False
            attempts += 1
        elif decision.verdict is Verdict.THROTTLED:
            throttled += 1
            _check_throttled(throttled, name)
        elif decision.verdict is Verdict.RETRYABLE and decision.code in OUTAGE_CODES:
            # No connection: the API is down, not the request wrong. As for jobs, no attempt is counted
            # and the run stops once it has been unreachable for too long (uploader.send.pacing's limits).
            down_since = down_since if down_since is not None else time.monotonic()
            _check_outage(down_since, bool(attempts or throttled), policy, decision, name)
            outages += 1
            await _sleep_alive(backoff_delay(outages, rng, cap=MAX_OUTAGE_PAUSE), ledger, slot.id, owner, stop)
            continue
        elif decision.verdict is Verdict.RETRYABLE:
            attempts += 1
            maybe_created = True  # it may have reached the API
        else:
            raise ApiError(f"cannot create batch {name!r}: {detail}")
        if attempts >= policy.max_attempts:
            raise ApiError(gave_up_message(name, attempts, detail, maybe_created))
        if result.success is False and decision.code == "BATCH_CREATION":
            continue  # a new name: no need to wait
        hint = retry_after_seconds(result.retry_after, dt.datetime.now(dt.UTC))
        told = _tell_capped(hint, policy, name, notice, told)
        count = throttled if decision.verdict is Verdict.THROTTLED else attempts
        delay = next_delay(decision, count, hint, rng, max_retry_after=policy.max_retry_after)
        await _sleep_alive(delay, ledger, slot.id, owner, stop)


def _fatal_error(name: str, project: str, decision: Decision, result: ApiResult, detail: str) -> FatalApiError:
    """The error that stops the run when the API refuses to create the batch for good."""
    if result.http_status is not None and 300 <= result.http_status < 400:  # the base URL is not the API
        return FatalApiError(
            f"cannot create batch {name!r}: {redirect_message(result.http_status, result.location)}",
            decision.code,
            result.http_status,
        )
    return FatalApiError(
        f"cannot create batch {name!r} in project {project}: {detail}",
        decision.code,
        result.http_status,
        project_id=project,
    )


def _other_name(
    slot: BatchSlot, name: str, maybe_created: bool, manifest_name: str | None, notice: Callable[[str], None]
) -> str:
    """The name to try after `name` was refused as taken: a new automatic name, or ApiError for a name the
    user chose."""
    if not slot.auto:
        raise ApiError(name_taken_message(name, slot.project_id, maybe_created))
    from uploader.ledger import utcnow

    new = auto_batch_name(manifest_name, utcnow(), _suffix())
    if maybe_created:
        notice(
            f"warning: batch {name!r} may have been created although its answer was lost; it stays empty. "
            f"Creating {new!r} instead."
        )
    return new


def _check_throttled(throttled: int, name: str) -> None:
    """ApiError once the API has answered 429 more than MAX_THROTTLED times."""
    if throttled > MAX_THROTTLED:
        raise ApiError(
            f"cannot create batch {name!r}: the API answered {throttled} times that it is "
            "busy (429); run the same command again later"
        )


def _check_outage(down_since: float, answered: bool, policy: BatchPolicy, decision: Decision, name: str) -> None:
    """FatalApiError once the API has been unreachable for too long (uploader.send.pacing's limits); the
    first contact gets less patience than an API that has answered."""
    limit = policy.outage_seconds if answered else min(policy.outage_seconds, FIRST_CONTACT_LIMIT)
    if time.monotonic() - down_since > limit:
        raise FatalApiError(
            f"cannot connect to the API for {time.monotonic() - down_since:.0f} s ({decision.message}) "
            f"while creating batch {name!r}. Nothing was sent; run the same command again once the "
            "API is reachable.",
            decision.code,
        )


def _tell_capped(hint: float | None, policy: BatchPolicy, name: str, notice: Callable[[str], None], told: bool) -> bool:
    """Tell the user, once, that a Retry-After is cut to --max-retry-after; whether they have been told."""
    if told or not retry_after_capped(hint, policy.max_retry_after):
        return told
    notice(
        f"the API asked to wait {hint:.0f} s (Retry-After) before creating batch {name!r}; waiting "
        f"{policy.max_retry_after:g} s at most (--max-retry-after)"
    )
    return True


async def _sleep_alive(
    seconds: float,
    ledger: Ledger,
    slot_id: int,
    owner: str,
    stop: StopFlag | None = None,
) -> None:
    """Wait before the next try, showing the reservation alive meanwhile (other runs wait for it); the
    run's first signal ends the wait at once (InterruptedRun)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        await _pause(min(left, HEARTBEAT), stop)
        ledger.refresh_reservation(slot_id, owner)


def name_taken_message(name: str, project: str, maybe_created: bool) -> str:
    """What to do when the batch name is taken at the API and the ledger does not know its id."""
    if maybe_created:
        return (
            f"batch {name!r} probably exists in project {project}: a request to create it may have "
            "succeeded without its answer arriving, and the retry was refused because the name is taken. "
            f"Find the batch {name!r} in GT Studio and pass its id with --batch-id ID (instead of "
            "--batch-name), or choose another --batch-name."
        )
    return (
        f"a batch named {name!r} already exists in project {project} but this ledger does not know its id: "
        "pass it with --batch-id, or choose another --batch-name"
    )


def gave_up_message(name: str, attempts: int, detail: str, maybe_created: bool) -> str:
    """The run stops: the batch could not be created in `attempts` tries."""
    text = f"cannot create batch {name!r} after {attempts} attempts (last: {detail}); nothing was sent"
    if maybe_created:
        text += (
            ". A request may have created it without its answer arriving: if the next run is told the "
            "name is taken, find the batch in GT Studio and pass its id with --batch-id"
        )
    return text + "; run the same command again later."
