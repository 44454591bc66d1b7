"""Adversarial tests of the send path (`uploader run`, `reconcile`, `retry`, resuming after a stop, `export`'s
reference_id -> job_id), over real HTTP on loopback against the sandbox or tests/test_adversary_send_resolve_server.py,
on a real SQLite ledger; real subprocesses where the scenario is about signals.

After each scenario the ledger (read with plain sqlite3) is compared with the server's own store (`truth`):
- every `succeeded` row: exactly one job at the server with its reference_id, holding the payload the row holds
  now, and the row's job_id is that job's id;
- no reference_id created twice;
- every `failed` row: no job at the server, or a message that says it may exist;
- `export` hands out no job_id the server does not have.
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
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from tests.test_adversary_send_resolve_server import (
    BATCH,
    REFUSED,
    Creation,
    StoreApi,
    error_envelope,
    faithful,
    ok_envelope,
)
from tests.test_trust import rows as ledger_rows
from tests.waiting import wait_until
from uploader import RunOptions, upload
from uploader.cli.commands import cli
from uploader.sandbox import Sandbox, SandboxConfig

KEY = "sk-send-resolve-4c8e1f6a2d9b7e30"
ROOT = Path(__file__).resolve().parents[1]
PROJECT = "proj"

# -- helpers ---------------------------------------------------------------------------------------------


def write_manifest(path: Path, n: int, changed: dict[int, str] | None = None, prefix: str = "r") -> Path:
    """Rows `{prefix}00..` with image URLs; `changed` gives some rows another URL (a fixed manifest)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "image_url"])
        for i in range(n):
            url = (changed or {}).get(i, f"https://cdn.example.com/{prefix}/{i}.jpg")
            w.writerow([f"{prefix}{i:02d}", url])
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"PLAYMENT_API_KEY": KEY}, catch_exceptions=False)


def common(ledger: Path, base_url: str, *extra: str) -> list[str]:
    return ["--project-id", PROJECT, "--work-flow-id", "wf", "--ledger", str(ledger), "--base-url", base_url, *extra]


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "uploader", *args]


def cli_env() -> dict[str, str]:
    env = {**os.environ, "PLAYMENT_API_KEY": KEY}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def exported(ledger: Path, tmp: Path) -> dict[str, str | None]:
    """reference_id -> job_id as `uploader export` hands it out."""
    out = tmp / f"export-{time.monotonic_ns()}.jsonl"
    result = invoke("export", "--ledger", str(ledger), "-o", str(out), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {r["reference_id"]: r["job_id"] for r in lines}


#: The server's truth: {reference_id: {"job_id", "data", "batch_id"}} and the jobs created per reference_id.
Truth = tuple[dict[str, dict[str, Any]], Counter[str]]


def sandbox_truth(box: Sandbox) -> Truth:
    jobs = [j for j in box.jobs() if j["project_id"] == PROJECT]
    return {j["reference_id"]: j for j in jobs}, Counter(j["reference_id"] for j in jobs)


def store_truth(api: StoreApi) -> Truth:
    with api.lock:
        jobs = {ref: {**j} for ref, j in api.store.items()}
        return jobs, Counter(api.created)


def broken_promises(ledger: Path, truth: Truth, tmp: Path) -> list[str]:
    """What the ledger (and `export`) says that the server's store contradicts (empty: nothing)."""
    jobs, created = truth
    problems = [f"{ref!r} created {n} times at the server" for ref, n in created.items() if n > 1]
    for ref, row in ledger_rows(ledger).items():
        job = jobs.get(ref)
        if row["status"] == "succeeded":
            if job is None:
                problems.append(f"{ref!r} succeeded, but the server has no job with that reference_id")
                continue
            if row["job_id"] != job["job_id"]:
                problems.append(f"{ref!r} succeeded with job_id {row['job_id']!r}, the server's is {job['job_id']!r}")
            if json.loads(row["body"]).get("data") != job["data"]:
                problems.append(
                    f"{ref!r} succeeded (origin {row['origin']}), but its job holds {job['data']!r}, not the "
                    f"row's payload {json.loads(row['body']).get('data')!r}"
                )
        if row["status"] == "failed" and job is not None:
            message = row["error_message"] or ""
            if "may" not in message and "not yet" not in message:
                problems.append(f"{ref!r} failed ({message!r}) while its job {job['job_id']} exists")
    known = {j["job_id"] for j in jobs.values()}
    for ref, job_id in exported(ledger, tmp).items():
        if job_id is not None and job_id not in known:
            problems.append(f"export hands out job_id {job_id!r} for {ref!r}: the server has no such job")
    return problems


def create_batch(base_url: str) -> str:
    answer = httpx.post(
        f"{base_url}/v1/projects/{PROJECT}/batch", headers={"x-api-key": KEY}, json={"name": "b", "description": ""}
    )
    return str(answer.json()["data"]["batch_id"])


def create_elsewhere(base_url: str, ref: str, batch_id: str) -> None:
    """Someone else (the UI, a colleague's ledger) creates a job for `ref` with other data, in `batch_id`."""
    body = {"reference_id": ref, "work_flow_id": "wf", "batch_id": batch_id, "data": {"image_url": OTHER_URL}}
    answer = httpx.post(f"{base_url}/v1/projects/{PROJECT}/jobs", headers={"x-api-key": KEY}, json=body)
    assert answer.status_code == 200, answer.text


OTHER_URL = "https://elsewhere.example.com/someone-elses.jpg"


# -- FINDING: a gentle stop marks every claimed row as sent ----------------------------------------------


@pytest.mark.timeout(60)
def test_a_row_an_interrupted_run_claimed_but_never_sent_is_not_recovered_from_someone_elses_job(
    tmp_path: Path,
) -> None:
    """FINDING. A run is stopped with Ctrl-C (SIGINT) while its first requests are in the air: the rows it had
    claimed but never handed to the transport (16 for --concurrency 4) go back to pending, and `release` adds
    their payload hash to `sent_hashes` ("a hard stop may have cancelled a request in the air"), although not one
    byte of them left the process. Then someone else creates jobs for two of the rows, with other data, in the
    same batch (a colleague's upload with --batch-id, the UI): one row the stopped run had claimed, and one it
    had not. The resumed run meets FS_0001 for both; the listing finds both jobs. The row never claimed is
    recorded as it should be, `conflict` / created_elsewhere / pre-existing. The row that was only claimed is
    recorded `succeeded`, origin `recovered`, with the job_id of a job holding someone else's image: the ledger
    says "our job, our payload" and `export` hands the job_id out as the row's (the run's exit 3 and its
    summary speak only of the other row's conflict). A user who pressed
    Ctrl-C once gets labels for the wrong image with nothing to warn them. (Suspected: uploader/ledger/ledger.py
    Ledger.release merging attempt_hash for every claimed row, also those still queued in
    uploader/send/submit.py _Run; the same goes for every other stop: a fatal answer, a ledger error.)"""
    manifest = write_manifest(tmp_path / "m.csv", 30)
    ledger = tmp_path / "ledger.db"
    with Sandbox(SandboxConfig(api_key=KEY, latency_ms=400)) as box:
        batch = create_batch(box.base_url)
        args = common(ledger, box.base_url, "--batch-id", batch, "--concurrency", "4", "-q")
        proc = subprocess.Popen(
            cli_cmd("run", str(manifest), *args), env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        wait_until(lambda: box.stats()["requests_total"] >= 2, "the first job request", timeout=20)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err.decode()
        reached = {j["reference_id"] for j in box.jobs()}
        rows = ledger_rows(ledger)
        # a claim bumps the row's lease token, and a release leaves it: the rows the stopped run had claimed
        claimed = sorted(r for r, row in rows.items() if row["lease_token"] > 0 and r not in reached)
        never_claimed = sorted(r for r, row in rows.items() if row["lease_token"] == 0)
        assert claimed and never_claimed, (claimed, never_claimed)  # the scenario's precondition
        claimed_only, control = claimed[-1], never_claimed[-1]
        assert rows[claimed_only]["sent_hashes"] is None, "a row never sent is marked as sent"
        for ref in (claimed_only, control):
            create_elsewhere(box.base_url, ref, batch)
        box.configure(latency_ms=0)

        resumed = invoke("run", *args)
        rows = ledger_rows(ledger)
        seen = {ref: (rows[ref]["status"], rows[ref]["origin"], rows[ref]["error_code"]) for ref in (claimed_only,)}
        assert rows[control]["status"] == "conflict" and rows[control]["error_code"] == "created_elsewhere"
        assert resumed.exit_code == 3, resumed.output
        assert seen[claimed_only] == ("conflict", "pre-existing", "created_elsewhere"), (
            f"{claimed_only!r} was never sent by this ledger (the sandbox never saw it before someone else "
            f"created it with {OTHER_URL}), yet it is recorded {seen[claimed_only]}"
        )
        assert broken_promises(ledger, sandbox_truth(box), tmp_path) == []


# -- FINDING: a server failure envelope after the job was created -----------------------------------------


def first_answer(status: int, body: bytes) -> Any:
    """The store creates the job, but answers its first POST with `status` and `body`; then as the API does
    (FS_0001 for the twin)."""

    def answer(c: Creation) -> tuple[int, bytes] | None:
        return (status, body) if c.created else faithful(c)

    return answer


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, error_envelope("api_error", "internal server error")),
        (500, error_envelope("FS_0000", "something went wrong, retry later")),
        (503, error_envelope("FS_0008", "service busy, retry later")),
        (429, ok_envelope({"job_id": "x", "reference_id": "x"})),
    ],
    ids=["500 api_error", "500 FS_0000", "503 FS_0008", "429 with a success body"],
)
def test_a_job_created_before_a_server_failure_answer_is_ours_not_created_elsewhere(
    tmp_path: Path, status: int, body: bytes
) -> None:
    """FINDING. The API creates each job, then answers the POST with a server-side failure that says "retry
    later" (`api_error`, `FS_0000`, `FS_0008` in an error envelope on a 5xx: what an exception after the
    insert produces), or with a 429 whose body is a success. The retry meets FS_0001, and the listing finds the
    job, holding exactly the row's payload: the only send that can have created it is this ledger's own. Yet
    every row is recorded `conflict`, error created_elsewhere, origin `pre-existing` ("the job existed before
    this ledger ever sent the row"), exit 3, and `retry` / a rerun never fix it. The same failure as an HTML
    502 page (test below) ends `succeeded`, recovered, exit 0: the uploader's verdict on the same event depends
    on whether the failure page was JSON. A demanding user is told every job was created by someone else and may
    hold other data, and must check each by hand. (Suspected: uploader/api/policy.py may_have_created, which
    says an error envelope (and any 429) can never have created the job, so the attempt's hash is not kept in
    sent_hashes and uploader/ledger/transitions.py settle_found takes the job for someone else's.)"""
    manifest = write_manifest(tmp_path / "m.csv", 3)
    ledger = tmp_path / "ledger.db"
    with StoreApi(KEY, answer=first_answer(status, body)) as api:
        result = invoke("run", str(manifest), *common(ledger, api.base_url, "--batch-id", BATCH, "-q"))
        rows = ledger_rows(ledger)
        jobs, created = store_truth(api)
        assert set(created.values()) == {1}
        outcome = {ref: (r["status"], r["origin"], r["error_code"]) for ref, r in rows.items()}
        assert outcome == {ref: ("succeeded", "recovered", None) for ref in rows}, (result.exit_code, outcome)
        assert {ref: r["job_id"] for ref, r in rows.items()} == {ref: j["job_id"] for ref, j in jobs.items()}
        assert result.exit_code == 0, result.output
        assert broken_promises(ledger, store_truth(api), tmp_path) == []


@pytest.mark.parametrize(
    "answer",
    [
        None,  # the connection closed right after the request was read
        (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
        (504, b""),
        (200, b"<html>maintenance</html>"),
    ],
    ids=["closed without answering", "502 HTML", "504 empty", "200 not JSON"],
)
def test_answers_lost_after_the_job_was_created_end_recovered(tmp_path: Path, answer: tuple[int, bytes] | None) -> None:
    """Guard. The API creates each job; the answer is lost (the connection closed after the request was read)
    or is no API answer (a gateway's page). Every row ends `succeeded`, recovered, with the server's job_id, one
    job each, exit 0."""

    def scripted(c: Creation) -> tuple[int, bytes] | None:
        return answer if c.created else faithful(c)

    manifest = write_manifest(tmp_path / "m.csv", 4)
    ledger = tmp_path / "ledger.db"
    with StoreApi(KEY, answer=scripted) as api:
        result = invoke("run", str(manifest), *common(ledger, api.base_url, "--batch-id", BATCH, "-q"))
        rows = ledger_rows(ledger)
        assert result.exit_code == 0, result.output
        assert {r["status"] for r in rows.values()} == {"succeeded"}
        assert {r["origin"] for r in rows.values()} == {"recovered"}
        assert broken_promises(ledger, store_truth(api), tmp_path) == []


# -- FINDING: a reload forgets the batch of a row whose earlier send may have created its job -------------


@pytest.mark.timeout(60)
def test_reloading_a_row_whose_lost_send_created_its_job_keeps_the_batch_it_was_sent_to(tmp_path: Path) -> None:
    """FINDING. A run (the ledger's own batch) sends r00; the API creates the job but answers after the
    client's --timeout; Ctrl-C while it waits: r00 is pending, its attempt kept as possibly sent. The user
    fixes r00's URL in the manifest, adds a row r06 and reloads: r00's payload is updated, and with it its
    batch_id is reset to the manifest's (none). The next run sends r00 with no batch_id (to the project's
    Default batch): FS_0001; the resolver cannot list the default batch, so r00 stays `uncertain` for good, and
    `reconcile` says r00 "went to the project's default batch" and tells the user to put more jobs there. The
    truth: r00's job exists in the ledger's own batch, holding the OLD URL: the README's answer for it is
    `conflict` payload_changed, found by listing the batch "whose id the ledger always knows". Worse, while r00
    looks like a default-batch row, the project no longer gets the ledger's batch: the new row r06 is created in
    the Default batch. (Suspected: uploader/ledger/loading.py MERGE_CHANGED `batch_id = s.batch_id` for a row
    with sent_hashes; uploader/ledger/ledger.py _UNBATCHED / _IN_DEFAULT_BATCH / projects_needing_batch.)"""
    first = write_manifest(tmp_path / "m.csv", 6)
    fixed = write_manifest(tmp_path / "m-fixed.csv", 7, changed={0: "https://cdn.example.com/r/0-fixed.jpg"})
    ledger = tmp_path / "ledger.db"
    with Sandbox(SandboxConfig(api_key=KEY, slow_rate=1.0, slow_ms=5000)) as box:
        args = common(ledger, box.base_url, "--concurrency", "1", "--timeout", "0.5", "-q")
        proc = subprocess.Popen(
            cli_cmd("run", str(first), *args), env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        wait_until(lambda: box.stats()["jobs_created"] >= 1, "the first job", timeout=20)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err.decode()
        own_batch = ledger_rows(ledger)["r00"]["batch_id"]
        (old,) = box.jobs()
        assert old["reference_id"] == "r00" and old["batch_id"] == own_batch

        loaded = invoke("load", str(fixed), "--project-id", PROJECT, "--work-flow-id", "wf", "--ledger", str(ledger))
        assert loaded.exit_code == 0, loaded.output
        box.configure(slow_rate=0.0)
        invoke("run", *args)
        reconciled = invoke("reconcile", "--ledger", str(ledger), "--base-url", box.base_url)
        rows = ledger_rows(ledger)
        jobs, _ = sandbox_truth(box)
        assert (rows["r00"]["status"], rows["r00"]["error_code"], rows["r00"]["job_id"]) == (
            "conflict",
            "payload_changed",
            old["job_id"],
        ), (rows["r00"]["status"], rows["r00"]["error_code"], reconciled.output)
        assert rows["r00"]["batch_id"] == own_batch, "the ledger forgot the batch r00 was sent to"
        assert jobs["r06"]["batch_id"] == own_batch, "the new row's job went to the project's Default batch"
        assert broken_promises(ledger, sandbox_truth(box), tmp_path) == []


@pytest.mark.timeout(60)
def test_rows_fixed_after_a_systematic_stop_all_go_to_the_batch_named(tmp_path: Path) -> None:
    """FINDING. The commonest recovery there is: `uploader run M --batch-name "nov upload"` stops because its
    first 20 answers are all the same permanent error (here FS_0007: every image URL is a 404); the user fixes
    the manifest, reloads it and runs the same command again. No answer was lost, no job was created. Yet the
    rows the stopped run had claimed but not sent (their hash marked as sent by the stop, see the first test)
    lose their batch in the reload and are then sent without one: their jobs are created in the project's
    Default batch, not in "nov upload", and the ledger records them with no batch. The user asked for one batch
    and gets their upload split across two, and a later lost answer for those rows cannot be found by listing
    "nov upload". (Suspected: uploader/ledger/loading.py MERGE_CHANGED `batch_id = s.batch_id`; the rows keep
    `sent_hashes` (uploader/ledger/ledger.py Ledger.release), so `_UNBATCHED` no longer gives them the batch.)"""
    ledger = tmp_path / "ledger.db"
    load = ["--project-id", PROJECT, "--work-flow-id", "wf", "--ledger", str(ledger)]
    with Sandbox(SandboxConfig(api_key=KEY, check_attachments=True)) as box:
        files = f"{box.base_url}/_sandbox/files"
        broken = {i: f"{files}/{i}.jpg?status=404" for i in range(40)}
        manifest = write_manifest(tmp_path / "m.csv", 40, changed=broken)
        fixed = write_manifest(tmp_path / "m-fixed.csv", 40, changed={i: f"{files}/{i}.jpg" for i in range(40)})
        run = ["--base-url", box.base_url, "--batch-name", "nov upload", "--concurrency", "4", "-q"]
        stopped = invoke("run", str(manifest), *load, *run)
        assert stopped.exit_code == 1 and "FS_0007" in stopped.output, stopped.output
        assert box.stats()["jobs_created"] == 0
        assert invoke("load", str(fixed), *load).exit_code == 0
        done = invoke("run", *load, *run)
        assert done.exit_code == 0, done.output
        con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        (named,) = con.execute("SELECT batch_id FROM batches WHERE name = 'nov upload'").fetchone()
        con.close()
        jobs, created = sandbox_truth(box)
        assert len(jobs) == 40 and set(created.values()) == {1}
        elsewhere = sorted(ref for ref, job in jobs.items() if job["batch_id"] != named)
        assert elsewhere == [], f"{elsewhere} were created in another batch than 'nov upload' (the Default batch)"
        assert {row["batch_id"] for row in ledger_rows(ledger).values()} == {named}
        assert broken_promises(ledger, sandbox_truth(box), tmp_path) == []


# -- FINDING: export hands out job_ids no job has ----------------------------------------------------------


def test_export_hands_out_no_job_id_the_server_never_had(tmp_path: Path) -> None:
    """FINDING. The API creates each job but answers every creation with the same job_id, "JOB-SAME" (a broken
    server, or a proxy's cached answer), and the batch listing is refused (a key that may create jobs but not
    read batches; or the run is stopped before it lists). The run does not believe the answers (every row goes
    `uncertain`, duplicate_job_id), but it keeps the answered job_id in the row's job_id column, "unconfirmed",
    and `uploader export` hands it out: three reference_ids mapped to one job_id that no job at the server has.
    The export is the deliverable (reference_id -> job_id, fed to whatever follows); a user joining on it links
    three items to a job that does not exist. An uncertain row's job_id is not known (README: "the job may exist
    but its job_id is not known"): the column should be empty. (Suspected: uploader/ledger/ledger.py
    Ledger._record_duplicate keeping `:job_id` (COALESCE in _RECORD_SETS); uploader/ledger/queries.py
    export_rows exporting job_id whatever the status.)"""

    def same(c: Creation) -> tuple[int, bytes] | None:
        if c.created:
            return 200, ok_envelope({"job_id": "JOB-SAME", "reference_id": c.reference_id, "work_flow_id": "wf"})
        return faithful(c)

    manifest = write_manifest(tmp_path / "m.csv", 3)
    ledger = tmp_path / "ledger.db"
    with StoreApi(KEY, answer=same) as api:
        api.listing_reply = REFUSED
        result = invoke("run", str(manifest), *common(ledger, api.base_url, "--batch-id", BATCH, "-q"))
        assert result.exit_code == 1, result.output
        rows = ledger_rows(ledger)
        assert {r["status"] for r in rows.values()} == {"uncertain"}
        handed_out = exported(ledger, tmp_path)
        jobs, _ = store_truth(api)
        known = {j["job_id"] for j in jobs.values()}
        assert {ref: j for ref, j in handed_out.items() if j is not None and j not in known} == {}
        assert broken_promises(ledger, store_truth(api), tmp_path) == []


# -- guards ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_signals_at_random_moments_then_resume_create_each_job_once(tmp_path: Path) -> None:
    """Guard. `uploader run` (a real subprocess) against a sandbox that answers some creations after the
    client's timeout and drops others after creating, stopped 3 times by SIGINT or SIGTERM at random moments
    (sometimes twice, a hard stop cancelling the requests in the air), then resumed to the end: every row
    succeeded with the sandbox's job_id and its own payload, one job per reference_id, exit 0."""
    rng = random.Random(20261205)
    manifest = write_manifest(tmp_path / "m.csv", 40)
    ledger = tmp_path / "ledger.db"
    config = SandboxConfig(api_key=KEY, latency_ms=20, slow_rate=0.3, slow_ms=400, drop_rate=0.15, seed=5)
    with Sandbox(config) as box:
        args = common(ledger, box.base_url, "--concurrency", "6", "--timeout", "0.25", "-q")
        lives: list[tuple[int, int]] = []  #: (exit code, jobs created so far) of each life
        for life in range(3):
            proc = subprocess.Popen(
                cli_cmd("run", *([str(manifest)] if life == 0 else []), *args),
                env=cli_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            before = box.stats()["jobs_created"]

            def progressed(proc: subprocess.Popen[bytes] = proc, before: int = before) -> bool:
                return box.stats()["jobs_created"] > before or proc.poll() is not None

            wait_until(progressed, "a job created in this life", timeout=20)
            time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(rng.choice([signal.SIGINT, signal.SIGTERM]))
            if rng.random() < 0.5:
                time.sleep(0.03)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
            assert proc.returncode in (0, 130, 143), proc.returncode
            lives.append((proc.returncode, box.stats()["jobs_created"]))
        assert [code for code, _ in lives].count(0) < len(lives), lives  # some life was stopped mid-way
        box.configure(slow_rate=0.0, drop_rate=0.0)
        final = invoke("run", *args)
        assert final.exit_code == 0, final.output
        rows = ledger_rows(ledger)
        assert {r["status"] for r in rows.values()} == {"succeeded"}, lives
        assert broken_promises(ledger, sandbox_truth(box), tmp_path) == [], lives


@pytest.mark.timeout(60)
def test_retry_of_failed_rows_whose_jobs_exist_finds_them_and_creates_nothing(tmp_path: Path) -> None:
    """Guard. Each job is created but its answer lost (one attempt each), and the batch listing omits the jobs
    (they exist all the same): the rows end `failed`, with a message that says the job may not be created yet,
    and `export` hands out no job_id for them. Once the listing shows the jobs, `retry --all` and a run find
    each one (FS_0001, then the listing): succeeded, recovered, nothing created twice."""

    def lost(c: Creation) -> tuple[int, bytes] | None:
        return None if c.created else faithful(c)

    manifest = write_manifest(tmp_path / "m.csv", 4)
    ledger = tmp_path / "ledger.db"
    with StoreApi(KEY, answer=lost) as api:
        api.hidden = {f"r{i:02d}" for i in range(4)}
        upload(
            manifest,
            project_id=PROJECT,
            work_flow_id="wf",
            batch_id=BATCH,
            ledger=ledger,
            api_key=KEY,
            base_url=api.base_url,
            run_options=RunOptions(concurrency=2, max_attempts=1, late_grace=0.0),
            handle_signals=False,
        )
        rows = ledger_rows(ledger)
        assert {r["status"] for r in rows.values()} == {"failed"}, rows
        assert broken_promises(ledger, store_truth(api), tmp_path) == []
        assert set(exported(ledger, tmp_path).values()) == {None}

        api.hidden = set()
        assert invoke("retry", "--all", "--ledger", str(ledger)).exit_code == 0
        again = invoke("run", *common(ledger, api.base_url, "--batch-id", BATCH, "-q"))
        assert again.exit_code == 0, again.output
        rows = ledger_rows(ledger)
        assert {(r["status"], r["origin"]) for r in rows.values()} == {("succeeded", "recovered")}
        assert broken_promises(ledger, store_truth(api), tmp_path) == []


def shuffled(jobs: list[dict[str, Any]], read: int) -> list[dict[str, Any]]:
    """Each page request sees the batch in another order (a listing sorted by a field that changes, read by
    offset): across pages some jobs are shown twice and others never."""
    return sorted(jobs, key=lambda j: hash((j["id"], read)))


def test_a_listing_that_pages_inconsistently_never_makes_a_false_success_or_failure(tmp_path: Path) -> None:
    """Guard. Every creation's answer is lost (the job is created), and the batch listing, 3 jobs a page, is
    read in another order at each page: a complete-looking listing omits some jobs and repeats others. No row
    may be recorded with a job_id that is not its own, none failed while its job exists, none created twice; the
    rows the listings never showed stay uncertain (exit 3), or all are found (exit 0)."""

    def lost(c: Creation) -> tuple[int, bytes] | None:
        return None if c.created else faithful(c)

    manifest = write_manifest(tmp_path / "m.csv", 12)
    ledger = tmp_path / "ledger.db"
    with StoreApi(KEY, answer=lost, page_size=3, order=shuffled) as api:
        result = invoke("run", str(manifest), *common(ledger, api.base_url, "--batch-id", BATCH, "-q"))
        rows = ledger_rows(ledger)
        assert result.exit_code in (0, 3), result.output
        assert {r["status"] for r in rows.values()} <= {"succeeded", "uncertain"}, rows
        assert broken_promises(ledger, store_truth(api), tmp_path) == []
