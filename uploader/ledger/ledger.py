"""Every read and write of job state after loading: claims and leases, results, status, retry, export rows.

The legal moves (and only these) are made here:

    pending ──claim──► in_flight ──succeeded──► succeeded
                          │ ──permanent, or retries exhausted (no attempt reached the API)──► failed
                          │ ──retryable / throttled / run stopped──► pending
                          └ ──exists (FS_0001), an answer that does not fit the request, a job_id
                              recorded for another row, or retries exhausted after an attempt that may
                              have reached the API──► uncertain
    in_flight (lease expired: its worker died) ──claim──► in_flight (sent again; FS_0001 resolves it)
    failed ──retry──► pending
    uncertain ──listing finds the job──► succeeded (recovered), or conflict (it may hold other data)
    uncertain ──a complete listing does not find it (not FS_0001)──► pending (sent again: its request may
                 still wait at the server, and FS_0001 refuses a twin), or failed once its attempts are spent
    succeeded ──the API answers its job_id for another row too──► uncertain (the listing settles both)

Payload hashes: the claim sets `attempt_hash` (the body_hash being sent), first adding a previous
attempt's hash to `sent_hashes` (that attempt's answer was never recorded: it may have created the job).
A result that may have created the job adds it too; every result clears it, and so does a stopped run's
release (adding it only for the rows whose request the run had started). A job found after FS_0001 is a
clean recovery only when `sent_hashes` is the row's body_hash alone (transitions.settle_found).

Every result write is fenced by the row's lease token: a worker whose lease was taken over cannot
overwrite the newer owner's result; its late answer is counted as ignored.

The read-only queries (status, counts, error codes, export rows, next wake-up) are in
uploader.ledger.queries, inherited by `Ledger`; callers import both from `uploader.ledger`.

Test-only: when the environment variable UPLOADER_CLAIM_LOG names a file, every committed claim, lease
renewal, result write (applied or fenced) and release is appended to it as one JSON line
(tests/test_scale_out.py checks lease exclusivity and fencing across processes with it). Unset, it costs one
attribute test per call.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, text

from uploader.errors import LedgerError
from uploader.ledger.address import shown_url
from uploader.ledger.engine import (
    create_new,
    driver_sql,
    driver_time,
    ledger_name,
    ledger_url,
    migrate,
    open_engine,
    read_tx,
    set_lock_wait,
    write_tx,
)
from uploader.ledger.locate import FileHold, discard_unused, hold_shared, new_ledger_file, release
from uploader.ledger.models import Status, merged_hashes
from uploader.ledger.queries import EXPORT_COLUMNS, LedgerQueries, StatusReport, _dt, pid_alive  # noqa: F401 (re-export)
from uploader.ledger.states import utcnow
from uploader.ledger.transitions import holder_yields, settle_found, settle_missing

__all__ = [
    "CLAIM_LOG_ENV",
    "BatchSlot",
    "Claim",
    "Ledger",
    "Resolution",
    "Result",
    "StatusReport",
    "pid_alive",
    "utcnow",
]

#: Test-only: a file to append every claim, renewal, result write and release to (module docstring).
CLAIM_LOG_ENV = "UPLOADER_CLAIM_LOG"


@dataclass(frozen=True)
class Claim:
    """A row handed to a worker: what to send, and the lease token that fences its result."""

    id: int
    project_id: str
    reference_id: str
    batch_id: str | None
    body: str
    attempts: int
    lease_token: int


@dataclass(frozen=True)
class Result:
    """The outcome of one claimed row, to be recorded. `status` is where the row goes next."""

    id: int
    lease_token: int
    status: Status
    job_id: str | None = None
    recovered: bool = False
    error_code: str | None = None
    error_message: str | None = None
    error_details: str | None = None
    http_status: int | None = None
    not_before: dt.datetime | None = None
    refund_attempt: bool = False  #: throttled or run-fatal: the attempt does not count
    #: The attempt may have created the job (policy.may_have_created): its payload hash joins sent_hashes.
    may_have_created: bool = False
    origin: str | None = None  #: "created" for a job this attempt created


@dataclass(frozen=True)
class Resolution:
    """What one `resolve_uncertain` call did with the rows a batch listing decided."""

    succeeded: int = 0  #: found, a clean recovery
    conflict: int = 0  #: found, but the job may hold other data (or its job_id is another row's)
    failed: int = 0  #: not found by a complete listing after a last attempt that may have reached the API
    #: not found by a complete listing, attempts left: pending again, to be sent (FS_0001 refuses a twin)
    requeued: int = 0
    #: succeeded rows that gave up a job_id the listing shows under another reference_id (now uncertain)
    demoted: int = 0
    #: not found by a complete listing, no attempt left, but that attempt recorded after `listed_after`: its
    #: request may still wait at the server, so the row stays uncertain for a later listing
    late: int = 0
    #: the ids of the rows that left `uncertain` (as many as `total`), and of the rows demoted
    left: tuple[int, ...] = field(default=(), compare=False)
    demoted_ids: tuple[int, ...] = field(default=(), compare=False)

    @property
    def total(self) -> int:
        """The rows that left `uncertain`."""
        return self.succeeded + self.conflict + self.failed + self.requeued


_RETURNING = "id, project_id, reference_id, batch_id, body, attempts, lease_token"

#: SQL: sent_hashes with the attempt in the air added.
_MERGE_ATTEMPT = merged_hashes("attempt_hash")


@dataclass(frozen=True)
class BatchSlot:
    """A row of `batches`: a created batch (batch_id set) or a run's reservation to create it."""

    id: int
    project_id: str
    name: str
    batch_id: str | None
    auto: bool
    reserved_by: str | None  #: the creating run (see uploader.send.batches.owner_token), None once created
    reserved_at: dt.datetime  #: created_at: the reservation's last heartbeat while batch_id is None


#: Status words for the SQL below (f-strings over Status: one spelling of each state).
_PENDING = Status.PENDING.value
_IN_FLIGHT = Status.IN_FLIGHT.value
_SUCCEEDED = Status.SUCCEEDED.value
_FAILED = Status.FAILED.value
_UNCERTAIN = Status.UNCERTAIN.value
_CONFLICT = Status.CONFLICT.value

#: SQL of `claim`: the rows it takes (in flight under an expired lease, or held by a run that has stopped: a
#: stopped run has nothing in the air, so rows it could not release, e.g. disk full, are taken at once; then
#: pending rows whose retry time has come) and what it sets on them.
#: Rows another run held: its lease expired by this run's clock, or it stopped. Never the claiming run's own (a
#: clock stepped forward makes its own leases look expired until its next heartbeat; it is sending those rows).
_CLAIM_EXPIRED = (
    f"SELECT id FROM jobs WHERE status = '{_IN_FLIGHT}' AND (lease_owner IS NULL OR lease_owner <> :owner) "
    "AND (lease_expires_at < :now "
    "OR lease_owner IN (SELECT owner FROM workers WHERE stopped_at IS NOT NULL)) LIMIT :n"
)
_CLAIM_READY = (
    f"SELECT id FROM jobs WHERE status = '{_PENDING}' AND (not_before IS NULL OR not_before <= :now) LIMIT :n"
)
_CLAIM_SET = (
    f"SET status = '{_IN_FLIGHT}', attempts = attempts + 1, lease_owner = :owner, "
    "lease_token = lease_token + 1, lease_expires_at = :exp, updated_at = :now, "
    f"sent_hashes = {_MERGE_ATTEMPT}, attempt_hash = body_hash"
)
#: SQL of `record`: one result, fenced by its lease token; a success's variant applies only if no other row
#: holds its job_id (the job_id index finds them).
_RECORD_SETS = (
    "job_id = COALESCE(:job_id, job_id), recovered = :recovered, "
    "error_code = :code, error_message = :msg, error_details = :details, "
    "http_status = COALESCE(:http, http_status), attempts = attempts - :refund, not_before = :nb, "
    "lease_owner = NULL, lease_expires_at = NULL, updated_at = :now, origin = COALESCE(:origin, origin), "
    f"sent_hashes = CASE WHEN :sent THEN {_MERGE_ATTEMPT} ELSE sent_hashes END, attempt_hash = NULL "
)
_RECORD = (
    f"UPDATE jobs SET status = :status, {_RECORD_SETS}"
    f"WHERE id = :id AND lease_token = :token AND status = '{_IN_FLIGHT}'"
)
_RECORD_SUCCESS = (
    f"{_RECORD} AND NOT EXISTS (SELECT 1 FROM jobs other WHERE other.job_id = :job_id AND other.id <> :id)"
)


def _release_sql(sent_hashes: str) -> str:
    """SQL of `release`: a stopped run's rows back to pending, attempt not counted, sent_hashes set to the
    expression `sent_hashes`."""
    return (
        f"UPDATE jobs SET status = '{_PENDING}', attempts = attempts - 1, lease_owner = NULL, "
        f"lease_expires_at = NULL, updated_at = :now, sent_hashes = {sent_hashes}, attempt_hash = NULL "
        f"WHERE lease_owner = :owner AND status = '{_IN_FLIGHT}' RETURNING id, lease_token"
    )


#: SQL of `release` when the run cannot tell which requests it started: every attempt kept as sent.
_RELEASE_ALL = _release_sql(_MERGE_ATTEMPT)
#: SQL of `release`: the attempt kept as sent only for the rows whose request was started (`:started`).
_RELEASE_STARTED = _release_sql(f"CASE WHEN id IN :started THEN {_MERGE_ATTEMPT} ELSE sent_hashes END")

_SLOT = "id, project_id, name, batch_id, auto, reserved_by, created_at"
#: Rows with no batch of their own that were never sent: giving them a batch cannot split a job's attempts
#: between two batches.
_UNBATCHED = f"status = '{_PENDING}' AND batch_id IS NULL AND attempts = 0 AND sent_hashes IS NULL"
#: Rows that may have been created in the project's default batch and whose job_id is not known yet.
_IN_DEFAULT_BATCH = (
    f"batch_id IS NULL AND (status IN ('{_IN_FLIGHT}', '{_UNCERTAIN}') "
    f"OR (status = '{_PENDING}' AND (attempts > 0 OR sent_hashes IS NOT NULL)))"
)


class Ledger(LedgerQueries):
    """A ledger of jobs in a SQLite file (default) or any SQLAlchemy URL (its read-only queries: LedgerQueries)."""

    def __init__(self, engine: Engine, *, new_file: bool = False, file_hold: FileHold | None = None) -> None:
        self.engine = engine
        self.new_file = new_file  #: this process created the SQLite file: nobody else has anything in it
        self._claim_log = os.environ.get(CLAIM_LOG_ENV) or None
        self._file_hold = file_hold  #: our LOCK_SH on the SQLite file (uploader.ledger.locate), released by close()

    @classmethod
    def open(cls, ledger: str | os.PathLike[str] | None = None, *, create: bool = True, upgrade: bool = True) -> Ledger:
        """Open (creating and migrating if needed) the ledger at a path or URL. A SQLite file is held with
        LOCK_SH until close(), before any connection is made: a file discarded meanwhile is opened anew.
        `upgrade=False` (a command that writes nothing): an older ledger raises LedgerNotUpgraded."""
        for _ in range(100):
            created = new_ledger_file(ledger)  # before open_engine creates it
            engine = open_engine(ledger_url(ledger), create=create)
            path = sqlite_file(engine)
            hold = hold_shared(path) if path is not None else None
            if path is not None and hold is None:
                engine.dispose()  # removed by a command that created it and found it unused: open again
                continue
            try:
                if not (created is not None and created.exists() and create_new(engine)):
                    migrate(engine, upgrade=upgrade)
            except BaseException:
                engine.dispose()
                if hold is not None and path is not None and created is not None:
                    discard_unused(hold, path, _never_written)  # ours, never filled (a full disk): not left behind
                elif hold is not None:
                    release(hold)
                raise
            return cls(engine, new_file=created is not None, file_hold=hold)
        raise LedgerError(f"cannot open the ledger {ledger_url(ledger)}: it keeps being removed")

    def close(self) -> None:
        set_lock_wait(self.engine, None)  # its statement watch (PostgreSQL) ends with it
        self.engine.dispose()
        hold, self._file_hold = self._file_hold, None
        if hold is not None:
            release(hold)

    def clock_skew(self) -> float | None:
        """Seconds the database server's clock is ahead of this machine's (negative: behind), measured once;
        None on SQLite, whose clock is this machine's. Leases and heartbeats are stamped by each machine's own
        clock, so runs on machines whose clocks differ judge each other's leases early or late."""
        if self.engine.dialect.name == "sqlite":
            return None
        with read_tx(self.engine) as conn:
            before = time.time()
            server = float(conn.execute(text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")).scalar_one())
            after = time.time()
        return server - (before + after) / 2

    def discard_if_unused(self) -> bool:
        """Close the ledger and remove its SQLite file if no other process has it open and nothing was
        ever written to it (no job, manifest, batch or worker row): what a command that created the file
        and then failed may do. The check and the removal happen under LOCK_EX. True if removed."""
        path = sqlite_file(self.engine)
        self.engine.dispose()
        hold, self._file_hold = self._file_hold, None
        if hold is None or path is None:
            return False
        return discard_unused(hold, path, _never_written)

    @property
    def url(self) -> str:
        """The ledger's URL as it may be printed (`shown_url`: no password)."""
        return shown_url(self.engine.url)

    @property
    def name(self) -> str:
        """The ledger as a person names it: its file as on disk (not percent-encoded, as `url` has it), or its
        URL without the password."""
        return ledger_name(self.engine)

    # -- claims and leases -------------------------------------------------------------------------------

    def claim(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        now: dt.datetime | None = None,
        *,
        due: Sequence[int] = (),
    ) -> list[Claim]:
        """Claim up to `limit` sendable rows for `owner`, committed before any request is sent. `due`: ids of
        pending rows whose retry the caller timed itself (on a monotonic clock) and finds due, whatever their
        `not_before` says (a wall clock stepped back since it was stamped puts it in the future)."""
        now = now or utcnow()
        expires = now + dt.timedelta(seconds=lease_seconds)
        claims: list[Claim] = []
        selects = [_CLAIM_EXPIRED, _CLAIM_READY]
        if due:
            ids = ", ".join(str(int(i)) for i in due[:limit])
            selects.insert(1, f"SELECT id FROM jobs WHERE status = '{_PENDING}' AND id IN ({ids}) LIMIT :n")
        with write_tx(self.engine) as conn:
            dialect = conn.dialect
            stamp = driver_time(dialect)
            params = {"owner": owner, "now": stamp(now), "exp": stamp(expires), "n": limit}
            for select in selects:
                if len(claims) >= limit:
                    break
                params["n"] = limit - len(claims)
                rows = conn.exec_driver_sql(driver_sql(dialect, _claim_sql(dialect.name, select)), params)
                claims.extend(Claim(*row) for row in rows)
        if self._claim_log and claims:
            self._log(
                "claim", owner=owner, now=_epoch(now), exp=_epoch(expires), rows=[[c.id, c.lease_token] for c in claims]
            )
        return claims

    def record(
        self, results: Sequence[Result], now: dt.datetime | None = None, *, duplicates: list[int] | None = None
    ) -> tuple[int, int]:
        """Record results in one transaction; returns (applied, ignored-because-fenced).

        A success whose job_id is already recorded for another row (in the ledger, or earlier in this same
        batch) is not recorded as such: the row becomes `uncertain` (`duplicate_job_id`, keeping the answered
        job_id unconfirmed), and a `succeeded` row holding that job_id is demoted likewise, since either may
        be the wrong one: the batch listing settles both. Their ids are appended to `duplicates` if given."""
        if not results:
            return 0, 0
        now = now or utcnow()
        applied = 0
        outcomes: dict[int, list[Any]] = {}
        with write_tx(self.engine) as conn:
            stamp = driver_time(conn.dialect)
            live, holders = self._fence_and_holders(conn, results)
            fast, slow = split_record(results, live, holders)
            if fast:  # one statement for the group: each row is live and its job_id no other row's
                group = [_record_params(results[i], now, stamp) for i in fast]
                n = conn.exec_driver_sql(driver_sql(conn.dialect, _RECORD), group).rowcount
                if n != len(fast) and conn.dialect.supports_sane_multi_rowcount:
                    raise LedgerError(f"recording results: {n} of {len(fast)} fenced rows updated")
                applied += len(fast)
                if self._claim_log:
                    outcomes.update(
                        {i: [results[i].id, results[i].lease_token, results[i].status.value, True] for i in fast}
                    )
            for i in slow:  # a shared job_id, or a row seen twice: one at a time, in order, as they interact
                r = results[i]
                params = _record_params(r, now, stamp)
                success = r.status is Status.SUCCEEDED and r.job_id is not None
                n = conn.execute(text(_RECORD_SUCCESS if success else _RECORD), params).rowcount
                status = r.status.value
                if success and n == 0 and self._is_held(conn, r):
                    n, status = 1, Status.UNCERTAIN.value
                    demoted = self._record_duplicate(conn, text(_RECORD), params)
                    if duplicates is not None:
                        duplicates.extend([r.id, *demoted])
                applied += n
                outcomes[i] = [r.id, r.lease_token, status, n == 1]
        if self._claim_log:
            rows = [outcomes.get(i, [r.id, r.lease_token, r.status.value, False]) for i, r in enumerate(results)]
            self._log("record", now=_epoch(now), rows=rows)
        return applied, len(results) - applied

    def _fence_and_holders(
        self, conn: Any, results: Sequence[Result]
    ) -> tuple[set[tuple[int, int]], dict[str, set[int]]]:
        """The (id, lease_token) pairs of the results' rows still in flight (locked on PostgreSQL until the
        commit, as SQLite's write lock already does), and the ids of the rows holding each answered job_id."""
        lock = " FOR UPDATE" if conn.dialect.name == "postgresql" else ""
        live: set[tuple[int, int]] = set()
        holders: dict[str, set[int]] = {}
        ids = sorted({r.id for r in results})
        job_ids = sorted({r.job_id for r in results if r.job_id is not None})
        for part in _chunks(ids):
            names, params = _in_list(part)
            sql = f"SELECT id, lease_token FROM jobs WHERE status = '{_IN_FLIGHT}' AND id IN ({names}){lock}"
            live.update((int(i), int(t)) for i, t in conn.exec_driver_sql(driver_sql(conn.dialect, sql), params))
        for part in _chunks(job_ids):
            names, params = _in_list(part)
            sql = f"SELECT id, job_id FROM jobs WHERE job_id IN ({names})"
            for i, j in conn.exec_driver_sql(driver_sql(conn.dialect, sql), params):
                holders.setdefault(str(j), set()).add(int(i))
        return live, holders

    @staticmethod
    def _is_held(conn: Any, r: Result) -> bool:
        """Whether a success that changed nothing was refused for its job_id (not fenced: the lease holds)."""
        return (
            conn.execute(
                text(f"SELECT 1 FROM jobs WHERE id = :id AND lease_token = :token AND status = '{_IN_FLIGHT}'"),
                {"id": r.id, "token": r.lease_token},
            ).first()
            is not None
        )

    @staticmethod
    def _record_duplicate(conn: Any, sql: Any, params: dict[str, Any]) -> list[int]:
        """The answered job_id is another row's: this row and every `succeeded` holder become uncertain
        (`duplicate_job_id`); returns the holders' ids. A holder gains its own body_hash in sent_hashes if it
        had none (a row that succeeded before hashes were kept), so the listing can recover it cleanly."""
        job_id = params["job_id"]
        holders = conn.execute(
            text("SELECT id, reference_id, status FROM jobs WHERE job_id = :j AND id <> :id ORDER BY id"),
            {"j": job_id, "id": params["id"]},
        ).all()
        refs = ", ".join(repr(ref) for _, ref, _ in holders[:3]) + (" …" if len(holders) > 3 else "")
        conn.execute(
            sql,
            {
                **params,
                "status": Status.UNCERTAIN.value,
                "code": "duplicate_job_id",
                "origin": None,
                "sent": True,
                "msg": f"the API answered job_id {job_id!r}, already recorded for reference_id {refs}: the job "
                "may exist; the batch listing decides (the job_id shown is unconfirmed)",
            },
        )
        mine = conn.execute(text("SELECT reference_id FROM jobs WHERE id = :id"), {"id": params["id"]}).scalar_one()
        demoted = [hid for hid, _, status in holders if status == Status.SUCCEEDED.value]
        for hid in demoted:
            conn.execute(
                text(
                    f"UPDATE jobs SET status = '{_UNCERTAIN}', origin = NULL, error_code = 'duplicate_job_id', "
                    "error_message = :msg, updated_at = :now, "
                    "sent_hashes = CASE WHEN sent_hashes IS NULL OR sent_hashes = '' THEN body_hash "
                    f"ELSE sent_hashes END WHERE id = :id AND status = '{_SUCCEEDED}'"
                ),
                {
                    "id": hid,
                    "now": params["now"],
                    "msg": f"the API answered this row's job_id {job_id!r} for reference_id {mine!r} too: the batch "
                    "listing decides which row it belongs to (the job_id shown is unconfirmed)",
                },
            )
        return demoted

    def release(self, owner: str, started: Collection[int] | None = None) -> int:
        """Give every row `owner` still holds back to pending, attempt not counted (run stopped early).

        `started`: the ids of the held rows whose request the run had begun to send; their attempt's payload
        hash is kept as sent (a stop may have cut a request in the air), the others' is dropped (no byte of
        them left the process, so a job later found for them is not theirs). None: the caller cannot tell,
        every attempt is kept as sent (as a lease takeover does after a kill)."""
        params: dict[str, Any] = {"owner": owner, "now": utcnow()}
        if started is None:
            statement = text(_RELEASE_ALL)
        else:
            statement = text(_RELEASE_STARTED).bindparams(bindparam("started", expanding=True))
            params["started"] = sorted(set(started))
        with write_tx(self.engine) as conn:
            released = conn.execute(statement, params).all()
        if self._claim_log and released:
            self._log("release", owner=owner, rows=[list(r) for r in released])
        return len(released)

    # -- workers -----------------------------------------------------------------------------------------

    def register_worker(self) -> str:
        """Register this process as a worker; expire the leases of dead workers on this host first."""
        owner = uuid.uuid4().hex
        now = utcnow()
        host = socket.gethostname()
        with write_tx(self.engine) as conn:
            for other, pid in conn.execute(
                text("SELECT owner, pid FROM workers WHERE stopped_at IS NULL AND hostname = :h"), {"h": host}
            ).all():
                if not pid_alive(pid):
                    self._expire(conn, other, now)
            conn.execute(
                text(
                    "INSERT INTO workers (owner, hostname, pid, started_at, heartbeat_at, sent) "
                    "VALUES (:o, :h, :p, :t, :t, 0)"
                ),
                {"o": owner, "h": host, "p": os.getpid(), "t": now},
            )
        return owner

    @staticmethod
    def _expire(conn: Any, owner: str, now: dt.datetime) -> None:
        conn.execute(text("UPDATE workers SET stopped_at = :t WHERE owner = :o"), {"t": now, "o": owner})
        conn.execute(
            text(f"UPDATE jobs SET lease_expires_at = :t WHERE lease_owner = :o AND status = '{_IN_FLIGHT}'"),
            {"t": now - dt.timedelta(seconds=1), "o": owner},
        )

    def heartbeat(
        self, owner: str, lease_seconds: float, sent: int, *, renew: bool = True, rate: float | None = None
    ) -> None:
        """Show this worker alive with its request count and current `rate` (requests/s since its previous
        heartbeat); with `renew`, keep its leases alive too."""
        now = utcnow()
        exp = now + dt.timedelta(seconds=lease_seconds)
        with write_tx(self.engine) as conn:
            conn.execute(
                text("UPDATE workers SET heartbeat_at = :t, sent = :s, rate = :r WHERE owner = :o"),
                {"t": now, "s": sent, "r": rate, "o": owner},
            )
            if renew:
                conn.execute(
                    text(f"UPDATE jobs SET lease_expires_at = :e WHERE lease_owner = :o AND status = '{_IN_FLIGHT}'"),
                    {"e": exp, "o": owner},
                )
        if self._claim_log and renew:
            self._log("renew", owner=owner, now=_epoch(now), exp=_epoch(exp))

    def reaffirm(self, row_id: int, lease_token: int, lease_seconds: float) -> bool:
        """Renew one claim's lease if the row is still in flight under that claim (its lease token): True when
        it is, and the caller may send it; False when another run took it over."""
        exp = utcnow() + dt.timedelta(seconds=lease_seconds)
        with write_tx(self.engine) as conn:
            return bool(
                conn.execute(
                    text(
                        "UPDATE jobs SET lease_expires_at = :e "
                        f"WHERE id = :i AND lease_token = :k AND status = '{_IN_FLIGHT}'"
                    ),
                    {"e": exp, "i": row_id, "k": lease_token},
                ).rowcount
            )

    def stop_worker(self, owner: str) -> None:
        with write_tx(self.engine) as conn:
            conn.execute(text("UPDATE workers SET stopped_at = :t WHERE owner = :o"), {"t": utcnow(), "o": owner})

    def _log(self, kind: str, **fields: Any) -> None:
        """Test-only (UPLOADER_CLAIM_LOG): one JSON line, written after the commit; `t` is when."""
        line = json.dumps({"kind": kind, "pid": os.getpid(), "t": time.time(), **fields}) + "\n"
        if self._claim_log is None:  # the log is off
            return
        fd = os.open(self._claim_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())  # one write with O_APPEND: lines of several processes never interleave
        finally:
            os.close(fd)

    # -- batches -----------------------------------------------------------------------------------------

    def batch_id_for(self, project_id: str, name: str) -> str | None:
        with read_tx(self.engine) as conn:
            return conn.execute(
                text("SELECT batch_id FROM batches WHERE project_id = :p AND name = :n"), {"p": project_id, "n": name}
            ).scalar_one_or_none()

    def save_batch(self, project_id: str, name: str, batch_id: str) -> None:
        with write_tx(self.engine) as conn:
            conn.execute(
                text("INSERT INTO batches (project_id, name, batch_id, created_at) VALUES (:p, :n, :b, :t)"),
                {"p": project_id, "n": name, "b": batch_id, "t": utcnow()},
            )

    def reserve_batch(self, project_id: str, name: str, owner: str, *, auto: bool = False) -> BatchSlot:
        """The project's batch `name` (auto: the project's own batch, whatever its name): its row if the
        ledger has one, else a reservation for `owner`, who must now create it at the API. One transaction
        (SQLite: BEGIN IMMEDIATE; PostgreSQL: a table lock), so of runs reserving together exactly one wins."""
        with write_tx(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("LOCK TABLE batches IN SHARE ROW EXCLUSIVE MODE")
            where = "project_id = :p AND auto" if auto else "project_id = :p AND name = :n"
            row = conn.execute(
                text(f"SELECT {_SLOT} FROM batches WHERE {where} ORDER BY id LIMIT 1"), {"p": project_id, "n": name}
            ).first()
            if row is None:
                row = conn.execute(
                    text(
                        "INSERT INTO batches (project_id, name, batch_id, created_at, auto, reserved_by) "
                        f"VALUES (:p, :n, NULL, :t, :a, :o) RETURNING {_SLOT}"
                    ),
                    {"p": project_id, "n": name, "t": utcnow(), "a": auto, "o": owner},
                ).one()
        return _slot(row)

    def batch_slot(self, slot_id: int) -> BatchSlot | None:
        """The batch row as it is now (None: its reservation was given up)."""
        with read_tx(self.engine) as conn:
            row = conn.execute(text(f"SELECT {_SLOT} FROM batches WHERE id = :i"), {"i": slot_id}).first()
        return _slot(row) if row is not None else None

    def take_over_batch(self, slot: BatchSlot, owner: str, name: str | None = None) -> bool:
        """Take a reservation whose owner is dead or stale (optionally under a new name); False if it
        changed meanwhile (created, given up, or taken by another run)."""
        with write_tx(self.engine) as conn:
            return (
                conn.execute(
                    text(
                        "UPDATE batches SET reserved_by = :o, created_at = :t, name = COALESCE(:n, name) "
                        "WHERE id = :i AND reserved_by = :old AND batch_id IS NULL"
                    ),
                    {"o": owner, "t": utcnow(), "n": name, "i": slot.id, "old": slot.reserved_by},
                ).rowcount
                == 1
            )

    def refresh_reservation(self, slot_id: int, owner: str, name: str | None = None) -> bool:
        """Show the reservation alive (its time is the creator's heartbeat); optionally rename it (an auto
        batch trying a new name). False if it is no longer `owner`'s."""
        with write_tx(self.engine) as conn:
            return (
                conn.execute(
                    text(
                        "UPDATE batches SET created_at = :t, name = COALESCE(:n, name) "
                        "WHERE id = :i AND reserved_by = :o AND batch_id IS NULL"
                    ),
                    {"t": utcnow(), "n": name, "i": slot_id, "o": owner},
                ).rowcount
                == 1
            )

    def complete_batch(self, slot_id: int, batch_id: str) -> str:
        """Record the created batch's id; returns the id the ledger holds (another run's, if it recorded
        one first after taking the reservation over: every run then uses that one)."""
        with write_tx(self.engine) as conn:
            conn.execute(
                text(
                    "UPDATE batches SET batch_id = :b, reserved_by = NULL, created_at = :t "
                    "WHERE id = :i AND batch_id IS NULL"
                ),
                {"b": batch_id, "t": utcnow(), "i": slot_id},
            )
            held = conn.execute(text("SELECT batch_id FROM batches WHERE id = :i"), {"i": slot_id}).scalar()
        return str(held) if held else batch_id

    def cancel_reservation(self, slot_id: int, owner: str) -> None:
        """Give up a reservation whose creation failed, so that another run can try."""
        with write_tx(self.engine) as conn:
            conn.execute(
                text("DELETE FROM batches WHERE id = :i AND reserved_by = :o AND batch_id IS NULL"),
                {"i": slot_id, "o": owner},
            )

    def projects_needing_batch(self) -> list[str]:
        """Projects with rows that have no batch and were never sent, and none sent to the project's default
        batch still unresolved: those can be found only through a success in the default batch, so such a
        project's rows keep going there until they are resolved."""
        with read_tx(self.engine) as conn:
            return list(
                conn.execute(
                    text(
                        f"SELECT DISTINCT project_id FROM jobs WHERE {_UNBATCHED} AND project_id NOT IN "
                        f"(SELECT project_id FROM jobs WHERE {_IN_DEFAULT_BATCH})"
                    )
                ).scalars()
            )

    def assign_batch(self, project_id: str, batch_id: str) -> int:
        """Put the project's rows that have no batch and were never sent (no earlier attempt can have
        created their job elsewhere) into `batch_id`. Only the batch_id column changes, not the stored body
        (reloading the manifest still compares equal); the worker adds it to the body it sends."""
        with write_tx(self.engine) as conn:
            if conn.dialect.name == "postgresql":  # one at a time: two runs updating the same rows in
                conn.exec_driver_sql("LOCK TABLE batches IN SHARE ROW EXCLUSIVE MODE")  # other orders deadlock
            return conn.execute(
                text(f"UPDATE jobs SET batch_id = :b, updated_at = :t WHERE project_id = :p AND {_UNBATCHED}"),
                {"b": batch_id, "t": utcnow(), "p": project_id},
            ).rowcount

    def last_manifest_name(self) -> str | None:
        """The file name of the manifest loaded last (names the run's own batch)."""
        with read_tx(self.engine) as conn:
            path = conn.execute(text("SELECT path FROM manifests ORDER BY id DESC LIMIT 1")).scalar()
        return Path(path).name if path else None

    def known_job_in_default_batch(self, project_id: str, skip: Collection[str] = ()) -> tuple[int, str, str] | None:
        """(row id, reference_id, job_id) of a job in the project's default batch whose job_id is not in `skip`:
        its GET answer tells the default batch's id."""
        with read_tx(self.engine) as conn:
            rows = conn.execute(
                text(
                    "SELECT id, reference_id, job_id FROM jobs WHERE project_id = :p AND batch_id IS NULL "
                    f"AND status = '{_SUCCEEDED}' AND job_id IS NOT NULL LIMIT :n"
                ),
                {"p": project_id, "n": len(skip) + 1},
            ).all()
        return next(((r[0], r[1], r[2]) for r in rows if r[2] not in skip), None)

    # -- uncertain rows and retries ----------------------------------------------------------------------

    def resolve_uncertain(
        self,
        found: dict[int, str],
        missing: Sequence[int] = (),
        max_attempts: int | None = None,
        listed_after: dt.datetime | None = None,
        aged: Collection[int] = (),
    ) -> Resolution:
        """Settle uncertain rows with what a batch listing showed.

        `found` {row id: job_id}: the row gets that job_id and goes `succeeded` (origin recovered) or
        `conflict` (transitions.settle_found: a job this ledger never sent, or one an earlier payload may have
        created, or a job_id already recorded for another row). `missing`: rows a complete listing did not
        find (transitions.settle_missing): when not refused with FS_0001, `pending` (sent again) while the row
        has had fewer than `max_attempts` attempts (None: no limit), else `failed` (`retry` may send them
        again) unless its last attempt was recorded after `listed_after` (the listing's start less a grace:
        its request may not have been processed yet), when it stays uncertain (`late`); `conflict` (created
        elsewhere, job_id unknown) for an FS_0001 row this ledger never sent; other FS_0001 rows stay
        uncertain. `aged`: rows whose last attempt the caller timed itself (on a monotonic clock) as older
        than the grace, whatever `listed_after` says (a wall clock stepped back since makes it look recent).
        Rows no longer uncertain are skipped."""
        succeeded = conflict = failed = demoted = requeued = late = 0
        left: list[int] = []
        demoted_ids: list[int] = []
        now = utcnow()
        with write_tx(self.engine) as conn:
            for rid, job_id in found.items():
                row = conn.execute(
                    text(f"SELECT sent_hashes, body_hash FROM jobs WHERE id = :id AND status = '{_UNCERTAIN}'"),
                    {"id": rid},
                ).first()
                if row is None:
                    continue
                holder = conn.execute(
                    text(
                        "SELECT id, status, origin, platform_status FROM jobs WHERE job_id = :j AND id <> :id "
                        f"AND status IN ('{_SUCCEEDED}', '{_CONFLICT}') LIMIT 1"
                    ),
                    {"j": job_id, "id": rid},
                ).first()
                if holder is not None and holder_yields(holder[1], holder[2], holder[3]):
                    if _give_up_job(conn, holder[0], now):
                        demoted += 1
                        demoted_ids.append(holder[0])
                    holder = None
                settled = settle_found(row[0], row[1], holder is not None)
                conn.execute(
                    text(
                        "UPDATE jobs SET status = :s, job_id = :j, recovered = true, origin = :o, error_code = :c, "
                        "error_message = :m, error_details = NULL, updated_at = :t "
                        f"WHERE id = :id AND status = '{_UNCERTAIN}'"
                    ),
                    {
                        "s": settled.status,
                        "j": job_id,
                        "o": settled.origin,
                        "c": settled.code,
                        "m": settled.message,
                        "t": now,
                        "id": rid,
                    },
                )
                if settled.status == Status.SUCCEEDED.value:
                    succeeded += 1
                else:
                    conflict += 1
                left.append(rid)
            for rid in missing:
                if rid in found:
                    continue
                row = conn.execute(
                    text(
                        "SELECT error_code, sent_hashes, attempts, CASE WHEN updated_at > :after THEN 1 ELSE 0 END "
                        f"FROM jobs WHERE id = :id AND status = '{_UNCERTAIN}'"
                    ),
                    {"id": rid, "after": listed_after},
                ).first()
                if row is None:
                    continue
                attempts_left = max_attempts is None or row[2] < max_attempts
                outcome = settle_missing(row[0], row[1], attempts_left, bool(row[3]) and rid not in aged)
                if outcome is None:
                    late += settle_missing(row[0], row[1], attempts_left) is not None
                    continue
                if outcome.status in (Status.FAILED.value, Status.PENDING.value):
                    count = conn.execute(
                        text(
                            "UPDATE jobs SET status = :s, job_id = NULL, not_before = NULL, error_message = "
                            "COALESCE(error_message || '; ', '') || :m, updated_at = :t "
                            f"WHERE id = :id AND status = '{_UNCERTAIN}'"
                        ),
                        {"s": outcome.status, "m": outcome.message, "t": now, "id": rid},
                    ).rowcount
                    if outcome.status == Status.FAILED.value:
                        failed += count
                    else:
                        requeued += count
                    left += [rid] * count
                else:
                    count = conn.execute(
                        text(
                            f"UPDATE jobs SET status = '{_CONFLICT}', job_id = NULL, origin = :o, error_code = :c, "
                            "error_message = :m, error_details = NULL, updated_at = :t "
                            f"WHERE id = :id AND status = '{_UNCERTAIN}'"
                        ),
                        {"o": outcome.origin, "c": outcome.code, "m": outcome.message, "t": now, "id": rid},
                    ).rowcount
                    conflict += count
                    left += [rid] * count
        return Resolution(
            succeeded,
            conflict,
            failed,
            requeued=requeued,
            demoted=demoted,
            late=late,
            left=tuple(left),
            demoted_ids=tuple(demoted_ids),
        )

    def retry(self, codes: Sequence[str] = (), everything: bool = False) -> int:
        """failed → pending with attempts reset, for the given error codes (or all failed rows). A row with no
        payload (adopted, its manifest never loaded) stays failed: there is nothing to send (`payloadless`)."""
        where, params = _failed_where(codes, everything)
        if where is None:
            return 0
        with write_tx(self.engine) as conn:
            return conn.execute(
                text(
                    f"UPDATE jobs SET status = '{_PENDING}', attempts = 0, not_before = NULL, updated_at = :t "
                    f"WHERE {where} AND body <> ''"
                ),
                {**params, "t": utcnow()},
            ).rowcount

    def payloadless(self, codes: Sequence[str] = (), everything: bool = False) -> int:
        """How many failed rows `retry` with these arguments leaves failed for want of a payload."""
        where, params = _failed_where(codes, everything)
        if where is None:
            return 0
        with read_tx(self.engine) as conn:
            return int(
                conn.execute(text(f"SELECT COUNT(*) FROM jobs WHERE {where} AND body = ''"), params).scalar_one()
            )


def _failed_where(codes: Sequence[str], everything: bool) -> tuple[str | None, dict[str, Any]]:
    """The WHERE clause (and its parameters) of the failed rows with these error codes, or of all failed rows;
    None when no code is given."""
    where = f"status = '{_FAILED}'"
    if everything:
        return where, {}
    if not codes:
        return None, {}
    names = [f"c{i}" for i in range(len(codes))]
    return where + f" AND error_code IN ({', '.join(':' + n for n in names)})", dict(zip(names, codes))


def _give_up_job(conn: Connection, row_id: int, now: dt.datetime) -> int:
    """A succeeded row gives up its job_id (transitions.holder_yields): uncertain, to be looked up by its own
    reference_id. Returns 1 when it did."""
    return conn.execute(
        text(
            f"UPDATE jobs SET status = '{_UNCERTAIN}', job_id = NULL, error_code = 'duplicate_job_id', "
            "error_message = :m, updated_at = :t "
            f"WHERE id = :id AND status = '{_SUCCEEDED}'"
        ),
        {
            "m": "the batch listing shows its job_id under another reference_id: looked up by its own",
            "t": now,
            "id": row_id,
        },
    ).rowcount


def _claim_sql(dialect: str, select: str) -> str:
    """UPDATE the rows `select` picks. SQLite: BEGIN IMMEDIATE already excludes every other writer.
    PostgreSQL: lock the picked rows, skipping those another claimer holds, in a MATERIALIZED CTE, so
    the locking LIMIT runs exactly once (as a plain `IN (subquery)` the planner may re-run it and claim
    more than `n` rows)."""
    if dialect == "postgresql":
        return (
            f"WITH picked AS MATERIALIZED ({select} FOR UPDATE SKIP LOCKED) "
            f"UPDATE jobs {_CLAIM_SET} WHERE id IN (SELECT id FROM picked) RETURNING {_RETURNING}"
        )
    return f"UPDATE jobs {_CLAIM_SET} WHERE id IN ({select}) RETURNING {_RETURNING}"


def _epoch(t: dt.datetime) -> float:
    """A naive UTC ledger time as seconds since the epoch (the claim log's clock)."""
    return t.replace(tzinfo=dt.UTC).timestamp()


def _slot(row: Any) -> BatchSlot:
    """A BatchSlot from a `_SLOT` row (SQLite hands back booleans as ints and times as text)."""
    sid, project, name, batch_id, auto, reserved_by, at = row
    return BatchSlot(sid, project, name, batch_id, bool(auto), reserved_by, _dt(at) or utcnow())


def sqlite_file(engine: Engine) -> Path | None:
    """The engine's SQLite file, or None (another database, or in memory)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database).absolute()


#: Tables whose rows mean someone used the ledger (the schema alone does not).
_USE_TABLES = ("jobs", "manifests", "batches", "workers")


def _never_written(path: Path) -> bool:
    """No job, manifest, batch or worker row in the SQLite file (a file without the tables counts too)."""
    con = sqlite3.connect(path, timeout=5)  # under our LOCK_EX: nobody else uses the file
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return not any(con.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in _USE_TABLES if t in tables)
    except sqlite3.DatabaseError:
        return False  # not a database we understand: never removed
    finally:
        con.close()


def split_record(
    results: Sequence[Result], live: set[tuple[int, int]], holders: dict[str, set[int]]
) -> tuple[list[int], list[int]]:
    """Which results (by index) one group statement may apply, and which must go one at a time, in order.

    A result whose lease no longer holds changes nothing (in neither list). A live one goes one at a time
    when its row appears twice, or its job_id is answered twice in the group or held by another row; so
    does any result for a row holding such a job_id: those are the rows whose outcome depends on order."""
    live_idx = [i for i, r in enumerate(results) if (r.id, r.lease_token) in live]
    seen_ids: dict[int, int] = {}
    seen_jobs: dict[str, int] = {}
    for i in live_idx:
        r = results[i]
        seen_ids[r.id] = seen_ids.get(r.id, 0) + 1
        if r.job_id is not None:
            seen_jobs[r.job_id] = seen_jobs.get(r.job_id, 0) + 1
    tangled: set[int] = set()  # row ids
    for i in live_idx:
        r = results[i]
        if seen_ids[r.id] > 1:
            tangled.add(r.id)
        others = holders.get(r.job_id, set()) - {r.id} if r.job_id is not None else set()
        if r.job_id is not None and (seen_jobs[r.job_id] > 1 or others):
            tangled.add(r.id)
            tangled.update(others)
    fast = [i for i in live_idx if results[i].id not in tangled]
    slow = [i for i in live_idx if results[i].id in tangled]
    return fast, slow


def _record_params(r: Result, now: dt.datetime, stamp: Callable[[Any], Any]) -> dict[str, Any]:
    """The bound values of `record`'s UPDATE for one result; `stamp` binds a time (engine.driver_time)."""
    return {
        "status": r.status.value,
        "job_id": r.job_id,
        "recovered": r.recovered,
        "code": r.error_code,
        "msg": r.error_message,
        "details": r.error_details,
        "http": r.http_status,
        "refund": 1 if r.refund_attempt else 0,
        "nb": None if r.not_before is None else stamp(r.not_before),
        "now": stamp(now),
        "id": r.id,
        "token": r.lease_token,
        "origin": r.origin,
        "sent": r.may_have_created,
    }


def _in_list(values: list[Any]) -> tuple[str, dict[str, Any]]:
    """Named parameters for `IN (...)` over `values`: the names joined by commas, and their values."""
    params = {f"v{k}": v for k, v in enumerate(values)}
    return ", ".join(f":{name}" for name in params), params


def _chunks(values: list[Any], size: int = 500) -> list[list[Any]]:
    """`values` in slices of at most `size` (bound parameters per statement stay well under the limits)."""
    return [values[k : k + size] for k in range(0, len(values), size)]
