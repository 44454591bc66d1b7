"""Adversarial round against the PostgreSQL ledger: its connections cut, stalled, refused or terminated at moments
of every command's work, runs on machines whose clocks disagree, a load while runs send, tables missing, a lock
held by another session, a password in the ledger URL.

Real `python -m uploader` processes, the real PostgreSQL server named by UPLOADER_TEST_POSTGRES_URL (each test
gets a database of its own: tests/conftest.py's `db_url`; the module is skipped without the variable, and fails
under CI=true), real loopback HTTP to tests/test_adversary_concurrency_server.py's TruthApi (one job per
reference_id and project, FS_0001 for a second, every creation counted). The ledger's connections go through
tests/test_adversary_postgres_server.py's PgProxy, a TCP relay the test controls (the shared server itself is
never touched), or are ended with `pg_terminate_backend` on the test's own database.

The truth after each scenario is the server's store and the ledger read with plain SQL (`broken_promises`): no
job created twice, no `succeeded` row without its own job (the job_id the server made for that reference_id in
that project, holding the row's payload), after a rerun every row succeeded; a failing command says so in one
line (exit 1; 130/143 after a signal), without a traceback, the API key or the database password.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from tests.test_adversary_concurrency import (
    KEY,
    PROJECT,
    broken_promises,
    call,
    env,
    finish,
    ledger_rows,
    load,
    refs,
    run_args,
    spawn,
    statuses,
    uploader,
    write_manifest,
)
from tests.test_adversary_concurrency_server import TruthApi
from tests.test_adversary_ledger_faults import admin
from tests.test_adversary_postgres_server import PgProxy
from tests.waiting import wait_until

POSTGRES_ENV = "UPLOADER_TEST_POSTGRES_URL"
if not os.environ.get(POSTGRES_ENV) and os.environ.get("CI") != "true":
    pytest.skip(f"{POSTGRES_ENV} not set: PostgreSQL tests skipped", allow_module_level=True)

#: Every test here runs on PostgreSQL only (conftest's `db_url`: a database of its own, dropped afterwards).
pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
ROWS = 40


# -- helpers ---------------------------------------------------------------------------------------------


def server_address(db_url: str) -> tuple[str, int]:
    u = make_url(db_url)
    return u.host or "127.0.0.1", u.port or 5432


def password_of(db_url: str) -> str:
    return make_url(db_url).password or ""


@contextmanager
def proxied(db_url: str) -> Iterator[PgProxy]:
    with PgProxy(server_address(db_url)) as proxy:
        yield proxy


def error_line(output: str) -> str:
    """The error a command printed: the `{"error": …}` document of --json, else the last `error: …` line."""
    for line in reversed(output.splitlines()):
        if line.startswith('{"error"'):
            return str(json.loads(line)["error"])
        if line.startswith("error: "):
            return line.removeprefix("error: ")
    return ""


def assert_clean(output: str, db_url: str) -> None:
    """No traceback, no API key, no database password (`user:password@` or a bare password after `:`)."""
    assert "Traceback" not in output, output[-3000:]
    assert KEY not in output
    secret = password_of(db_url)
    assert f":{secret}@" not in output and f"password={secret}" not in output, output[-3000:]


def assert_ledger_failure(code: int, output: str, db_url: str) -> None:
    """Exit 1, one error that names the ledger, nothing else wrong with the output."""
    assert_clean(output, db_url)
    assert code == 1, output[-3000:]
    message = error_line(output)
    assert "ledger" in message.lower(), output[-3000:]


def truth(db_url: str, api: TruthApi, tmp_path: Path, n: int = ROWS) -> None:
    """Every row succeeded, with its own job, each job created once."""
    assert statuses(db_url) == {"succeeded": n}
    assert broken_promises(db_url, api, tmp_path) == []
    assert api.twice() == {}
    assert len(api.job_ids(PROJECT)) == n


def rerun(db_url: str, api: TruthApi, tmp_path: Path, name: str = "rerun") -> str:
    out = tmp_path / f"{name}.out"
    code, output = finish(spawn(run_args(db_url, api, None, "--concurrency", "4"), out), out, timeout=60)
    assert code == 0, output[-3000:]
    assert_clean(output, db_url)
    return output


def state(db_url: str) -> dict[str, tuple[Any, ...]]:
    """The ledger's rows as a command leaves them (lease columns apart: a run's own bookkeeping)."""
    keys = ("status", "job_id", "body", "origin", "error_code", "attempts")
    return {ref: tuple(row[k] for k in keys) for ref, row in ledger_rows(db_url).items()}


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def spawn_with(cmd: list[str], out: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(out, "wb") as f:
        return subprocess.Popen(cmd, env={**env(), **extra_env}, stdout=f, stderr=subprocess.STDOUT)


def skewed(offset: str) -> dict[str, str]:
    """The environment that moves one process's wall clock by `offset` (libfaketime; monotonic clock untouched)."""
    if not offset:
        return {}
    return {
        "LD_PRELOAD": FAKETIME_LIB,
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_DONT_RESET": "1",
    }


def others(conn: Connection) -> list[int]:
    rows = conn.execute(
        text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    )
    return [int(pid) for (pid,) in rows]


# -- the run's connection cut at chosen moments -------------------------------------------------------------

#: (what the proxy watches for, how it cuts, how many such statements pass first): before the statement reaches
#: the server, right after it, or right after the COMMIT that follows it (committed at the server, the answer lost).
MOMENTS = {
    "claim_never_arrives": (b"SKIP LOCKED", "before", 2),
    "claim_committed_answer_lost": (b"SKIP LOCKED", "commit", 2),
    "result_never_arrives": (b"UPDATE jobs SET status", "before", 2),
    "result_committed_answer_lost": (b"UPDATE jobs SET status", "commit", 2),
    "heartbeat_committed_answer_lost": (b"UPDATE workers SET heartbeat_at", "commit", 0),
    "stop_at_the_end_cut": (b"UPDATE workers SET stopped_at", "before", 0),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_the_runs_connection_cut_at_a_moment_of_its_work_loses_nothing_and_a_rerun_finishes(
    db_url: str, tmp_path: Path, moment: str
) -> None:
    """The network between `uploader run` and its PostgreSQL ledger drops every connection (RST) at one moment of
    the run's work: its claim, the recording of its results, a heartbeat, the stop at its end; before the
    statement reaches the server, or after its COMMIT was applied while the answer never came back. The run ends
    with 0 or with one ledger error (exit 1), never a traceback; jobs created while its connection was gone are
    recorded by the rerun (FS_0001 + lookup), each created once, every job_id the server's."""
    pattern, how, skip = MOMENTS[moment]
    load(db_url, write_manifest(tmp_path / "m.csv", refs(ROWS)))
    out = tmp_path / "run.out"
    with TruthApi(KEY, delay=0.05) as api, proxied(db_url) as proxy:
        proxy.arm(pattern, after=how != "before", skip=skip, at_commit=how == "commit")
        lease = ("--lease-seconds", "4")  # a heartbeat every second
        code, output = finish(spawn(run_args(proxy.url(db_url), api, None, "--concurrency", "2", *lease), out), out)
        assert proxy.fired == 1, f"the cut never happened ({proxy.seen}): {output[-2000:]}"
        assert code in (0, 1), output[-3000:]
        if code == 1:
            assert_ledger_failure(code, output, db_url)
        assert_clean(output, db_url)
        assert api.twice() == {}
        assert broken_promises(db_url, api, tmp_path) == []  # the ledger may be behind the server, never wrong
        rerun(db_url, api, tmp_path)
        truth(db_url, api, tmp_path)


@pytest.mark.slow
def test_cuts_at_random_moments_of_several_workers_keep_the_ledger_true(db_url: str, tmp_path: Path) -> None:
    """Three runs share the ledger through one relay that drops every connection at seeded random moments (every
    few dozen messages), five times. Each run ends with 0 or one ledger error; whatever they recorded is true, and
    a rerun finishes with each job created once."""
    rng = random.Random(20261206)
    n = 90
    load(db_url, write_manifest(tmp_path / "m.csv", refs(n)))
    with TruthApi(KEY, delay=0.02) as api, proxied(db_url) as proxy:
        procs = [
            spawn(run_args(proxy.url(db_url), api, None, "--concurrency", "3"), tmp_path / f"w{i}.out")
            for i in range(3)
        ]
        try:
            for _ in range(5):
                proxy.arm_nth(rng.randint(5, 60), after=rng.random() < 0.5)
                deadline = time.monotonic() + 10
                while proxy.armed and time.monotonic() < deadline and any(p.poll() is None for p in procs):
                    time.sleep(0.02)
            results = [finish(p, tmp_path / f"w{i}.out", timeout=60) for i, p in enumerate(procs)]
        finally:
            for p in procs:
                stop(p)
        assert proxy.fired >= 1
        for code, output in results:
            assert code in (0, 1), output[-3000:]
            if code == 1:
                assert_ledger_failure(code, output, db_url)
        assert broken_promises(db_url, api, tmp_path) == []
        said = call(uploader("status", "--json", "--ledger", db_url))
        assert said.returncode in (0, 3), said.stdout + said.stderr
        status = json.loads(said.stdout)
        assert {k: v for k, v in status["counts"].items() if v} == statuses(db_url)
        assert status["live_workers"] == [], status["live_workers"]  # every run has ended
        rerun(db_url, api, tmp_path)
        truth(db_url, api, tmp_path, n)


# -- the batch's id recorded over a connection that drops ---------------------------------------------------


def batch_ids(db_url: str) -> dict[str, str | None]:
    with admin(db_url) as conn:
        return {name: bid for name, bid in conn.execute(text("SELECT name, batch_id FROM batches"))}


@pytest.mark.slow
def test_the_ledgers_own_batch_whose_id_was_not_recorded_gets_a_new_one_and_every_job_lands_in_it(
    db_url: str, tmp_path: Path
) -> None:
    """The run creates its own batch at the API, then the connection drops before the ledger records the id. The
    run ends with one ledger error; the rerun creates a batch of a new name (README: "the ledger's own batch simply
    takes a new name (the lost one may exist, empty)") and every job goes there, each created once."""
    manifest = write_manifest(tmp_path / "m.csv", refs(20))
    with TruthApi(KEY) as api, proxied(db_url) as proxy:
        proxy.arm(b"UPDATE batches SET batch_id", after=False)
        out = tmp_path / "run.out"
        code, output = finish(spawn(run_args(proxy.url(db_url), api, manifest), out), out)
        assert proxy.fired == 1
        assert_ledger_failure(code, output, db_url)
        assert sum(api.posts.values()) == 0
        rerun(db_url, api, tmp_path)
        truth(db_url, api, tmp_path, 20)
        recorded = {bid for bid in batch_ids(db_url).values() if bid}
        assert len(recorded) == 1
        assert {job["batch_id"] for job in api.store.values()} == recorded


@pytest.mark.slow
def test_a_named_batch_created_while_the_ledger_connection_drops_is_not_lost(db_url: str, tmp_path: Path) -> None:
    """Fixed (the notice only once the id is recorded; the error names it for --batch-id).
    `uploader run M --batch-name N1`: the API creates batch N1 and answers its id; the connection to the ledger
    drops before the id is recorded (`UPDATE batches SET batch_id …` never reaches the server).

    What happened: the run prints "created batch 'N1' (id B) in project proj; reruns of this ledger use it", then
    exits 1 with "ledger error: consuming input failed: server closed the connection unexpectedly", the id B in no
    error. The rerun (same command, database fine) refuses: "batch 'N1' probably exists in project proj: a request
    to create it may have succeeded without its answer arriving, … Find the batch 'N1' in GT Studio and pass its id
    with --batch-id": nothing sent, exit 1, and every further rerun the same. The answer did arrive; the run had
    the id and said reruns would use it.
    What should: the notice only once the id is recorded (uploader/send/batches.py prints it in
    `_create_reserved`'s POST loop, before `ledger.complete_batch` writes it), and an error that fails to record it
    names the id to pass with `--batch-id` (or keeps it for the rerun).
    Why a user cares: a database blip at the wrong second turns an unattended upload into a manual search of GT
    Studio for a batch id the tool had printed and then disowned."""
    manifest = write_manifest(tmp_path / "m.csv", refs(20))
    with TruthApi(KEY) as api, proxied(db_url) as proxy:
        proxy.arm(b"UPDATE batches SET batch_id", after=False)
        out = tmp_path / "run.out"
        code, output = finish(spawn(run_args(proxy.url(db_url), api, manifest, "--batch-name", "N1"), out), out)
        assert proxy.fired == 1
        assert_ledger_failure(code, output, db_url)
        created = api.batches[(PROJECT, "N1")]
        assert batch_ids(db_url).get("N1") is None  # the id is not in the ledger
        again = tmp_path / "again.out"
        code, rerun_output = finish(spawn(run_args(db_url, api, manifest, "--batch-name", "N1"), again), again)
        told = "reruns of this ledger use it" in output
        assert code == 0 or (created in error_line(output) and not told), (
            f"first run: {output[-1200:]}\nrerun: {rerun_output[-1200:]}"
        )


# -- the other commands' connections cut -------------------------------------------------------------------


def _failed_ledger(db_url: str, tmp_path: Path, api: TruthApi) -> Path:
    """A ledger of ROWS rows: most succeeded, 6 failed (FS_0007), 4 pending (loaded later)."""
    manifest = write_manifest(tmp_path / "m.csv", refs(ROWS - 4))
    api.refuse = {f"r{i:03d}" for i in range(6)}
    out = tmp_path / "setup.out"
    code, output = finish(spawn(run_args(db_url, api, manifest, "--concurrency", "4"), out), out)
    assert code == 3, output[-2000:]
    api.refuse = set()
    bigger = write_manifest(tmp_path / "m2.csv", refs(ROWS), host="other.example.com")
    return bigger


#: About how many client messages each command sends to the ledger here (counted through the relay): the cut
#: falls anywhere among them.
MESSAGES = {"load": 54, "retry": 26, "forget": 26, "reconcile": 32, "sync": 46, "export": 26, "status": 35}


def _command(name: str, tmp_path: Path, api: TruthApi, manifest: Path) -> list[str]:
    return {
        "load": ["load", str(manifest), "--project-id", PROJECT, "--work-flow-id", "wf"],
        "retry": ["retry", "--all"],
        "forget": ["forget", "--status", "failed"],
        "reconcile": ["reconcile", "--base-url", api.base_url],
        "sync": ["sync", "--base-url", api.base_url],
        "export": ["export", "-o", str(tmp_path / "export.csv")],
        "status": ["status", "--json"],
    }[name]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["load", "retry", "forget", "reconcile", "sync", "export", "status"])
def test_a_commands_ledger_connection_cut_at_random_moments_is_all_or_nothing(
    db_url: str, tmp_path: Path, command: str
) -> None:
    """`load` (its merge into a ledger that has rows: updated payloads, new rows), `retry`, `forget`, `reconcile`,
    `sync`, `export`, `status`: the connection to the ledger drops at a seeded random moment of the command's
    work (before or after a message reaches the server). The command ends with 0, or one ledger error (exit 1) and
    no traceback; the ledger is either as before or as the uncut command leaves it (all or nothing); the same
    command again then does the work; a run afterwards finishes with every job true."""
    rng = random.Random(f"{command}-7")
    with TruthApi(KEY) as api, proxied(db_url) as proxy:
        manifest = _failed_ledger(db_url, tmp_path, api)
        url = proxy.url(db_url)
        cmd = _command(command, tmp_path, api, manifest)
        for attempt in range(3):
            before = state(db_url)
            proxy.arm_nth(rng.randint(1, MESSAGES[command]), after=rng.random() < 0.5)
            done = call(uploader(*cmd, "--ledger", url, "-q"), timeout=60)
            proxy.disarm()
            output = done.stdout + done.stderr
            assert done.returncode in (0, 1, 3 if command == "load" else 0), output[-3000:]
            if done.returncode == 1:
                assert_ledger_failure(done.returncode, output, db_url)
            assert_clean(output, db_url)
            cut = state(db_url)
            again = call(uploader(*cmd, "--ledger", url, "-q"), timeout=60)
            assert again.returncode in (0, 3), again.stdout + again.stderr
            assert cut in (before, state(db_url)), f"attempt {attempt}: {command} left the ledger half-changed"
        assert proxy.fired >= 1, "no cut happened"
        if command == "forget":
            load(db_url, manifest)  # the forgotten rows come back as new rows
        call(uploader("retry", "--all", "--ledger", db_url, "-q"))
        rerun(db_url, api, tmp_path)
        rows = ledger_rows(db_url)
        assert {r["status"] for r in rows.values()} == {"succeeded"}, statuses(db_url)
        assert broken_promises(db_url, api, tmp_path) == []
        assert api.twice() == {}


# -- unreachable, stalled ----------------------------------------------------------------------------------


def test_ledger_refusing_connections_at_start_then_back(db_url: str, tmp_path: Path) -> None:
    """PostgreSQL refuses connections when `uploader run` starts (a restart, a failover): one ledger error line,
    exit 1, at once, no request sent to the API and no password shown; once it accepts again the same command
    sends everything, each job once."""
    manifest = write_manifest(tmp_path / "m.csv", refs(ROWS))
    with TruthApi(KEY) as api, proxied(db_url) as proxy:
        url = proxy.url(db_url)
        proxy.refuse()
        out = tmp_path / "down.out"
        started = time.monotonic()
        code, output = finish(spawn(run_args(url, api, manifest), out), out)
        assert time.monotonic() - started < 15
        assert_ledger_failure(code, output, db_url)
        assert "refused" in error_line(output).lower()
        assert sum(api.posts.values()) == 0
        proxy.accept()
        out = tmp_path / "up.out"
        code, output = finish(spawn(run_args(url, api, manifest, "--concurrency", "4"), out), out)
        assert code == 0, output[-3000:]
        truth(db_url, api, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("new_connections", ["stalled_too", "served"])
def test_sigterm_stops_a_run_whose_ledger_connection_stalled(db_url: str, tmp_path: Path, new_connections: str) -> None:
    """Fixed (a cancel that goes unanswered for 1 s severs the connection; commits and connects are watched too).
    The network to the ledger's server stops forwarding anything, without closing (a frozen server, a NAT that
    forgot the flow, a pulled cable): the run's statement never gets an answer. The run does say, after 2 s,
    "waiting for the ledger: its database has not finished a statement". Then SIGTERM, and a second SIGTERM.
    New connections to the server are stalled too (a partition), or served (only the run's flow is dead: the
    server is fine, and the cancel request reaches it).

    What happened (both variants): the run kept waiting; it was still alive 10 s (by hand: 20 s) after both
    signals and exited (143) only when the network came back, or on SIGKILL. The cancel that `_StatementWatch`
    (uploader/ledger/engine.py) sends on a stop is libpq's PQcancel over a new connection: in a partition it cannot
    reach the server, and when it does, the server's answer to the cancelled statement travels on the dead flow.
    Nothing else ever ends the blocking read on the old socket, which holds the event loop (ledger calls run on
    it): no TCP keepalive, no tcp_user_timeout, no client-side deadline.
    What should: the README says the first SIGTERM "stops at once whatever the run is waiting for (… a ledger
    another process holds locked)" and the second cancels what is in the air: exit 143 within seconds, rows
    taken over by the next run (same host: at once).
    Why a user cares: a run under systemd/Kubernetes cannot be stopped gracefully when its database link dies;
    it is SIGKILLed, and without a keepalive an unattended run would hang forever."""
    load(db_url, write_manifest(tmp_path / "m.csv", refs(ROWS)))
    out = tmp_path / "run.out"
    with TruthApi(KEY, delay=0.05) as api, proxied(db_url) as proxy:
        proc = spawn(run_args(proxy.url(db_url), api, None, "--concurrency", "4"), out)
        try:
            wait_until(lambda: sum(api.created.values()) >= 8, "the run's first jobs")
            proxy.stall(existing_only=new_connections == "served")
            wait_until(lambda: "waiting for the ledger" in out.read_text(errors="replace"), "the notice", 15)
            proc.send_signal(signal.SIGTERM)
            time.sleep(2)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            stopped = proc.returncode
        finally:
            proxy.resume()
            stop(proc)
        assert stopped == 143, f"still running 10 s after two SIGTERMs: {out.read_text()[-1500:]}"


@pytest.mark.slow
def test_a_ledger_server_that_never_answers_is_told_not_waited_for_in_silence(db_url: str, tmp_path: Path) -> None:
    """Fixed (libpq's connect_timeout (10 s unless the URL sets one)).
    `uploader status` (and `run`, `export`, every command) against a PostgreSQL URL whose server accepts the TCP
    connection and then says nothing (a hung server, a firewall that black-holes the flow after the handshake).

    What happened: the command printed nothing at all and was still waiting after 15 s (it waits forever: the
    engine is created with no `connect_timeout`, so libpq waits for the startup answer without end; SIGTERM
    does end it, 143).
    What should: exit 1 with one ledger error saying the database did not answer (a connect timeout), or at least
    the notice a run gives for a statement that does not finish ("waiting for the ledger …") within seconds.
    Why a user cares: a cron job or CI step hangs until its own timeout with no word about the cause; the cause
    (open_engine in uploader/ledger/engine.py: `create_engine(url)` without connect_args) is one setting away."""
    with proxied(db_url) as proxy:
        proxy.stall()
        out = tmp_path / "status.out"
        proc = spawn(uploader("status", "--ledger", proxy.url(db_url)), out)
        try:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
            said = out.read_text(errors="replace")
        finally:
            proxy.resume()
            stop(proc)
        assert "Traceback" not in said
        assert proc.returncode == 1 or "waiting" in said, f"silent after 15 s: {said!r}"


# -- backends terminated, several workers ------------------------------------------------------------------


@pytest.mark.slow
def test_backends_of_three_workers_terminated_again_and_again(db_url: str, tmp_path: Path) -> None:
    """Three runs on one ledger; every 0.4 s each of their PostgreSQL backends is terminated (pg_terminate_backend
    on this test's own database: a DBA, a pooler restart), eight times. Each run ends with 0 or one ledger error;
    nothing recorded is false, and a rerun finishes with each job created once."""
    n = 90
    load(db_url, write_manifest(tmp_path / "m.csv", refs(n)))
    with TruthApi(KEY, delay=0.02) as api, admin(db_url) as conn:
        procs = [spawn(run_args(db_url, api, None, "--concurrency", "3"), tmp_path / f"w{i}.out") for i in range(3)]
        try:
            wait_until(lambda: sum(api.created.values()) >= 6, "the runs' first jobs")
            for _ in range(8):
                for pid in others(conn):
                    conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                time.sleep(0.4)
            results = [finish(p, tmp_path / f"w{i}.out", timeout=60) for i, p in enumerate(procs)]
        finally:
            for p in procs:
                stop(p)
        for code, output in results:
            assert code in (0, 1), output[-3000:]
            if code == 1:
                assert_ledger_failure(code, output, db_url)
        assert broken_promises(db_url, api, tmp_path) == []
        rerun(db_url, api, tmp_path)
        truth(db_url, api, tmp_path, n)


# -- clocks ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_workers_with_clocks_skewed_beyond_the_lease_create_each_job_once(db_url: str, tmp_path: Path) -> None:
    """Three runs share the ledger with a 10 s lease; one machine's clock is right, one is 60 s ahead, one 60 s
    behind (libfaketime). The ahead one sees every other run's lease as expired and takes its rows over; the
    behind one's leases are expired when made. Requests are spent again, but: every run exits 0, no job is created
    twice, every row succeeded with its own job_id, and the skewed runs say that their clock differs."""
    n = 120
    load(db_url, write_manifest(tmp_path / "m.csv", refs(n)))
    offsets = ["", "+60s", "-60s"]
    with TruthApi(KEY, delay=0.03) as api:
        procs = [
            spawn_with(
                run_args(db_url, api, None, "--concurrency", "4", "--lease-seconds", "10"),
                tmp_path / f"w{i}.out",
                skewed(offset),
            )
            for i, offset in enumerate(offsets)
        ]
        try:
            results = [finish(p, tmp_path / f"w{i}.out", timeout=90) for i, p in enumerate(procs)]
        finally:
            for p in procs:
                stop(p)
        for (code, output), offset in zip(results, offsets, strict=True):
            assert code == 0, output[-3000:]
            assert_clean(output, db_url)
            told = re.search(r"this machine's clock is (\d+) s (ahead of|behind) the ledger database's", output)
            if offset:
                assert told and 55 <= int(told[1]) <= 65, output[-2000:]
                assert told[2] == ("ahead of" if offset.startswith("+") else "behind"), told[0]
        truth(db_url, api, tmp_path, n)


# -- the database's own settings -----------------------------------------------------------------------------


@pytest.mark.slow
def test_workers_on_a_database_whose_default_isolation_is_serializable_all_finish(db_url: str, tmp_path: Path) -> None:
    """Fixed (the engine asks for READ COMMITTED).
    The ledger's database has `default_transaction_isolation = 'serializable'` (a DBA's or a platform's
    default: ALTER DATABASE … SET, or in postgresql.conf). Four `uploader run` workers share it, as the README's
    scale-out section invites ("on every machine, as many as you like").

    What happened (5 of 5 trials by hand with 3 workers): one to all of the workers stop, exit 1, with "ledger
    error: could not serialize access due to concurrent update. The run stopped: … Fix the cause (disk space,
    permissions, the database server)"; in one trial all three died with 87 of 120 rows never sent. The ledger
    stayed true (nothing created twice) and a rerun finishes. The claims (`UPDATE … WHERE id IN (SELECT … FOR
    UPDATE SKIP LOCKED)`, uploader/ledger/ledger.py) are written for READ COMMITTED, but open_engine
    (uploader/ledger/engine.py) never asks for it (`create_engine(url)` takes the database's default), and a
    serialization failure (SQLSTATE 40001) is neither retried nor explained.
    What should: every worker finishes (exit 0), by setting the engine's isolation level to READ COMMITTED or
    retrying a transaction that failed to serialize.
    Why a user cares: the scale-out runs die one after another on such a database, with advice (disk space,
    permissions) that points nowhere near the cause."""
    n = 160
    name = make_url(db_url).database
    with admin(db_url) as conn:
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'serializable'"))
    load(db_url, write_manifest(tmp_path / "m.csv", refs(n)))
    with TruthApi(KEY, delay=0.01) as api:
        procs = [spawn(run_args(db_url, api, None, "--concurrency", "4"), tmp_path / f"w{i}.out") for i in range(4)]
        try:
            results = [finish(p, tmp_path / f"w{i}.out", timeout=90) for i, p in enumerate(procs)]
        finally:
            for p in procs:
                stop(p)
        for _, output in results:
            assert_clean(output, db_url)
        assert broken_promises(db_url, api, tmp_path) == []
        assert api.twice() == {}
        died = [error_line(output) for code, output in results if code != 0]
        assert died == [], died


# -- a load while runs send --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_load_while_two_runs_have_answers_in_the_air_never_pins_a_job_on_another_payload(
    db_url: str, tmp_path: Path
) -> None:
    """Two runs send M1 (answers held after the jobs were created); meanwhile `uploader load` merges M2 into the
    ledger: the same reference_ids with other images (pending, in flight and succeeded rows alike) and 20 new
    ones. The load takes its table lock, the runs wait for it. Then the answers come back. No `succeeded` row
    holds a job that has another payload than the row, nothing is created twice; after `run` again every row is
    done (a changed row whose old payload may have made its job is a conflict, as the README says)."""
    names = refs(ROWS)
    m1 = write_manifest(tmp_path / "m1.csv", names, host="one.example.com")
    m2 = write_manifest(tmp_path / "m2.csv", names + refs(20, "n"), host="two.example.com")
    load(db_url, m1)
    with TruthApi(KEY) as api:
        procs = [spawn(run_args(db_url, api, None, "--concurrency", "4"), tmp_path / f"w{i}.out") for i in range(2)]
        try:
            wait_until(lambda: sum(api.created.values()) >= 8, "the runs' first jobs")
            api.hold()
            wait_until(lambda: api.waiting >= 4, "answers held in the air")
            done = call(uploader("load", str(m2), "--project-id", PROJECT, "--work-flow-id", "wf", "--ledger", db_url))
            assert done.returncode in (0, 3), done.stdout + done.stderr
            api.release()
            results = [finish(p, tmp_path / f"w{i}.out", timeout=60) for i, p in enumerate(procs)]
        finally:
            api.release()
            for p in procs:
                stop(p)
        for code, output in results:
            assert code in (0, 3), output[-3000:]
            assert_clean(output, db_url)
        out = tmp_path / "final.out"
        code, output = finish(spawn(run_args(db_url, api, None, "--concurrency", "4"), out), out)
        assert code in (0, 3), output[-3000:]
        assert broken_promises(db_url, api, tmp_path) == []
        assert api.twice() == {}
        left = {s for s in statuses(db_url) if s not in ("succeeded", "conflict")}
        assert not left, statuses(db_url)


# -- locks held by another session -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_started_while_the_jobs_table_is_locked_says_that_it_waits(db_url: str, tmp_path: Path) -> None:
    """Fixed (every command on PostgreSQL watches its statements from the start: cli/commands.py `_watch_statements`).
    Another session holds `LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE` (a long load's merge on another machine,
    an ALTER TABLE, VACUUM FULL) when `uploader run` starts.

    What happened: the run printed nothing for 6 s (it sits in its first reads of the ledger, before the submit
    loop installs its statement watch); the notice exists only once sending began.
    What should: README ("Batches, pacing and stopping"): "On PostgreSQL, a statement of the run that waits for a
    lock another session holds (a LOCK TABLE, an ALTER TABLE) is told the same way ('its database has not
    finished a statement for 2 s')". SIGTERM does stop it (143).
    Why a user cares: a run that starts while a colleague's big load merges looks hung, with no reason given."""
    load(db_url, write_manifest(tmp_path / "m.csv", refs(10)))
    out = tmp_path / "run.out"
    with TruthApi(KEY) as api, admin(db_url) as locker:
        locker.execute(text("BEGIN"))
        locker.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
        proc = subprocess.Popen(
            uploader(
                "run",
                "--project-id",
                PROJECT,
                "--work-flow-id",
                "wf",
                "--ledger",
                db_url,
                "--base-url",
                api.base_url,
            ),
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=open(out, "wb"),  # noqa: SIM115 - closed with the process
        )
        try:
            time.sleep(6)
            said = out.read_text(errors="replace")
        finally:
            locker.execute(text("ROLLBACK"))
            code = proc.wait(30)
        assert code == 0
        assert "waiting for the ledger" in said, f"silent for 6 s: {said!r}"


@pytest.mark.slow
def test_sigterm_stops_a_sync_blocked_by_another_sessions_table_lock(db_url: str, tmp_path: Path) -> None:
    """Fixed (the command's statement watch cancels the waiting statement on SIGTERM, from any thread).
    `uploader sync` starts while another session holds `LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE`; it is sent
    SIGTERM 3 s later, the lock still held.

    What happened: `load`, `status`, `export`, `retry`, `reconcile` and `run` in the same position exit 143 within
    0.2 s; `sync` went on waiting (alive 8 s after the signal) and only ended, 143, once the lock was released.
    What should: the README's exit codes: "143 stopped by SIGTERM (any command: as Ctrl-C, nothing half-written)";
    nothing is being written while it waits for the lock to read.
    Why a user cares: a sync under a supervisor (systemd, a CI timeout) cannot be stopped while a long
    transaction elsewhere holds the table; it is killed instead."""
    with TruthApi(KEY) as api:
        out = tmp_path / "setup.out"
        manifest = write_manifest(tmp_path / "m.csv", refs(10))
        assert finish(spawn(run_args(db_url, api, manifest), out), out)[0] == 0
        with admin(db_url) as locker:
            locker.execute(text("BEGIN"))
            locker.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            out = tmp_path / "sync.out"
            proc = spawn(uploader("sync", "--ledger", db_url, "--base-url", api.base_url), out)
            try:
                time.sleep(3)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(8)
                except subprocess.TimeoutExpired:
                    pass
                during = proc.returncode
            finally:
                locker.execute(text("ROLLBACK"))
                stop(proc)
        assert during == 143, f"still running 8 s after SIGTERM, the lock held: {out.read_text()[-800:]}"


# -- a ledger that is not whole ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "command"),
    [
        ("newer_schema", "status"),
        ("newer_schema", "run"),
        ("no_jobs_table", "status"),
        ("no_jobs_table", "load"),
        ("no_activity_table", "report"),
    ],
)
def test_a_ledger_database_that_is_not_whole_is_one_clear_error(
    db_url: str, tmp_path: Path, damage: str, command: str
) -> None:
    """Fixed (translate_errors turns 42P01/42703 into one ledger error).
    A PostgreSQL ledger stamped by a newer uploader (schema revision 0099) is refused in one line (passes).
    One stamped with this uploader's revision but missing a table (`jobs` dropped by a DBA's clean-up, a partial
    restore of some tables, `activity` not restored) is the FINDING.

    What happened: `status`, `load` (and `export`) die with a Python traceback ending in
    `sqlalchemy.exc.ProgrammingError: (psycopg.errors.UndefinedTable) relation "jobs" does not exist` and the SQL;
    `report` the same for `activity`. `migrate` (uploader/ledger/engine.py) trusts `alembic_version` alone, and
    `translate_errors` lets UndefinedTable (SQLSTATE 42P01) through.
    What should: as for a damaged SQLite file (README "The ledger"): one message naming the ledger and what to do,
    exit 1, no traceback.
    Why a user cares: a traceback with SQL is not an answer; the user cannot tell a broken ledger from a bug."""
    manifest = write_manifest(tmp_path / "m.csv", refs(5))
    load(db_url, manifest)
    with admin(db_url) as conn:
        if damage == "newer_schema":
            conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
        elif damage == "no_jobs_table":
            conn.execute(text("DROP TABLE jobs CASCADE"))
        else:
            conn.execute(text("DROP TABLE activity"))
    before = state_or_none(db_url)
    cmd = {
        "status": ["status"],
        "run": ["run", "--project-id", PROJECT, "--work-flow-id", "wf", "--base-url", "http://127.0.0.1:9"],
        "load": ["load", str(manifest), "--project-id", PROJECT, "--work-flow-id", "wf"],
        "report": ["report", "-o", str(tmp_path / "r.html")],
    }[command]
    done = call(uploader(*cmd, "--ledger", db_url))
    output = done.stdout + done.stderr
    assert_clean(output, db_url)
    assert "ledger" in error_line(output).lower(), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert done.returncode == 1, output[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    if damage == "newer_schema":
        assert "newer uploader" in lines[0]
    assert state_or_none(db_url) == before


def state_or_none(db_url: str) -> Any:
    try:
        return state(db_url)
    except Exception:  # noqa: BLE001 - no jobs table
        return None


# -- passwords ---------------------------------------------------------------------------------------------


def test_a_password_in_the_ledger_urls_query_is_never_shown(db_url: str, tmp_path: Path) -> None:
    """Fixed (uploader/ledger/address.py `shown_url`).
    libpq (and SQLAlchemy's psycopg dialect) take the password from the URL's query as well:
    `postgresql+psycopg://user@host/db?password=…` (what some secret managers and PaaS hand out). `uploader config`
    masks the query as `***`, and a `user:password@` URL is shown as `user:***@` / `PASSWORD` everywhere.

    What happened: `uploader run` (no manifest) prints "ledger postgresql+psycopg://user@host/db?password=<the
    password>; resuming …", a run that ends with failed rows and `uploader status` print the follow-up hint
    "uploader retry … --ledger 'postgresql+psycopg://…?password=<the password>'", and `uploader report` writes it
    into the HTML page (title, header, provenance; a page meant to be mailed). Cause: Ledger.url/ledger_name
    (`render_as_string(hide_password=True)`, which hides only the user-info password) and cli/hints.py
    `hide_password` (user info only).
    What should: README: "a password in a ledger URL is printed as PASSWORD"; never shown, in no output.
    Why a user cares: the database password ends up in terminal scrollback, CI logs and mailed reports."""
    u = make_url(db_url)
    secret = u.password or ""
    plain = f"postgresql+psycopg://{u.username}@{u.host}:{u.port}/{u.database}?password={secret}"
    manifest = write_manifest(tmp_path / "m.csv", refs(6))
    outputs: list[str] = []
    with TruthApi(KEY) as api:
        api.refuse = {"r001"}
        done = call(uploader("load", str(manifest), "--project-id", PROJECT, "--work-flow-id", "wf", "--ledger", plain))
        assert done.returncode == 0, done.stdout + done.stderr
        base = ["--project-id", PROJECT, "--work-flow-id", "wf", "--base-url", api.base_url]
        for cmd in (["run", *base], ["status"], ["report", "-o", str(tmp_path / "r.html")]):
            done = call(uploader(*cmd, "--ledger", plain))
            assert done.returncode in (0, 3), done.stdout + done.stderr
            outputs.append(done.stdout + done.stderr)
    outputs.append((tmp_path / "r.html").read_text())
    names = ("run", "status", "report", "report.html")
    leaks = [which for which, said in zip(names, outputs, strict=True) if f"password={secret}" in said]
    assert leaks == [], "the password is shown by: " + ", ".join(leaks)


def test_a_password_with_a_raw_at_sign_is_never_shown(db_url: str, tmp_path: Path) -> None:
    """Fixed (uploader/ledger/address.py `parse_url` reads the password up to the last `@`).
    A generated password often holds `@`; users paste it into the URL unencoded:
    `postgresql+psycopg://uploader_test:Sw0rd@fish9@127.0.0.1:5432/db`. uploader itself reads such a URL's user
    info up to the last `@` when it hides the password in the commands it suggests (uploader/cli/hints.py
    `hide_password`), and `uploader config` shows it as `***`.

    What happened: `status`, `export`, `run` … fail with "ledger error: failed to resolve host
    'fish9@127.0.0.1': [Errno -2] Name or service not known": the part of the password after its `@`, in the
    error line, in `--json` errors, in CI logs. SQLAlchemy's URL parser ends the password at the first `@`, and
    open_engine (uploader/ledger/engine.py) passes the URL on as it is; the driver's message quotes the host.
    What should: README "a password in a ledger URL is printed as PASSWORD": the error may say the URL is
    malformed (percent-encode `@` as %40), never quote a piece of the password.
    Why a user cares: half a password in a shared CI log is a leaked password."""
    u = make_url(db_url)
    secret = "Sw0rd@fish9"
    url = f"postgresql+psycopg://{u.username}:{secret}@{u.host}:{u.port}/{u.database}"
    for cmd in (["status"], ["status", "--json"], ["export", "-o", str(tmp_path / "e.csv")]):
        done = call(uploader(*cmd, "--ledger", url))
        output = done.stdout + done.stderr
        assert done.returncode == 1, output
        assert "Traceback" not in output
        assert "fish9" not in output and "Sw0rd" not in output, f"{cmd}: {output.strip()[-300:]}"
