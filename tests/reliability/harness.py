"""Shared pieces of the reliability tests and of benchmarks/crash_loop.py.

The invariants every reliability scenario ends with (`check_ledger`):
  * no row `uncertain`, no row left `pending` / `in_flight`; rows expected to succeed `succeeded`;
  * each reference_id created exactly once at the sandbox (`jobs_created_per_reference_id_max == 1` and
    `jobs()` holds exactly one job per reference_id);
  * every job_id in the ledger is the sandbox's job_id for that reference_id;
  * `PRAGMA integrity_check` is "ok" (SQLite).

The ledger is read with the sqlite3 module directly, or with plain SQL over SQLAlchemy for a PostgreSQL URL
(not through uploader.ledger.ledger), so a bug in the code under test cannot hide itself from the check.

`check_claim_log` reads the test-only claim log (UPLOADER_CLAIM_LOG, see uploader.ledger.ledger) of runs in several
processes and checks that no row was held by two live workers at once and that no fenced write was applied.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uploader.sandbox import Sandbox

KEY = "reliability-key-5e1d"
PROJECT = "proj"
ROOT = Path(__file__).resolve().parents[2]


def write_images(path: Path, n: int, prefix: str = "img", host: str = "cdn.example.com") -> Path:
    """An image manifest of `n` rows: reference_ids `<prefix>-00000`…, URLs on `host`."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "image_url"])
        for i in range(n):
            w.writerow([f"{prefix}-{i:05d}", f"https://{host}/{prefix}/{i}.jpg"])
    return path


def write_mixed(path: Path, good: int, bad_data: int, bad_batch: int) -> tuple[Path, set[str], set[str]]:
    """A manifest the uploader accepts whose some rows the API refuses for good.

    `bad_data` rows carry `data` without any known key (the sandbox answers FS_0003); `bad_batch` rows
    name a well-formed batch UUID the project does not have (GE_0001). Returns (path, FS_0003 refs, GE_0001
    refs)."""
    fs3, ge1 = set(), set()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "data", "batch_id"])
        for i in range(good):
            w.writerow([f"ok-{i:05d}", f'{{"image_url": "https://cdn.example.com/ok/{i}.jpg"}}', ""])
        for i in range(bad_data):
            ref = f"fs3-{i:04d}"
            fs3.add(ref)
            w.writerow([ref, '{"thumbnail": "https://cdn.example.com/x.jpg"}', ""])
        for i in range(bad_batch):
            ref = f"ge1-{i:04d}"
            ge1.add(ref)
            w.writerow(
                [ref, f'{{"image_url": "https://cdn.example.com/ge/{i}.jpg"}}', "6f1c1a52-8a5e-4c1b-9d55-0c4d5b3f1e2a"]
            )
    return path, fs3, ge1


def run_args(manifest: Path | None, ledger: Path, base_url: str, *extra: str) -> list[str]:
    args = ["run"] + ([str(manifest)] if manifest else [])
    return args + [
        "--project-id",
        PROJECT,
        "--work-flow-id",
        "wf",
        "--ledger",
        str(ledger),
        "--base-url",
        base_url,
        "--quiet",
        *extra,
    ]


def subprocess_cmd(manifest: Path | None, ledger: Path, base_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "uploader", *run_args(manifest, ledger, base_url, *extra)]


def subprocess_env() -> dict[str, str]:
    env = {**os.environ, "PLAYMENT_API_KEY": KEY}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


_ROWS_SQL = (
    "SELECT id, reference_id, job_id, status, error_code, attempts, lease_owner, lease_expires_at, lease_token, "
    "recovered FROM jobs"
)


def ledger_rows(ledger: Path | str) -> dict[str, dict[str, Any]]:
    """Every row of the ledger by reference_id: a SQLite file (read-only, plain sqlite3) or a URL (plain SQL)."""
    if isinstance(ledger, str):
        from sqlalchemy import create_engine, text

        engine = create_engine(ledger)
        try:
            with engine.connect() as conn:
                return {r["reference_id"]: dict(r) for r in conn.execute(text(_ROWS_SQL)).mappings()}
        finally:
            engine.dispose()
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        return {r["reference_id"]: dict(r) for r in con.execute(_ROWS_SQL).fetchall()}
    finally:
        con.close()


def status_counts(ledger: Path) -> Counter[str]:
    if not ledger.exists():
        return Counter()
    try:
        return Counter(r["status"] for r in ledger_rows(ledger).values())
    except sqlite3.OperationalError:  # killed before the schema was created
        return Counter()


def integrity(ledger: Path) -> str:
    con = sqlite3.connect(ledger)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def check_ledger(
    ledger: Path | str,
    jobs: list[dict[str, Any]],
    stats: dict[str, Any],
    *,
    failed: set[str] = frozenset(),  # type: ignore[assignment]
    project: str = PROJECT,
) -> dict[str, dict[str, Any]]:
    """Assert the invariants (module docstring); `failed` are the refs expected to fail for good."""
    rows = ledger_rows(ledger)
    statuses = Counter(r["status"] for r in rows.values())
    assert statuses.get("uncertain", 0) == 0, {k: r for k, r in rows.items() if r["status"] == "uncertain"}
    wrong = {
        k: (r["status"], r["error_code"], r["attempts"])
        for k, r in rows.items()
        if r["status"] != ("failed" if k in failed else "succeeded")
    }
    assert not wrong, wrong
    created: dict[str, list[str]] = {}
    for j in jobs:
        if j["project_id"] == project:
            created.setdefault(j["reference_id"], []).append(j["job_id"])
    assert stats["jobs_created_per_reference_id_max"] == 1, stats
    assert all(len(ids) == 1 for ids in created.values())
    expected = {k for k in rows if k not in failed}
    assert set(created) == expected, set(created) ^ expected
    mismatched = {
        k: (r["job_id"], created[k][0]) for k, r in rows.items() if k not in failed and r["job_id"] != created[k][0]
    }
    assert not mismatched, mismatched
    if isinstance(ledger, Path):
        assert integrity(ledger) == "ok"
    return rows


# -- the crash loop ------------------------------------------------------------------------------------


def jobs_created(box: Sandbox) -> int:
    """The sandbox's creation counter, read without a round trip through its loop (polled every ms)."""
    engine = box._engine  # noqa: SLF001 - the test's own emulator; a plain int read
    return engine.app.stats.jobs_created if engine is not None else 0


@dataclass
class Kill:
    mode: str
    after_s: float
    created_at_kill: int
    statuses: dict[str, int]


@dataclass
class CrashLoopReport:
    rows: int
    kills: list[Kill] = field(default_factory=list)
    final_seconds: float = 0.0
    total_seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    lost: int = 0
    duplicates: int = 0
    recovered_rows: int = 0

    @property
    def in_flight_at_kills(self) -> int:
        return sum(k.statuses.get("in_flight", 0) for k in self.kills)

    def figures(self) -> dict[str, Any]:
        s = self.stats
        posts = s["jobs_created"] + s["fs_0001_refusals"]
        return {
            "rows": self.rows,
            "kills_survived": len(self.kills),
            "kills_with_rows_in_flight": sum(1 for k in self.kills if k.statuses.get("in_flight")),
            "kill_modes": dict(Counter(k.mode for k in self.kills)),
            "rows_in_flight_at_kills": self.in_flight_at_kills,
            "requests_total": s["requests_total"],
            "job_posts": posts,
            "lookups_get": s["requests_total"] - posts,
            "fs_0001_refusals": s["fs_0001_refusals"],
            "extra_requests": s["requests_total"] - self.rows,
            "rows_recovered_after_fs_0001": self.recovered_rows,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "seconds_total": round(self.total_seconds, 1),
        }


def crash_loop(
    box: Sandbox,
    workdir: Path,
    *,
    rows: int,
    kills: int,
    seed: int,
    concurrency: int = 16,
    deadline_s: float = 120.0,
) -> CrashLoopReport:
    """Run `uploader run` as a subprocess, SIGKILL it `kills` times at random moments, then let it finish.

    The first kill lands right after the sandbox created its first job, before any result can be recorded
    (the "very first rows killed" case): during that first life the sandbox holds every answer back
    (slow_rate=1), so a poller that wakes late cannot let the run record one first. Later kills are drawn
    from a seeded random.Random: after a random share of the rows still to create, or at a random time
    after the start (which can land in start-up, migration, the manifest load, or the sending).
    """
    rng = random.Random(seed)
    manifest = write_images(workdir / "images.csv", rows)
    ledger = workdir / "ledger.db"
    cmd = subprocess_cmd(manifest, ledger, box.base_url, "--concurrency", str(concurrency))
    env = subprocess_env()
    report = CrashLoopReport(rows)
    started = time.monotonic()
    stop_at = started + deadline_s
    for i in range(kills):
        before = jobs_created(box)
        remaining = max(1, rows - before)
        # A cap on how far this life may get, so every kill lands before the upload is complete.
        target = before + rng.randint(1, max(1, remaining // (kills - i + 1)))
        delay = None
        held = None
        if i == 0:
            mode, target = "first_rows", before + 1
            held = {"slow_rate": box.config.slow_rate, "slow_ms": box.config.slow_ms}
            box.configure(slow_rate=1.0, slow_ms=60_000)
        elif rng.random() < 0.6:
            mode = "mid_send"
        else:
            mode, delay = "random_time", rng.uniform(0.05, 1.5)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        try:
            while proc.poll() is None and time.monotonic() < stop_at:
                if delay is not None and time.monotonic() - t0 >= delay:
                    break
                if target is not None and jobs_created(box) >= target:
                    break
                time.sleep(0.001)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            if held is not None:
                box.configure(**held)
        if proc.returncode != -signal.SIGKILL:
            # The run finished before the kill: no kill to count; the final run below still runs.
            break
        report.kills.append(Kill(mode, time.monotonic() - t0, jobs_created(box), dict(status_counts(ledger))))
    t1 = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(30.0, stop_at - t1 + 30))
    report.final_seconds = time.monotonic() - t1
    report.total_seconds = time.monotonic() - started
    assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    report.stats = box.stats()
    ledger_map = ledger_rows(ledger)
    created = Counter(j["reference_id"] for j in box.jobs() if j["project_id"] == PROJECT)
    report.lost = sum(1 for k, r in ledger_map.items() if r["status"] != "succeeded" or created[k] != 1)
    report.duplicates = sum(n - 1 for n in created.values() if n > 1)
    report.recovered_rows = sum(1 for r in ledger_map.values() if r["recovered"])
    check_ledger(ledger, box.jobs(), report.stats)
    assert len(ledger_map) == rows
    return report


# -- the claim log of several processes ------------------------------------------------------------------

TERMINAL = ("succeeded", "failed", "uncertain")


@dataclass
class ClaimLogReport:
    claims: int = 0  #: rows claimed (one per row and lease token)
    takeovers: int = 0  #: claims of a row whose previous claim (by another worker) had not ended
    handovers: int = 0  #: claims of a row another worker had held before and released or recorded
    renewals: int = 0
    applied: int = 0
    ignored: int = 0  #: result writes refused by the fence (a stale lease token)
    ignored_by_pid: Counter[int] = field(default_factory=Counter)
    unlogged_claims: int = 0  #: lease tokens missing from the log (a process killed between commit and log)
    missing_final_writes: int = 0  #: rows whose final write is not logged (a process killed likewise)
    overlaps: list[str] = field(default_factory=list)
    fence_breaches: list[str] = field(default_factory=list)


def check_claim_log(path: Path, rows: dict[str, dict[str, Any]], dead_at: dict[int, float]) -> ClaimLogReport:
    """Check the claim log of a finished multi-process upload against the final ledger `rows`.

    `dead_at`: pid → when the test SIGKILLed it (time.time() after the process was reaped). A killed worker
    is not live: its leases may be taken over before they expire (its host's next run expires them).

    Exclusive leases: when worker B claims token k+1 of a row that worker A claimed with token k, either A's
    claim had ended (A recorded a result for it, or released it), or A was dead, or A's lease had expired:
    B's `now` is past the expiry A's claim set and past every renewal of A that was committed (logged)
    before B's `now` — those B's claim must have seen. (A renewal logged later may have committed after B's
    claim, when the row was no longer A's: it is not counted, so the check cannot report a false overlap.)

    Fencing: a write applied with token k must have started before token k+1 was claimed (committed and
    logged); a terminal write (succeeded / failed / uncertain) is applied only with the row's last token, at
    most once. Anything else is a fenced write that got through.
    """
    claims: dict[int, dict[int, dict[str, Any]]] = {}
    renewals: dict[str, list[tuple[float, float]]] = {}
    ended: set[tuple[int, int]] = set()
    writes: list[tuple[int, int, str, float]] = []
    report = ClaimLogReport()
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            if e["kind"] == "claim":
                for rid, token in e["rows"]:
                    assert token not in claims.setdefault(rid, {}), f"row {rid} token {token} claimed twice"
                    claims[rid][token] = e
                    report.claims += 1
            elif e["kind"] == "renew":
                renewals.setdefault(e["owner"], []).append((e["t"], e["exp"]))
                report.renewals += 1
            elif e["kind"] == "release":
                ended.update((rid, token) for rid, token in e["rows"])
            elif e["kind"] == "record":
                for rid, token, status, applied in e["rows"]:
                    if applied:
                        report.applied += 1
                        ended.add((rid, token))
                        writes.append((rid, token, status, e["now"]))
                    else:
                        report.ignored += 1
                        report.ignored_by_pid[e["pid"]] += 1
    final = {r["id"]: r for r in rows.values()}
    terminal: dict[int, list[int]] = {}
    for rid, token, status, started in writes:
        later = claims.get(rid, {}).get(token + 1)
        if later is not None and started > later["t"]:
            report.fence_breaches.append(
                f"row {rid}: {status} with token {token} written after token {token + 1} "
                f"was claimed by pid {later['pid']}"
            )
        if status in TERMINAL:
            terminal.setdefault(rid, []).append(token)
    for rid, row in final.items():
        tokens = terminal.get(rid, [])
        if any(t != row["lease_token"] for t in tokens) or len(tokens) > 1:
            report.fence_breaches.append(
                f"row {rid}: terminal writes with tokens {tokens}, last token {row['lease_token']}"
            )
        report.missing_final_writes += not tokens
    for rid, by_token in claims.items():
        report.unlogged_claims += len(set(range(1, final[rid]["lease_token"] + 1)) - set(by_token))
        for k, a in by_token.items():
            b = by_token.get(k + 1)
            if b is None or a["owner"] == b["owner"]:
                continue
            if (rid, k) in ended:
                report.handovers += 1
                continue
            report.takeovers += 1
            if dead_at.get(a["pid"], float("inf")) <= b["now"]:
                continue
            expiry = max([a["exp"]] + [exp for t, exp in renewals.get(a["owner"], ()) if a["t"] <= t <= b["now"]])
            if b["now"] < expiry:
                report.overlaps.append(
                    f"row {rid}: token {k + 1} claimed by pid {b['pid']} at {b['now']:.3f} while pid {a['pid']}'s "
                    f"lease (token {k}) ran to {expiry:.3f}"
                )
    return report
