"""The read side of the ledger: status, counts, error codes, export rows, and when work may next be claimable.

uploader.ledger.ledger holds every write of job state (claims, leases, results, the worker registry); this
module holds the reads, so each can be read without the other. Nothing here writes: `LedgerQueries` is a
mixin of read-only methods that `Ledger` inherits, so callers see one Ledger API (from `uploader.ledger`).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, text

from uploader._leftovers import pid_alive
from uploader.ledger.engine import read_tx
from uploader.ledger.models import Status
from uploader.ledger.states import utcnow

if TYPE_CHECKING:  # pandas is imported by to_pandas only, when it is called
    import pandas as pd

__all__ = [
    "EXPORT_COLUMNS",
    "LIVE_WORKER_SECONDS",
    "LedgerQueries",
    "StatusReport",
    "pid_alive",
    "read_snapshot",
]

#: Status words for the SQL below (f-strings over Status: one spelling of each state).
_PENDING = Status.PENDING.value
_IN_FLIGHT = Status.IN_FLIGHT.value
_SUCCEEDED = Status.SUCCEEDED.value
_FAILED = Status.FAILED.value
_UNCERTAIN = Status.UNCERTAIN.value
_CONFLICT = Status.CONFLICT.value

#: A worker whose last heartbeat is older than this is not shown as live by `status`.
LIVE_WORKER_SECONDS = 60
#: A worker of this host whose process exists is live whatever the clocks say, if it beat within this long (by
#: the clock: a bound against a pid reused since a run was killed without signing off).
OWN_HOST_HOLD_SECONDS = 86_400


@dataclass(frozen=True)
class StatusReport:
    """What `uploader status` shows."""

    counts: dict[str, int]
    error_codes: dict[str, int]
    total: int
    oldest_pending: dt.datetime | None
    last_activity: dt.datetime | None
    manifests: int
    live_workers: list[dict[str, Any]]
    #: How the jobs that exist came to be, over succeeded and conflict rows: created / recovered /
    #: pre-existing (a conflict row's code says why it may hold other data than the manifest).
    origins: dict[str, int] = field(default_factory=dict)
    #: Each error code with its rows, a message and an example reference_id (`LedgerQueries.error_details`).
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: Workers of this host that never stopped but whose process is gone (killed): not live, their rows are
    #: taken over by the next run.
    dead_workers: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def iso(t: dt.datetime | None) -> str | None:
            return iso_utc(t) if t else None

        return {
            "total": self.total,
            "counts": self.counts,
            "error_codes": self.error_codes,
            "oldest_pending": iso(self.oldest_pending),
            "last_activity": iso(self.last_activity),
            "manifests": self.manifests,
            "live_workers": self.live_workers,
            "origins": self.origins,
            "errors": self.errors,
            "dead_workers": self.dead_workers,
        }


EXPORT_COLUMNS = (
    "reference_id",
    "job_id",
    "status",
    "origin",
    "error_code",
    "error_message",
    "attempts",
    "project_id",
    "work_flow_id",
    "batch_id",
    "platform_status",
    "platform_status_at",
    "result_path",
    "result",  # a result the platform gave inline (JSON text), when it gave no file to download
    "result_error",
)


def export_name(column: str) -> str:
    """The name a manifest's own column has in export: its own, or `manifest.<name>` when export writes a column
    of that name (a manifest's `status` or `job_id` is not the ledger's)."""
    return f"manifest.{column}" if column in EXPORT_COLUMNS or column.startswith("manifest.") else column


#: The export's SELECT list for EXPORT_COLUMNS: a job_id only where the job is known to be the row's (succeeded,
#: or a conflict's job); an uncertain or failed row's job_id, if any, is unconfirmed and stays in the ledger.
_EXPORT_SELECT = ", ".join(
    f"CASE WHEN status IN ('{_SUCCEEDED}', '{_CONFLICT}') THEN job_id END" if c == "job_id" else c
    for c in EXPORT_COLUMNS
)

#: Rows per status other than succeeded: two index range scans (status < and > 'succeeded').
_COUNTS_BUT_SUCCEEDED = " UNION ALL ".join(
    f"SELECT status, COUNT(*) FROM jobs WHERE status {op} '{_SUCCEEDED}' GROUP BY status" for op in "<>"
)


class LedgerQueries:
    """The read-only queries of `uploader.ledger.ledger.Ledger` (a mixin: it needs only `engine`)."""

    engine: Engine

    def counts(self) -> dict[str, int]:
        """Rows per status (every status present, zero if none). `succeeded`, most rows of a finished ledger,
        is the total less the rest: the rest are counted over the two index ranges around it and the total by
        the database's plain count, where a GROUP BY over every row would read the whole index."""
        with read_tx(self.engine) as conn:
            return _counts(conn)

    def next_wakeup(self, owner: str | None = None) -> dt.datetime | None:
        """When something may next become claimable: the earliest backed-off row, or the earliest lease of
        another worker's row (it finishes it, or dies and the row is reclaimed). None: nothing will."""
        with read_tx(self.engine) as conn:
            # A row another run released (it stopped) after our last claim: claimable now, not "nothing".
            if conn.execute(
                text(f"SELECT 1 FROM jobs WHERE status = '{_PENDING}' AND not_before IS NULL LIMIT 1")
            ).first():
                return utcnow()
            retry = conn.execute(
                text(f"SELECT MIN(not_before) FROM jobs WHERE status = '{_PENDING}' AND not_before IS NOT NULL")
            ).scalar_one()
            others = conn.execute(
                text(
                    f"SELECT MIN(lease_expires_at) FROM jobs WHERE status = '{_IN_FLIGHT}' "
                    "AND (lease_owner IS NULL OR lease_owner <> :owner)"
                ),
                {"owner": owner or ""},
            ).scalar_one()
        times = [t for t in (_dt(retry), _dt(others)) if t is not None]
        return min(times) if times else None

    def error_codes(self, limit: int | None = None) -> dict[str, int]:
        """Error codes of rows that are failed, uncertain, in conflict or waiting to retry, most frequent first."""
        with read_tx(self.engine) as conn:
            return _error_codes(conn, limit)

    def error_details(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Each error code, most rows first: `rows`, the `message` and `reference_id` of an example row,
        `waiting` (True: the rows are pending, waiting to retry; False: failed, uncertain or in conflict) and
        `throttled` (the API answered 429: it asked to slow down; the row is not wrong)."""
        with read_tx(self.engine) as conn:
            return _error_details(conn, limit)

    def failed_codes(self) -> dict[str | None, int]:
        """Failed rows per error code (None: failed without one), most frequent first."""
        sql = (
            f"SELECT error_code, COUNT(*) FROM jobs WHERE status = '{_FAILED}' GROUP BY error_code "
            "ORDER BY COUNT(*) DESC"
        )
        with read_tx(self.engine) as conn:
            return {code: n for code, n in conn.execute(text(sql))}

    def row(self, reference_id: str, project_id: str | None = None) -> list[dict[str, Any]]:
        """Every row with this reference_id (of `project_id`, if given) as `uploader show` prints it: the
        payload and error details parsed from their JSON, times in ISO 8601 UTC."""
        sql = (
            "SELECT j.reference_id, j.project_id, j.status, j.job_id, j.origin, j.attempts, j.http_status, "
            "j.error_code, j.error_message, j.error_details, j.work_flow_id, j.batch_id, j.not_before, "
            "j.created_at, j.updated_at, m.path, j.manifest_line, j.body FROM jobs j "
            "LEFT JOIN manifests m ON m.id = j.manifest_id WHERE j.reference_id = :ref"
            + (" AND j.project_id = :project" if project_id is not None else "")
            + " ORDER BY j.id"
        )
        with read_tx(self.engine) as conn:
            rows = conn.execute(text(sql), {"ref": reference_id, "project": project_id}).all()
        out = []
        for (
            ref,
            project,
            status,
            job_id,
            origin,
            attempts,
            http,
            code,
            message,
            details,
            wf,
            batch,
            not_before,
            created,
            updated,
            manifest,
            line,
            body,
        ) in rows:
            out.append(
                {
                    "reference_id": ref,
                    "project_id": project,
                    "status": status,
                    "job_id": job_id,
                    "origin": origin,
                    "attempts": attempts,
                    "http_status": http,
                    "error_code": code,
                    "error_message": message,
                    "error_details": _json_or_text(details),
                    "work_flow_id": wf,
                    "batch_id": batch,
                    "retry_after": _iso(not_before),
                    "created_at": _iso(created),
                    "updated_at": _iso(updated),
                    "manifest": manifest,
                    "manifest_line": line,
                    "payload": _json_or_text(body),
                }
            )
        return out

    def snapshot(self) -> AbstractContextManager[Connection]:
        """A read snapshot (`read_snapshot`) to hand to several queries, which then agree with each other."""
        return read_snapshot(self.engine)

    def status(self, snapshot: Connection | None = None) -> StatusReport:
        """What `uploader status` shows, every figure read in one snapshot (`read_snapshot`, or the caller's
        `snapshot`): read one transaction each, a run recording results in between made the counts contradict
        the error codes."""
        with read_snapshot(self.engine) if snapshot is None else nullcontext(snapshot) as conn:
            counts = _counts(conn)
            codes = _error_codes(conn)
            errors = _error_details(conn)
            oldest = conn.execute(text(f"SELECT MIN(created_at) FROM jobs WHERE status = '{_PENDING}'")).scalar_one()
            last = conn.execute(text("SELECT MAX(updated_at) FROM jobs")).scalar_one()
            manifests = conn.execute(text("SELECT COUNT(*) FROM manifests")).scalar_one()
            origins = {
                o: n
                for o, n in conn.execute(
                    text(
                        f"SELECT origin, COUNT(*) FROM jobs WHERE status IN ('{_SUCCEEDED}', '{_CONFLICT}') "
                        "AND origin IS NOT NULL GROUP BY origin ORDER BY origin"
                    )
                )
            }
            now = utcnow()
            host = socket.gethostname()
            stale = now - dt.timedelta(seconds=LIVE_WORKER_SECONDS)
            workers = [
                _live_worker(o, h, p, _dt(s), _dt(b), n, now, r)  # type: ignore[arg-type]
                for o, h, p, s, b, n, r in conn.execute(
                    text(
                        "SELECT owner, hostname, pid, started_at, heartbeat_at, sent, rate FROM workers "
                        "WHERE stopped_at IS NULL AND (heartbeat_at > :stale OR (hostname = :host AND "
                        "heartbeat_at > :day)) ORDER BY started_at"
                    ),
                    {"stale": stale, "host": host, "day": now - dt.timedelta(seconds=OWN_HOST_HOLD_SECONDS)},
                )
            ]
        # A worker of this host is live while its process is (its heartbeat may look old: a clock stepped
        # forward since); one whose process is gone is dead if it beat recently, else long forgotten.
        here = {id(w): pid_alive(w["pid"]) for w in workers if w["hostname"] == host}
        dead = [w for w in workers if here.get(id(w)) is False and w["heartbeat_age_seconds"] < LIVE_WORKER_SECONDS]
        live = [w for w in workers if here.get(id(w), True)]
        return StatusReport(
            counts,
            codes,
            sum(counts.values()),
            _dt(oldest),
            _dt(last),
            manifests,
            live,
            origins,
            errors=errors,
            dead_workers=dead,
        )

    def uncertain_groups(self) -> list[tuple[str, str | None, list[tuple[int, str]]]]:
        """Uncertain rows grouped by (project_id, batch_id): [(project, batch, [(id, reference_id)])]."""
        groups: dict[tuple[str, str | None], list[tuple[int, str]]] = {}
        with read_tx(self.engine) as conn:
            for rid, project, batch, ref in conn.execute(
                text(
                    f"SELECT id, project_id, batch_id, reference_id FROM jobs WHERE status = '{_UNCERTAIN}' ORDER BY id"
                )
            ):
                groups.setdefault((project, batch), []).append((rid, ref))
        return [(p, b, rows) for (p, b), rows in groups.items()]

    def extra_columns(self) -> list[str]:
        """The manifests' own extra column names, in first-seen order (one sample row per manifest)."""
        names: dict[str, None] = {}
        with read_tx(self.engine) as conn:
            for (extra,) in conn.execute(
                text(
                    "SELECT extra FROM jobs WHERE id IN (SELECT MIN(id) FROM jobs WHERE extra IS NOT NULL "
                    "GROUP BY manifest_id) ORDER BY id"
                )
            ):
                names.update(dict.fromkeys(json.loads(extra)))
        return [export_name(n) for n in names]

    def export_rows(
        self, statuses: Sequence[str] = (), chunk: int = 10_000, platform_statuses: Sequence[str] = ()
    ) -> Iterator[dict[str, Any]]:
        """Rows for export, in load order, streamed in chunks (extra manifest columns merged in); a job_id only
        for succeeded and conflict rows (`_EXPORT_SELECT`). Only rows in any of `statuses` (a ledger state: the
        row's state, so `failed` is what `status` counts as failed; any other word: a platform status, as
        `completed`) or with any of `platform_statuses` (the platform's word, even one that names a ledger
        state), when given."""
        states = {s.value for s in Status}
        ledger_words = [s for s in statuses if s in states]
        platform_words = [*(s for s in statuses if s not in states), *platform_statuses]
        params: dict[str, Any] = {"n": chunk}
        tests = []
        for column, words, prefix in (("status", ledger_words, "s"), ("platform_status", platform_words, "p")):
            if words:
                names = [f"{prefix}{i}" for i in range(len(words))]
                tests.append(f"{column} IN ({', '.join(':' + n for n in names)})")
                params.update(zip(names, words))
        where = f"AND ({' OR '.join(tests)})" if tests else ""
        last = 0
        while True:
            with read_tx(self.engine) as conn:
                rows = conn.execute(
                    text(f"SELECT id, {_EXPORT_SELECT}, extra FROM jobs WHERE id > :last {where} ORDER BY id LIMIT :n"),
                    {**params, "last": last},
                ).all()
            if not rows:
                return
            for row in rows:
                record = dict(zip(EXPORT_COLUMNS, row[1:-1]))
                record["platform_status_at"] = _iso(record["platform_status_at"])
                if row[-1]:
                    for k, v in json.loads(row[-1]).items():
                        record.setdefault(export_name(k), v)
                yield record
            last = rows[-1][0]

    def to_pandas(self, statuses: Sequence[str] = (), platform_statuses: Sequence[str] = ()) -> pd.DataFrame:
        """The export (`uploader export`) as a pandas DataFrame: EXPORT_COLUMNS, then the manifests' extra
        columns; one row per job, in load order, with pandas' own dtypes and missing values (`platform_status_at`
        a UTC datetime). `statuses`, `platform_statuses`: only those rows, as `export_rows` selects them."""
        import pandas as pd

        columns = [*EXPORT_COLUMNS, *self.extra_columns()]
        rows = self.export_rows(statuses, platform_statuses=platform_statuses)
        frame = pd.DataFrame.from_records(list(rows), columns=columns)
        at = pd.to_datetime(frame["platform_status_at"], utc=True, format="ISO8601")
        frame["platform_status_at"] = at.dt.as_unit("us")
        return frame


@contextmanager
def read_snapshot(engine: Engine) -> Iterator[Connection]:
    """A reading transaction whose every statement sees the same snapshot. SQLite's read transaction is one
    already (`read_tx`); PostgreSQL's default READ COMMITTED takes a new snapshot per statement, so there the
    transaction is made REPEATABLE READ (and READ ONLY) before its first query."""
    with read_tx(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield conn


def _counts(conn: Connection) -> dict[str, int]:
    """`LedgerQueries.counts` within the caller's transaction."""
    out = {s.value: 0 for s in Status}
    total = conn.execute(text("SELECT COUNT(*) FROM jobs")).scalar_one()
    for status, n in conn.execute(text(_COUNTS_BUT_SUCCEEDED)):
        out[status] = n
    out[_SUCCEEDED] = total - sum(out.values())
    return out


def _error_codes(conn: Connection, limit: int | None = None) -> dict[str, int]:
    """`LedgerQueries.error_codes` within the caller's transaction."""
    sql = (
        "SELECT error_code, COUNT(*) FROM jobs "
        f"WHERE status IN ('{_FAILED}', '{_UNCERTAIN}', '{_CONFLICT}', '{_PENDING}') "
        "AND error_code IS NOT NULL GROUP BY error_code ORDER BY COUNT(*) DESC"
    )
    rows = conn.execute(text(sql + (f" LIMIT {int(limit)}" if limit else ""))).all()
    return {code: n for code, n in rows}


def _error_details(conn: Connection, limit: int | None = None) -> list[dict[str, Any]]:
    """`LedgerQueries.error_details` within the caller's transaction."""
    sql = (
        "SELECT g.waiting, g.error_code, g.n, j.reference_id, j.error_message, g.throttled FROM ("
        f"SELECT CASE WHEN status = '{_PENDING}' THEN 1 ELSE 0 END AS waiting, error_code, COUNT(*) AS n, "
        "MIN(id) AS example, MAX(CASE WHEN http_status = 429 THEN 1 ELSE 0 END) AS throttled "
        f"FROM jobs WHERE status IN ('{_FAILED}', '{_UNCERTAIN}', '{_CONFLICT}', '{_PENDING}') "
        f"AND error_code IS NOT NULL GROUP BY CASE WHEN status = '{_PENDING}' THEN 1 ELSE 0 END, error_code"
        ") g JOIN jobs j ON j.id = g.example ORDER BY g.n DESC, g.error_code"
    )
    rows = conn.execute(text(sql + (f" LIMIT {int(limit)}" if limit else ""))).all()
    return [
        {
            "code": code,
            "rows": n,
            "message": message,
            "reference_id": ref,
            "waiting": bool(waiting),
            "throttled": bool(throttled),
        }
        for waiting, code, n, ref, message, throttled in rows
    ]


def _live_worker(
    owner: str,
    host: str,
    pid: int,
    started: dt.datetime,
    beat: dt.datetime,
    sent: int,
    now: dt.datetime,
    rate: float | None = None,
) -> dict[str, Any]:
    """A live worker as `status` shows it: `sent` is its request count at its last heartbeat (every few
    seconds), `requests_per_second` its current rate (over the interval before that heartbeat; before its
    second heartbeat, the average since its start), `average_requests_per_second` the average since its start."""
    up = (beat - started).total_seconds()
    average = round(sent / up, 1) if up > 0 else 0.0
    return {
        "owner": owner,
        "hostname": host,
        "pid": pid,
        "started_at": iso_utc(started),
        "heartbeat_at": iso_utc(beat),
        "heartbeat_age_seconds": max(0.0, round((now - beat).total_seconds(), 1)),  # a clock ahead of ours: 0
        "sent": sent,
        "requests_per_second": round(rate, 1) if rate is not None else average,
        "average_requests_per_second": average,
    }


def _iso(value: Any) -> str | None:
    """A stored time as ISO 8601 UTC, always with microseconds (`2026-12-06T05:00:42.000000Z`: one fixed form,
    also on a whole second, where `isoformat` drops them), or None."""
    when = _dt(value)
    return iso_utc(when) if when is not None else None


def iso_utc(when: dt.datetime) -> str:
    """A naive UTC time in the one form the ledger's outputs use: `2026-12-06T05:00:42.513259Z`."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_or_text(value: str | None) -> Any:
    """A stored JSON text parsed (the payload, an error's details); kept as text if it is not JSON."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def _dt(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))
