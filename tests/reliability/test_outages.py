"""The API restarting in the middle of a run, and the ledger's disk filling up."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time

import pytest
from click.testing import CliRunner
from harness import (
    KEY,
    PROJECT,
    check_ledger,
    jobs_created,
    ledger_rows,
    run_args,
    subprocess_cmd,
    subprocess_env,
    write_images,
)
from sqlalchemy import event
from waiting import wait_until

from uploader.cli.commands import cli
from uploader.errors import LedgerError
from uploader.ledger.ledger import Ledger
from uploader.manifest.reader import ManifestOptions
from uploader.sandbox import Sandbox, SandboxConfig
from uploader.send.runner import run_upload
from uploader.send.submit import RunOptions

pytestmark = pytest.mark.slow


def test_sandbox_restart_mid_run(tmp_path):
    """Stop the API mid-run, keep it down for a second, start a new one on the same port from the same state
    file: the run rides it out (connection errors are retryable) and ends exactly-once. 10% of the first
    server's replies are held back after the job was created, so the stop cuts created-but-unanswered
    requests: the new server refuses those with FS_0001 and the lookup finds them."""
    state = tmp_path / "sandbox.jsonl"
    config = SandboxConfig(
        api_key=KEY, seed=21, latency_ms=20, jitter_ms=10, state_file=state, slow_rate=0.1, slow_ms=5000
    )
    manifest = write_images(tmp_path / "images.csv", 600)
    ledger = tmp_path / "ledger.db"
    first = Sandbox(config).start()
    port = first.port
    cmd = subprocess_cmd(manifest, ledger, first.base_url, "--concurrency", "32", "--json")
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: jobs_created(first) >= 200, "the sandbox to create 200 jobs", interval=0.002)
        first.stop()  # requests in the air are cut; some were already created (and journaled)
        before = first.stats()
        time.sleep(1.0)  # down: every attempt meets "connection refused"
        second = Sandbox(config.replace(slow_rate=0.0), port=port).start()
        try:
            out, err = proc.communicate(timeout=90)
            after, jobs = second.stats(), second.jobs()
        finally:
            second.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert before["jobs_created"] >= 200 and after["jobs_total"] == 600
    rows = check_ledger(ledger, jobs, after)
    summary = json.loads(out[out.index("{") :])
    cut = before["faults"]["slow"]
    assert after["fs_0001_refusals"] >= cut > 0  # every cut reply was resent and refused, then looked up
    assert sum(r["recovered"] for r in rows.values()) >= cut
    print(
        "\nsandbox restart:",
        {
            "created_before_stop": before["jobs_created"],
            "replies_cut_by_the_stop": cut,
            "created_after_restart": after["jobs_created"],
            "requests_total": before["requests_total"] + after["requests_total"],
            "client_requests": summary["this_run"]["requests"],
            "client_retries": summary["this_run"]["retries"],
            "client_could_not_connect": summary["this_run"]["unreachable"],
            "fs_0001_refusals": before["fs_0001_refusals"] + after["fs_0001_refusals"],
        },
    )


class DiskFull:
    """After `after` successful calls of Ledger.<method>, its writes fail as SQLite does when the disk is
    full: sqlite3.OperationalError raised by the driver (SQLAlchemy wraps it, uploader.ledger.engine translates it).
    Other ledger writes keep working (SQLite often still manages a smaller write, e.g. the release)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, ledger_path, after: int, method: str = "record") -> None:
        self.after = after
        self.calls = 0
        self.snapshot: dict[str, dict] | None = None
        original = getattr(Ledger, method)
        guard = self

        def patched(self_, *args, **kwargs):  # type: ignore[no-untyped-def]
            guard.calls += 1
            if guard.calls <= guard.after:
                return original(self_, *args, **kwargs)
            if guard.snapshot is None:
                guard.snapshot = ledger_rows(ledger_path)

            def full(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
                if statement.lstrip().upper().startswith("UPDATE JOBS"):
                    raise sqlite3.OperationalError("database or disk is full")

            event.listen(self_.engine, "before_cursor_execute", full)
            try:
                return original(self_, *args, **kwargs)
            finally:
                event.remove(self_.engine, "before_cursor_execute", full)

        monkeypatch.setattr(Ledger, method, patched)


@pytest.mark.parametrize("method, after", [("record", 5), ("claim", 10), ("heartbeat", 0)])
def test_disk_full_stops_the_run_and_loses_nothing(tmp_path, monkeypatch, method, after):
    config = SandboxConfig(api_key=KEY, seed=22, latency_ms=20, jitter_ms=10)
    manifest = write_images(tmp_path / "images.csv", 1000 if method == "heartbeat" else 400)
    ledger_path = tmp_path / "ledger.db"
    with Sandbox(config) as box:
        disk = DiskFull(monkeypatch, ledger_path, after=after, method=method)
        led = Ledger.open(ledger_path)
        started = time.monotonic()
        # lease_seconds=4: a heartbeat every second
        with pytest.raises(LedgerError, match="disk is full"):
            run_upload(
                led,
                manifest,
                ManifestOptions(project_id=PROJECT, work_flow_id="wf"),
                base_url=box.base_url,
                api_key=KEY,
                run_options=RunOptions(concurrency=4, lease_seconds=4),
                handle_signals=False,
            )
        assert time.monotonic() - started < 20
        led.close()
        monkeypatch.undo()
        assert disk.snapshot is not None
        after = ledger_rows(ledger_path)
        # Nothing recorded before the failure changed; nothing is held by a lease that is still valid.
        for ref, row in disk.snapshot.items():
            if row["status"] in ("succeeded", "failed"):
                assert (after[ref]["status"], after[ref]["job_id"]) == (row["status"], row["job_id"])
        assert {r["status"] for r in after.values()} <= {"succeeded", "pending", "in_flight"}
        assert all(r["lease_owner"] is None for r in after.values() if r["status"] == "pending")
        assert not any(r["status"] == "in_flight" for r in after.values())
        created = box.stats()["jobs_created"]
        succeeded = sum(r["status"] == "succeeded" for r in after.values())
        if method == "record":
            assert created > succeeded  # answers that could not be recorded: those rows are sent again
        else:
            assert created == succeeded  # the answers in the air were still recorded on the way out
        # The next run resends the rest without creating anything twice.
        result = CliRunner().invoke(
            cli, run_args(None, ledger_path, box.base_url), env={"PLAYMENT_API_KEY": KEY}, catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        check_ledger(ledger_path, box.jobs(), box.stats())


def test_disk_full_through_the_cli_is_a_clear_message(tmp_path, monkeypatch):
    config = SandboxConfig(api_key=KEY, seed=23, latency_ms=20)
    manifest = write_images(tmp_path / "images.csv", 300)
    ledger_path = tmp_path / "ledger.db"
    with Sandbox(config) as box:
        DiskFull(monkeypatch, ledger_path, after=3)
        result = CliRunner().invoke(
            cli,
            run_args(manifest, ledger_path, box.base_url, "--concurrency", "16"),
            env={"PLAYMENT_API_KEY": KEY},
            catch_exceptions=False,
        )
        monkeypatch.undo()
        assert result.exit_code == 1, result.output
        assert "disk is full" in result.output and "Traceback" not in result.output
        print("\nCLI said:", result.output.strip().splitlines()[-1])
        again = CliRunner().invoke(
            cli, run_args(None, ledger_path, box.base_url), env={"PLAYMENT_API_KEY": KEY}, catch_exceptions=False
        )
        assert again.exit_code == 0, again.output
        check_ledger(ledger_path, box.jobs(), box.stats())


def test_api_down_for_good_stops_the_run_without_failing_rows(tmp_path):
    """Nothing listens: the run pauses and retries without spending attempts, then stops with a message."""
    import socket

    from uploader.errors import FatalApiError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    manifest = write_images(tmp_path / "images.csv", 50)
    ledger_path = tmp_path / "ledger.db"
    led = Ledger.open(ledger_path)
    started = time.monotonic()
    with pytest.raises(FatalApiError, match="cannot connect to the API"):
        run_upload(
            led,
            manifest,
            ManifestOptions(project_id=PROJECT, work_flow_id="wf"),
            base_url=f"http://127.0.0.1:{port}",
            api_key=KEY,
            run_options=RunOptions(concurrency=8, outage_seconds=1.5),
            handle_signals=False,
        )
    assert time.monotonic() - started < 15
    led.close()
    rows = ledger_rows(ledger_path)
    assert all(r["status"] == "pending" and r["attempts"] == 0 for r in rows.values()), rows


def test_rows_a_full_disk_left_in_flight_are_resent_at_once(tmp_path, monkeypatch):
    """Disk full: the run stops and cannot even release the rows in the air (the ledger refuses that write
    too), but it does mark itself stopped. The next run on the host used to wait out the whole lease (120 s)
    before resending them; a stopped run has nothing in the air, so they are taken at once."""
    config = SandboxConfig(api_key=KEY, seed=24, latency_ms=20, jitter_ms=10)
    manifest = write_images(tmp_path / "images.csv", 300)
    ledger_path = tmp_path / "ledger.db"
    with Sandbox(config) as box:
        DiskFull(monkeypatch, ledger_path, after=5, method="record")
        DiskFull(monkeypatch, ledger_path, after=0, method="release")
        led = Ledger.open(ledger_path)
        with pytest.raises(LedgerError, match="disk is full"):
            run_upload(
                led,
                manifest,
                ManifestOptions(project_id=PROJECT, work_flow_id="wf"),
                base_url=box.base_url,
                api_key=KEY,
                run_options=RunOptions(concurrency=8, lease_seconds=120),
                handle_signals=False,
            )
        led.close()
        monkeypatch.undo()
        stuck = sum(r["status"] == "in_flight" for r in ledger_rows(ledger_path).values())
        assert stuck > 0  # left in flight under a 120 s lease
        started = time.monotonic()
        done = subprocess.run(
            subprocess_cmd(None, ledger_path, box.base_url, "--lease-seconds", "120"),
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=100,
        )
        took = time.monotonic() - started
        print(f"\n{stuck} rows left in flight by the stopped run; the next run finished in {took:.1f} s")
        assert done.returncode == 0, done.stderr[-2000:]
        assert took < 60  # not the 120 s lease
        check_ledger(ledger_path, box.jobs(), box.stats())
