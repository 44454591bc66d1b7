"""Adversarial tests of concurrent and interrupted runs on one ledger, against a truthful job API on loopback
(tests/test_adversary_concurrency_server.py) that counts every creation per reference_id and can hold answers
in the air after the job was created.

Real `uploader` processes (python -m uploader) on a SQLite file, and on PostgreSQL when
UPLOADER_TEST_POSTGRES_URL is set (tests/conftest.py's `db_url`): several runs at once, a worker frozen with
SIGSTOP past its lease and thawed after its rows were taken over, SIGKILL and two SIGTERMs with requests in the
air, `reconcile` / `retry` / `adopt` / `forget` / a reload while a run sends.

After each scenario the ledger is compared with the server's store (`broken_promises`):
- no reference_id created twice;
- every `succeeded` row: the server has its job, the row's job_id is that job's, and the job holds the payload
  the row holds now;
- `export` hands out no job_id the server does not have;
- nothing lost: rows the test expects to be done are done (each test says which).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from tests.test_adversary_concurrency_server import DEFAULT_BATCH, TruthApi
from tests.waiting import wait_until
from uploader.cli.commands import cli

KEY = "sk-concurrency-7d1e5a9c3b2f4e68"
PROJECT = "proj"
ROOT = Path(__file__).resolve().parents[1]

both_engines = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# -- helpers ---------------------------------------------------------------------------------------------


def write_manifest(path: Path, refs: list[str], host: str = "cdn.example.com") -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "image_url"])
        for ref in refs:
            w.writerow([ref, f"https://{host}/{ref}.jpg"])
    return path


def refs(n: int, prefix: str = "r") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def env() -> dict[str, str]:
    e = {**os.environ, "PLAYMENT_API_KEY": KEY}
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    return e


def uploader(*args: str) -> list[str]:
    return [sys.executable, "-m", "uploader", *args]


def run_args(db_url: str, api: TruthApi, manifest: Path | None = None, *extra: str) -> list[str]:
    head = ["run", *([str(manifest)] if manifest else [])]
    return uploader(
        *head,
        "--project-id",
        PROJECT,
        "--work-flow-id",
        "wf",
        "--ledger",
        db_url,
        "--base-url",
        api.base_url,
        "--quiet",
        "--json",
        *extra,
    )


def spawn(cmd: list[str], out: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as f:
        return subprocess.Popen(cmd, env=env(), stdout=f, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], out: Path, timeout: float = 40) -> tuple[int, str]:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"process did not end within {timeout} s: {out.read_text()[-2000:]}")
    return proc.returncode, out.read_text()


def call(cmd: list[str], timeout: float = 40) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)


@contextmanager
def engine_of(db_url: str) -> Iterator[Any]:
    engine = create_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def ledger_rows(db_url: str) -> dict[str, dict[str, Any]]:
    with engine_of(db_url) as engine, engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT reference_id, status, job_id, body, origin, error_code, error_message, attempts, "
                "sent_hashes, lease_owner, lease_token FROM jobs WHERE project_id = :p"
            ),
            {"p": PROJECT},
        ).mappings()
        return {r["reference_id"]: dict(r) for r in rows}


def ledger_idle(db_url: str) -> bool:
    """No process is inside a ledger transaction now (SQLite: the write lock is free; PostgreSQL: no other session
    is in a transaction), so a process frozen now holds no lock the others need."""
    if db_url.startswith("sqlite"):
        import sqlite3

        con = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=0.05, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            con.close()
    with engine_of(db_url) as engine, engine.connect() as conn:
        busy = conn.execute(
            text(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state <> 'idle'"
            )
        ).scalar_one()
        return int(busy) == 0


def freeze(proc: subprocess.Popen[bytes], db_url: str) -> None:
    """SIGSTOP `proc` at a moment it holds no ledger lock (else every other process would wait for it)."""
    deadline = time.monotonic() + 10
    while True:
        proc.send_signal(signal.SIGSTOP)
        if ledger_idle(db_url):
            return
        proc.send_signal(signal.SIGCONT)
        if time.monotonic() > deadline:
            pytest.fail("the worker never left the ledger's lock")
        time.sleep(0.01)


def in_flight_expired(db_url: str) -> int:
    with engine_of(db_url) as engine, engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT COUNT(*) FROM jobs WHERE status = 'in_flight' AND lease_expires_at < :now"),
                {"now": time_now()},
            ).scalar_one()
        )


def time_now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def exported(db_url: str, tmp: Path) -> dict[str, str | None]:
    out = tmp / f"export-{time.monotonic_ns()}.jsonl"
    result = CliRunner().invoke(cli, ["export", "--ledger", db_url, "-o", str(out), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {r["reference_id"]: r["job_id"] for r in lines}


def broken_promises(db_url: str, api: TruthApi, tmp: Path) -> list[str]:
    """What the ledger (and `export`) says that the server's store contradicts (empty: nothing)."""
    problems = [f"{ref!r} created {n} times at the server" for ref, n in api.twice().items()]
    jobs, data = api.job_ids(PROJECT), api.data_of(PROJECT)
    for ref, row in ledger_rows(db_url).items():
        if row["status"] != "succeeded":
            continue
        if ref not in jobs:
            problems.append(f"{ref!r} succeeded with job_id {row['job_id']!r}, the server has no job for it")
            continue
        if row["job_id"] != jobs[ref]:
            problems.append(f"{ref!r} succeeded with job_id {row['job_id']!r}, the server's is {jobs[ref]!r}")
        body = json.loads(row["body"]) if row["body"] else None
        if body is not None and body.get("data") != data[ref]:
            problems.append(
                f"{ref!r} succeeded (origin {row['origin']}) but its job holds {data[ref]!r}, the row {body['data']!r}"
            )
    known = set(jobs.values())
    for ref, job_id in exported(db_url, tmp).items():
        if job_id is not None and job_id not in known:
            problems.append(f"export hands out job_id {job_id!r} for {ref!r}: the server has no such job")
    return problems


def statuses(db_url: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in ledger_rows(db_url).values():
        out[row["status"]] = out.get(row["status"], 0) + 1
    return out


def load(db_url: str, manifest: Path) -> None:
    done = call(
        uploader("load", str(manifest), "--project-id", PROJECT, "--work-flow-id", "wf", "--ledger", db_url, "-q")
    )
    assert done.returncode == 0, done.stdout + done.stderr


def summary(output: str) -> dict[str, Any]:
    """The --json document a run printed (the last line that parses as an object)."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                return dict(json.loads(line))
            except ValueError:
                continue
    start = output.find("{")
    return dict(json.loads(output[start:])) if start >= 0 else {}


# -- several runs on one ledger ----------------------------------------------------------------------------


@pytest.mark.slow
@both_engines
def test_three_runs_on_one_ledger_create_each_job_once_and_record_the_servers_ids(db_url: str, tmp_path: Path) -> None:
    """PIN. Three `uploader run` processes share one ledger (loaded once) and a slow API: each job is created
    once, every row succeeded with the server's job_id, and all three exit 0."""
    names = refs(60)
    load(db_url, write_manifest(tmp_path / "m.csv", names))
    with TruthApi(KEY, delay=0.02) as api:
        procs = [
            (spawn(run_args(db_url, api, None, "--concurrency", "4"), tmp_path / f"w{i}.out"), tmp_path / f"w{i}.out")
            for i in range(3)
        ]
        results = [finish(p, out) for p, out in procs]
        assert [code for code, _ in results] == [0, 0, 0], results
        assert statuses(db_url) == {"succeeded": 60}
        assert broken_promises(db_url, api, tmp_path) == []
        assert sum(api.posts.values()) < 60 + 10, "far more POSTs than rows: runs sent each other's rows"


@pytest.mark.slow
@both_engines
def test_two_runs_with_overlapping_manifests_never_record_a_job_holding_the_other_payload(
    db_url: str, tmp_path: Path
) -> None:
    """PIN. Run A sends manifest M1 (answers held in the air after the jobs were created); meanwhile run B
    loads M2, which names the same reference_ids with other images, and sends too. Whatever each row ends as,
    a `succeeded` row's job holds the payload the row holds, and nothing is created twice."""
    names = refs(24)
    m1 = write_manifest(tmp_path / "m1.csv", names, host="one.example.com")
    m2 = write_manifest(tmp_path / "m2.csv", names, host="two.example.com")
    with TruthApi(KEY) as api:
        api.hold()
        a = spawn(run_args(db_url, api, m1, "--concurrency", "4"), tmp_path / "a.out")
        wait_until(lambda: api.waiting >= 1, "run A's first creation held in the air")
        b = spawn(run_args(db_url, api, m2, "--concurrency", "4"), tmp_path / "b.out")
        wait_until(lambda: "m2.csv" in _manifests(db_url), "run B loaded M2", timeout=30)
        api.release()
        code_a, out_a = finish(a, tmp_path / "a.out")
        code_b, out_b = finish(b, tmp_path / "b.out")
        assert code_a in (0, 3) and code_b in (0, 3), (out_a, out_b)
        assert broken_promises(db_url, api, tmp_path) == []
        rows = ledger_rows(db_url)
        assert not [r for r, row in rows.items() if row["status"] in ("pending", "in_flight")], rows


def _manifests(db_url: str) -> str:
    with engine_of(db_url) as engine, engine.connect() as conn:
        return " ".join(str(p) for (p,) in conn.execute(text("SELECT path FROM manifests")))


# -- a worker frozen past its lease ------------------------------------------------------------------------


@pytest.mark.slow
@both_engines
def test_a_worker_frozen_past_its_lease_is_fenced_and_its_rows_are_recovered_once(db_url: str, tmp_path: Path) -> None:
    """PIN. Worker A sends with a 1 s lease; its requests reach the API (jobs created) and it is frozen with
    SIGSTOP before the answers come back. Past its lease worker B takes its rows over, meets FS_0001 and recovers
    the job_ids from the listing. A is thawed: its late answers are refused by the fence. Nothing is created
    twice, every row succeeded with the server's job_id, A says it ignored late answers."""
    names = refs(20)
    load(db_url, write_manifest(tmp_path / "m.csv", names))
    with TruthApi(KEY) as api:
        api.hold()
        a = spawn(run_args(db_url, api, None, "--concurrency", "4", "--lease-seconds", "1"), tmp_path / "a.out")
        wait_until(lambda: api.waiting >= 1, "worker A's creations held in the air")
        held = api.held_total
        freeze(a, db_url)
        try:
            wait_until(lambda: in_flight_expired(db_url) >= held, "worker A's leases expired", timeout=15)
            api.release()
            b = spawn(run_args(db_url, api, None, "--concurrency", "4", "--lease-seconds", "1"), tmp_path / "b.out")
            code_b, out_b = finish(b, tmp_path / "b.out")
        finally:
            a.send_signal(signal.SIGCONT)
        code_a, out_a = finish(a, tmp_path / "a.out")
        assert code_b == 0, out_b
        assert code_a == 0, out_a
        assert statuses(db_url) == {"succeeded": 20}
        assert broken_promises(db_url, api, tmp_path) == []
        assert summary(out_a)["this_run"]["ignored_stale_results"] >= 1, out_a


# -- SIGKILL, SIGTERM twice ---------------------------------------------------------------------------------


@pytest.mark.slow
@sqlite_only
def test_sigkill_with_jobs_created_but_unanswered_then_a_rerun_recovers_each_once(db_url: str, tmp_path: Path) -> None:
    """PIN. A run is SIGKILLed while its creations are in the air (created at the API, unanswered). The rerun
    takes the dead run's rows at once, meets FS_0001, and recovers every job_id from the listing: nothing
    created twice, every row succeeded with the server's job_id (origin recovered for the killed ones)."""
    names = refs(16)
    load(db_url, write_manifest(tmp_path / "m.csv", names))
    with TruthApi(KEY) as api:
        api.hold()
        a = spawn(run_args(db_url, api, None, "--concurrency", "4"), tmp_path / "a.out")
        wait_until(lambda: api.waiting >= 1, "creations held in the air")
        created_before = set(api.job_ids(PROJECT))
        a.send_signal(signal.SIGKILL)
        a.wait()
        api.release()
        code, out = finish(spawn(run_args(db_url, api), tmp_path / "b.out"), tmp_path / "b.out")
        assert code == 0, out
        assert statuses(db_url) == {"succeeded": 16}
        assert broken_promises(db_url, api, tmp_path) == []
        rows = ledger_rows(db_url)
        assert {ref for ref in created_before if rows[ref]["origin"] != "recovered"} == set()


@pytest.mark.slow
@sqlite_only
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_two_signals_with_jobs_created_but_unanswered_then_a_rerun_recovers_each_once(
    db_url: str, tmp_path: Path, sig: signal.Signals
) -> None:
    """PIN. Two SIGTERMs (SIGINTs) while creations are in the air: the second cancels them; the run exits 143
    (130) with its rows released; the rerun recovers every created job once (FS_0001 + listing), never
    calling one `created_elsewhere`."""
    names = refs(16)
    load(db_url, write_manifest(tmp_path / "m.csv", names))
    with TruthApi(KEY) as api:
        api.hold()
        a = spawn(run_args(db_url, api, None, "--concurrency", "4"), tmp_path / "a.out")
        wait_until(lambda: api.waiting >= 1, "creations held in the air")
        a.send_signal(sig)
        time.sleep(0.3)  # the first signal handled: a gentle stop, waiting for the answers in the air
        a.send_signal(sig)
        code_a, out_a = finish(a, tmp_path / "a.out")
        assert code_a == 128 + sig, out_a
        assert statuses(db_url).get("in_flight", 0) == 0, ledger_rows(db_url)
        api.release()
        code, out = finish(spawn(run_args(db_url, api), tmp_path / "b.out"), tmp_path / "b.out")
        assert code == 0, out
        assert statuses(db_url) == {"succeeded": 16}
        assert broken_promises(db_url, api, tmp_path) == []


# -- commands while a run sends -----------------------------------------------------------------------------


@pytest.mark.slow
@both_engines
def test_reconcile_and_retry_while_a_run_resolves_the_same_rows(db_url: str, tmp_path: Path) -> None:
    """PIN. A killed run left jobs created and unanswered; the next run resolves them (FS_0001, listing) while
    `reconcile` and `retry --all` run over and over on the same ledger. Nothing created twice, no false
    success, and in the end every row succeeded."""
    names = refs(20)
    load(db_url, write_manifest(tmp_path / "m.csv", names))
    with TruthApi(KEY, delay=0.01) as api:
        api.hold()
        a = spawn(run_args(db_url, api, None, "--concurrency", "8"), tmp_path / "a.out")
        wait_until(lambda: api.waiting >= 2, "creations held in the air")
        a.send_signal(signal.SIGKILL)
        a.wait()
        api.release()
        b = spawn(run_args(db_url, api, None, "--concurrency", "4"), tmp_path / "b.out")
        common = ["--ledger", db_url]
        while b.poll() is None:
            call(uploader("reconcile", *common, "--base-url", api.base_url, "-q"))
            call(uploader("retry", "--all", *common, "-q"))
        code, out = finish(b, tmp_path / "b.out")
        assert code in (0, 3), out
        final = finish(spawn(run_args(db_url, api), tmp_path / "c.out"), tmp_path / "c.out")
        assert final[0] == 0, final[1]
        assert statuses(db_url) == {"succeeded": 20}
        assert broken_promises(db_url, api, tmp_path) == []


@pytest.mark.slow
@both_engines
def test_adopt_while_a_run_has_requests_in_the_air_leaves_its_rows_to_it(db_url: str, tmp_path: Path) -> None:
    """PIN. `adopt` lists the run's batch while the run's creations are in the air (the jobs are listed, the
    rows are in flight): those rows are the run's, adopt leaves them, and the run records them; every row ends
    succeeded with the server's job_id, none adopted with another job_id."""
    names = refs(12)
    load(db_url, write_manifest(tmp_path / "m.csv", names))
    with TruthApi(KEY) as api:
        api.hold()
        a = spawn(run_args(db_url, api, None, "--concurrency", "4"), tmp_path / "a.out")
        wait_until(lambda: api.waiting >= 1, "creations held in the air")
        batch = next(iter(api.batches.values()))
        adopted = call(
            uploader(
                "adopt", "--ledger", db_url, "--base-url", api.base_url, "--project-id", PROJECT, "--batch-id", batch
            )
        )
        assert adopted.returncode in (0, 3), adopted.stdout + adopted.stderr
        api.release()
        code, out = finish(a, tmp_path / "a.out")
        assert code == 0, out
        assert statuses(db_url) == {"succeeded": 12}
        assert broken_promises(db_url, api, tmp_path) == []


@pytest.mark.slow
@both_engines
def test_forget_while_a_run_sends_keeps_every_row_whose_job_exists(db_url: str, tmp_path: Path) -> None:
    """`forget --status pending --status in_flight` while a run's creations are in the air: rows whose job exists
    (or may: a request in the air) are kept. After the run, every job the server holds has its row, with its
    job_id; loading the manifest again and running creates nothing twice."""
    names = refs(20)
    manifest = write_manifest(tmp_path / "m.csv", names)
    load(db_url, manifest)
    with TruthApi(KEY) as api:
        api.hold()
        a = spawn(run_args(db_url, api, None, "--concurrency", "4"), tmp_path / "a.out")
        wait_until(lambda: api.waiting >= 1, "creations held in the air")
        forgot = call(
            uploader("forget", "--ledger", db_url, "--status", "pending", "--status", "in_flight", "-y", "-q")
        )
        api.release()
        code, out = finish(a, tmp_path / "a.out")
        assert code == 0, out
        rows = ledger_rows(db_url)
        lost = sorted(set(api.job_ids(PROJECT)) - set(rows))
        assert lost == [], f"jobs created with no row left in the ledger: {lost} (forget said {forgot.stdout!r})"
        load(db_url, manifest)
        code, out = finish(spawn(run_args(db_url, api), tmp_path / "b.out"), tmp_path / "b.out")
        assert code == 0, out
        assert broken_promises(db_url, api, tmp_path) == []


@pytest.mark.slow
@sqlite_only
def test_a_row_sent_to_the_default_batch_by_a_run_that_started_before_the_load_is_found(
    db_url: str, tmp_path: Path
) -> None:
    """Run A gives the rows it finds a batch of its own and sends; while it sends, `uploader load` adds new rows
    (no batch). A claims them too. Wherever they are sent, the ledger must record the batch they went to: after
    SIGKILL and a rerun, each is recovered once (the rerun lists the batch the ledger names)."""
    first, later = refs(8, "a"), refs(8, "b")
    load(db_url, write_manifest(tmp_path / "m1.csv", first))
    with TruthApi(KEY) as api:
        api.hold()
        a = spawn(run_args(db_url, api, None, "--concurrency", "2"), tmp_path / "a.out")
        wait_until(lambda: api.waiting >= 1, "run A's first creation held")
        load(db_url, write_manifest(tmp_path / "m2.csv", later))
        api.release()
        wait_until(lambda: any(ref.startswith("b") for ref in api.job_ids(PROJECT)), "run A sends a later row")
        api.hold()
        wait_until(lambda: api.waiting >= 1, "another creation held")
        a.send_signal(signal.SIGKILL)
        a.wait()
        api.release()
        code, out = finish(spawn(run_args(db_url, api), tmp_path / "b.out"), tmp_path / "b.out")
        assert code == 0, out
        rows = ledger_rows(db_url)
        assert statuses(db_url) == {"succeeded": 16}, {r: (v["status"], v["error_code"]) for r, v in rows.items()}
        assert broken_promises(db_url, api, tmp_path) == []
        with api.lock:
            in_default = sorted(ref for (_, ref), j in api.store.items() if j["batch_id"] == DEFAULT_BATCH)
        assert in_default == [] or all(rows[r]["status"] == "succeeded" for r in in_default)


# -- two runs naming different batches for the same rows ---------------------------------------------------


@pytest.mark.slow
@both_engines
def test_a_job_this_ledger_created_in_one_named_batch_is_still_found_after_a_run_names_another(
    db_url: str, tmp_path: Path
) -> None:
    """FINDING. Run A (`--batch-name first`) sends the manifest; the API creates each job and answers a server
    failure (500 FS_0000, Retry-After), so the rows wait pending with their payload hash kept as possibly
    created, and A is stopped (SIGTERM). Run B sends the same manifest with `--batch-name second`: the reload
    gives the pending rows the new batch (their body names it), B meets FS_0001 and lists batch `second` only,
    where the jobs are not. The jobs this very ledger created in batch `first` are then never found: the rows
    stay `uncertain` for good, through `reconcile` too, with no job_id, although the ledger knows the batch it
    sent them to."""
    names = refs(3)
    manifest = write_manifest(tmp_path / "m.csv", names)
    with TruthApi(KEY, fail_first=True) as api:
        a = spawn(run_args(db_url, api, manifest, "--batch-name", "first", "--concurrency", "4"), tmp_path / "a.out")

        def waiting_after_500() -> list[str]:
            rows = ledger_rows(db_url) if api.created else {}
            return [r for r, row in rows.items() if row["status"] == "pending" and row["error_code"] == "FS_0000"]

        wait_until(lambda: len(waiting_after_500()) == len(names), "every row pending after a 500 (job stored)")
        a.send_signal(signal.SIGTERM)
        code_a, out_a = finish(a, tmp_path / "a.out")
        assert code_a == 143, out_a
        api.fail_first = False
        code_b, out_b = finish(
            spawn(run_args(db_url, api, manifest, "--batch-name", "second"), tmp_path / "b.out"), tmp_path / "b.out"
        )
        reconciled = call(uploader("reconcile", "--ledger", db_url, "--base-url", api.base_url, "-q"))
        assert api.twice() == {}
        rows = ledger_rows(db_url)
        assert broken_promises(db_url, api, tmp_path) == []
        stuck = {r: (row["status"], row["error_code"]) for r, row in rows.items() if row["status"] == "uncertain"}
        assert stuck == {}, (
            f"jobs this ledger created (in batch 'first') never found after a run named batch 'second': {stuck}; "
            f"run B exit {code_b}, reconcile exit {reconciled.returncode}: {reconciled.stderr.strip()}"
        )


# -- a thawed worker sends the rows it no longer holds -----------------------------------------------------


@pytest.mark.slow
@both_engines
def test_a_thawed_worker_does_not_create_jobs_for_rows_another_run_has_finished(db_url: str, tmp_path: Path) -> None:
    """FINDING. Worker A claims 4 rows, sends the first (held in the air) and is frozen (SIGSTOP) before sending
    the other 3. Past its 1 s lease worker B takes all 4 over: the first is recovered (FS_0001), the other 3 are
    refused permanently (FS_0007: their attachment is not accessible) and recorded `failed`. The attachments are
    fixed; A is thawed and sends the 3 claims it lost long ago without looking at its lease: the API creates their
    jobs, A's answers are fenced (ignored), and the ledger goes on saying `failed` FS_0007, no job_id, for jobs that
    exist (`export` too)."""
    names = refs(4)
    load(db_url, write_manifest(tmp_path / "m.csv", names))
    with TruthApi(KEY) as api:
        api.hold()
        lease = ["--concurrency", "1", "--lease-seconds", "1"]
        a = spawn(run_args(db_url, api, None, *lease), tmp_path / "a.out")
        wait_until(lambda: api.waiting >= 1, "worker A's first creation held in the air")
        freeze(a, db_url)
        try:
            wait_until(lambda: in_flight_expired(db_url) == len(names), "worker A's leases expired", timeout=15)
            api.refuse = set(names) - set(api.job_ids(PROJECT))  # A's claims it had not sent yet
            assert len(api.refuse) == 3
            api.release()
            code_b, out_b = finish(spawn(run_args(db_url, api, None, *lease), tmp_path / "b.out"), tmp_path / "b.out")
            assert code_b == 3, out_b
            refused = sorted(api.refuse)
            assert all(ledger_rows(db_url)[r]["status"] == "failed" for r in refused)
            api.refuse = set()  # the attachments are fixed
        finally:
            a.send_signal(signal.SIGCONT)
        code_a, out_a = finish(a, tmp_path / "a.out")
        rows, jobs = ledger_rows(db_url), api.job_ids(PROJECT)
        assert api.twice() == {}
        exists_but_failed = {r: rows[r]["error_code"] for r in refused if r in jobs and rows[r]["status"] == "failed"}
        assert exists_but_failed == {}, (
            f"the thawed worker created jobs for rows it had lost (A: {summary(out_a).get('this_run')}); the ledger "
            f"says failed for jobs that exist: {exists_but_failed}"
        )
