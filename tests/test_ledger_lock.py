"""A run whose SQLite ledger another process holds locked (issue 10, item 8): it says that it waits, it
finishes once the lock is released, and a signal stops it within seconds.

Real `uploader run` subprocesses; the lock is a real `BEGIN IMMEDIATE` held by this test's own sqlite3
connection, as another `uploader load` (or a sqlite3 shell left in a transaction) would hold it.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import pytest
from loopback_api import LoopbackApi
from test_throttle_and_stop import KEY, finish, invoke, rows, spawn, wait_for, write_images

pytestmark = pytest.mark.slow


class Lines:
    """The lines a subprocess writes to stderr, each with when it arrived (a reader thread)."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self) -> str:
        self.thread.join(10)
        return "\n".join(line for _, line in self.lines)


def hold_write_lock(ledger) -> sqlite3.Connection:  # type: ignore[no-untyped-def]
    con = sqlite3.connect(ledger, isolation_level=None, timeout=30)
    con.execute("BEGIN IMMEDIATE")
    return con


def test_a_held_lock_is_waited_for_visibly_then_the_run_finishes(tmp_path):
    """Another process holds the write lock for 6 s mid-run: the run says it waits (after ~2 s, while the
    lock is held), then finishes with every row succeeded. It used to wait without a word."""
    ledger = tmp_path / "l.db"
    with LoopbackApi(KEY, latency=0.02) as api:
        invoke(
            "load",
            str(write_images(tmp_path / "m.csv", 200)),
            "--project-id",
            "proj",
            "--work-flow-id",
            "wf",
            "--ledger",
            str(ledger),
        )
        proc = spawn(None, ledger, api.base_url, "--concurrency", "4")
        err = Lines(proc.stderr)
        wait_for(lambda: api.created() >= 20)
        lock = hold_write_lock(ledger)
        locked_at = time.monotonic()
        time.sleep(6.0)
        lock.rollback()
        lock.close()
        released_at = time.monotonic()
        out, _ = finish(proc, 60)
        text = err.text()
    told = [t for t, line in err.lines if "waiting for the ledger: another process holds its write lock" in line]
    print(f"\nlock held 6 s: told after {told[0] - locked_at:.1f} s" if told else "\nnever told", text[-500:])
    assert proc.returncode == 0, text
    assert told and locked_at < told[0] < released_at  # said while the lock was held
    assert {r["status"] for r in rows(ledger)} == {"succeeded"}


def test_sigterm_while_another_process_holds_the_ledger_lock(tmp_path):
    """SIGTERM while a write waits for another process's lock: the run exits within seconds (it took 35 s),
    says what it could not write, and the next run finishes with every job created once."""
    ledger = tmp_path / "l.db"
    with LoopbackApi(KEY, latency=0.02) as api:
        invoke(
            "load",
            str(write_images(tmp_path / "m.csv", 300)),
            "--project-id",
            "proj",
            "--work-flow-id",
            "wf",
            "--ledger",
            str(ledger),
        )
        proc = spawn(None, ledger, api.base_url, "--concurrency", "4")
        err = Lines(proc.stderr)
        wait_for(lambda: api.created() >= 20)
        lock = hold_write_lock(ledger)
        try:
            time.sleep(1.0)  # the run's next write (results, every 50 ms) is waiting for the lock
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, _ = finish(proc, 40)
            stopped_in = time.monotonic() - signalled
        finally:
            lock.rollback()
            lock.close()
        text = err.text()
        print(f"\nSIGTERM with the ledger locked: exit {proc.returncode} after {stopped_in:.2f} s;", text[-400:])
        assert proc.returncode == 143, text  # 128 + SIGTERM
        assert stopped_in < 15
        assert "Traceback" not in text
        created_before = api.created()
        # The next run (lock free) sends what was left, FS_0001 finds what this one could not record.
        again = invoke(
            "run",
            "--project-id",
            "proj",
            "--work-flow-id",
            "wf",
            "--ledger",
            str(ledger),
            "--base-url",
            api.base_url,
            "--quiet",
        )
        assert again.exit_code == 0, again.output
        final = rows(ledger)
        assert {r["status"] for r in final} == {"succeeded"}
        assert api.created() == 300 and created_before <= 300
        assert {r["job_id"] for r in final} == {j["job_id"] for j in api.jobs.values()}


def test_lock_wait_tells_gives_up_and_is_interrupted(tmp_path):
    """uploader.ledger.engine.LockWait on a real ledger: the wait is reported after `notice_after`, ends with a clear
    LedgerLocked after `limit`, and at once (interrupted) when `give_up` says so; without a LockWait a
    write still gets SQLite's own busy timeout, and once the lock is free writes go through."""
    import pytest

    from uploader.ledger.engine import LedgerLocked, LockWait, set_lock_wait
    from uploader.ledger.ledger import Ledger

    ledger = tmp_path / "l.db"
    led = Ledger.open(ledger)
    told: list[float] = []
    lock = hold_write_lock(ledger)
    try:
        set_lock_wait(
            led.engine,
            LockWait(give_up=lambda: False, waiting=told.append, limit=1.5, notice_after=0.5, notice_every=0.5),
        )
        started = time.monotonic()
        with pytest.raises(LedgerLocked, match="another process has held the ledger's write lock") as caught:
            led.register_worker()
        assert not caught.value.interrupted and 1.5 <= time.monotonic() - started < 10
        assert len(told) >= 2 and told[0] >= 0.5
        set_lock_wait(led.engine, LockWait(give_up=lambda: True, waiting=told.append))
        started = time.monotonic()
        with pytest.raises(LedgerLocked) as caught:
            led.register_worker()
        assert caught.value.interrupted and time.monotonic() - started < 2
    finally:
        lock.rollback()
        lock.close()
    assert led.register_worker()  # the lock is free: the same write goes through
    set_lock_wait(led.engine, None)
    assert led.register_worker()
    led.close()


def test_a_postgresql_statement_watch_tells_a_long_statement_after_notice_after_then_every_notice_every():
    """The thread that watches a PostgreSQL ledger's statements tells a statement still running after
    `notice_after`, then every `notice_every` seconds, each statement afresh; a notice that fails to show
    does not end the watch."""
    from uploader.ledger.engine import LockWait, _StatementWatch

    told: list[float] = []

    def waiting(seconds: float) -> None:
        told.append(seconds)
        raise RuntimeError("the display is gone")

    watch = _StatementWatch(LockWait(give_up=lambda: False, waiting=waiting, notice_after=2.0, notice_every=10.0))
    try:
        seen: dict[tuple[int, float], float] = {}
        for waited in (0.5, 1.9, 2.05, 2.2, 11.0, 12.1, 12.2, 25.0):
            watch._tell(seen, (1, 0.0), waited)
        watch._tell(seen, (1, 50.0), 2.1)  # the same cursor's next statement
    finally:
        watch.close()
    assert told == [2.05, 12.1, 25.0, 2.1]


def test_lock_wait_notice_names_what_is_waited_for():
    from uploader.send.submit import lock_wait_notice

    assert lock_wait_notice("sqlite", 12.4) == "waiting for the ledger: another process holds its write lock (12 s)"
    assert lock_wait_notice("postgresql", 2.04).startswith(
        "waiting for the ledger: its database has not finished a statement for 2 s"
    )
