"""Adversarial tests: the ledger fails or is contended while a run has requests in the air.

The request went out (the job exists at the server) but recording its answer fails or is delayed: PostgreSQL
backends terminated with `pg_terminate_backend`, a table or a worker's row locked by another session for longer
than the run's lease, a `statement_timeout`, the database turned read-only (as after a failover to a standby);
SQLite's write lock held by another process while a second run with a shorter lease starts, a reader holding a
snapshot for the whole run (WAL checkpoint starvation); SIGTERM while the ledger is locked.

Real `uploader run` processes (python -m uploader), real ledgers (a SQLite file, the PostgreSQL server named by
UPLOADER_TEST_POSTGRES_URL, skipped without it), and tests/test_adversary_concurrency_server.py's TruthApi,
which stores every job before its answer is held back (`hold()` / `release()`), so each scenario is driven by
the test: the answers come back only once the ledger is blocked. After each scenario the run ends (or is
stopped), a rerun finishes the upload, and the ledger is compared with the server's truth
(`broken_promises`): no reference_id created twice, every succeeded row holds the server's job_id for that
reference_id and payload, nothing lost; the failing run's exit code and message are honest (a ledger error, not
the API's; no traceback) and the API key is never printed.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text

from tests.test_adversary_concurrency import (
    KEY,
    broken_promises,
    finish,
    in_flight_expired,
    ledger_rows,
    load,
    refs,
    run_args,
    spawn,
    statuses,
    summary,
    write_manifest,
)
from tests.test_adversary_concurrency_server import TruthApi
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

postgres_only = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

ROWS = 40


# -- helpers ---------------------------------------------------------------------------------------------


@contextmanager
def admin(db_url: str) -> Iterator[Connection]:
    """An autocommit connection to the test's own database, as the same role as the runs."""
    engine = create_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def others(conn: Connection, where: str = "TRUE") -> list[int]:
    """The pids of the other sessions on this database (the runs' backends) matching `where`."""
    rows = conn.execute(
        text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            f"AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND ({where})"
        )
    )
    return [int(pid) for (pid,) in rows]


def waiting_on_a_lock(conn: Connection) -> list[int]:
    return others(conn, "wait_event_type = 'Lock'")


def terminate(conn: Connection, pids: list[int]) -> None:
    for pid in pids:
        conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})


def database_name(db_url: str) -> str:
    return db_url.rsplit("/", 1)[1].split("?")[0]


def answers_in_the_air(api: TruthApi, at_least: int = 3) -> None:
    """Let some jobs be created and answered (the run widens its window), then hold the next answers until the
    test releases them: `at_least` jobs exist at the server whose answers the run has not had."""
    wait_until(lambda: sum(api.created.values()) >= 8, "the run's first jobs created")
    api.hold()
    wait_until(lambda: api.waiting >= at_least, f"{at_least} creations held in the air")


@contextmanager
def cut_off(db_url: str, tmp_path: Path, change: str, undo: str) -> Iterator[tuple[TruthApi, int, str]]:
    """A run of a loaded manifest whose database gets `ALTER DATABASE … {change}` and loses its backends while
    answers are in the air, run to its end; `undo` is applied once it ended. Yields the server, the run's exit
    code and output."""
    load(db_url, write_manifest(tmp_path / "m.csv", refs(ROWS)))
    name = database_name(db_url)
    out = tmp_path / "run.out"
    with TruthApi(KEY) as api, admin(db_url) as conn:
        proc = spawn(run_args(db_url, api, None, "--concurrency", "4"), out)
        try:
            answers_in_the_air(api)
            conn.execute(text(f'ALTER DATABASE "{name}" {change}'))
            terminate(conn, others(conn))
            api.release()
            code, output = finish(proc, out)
        finally:
            stop(proc)
            conn.execute(text(f'ALTER DATABASE "{name}" {undo}'))
        yield api, code, output


def error_line(output: str) -> str:
    """The `{"error": …}` document a --json run printed on failure ('' when none)."""
    for line in reversed(output.splitlines()):
        if line.startswith('{"error"'):
            return str(json.loads(line)["error"])
    return ""


def assert_honest_ledger_failure(code: int, output: str) -> None:
    """Exit 1 with one error that names the ledger (not the API), no traceback, no key."""
    assert "Traceback" not in output, output[-3000:]
    assert KEY not in output
    assert code == 1, output[-3000:]
    message = error_line(output)
    assert "ledger" in message.lower(), output[-3000:]
    assert "API" not in message.split(".")[0], message  # the cause is not blamed on the API


def rerun_to_completion(db_url: str, api: TruthApi, tmp_path: Path) -> str:
    out = tmp_path / "rerun.out"
    code, output = finish(spawn(run_args(db_url, api, None, "--concurrency", "4"), out), out)
    assert code == 0, output[-3000:]
    assert KEY not in output
    return output


def assert_truth(db_url: str, api: TruthApi, tmp_path: Path, n: int = ROWS) -> None:
    assert statuses(db_url) == {"succeeded": n}
    assert broken_promises(db_url, api, tmp_path) == []
    assert sum(api.created.values()) == n


def in_flight_refs(db_url: str) -> list[str]:
    return sorted(ref for ref, row in ledger_rows(db_url).items() if row["status"] == "in_flight")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# -- PostgreSQL: backends terminated -------------------------------------------------------------------------


@postgres_only
@pytest.mark.parametrize("when", ["at_any_moment", "blocked_in_a_write"])
def test_backend_terminated_with_answers_in_the_air_stops_honestly_and_a_rerun_loses_nothing(
    db_url: str, tmp_path: Path, when: str
) -> None:
    """The run's PostgreSQL backend is terminated (pg_terminate_backend, as a DBA or a failover would) while
    jobs it created are still unanswered: either between statements, or while its write waits for a table lock
    another session holds. The run stops with one ledger error (exit 1) or carries on; the jobs answered are
    recorded or found again by the rerun's FS_0001 lookup: each created once, every job_id the server's."""
    load(db_url, write_manifest(tmp_path / "m.csv", refs(ROWS)))
    out = tmp_path / "run.out"
    with TruthApi(KEY) as api, admin(db_url) as conn:
        proc = spawn(run_args(db_url, api, None, "--concurrency", "4"), out)
        try:
            answers_in_the_air(api)
            if when == "at_any_moment":
                terminate(conn, others(conn))
                api.release()
            else:
                with admin(db_url) as locker:
                    locker.execute(text("BEGIN"))
                    locker.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
                    api.release()
                    wait_until(lambda: waiting_on_a_lock(conn), "the run's write waiting for the lock")
                    terminate(conn, waiting_on_a_lock(conn))
                    locker.execute(text("ROLLBACK"))
            code, output = finish(proc, out)
        finally:
            stop(proc)
        assert code in (0, 1), output[-3000:]
        if code == 1:
            assert_honest_ledger_failure(code, output)
        assert "Traceback" not in output and KEY not in output
        rerun_to_completion(db_url, api, tmp_path)
        assert_truth(db_url, api, tmp_path)


@postgres_only
def test_ledger_turned_read_only_mid_run_is_one_ledger_error_not_a_traceback(db_url: str, tmp_path: Path) -> None:
    """While jobs are in the air the database becomes read-only for new sessions and the run's backend is
    terminated (what a failover to a hot standby looks like to the client: the connection drops, the next one
    is read-only). The run cannot record: it must stop with one ledger error (exit 1), no traceback, and mark
    itself stopped; once the database is writable again a rerun finishes with nothing lost or created twice.
    Seen: `sqlalchemy.exc.InternalError: (psycopg.errors.ReadOnlySqlTransaction) cannot execute SELECT FOR
    UPDATE in a read-only transaction` and a traceback, from Ledger.record in _Run._close."""
    change, undo = "SET default_transaction_read_only = on", "RESET default_transaction_read_only"
    with cut_off(db_url, tmp_path, change, undo) as (api, code, output):
        rerun_to_completion(db_url, api, tmp_path)
        assert_truth(db_url, api, tmp_path)
        assert_honest_ledger_failure(code, output)


# -- PostgreSQL: locks and timeouts --------------------------------------------------------------------------


@postgres_only
@pytest.mark.parametrize("then", ["sigterm", "release"])
def test_another_sessions_lock_on_the_jobs_table_is_told_and_sigterm_stops_the_run(
    db_url: str, tmp_path: Path, then: str
) -> None:
    """Another session holds `LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE` (a load's merge takes a table lock;
    a DBA's ALTER TABLE, a VACUUM FULL) while the run records the answers of jobs it created. The run says why
    nothing moves, as it does for SQLite's write lock (before: silent for up to 600 s). The README: "The first
    Ctrl-C or SIGTERM stops at once whatever the run is waiting for (… or a ledger another process holds
    locked)": SIGTERM must end the run (exit 143) while the lock is still held (before: the run sat in the
    blocked statement until the lock went away), and a rerun then finishes. Released instead, the run goes on
    and finishes. Either way every job is created once."""
    load(db_url, write_manifest(tmp_path / "m.csv", refs(ROWS)))
    out = tmp_path / "run.out"
    with TruthApi(KEY) as api, admin(db_url) as conn, admin(db_url) as locker:
        proc = spawn(run_args(db_url, api, None, "--concurrency", "4"), out)
        try:
            answers_in_the_air(api)
            locker.execute(text("BEGIN"))
            locker.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            try:
                api.release()
                wait_until(lambda: waiting_on_a_lock(conn), "the run's write waiting for the lock")
                wait_until(lambda: "waiting for the ledger" in out.read_text(errors="replace"), "the notice", 15)
                if then == "sigterm":
                    proc.send_signal(signal.SIGTERM)
                    wait_until(lambda: proc.poll() is not None, "the run to stop on SIGTERM, the lock still held", 20)
            finally:
                locker.execute(text("ROLLBACK"))
            code, output = finish(proc, out)
        finally:
            stop(proc)
        assert code == (143 if then == "sigterm" else 0), output[-3000:]
        assert re.search(r"notice: waiting for the ledger: its database has not finished a statement for \d+ s", output)
        assert "Traceback" not in output and KEY not in output
        if then == "sigterm":
            rerun_to_completion(db_url, api, tmp_path)
        assert_truth(db_url, api, tmp_path)


@postgres_only
def test_statement_timeout_while_the_table_is_locked_is_a_ledger_error_and_the_rows_are_taken_over_at_once(
    db_url: str, tmp_path: Path
) -> None:
    """The database has a `statement_timeout` (300 ms), and another session locks the jobs table while the
    run's answers come back: the run's writes are cancelled (`canceling statement due to statement timeout`).
    The run stops with one ledger error (exit 1), while the lock is still held, leaving its rows in flight but
    itself marked stopped; the rerun takes them over at once (no lease wait), meets FS_0001 for the jobs
    that exist and recovers their job_ids: nothing lost, nothing created twice."""
    load(db_url, write_manifest(tmp_path / "m.csv", refs(ROWS)))
    name = database_name(db_url)
    out = tmp_path / "run.out"
    with TruthApi(KEY) as api, admin(db_url) as conn, admin(db_url) as locker:
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET statement_timeout = '300ms'"))
        proc = spawn(run_args(db_url, api, None, "--concurrency", "4"), out)
        try:
            answers_in_the_air(api)
            locker.execute(text("SET statement_timeout = 0"))
            locker.execute(text("BEGIN"))
            locker.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            try:
                api.release()
                wait_until(lambda: proc.poll() is not None, "the run to stop on its cancelled writes", 30)
            finally:
                locker.execute(text("ROLLBACK"))
            code, output = finish(proc, out)
        finally:
            stop(proc)
            conn.execute(text(f'ALTER DATABASE "{name}" RESET statement_timeout'))
        assert_honest_ledger_failure(code, output)
        assert "statement timeout" in error_line(output)
        assert in_flight_refs(db_url), "the run's rows were expected in flight (its last writes were cancelled too)"
        rerun = rerun_to_completion(db_url, api, tmp_path)
        assert summary(rerun)["this_run"]["recovered"] >= 1, rerun[-2000:]
        assert_truth(db_url, api, tmp_path)


@postgres_only
def test_a_run_stalled_in_its_heartbeat_past_its_lease_is_taken_over_and_its_late_answers_are_fenced(
    db_url: str, tmp_path: Path
) -> None:
    """Run A (2 s lease) has jobs in the air when another session locks A's own row of `workers` (FOR UPDATE):
    A's next heartbeat blocks, and with it A's whole event loop, so A can neither renew its leases nor record the
    answers, which the server then sends. Past the lease, run B (2 s lease) takes A's rows over, meets FS_0001
    and recovers the job_ids; B finishes alone while A is still stalled. The lock goes: A's late answers must be
    refused by the fence, its queued claims not sent. Each job created once, every job_id the server's."""
    load(db_url, write_manifest(tmp_path / "m.csv", refs(ROWS)))
    out_a, out_b = tmp_path / "a.out", tmp_path / "b.out"
    lease = ("--lease-seconds", "2")
    with TruthApi(KEY) as api, admin(db_url) as conn, admin(db_url) as locker:
        a = spawn(run_args(db_url, api, None, "--concurrency", "4", *lease), out_a)
        try:
            answers_in_the_air(api)
            owner = conn.execute(
                text("SELECT owner FROM workers WHERE pid = :p AND stopped_at IS NULL"), {"p": a.pid}
            ).scalar_one()
            locker.execute(text("BEGIN"))
            locker.execute(text("SELECT 1 FROM workers WHERE owner = :o FOR UPDATE"), {"o": owner})
            try:
                wait_until(lambda: waiting_on_a_lock(conn), "run A's heartbeat waiting for its worker row")
                held = api.held_total
                wait_until(lambda: in_flight_expired(db_url) >= held, "run A's leases expired", 15)
                api.release()  # A's answers come back while A cannot record them
                code_b, output_b = finish(
                    spawn(run_args(db_url, api, None, "--concurrency", "4", *lease), out_b), out_b
                )
                assert a.poll() is None, "run A ended while its worker row was locked"
            finally:
                locker.execute(text("ROLLBACK"))
            code_a, output_a = finish(a, out_a)
        finally:
            stop(a)
        assert code_b == 0, output_b[-3000:]
        assert code_a == 0, output_a[-3000:]
        assert "Traceback" not in output_a + output_b and KEY not in output_a + output_b
        assert summary(output_b)["this_run"]["recovered"] >= held, output_b[-2000:]
        assert summary(output_a)["this_run"]["ignored_stale_results"] >= held, output_a[-2000:]
        assert_truth(db_url, api, tmp_path)


# -- SQLite: another process's write lock, a long reader ------------------------------------------------------


@sqlite_only
def test_sqlite_write_lock_held_past_the_lease_while_a_second_shorter_lease_run_starts(
    db_url: str, tmp_path: Path
) -> None:
    """Another process holds the SQLite write lock (BEGIN IMMEDIATE) while run A (2 s lease) has jobs in the
    air, past A's lease; the answers come back meanwhile and cannot be recorded. Run B (1 s lease) is started
    while the lock is still held, then the lock goes: A and B race for it, B may take A's expired rows over.
    Whoever wins, both end with exit 0 and the ledger matches the server: each job created once, every job_id
    the server's, nothing left in flight."""
    path = db_url.removeprefix("sqlite:///")
    load(db_url, write_manifest(tmp_path / "m.csv", refs(ROWS)))
    out_a, out_b = tmp_path / "a.out", tmp_path / "b.out"
    with TruthApi(KEY) as api:
        a = spawn(run_args(db_url, api, None, "--concurrency", "4", "--lease-seconds", "2"), out_a)
        b: subprocess.Popen[bytes] | None = None
        try:
            answers_in_the_air(api)
            lock = sqlite3.connect(path, isolation_level=None, timeout=30)
            try:
                lock.execute("BEGIN IMMEDIATE")
                held = api.held_total
                wait_until(lambda: in_flight_expired(db_url) >= held, "run A's leases expired", 15)
                api.release()
                b = spawn(run_args(db_url, api, None, "--concurrency", "4", "--lease-seconds", "1"), out_b)
                wait_until(lambda: api.waiting == 0, "the held answers sent back")
            finally:
                lock.rollback()
                lock.close()
            code_a, output_a = finish(a, out_a)
            assert b is not None
            code_b, output_b = finish(b, out_b)
        finally:
            stop(a)
            if b is not None:
                stop(b)
        assert code_a == 0, output_a[-3000:]
        assert code_b == 0, output_b[-3000:]
        assert "Traceback" not in output_a + output_b and KEY not in output_a + output_b
        assert_truth(db_url, api, tmp_path)


@sqlite_only
def test_sqlite_reader_holding_a_snapshot_for_the_whole_run_starves_checkpoints_but_loses_nothing(
    db_url: str, tmp_path: Path
) -> None:
    """A reader (a sqlite3 shell, a BI tool) holds a read transaction on the ledger from before the run to
    after it: no checkpoint can reset the WAL, which only grows. The run must not wait for the reader, fail or
    lose a result: exit 0, every row succeeded with the server's job_id; the reader still sees its snapshot."""
    path = db_url.removeprefix("sqlite:///")
    n = 300
    load(db_url, write_manifest(tmp_path / "m.csv", refs(n)))
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetchone() == (0,)
        out = tmp_path / "run.out"
        with TruthApi(KEY) as api:
            code, output = finish(spawn(run_args(db_url, api, None, "--concurrency", "8"), out), out)
            assert code == 0, output[-3000:]
            assert reader.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetchone() == (0,)
            assert_truth(db_url, api, tmp_path, n)
    finally:
        reader.rollback()
        reader.close()


@postgres_only
def test_ledger_unreachable_after_its_connection_drops_is_one_ledger_error_and_a_rerun_takes_the_rows_at_once(
    db_url: str, tmp_path: Path
) -> None:
    """The run's backend is terminated while jobs are in the air and no new connection is accepted (the database's
    CONNECTION LIMIT 0: a restart, a full server): the run cannot record, release its rows or mark itself
    stopped. It must stop with one ledger error (exit 1, no traceback); its rows stay in flight, and a rerun on
    this host (the dead run's pid) takes them over at once, recovers the jobs that exist, creates none twice."""
    with cut_off(db_url, tmp_path, "CONNECTION LIMIT 0", "CONNECTION LIMIT -1") as (api, code, output):
        assert_honest_ledger_failure(code, output)
        assert in_flight_refs(db_url), statuses(db_url)
        rerun = rerun_to_completion(db_url, api, tmp_path)
        assert summary(rerun)["this_run"]["recovered"] >= 1, rerun[-2000:]
        assert_truth(db_url, api, tmp_path)


@postgres_only
def test_idle_in_transaction_timeout_never_cuts_a_run_that_waits_on_a_slow_api(db_url: str, tmp_path: Path) -> None:
    """The README suggests `idle_in_transaction_session_timeout` to bound a frozen machine's row locks. A healthy
    run must never sit in an open transaction while it waits for the API (answers held for a second here, well
    past a 300 ms timeout; the run's session is seen idle, out of any transaction, for
    600 ms meanwhile): it finishes with exit 0 and every job created once."""
    load(db_url, write_manifest(tmp_path / "m.csv", refs(ROWS)))
    name = database_name(db_url)
    out = tmp_path / "run.out"
    with TruthApi(KEY) as api, admin(db_url) as conn:
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET idle_in_transaction_session_timeout = '300ms'"))
        try:
            proc = spawn(run_args(db_url, api, None, "--concurrency", "4"), out)
            try:
                answers_in_the_air(api)
                wait_until(
                    lambda: others(conn, "state = 'idle' AND clock_timestamp() - state_change > interval '600 ms'"),
                    "the run's session idle for twice the timeout while its answers are held",
                )
                api.release()
                code, output = finish(proc, out)
            finally:
                stop(proc)
        finally:
            conn.execute(text(f'ALTER DATABASE "{name}" RESET idle_in_transaction_session_timeout'))
        assert code == 0, output[-3000:]
        assert "Traceback" not in output and KEY not in output
        assert_truth(db_url, api, tmp_path)
