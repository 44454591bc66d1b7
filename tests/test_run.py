"""End-to-end: `uploader run` against the sandbox over real HTTP, on a real SQLite ledger."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from waiting import wait_until

from uploader.cli.commands import cli
from uploader.ledger.ledger import Ledger
from uploader.sandbox import Sandbox, SandboxConfig

KEY = "test-secret-key-7f3a9c"


def write_images(path: Path, n: int, prefix: str = "img") -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "image_url", "camera"])
        for i in range(n):
            w.writerow([f"{prefix}-{i:05d}", f"https://cdn.example.com/{prefix}/{i}.jpg", f"cam{i % 3}"])
    return path


def invoke(*args: str, env: dict | None = None):
    runner = CliRunner()
    return runner.invoke(cli, list(args), env={"PLAYMENT_API_KEY": KEY, **(env or {})}, catch_exceptions=False)


def run_args(manifest: Path | None, ledger: Path, box: Sandbox, *extra: str) -> list[str]:
    args = ["run"] + ([str(manifest)] if manifest else [])
    return args + [
        "--project-id",
        "proj",
        "--work-flow-id",
        "wf",
        "--ledger",
        str(ledger),
        "--base-url",
        box.base_url,
        "--quiet",
        *extra,
    ]


def ledger_rows(ledger: Path) -> dict[str, dict]:
    """The rows as `export_rows` gives them, with the ledger's own job_id column (the export gives one only for
    succeeded and conflict rows)."""
    from sqlalchemy import text

    led = Ledger.open(ledger)
    try:
        with led.engine.connect() as conn:
            job_ids = {(p, r): j for p, r, j in conn.execute(text("SELECT project_id, reference_id, job_id FROM jobs"))}
        return {
            r["reference_id"]: {**r, "job_id": job_ids[r["project_id"], r["reference_id"]]} for r in led.export_rows()
        }
    finally:
        led.close()


def assert_exactly_once(box: Sandbox, rows: dict[str, dict], project: str = "proj") -> None:
    """Every row succeeded, each reference_id created once, and the ledger's job_ids are the sandbox's."""
    created = {j["reference_id"]: j["job_id"] for j in box.jobs() if j["project_id"] == project}
    assert all(r["status"] == "succeeded" for r in rows.values()), {
        k: (r["status"], r["error_code"]) for k, r in rows.items() if r["status"] != "succeeded"
    }
    assert box.stats()["jobs_created_per_reference_id_max"] == 1
    assert {k: r["job_id"] for k, r in rows.items()} == created


@pytest.fixture
def box():
    with Sandbox(SandboxConfig(api_key=KEY, seed=7)) as sb:
        yield sb


def test_happy_path_images_then_rerun_sends_nothing(box, tmp_path):
    manifest = write_images(tmp_path / "images.csv", 200)
    ledger = tmp_path / "l.db"
    result = invoke(*run_args(manifest, ledger, box, "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["counts"]["succeeded"] == 200 and summary["this_run"]["requests"] == 200
    assert_exactly_once(box, ledger_rows(ledger))
    requests_before = box.stats()["requests_total"]
    again = invoke(*run_args(manifest, ledger, box))
    assert again.exit_code == 0, again.output
    assert box.stats()["requests_total"] == requests_before  # nothing sent twice
    exported = invoke("export", "--ledger", str(ledger))
    lines = list(csv.DictReader(exported.output.splitlines()))
    assert len(lines) == 200 and lines[0]["camera"] == "cam0" and lines[0]["job_id"]


@pytest.mark.slow
def test_drops_after_create_are_recovered_not_duplicated(tmp_path):
    with Sandbox(SandboxConfig(api_key=KEY, seed=3, drop_rate=0.2, error_rate=0.1, html_error_rate=0.05)) as box:
        manifest = write_images(tmp_path / "images.csv", 300)
        ledger = tmp_path / "l.db"
        result = invoke(*run_args(manifest, ledger, box, "--timeout", "5"))
        assert result.exit_code == 0, result.output
        rows = ledger_rows(ledger)
        assert_exactly_once(box, rows)
        assert box.stats()["faults"]["drop"] > 0
        assert any(r["job_id"] for r in rows.values())


def test_legacy_errors_and_permanent_failures(tmp_path):
    with Sandbox(SandboxConfig(api_key=KEY, seed=1, legacy=True)) as box:
        manifest = tmp_path / "m.csv"
        manifest.write_text("reference_id,image_url,priority_weight\na,https://x.com/a.jpg,3\nb,https://x.com/b.jpg,\n")
        ledger = tmp_path / "l.db"
        assert invoke(*run_args(manifest, ledger, box)).exit_code == 0
        # a permanent refusal from the server (batch_id unknown to the project) fails without retries
        bad = tmp_path / "bad.csv"
        bad.write_text("reference_id,image_url,batch_id\nc,https://x.com/c.jpg,6f1c1a52-8a5e-4c1b-9d55-0c4d5b3f1e2a\n")
        result = invoke(*run_args(bad, ledger, box))
        assert result.exit_code == 3, result.output
        row = ledger_rows(ledger)["c"]
        assert row["status"] == "failed" and row["error_code"] == "GE_0001" and row["attempts"] == 1


def test_wrong_key_stops_at_once_and_fails_nothing(box, tmp_path):
    manifest = write_images(tmp_path / "images.csv", 100)
    ledger = tmp_path / "l.db"
    result = invoke(*run_args(manifest, ledger, box), env={"PLAYMENT_API_KEY": "wrong-key"})
    assert result.exit_code == 1
    assert "API key" in result.output and "wrong-key" not in result.output
    rows = ledger_rows(ledger)
    assert all(r["status"] == "pending" and r["attempts"] == 0 for r in rows.values())
    assert box.stats()["requests_by_status"].get("401", 0) <= 64  # stopped after the first answers


@pytest.mark.slow
def test_rate_limit_429_does_not_use_attempts(tmp_path):
    with Sandbox(SandboxConfig(api_key=KEY, seed=2, rate_limit=100, retry_after_s=1)) as box:
        manifest = write_images(tmp_path / "images.csv", 150)
        ledger = tmp_path / "l.db"
        result = invoke(*run_args(manifest, ledger, box, "--max-attempts", "2"))
        assert result.exit_code == 0, result.output
        assert box.stats()["faults"]["rate_limited"] > 0
        assert_exactly_once(box, ledger_rows(ledger))


def test_batch_name_is_created_once_and_reused(box, tmp_path):
    ledger = tmp_path / "l.db"
    first = write_images(tmp_path / "a.csv", 5, "a")
    assert invoke(*run_args(first, ledger, box, "--batch-name", "nov")).exit_code == 0
    second = write_images(tmp_path / "b.csv", 5, "b")
    assert invoke(*run_args(second, ledger, box, "--batch-name", "nov")).exit_code == 0
    batches = {j["batch_id"] for j in box.jobs()}
    assert len(batches) == 1 and box.stats()["batches_created"] == 1
    assert {r["batch_id"] for r in ledger_rows(ledger).values()} == batches


@pytest.mark.slow
def test_in_flight_rows_of_a_dead_run_are_resolved_by_fs_0001(box, tmp_path):
    """Simulate a crash after the server created jobs but before the results were recorded."""
    manifest = write_images(tmp_path / "images.csv", 50)
    ledger = tmp_path / "l.db"
    assert (
        invoke("load", str(manifest), "--project-id", "proj", "--work-flow-id", "wf", "--ledger", str(ledger)).exit_code
        == 0
    )
    led = Ledger.open(ledger)
    owner = led.register_worker()
    claims = led.claim(owner, 20, 3600)
    import httpx

    for c in claims:  # the dead run's requests reached the server
        httpx.post(f"{box.base_url}/v1/projects/{c.project_id}/jobs", content=c.body, headers={"x-api-key": KEY})
    with led.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE workers SET pid = 999999999")  # that process is gone
    led.close()
    result = invoke(*run_args(None, ledger, box))
    assert result.exit_code == 0, result.output
    rows = ledger_rows(ledger)
    assert_exactly_once(box, rows)
    assert box.stats()["fs_0001_refusals"] == 20


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path):
    """A real subprocess killed with SIGKILL mid-run; the rerun finishes with every job created once."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=5, latency_ms=20, jitter_ms=10)) as box:
        manifest = write_images(tmp_path / "images.csv", 600)
        ledger = tmp_path / "l.db"
        cmd = [sys.executable, "-m", "uploader", *run_args(manifest, ledger, box, "--concurrency", "16")]
        env = {**os.environ, "PLAYMENT_API_KEY": KEY}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: box.stats()["jobs_created"] >= 150, "the sandbox to create 150 jobs")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert box.stats()["jobs_created"] < 600
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert_exactly_once(box, ledger_rows(ledger))


@pytest.mark.slow
def test_sigint_stops_gently_and_resumes(tmp_path):
    with Sandbox(SandboxConfig(api_key=KEY, seed=6, latency_ms=30)) as box:
        manifest = write_images(tmp_path / "images.csv", 2000)
        ledger = tmp_path / "l.db"
        cmd = [sys.executable, "-m", "uploader", *run_args(manifest, ledger, box, "--concurrency", "8")]
        env = {**os.environ, "PLAYMENT_API_KEY": KEY}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: box.stats()["jobs_created"] >= 50, "the sandbox to create 50 jobs")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "run the same command again" in err
        rows = ledger_rows(ledger)
        statuses = {r["status"] for r in rows.values()}
        assert statuses <= {"succeeded", "pending"}  # nothing left in flight, nothing failed
        created = box.stats()["jobs_created"]
        assert sum(r["status"] == "succeeded" for r in rows.values()) == created  # every answer recorded
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert_exactly_once(box, ledger_rows(ledger))


def test_api_key_never_written(box, tmp_path):
    manifest = write_images(tmp_path / "images.csv", 30)
    ledger = tmp_path / "l.db"
    result = invoke(*run_args(manifest, ledger, box, "--json"))
    status = invoke("status", "--ledger", str(ledger), "--json")
    out = tmp_path / "jobs.csv"
    invoke("export", "--ledger", str(ledger), "-o", str(out))
    for blob in (result.output, status.output, out.read_text(), json.dumps(box.stats())):
        assert KEY not in blob
    for f in tmp_path.iterdir():
        assert KEY.encode() not in f.read_bytes()
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def posts_received(box: Sandbox) -> int:
    """Job requests the sandbox has read, answered or not (a plain read of the test's own emulator)."""
    return sum(box._engine.app.stats.per_reference.values())  # noqa: SLF001


def in_flight(ledger: Path) -> int:
    import sqlite3

    if not ledger.exists():
        return 0
    with sqlite3.connect(ledger, timeout=5) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'in_flight'").fetchone()[0]
        except sqlite3.OperationalError:  # not migrated yet
            return 0


@pytest.mark.slow
def test_second_sigint_cancels_at_once_and_loses_nothing(tmp_path):
    """First Ctrl-C waits for requests in the air (here: slow ones); the second cancels them at once.
    Every row this run held goes back to pending, and the rerun finishes with each job created once."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=8, latency_ms=10_000)) as box:
        manifest = write_images(tmp_path / "images.csv", 300)
        ledger = tmp_path / "l.db"
        cmd = [
            sys.executable,
            "-m",
            "uploader",
            *run_args(manifest, ledger, box, "--concurrency", "8", "--timeout", "30"),
        ]
        env = {**os.environ, "PLAYMENT_API_KEY": KEY}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # claimed (committed) before sending, then in the air: the sandbox holds them in its 10 s latency
        wait_until(lambda: in_flight(ledger) >= 8, "8 rows in flight in the ledger")
        wait_until(lambda: posts_received(box) >= 8, "the sandbox to receive 8 job requests")
        assert box.stats()["jobs_created"] == 0
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)  # let the first signal be handled alone (the run shows no sign of it to wait on)
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, err
        assert time.monotonic() - stopped_at < 6  # did not wait for the 10 s answers
        assert "Traceback" not in err
        rows = ledger_rows(ledger)
        assert {r["status"] for r in rows.values()} == {"pending"}
        assert all(r["attempts"] == 0 for r in rows.values())  # cancelled attempts are not counted
        box.configure(latency_ms=0)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert_exactly_once(box, ledger_rows(ledger))


@pytest.mark.parametrize(
    ("leased_at", "now", "lease", "doubt"),
    [
        (100.0, 100.0, 120.0, False),  # just claimed
        (100.0, 130.0, 120.0, False),  # a quarter: renewed on time
        (100.0, 160.0, 120.0, False),  # exactly half
        (100.0, 160.5, 120.0, True),  # past half: the run stalled, ask the ledger
        (100.0, 400.0, 120.0, True),  # past the lease: another run may have taken it
        (0.0, 0.6, 1.0, True),
    ],
)
def test_lease_in_doubt(leased_at: float, now: float, lease: float, doubt: bool) -> None:
    from uploader.send.submit import lease_in_doubt

    assert lease_in_doubt(leased_at, now, lease) is doubt
