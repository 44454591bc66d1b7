"""After sending: each job's platform status (`uploader sync`) and its result, as the ledger keeps them.

A row is tracked once it has a job_id (succeeded or conflict). Its platform status is stored verbatim with
the time it was first seen; a change of status forgets the result recorded for the earlier one, so the next
sync fetches it again. Rows whose status is in `RESULT_STATUSES` and with no result recorded are due.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, event, text

from uploader.ledger.engine import read_tx, reading, write_tx
from uploader.ledger.models import Status, merged_hashes
from uploader.ledger.transitions import settle_found

__all__ = [
    "ADOPTED",
    "GONE_CODE",
    "RESULT_STATUSES",
    "STATUS_CHARS",
    "Adoption",
    "FetchedResult",
    "ListedPage",
    "TrackedRow",
    "adopt_jobs",
    "keep_result",
    "record_gone",
    "record_listed",
    "record_results",
    "record_statuses",
    "result_files",
    "results_due",
    "results_to_record",
    "small_page_cache",
    "sync_batches",
    "sync_counts",
    "tracked_rows",
]

#: Platform statuses after which a job's result is fetched (the platform may report any of them as final).
RESULT_STATUSES = ("completed", "rejected", "failed")
#: The origin of a row whose job was created elsewhere and recorded by `uploader adopt`.
ADOPTED = "adopted"
#: The longest platform status word kept (the column's size); longer words are cut.
STATUS_CHARS = 255
_TRACKED_STATUSES = (Status.SUCCEEDED.value, Status.CONFLICT.value)
_TRACKED = f"job_id IS NOT NULL AND status IN ('{_TRACKED_STATUSES[0]}', '{_TRACKED_STATUSES[1]}')"
_FINAL = ", ".join(f"'{s}'" for s in RESULT_STATUSES)
_NO_RESULT = "result_path IS NULL AND result IS NULL"

#: (row id, project_id, reference_id, job_id)
TrackedRow = tuple[int, str, str, str]


#: The SQLite page cache of a sync's connections (KiB): a sync reads each row once or twice, so a big cache
#: buys little and its size would follow the ledger's (the engine's default is sized for bulk loads).
SYNC_CACHE_KIB = 2048


@contextmanager
def small_page_cache(engine: Engine, kib: int = SYNC_CACHE_KIB) -> Iterator[None]:
    """Within the block, each SQLite connection taken from `engine`'s pool has a page cache of `kib` KiB; its
    own size is given back when it returns to the pool. (Other databases: nothing changes.)"""
    if engine.dialect.name != "sqlite":
        yield
        return

    def small(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        cursor = dbapi_connection.cursor()
        record.info["cache_size"] = cursor.execute("PRAGMA cache_size").fetchone()[0]
        cursor.execute(f"PRAGMA cache_size = {-int(kib)}")
        cursor.close()

    def back(dbapi_connection: Any, record: Any) -> None:
        size = record.info.pop("cache_size", None)
        if size is not None and dbapi_connection is not None:
            dbapi_connection.execute(f"PRAGMA cache_size = {int(size)}")

    event.listen(engine, "checkout", small)
    event.listen(engine, "checkin", back)
    try:
        yield
    finally:
        event.remove(engine, "checkout", small)
        event.remove(engine, "checkin", back)


def sync_batches(engine: Engine) -> list[tuple[str, str | None]]:
    """Every (project_id, batch_id) holding a tracked row; batch_id None is the project's default batch."""
    with read_tx(engine) as conn:
        rows = conn.execute(
            text(f"SELECT DISTINCT project_id, batch_id FROM jobs WHERE {_TRACKED} ORDER BY project_id, batch_id")
        )
        return [(r[0], r[1]) for r in rows]


def record_statuses(engine: Engine, project_id: str, seen: Sequence[tuple[str, str]], now: dt.datetime) -> int:
    """Record the platform status of jobs {job_id, status} of a project; returns how many changed. A job
    whose status changed loses the result recorded for the earlier status."""
    if not seen:
        return 0
    params = [{"p": project_id, "j": job_id, "s": status[:STATUS_CHARS], "t": now} for job_id, status in seen]
    with write_tx(engine) as conn:
        result = conn.execute(
            text(
                "UPDATE jobs SET platform_status = :s, platform_status_at = :t, result_path = NULL, result = NULL, "
                "result_sha256 = NULL, result_error = NULL "
                "WHERE project_id = :p AND job_id = :j AND (platform_status IS NULL OR platform_status <> :s)"
            ),
            params,
        )
        return max(0, result.rowcount)


@dataclass
class ListedPage:
    """What `record_listed` did with a page of statuses: the tracked rows it matched (their ids), how many
    changed status, how many more are final than before, the rows whose result is now to fetch, and how many
    rows the page named their job for another reference_id (or for two), left unseen."""

    seen: list[int] = field(default_factory=list)
    changed: int = 0
    more_final: int = 0
    due: list[TrackedRow] = field(default_factory=list)
    mismatched: int = 0


#: A tracked row as `record_listed` reads it: (id, reference_id, job_id, platform_status, result_path,
#: whether a result is recorded).
_ListedRow = tuple[int, str, str, str | None, str | None, bool]


def plan_listed(
    rows: Sequence[_ListedRow],
    named: dict[str, tuple[str, str] | None],
    project_id: str,
    present: Callable[[str], bool] | None = None,
) -> tuple[ListedPage, list[tuple[int, str]], list[tuple[str, str | None]]]:
    """The decisions for a page (job_id → (reference_id, status), None for a job the page names twice, for two
    reference_ids) over the rows holding those jobs: the page's outcome, the (row id, new status) to write, and
    the (reference_id, recorded result file) of each row whose status changed away from a final one (its
    result, on disk too, is stale). A row whose job the page names for another reference_id (or two) is
    left unseen: the page or the row's job_id is wrong, and the row's own job read (GET job, which checks
    the reference_id) decides. A final row is due (its result fetched) when it has none recorded, or when
    `present` says its recorded file is not there (deleted, or not in the folder a sync writes to)."""
    page = ListedPage()
    writes: list[tuple[int, str]] = []
    stale: list[tuple[str, str | None]] = []
    for row_id, reference_id, job_id, old, path, has_result in rows:
        if job_id not in named:
            continue
        entry = named[job_id]
        if entry is None or entry[0] != reference_id:
            page.mismatched += 1
            continue
        new = entry[1]
        page.seen.append(row_id)
        changed = old != new
        if changed:
            writes.append((row_id, new))
            page.more_final += (new in RESULT_STATUSES) - (old in RESULT_STATUSES)
            if old in RESULT_STATUSES or path is not None:
                stale.append((reference_id, path))
        if new in RESULT_STATUSES and (
            changed or not has_result or (path is not None and present is not None and not present(path))
        ):
            page.due.append((row_id, project_id, reference_id, job_id))
    page.changed = len(writes)
    return page, writes, stale


#: The rows holding a page's job_ids, tracked or not, of any project (`record_listed` keeps the tracked rows
#: of its project), so that the job_id index is the only one the query can use: given the project or the
#: tracked states too, SQLite (no statistics) may choose the (project_id, reference_id) or the status index
#: and read every row of the project for each page.
_LISTED_ROWS = text(
    "SELECT id, reference_id, job_id, platform_status, result_path, "
    f"NOT ({_NO_RESULT}), project_id, status FROM jobs WHERE job_id IN :ids"
).bindparams(bindparam("ids", expanding=True))


def record_listed(
    engine: Engine,
    project_id: str,
    listed: Sequence[tuple[str, str, str]],
    now: dt.datetime,
    forget: Callable[[list[tuple[str, str | None]]], None] | None = None,
    present: Callable[[str], bool] | None = None,
) -> ListedPage:
    """Record a page of (reference_id, job_id, status) of a project in one transaction (`plan_listed`, which
    `present` informs). A row whose status changed loses its recorded result; `forget` is called with the stale
    results before that is committed, so a stale file is gone before the ledger stops naming it (a kill in
    between leaves a row naming a file that is gone, which the next sync's listing corrects)."""
    named: dict[str, tuple[str, str] | None] = {}
    for reference_id, job_id, status in listed:
        entry = named.setdefault(job_id, (reference_id, status[:STATUS_CHARS]))
        if entry is not None and entry != (reference_id, status[:STATUS_CHARS]):
            named[job_id] = None  # the page contradicts itself: the row's own job read decides
    if not named:
        return ListedPage()
    with write_tx(engine) as conn:
        rows = [
            (r[0], r[1], r[2], r[3], r[4], bool(r[5]))
            for r in conn.execute(_LISTED_ROWS, {"ids": list(named)})
            if r[6] == project_id and r[7] in _TRACKED_STATUSES
        ]
        page, writes, stale = plan_listed(rows, named, project_id, present)
        if stale and forget is not None:
            forget(stale)
        if writes:
            conn.execute(
                text(
                    "UPDATE jobs SET platform_status = :s, platform_status_at = :t, result_path = NULL, "
                    "result = NULL, result_sha256 = NULL, result_error = NULL WHERE id = :i"
                ),
                [{"i": i, "s": s, "t": now} for i, s in writes],
            )
    return page


def tracked_rows(engine: Engine, page: int = 1000) -> Iterator[list[TrackedRow]]:
    """Every tracked row, in id order, read `page` rows at a time (a fresh read each page: memory flat in the
    ledger). The rows are read by id alone and the tracked ones kept in Python: given the tracked states,
    SQLite (no statistics) may read them through the status index and sort them all for each page."""
    last = 0
    while True:
        with read_tx(engine) as conn:
            rows = conn.execute(
                text(
                    "SELECT id, project_id, reference_id, job_id, status FROM jobs WHERE id > :l ORDER BY id LIMIT :n"
                ),
                {"l": last, "n": page},
            ).all()
        if not rows:
            return
        tracked = [(r[0], r[1], r[2], r[3]) for r in rows if r[3] is not None and r[4] in _TRACKED_STATUSES]
        if tracked:
            yield tracked
        last = rows[-1][0]


def results_due(engine: Engine, after_id: int, limit: int) -> list[TrackedRow]:
    """Tracked rows with a final platform status and no result recorded, after row `after_id`, in id order."""
    with read_tx(engine) as conn:
        return [
            (r[0], r[1], r[2], r[3])
            for r in conn.execute(
                text(
                    f"SELECT id, project_id, reference_id, job_id FROM jobs WHERE {_TRACKED} AND id > :a "
                    f"AND platform_status IN ({_FINAL}) AND {_NO_RESULT} ORDER BY id LIMIT :n"
                ),
                {"a": after_id, "n": limit},
            )
        ]


#: One fetched result: (row id, the file it was written to, the result itself when given inline, its sha256,
#: the platform status the job's read gave with it).
FetchedResult = tuple[int, str | None, str | None, str, str]
#: A row as `results_to_record` reads it: (platform status, recorded result file, whether a result is recorded).
_ResultRow = tuple[str | None, str | None, bool]


def keep_result(row: _ResultRow | None, fetched: FetchedResult, present: Callable[[str], bool]) -> str | None:
    """Why a fetched result is not to be recorded (None: record it), pure: the row is gone or no longer tracked,
    or a result is recorded for it meanwhile (another sync's: inline, or a file `present` finds) — "", nothing
    to say; or its platform status is no longer the one the result was read with — the row's result error (the
    next sync fetches the result of the status it then has)."""
    if row is None:
        return ""
    status, path, has_result = row
    if has_result and (path is None or present(path)):
        return ""
    if status != fetched[4][:STATUS_CHARS]:
        return (
            f"the job's status changed while its result was fetched ({fetched[4]!r} when read, {status!r} now): "
            "not recorded; the next sync fetches the result of its status then"
        )
    return None


def results_to_record(
    engine: Engine, fetched: Sequence[FetchedResult], present: Callable[[str], bool]
) -> tuple[list[FetchedResult], list[tuple[int, str]]]:
    """The fetched results still to record (`keep_result`, over the rows as they are now), and (row id, why) of
    those dropped with a reason to record as the row's result error."""
    if not fetched:
        return [], []
    query = text(
        f"SELECT id, platform_status, result_path, NOT ({_NO_RESULT}) FROM jobs WHERE id IN :ids AND {_TRACKED}"
    ).bindparams(bindparam("ids", expanding=True))
    with read_tx(engine) as conn:
        rows = {r[0]: (r[1], r[2], bool(r[3])) for r in conn.execute(query, {"ids": [f[0] for f in fetched]})}
    keep: list[FetchedResult] = []
    dropped: list[tuple[int, str]] = []
    for one in fetched:
        why = keep_result(rows.get(one[0]), one, present)
        if why is None:
            keep.append(one)
        elif why:
            dropped.append((one[0], why))
    return keep, dropped


#: The error code of a row whose job the API no longer knows (`record_gone`).
GONE_CODE = "job_not_found"
#: Origins of a job this ledger's own send created: its payload joins sent_hashes when the job is gone, so that
#: an FS_0001 after a retry (the job was there after all) is a recovery of our own send, not someone else's job.
_OWN_ORIGINS = ("created", "recovered")


_RETRY_GONE = f"; `uploader retry --error-code {GONE_CODE}` sends it again (the API refuses a twin with FS_0001)"
_NO_PAYLOAD = "; it was adopted and has no payload: load the manifest that holds it to send it again"


def record_gone(
    engine: Engine, gone: Sequence[tuple[int, str]], now: dt.datetime, moved: Mapping[int, str] | None = None
) -> int:
    """Rows (row id, job_id) whose job the API says does not exist (deleted at the platform, or never created
    although a creation answer named it): `failed` with `GONE_CODE`, the job_id dropped (kept in the message),
    so the ledger no longer calls them succeeded and `export` hands out no dead job_id. The platform status and
    result of that job go with it, so that a job sent again has its own fetched; `moved` {row id: path} names
    where the caller set a row's result file aside (in the message). Nothing is sent again on its own (the job
    may have been deleted on purpose): `uploader retry --error-code job_not_found` does it, guarded by FS_0001,
    for a row with a payload (an adopted row has none until its manifest is loaded).
    A row that changed meanwhile (another job_id, no longer tracked) is left. Returns how many rows were
    recorded."""
    if not gone:
        return 0
    own = ", ".join(f"'{o}'" for o in _OWN_ORIGINS)
    update = text(
        f"UPDATE jobs SET status = '{Status.FAILED.value}', error_code = '{GONE_CODE}', "
        "error_message = CASE WHEN body = '' THEN :m || :adopted ELSE :m || :retry END, "
        "error_details = NULL, http_status = NULL, job_id = NULL, origin = NULL, not_before = NULL, "
        f"sent_hashes = CASE WHEN origin IN ({own}) THEN {merged_hashes('body_hash')} ELSE sent_hashes END, "
        "platform_status = NULL, platform_status_at = NULL, result_path = NULL, result = NULL, result_sha256 = NULL, "
        "result_error = NULL, "
        f"updated_at = :t WHERE id = :i AND job_id = :j AND {_TRACKED}"
    )
    recorded = 0
    with write_tx(engine) as conn:
        for row_id, job_id in gone:  # one by one: a driver's executemany may not sum its row counts
            kept = (moved or {}).get(row_id)
            message = (
                f"the API does not know its job {job_id} (read by `uploader sync`): deleted at the platform, or "
                "never created although the API answered its creation"
                + (f"; its last result was set aside as {kept}" if kept else "")
            )
            words = {"i": row_id, "j": job_id, "t": now, "m": message, "adopted": _NO_PAYLOAD, "retry": _RETRY_GONE}
            recorded += conn.execute(update, words).rowcount
    return recorded


def result_files(engine: Engine, row_ids: Sequence[int]) -> dict[int, str]:
    """{row id: the result file the ledger names} of those rows that name one."""
    if not row_ids:
        return {}
    query = text("SELECT id, result_path FROM jobs WHERE id IN :ids AND result_path IS NOT NULL").bindparams(
        bindparam("ids", expanding=True)
    )
    with read_tx(engine) as conn:
        return {r[0]: r[1] for r in conn.execute(query, {"ids": list(row_ids)})}


def record_results(engine: Engine, fetched: Sequence[FetchedResult], errors: Sequence[tuple[int, str]] = ()) -> None:
    """Results fetched (their file, or the result itself when the platform gave it inline), each only while
    its row still has the platform status it was read with, and results that could not be fetched (row id,
    why: the next sync tries again), in one transaction."""
    if not fetched and not errors:
        return
    with write_tx(engine) as conn:
        if fetched:
            conn.execute(
                text(
                    "UPDATE jobs SET result_path = :p, result = :r, result_sha256 = :h, "
                    "result_error = NULL WHERE id = :i AND platform_status = :s"
                ),
                [{"i": i, "p": p, "r": r, "h": h, "s": s[:STATUS_CHARS]} for i, p, r, h, s in fetched],
            )
        if errors:
            conn.execute(
                text("UPDATE jobs SET result_error = :e WHERE id = :i"), [{"i": i, "e": e[:2000]} for i, e in errors]
            )


def sync_counts(source: Engine | Connection) -> dict[str, Any]:
    """Tracked rows, how many have a final platform status, how many have their result, and per status
    (`source`: as `reading`)."""
    with reading(source) as conn:
        by_status = {
            str(s): n
            for s, n in conn.execute(
                text(f"SELECT platform_status, count(*) FROM jobs WHERE {_TRACKED} GROUP BY platform_status")
            )
        }
        fetched = conn.execute(text(f"SELECT count(*) FROM jobs WHERE {_TRACKED} AND NOT ({_NO_RESULT})")).scalar()
        errors = conn.execute(
            text(f"SELECT count(*) FROM jobs WHERE {_TRACKED} AND result_error IS NOT NULL AND {_NO_RESULT}")
        ).scalar()
    final = sum(n for s, n in by_status.items() if s in RESULT_STATUSES)
    return {
        "tracked": sum(by_status.values()),
        "final": final,
        "results": fetched or 0,
        "result_errors": errors or 0,
        "by_status": by_status,
    }


@dataclass
class Adoption:
    """What `adopt_jobs` did: rows that took the platform's job_id, rows added for jobs with no row, rows
    that already had that job_id, conflicts (reference_id, what the ledger holds) left unchanged, and why
    the listing of a batch ended before its last page (its jobs past that point were not seen)."""

    adopted: int = 0
    added: int = 0
    known: int = 0
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)


#: Ledger states whose row may take a job_id found on the platform (never sent, or sent without a known job).
_ADOPTABLE = (Status.PENDING.value, Status.FAILED.value, Status.BLOCKED.value, Status.UNCERTAIN.value)


def adopt_jobs(
    engine: Engine, project_id: str, batch_id: str, jobs: Sequence[tuple[str, str, str]], now: dt.datetime
) -> Adoption:
    """Record jobs (reference_id, job_id, status) found in a batch: a row with that reference_id and no job_id
    becomes succeeded with it (origin `adopted`, never sent by us), unless this ledger sent the row before with
    another payload (`settle_found`: a conflict, the job recorded); a job with no row gets a row of its own
    with no payload (never sent); a row holding another job_id, or being sent, is a conflict and is left as
    it is, and so is a job whose job_id a row of another reference_id holds."""
    done = Adoption()
    with write_tx(engine) as conn:
        for reference_id, job_id, status in jobs:
            row = conn.execute(
                text(
                    "SELECT id, status, job_id, sent_hashes, body_hash FROM jobs "
                    "WHERE project_id = :p AND reference_id = :r"
                ),
                {"p": project_id, "r": reference_id},
            ).first()
            words = {
                "p": project_id,
                "r": reference_id,
                "j": job_id,
                "b": batch_id,
                "t": now,
                "s": status[:STATUS_CHARS] or None,
            }
            holder = None if row is not None and row[2] == job_id else _holder(conn, project_id, reference_id, job_id)
            if holder is not None:  # one job is never two rows' (the listing names it for two reference_ids)
                done.conflicts.append((reference_id, f"its job_id {job_id} is recorded for {holder!r}"))
            elif row is None:
                conn.execute(
                    text(
                        "INSERT INTO jobs (project_id, reference_id, work_flow_id, batch_id, body, body_hash, status, "
                        "job_id, recovered, attempts, lease_token, origin, created_at, updated_at, platform_status, "
                        f"platform_status_at) VALUES (:p, :r, '', :b, '', '', '{Status.SUCCEEDED.value}', :j, :f, "
                        f"0, 0, '{ADOPTED}', :t, :t, :s, :t)"
                    ),
                    {**words, "f": False},
                )
                done.added += 1
            elif row[2] == job_id:
                done.known += 1
            elif row[2] is None and row[1] in _ADOPTABLE and row[3]:  # sent before: the job may hold another payload
                settled = settle_found(row[3], row[4])
                conn.execute(
                    text(
                        "UPDATE jobs SET status = :st, job_id = :j, batch_id = :b, recovered = true, origin = :o, "
                        "error_code = :c, error_message = :m, error_details = NULL, not_before = NULL, "
                        "updated_at = :t, platform_status = :s, platform_status_at = :t WHERE id = :i"
                    ),
                    {
                        **words,
                        "i": row[0],
                        "st": settled.status,
                        "o": settled.origin,
                        "c": settled.code,
                        "m": settled.message,
                    },
                )
                if settled.status == Status.SUCCEEDED.value:
                    done.adopted += 1
                else:
                    done.conflicts.append((reference_id, f"{settled.code}: {settled.message}"))
            elif row[2] is None and row[1] in _ADOPTABLE:
                conn.execute(
                    text(
                        f"UPDATE jobs SET status = '{Status.SUCCEEDED.value}', job_id = :j, batch_id = :b, "
                        f"origin = '{ADOPTED}', error_code = NULL, error_message = NULL, error_details = NULL, "
                        "not_before = NULL, updated_at = :t, platform_status = :s, platform_status_at = :t "
                        "WHERE id = :i"
                    ),
                    {**words, "i": row[0]},
                )
                done.adopted += 1
            else:
                done.conflicts.append((reference_id, f"{row[1]} with job_id {row[2]}" if row[2] else str(row[1])))
    return done


def _holder(conn: Connection, project_id: str, reference_id: str, job_id: str) -> str | None:
    """The reference_id of another row of the project that holds `job_id`, if any."""
    row = conn.execute(
        text("SELECT reference_id FROM jobs WHERE project_id = :p AND job_id = :j AND reference_id <> :r LIMIT 1"),
        {"p": project_id, "j": job_id, "r": reference_id},
    ).first()
    return None if row is None else str(row[0])
