"""The read side of `uploader report`: every figure aggregated in SQL (GROUP BY), never row by row in Python,
so that a 1,000,000-row ledger reads in a few scans with flat memory.

Throughput comes from the runs' own counts per minute (the activity table: requests, jobs created, HTTP
429s). A ledger whose runs kept none (an older uploader) gets it derived from the jobs: a row counts in the
time bucket of its `updated_at` (its last answer): created jobs (succeeded, origin created), requests (its
attempts) and throttling (its last answer was HTTP 429). Columns that other versions add (the platform's
status of jobs and results, from `uploader sync`) are found by reading the table's columns, so the report
works with or without them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text

from uploader.ledger.engine import read_tx
from uploader.ledger.models import Status

__all__ = ["ReportData", "bucket_seconds", "report_data"]

_SUCCEEDED = Status.SUCCEEDED.value
_UNCERTAIN = Status.UNCERTAIN.value
_BLOCKED = Status.BLOCKED.value

#: At most this many time buckets in a chart: a bucket is one minute, or longer for a long upload.
MAX_BUCKETS = 240
#: Example reference_ids per error code, rows listed per uncertain/blocked table, batches and codes listed.
EXAMPLES = 3
LISTED_ROWS = 20
LISTED_BATCHES = 50
LISTED_CODES = 30
#: The jobs columns of migrations 0001-0006, written out rather than read from the model, so that a column
#: a later migration adds (`uploader sync`'s platform status and fetch times) shows in "On the platform"
#: whether or not the model has it yet.
KNOWN_COLUMNS = frozenset(
    {
        "id",
        "project_id",
        "reference_id",
        "work_flow_id",
        "batch_id",
        "body",
        "body_hash",
        "extra",
        "status",
        "job_id",
        "recovered",
        "error_code",
        "error_message",
        "error_details",
        "http_status",
        "attempts",
        "not_before",
        "lease_owner",
        "lease_token",
        "lease_expires_at",
        "created_at",
        "updated_at",
        "manifest_id",
        "manifest_line",
        "sent_hashes",
        "attempt_hash",
        "origin",
        "checked_at",
        "expires_at",
    }
)
#: SQLite page cache while the report reads (KiB): see _small_cache.
REPORT_CACHE_KIB = 2048
_STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)


@dataclass(frozen=True)
class ReportData:
    """What `uploader report` shows, already aggregated."""

    counts: dict[str, int]  #: rows per state, every state (as `uploader status` counts them)
    first: dt.datetime | None
    last: dt.datetime | None
    bucket: int  #: seconds per throughput bucket
    #: (bucket start, created jobs, requests, throttled)
    throughput: list[tuple[dt.datetime, int, int, int]]
    #: True: the runs' own counts per minute (the activity table); False: derived from each row's last
    #: answer, for a ledger whose runs kept no activity (an older uploader)
    measured: bool
    #: (code, status, rows, an API message, example reference_ids)
    errors: list[tuple[str, str, int, str | None, list[str]]]
    attempts: list[tuple[int, int]]
    uncertain: list[tuple[str, str, str | None, str | None]]  #: (reference_id, project, batch, code)
    blocked: list[tuple[str, str, str | None, str | None]]  #: (reference_id, project, code, message)
    #: (project, batch or None, {status: rows}), the largest first
    batches: list[tuple[str, str | None, dict[str, int]]]
    batch_count: int
    projects: dict[str, dict[str, int]]
    manifests: list[tuple[str, int, dt.datetime | None]]  #: (path, rows, loaded at)
    #: The names of the batches this ledger created: {batch_id: name}
    batch_names: dict[str, str] = field(default_factory=dict)
    #: Columns added by later migrations ending in "status": {column: {value: rows}}
    platform: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Columns added by later migrations ending in "_at": {column: rows where it is set}
    fetched: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def bucket_seconds(first: dt.datetime | None, last: dt.datetime | None, max_buckets: int = MAX_BUCKETS) -> int:
    """The shortest step of `_STEPS` that shows the span first..last in at most `max_buckets` buckets."""
    if first is None or last is None:
        return 60
    span = (last - first).total_seconds()
    for step in _STEPS:
        if span / step < max_buckets:
            return step
    return int(span // max_buckets) + 1


def _dt(v: Any) -> dt.datetime | None:
    if v is None or isinstance(v, dt.datetime):
        return v
    return dt.datetime.fromisoformat(str(v))


def _epoch(dialect: str, column: str) -> str:
    """SQL for a time column's seconds since 1970 (julianday: a third faster than strftime('%s') on SQLite)."""
    if dialect == "sqlite":
        return f"CAST(ROUND((julianday({column}) - 2440587.5) * 86400) AS INTEGER)"  # julianday is a float
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {column})) AS BIGINT)"


#: One scan and one sort for the states, error codes, attempts, batches and projects: batch_id first, the
#: column with the most distinct values, sorts fastest on SQLite.
_GROUPS = text(
    "SELECT batch_id, project_id, status, attempts, error_code, COUNT(*), MIN(error_message) FROM jobs "
    "GROUP BY batch_id, project_id, status, attempts, error_code"
)


@dataclass
class _Tally:
    """Sums of the grouped rows (a few hundred groups, not the jobs)."""

    counts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Status})
    errors: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    groups: dict[tuple[str, str | None], dict[str, int]] = field(default_factory=dict)
    projects: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(
        self, batch: str | None, project: str, status: str, attempts: int, code: str | None, n: int, message: str | None
    ) -> None:
        self.counts[status] = self.counts.get(status, 0) + n
        self.attempts[attempts] = self.attempts.get(attempts, 0) + n
        per_batch = self.groups.setdefault((project, batch), {})
        per_batch[status] = per_batch.get(status, 0) + n
        per_project = self.projects.setdefault(project, {s.value: 0 for s in Status})
        per_project[status] = per_project.get(status, 0) + n
        if code is not None and status != _SUCCEEDED:
            entry = self.errors.setdefault((code, status), [0, None])
            entry[0] += n
            if message is not None and (entry[1] is None or message < entry[1]):
                entry[1] = message


def report_data(engine: Engine) -> ReportData:
    """Aggregate the ledger for the report (four scans of the jobs at most: times, groups, the added columns,
    and throughput when runs kept no activity)."""
    added = [c["name"] for c in inspect(engine).get_columns("jobs") if c["name"] not in KNOWN_COLUMNS]
    tally = _Tally()
    with read_tx(engine) as conn, _small_cache(conn):
        first, last = conn.execute(text("SELECT MIN(created_at), MAX(updated_at) FROM jobs")).one()
        first, last = _dt(first), _dt(last)
        measured, step, throughput = _throughput(conn, engine.dialect.name, first, last)
        for batch, project, status, attempts, code, n, message in conn.execute(_GROUPS):
            tally.add(batch, str(project), str(status), int(attempts), code, int(n), message)
        ranked = sorted(tally.errors.items(), key=lambda kv: -kv[1][0])[:LISTED_CODES]
        errors = []
        for (code, status), (n, message) in ranked:
            examples = [
                r
                for (r,) in conn.execute(
                    text("SELECT reference_id FROM jobs WHERE error_code = :c AND status = :s ORDER BY id LIMIT :n"),
                    {"c": code, "s": status, "n": EXAMPLES},
                )
            ]
            errors.append((code, status, int(n), message, examples))
        uncertain = [
            (str(r), str(p), b, c)
            for r, p, b, c in conn.execute(
                text(
                    "SELECT reference_id, project_id, batch_id, error_code FROM jobs "
                    f"WHERE status = '{_UNCERTAIN}' ORDER BY id LIMIT :n"
                ),
                {"n": LISTED_ROWS},
            )
        ]
        blocked = [
            (str(r), str(p), c, m)
            for r, p, c, m in conn.execute(
                text(
                    "SELECT reference_id, project_id, error_code, error_message FROM jobs "
                    f"WHERE status = '{_BLOCKED}' ORDER BY id LIMIT :n"
                ),
                {"n": LISTED_ROWS},
            )
        ]
        manifests = [
            (str(p), int(n), _dt(t))
            for p, n, t in conn.execute(text("SELECT path, row_count, loaded_at FROM manifests ORDER BY id"))
        ]
        names = {
            str(b): str(n)
            for b, n in conn.execute(text("SELECT batch_id, name FROM batches WHERE batch_id IS NOT NULL"))
        }
        platform, fetched = _added_columns(conn, added)
    ordered = sorted(tally.groups.items(), key=lambda kv: -sum(kv[1].values()))
    return ReportData(
        tally.counts,
        first,
        last,
        step,
        throughput,
        measured,
        errors,
        sorted(tally.attempts.items()),
        uncertain,
        blocked,
        [(p, b, c) for (p, b), c in ordered[:LISTED_BATCHES]],
        len(tally.groups),
        tally.projects,
        manifests,
        names,
        platform,
        fetched,
    )


def _throughput(
    conn: Connection, dialect: str, first: dt.datetime | None, last: dt.datetime | None
) -> tuple[bool, int, list[tuple[dt.datetime, int, int, int]]]:
    """(measured, seconds per bucket, buckets): from the activity table when runs wrote to it, else derived."""
    start, end = (_dt(t) for t in conn.execute(text("SELECT MIN(minute), MAX(minute) FROM activity")).one())
    if start is not None:
        step = bucket_seconds(start, end)
        query = (
            f"SELECT {_epoch(dialect, 'minute')} / {step} AS b, SUM(created), SUM(requests), SUM(throttled) "
            "FROM activity GROUP BY b ORDER BY b"
        )
    else:
        step = bucket_seconds(first, last)
        query = (
            f"SELECT {_epoch(dialect, 'updated_at')} / {step} AS b, "
            f"SUM(CASE WHEN status = '{_SUCCEEDED}' AND origin = 'created' THEN 1 ELSE 0 END), "
            "SUM(attempts), SUM(CASE WHEN http_status = 429 THEN 1 ELSE 0 END) "
            "FROM jobs WHERE attempts > 0 OR http_status IS NOT NULL GROUP BY b ORDER BY b"
        )
    buckets = [
        (dt.datetime.fromtimestamp(int(b) * step, dt.UTC).replace(tzinfo=None), int(c or 0), int(r or 0), int(t or 0))
        for b, c, r, t in conn.execute(text(query))
    ]
    return start is not None, step, buckets


@contextmanager
def _small_cache(conn: Connection) -> Iterator[None]:
    """On SQLite, read with a page cache of REPORT_CACHE_KIB instead of the ledger's usual one (sized for
    loads): every scan here reads the table once, so a big cache only holds pages never read again, and
    SQLite's sorter (the GROUP BY) sizes its memory by it too, then spills to a temporary file. That keeps
    the peak memory the same for any size of ledger. The connection's own size is put back after."""
    if conn.dialect.name != "sqlite":
        yield
        return
    before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql(f"PRAGMA cache_size = -{REPORT_CACHE_KIB}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size = {int(before or 0)}")


def _added_columns(conn: Connection, added: list[str]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Columns of later migrations: a "…status" column broken down by value, a "…_at" column counted."""
    platform: dict[str, dict[str, int]] = {}
    fetched: dict[str, int] = {}
    for name in added:
        if name.endswith("status"):
            values = {
                str(v): int(n)
                for v, n in conn.execute(
                    text(
                        f'SELECT "{name}", COUNT(*) FROM jobs WHERE "{name}" IS NOT NULL GROUP BY "{name}" '
                        "ORDER BY COUNT(*) DESC"
                    )
                )
            }
            if values:  # a ledger never synced has the column, all empty: nothing to show
                platform[name] = values
        elif name.endswith("_at"):
            count = text(f'SELECT COUNT(*) FROM jobs WHERE "{name}" IS NOT NULL')
            if n := int(conn.execute(count).scalar_one()):
                fetched[name] = n
    return platform, fetched
