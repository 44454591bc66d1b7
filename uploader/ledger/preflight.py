"""The ledger's side of the attachment preflight: verdicts per distinct URL, and the `blocked` state.

A verdict is kept per URL (table `urls`, keyed by the URL's sha256), not per row: a URL shared by many rows
is checked once, and a rerun checks only URLs never checked or checked before a cut-off. Which URLs a row
uses is read from its payload by the caller (the payload's shape is the API's business, not the ledger's).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, DateTime, Engine, Integer, Text, text

from uploader.ledger.engine import read_tx, reading, write_tx
from uploader.ledger.models import Status
from uploader.ledger.states import utcnow

__all__ = [
    "BlockedRow",
    "UrlVerdict",
    "block_rows",
    "blocked_rows",
    "expiring_rows",
    "never_checked",
    "pending_containing",
    "pending_payloads",
    "pending_signed_payloads",
    "record_verdicts",
    "release_blocked",
    "store_preflight",
    "url_hash",
    "url_verdict_counts",
    "verdicts_since",
]

#: Rows read per page of `pending_payloads`, and keys bound per statement.
_PAGE = 2000
_CHUNK = 500

# {jobs}: on SQLite `jobs NOT INDEXED`, so that a page is a range of the primary key read in order: through
# the (status, not_before, id) index SQLite would visit and sort every remaining pending row for each page.
# Pages cover only the span of ids that holds pending rows (`_pending_span`, read through that index), so a
# ledger with few or no pending rows is not scanned whole.
_PENDING_PAGE = (
    f"SELECT id, reference_id, body FROM {{jobs}} WHERE status = '{Status.PENDING.value}' AND id > :after "
    "AND id <= :last AND (checked_at IS NULL{recheck}) ORDER BY id LIMIT :n"
)
_PENDING_SPAN = text(f"SELECT min(id), max(id) FROM jobs WHERE status = '{Status.PENDING.value}'")
# The writes of a preflight go to the driver's executemany with positional rows (`?`, or `%s` on PostgreSQL):
# SQLAlchemy's per-row parameter processing cost more CPU than the statements themselves.
_UPSERT = (
    "INSERT INTO urls (url_hash, url, verdict, detail, http_status, content_type, length, checked_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (url_hash) DO UPDATE SET verdict = excluded.verdict, detail = excluded.detail, "
    "http_status = excluded.http_status, content_type = excluded.content_type, length = excluded.length, "
    "checked_at = excluded.checked_at"
)
_BLOCK = (
    f"UPDATE jobs SET status = '{Status.BLOCKED.value}', error_code = ?, error_message = ?, "
    "error_details = NULL, http_status = NULL, checked_at = ?, updated_at = ? "
    f"WHERE id = ? AND status = '{Status.PENDING.value}'"
)
_VERDICTS = (
    "SELECT url_hash, url, verdict, detail, http_status, content_type, length, checked_at FROM urls WHERE url_hash IN"
)
_MARK_CHECKED = f"UPDATE jobs SET checked_at = ?, expires_at = ? WHERE id = ? AND status = '{Status.PENDING.value}'"
_EXPIRING = text(
    f"SELECT id, reference_id, expires_at FROM jobs WHERE status = '{Status.PENDING.value}' "
    "AND expires_at IS NOT NULL AND expires_at < :limit ORDER BY id"
).columns(id=Integer, reference_id=Text, expires_at=DateTime)
_NEVER_CHECKED = text(f"SELECT COUNT(*) FROM jobs WHERE status = '{Status.PENDING.value}' AND checked_at IS NULL")
_RELEASE = text(
    f"UPDATE jobs SET status = '{Status.PENDING.value}', error_code = NULL, error_message = NULL, "
    f"checked_at = NULL, expires_at = NULL, updated_at = :now WHERE status = '{Status.BLOCKED.value}'"
)
_RELEASE_CODE = text(
    f"UPDATE jobs SET status = '{Status.PENDING.value}', error_code = NULL, error_message = NULL, "
    f"checked_at = NULL, expires_at = NULL, updated_at = :now WHERE status = '{Status.BLOCKED.value}' "
    "AND error_code = :code"
)
_FORGET_BAD_VERDICTS = text("DELETE FROM urls WHERE verdict <> 'ok'")
_BLOCKED = text(
    f"SELECT reference_id, project_id, error_code, error_message FROM jobs WHERE status = '{Status.BLOCKED.value}' "
    "ORDER BY id LIMIT :n"
)
_VERDICT_COUNTS = text("SELECT verdict, COUNT(*) FROM urls GROUP BY verdict ORDER BY verdict")


class UrlVerdict(NamedTuple):
    """One URL's preflight verdict as stored."""

    url: str
    verdict: str
    detail: str
    http_status: int | None
    content_type: str | None
    length: int | None
    checked_at: dt.datetime


class BlockedRow(NamedTuple):
    reference_id: str
    project_id: str
    code: str | None
    message: str | None


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def pending_containing(engine: Engine, needles: Mapping[str, str | None]) -> set[str]:
    """Which needles occur in the body of some pending row that does not also hold the needle's `unless`
    text (plain substrings, no LIKE wildcards): one query each, ending at the first match (e.g. whether any
    pending row holds an s3:// URL)."""
    found = set()
    with read_tx(engine) as conn:
        for needle, unless in needles.items():
            sql = f"SELECT 1 FROM jobs WHERE status = '{Status.PENDING.value}' AND body LIKE :pattern"
            if unless is not None:
                sql += " AND body NOT LIKE :unless"
            row = conn.execute(text(sql + " LIMIT 1"), {"pattern": f"%{needle}%", "unless": f"%{unless}%"}).first()
            if row is not None:
                found.add(needle)
    return found


def pending_bodies_holding(
    engine: Engine, needle: str, unless: str | None = None, page: int = _PAGE
) -> Generator[list[str], None, None]:
    """The bodies of the pending rows that hold `needle` in any letter case (and not `unless`), a page at a
    time, from one query read as it goes (stop early by closing the iterator): the rows a cheap substring test
    names, for a closer look at each (e.g. whether an `s3://` is in an attachment field or only in a caption)."""
    like = "ILIKE" if engine.dialect.name == "postgresql" else "LIKE"  # SQLite's LIKE ignores ASCII case
    sql = f"SELECT body FROM jobs WHERE status = '{Status.PENDING.value}' AND body {like} :pattern"
    if unless is not None:
        sql += f" AND body NOT {like} :unless"
    with read_tx(engine) as conn:
        result = conn.execute(text(sql), {"pattern": f"%{needle}%", "unless": f"%{unless}%"})
        while rows := result.fetchmany(page):
            yield [str(body) for (body,) in rows]


def pending_payloads(
    engine: Engine, since: dt.datetime | None = None, page: int = _PAGE
) -> Iterator[list[tuple[int, str, str]]]:
    """(id, reference_id, payload) of every pending row whose attachments were never checked (or checked
    before `since`), a page at a time in id order (memory flat)."""
    jobs = "jobs NOT INDEXED" if engine.dialect.name == "sqlite" else "jobs"
    query = text(_PENDING_PAGE.format(jobs=jobs, recheck="" if since is None else " OR checked_at < :since"))
    after, last = _pending_span(engine)
    while after < last:
        with read_tx(engine) as conn:
            params = {"after": after, "last": last, "n": page, "since": since}
            rows = [(int(i), str(r), str(b)) for i, r, b in conn.execute(query, params)]
        if not rows:
            return
        yield rows
        after = rows[-1][0]


#: Text every signed URL's query holds (each scheme's signature field has one of them; manifest.signed).
_SIGNED_PAGE = (
    f"SELECT id, body FROM {{jobs}} WHERE status = '{Status.PENDING.value}' AND id > :after AND id <= :last "
    "AND ({body} LIKE '%sig%' OR {body} LIKE '%credential%') ORDER BY id LIMIT :n"
)


def pending_signed_payloads(engine: Engine, page: int = _PAGE) -> Iterator[list[str]]:
    """The payloads of pending rows that may hold a signed URL (their text has `sig` or `credential` in any
    case), a page at a time (memory flat): one scan of the pending rows, and only those few parsed."""
    sqlite = engine.dialect.name == "sqlite"  # SQLite's LIKE ignores ASCII case; PostgreSQL's does not
    query = text(
        _SIGNED_PAGE.format(jobs="jobs NOT INDEXED" if sqlite else "jobs", body="body" if sqlite else "lower(body)")
    )
    after, last = _pending_span(engine)
    while after < last:
        with read_tx(engine) as conn:
            rows = [(int(i), str(b)) for i, b in conn.execute(query, {"after": after, "last": last, "n": page})]
        if not rows:
            return
        yield [b for _, b in rows]
        after = rows[-1][0]


def _pending_span(engine: Engine) -> tuple[int, int]:
    """(first pending id - 1, last pending id): the `after`/`last` bounds of a scan of the pending rows
    ((0, 0) when there are none)."""
    with read_tx(engine) as conn:
        first, last = conn.execute(_PENDING_SPAN).one()
    return (0, 0) if first is None else (int(first) - 1, int(last))


def expiring_rows(engine: Engine, limit: dt.datetime) -> list[tuple[int, str, dt.datetime]]:
    """(id, reference_id, expiry) of the pending rows checked earlier whose signed URL expires before `limit`."""
    with read_tx(engine) as conn:
        return [(int(i), str(r), e) for i, r, e in conn.execute(_EXPIRING, {"limit": limit})]


def verdicts_since(engine: Engine, urls: Iterable[str], since: dt.datetime | None) -> dict[str, UrlVerdict]:
    """The stored verdicts of `urls` checked at or after `since` (any time if None), by URL."""
    by_hash = {url_hash(u): u for u in urls}
    hashes = sorted(by_hash)
    out: dict[str, UrlVerdict] = {}
    with read_tx(engine) as conn:
        when = _read_time(conn)
        for i in range(0, len(hashes), _CHUNK):
            part = hashes[i : i + _CHUNK]
            sql = f"{_VERDICTS} ({', '.join('?' * len(part))})"
            for h, url, verdict, detail, status, ctype, length, raw in _driver(conn, sql, tuple(part)):
                checked = when(raw)
                if since is None or checked >= since:
                    out[by_hash[h]] = UrlVerdict(url, verdict, detail, status, ctype, length, checked)
    return out


def record_verdicts(engine: Engine, verdicts: Sequence[UrlVerdict]) -> None:
    """Store (or replace) the verdicts, in one transaction."""
    store_preflight(engine, verdicts)


def block_rows(
    engine: Engine, blocks: Sequence[tuple[int, str, str]], good: Sequence[tuple[int, dt.datetime | None]] = ()
) -> int:
    """pending → blocked for each (row id, error code, message), and the `good` (row id, earliest expiry of its
    signed URLs) marked checked, in one transaction; a row no longer pending is left alone. Returns how many
    rows were blocked."""
    return store_preflight(engine, (), blocks, good)


def store_preflight(
    engine: Engine,
    verdicts: Sequence[UrlVerdict],
    blocks: Sequence[tuple[int, str, str]] = (),
    good: Sequence[tuple[int, dt.datetime | None]] = (),
) -> int:
    """What a preflight learnt, in one transaction: the verdicts stored (or replaced) first, so that a row is
    never blocked on a verdict not stored; then as `block_rows`. Returns how many rows were blocked."""
    if not verdicts and not blocks and not good:
        return 0
    now = utcnow()
    with write_tx(engine) as conn:
        time = DateTime().dialect_impl(conn.dialect).bind_processor(conn.dialect) or _same  # as SQLAlchemy binds it
        stamp = time(now)
        if verdicts:
            _executemany(
                conn,
                _UPSERT,
                [(url_hash(v.url), v.url, v.verdict, v.detail, *v[3:6], time(v.checked_at)) for v in verdicts],
            )
        if good:
            _executemany(conn, _MARK_CHECKED, [(stamp, time(e) if e else None, i) for i, e in good])
        if not blocks:
            return 0
        return _executemany(conn, _BLOCK, [(c, m, stamp, stamp, i) for i, c, m in blocks])


def _executemany(conn: Connection, sql: str, rows: list[tuple[object, ...]]) -> int:
    """The driver's executemany of `sql` (`?` placeholders) over positional rows; how many rows it changed."""
    return int(_driver(conn, sql, rows).rowcount)


def _driver(conn: Connection, sql: str, params: list[tuple[object, ...]] | tuple[object, ...]) -> Any:
    """`sql` with `?` placeholders (`%s` on PostgreSQL) and positional parameters, straight to the driver: its
    CursorResult (rows of any width)."""
    if conn.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    return conn.exec_driver_sql(sql, params)


def _same(value: Any) -> Any:
    return value


def _read_time(conn: Connection) -> Callable[[Any], Any]:
    """A DateTime column's value as SQLAlchemy would read it (SQLite stores text)."""
    processor = DateTime().dialect_impl(conn.dialect).result_processor(conn.dialect, None)
    return processor if processor is not None else _same


def never_checked(source: Engine | Connection) -> int:
    """Pending rows whose attachments no preflight has checked (or whose payload changed since); `source`: as
    `reading`."""
    with reading(source) as conn:
        return int(conn.execute(_NEVER_CHECKED).scalar_one())


def release_blocked(engine: Engine, error_code: str | None = None) -> int:
    """blocked → pending for every blocked row, and forget every verdict that was not ok, so that the next
    preflight checks those URLs again (the user says they fixed them). With `error_code`: only the rows
    blocked with it, and no verdict forgotten (a preflight's own release of rows it held back for the moment).
    Returns how many rows were released."""
    with write_tx(engine) as conn:
        if error_code is not None:
            return int(conn.execute(_RELEASE_CODE, {"now": utcnow(), "code": error_code}).rowcount)
        released = int(conn.execute(_RELEASE, {"now": utcnow()}).rowcount)
        conn.execute(_FORGET_BAD_VERDICTS)
    return released


def blocked_rows(engine: Engine, limit: int = 10) -> list[BlockedRow]:
    """The first `limit` blocked rows, with the URL and reason in their error message."""
    with read_tx(engine) as conn:
        return [BlockedRow(*row) for row in conn.execute(_BLOCKED, {"n": limit})]


def url_verdict_counts(source: Engine | Connection) -> dict[str, int]:
    """How many distinct URLs have each verdict (`source`: as `reading`)."""
    with reading(source) as conn:
        return {str(v): int(n) for v, n in conn.execute(_VERDICT_COUNTS)}
