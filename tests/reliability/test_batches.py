"""The batch a run uploads into (issue 10, items 1, 6 and 9), with real `uploader` processes, real SQLite
files, the sandbox and a misbehaving gateway (faulty_proxy) over real HTTP on loopback.

1. Two runs with the same --batch-name started together on a new ledger: one creates the batch, the other
   waits for its id; no run ever removes a ledger another process has open or has written.
6. By default a run puts rows without a batch into a batch the ledger creates and records before the first
   job, so every job's batch id is known: rows whose jobs were all created by a killed run, none answered,
   are resolved by the next run or by `uploader reconcile`.
9. Creating a batch is retried like a job request (429, 500, timeout); a lost answer followed by "name
   taken" tells the user how to go on.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faulty_proxy import BATCH_LIST, BATCH_POST, FaultyProxy, envelope_error
from harness import (
    KEY,
    PROJECT,
    check_ledger,
    jobs_created,
    status_counts,
    subprocess_cmd,
    subprocess_env,
    write_images,
)
from waiting import wait_until

from uploader.sandbox import Sandbox, SandboxConfig, default_batch_id

pytestmark = pytest.mark.slow

JSON = {"Content-Type": "application/json"}


def batches_rows(ledger: Path) -> list[dict]:
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM batches ORDER BY id")]
    finally:
        con.close()


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


# -- item 1: two runs, one batch name, a new ledger ------------------------------------------------------------


def test_two_runs_with_one_batch_name_on_a_new_ledger_share_the_batch_and_keep_the_ledger(tmp_path):
    """Both runs start together on a ledger file that does not exist yet. The gateway holds the first
    batch creation back for 2 s before the API sees it, and the answer to the second for 3 s after the API
    has acted on it. Before the fix the run that created the ledger file (it is a little ahead, so it asks
    first) lost the name to the other, was refused with BATCH_CREATION at 2 s and deleted the file as
    "its own, empty" while the other was about to load and send into it. Every trial: the ledger survives,
    both runs exit 0, one batch is created, every row is created exactly once and recorded succeeded, and
    every job is in that batch; the run that lost the race says it waits for the other's batch."""
    trials, rows = 10, 40
    manifest = write_images(tmp_path / "images.csv", rows)
    waited = 0
    for trial in range(trials):
        with (
            Sandbox(SandboxConfig(api_key=KEY, seed=trial)) as box,
            FaultyProxy(box.base_url, {BATCH_POST: [("hold", 2.0), ("late", 3.0)]}) as proxy,
        ):
            ledger = tmp_path / f"ledger-{trial}.db"
            cmd = subprocess_cmd(manifest, ledger, proxy.base_url, "--batch-name", "race")
            procs = [
                subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)
            ]
            outs = [p.communicate(timeout=60) for p in procs]
            codes = [p.returncode for p in procs]
            assert ledger.exists(), (trial, codes, [e for _, e in outs])
            assert codes == [0, 0], (trial, [e for _, e in outs])
            waited += sum("waiting for another run to create batch 'race'" in e for _, e in outs)
            stats = box.stats()
            assert stats["batches_created"] == 1, (trial, stats)
            led_rows = check_ledger(ledger, box.jobs(), stats)
            assert len(led_rows) == rows
            batch = batches_rows(ledger)
            assert len(batch) == 1 and batch[0]["name"] == "race" and batch[0]["reserved_by"] is None
            assert {j["batch_id"] for j in box.jobs()} == {batch[0]["batch_id"]}
            assert set(_column(ledger, "batch_id").values()) == {batch[0]["batch_id"]}
    print(f"batch-name race: {trials} trials x 2 runs x {rows} rows; runs that said they waited: {waited}")
    assert waited >= trials // 2  # the race was on: in most trials one run waited for the other's batch


def test_a_ledger_another_process_holds_or_has_written_is_never_discarded(tmp_path):
    """Ledger.discard_if_unused (what a failed command does with the ledger file it created) removes the
    file only when no other process has it open and nothing was ever written to it."""
    from uploader.ledger.ledger import Ledger

    path = tmp_path / "new.db"
    mine = Ledger.open(path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from uploader.ledger.ledger import Ledger; "
            "led = Ledger.open(sys.argv[1]); print('open', flush=True); time.sleep(60)",
            str(path),
        ],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        assert mine.discard_if_unused() is False
        assert path.exists()
    finally:
        holder.kill()
        holder.wait()
    written = Ledger.open(path)
    with written.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO batches (project_id, name, batch_id, created_at, auto) VALUES ('p', 'n', 'b', '2026-01-01', 0)"
        )
    assert written.discard_if_unused() is False and path.exists()  # written: kept although nobody holds it
    unused = tmp_path / "unused.db"
    led = Ledger.open(unused)
    assert led.discard_if_unused() is True
    assert not any(Path(f"{unused}{s}").exists() for s in ("", "-wal", "-shm"))


@pytest.mark.parametrize("reading", [True, False], ids=["in a read", "idle"])
def test_a_new_ledger_a_plain_sqlite_connection_has_open_is_never_discarded(tmp_path, reading):
    """Another program's SQLite connection (the sqlite3 shell, a notebook) takes SQLite's POSIX locks, not
    our flock: a discard must see it too, else it unlinks the file and its -wal/-shm under that connection."""
    from uploader.ledger.ledger import Ledger

    path = tmp_path / "new.db"
    mine = Ledger.open(path)
    then = "c.execute('BEGIN'); c.execute('SELECT count(*) FROM jobs').fetchone()" if reading else "pass"
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            f"c.execute('SELECT count(*) FROM jobs').fetchone(); {then}; print('open', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "open"
        assert mine.discard_if_unused() is False
        assert all(Path(f"{path}{s}").exists() for s in ("", "-wal", "-shm"))
    finally:
        reader.kill()
        reader.wait()
    assert Ledger.open(path).discard_if_unused() is True  # the reader is gone: nobody has it open
    assert not any(Path(f"{path}{s}").exists() for s in ("", "-wal", "-shm"))


def test_an_opener_blocked_by_a_discard_opens_the_path_again(tmp_path):
    """A process opening the ledger while a discard holds LOCK_EX waits; the file is unlinked under it, so
    it notices (the file it locked has no name any more) and opens the path again: a new, working ledger."""
    path = tmp_path / "l.db"
    path.touch()
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    opener = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from uploader.ledger.ledger import Ledger; led = Ledger.open(sys.argv[1]); "
            "print(led.counts()['pending'], flush=True)",
            str(path),
        ],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    assert opener.poll() is None  # blocked on LOCK_SH while the "discard" holds LOCK_EX
    path.unlink()
    os.close(fd)
    out, err = opener.communicate(timeout=30)
    assert opener.returncode == 0, err
    assert out.split() == ["0"]
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT count(*) FROM jobs").fetchone() == (0,)  # the schema is in the file at the path
    finally:
        con.close()


@pytest.mark.parametrize("named", [True, False], ids=["batch-name", "own batch"])
def test_a_reservation_left_by_a_killed_run_is_taken_over_at_once(tmp_path, named):
    """A run SIGKILLed while its batch creation is in the air leaves its reservation behind; the next run
    on this host sees its pid gone, takes the reservation over (no wait for staleness) and finishes."""
    with (
        Sandbox(SandboxConfig(api_key=KEY, seed=22)) as box,
        FaultyProxy(box.base_url, {BATCH_POST: [("timeout", 20.0)]}) as proxy,
    ):
        ledger = tmp_path / "ledger.db"
        extra = ["--batch-name", "nov"] if named else []
        cmd = subprocess_cmd(write_images(tmp_path / "images.csv", 10), ledger, proxy.base_url, *extra)
        proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(
            lambda: proxy.seen[f"POST {BATCH_POST[1]}"] > 0, "the batch request to reach the proxy", interval=0.01
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        (left,) = batches_rows(ledger)
        assert left["batch_id"] is None and left["reserved_by"].endswith(f":{proc.pid}@{os.uname().nodename}"[:64])
        started = time.monotonic()
        done = run(cmd)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 20  # not the staleness bound (2 x timeout + 60 s)
        (row,) = batches_rows(ledger)
        assert row["id"] == left["id"] and row["reserved_by"] is None and row["batch_id"]
        assert (row["name"] == "nov") if named else (row["name"] != left["name"])  # own batch: a new name
        assert box.stats()["batches_created"] == 1
        check_ledger(ledger, box.jobs(), box.stats())


# -- item 6: the ledger's own batch -----------------------------------------------------------------------------


def kill_when_created(box: Sandbox, cmd: list[str], n: int) -> None:
    """Start `cmd` and SIGKILL it once the sandbox has created `n` jobs whose answers it holds back."""
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: jobs_created(box) >= n, f"the sandbox to create {n} jobs", interval=0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_every_job_created_by_a_killed_run_none_answered_is_resolved_by_the_next_run(tmp_path):
    """The issue's case: every row's job created at the API by a run killed before any answer arrived. The
    run had put the rows into the ledger's own batch first, so the next run resolves all of them by
    listing it (0 uncertain, each created once); a rerun with more rows reuses the same batch."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=13, slow_rate=1.0, slow_ms=60_000)) as box:
        ledger = tmp_path / "ledger.db"
        cmd = subprocess_cmd(write_images(tmp_path / "images.csv", 16), ledger, box.base_url, "--concurrency", "16")
        kill_when_created(box, cmd, 16)
        assert status_counts(ledger) == {"in_flight": 16}
        box.configure(slow_rate=0.0)
        again = run(cmd)
        assert again.returncode == 0, again.stderr
        rows = check_ledger(ledger, box.jobs(), box.stats())
        assert sum(r["recovered"] for r in rows.values()) == 16 and box.stats()["fs_0001_refusals"] == 16
        (own,) = batches_rows(ledger)
        assert (
            own["auto"] == 1
            and own["name"].startswith("images.csv ")
            and own["name"].endswith(own["name"][-6:])
            and own["reserved_by"] is None
        )
        assert {j["batch_id"] for j in box.jobs()} == {own["batch_id"]}
        more = write_images(tmp_path / "more.csv", 5, prefix="more")
        last = run(subprocess_cmd(more, ledger, box.base_url))
        assert last.returncode == 0, last.stderr
        check_ledger(ledger, box.jobs(), box.stats())
        assert box.stats()["batches_created"] == 1 and len(batches_rows(ledger)) == 1
        assert {j["batch_id"] for j in box.jobs()} == {own["batch_id"]}


def test_reconcile_resolves_rows_whose_jobs_were_all_created_by_a_killed_run(tmp_path):
    """Same kill; the next run meets an API whose batch listing is refused (so it records the FS_0001 rows
    `uncertain` and stops); `uploader reconcile` then resolves every one: their batch id is known."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=14, slow_rate=1.0, slow_ms=60_000)) as box:
        ledger = tmp_path / "ledger.db"
        manifest = write_images(tmp_path / "images.csv", 16)
        kill_when_created(box, subprocess_cmd(manifest, ledger, box.base_url, "--concurrency", "16"), 16)
        box.configure(slow_rate=0.0)
        listing_down = {BATCH_LIST: [("answer", 404, envelope_error("resource_error", "not found"), JSON)] * 50}
        with FaultyProxy(box.base_url, listing_down) as proxy:
            second = run(subprocess_cmd(manifest, ledger, proxy.base_url))
        assert second.returncode in (1, 3), second.stderr
        assert status_counts(ledger) == {"uncertain": 16}
        rec = run([sys.executable, "-m", "uploader", "reconcile", "--ledger", str(ledger), "--base-url", box.base_url])
        assert rec.returncode == 0, (rec.stdout, rec.stderr)
        assert "16 uncertain rows resolved, 0 still uncertain" in rec.stdout
        check_ledger(ledger, box.jobs(), box.stats())


def test_rows_loaded_alone_get_the_batch_when_run_starts_and_reloading_is_unchanged(tmp_path):
    """`uploader load` never talks to the API: its rows get the ledger's batch when `run` starts (one
    UPDATE of the batch_id column; the stored body is not changed, so loading the same manifest again finds
    every row unchanged); the sandbox receives every job with that batch_id."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=15)) as box:
        ledger = tmp_path / "ledger.db"
        manifest = write_images(tmp_path / "images.csv", 30)
        base = [sys.executable, "-m", "uploader"]
        load = run(
            [*base, "load", str(manifest), "--project-id", PROJECT, "--work-flow-id", "wf", "--ledger", str(ledger)]
        )
        assert load.returncode == 0, load.stderr
        bodies = {k: r for k, r in _bodies(ledger).items()}
        done = run(subprocess_cmd(None, ledger, box.base_url))
        assert done.returncode == 0, done.stderr
        check_ledger(ledger, box.jobs(), box.stats())
        (own,) = batches_rows(ledger)
        assert {j["batch_id"] for j in box.jobs()} == {own["batch_id"]}
        assert _bodies(ledger) == bodies and all('"batch_id"' not in b for b in bodies.values())
        reload = run(
            [*base, "load", str(manifest), "--project-id", PROJECT, "--work-flow-id", "wf", "--ledger", str(ledger)]
        )
        assert reload.returncode == 0 and "updated" not in reload.stdout.replace("0 updated", ""), reload.stdout


def _column(ledger: Path, column: str) -> dict[str, str]:
    """reference_id -> one column of the jobs table, read with plain sqlite3."""
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return dict(con.execute(f"SELECT reference_id, {column} FROM jobs").fetchall())
    finally:
        con.close()


def _bodies(ledger: Path) -> dict[str, str]:
    return _column(ledger, "body")


def test_default_batch_option_sends_rows_to_the_projects_default_batch(tmp_path):
    with Sandbox(SandboxConfig(api_key=KEY, seed=16)) as box:
        ledger = tmp_path / "ledger.db"
        done = run(subprocess_cmd(write_images(tmp_path / "images.csv", 10), ledger, box.base_url, "--default-batch"))
        assert done.returncode == 0, done.stderr
        check_ledger(ledger, box.jobs(), box.stats())
        assert box.stats()["batches_created"] == 0 and batches_rows(ledger) == []
        assert {j["batch_id"] for j in box.jobs()} == {default_batch_id(PROJECT)}
        clash = run(subprocess_cmd(None, ledger, box.base_url, "--default-batch", "--batch-name", "x"))
        assert clash.returncode == 2 and "--default-batch" in clash.stderr and "Traceback" not in clash.stderr


# -- item 9: batch creation follows the job requests' policy --------------------------------------------------


def _batch_run(
    tmp_path: Path, box: Sandbox, rules, *extra: str
) -> tuple[subprocess.CompletedProcess[str], FaultyProxy]:
    ledger = tmp_path / "ledger.db"
    manifest = write_images(tmp_path / "images.csv", 10)
    with FaultyProxy(box.base_url, rules) as proxy:
        done = run(subprocess_cmd(manifest, ledger, proxy.base_url, *extra))
    return done, proxy


@pytest.mark.parametrize("named", [True, False], ids=["batch-name", "own batch"])
@pytest.mark.parametrize("fault", ["429", "500", "timeout"])
def test_batch_creation_is_retried_after_a_429_a_500_or_a_timeout(tmp_path, fault, named):
    first = {
        "429": ("answer", 429, envelope_error("rate_limited", "slow down"), {**JSON, "Retry-After": "1"}),
        "500": ("answer", 500, envelope_error("FS_0000", "internal error"), JSON),
        "timeout": ("timeout", 3.0),
    }[fault]
    with Sandbox(SandboxConfig(api_key=KEY, seed=17)) as box:
        extra = ["--timeout", "1"] + (["--batch-name", "nov"] if named else [])
        done, proxy = _batch_run(tmp_path, box, {BATCH_POST: [first]}, *extra)
        assert done.returncode == 0, done.stderr
        assert proxy.seen[f"POST {BATCH_POST[1]}"] == 2
        stats = box.stats()
        assert stats["batches_created"] == 1
        check_ledger(tmp_path / "ledger.db", box.jobs(), stats)
        (row,) = batches_rows(tmp_path / "ledger.db")
        assert {j["batch_id"] for j in box.jobs()} == {row["batch_id"]}


def test_a_lost_batch_answer_then_name_taken_tells_how_to_continue(tmp_path):
    """The first POST creates the batch but its answer is lost; the retry is refused as BATCH_CREATION.
    With --batch-name: exit 1, one message saying the batch probably exists and to pass --batch-id (or
    choose another name), no traceback, no job sent, nothing left reserved."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=18)) as box:
        done, proxy = _batch_run(tmp_path, box, {BATCH_POST: [("lose",)]}, "--batch-name", "nov", "--timeout", "2")
        assert done.returncode == 1, done.stderr
        assert "probably exists" in done.stderr and "--batch-id" in done.stderr and "--batch-name" in done.stderr
        assert "Traceback" not in done.stderr and KEY not in done.stderr + done.stdout
        assert proxy.seen[f"POST {BATCH_POST[1]}"] == 2
        assert box.stats()["batches_created"] == 1 and box.stats()["jobs_created"] == 0
        ledger = tmp_path / "ledger.db"
        assert not ledger.exists() or batches_rows(ledger) == []


def test_the_own_batch_takes_a_new_name_when_its_answer_was_lost(tmp_path):
    """The same for the ledger's own batch: the run says the lost one may exist (empty) and creates another
    name; every job goes to the batch it recorded."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=19)) as box:
        done, proxy = _batch_run(tmp_path, box, {BATCH_POST: [("lose",)]}, "--timeout", "2")
        assert done.returncode == 0, done.stderr
        assert "may have been created" in done.stderr
        assert proxy.seen[f"POST {BATCH_POST[1]}"] == 3  # lost, taken, new name
        assert box.stats()["batches_created"] == 2
        (row,) = batches_rows(tmp_path / "ledger.db")
        assert {j["batch_id"] for j in box.jobs()} == {row["batch_id"]}
        check_ledger(tmp_path / "ledger.db", box.jobs(), box.stats())


def test_a_refused_key_on_batch_creation_stops_at_once(tmp_path):
    with Sandbox(SandboxConfig(api_key=KEY, seed=20)) as box:
        rules = {BATCH_POST: [("answer", 401, envelope_error("auth-failure", "API key incorrect"), JSON)]}
        done, proxy = _batch_run(tmp_path, box, rules)
        assert done.returncode == 1 and "API key" in done.stderr and "Traceback" not in done.stderr
        assert proxy.seen[f"POST {BATCH_POST[1]}"] == 1 and box.stats()["jobs_created"] == 0


# -- pure pieces ------------------------------------------------------------------------------------------------


def test_body_for_send_adds_the_rows_batch_only_when_the_body_has_none():
    from uploader.send.submit import body_for_send

    body = '{"reference_id":"a","work_flow_id":"w","data":{"image_url":"https://x/a.jpg"}}'
    sent = body_for_send(body, "b-1")
    assert json.loads(sent) == {"batch_id": "b-1", **json.loads(body)} and sent.startswith('{"batch_id":"b-1",')
    assert body_for_send(body, None) is body
    own = '{"reference_id":"a","work_flow_id":"w","batch_id":"mine","data":{}}'
    assert body_for_send(own, "b-1") == own
    nested = '{"reference_id":"a","work_flow_id":"w","data":{"metadata":{"batch_id":"x"}}}'
    assert json.loads(body_for_send(nested, "b-1"))["batch_id"] == "b-1"
    assert json.loads(body_for_send(nested, "b-1"))["data"] == {"metadata": {"batch_id": "x"}}


def test_auto_batch_name_and_dead_reservations():
    from uploader.send.batches import auto_batch_name, reservation_dead

    now = dt.datetime(2026, 12, 2, 16, 40, 5)
    assert auto_batch_name("images.csv", now, "3f9a1c") == "images.csv 2026-12-02 16:40 UTC 3f9a1c"
    assert auto_batch_name(None, now, "3f9a1c").startswith("uploader 2026-12-02")
    fresh, old = now - dt.timedelta(seconds=5), now - dt.timedelta(seconds=500)
    alive = {42}.__contains__
    assert not reservation_dead("t:42@h", fresh, now, 120, "h", alive)
    assert reservation_dead("t:43@h", fresh, now, 120, "h", alive)  # gone on this host
    assert not reservation_dead("t:43@other", fresh, now, 120, "h", alive)  # another host: wait for staleness
    assert reservation_dead("t:43@other", old, now, 120, "h", alive)
    assert reservation_dead("t:42@h", old, now, 120, "h", alive)  # frozen or pid reused


# -- item 8 for the batch: every wait of its creation ends on the first signal; --max-retry-after applies -----

DAY_429 = ("answer", 429, envelope_error("rate_limited", "slow down"), {**JSON, "Retry-After": "86400"})


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[float, str]:
    """Signal `proc`; (seconds until it exited, its stderr)."""
    signalled = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the run did not stop within 30 s of the signal; stderr: {err[-2000:]}")
    return time.monotonic() - signalled, err


def _wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("named", [True, False], ids=["batch-name", "own batch"])
def test_a_signal_during_batch_creation_retry_after_of_a_day_stops_at_once(tmp_path, named, sig):
    """The batch POST is answered 429 `Retry-After: 86400`: the run waits (--max-retry-after, 300 s by
    default) before its first job. The first signal ends that wait at once: exit 130 (SIGINT) or 143
    (SIGTERM), the resume hint, no traceback, no job sent, no reservation left. The same command against the
    healthy API then finishes, every row created once. Before, the batch creation slept with no signal
    handling: SIGTERM killed the run (exit -15, its reservation left behind)."""
    with (
        Sandbox(SandboxConfig(api_key=KEY, seed=23)) as box,
        FaultyProxy(box.base_url, {BATCH_POST: [DAY_429] * 20}) as proxy,
    ):
        ledger = tmp_path / "ledger.db"
        extra = ["--batch-name", "nov"] if named else []
        manifest = write_images(tmp_path / "images.csv", 12)
        proc = subprocess.Popen(
            subprocess_cmd(manifest, ledger, proxy.base_url, *extra),
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_until(lambda: proxy.seen[f"POST {BATCH_POST[1]}"] >= 1)
        time.sleep(1.0)  # the 429 is in: the run waits
        stopped_in, err = _stop(proc, sig)
        print(
            f"\n{signal.Signals(sig).name} while the batch creation waits out a Retry-After of 86400 s "
            f"({'named' if named else 'own'} batch): exit {proc.returncode} after {stopped_in:.2f} s, "
            f"{proxy.seen[f'POST {BATCH_POST[1]}']} batch POST(s)"
        )
        assert proc.returncode == 128 + sig, err  # 130 after SIGINT, 143 after SIGTERM
        assert stopped_in < 10
        assert "Traceback" not in err and "run the same command again" in err.lower()
        assert "86400 s (Retry-After)" in err and "--max-retry-after" in err
        assert proxy.seen[f"POST {BATCH_POST[1]}"] == 1
        assert box.stats()["jobs_created"] == 0 and box.stats()["batches_created"] == 0
        assert not ledger.exists() or batches_rows(ledger) == []  # no reservation left behind
        again = run(subprocess_cmd(manifest, ledger, box.base_url, *extra))
        assert again.returncode == 0, again.stderr
        assert box.stats()["batches_created"] == 1
        assert len(check_ledger(ledger, box.jobs(), box.stats())) == 12
        (row,) = batches_rows(ledger)
        assert row["reserved_by"] is None and {j["batch_id"] for j in box.jobs()} == {row["batch_id"]}


@pytest.mark.parametrize("named", [True, False], ids=["batch-name", "own batch"])
def test_a_signal_while_waiting_for_another_runs_batch_stops_at_once(tmp_path, named):
    """Run A holds the batch reservation (its creation request hangs at the gateway); run B on the same
    ledger waits for A's batch. SIGTERM to B ends its wait at once: exit 143, nothing sent, A's reservation
    untouched. A is then SIGKILLed: the next run takes its reservation over at once and finishes, every row
    created once. Before, the wait slept with no signal handling: SIGTERM killed B (exit -15)."""
    with (
        Sandbox(SandboxConfig(api_key=KEY, seed=24)) as box,
        FaultyProxy(box.base_url, {BATCH_POST: [("timeout", 60.0)]}) as proxy,
    ):
        ledger = tmp_path / "ledger.db"
        extra = ["--batch-name", "nov"] if named else []
        manifest = write_images(tmp_path / "images.csv", 12)
        cmd = subprocess_cmd(manifest, ledger, proxy.base_url, *extra)
        holder = subprocess.Popen(
            cmd + ["--timeout", "60"], env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_until(lambda: proxy.seen[f"POST {BATCH_POST[1]}"] >= 1)
            waiter = subprocess.Popen(
                cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            deadline = time.monotonic() + 30
            err_lines: list[str] = []
            while not any("waiting for another run" in line for line in err_lines):  # B says it waits (after 1 s)
                assert time.monotonic() < deadline and waiter.poll() is None, err_lines
                err_lines.append(waiter.stderr.readline())
            stopped_in, err = _stop(waiter)
            err = "".join(err_lines) + err
            print(
                f"\nSIGTERM while waiting for another run's batch ({'named' if named else 'own'} batch): "
                f"exit {waiter.returncode} after {stopped_in:.2f} s"
            )
            assert waiter.returncode == 143, err  # 128 + SIGTERM
            assert stopped_in < 10
            assert "Traceback" not in err and "run the same command again" in err.lower()
            assert proxy.seen[f"POST {BATCH_POST[1]}"] == 1  # B sent nothing
            (held,) = batches_rows(ledger)
            assert held["batch_id"] is None
            assert held["reserved_by"].endswith(f":{holder.pid}@{os.uname().nodename}"[:64])
        finally:
            holder.kill()
            holder.wait()
        started = time.monotonic()
        again = run(subprocess_cmd(manifest, ledger, box.base_url, *extra))
        assert again.returncode == 0, again.stderr
        assert time.monotonic() - started < 20  # A's reservation taken over at once (its pid is gone)
        assert box.stats()["batches_created"] == 1
        assert len(check_ledger(ledger, box.jobs(), box.stats())) == 12
        (row,) = batches_rows(ledger)
        assert row["reserved_by"] is None and {j["batch_id"] for j in box.jobs()} == {row["batch_id"]}


@pytest.mark.parametrize("named", [True, False], ids=["batch-name", "own batch"])
def test_max_retry_after_applies_to_batch_creation(tmp_path, named):
    """The first batch POST is answered 429 `Retry-After: 86400`, the next one goes through. With
    `--max-retry-after 1` the run waits about a second, says so, and finishes. Before, the batch creation
    capped Retry-After at the 300 s default whatever --max-retry-after said (this run timed out)."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=25)) as box:
        extra = ["--max-retry-after", "1"] + (["--batch-name", "nov"] if named else [])
        started = time.monotonic()
        try:
            done, proxy = _batch_run(tmp_path, box, {BATCH_POST: [DAY_429]}, *extra)
        except subprocess.TimeoutExpired:
            pytest.fail("the run waited out more than --max-retry-after 1 (60 s)")
        print(
            f"\n--max-retry-after 1, batch POST answered Retry-After 86400 ({'named' if named else 'own'} "
            f"batch): exit {done.returncode} after {time.monotonic() - started:.2f} s"
        )
        assert done.returncode == 0, done.stderr
        assert "86400 s (Retry-After)" in done.stderr and "waiting 1 s at most (--max-retry-after)" in done.stderr
        assert proxy.seen[f"POST {BATCH_POST[1]}"] == 2
        assert box.stats()["batches_created"] == 1
        check_ledger(tmp_path / "ledger.db", box.jobs(), box.stats())


def test_a_batch_request_in_the_air_is_let_finish_on_the_first_signal_and_cancelled_on_the_second(tmp_path):
    """As for jobs: the first signal lets the batch POST in the air finish (bounded by --timeout), so a batch
    the API created is recorded, not lost (the rerun uses it: one batch created); a second signal cancels
    the request at once and gives the reservation up. Both exit 143 (SIGTERM), no job sent."""
    manifest = write_images(tmp_path / "images.csv", 8)
    posts = f"POST {BATCH_POST[1]}"
    for second in (False, True):
        fault = ("timeout", 60.0) if second else ("late", 3.0)  # late: the API creates it, the answer waits 3 s
        with (
            Sandbox(SandboxConfig(api_key=KEY, seed=26)) as box,
            FaultyProxy(box.base_url, {BATCH_POST: [fault]}) as proxy,
        ):
            ledger = tmp_path / f"ledger-{second}.db"
            cmd = subprocess_cmd(manifest, ledger, proxy.base_url, "--batch-name", "nov", "--timeout", "60")
            proc = subprocess.Popen(
                cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            _wait_until(lambda: proxy.seen[posts] >= 1)
            time.sleep(0.3)
            if second:
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.5)
            stopped_in, err = _stop(proc)
            print(
                f"\nbatch POST in the air, {'two signals' if second else 'one signal'}: exit {proc.returncode} "
                f"after {stopped_in:.2f} s"
            )
            assert proc.returncode == 143, err  # 128 + SIGTERM
            assert "Traceback" not in err and "run the same command again" in err.lower()
            assert box.stats()["jobs_created"] == 0
            if second:
                assert stopped_in < 10
                assert not ledger.exists() or batches_rows(ledger) == []  # given up
            else:
                (row,) = batches_rows(ledger)  # its answer arrived after the signal: recorded
                assert row["batch_id"] and row["reserved_by"] is None
            again = run(subprocess_cmd(manifest, ledger, box.base_url, "--batch-name", "nov"))
            assert again.returncode == 0, again.stderr
            assert len(check_ledger(ledger, box.jobs(), box.stats())) == 8
            assert box.stats()["batches_created"] == 1  # first signal: the batch was used, not lost


@pytest.mark.parametrize("command", ["run", "reconcile"])
def test_max_retry_after_applies_to_the_lookups(tmp_path, command):
    """Every job created by a killed run, none answered; the next `run` (or `reconcile`) looks them up by
    listing the batch, whose first page is answered 429 `Retry-After: 86400`. With --max-retry-after 1 it
    waits about a second and resolves all 16. Before, the listing's retries capped Retry-After at the 300 s
    default (the run timed out) and `reconcile` had no --max-retry-after (exit 2)."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=27, slow_rate=1.0, slow_ms=60_000)) as box:
        ledger = tmp_path / "ledger.db"
        manifest = write_images(tmp_path / "images.csv", 16)
        kill_when_created(box, subprocess_cmd(manifest, ledger, box.base_url, "--concurrency", "16"), 16)
        box.configure(slow_rate=0.0)
        if command == "run":
            cmd = subprocess_cmd(manifest, ledger, "{url}", "--max-retry-after", "1")
        else:  # a run whose listings are refused leaves the 16 rows uncertain (FS_0001), for reconcile
            listing_down = {BATCH_LIST: [("answer", 404, envelope_error("resource_error", "not found"), JSON)] * 50}
            with FaultyProxy(box.base_url, listing_down) as down:
                run(subprocess_cmd(manifest, ledger, down.base_url))
            assert status_counts(ledger) == {"uncertain": 16}
            cmd = [
                sys.executable,
                "-m",
                "uploader",
                "reconcile",
                "--ledger",
                str(ledger),
                "--base-url",
                "{url}",
                "--max-retry-after",
                "1",
            ]
        with FaultyProxy(box.base_url, {BATCH_LIST: [DAY_429]}) as proxy:
            cmd = [part.replace("{url}", proxy.base_url) for part in cmd]
            started = time.monotonic()
            try:
                done = run(cmd)
            except subprocess.TimeoutExpired:
                pytest.fail("the lookup waited out more than --max-retry-after 1 (60 s)")
            print(
                f"\n{command} --max-retry-after 1, listing answered Retry-After 86400: exit {done.returncode} "
                f"after {time.monotonic() - started:.2f} s, {proxy.seen[f'GET {BATCH_LIST[1]}']} listing GETs"
            )
            assert done.returncode == 0, (done.stdout, done.stderr)
            assert proxy.seen[f"GET {BATCH_LIST[1]}"] >= 2  # the 429, then the listing
        rows = check_ledger(ledger, box.jobs(), box.stats())
        assert len(rows) == 16 and sum(r["recovered"] for r in rows.values()) == 16


_PROBE = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
kind = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0)))
print(kind[0] != fcntl.F_UNLCK)
"""


def test_opening_a_ledger_again_keeps_the_locks_of_the_one_already_open(tmp_path):
    """Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's included.
    A second Ledger.open of the same file in one process (a notebook reading while an upload runs) must not
    open and close a descriptor of its own: the first one's connections would lose their locks, and another
    process's connection, closing, would take itself for the last one and remove the -wal under them."""
    from uploader.ledger.ledger import Ledger

    path = tmp_path / "l.db"

    def locked_by_us() -> bool:
        probe = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stderr
        return probe.stdout.strip() == "True"

    first = Ledger.open(path)
    try:
        first.counts()  # a pooled connection, idle in WAL mode, holds a read lock on the lock bytes
        assert locked_by_us()
        second = Ledger.open(path)
        try:
            assert locked_by_us()
            second.counts()
            assert locked_by_us()
        finally:
            second.close()
        assert locked_by_us()
    finally:
        first.close()
    assert not locked_by_us()
