"""SIGKILL `uploader run` (a real subprocess) at random moments, then let a last run finish: nothing is
lost, nothing is created twice, the ledger's job_ids are the API's, the SQLite file is intact."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from harness import (
    KEY,
    check_ledger,
    crash_loop,
    jobs_created,
    status_counts,
    subprocess_cmd,
    subprocess_env,
    write_images,
)
from waiting import wait_until

from uploader.sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.slow


def kill_once_16_created(box: Sandbox, manifest, ledger, *extra: str) -> tuple[list[str], dict[str, str]]:
    """Start `uploader run` (concurrency 16) and SIGKILL it once the sandbox has created 16 jobs whose
    answers it holds back (slow_rate=1): created at the API, none recorded. Returns the command and env."""
    cmd = subprocess_cmd(manifest, ledger, box.base_url, "--concurrency", "16", *extra)
    env = subprocess_env()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: jobs_created(box) >= 16, "the sandbox to create 16 jobs", interval=0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return cmd, env


def test_five_random_kills_then_finish(tmp_path):
    with Sandbox(SandboxConfig(api_key=KEY, seed=11, latency_ms=20, jitter_ms=20)) as box:
        report = crash_loop(box, tmp_path, rows=500, kills=5, seed=int(os.environ.get("CRASH_SEED", "20240611")))
        figures = report.figures()
    print("crash loop:", figures)
    assert figures["kills_survived"] == 5
    first = report.kills[0]
    assert first.statuses.get("succeeded", 0) == 0 and first.statuses.get("in_flight", 0) > 0, first
    assert report.in_flight_at_kills > 0
    assert figures["lost"] == 0 and figures["duplicates"] == 0
    # Every created job is asked again at most once per kill that caught it in flight.
    assert figures["fs_0001_refusals"] <= figures["rows_in_flight_at_kills"]


def test_all_first_rows_created_none_recorded_then_resolved(tmp_path):
    """The kill lands when the API has created the first jobs but not one answer reached the ledger: the
    next run has no succeeded row whose GET reveals the default batch's id until other rows succeed."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=12, slow_rate=1.0, slow_ms=60_000)) as box:
        ledger = tmp_path / "ledger.db"
        cmd, env = kill_once_16_created(box, write_images(tmp_path / "images.csv", 200), ledger)
        at_kill = status_counts(ledger)
        assert at_kill.get("succeeded", 0) == 0 and at_kill["in_flight"] >= 16, at_kill
        box.configure(slow_rate=0.0)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        rows = check_ledger(ledger, box.jobs(), box.stats())
        assert box.stats()["fs_0001_refusals"] == 16
        assert sum(r["recovered"] for r in rows.values()) == 16


def test_nothing_ever_succeeded_in_the_default_batch_stays_uncertain_until_a_later_success(tmp_path):
    """The API offers no way to learn the default batch's id but GET of a job of ours in it. When every
    row of the ledger was created by a killed run and none was recorded, the rerun can only mark them
    `uncertain` (exit 3; nothing is sent a third time); the next run that creates any job in that batch
    resolves them. (This is what `--default-batch` costs; by default the rows go into a batch the ledger
    creates first, and tests/reliability/test_batches.py shows the same kill resolved at once.)"""
    with Sandbox(SandboxConfig(api_key=KEY, seed=13, slow_rate=1.0, slow_ms=60_000)) as box:
        ledger = tmp_path / "ledger.db"
        cmd, env = kill_once_16_created(box, write_images(tmp_path / "images.csv", 16), ledger, "--default-batch")
        box.configure(slow_rate=0.0)
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 3, again.stderr
        assert status_counts(ledger) == {"uncertain": 16}
        third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert third.returncode == 3 and box.stats()["fs_0001_refusals"] == 16  # not sent again
        more = write_images(tmp_path / "more.csv", 1, prefix="more")
        last = subprocess.run(
            subprocess_cmd(more, ledger, box.base_url, "--default-batch"),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert last.returncode == 0, last.stderr
        rows = check_ledger(ledger, box.jobs(), box.stats())
        assert sum(r["recovered"] for r in rows.values()) == 16
