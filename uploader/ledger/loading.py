"""The load's SQL on the ledger's own tables: the manifest record, the merge of staging into `jobs`, and the
straight insert of an empty ledger's first load.

Statements are text (SQLAlchemy `text()` or a bare sqlite3 connection, as uploader.load runs them) with
their status words taken from `Status`. The staging tables' SQL is in uploader.ledger.staging.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from uploader.ledger.staging import slice_rows
from uploader.ledger.states import Status

__all__ = [
    "ALREADY_LOADED",
    "JOBS_ANY",
    "JOB_COLUMNS",
    "LOCK_JOBS",
    "MANIFEST_SET_ROWS",
    "MERGE_CHANGED",
    "MERGE_COUNTS",
    "MERGE_NEW",
    "PLAN_COUNTS",
    "PLAN_SENDABLE",
    "RECORD_MANIFEST",
    "insert_new",
    "manifest_path_text",
    "manifest_row",
    "merge_examples",
]

_PENDING = Status.PENDING.value
#: The statuses whose rows a reload may give a new payload: nothing was created from them yet.
_REPLACEABLE = f"('{Status.PENDING.value}', '{Status.FAILED.value}', '{Status.BLOCKED.value}')"


def _replaceable(job: str) -> str:
    """SQL: ledger row `job` may take staging row `s`'s payload: its status is replaceable, and the manifest does
    not move it to another batch after an earlier send may have created its job (sent_hashes) — that job is
    found, and a twin refused, only in the batch the row was sent to, so such a row is held back as a conflict
    and keeps its batch and payload."""
    moved = (
        f"({job}.sent_hashes IS NOT NULL AND {job}.sent_hashes <> '' AND s.batch_id IS NOT NULL "
        f"AND ({job}.batch_id IS NULL OR LOWER({job}.batch_id) <> LOWER(s.batch_id)))"
    )
    return f"({job}.status IN {_REPLACEABLE} AND NOT {moved})"


#: Whether the ledger holds any job.
JOBS_ANY = "SELECT 1 FROM jobs LIMIT 1"

#: The last load of this very file with these options (:sha, :opt), if no later load added or changed a row:
#: only then does the ledger still hold exactly its payloads (M1, then an edited M2, then M1 again must merge
#: M1) — and, when it held rows back as conflicts, if no row of another load became replaceable since (a
#: retry, a job found gone): such a row may be one it held back, whose payload it must now give. Gives
#: (row_count, conflicts, conflict_examples).
ALREADY_LOADED = f"""
SELECT m.row_count, m.conflicts, m.conflict_examples FROM manifests m
WHERE m.sha256 = :sha AND m.options_hash = :opt
  AND NOT EXISTS (SELECT 1 FROM manifests later WHERE later.id > m.id AND later.changed > 0)
  AND (m.conflicts = 0 OR NOT EXISTS (
    SELECT 1 FROM jobs j WHERE j.status IN {_REPLACEABLE} AND j.updated_at >= m.loaded_at
      AND (j.manifest_id IS NULL OR j.manifest_id <> m.id)))
ORDER BY m.id DESC LIMIT 1
"""

#: The record of a loaded manifest (values: manifest_row), for a SQLAlchemy connection or a bare sqlite3 one.
RECORD_MANIFEST = (
    "INSERT INTO manifests (path, size, sha256, options_hash, row_count, loaded_at, conflicts, conflict_examples, "
    "changed) VALUES (:p, :s, :h, :o, :n, :t, :c, :ce, :ch) RETURNING id"
)
#: A bulk load's record once its rows are in: (row_count, changed, id), bound by position.
MANIFEST_SET_ROWS = "UPDATE manifests SET row_count = ?, changed = ? WHERE id = ?"


def manifest_path_text(path: Path) -> str:
    """The text the ledger records for a manifest: its absolute path, with each byte of the name that is not
    UTF-8 (`caf\\xe9.csv` from a Windows zip or an old share) written as `\\xe9`, since the ledger's text takes
    only valid UTF-8. The same file always gives the same text, so a reload is still recognised."""
    return os.fsencode(path.absolute()).decode("utf-8", "backslashreplace")


def manifest_row(
    path: Path,
    size: int,
    sha: str,
    options_hash: str,
    rows: int,
    loaded_at: object,
    conflicts: int = 0,
    conflict_examples: Sequence[str] = (),
    changed: int = 0,
    label: str | None = None,
) -> dict[str, object]:
    """RECORD_MANIFEST's values (the conflicts' examples as a JSON list). `changed`: rows the load added or
    whose payload it updated, which makes an identical reload of any earlier manifest compare its rows.
    The manifest is recorded by its absolute path, or by `label` (a manifest read from stdin)."""
    return {
        "p": label or manifest_path_text(path),
        "s": size,
        "h": sha,
        "o": options_hash,
        "n": rows,
        "t": loaded_at,
        "c": conflicts,
        "ce": json.dumps(list(conflict_examples)) if conflicts else None,
        "ch": changed,
    }


# --- the merge of staging into jobs ----------------------------------------------------------------------

#: PostgreSQL: a self-conflicting table lock, so a merge's counts hold until it commits (readers go on;
#: claims and other loads wait). SQLite gets the same from BEGIN IMMEDIATE.
LOCK_JOBS = "LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE"

#: Staging rows by what the merge does with them: (new, unchanged, updated, conflicts).
MERGE_COUNTS = f"""
SELECT
  COALESCE(SUM(CASE WHEN j.id IS NULL THEN 1 ELSE 0 END), 0),
  COALESCE(SUM(CASE WHEN j.body_hash = s.body_hash THEN 1 ELSE 0 END), 0),
  COALESCE(SUM(CASE WHEN j.body_hash <> s.body_hash AND {_replaceable("j")} THEN 1 ELSE 0 END), 0),
  COALESCE(SUM(CASE WHEN j.body_hash <> s.body_hash AND NOT {_replaceable("j")} THEN 1 ELSE 0 END), 0)
FROM staging s LEFT JOIN jobs j ON j.project_id = s.project_id AND j.reference_id = s.reference_id
"""


def merge_examples(updated: bool, limit: int) -> str:
    """The first `limit` reference_ids (in manifest order) whose payload changed: of rows the merge updates
    (`updated`), or else of rows in conflict (a job may exist already, so the ledger keeps its payload)."""
    op = "" if updated else "NOT"
    return f"""
SELECT s.reference_id FROM staging s JOIN jobs j
  ON j.project_id = s.project_id AND j.reference_id = s.reference_id
WHERE j.body_hash <> s.body_hash AND {op} {_replaceable("j")}
ORDER BY s.line LIMIT {int(limit)}
"""


def _reloaded_batch(job: str) -> str:
    """SQL: the batch of ledger row `job` once staging row `s` is merged into it: the manifest's, or, when it
    names none, the batch the row was sent to if an earlier send may have created its job (sent_hashes, or
    attempts made): that job is found, and its changed payload told, only by listing that batch. A row never
    sent gets none, and so the batch the next run names."""
    sent = f"{job}.sent_hashes IS NOT NULL OR {job}.attempts > 0"
    return f"COALESCE(s.batch_id, CASE WHEN {sent} THEN {job}.batch_id END)"


#: New payloads for rows nothing was created from yet, back to pending (:now, :mid the manifest's id).
MERGE_CHANGED = f"""
UPDATE jobs SET body = s.body, body_hash = s.body_hash, extra = s.extra, work_flow_id = s.work_flow_id,
  batch_id = {_reloaded_batch("jobs")}, status = '{_PENDING}', attempts = 0, not_before = NULL, error_code = NULL,
  error_message = NULL, error_details = NULL, http_status = NULL, checked_at = NULL, expires_at = NULL,
  updated_at = :now,
  manifest_id = :mid, manifest_line = s.line
FROM staging s
WHERE jobs.project_id = s.project_id AND jobs.reference_id = s.reference_id
  AND jobs.body_hash <> s.body_hash AND {_replaceable("jobs")}
"""

#: The manifest's own columns (`extra`: never sent) of rows whose payload is unchanged, whatever their state:
#: a corrected note reaches export. Its row count joins the load's `changed`.
MERGE_EXTRA = """
UPDATE jobs SET extra = s.extra
FROM staging s
WHERE jobs.project_id = s.project_id AND jobs.reference_id = s.reference_id
  AND jobs.body_hash = s.body_hash AND COALESCE(jobs.extra, '') <> COALESCE(s.extra, '')
"""

#: The staging rows the ledger does not have yet, as pending jobs (:now, :mid the manifest's id).
MERGE_NEW = f"""
INSERT INTO jobs (project_id, reference_id, work_flow_id, batch_id, body, body_hash, extra, status, recovered,
  attempts, lease_token, created_at, updated_at, manifest_id, manifest_line)
SELECT s.project_id, s.reference_id, s.work_flow_id, s.batch_id, s.body, s.body_hash, s.extra, '{_PENDING}', false,
  0, 0, :now, :now, :mid, s.line
FROM staging s WHERE true
ON CONFLICT (project_id, reference_id) DO NOTHING
"""

# --- an empty ledger's first load, on a bare sqlite3 connection ------------------------------------------

JOB_COLUMNS = (
    "project_id, reference_id, work_flow_id, batch_id, body, body_hash, extra, status, recovered, attempts, "
    "lease_token, created_at, updated_at, manifest_id, manifest_line"
)


def insert_new(stamp: str, mid: int, slice_name: str | None = None) -> str:
    """INSERT of new pending rows, the per-load constants written into the SQL (fewer values to bind per
    row): `stamp` the time, `mid` the manifest's id. Without `slice_name`, binds (project_id, reference_id,
    work_flow_id, batch_id, body, body_hash, extra, line) by position; with it, takes the rows of that
    attached scratch file (binds as slice_rows). Duplicates are skipped, which the caller sees in the row
    count."""
    constants = f"'{_PENDING}', 0, 0, 0, '{stamp}', '{stamp}', {int(mid)}"
    if slice_name is None:
        values = f"VALUES (?, ?, ?, ?, ?, ?, ?, {constants}, ?)"
    else:
        values = (
            f"SELECT project_id, reference_id, work_flow_id, batch_id, body, body_hash, extra, {constants}, "
            f"line FROM ({slice_rows(slice_name)}) WHERE true"
        )
    return f"INSERT INTO jobs ({JOB_COLUMNS}) {values} ON CONFLICT (project_id, reference_id) DO NOTHING"


# --- a plan: what a load and a run would do, read only ---------------------------------------------------------

#: Beyond MERGE_COUNTS, for `uploader plan`: (unchanged rows still pending, unchanged rows blocked, unchanged
#: rows in conflict or uncertain, pending rows of the ledger that this manifest does not name).
PLAN_COUNTS = f"""
SELECT
  (SELECT COUNT(*) FROM staging s JOIN jobs j ON j.project_id = s.project_id AND j.reference_id = s.reference_id
   WHERE j.body_hash = s.body_hash AND j.status = '{_PENDING}'),
  (SELECT COUNT(*) FROM staging s JOIN jobs j ON j.project_id = s.project_id AND j.reference_id = s.reference_id
   WHERE j.body_hash = s.body_hash AND j.status = '{Status.BLOCKED.value}'),
  (SELECT COUNT(*) FROM staging s JOIN jobs j ON j.project_id = s.project_id AND j.reference_id = s.reference_id
   WHERE j.body_hash = s.body_hash AND j.status IN ('{Status.CONFLICT.value}', '{Status.UNCERTAIN.value}')),
  (SELECT COUNT(*) FROM jobs j WHERE j.status = '{_PENDING}' AND NOT EXISTS
     (SELECT 1 FROM staging s WHERE s.project_id = j.project_id AND s.reference_id = j.reference_id))
"""

#: (reference_id, payload, batch_id) of the manifest's rows a run would send after the load — new, changed
#: (and replaceable), or unchanged and still pending — in manifest order.
PLAN_SENDABLE = f"""
SELECT s.reference_id, s.body, CASE WHEN j.id IS NULL THEN s.batch_id ELSE {_reloaded_batch("j")} END
FROM staging s LEFT JOIN jobs j ON j.project_id = s.project_id AND j.reference_id = s.reference_id
WHERE j.id IS NULL OR (j.body_hash <> s.body_hash AND {_replaceable("j")})
  OR (j.body_hash = s.body_hash AND j.status = '{_PENDING}')
ORDER BY s.line
"""
