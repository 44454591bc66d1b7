"""The read side of `uploader report`: every figure aggregated in SQL (GROUP BY), never row by row in Python,
so that a 1,000,000-row ledger reads in a few scans with flat memory.

Throughput comes from the runs' own counts per minute (the activity table: requests, jobs created, HTTP
429s). A ledger whose runs kept none (an older uploader) gets it derived from the jobs: a row counts in the
time bucket of its `updated_at` (its last answer): created jobs (succeeded, origin created), requests (its
attempts) and throttling (its last answer was HTTP 429). The platform's status of the jobs and their results
(`uploader sync`'s columns) are read when the table has them, so the report works with or without them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text

from uploader.ledger.models import Status
from uploader.ledger.queries import read_snapshot
from uploader.ledger.tracking import RESULT_STATUSES

__all__ = ["ReportData", "Results", "bucket_seconds", "report_data"]

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
#: Result errors listed (the most common texts first), and the characters of each text kept.
LISTED_RESULT_ERRORS = 5
RESULT_ERROR_CHARS = 160
#: SQLite page cache while the report reads (KiB): see _small_cache.
REPORT_CACHE_KIB = 2048
_STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)


@dataclass(frozen=True)
class Results:
    """The results of the rows whose platform status is final (`RESULT_STATUSES`): fetched (to a file or
    inline), failed (the last try's error kept) or not fetched yet; the two sets add up to `final`."""

    final: int
    files: int
    inline: int
    failed: int
    #: (error text with the row's job_id and reference_id left out and shortened, rows, an example
    #: reference_id), the most common first, at most LISTED_RESULT_ERRORS
    errors: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def fetched(self) -> int:
        return self.files + self.inline

    @property
    def not_fetched(self) -> int:
        return self.final - self.fetched - self.failed


@dataclass(frozen=True)
class ReportData:
    """What `uploader report` shows, already aggregated."""

    counts: dict[str, int]  #: rows per state, every state (as `uploader status` counts them)
    first: dt.datetime | None
    last: dt.datetime | None
    bucket: int  #: seconds per throughput bucket
    #: (bucket start, created jobs, requests, throttled)
    throughput: list[tuple[dt.datetime, int, int, int]]
    #: When the runs' own counts per minute begin (the activity table); before it, and throughout when None
    #: (a ledger whose runs kept none: an older uploader), counts are derived from each row's last answer
    measured_from: dt.datetime | None
    #: Whether some counts are derived: all (measured_from None), or those of the runs before measured_from
    derived: bool
    #: (code, status, rows, an API message, example reference_ids), the most rows first, at most LISTED_CODES
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
    #: Rows per platform status (`uploader sync`), the most first; empty when no row has one
    platform: dict[str, int] = field(default_factory=dict)
    #: The results of the rows with a final platform status; None when no row has one
    results: Results | None = None
    #: Every (code, status) with rows and those rows, listed in `errors` or not: the page says what it left out
    error_groups: int = 0
    error_rows: int = 0

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
    """Aggregate the ledger for the report (six scans of the jobs at most: times, groups, the platform's
    statuses and results, their errors when some failed, and throughput when runs kept no activity: two
    when some runs kept it and older ones did not)."""
    synced = "platform_status" in {c["name"] for c in inspect(engine).get_columns("jobs")}
    tally = _Tally()
    with read_snapshot(engine) as conn, _small_cache(conn):
        first, last = conn.execute(text("SELECT MIN(created_at), MAX(updated_at) FROM jobs")).one()
        first, last = _dt(first), _dt(last)
        measured_from, derived, step, throughput = _throughput(conn, engine.dialect.name, first, last)
        for batch, project, status, attempts, code, n, message in conn.execute(_GROUPS):
            tally.add(batch, str(project), str(status), int(attempts), code, int(n), message)
        ranked = sorted(tally.errors.items(), key=lambda kv: -kv[1][0])
        errors = []
        for (code, status), (n, message) in ranked[:LISTED_CODES]:
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
        platform, results = _platform(conn) if synced else ({}, None)
    ordered = sorted(tally.groups.items(), key=lambda kv: -sum(kv[1].values()))
    return ReportData(
        tally.counts,
        first,
        last,
        step,
        throughput,
        measured_from,
        derived,
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
        results,
        len(ranked),
        sum(n for n, _ in tally.errors.values()),
    )


def _throughput(
    conn: Connection, dialect: str, first: dt.datetime | None, last: dt.datetime | None
) -> tuple[dt.datetime | None, bool, int, list[tuple[dt.datetime, int, int, int]]]:
    """(when the runs' own counts begin, whether some counts are derived, seconds per bucket, buckets).

    The activity table when runs wrote to it; before the first counting run (runs of an uploader that kept
    none), and for a ledger with no activity at all, counts derived from each row's last answer (`_derived`;
    a row sent again since counts in the activity only)."""
    start, end = (_dt(t) for t in conn.execute(text("SELECT MIN(minute), MAX(minute) FROM activity")).one())
    if start is None:
        step = bucket_seconds(first, last)
        return None, True, step, _buckets(conn.execute(text(_derived(dialect, step, ""))), step)
    before = f"AND updated_at < {_COUNTED_SINCE}"
    earliest = None
    if conn.execute(text(_OLDER_RUNS)).first() is not None:  # else no row can have been sent uncounted
        earliest = _dt(conn.execute(text(f"SELECT MIN(updated_at) FROM jobs WHERE {_SENT} {before}")).scalar())
    step = bucket_seconds(min(start, earliest or start), end)
    measured = (
        f"SELECT {_epoch(dialect, 'minute')} / {step} AS b, SUM(created), SUM(requests), SUM(throttled) "
        "FROM activity GROUP BY b ORDER BY b"
    )
    buckets = _buckets(conn.execute(text(measured)), step)
    if earliest is not None:
        merged: dict[dt.datetime, list[int]] = {}
        for t, *counts in _buckets(conn.execute(text(_derived(dialect, step, before))), step) + buckets:
            merged[t] = [a + b for a, b in zip(merged.get(t, [0, 0, 0]), counts)]
        buckets = [(t, c, r, h) for t, (c, r, h) in sorted(merged.items())]
    return start, earliest is not None, step, buckets


#: When the first run that kept counts started: a row last answered before it was last sent by an older run.
_COUNTED_SINCE = (
    "COALESCE((SELECT MIN(w.started_at) FROM workers w WHERE w.owner IN (SELECT owner FROM activity)), "
    "(SELECT MIN(minute) FROM activity))"
)
#: A run that kept no counts, started before the first one that did: only then can a row's requests be
#: missing from the activity table (the workers table is small; the jobs are scanned only if it says so).
_OLDER_RUNS = (
    f"SELECT 1 FROM workers WHERE started_at < {_COUNTED_SINCE} AND owner NOT IN (SELECT owner FROM activity) LIMIT 1"
)
#: Rows that were sent (or answered): the rows a derived throughput counts.
_SENT = "(attempts > 0 OR http_status IS NOT NULL)"


def _derived(dialect: str, step: int, where: str) -> str:
    """Buckets of `step` seconds derived from each row's last answer: requests are its attempts, created a
    succeeded row whose job this ledger's runs created, throttled a row whose last answer was HTTP 429."""
    return (
        f"SELECT {_epoch(dialect, 'updated_at')} / {step} AS b, "
        f"SUM(CASE WHEN status = '{_SUCCEEDED}' AND origin = 'created' THEN 1 ELSE 0 END), "
        "SUM(attempts), SUM(CASE WHEN http_status = 429 THEN 1 ELSE 0 END) "
        f"FROM jobs WHERE {_SENT} {where} GROUP BY b ORDER BY b"
    )


def _buckets(rows: Iterable[Any], step: int) -> list[tuple[dt.datetime, int, int, int]]:
    return [
        (dt.datetime.fromtimestamp(int(b) * step, dt.UTC).replace(tzinfo=None), int(c or 0), int(r or 0), int(t or 0))
        for b, c, r, t in rows
    ]


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
    yield  # not put back after an error: an interrupt may have invalidated the connection (it is closed then)
    conn.exec_driver_sql(f"PRAGMA cache_size = {int(before or 0)}")


#: One scan for the platform's statuses and, per status, the rows whose result is a file, inline, or failed.
_PLATFORM = text(
    "SELECT platform_status, COUNT(*), "
    "SUM(CASE WHEN result_path IS NOT NULL THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN result_path IS NULL AND result IS NOT NULL THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN result_path IS NULL AND result IS NULL AND result_error IS NOT NULL THEN 1 ELSE 0 END) "
    "FROM jobs WHERE platform_status IS NOT NULL GROUP BY platform_status"
)
_FINAL = ", ".join(f"'{s}'" for s in RESULT_STATUSES)
#: The most common result errors of final rows with no result. Each text names its job (and often the
#: reference_id): both are left out, so that one cause over many rows is one line (an id shorter than 4
#: characters is left in: it would cut words); a text is cut to RESULT_ERROR_CHARS (+1: to know it was cut).
_RESULT_ERRORS = text(
    "SELECT SUBSTR(CASE WHEN LENGTH(reference_id) >= 4 THEN REPLACE(e, reference_id, :gap) ELSE e END, 1, :chars) "
    "AS message, COUNT(*), MIN(reference_id) FROM (SELECT reference_id, CASE WHEN LENGTH(job_id) >= 4 "
    "THEN REPLACE(result_error, job_id, :gap) ELSE result_error END AS e FROM jobs "
    f"WHERE platform_status IN ({_FINAL}) AND result_path IS NULL AND result IS NULL "
    "AND result_error IS NOT NULL) AS failed GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT :n"
)


def _platform(conn: Connection) -> tuple[dict[str, int], Results | None]:
    """Rows per platform status, the most first, and the results of the rows with a final one."""
    statuses: dict[str, int] = {}
    final = files = inline = failed = 0
    for status, n, in_files, in_rows, errors_kept in conn.execute(_PLATFORM):
        statuses[str(status)] = int(n)
        if status in RESULT_STATUSES:
            final += int(n)
            files += int(in_files or 0)
            inline += int(in_rows or 0)
            failed += int(errors_kept or 0)
    ordered = dict(sorted(statuses.items(), key=lambda kv: -kv[1]))
    if not final:
        return ordered, None
    errors: list[tuple[str, int, str]] = []
    if failed:
        params = {"gap": "…", "chars": RESULT_ERROR_CHARS + 1, "n": LISTED_RESULT_ERRORS}
        for message, n, example in conn.execute(_RESULT_ERRORS, params):
            cut = str(message)
            if len(cut) > RESULT_ERROR_CHARS:
                cut = cut[: RESULT_ERROR_CHARS - 1].rstrip() + "…"
            errors.append((cut, int(n), str(example)))
    return ordered, Results(final, files, inline, failed, errors)
