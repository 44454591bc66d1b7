"""Forgetting rows (`uploader forget`), and the counts per project that say which rows are whose.

A row whose job exists, or may exist, at the API is kept unless asked for (`include_created`): forgetting it
loses its job_id (or the chance to look it up), and loading the same reference_id again would send it again.
That is a row with a job_id, or in state succeeded, conflict, uncertain or in_flight, or one a request may
have created (its payload hash is in `sent_hashes`, or a request is in the air). Every other row never
created a job and is simply deleted. Nothing is forgotten while a live run holds rows of the selection.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from uploader.errors import LedgerError
from uploader.ledger.engine import read_tx, reading, write_tx
from uploader.ledger.models import Status
from uploader.ledger.queries import LIVE_WORKER_SECONDS, OWN_HOST_HOLD_SECONDS, _dt, pid_alive
from uploader.ledger.states import utcnow

__all__ = ["ForgetCounts", "Selection", "count_forget", "forget_rows", "manifest_paths", "project_counts"]

#: Status words for the SQL below (f-strings over Status: one spelling of each state).
_IN_FLIGHT = Status.IN_FLIGHT.value
_SUCCEEDED = Status.SUCCEEDED.value
_UNCERTAIN = Status.UNCERTAIN.value
_CONFLICT = Status.CONFLICT.value

#: SQL: the row's job exists or may exist at the API (module docstring).
MAY_HAVE_JOB = (
    f"(job_id IS NOT NULL OR status IN ('{_SUCCEEDED}', '{_CONFLICT}', '{_UNCERTAIN}', '{_IN_FLIGHT}') "
    "OR sent_hashes IS NOT NULL OR attempt_hash IS NOT NULL)"
)
#: reference_ids bound per statement.
_CHUNK = 500


@dataclass(frozen=True)
class Selection:
    """Which rows: every given filter must match. `manifest` is the path the ledger recorded for a load
    (absolute, or "<stdin>"); `reference_ids` None means any."""

    project_id: str | None = None
    statuses: tuple[str, ...] = ()
    reference_ids: tuple[str, ...] | None = None
    manifest: str | None = None

    @property
    def empty(self) -> bool:
        """No filter at all: `forget_rows` refuses it (it would select the whole ledger)."""
        return self.project_id is None and not self.statuses and self.reference_ids is None and self.manifest is None


@dataclass(frozen=True)
class ForgetCounts:
    """Rows of a selection: never created a job, and whose job exists or may (of which with a job_id)."""

    never_created: int = 0
    created: int = 0
    with_job_id: int = 0


def _where(selection: Selection, refs: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """The WHERE clause (without the keyword) and parameters for `selection`, limited to `refs` if given."""
    clauses = ["1 = 1"]
    params: dict[str, Any] = {}
    if selection.project_id is not None:
        clauses.append("project_id = :project")
        params["project"] = selection.project_id
    if selection.statuses:
        names = [f"s{i}" for i in range(len(selection.statuses))]
        clauses.append(f"status IN ({', '.join(':' + n for n in names)})")
        params.update(zip(names, selection.statuses))
    if selection.manifest is not None:
        clauses.append("manifest_id IN (SELECT id FROM manifests WHERE path = :manifest)")
        params["manifest"] = selection.manifest
    if selection.reference_ids is not None:
        names = [f"r{i}" for i in range(len(refs))]
        clauses.append(f"reference_id IN ({', '.join(':' + n for n in names)})" if names else "1 = 0")
        params.update(zip(names, refs))
    return " AND ".join(clauses), params


def _parts(selection: Selection) -> Iterator[tuple[str, dict[str, Any]]]:
    """The selection as one WHERE clause, or one per chunk of its reference_ids."""
    if selection.reference_ids is None:
        yield _where(selection, ())
        return
    refs = sorted(set(selection.reference_ids))
    for i in range(0, max(len(refs), 1), _CHUNK):
        yield _where(selection, refs[i : i + _CHUNK])


def _count(conn: Connection, selection: Selection) -> ForgetCounts:
    never = created = with_id = 0
    for where, params in _parts(selection):
        row = conn.execute(
            text(
                f"SELECT COALESCE(SUM(CASE WHEN {MAY_HAVE_JOB} THEN 0 ELSE 1 END), 0), "
                f"COALESCE(SUM(CASE WHEN {MAY_HAVE_JOB} THEN 1 ELSE 0 END), 0), COUNT(job_id) "
                f"FROM jobs WHERE {where}"
            ),
            params,
        ).one()
        never, created, with_id = never + int(row[0]), created + int(row[1]), with_id + int(row[2])
    return ForgetCounts(never, created, with_id)


def count_forget(engine: Engine, selection: Selection) -> ForgetCounts:
    """What `forget_rows` would remove: rows that never created a job, and rows whose job exists or may."""
    with read_tx(engine) as conn:
        return _count(conn, selection)


def _live_holders(conn: Connection, selection: Selection, now: dt.datetime) -> int:
    """Live runs holding leased rows of the selection (`holder_alive`)."""
    host = socket.gethostname()
    owners: set[str] = set()
    for where, params in _parts(selection):
        rows = conn.execute(
            text(
                "SELECT j.lease_owner, MAX(j.lease_expires_at), w.hostname, w.pid, w.heartbeat_at "
                f"FROM (SELECT lease_owner, lease_expires_at FROM jobs WHERE status = '{_IN_FLIGHT}' AND {where}) j "
                "JOIN workers w ON w.owner = j.lease_owner WHERE w.stopped_at IS NULL "
                "GROUP BY j.lease_owner, w.hostname, w.pid, w.heartbeat_at"
            ),
            params,
        )
        owners.update(
            owner
            for owner, expires, hostname, pid, beat in rows
            if holder_alive(_dt(expires), _dt(beat), now, hostname == host and pid_alive(pid))
        )
    return len(owners)


def holder_alive(
    lease_expires: dt.datetime | None, heartbeat: dt.datetime | None, now: dt.datetime, process_alive_here: bool
) -> bool:
    """Whether a run holding rows is alive: its lease unexpired and its heartbeat recent by the clock, or its
    process alive on this host (a clock stepped forward since it stamped them makes both look old)."""
    if heartbeat is None:
        return False
    if process_alive_here and heartbeat > now - dt.timedelta(seconds=OWN_HOST_HOLD_SECONDS):
        return True
    recent = heartbeat > now - dt.timedelta(seconds=LIVE_WORKER_SECONDS)
    return recent and lease_expires is not None and lease_expires > now


def forget_rows(engine: Engine, selection: Selection, *, include_created: bool = False) -> ForgetCounts:
    """Delete the selection's rows that never created a job, and with `include_created` those whose job
    exists or may too; returns what was deleted. In one write transaction, refused (LedgerError) while a
    live run holds rows of the selection. Every earlier load stops counting as loaded (the ledger no longer
    holds its rows), so loading a manifest again brings forgotten rows back as new."""
    if selection.empty:
        raise ValueError("forget needs at least one filter")
    with write_tx(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")  # no claim in between
        now = utcnow()
        live = _live_holders(conn, selection, now)
        if live:
            raise LedgerError(
                f"{live} running `uploader run` hold rows of this selection; stop them (or wait for them to "
                "finish), then forget again"
            )
        counts = _count(conn, selection)
        keep = "" if include_created else f" AND NOT {MAY_HAVE_JOB}"
        for where, params in _parts(selection):
            conn.execute(text(f"DELETE FROM jobs WHERE {where}{keep}"), params)
        if counts.never_created or (include_created and counts.created):
            conn.execute(text("UPDATE manifests SET sha256 = ''"))  # no identical reload may be skipped now
    if include_created:
        return counts
    return ForgetCounts(counts.never_created, 0, 0)


def manifest_paths(engine: Engine) -> list[str]:
    """The paths the ledger recorded for its loads, each once, in load order."""
    with read_tx(engine) as conn:
        return list(dict.fromkeys(str(p) for (p,) in conn.execute(text("SELECT path FROM manifests ORDER BY id"))))


def project_counts(source: Engine | Connection) -> dict[str, dict[str, int]]:
    """Rows per project and state (every state present), projects in name order (`source`: as `reading`)."""
    out: dict[str, dict[str, int]] = {}
    with reading(source) as conn:
        for project, status, n in conn.execute(
            text("SELECT project_id, status, COUNT(*) FROM jobs GROUP BY project_id, status ORDER BY project_id")
        ):
            out.setdefault(project, {s.value: 0 for s in Status})[status] = n
    return out
