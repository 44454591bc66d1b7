"""Adversarial round on schema upgrades: a user who upgrades uploader keeps every word of their ledger.

Old ledgers are made the way an older uploader left them: Alembic brings a fresh SQLite file (or PostgreSQL
database) up to an older revision only, the file is switched to WAL (as every uploader-opened ledger is), and
rows are written with plain SQL valid for that revision's schema, in every state that revision knew. Then the
current code opens it (a real `python -m uploader` process) and each row is compared, column by column, with
what the old schema held (or with what the migration says it becomes).

Findings are `xfail(strict=True)` with a docstring: what happened, what the truth is, why a user would care.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import POSTGRES_ENV, migrate_sqlite

ROOT = Path(__file__).resolve().parents[1]
KEY = "adv-upgrades-key-5e1d"
U = "https://cdn.example.com/img"
HEAD = "0010"
OLD_REVISIONS = ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008"]
STAMP = "2026-01-02 03:04:05.123456"
LATER = "2026-01-03 04:05:06.654321"
FUTURE = "2099-01-01 00:00:00.000000"
BATCH = "6f1c1c5e-7a0b-4c1e-9d51-2b7f3c9a0e11"  # a batch the old run had created (registered with the sandbox)
PG_DEFAULT = "postgresql+psycopg://uploader_test:uploader_test@127.0.0.1:5432/uploader_test"


# --- building old ledgers -----------------------------------------------------------------------------------


def _body(ref: str, batch: str | None) -> str:
    doc: dict[str, Any] = {"reference_id": ref, "work_flow_id": "wf"}
    if batch:
        doc["batch_id"] = batch
    doc["data"] = {"image_url": f"{U}/{ref}.jpg"}
    return json.dumps(doc, separators=(",", ":"))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


#: (reference_id, status, first revision with that state) — every state an old ledger can hold.
STATES = [
    ("r-pending", "pending", 1),
    ("r-backoff", "pending", 1),  # throttled before: attempts > 0, a not_before, the 429 recorded
    ("r-flying-dead", "in_flight", 1),  # the old run died with its request in the air; lease expired
    ("r-ok", "succeeded", 1),
    ("r-recovered", "succeeded", 1),
    ("r-failed", "failed", 1),
    ("r-uncertain", "uncertain", 1),
    ("00123", "succeeded", 1),  # a reference_id and job_id that look like numbers
    ('ünï ✓ "quoted", comma', "failed", 1),
    ("r-conflict", "conflict", 5),
    ("r-adopted", "succeeded", 5),
    ("r-blocked", "blocked", 6),
    ("r-synced", "succeeded", 8),  # `uploader sync` read its platform status and result
]


def old_rows(rev: str) -> list[dict[str, Any]]:
    """The jobs rows of a ledger at revision `rev`, as dicts of that revision's columns."""
    n = int(rev)
    rows = []
    for i, (ref, status, since) in enumerate(STATES, start=1):
        if n < since:
            continue
        batch = None if ref == "r-pending" else BATCH
        body = _body(ref, batch)
        row: dict[str, Any] = {
            "id": i,
            "project_id": "proj",
            "reference_id": ref,
            "work_flow_id": "wf",
            "batch_id": batch,
            "body": body,
            "body_hash": _sha(body),
            "extra": json.dumps({"note": f"note of {ref}", "n": i}),
            "status": status,
            "job_id": None,
            "recovered": 0,
            "error_code": None,
            "error_message": None,
            "error_details": None,
            "http_status": None,
            "attempts": 0,
            "not_before": None,
            "lease_owner": None,
            "lease_token": 0,
            "lease_expires_at": None,
            "created_at": STAMP,
            "updated_at": LATER,
            "manifest_id": 1,
            "manifest_line": i + 1,
        }
        if ref == "r-backoff":
            row |= {"attempts": 2, "not_before": STAMP, "error_code": "rate_limited", "http_status": 429}
            row |= {"error_message": "rate limit exceeded, retry later"}
        elif status == "in_flight":
            row |= {"attempts": 1, "lease_owner": "dead-owner-1", "lease_token": 3, "lease_expires_at": STAMP}
        elif status == "succeeded":
            row |= {"attempts": 1, "job_id": f"JOB-{ref}", "http_status": 200}
            if ref == "r-recovered":
                row |= {"recovered": 1, "attempts": 2}
            if ref == "00123":
                row |= {"job_id": "000123"}
        elif status == "failed":
            row |= {"attempts": 1, "error_code": "FS_0003", "http_status": 400}
            row |= {"error_message": "invalid data\nsecond line, 'quotes' and \"double\""}
            row |= {"error_details": json.dumps([{"code": "FS_0003", "path": "data.image_url"}])}
        elif status == "uncertain":
            row |= {"attempts": 3, "error_code": "FS_0001", "http_status": 409, "error_message": "job exists"}
        elif status == "conflict":
            row |= {"attempts": 1, "job_id": "JOB-r-conflict", "error_code": "created_elsewhere"}
            row |= {"error_message": "the job existed before this ledger sent it"}
        elif status == "blocked":
            row |= {"error_code": "url_http_error", "error_message": f"{U}/r-blocked.jpg: HTTP 404"}
        if n >= 5:
            row["sent_hashes"] = row["body_hash"] if row["attempts"] else None
            row["attempt_hash"] = row["body_hash"] if status == "in_flight" else None
            row["origin"] = None
            if status == "succeeded":
                row["origin"] = "recovered" if row["recovered"] else "created"
            if ref == "r-adopted":
                row |= {"origin": "adopted", "attempts": 0, "sent_hashes": None}
            if status == "conflict":
                row["origin"] = "pre-existing"
        if n >= 6:
            row["checked_at"] = STAMP if status in ("blocked", "succeeded") else None
            row["expires_at"] = FUTURE if ref == "r-ok" else None
        if n >= 8:
            synced = ref == "r-synced"
            row["platform_status"] = "completed" if synced else None
            row["platform_status_at"] = LATER if synced else None
            row["result_path"] = "/results/r-synced.json" if synced else None
            row["result"] = json.dumps({"annotations": [{"label": "cat"}]}) if synced else None
            row["result_sha256"] = "c" * 64 if synced else None
            row["result_error"] = None
        rows.append(row)
    return rows


def other_rows(rev: str) -> dict[str, list[dict[str, Any]]]:
    """The rows of the other tables at revision `rev`."""
    n = int(rev)
    manifest = {
        "id": 1,
        "path": "/data/old manifest.csv",
        "size": 123456,
        "sha256": "a" * 64,
        "options_hash": "b" * 64,
        "row_count": len(old_rows(rev)),
        "loaded_at": STAMP,
    }
    if n >= 4:
        manifest |= {"conflicts": 2, "conflict_examples": json.dumps(["x1", "x2"])}
    if n >= 5:
        manifest["changed"] = 1
    batch = {"id": 1, "project_id": "proj", "name": "2026-01 upload", "batch_id": BATCH, "created_at": STAMP}
    if n >= 5:
        batch |= {"auto": 0, "reserved_by": None}
    worker = {
        "owner": "dead-owner-1",
        "hostname": "old-host",
        "pid": 999_999,
        "started_at": STAMP,
        "heartbeat_at": STAMP,
        "stopped_at": None,
        "sent": 7,
    }
    if n >= 7:
        worker["rate"] = 12.5
    tables: dict[str, list[dict[str, Any]]] = {"manifests": [manifest], "batches": [batch], "workers": [worker]}
    if n >= 6:
        url = f"{U}/r-blocked.jpg"
        tables["urls"] = [
            {
                "url_hash": _sha(url),
                "url": url,
                "verdict": "http_error",
                "detail": "HTTP 404",
                "http_status": 404,
                "content_type": "text/html",
                "length": 3_000_000_000,
                "checked_at": STAMP,
            }
        ]
    return tables


def _insert(db: Any, table: str, rows: list[dict[str, Any]], style: str = "qmark") -> None:
    for row in rows:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row) if style == "qmark" else ", ".join(f"%({c})s" for c in row)
        db.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", tuple(row.values()) if style == "qmark" else row)


def make_old_ledger(path: Path, rev: str) -> None:
    """A SQLite ledger as an uploader at revision `rev` left it: WAL, every state of that revision."""
    migrate_sqlite(path, rev)
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        for table, rows in other_rows(rev).items():
            _insert(db, table, rows)
        _insert(db, "jobs", old_rows(rev))
        db.commit()


def table_rows(path: Path, table: str, key: str = "rowid") -> list[dict[str, Any]]:
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY {key}")]


def revision_of(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [r[0] for r in db.execute("SELECT version_num FROM alembic_version")]


def expected_after_upgrade(rev: str) -> dict[str, list[dict[str, Any]]]:
    """What the old rows must read as once at the head: every old column unchanged, and the columns later
    revisions add filled as their migrations say (0005: sent_hashes for rows that may have been sent, origin
    for succeeded rows, manifests.changed = row_count, batches.auto false)."""
    n = int(rev)
    jobs = []
    for row in old_rows(rev):
        row = dict(row)
        if n < 5:
            sent = row["status"] in ("in_flight", "uncertain") or (
                row["status"] in ("pending", "failed") and row["attempts"] > 0
            )
            row["sent_hashes"] = row["body_hash"] if sent else None
            row["attempt_hash"] = None
            row["origin"] = ("recovered" if row["recovered"] else "created") if row["status"] == "succeeded" else None
        if n < 6:
            row |= {"checked_at": None, "expires_at": None}
        if n < 8:
            row |= dict.fromkeys(
                ["platform_status", "platform_status_at", "result_path", "result", "result_sha256", "result_error"]
            )
        jobs.append(row)
    others = other_rows(rev)
    manifest = others["manifests"][0]
    if n < 4:
        manifest |= {"conflicts": 0, "conflict_examples": None}
    if n < 5:
        manifest["changed"] = manifest["row_count"]
        others["batches"][0] |= {"auto": 0, "reserved_by": None}
    if n < 7:
        others["workers"][0]["rate"] = None
    if n < 6:
        others["urls"] = []
    return {"jobs": jobs, **others, "activity": []}


# --- running commands ---------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, "PLAYMENT_API_KEY": KEY, **extra}


def uploader(*args: str, cwd: Path, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "uploader", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=timeout,
        **kw,
    )


def one_clear_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exit 1 and one error line, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_upgraded_intact(path: Path, rev: str) -> None:
    assert revision_of(path) == [HEAD]
    want = expected_after_upgrade(rev)
    for table, key in [("jobs", "id"), ("manifests", "id"), ("batches", "id"), ("workers", "owner")]:
        got = table_rows(path, table, key)
        assert got == want[table], table
    assert table_rows(path, "urls", "url_hash") == want["urls"]
    assert table_rows(path, "activity", "owner") == []


# --- 1. every row survives the upgrade, column for column ---------------------------------------------------


@pytest.mark.parametrize("rev", OLD_REVISIONS)
def test_status_upgrades_an_old_ledger_keeping_every_column_of_every_row(tmp_path, rev):
    path = tmp_path / "old.db"
    make_old_ledger(path, rev)
    proc = uploader("status", "--json", "--ledger", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_upgraded_intact(path, rev)
    counts: dict[str, int] = {}
    for row in old_rows(rev):
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    report = json.loads(proc.stdout)
    got = {k: v for k, v in report["counts"].items() if v}
    assert got == counts


@pytest.mark.parametrize("rev", ["0001", "0004", "0005", "0008"])
def test_export_of_an_upgraded_ledger_hands_out_every_old_word(tmp_path, rev):
    path = tmp_path / "old.db"
    make_old_ledger(path, rev)
    out = tmp_path / "jobs.jsonl"
    proc = uploader("export", "--format", "jsonl", "-o", str(out), "--ledger", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    old = old_rows(rev)
    assert [e["reference_id"] for e in exported] == [r["reference_id"] for r in old]
    for e, r in zip(exported, old, strict=True):
        assert e["status"] == r["status"]
        assert e["attempts"] == r["attempts"]
        assert e["batch_id"] == r["batch_id"]
        assert e["project_id"] == "proj" and e["work_flow_id"] == "wf"
        assert e["job_id"] == (r["job_id"] if r["status"] in ("succeeded", "conflict") else None), e
        assert e["error_code"] == r["error_code"]
        assert e["error_message"] == r["error_message"]
        assert e["note"] == f"note of {r['reference_id']}" and e["n"] == r["id"]
        if r["status"] == "succeeded":
            assert e["origin"] == ("adopted" if r["reference_id"] == "r-adopted" else
                                   "recovered" if r["recovered"] else "created")  # fmt: skip
        if r.get("platform_status"):
            assert e["platform_status"] == "completed"
            assert e["result_path"] == r["result_path"]
            assert json.loads(e["result"]) == json.loads(r["result"])
    assert revision_of(path) == [HEAD]


# --- 2. after the upgrade, `run` sends only what was pending ------------------------------------------------


#: The rows the old ledger had not settled: a run sends them (an expired lease's row again; an uncertain row
#: only if a complete listing does not find its job).
UNSETTLED = {"r-pending", "r-backoff", "r-flying-dead", "r-uncertain"}


def _sandbox(tmp_path: Path, rev: str) -> Any:
    """The platform as the old run left it: the batch, and a job for every row the old ledger holds a job_id of
    (the in-flight request had created its job too: the next send is refused with FS_0001 and found)."""
    from uploader.sandbox import Sandbox, SandboxConfig

    journal = tmp_path / "platform.jsonl"
    records = [{"kind": "batch", "project_id": "proj", "batch_id": BATCH, "name": "2026-01 upload"}]
    for row in old_rows(rev):
        job_id = row["job_id"] or (str(uuid.uuid4()) if row["reference_id"] == "r-flying-dead" else None)
        if job_id is None:
            continue
        body = json.loads(row["body"])
        records.append(
            {
                "kind": "job",
                "project_id": "proj",
                "batch_id": row["batch_id"],
                "reference_id": row["reference_id"],
                "job_id": job_id,
                "work_flow_id": "wf",
                "priority_weight": 5,
                "data": body["data"],
            }
        )
    journal.write_text("".join(json.dumps(r) + "\n" for r in records))
    return Sandbox(SandboxConfig(api_key=KEY, state_file=journal))


def _job_posts(log: Path) -> list[str]:
    posts = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("reference_id") is not None:
            posts.append(entry["reference_id"])
    return posts


@pytest.mark.slow
@pytest.mark.parametrize("rev", ["0001", "0004", "0005", "0008"])
def test_run_after_the_upgrade_sends_only_the_unsettled_rows(tmp_path, rev):
    path = tmp_path / "old.db"
    make_old_ledger(path, rev)
    log = tmp_path / "requests.jsonl"
    with _sandbox(tmp_path, rev) as box:
        before = {j["reference_id"]: j["job_id"] for j in box.jobs()}
        proc = uploader(
            "run", "--project-id", "proj", "--work-flow-id", "wf", "--ledger", str(path), "--base-url",
            box.base_url, "--log-file", str(log), "--json", "--quiet", cwd=tmp_path,
        )  # fmt: skip
        after = {j["reference_id"]: j["job_id"] for j in box.jobs()}
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 3), proc.stderr
    posted = _job_posts(log)
    assert set(posted) <= UNSETTLED, posted  # nothing settled (succeeded, failed, conflict, blocked) sent
    assert {"r-pending", "r-backoff"} <= set(posted)
    # no job created twice, and every job the old ledger knew is still the one the ledger names
    assert all(after[ref] == job for ref, job in before.items())
    rows = {r["reference_id"]: r for r in table_rows(path, "jobs", "id")}
    for old in old_rows(rev):
        row = rows[old["reference_id"]]
        if old["status"] in ("succeeded", "conflict", "failed", "blocked"):
            for col, value in old.items():
                assert row[col] == value, (old["reference_id"], col)
    for ref in ("r-pending", "r-backoff", "r-flying-dead"):
        assert rows[ref]["status"] == "succeeded" and rows[ref]["job_id"] == after[ref], ref


# --- 3. an interrupted upgrade: as it was, or fully upgraded ------------------------------------------------

BIG = 300_000
_OLD_JOB_COLUMNS = (
    "id, project_id, reference_id, work_flow_id, batch_id, body, body_hash, extra, status, job_id, recovered, "
    "error_code, error_message, error_details, http_status, attempts, not_before, lease_owner, lease_token, "
    "lease_expires_at, created_at, updated_at, manifest_id, manifest_line"
)
_BIG_STATES = ["pending", "in_flight", "succeeded", "failed", "uncertain"]


def _big_rows(n: int) -> Any:
    for i in range(1, n + 1):
        st = _BIG_STATES[i % 5]
        ref = f"ref-{i:07d}"
        body = f'{{"reference_id":"{ref}","work_flow_id":"wf","data":{{"image_url":"{U}/{ref}.jpg"}}}}'
        flying = st == "in_flight"
        yield (
            i, "proj", ref, "wf", BATCH if i % 3 else None, body, _sha(body), f'{{"k":{i}}}' if i % 7 == 0 else None,
            st, f"JOB-{i}" if st == "succeeded" else None, i % 2, "FS_0003" if st == "failed" else None,
            f"bad {i}" if st == "failed" else None, None, 400 if st == "failed" else None, i % 4,
            STAMP if i % 11 == 0 else None, "dead" if flying else None, 1 if flying else 0, STAMP if flying else None,
            STAMP, LATER, 1, i + 1,
        )  # fmt: skip


def make_big_old_ledger(path: Path, rev: str = "0004", n: int = BIG) -> None:
    """`n` rows at `rev` (0004: the upgrade then rewrites every row's sent_hashes and origin, 0005)."""
    migrate_sqlite(path, rev)
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        for table, rows in other_rows(rev).items():
            _insert(db, table, rows)
        marks = ", ".join("?" * 24)
        db.executemany(f"INSERT INTO jobs ({_OLD_JOB_COLUMNS}) VALUES ({marks})", _big_rows(n))
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def big_ledger_state(path: Path, reference: Path) -> str:
    """'old' (exactly the reference) or 'new' (at the head, every old column as the reference has it, the
    0005 columns as the migration says); anything else fails the test."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("ATTACH DATABASE ? AS ref", (f"file:{reference}?mode=ro",))
        version = [r[0] for r in db.execute("SELECT version_num FROM alembic_version")]
        n = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
        assert n == db.execute("SELECT count(*) FROM ref.jobs").fetchone()[0]
        for a, b in (("main", "ref"), ("ref", "main")):
            diff = db.execute(
                f"SELECT count(*) FROM (SELECT {_OLD_JOB_COLUMNS} FROM {a}.jobs "
                f"EXCEPT SELECT {_OLD_JOB_COLUMNS} FROM {b}.jobs)"
            ).fetchone()[0]
            assert diff == 0, f"{diff} rows of {a} differ from {b}"
        for table in ("manifests", "batches", "workers"):
            cols = ", ".join(r[1] for r in db.execute(f"PRAGMA ref.table_info({table})"))
            assert (
                db.execute(f"SELECT {cols} FROM {table}").fetchall()
                == db.execute(f"SELECT {cols} FROM ref.{table}").fetchall()
            )
        if version == ["0004"]:
            assert [r[1] for r in db.execute("PRAGMA table_info(jobs)")] == [
                r[1] for r in db.execute("PRAGMA ref.table_info(jobs)")
            ]
            return "old"
        assert version == [HEAD], version
        wrong = db.execute(
            "SELECT count(*) FROM jobs WHERE sent_hashes IS NOT (CASE WHEN status IN ('in_flight', 'uncertain') "
            "OR (status IN ('pending', 'failed') AND attempts > 0) THEN body_hash END) OR origin IS NOT "
            "(CASE WHEN status = 'succeeded' THEN (CASE WHEN recovered THEN 'recovered' ELSE 'created' END) END) "
            "OR attempt_hash IS NOT NULL OR platform_status IS NOT NULL OR checked_at IS NOT NULL"
        ).fetchone()[0]
        assert wrong == 0
        assert db.execute("SELECT changed = row_count FROM manifests").fetchall() == [(1,)]
        return "new"


def _spawn(args: list[str], cwd: Path, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "uploader", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _wait_for_writes(path: Path, proc: subprocess.Popen[str], least: int, seconds: float = 60) -> bool:
    """Until the ledger's WAL holds `least` bytes (the migration is writing) or the process ended."""
    wal = path.with_name(path.name + "-wal")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if wal.exists() and wal.stat().st_size >= least:
            return True
        time.sleep(0.002)
    return False


@pytest.fixture(scope="module")
def big_old_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "reference.db"
    make_big_old_ledger(path)
    return path


@pytest.mark.slow
def test_sigkill_at_random_moments_of_a_big_upgrade_leaves_it_old_or_new_and_the_next_open_finishes(
    tmp_path, big_old_ledger
):
    path = tmp_path / "ledger.db"
    shutil.copy(big_old_ledger, path)
    rng = random.Random(20261206)
    seen = []
    for attempt in range(6):
        proc = _spawn(["status", "--ledger", str(path)], tmp_path)
        try:
            if attempt % 2:
                time.sleep(rng.uniform(0.3, 1.2))  # wherever the process is: start-up, migration, checkpoint
            else:
                _wait_for_writes(path, proc, rng.choice([64 * 1024, 4 << 20, 16 << 20]))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.communicate(timeout=60)
        seen.append(big_ledger_state(path, big_old_ledger))
        if seen[-1] == "new":
            break
    proc2 = uploader("status", "--json", "--ledger", str(path), cwd=tmp_path)
    assert proc2.returncode == 0, proc2.stderr
    assert big_ledger_state(path, big_old_ledger) == "new"
    counts = json.loads(proc2.stdout)["counts"]
    assert {k: v for k, v in counts.items() if v} == {s: BIG // 5 for s in _BIG_STATES}
    assert "old" in seen, seen  # at least one kill landed before the upgrade committed


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_during_a_big_upgrade_exits_cleanly_and_the_rerun_finishes(tmp_path, big_old_ledger, sig):
    path = tmp_path / "ledger.db"
    shutil.copy(big_old_ledger, path)
    proc = _spawn(["status", "--ledger", str(path)], tmp_path)
    try:
        assert _wait_for_writes(path, proc, 2 << 20)
        proc.send_signal(sig)
    finally:
        _out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert err.strip() == "interrupted; run the same command again to resume."
    state = big_ledger_state(path, big_old_ledger)
    again = uploader("status", "--ledger", str(path), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert big_ledger_state(path, big_old_ledger) == "new"
    assert state in ("old", "new")


@pytest.mark.slow
def test_commands_opening_a_big_old_ledger_at_once_all_succeed_and_it_is_upgraded_once(tmp_path, big_old_ledger):
    path = tmp_path / "ledger.db"
    shutil.copy(big_old_ledger, path)
    commands = [
        ["status", "--json"],
        ["export", "-o", str(tmp_path / "out.csv")],
        ["show", "ref-0000007"],
        ["report", "-o", str(tmp_path / "report.html")],
        ["status"],
    ]
    procs = [_spawn([*args, "--ledger", str(path)], tmp_path) for args in commands]
    results = [(p, *p.communicate(timeout=120)) for p in procs]
    for proc, _out, err in results:
        assert proc.returncode == 0, (proc.args, err)
        assert "Traceback" not in err
    assert big_ledger_state(path, big_old_ledger) == "new"
    with (tmp_path / "out.csv").open(newline="") as f:
        exported = list(csv.DictReader(f))
    assert len(exported) == BIG
    assert exported[6]["reference_id"] == "ref-0000007" and exported[6]["status"] == "succeeded"
    assert exported[6]["job_id"] == "JOB-7" and exported[6]["origin"] == "recovered"
    assert "JOB-7" in results[2][1] and "succeeded" in results[2][1]


def test_several_opens_of_a_small_old_ledger_at_once_in_one_process_each_end_at_the_head(tmp_path):
    path = tmp_path / "old.db"
    make_old_ledger(path, "0001")
    procs = [_spawn(["status", "--json", "--ledger", str(path)], tmp_path) for _ in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert json.loads(out)["counts"]["succeeded"] == 3
    assert_upgraded_intact(path, "0001")


# --- 4. read-only commands on an old ledger ------------------------------------------------------------------


def test_show_on_an_old_ledger_upgrades_it_and_shows_every_field_of_the_row(tmp_path):
    path = tmp_path / "old.db"
    make_old_ledger(path, "0001")
    proc = uploader("show", "r-failed", "--json", "--ledger", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    text = json.dumps(shown)
    row = next(r for r in old_rows("0001") if r["reference_id"] == "r-failed")
    assert "FS_0003" in text and json.dumps(row["error_message"])[1:-1] in text
    assert "data.image_url" in text  # the details
    assert BATCH in text
    assert revision_of(path) == [HEAD]


def test_report_on_an_old_ledger_upgrades_it_and_counts_every_row(tmp_path):
    path = tmp_path / "old.db"
    make_old_ledger(path, "0004")
    out = tmp_path / "report.html"
    proc = uploader("report", "-o", str(out), "--ledger", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    assert "<html" in page.lower() and "FS_0003" in page
    assert_upgraded_intact(path, "0004")


def test_plan_on_an_old_ledger_leaves_it_byte_for_byte_unchanged(tmp_path):
    """Found, fixed: plan now refuses an older ledger in one line (nothing written) and says which command upgrades it.
    `uploader plan` is documented as "a dry run that sends nothing and writes nothing … The ledger file is byte for
    byte unchanged", and it prints "(nothing sent, nothing written)". On a ledger at revision 0004 it migrates the
    file to 0009 (Ledger.open → migrate in uploader/cli/planning.py run_plan): the bytes change and the schema is
    now one only the new uploader reads. A user who tries the new version's dry run on a shared ledger before
    rolling it out has already upgraded it: every machine still on the older uploader is now refused ("written by a
    newer uploader"). The truth: plan should read an old ledger without migrating it (or refuse and say that the
    first real command will upgrade it)."""
    path = tmp_path / "old.db"
    make_old_ledger(path, "0004")
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"reference_id,image_url\nr-pending,{U}/r-pending.jpg\nnew-1,{U}/new-1.jpg\n")
    before, names = digest(path), files_of(tmp_path)
    args = ("plan", str(manifest), "--project-id", "proj", "--work-flow-id", "wf", "--ledger", str(path))
    line = one_clear_line(uploader(*args, cwd=tmp_path))
    assert "written by an older uploader" in line and "does not upgrade it" in line and "uploader status" in line
    assert revision_of(path) == ["0004"]
    assert digest(path) == before and files_of(tmp_path) == names
    assert uploader("status", "--ledger", str(path), cwd=tmp_path).returncode == 0  # upgrades it
    proc = uploader(*args, cwd=tmp_path)
    assert proc.returncode == 0 and "nothing written" in proc.stdout, proc.stderr


# --- 5. a ledger newer than the code ------------------------------------------------------------------------


def _newer_ledger(path: Path) -> None:
    make_old_ledger(path, "0008")
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE alembic_version SET version_num = '0099'")
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.mark.parametrize(
    "args",
    [
        ["show", "r-ok"],
        ["report", "-o", "report.html"],
        ["plan", "m.csv", "--project-id", "proj", "--work-flow-id", "wf"],
        ["load", "m.csv", "--project-id", "proj", "--work-flow-id", "wf"],
        ["retry", "--all"],
        ["forget", "--status", "failed"],
        ["sync", "--base-url", "http://127.0.0.1:9"],
        ["check"],
    ],
    ids=lambda a: a[0],
)
def test_a_newer_ledger_is_refused_in_one_line_by_every_command_and_not_touched(tmp_path, args):
    path = tmp_path / "new.db"
    _newer_ledger(path)
    (tmp_path / "m.csv").write_text(f"reference_id,image_url\nr-pending,{U}/r-pending.jpg\n")
    before, names = digest(path), files_of(tmp_path)
    line = one_clear_line(uploader(*args, "--ledger", str(path), cwd=tmp_path))
    assert "0099" in line and "newer uploader" in line
    assert digest(path) == before and files_of(tmp_path) == names


# --- 6. a ledger that cannot be written: read-only file, folder, file system; a full disk --------------------

_PR_CAPBSET_DROP = 24
_DAC_CAPS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: what lets root ignore file modes


def _as_a_plain_user() -> None:
    """In the child before exec: root keeps its uid but loses the capabilities that ignore file modes (from
    the bounding set, so the exec'd Python never has them), so a 0444 file or 0555 folder binds it too."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _DAC_CAPS:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def plain_uploader(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return uploader(*args, cwd=cwd, preexec_fn=_as_a_plain_user)


def _old_checkpointed(path: Path, rev: str = "0004") -> None:
    make_old_ledger(path, rev)
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.mark.parametrize("command", [["status"], ["export"], ["show", "r-ok"]], ids=lambda c: c[0])
def test_an_old_ledger_in_a_read_only_folder_is_refused_clearly_and_left_as_it_was(tmp_path, command):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "old.db"
    _old_checkpointed(path)
    before = digest(path)
    folder.chmod(0o555)
    try:
        line = one_clear_line(plain_uploader(*command, "--ledger", str(path), cwd=tmp_path))
        assert "cannot write the ledger" in line and "copy it to a writable folder" in line
        assert digest(path) == before and files_of(folder) == ["old.db"]
    finally:
        folder.chmod(0o755)
    assert revision_of(path) == ["0004"]
    assert uploader("status", "--ledger", str(path), cwd=tmp_path).returncode == 0  # writable again: upgraded
    assert_upgraded_intact(path, "0004")


def test_an_old_read_only_ledger_file_is_refused_clearly_and_usable_once_made_writable(tmp_path):
    """Found, fixed: a ledger file (or its -wal/-shm) this user may not write is refused before SQLite opens it, naming
    the files and `chmod u+w`. A ledger file at revision 0004 with mode 0444 (a restored backup, a copy from an
    archive): `uploader status` refuses it in one clear line, and the file's bytes are unchanged — but the refusal
    leaves `old.db-wal` and `old.db-shm` beside it, made by SQLite with the file's own mode 0444. The first of them
    comes from `_check_sqlite_file` (uploader/ledger/engine.py), whose `sqlite3.connect` on a read-only file falls
    back to a read-only connection: the very leftover its comment says the read-write open avoids. The user then
    does the obvious thing, `chmod u+w old.db`, and every command now fails with "ledger error: attempt to write a
    readonly database" (the stale read-only -shm), a message that names neither the file nor the cause. Truth:
    nothing beside the ledger is created, and a ledger made writable again opens (and upgrades)."""
    path = tmp_path / "old.db"
    _old_checkpointed(path)
    before = digest(path)
    path.chmod(0o444)
    line = one_clear_line(plain_uploader("status", "--ledger", str(path), cwd=tmp_path))
    assert "cannot write the ledger" in line
    assert digest(path) == before
    path.chmod(0o644)
    proc = plain_uploader("status", "--ledger", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_upgraded_intact(path, "0004")
    assert files_of(tmp_path) == ["old.db"]


@pytest.fixture
def mount_point(tmp_path: Path) -> Any:
    """A folder to mount on (root with CAP_SYS_ADMIN only), unmounted afterwards."""
    point = tmp_path / "mnt"
    point.mkdir()
    mounted: list[Path] = []

    def mount(*args: str) -> None:
        proc = subprocess.run(["mount", *args, str(point)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount here: {proc.stderr.strip()}")
        mounted.append(point)

    yield point, mount
    for p in mounted:
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


def test_an_old_ledger_on_a_read_only_file_system_is_refused_clearly_and_unchanged(tmp_path, mount_point):
    point, mount = mount_point
    source = tmp_path / "src"
    source.mkdir()
    _old_checkpointed(source / "old.db")
    before = digest(source / "old.db")
    mount("--bind", str(source))
    mount("-o", "remount,ro,bind", str(source))
    line = one_clear_line(uploader("status", "--ledger", str(point / "old.db"), cwd=tmp_path))
    assert "read-only file system" in line
    assert digest(source / "old.db") == before and files_of(source) == ["old.db"]


@pytest.mark.slow
def test_a_full_disk_during_the_upgrade_leaves_it_old_and_the_next_command_finishes(
    tmp_path, mount_point, big_old_ledger
):
    point, mount = mount_point
    size = big_old_ledger.stat().st_size
    mount("-t", "tmpfs", "-o", f"size={size + (12 << 20)}", "tmpfs")
    path = point / "ledger.db"
    shutil.copy(big_old_ledger, path)
    line = one_clear_line(uploader("status", "--ledger", str(path), cwd=tmp_path))
    assert "full" in line and "free space" in line
    assert big_ledger_state(path, big_old_ledger) == "old"
    subprocess.run(["mount", "-o", f"remount,size={3 * size}", str(point)], check=True)
    proc = uploader("status", "--json", "--ledger", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert big_ledger_state(path, big_old_ledger) == "new"


# --- 7. PostgreSQL ------------------------------------------------------------------------------------------


@pytest.fixture
def pg_url() -> Any:
    """A fresh, empty PostgreSQL database (tests/conftest.py's recipe), dropped afterwards."""
    from sqlalchemy import create_engine

    from tests.conftest import _fresh_postgres_database

    admin = os.environ.get(POSTGRES_ENV) or PG_DEFAULT
    try:
        with create_engine(admin).connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - no server: skip
        pytest.skip(f"no PostgreSQL at {admin}: {exc}")
    yield from _fresh_postgres_database(admin)


def _pg_value(table: str, col: str, value: Any) -> Any:
    import datetime as dt

    if isinstance(value, str) and len(value) == 26 and value[4] == "-" and value[10] == " ":
        return dt.datetime.fromisoformat(value)
    if col in ("recovered", "auto"):
        return bool(value)
    return value


def make_old_pg_ledger(url: str, rev: str) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from uploader.ledger.engine import script_location

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", script_location())
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, rev)
        with engine.begin() as conn:
            for table, rows in [*other_rows(rev).items(), ("jobs", old_rows(rev))]:
                for row in rows:
                    cols = ", ".join(row)
                    marks = ", ".join(f":{c}" for c in row)
                    conn.execute(
                        text(f"INSERT INTO {table} ({cols}) VALUES ({marks})"),
                        {c: _pg_value(table, c, v) for c, v in row.items()},
                    )
            for table in ("jobs", "manifests", "batches"):  # as if the rows had taken their ids from it
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"))
    finally:
        engine.dispose()


def pg_rows(url: str, table: str, key: str) -> list[dict[str, Any]]:
    import datetime as dt

    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY {key}"))]
    finally:
        engine.dispose()
    out = []
    for row in rows:
        norm = {}
        for col, value in row.items():
            if isinstance(value, dt.datetime):
                value = value.strftime("%Y-%m-%d %H:%M:%S.%f")
            elif isinstance(value, bool):
                value = int(value)
            norm[col] = value
        out.append(norm)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("rev", ["0001", "0005", "0008"])
def test_postgresql_ledger_from_an_old_revision_keeps_every_column_and_runs_only_unsettled_rows(tmp_path, pg_url, rev):
    make_old_pg_ledger(pg_url, rev)
    # two commands open the old database at once: one migrates, the other waits and finds it done
    procs = [_spawn([*args, "--ledger", pg_url], tmp_path) for args in (["status", "--json"], ["export"])]
    outs = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    assert pg_rows(pg_url, "alembic_version", "version_num") == [{"version_num": HEAD}]
    want = expected_after_upgrade(rev)
    for table, key in [("jobs", "id"), ("manifests", "id"), ("batches", "id"), ("workers", "owner")]:
        assert pg_rows(pg_url, table, key) == want[table], table
    assert pg_rows(pg_url, "urls", "url_hash") == want["urls"]
    exported = list(csv.DictReader(outs[1][0].splitlines()))
    assert [e["reference_id"] for e in exported] == [r["reference_id"] for r in old_rows(rev)]
    assert [e["status"] for e in exported] == [r["status"] for r in old_rows(rev)]

    log = tmp_path / "requests.jsonl"
    with _sandbox(tmp_path, rev) as box:
        before = {j["reference_id"]: j["job_id"] for j in box.jobs()}
        proc = uploader(
            "run", "--project-id", "proj", "--work-flow-id", "wf", "--ledger", pg_url, "--base-url",
            box.base_url, "--log-file", str(log), "--quiet", cwd=tmp_path,
        )  # fmt: skip
        after = {j["reference_id"]: j["job_id"] for j in box.jobs()}
    assert proc.returncode in (0, 3) and "Traceback" not in proc.stderr, proc.stderr
    posted = _job_posts(log)
    assert set(posted) <= UNSETTLED and {"r-pending", "r-backoff"} <= set(posted), posted
    assert all(after[ref] == job for ref, job in before.items())
    rows = {r["reference_id"]: r for r in pg_rows(pg_url, "jobs", "id")}
    for old in old_rows(rev):
        if old["status"] in ("succeeded", "conflict", "failed", "blocked"):
            assert {c: rows[old["reference_id"]][c] for c in old} == old
