"""Adversarial tests of one ledger holding jobs of several projects (a manifest's own `project_id` column).

The promise under attack: every row's word matches the platform's truth for that row's own project. A job is
created in the row's project; the same reference_id in two projects gives two jobs, each on its own row; an
FS_0001 is resolved in the row's own project and batch; batches are per project; a fatal error about one
project stops the run as documented and leaves the other project's rows in a true state; the describing
commands (status, export, report, show, forget, sync, adopt, reconcile) keep the projects apart; a killed run
and its rerun keep all of that true.

Two real servers on loopback: the project's own sandbox (uploader.sandbox: per-project jobs, batches and
reference_ids, `forbidden_projects`), and `TruthApi` below, a small per-project job store that can lose the
answer of chosen creations (the job is created, the connection closed: the client must retry, meet FS_0001
and look the job up) and refuse chosen projects. Commands run as real `python -m uploader` processes on a
real SQLite ledger, read back with plain sqlite3.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.misbehaving_api import Served
from uploader.sandbox import Sandbox, SandboxConfig

KEY = "sk-adversary-projects-4b7e2d9c"
ROOT = Path(__file__).resolve().parent.parent


# -- helpers ---------------------------------------------------------------------------------------------


def up(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m uploader ARGS` in its own process, key in the environment."""
    env = {**os.environ, "PLAYMENT_API_KEY": KEY}
    return subprocess.run(
        [sys.executable, "-m", "uploader", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout
    )


def write_manifest(path: Path, rows: list[tuple[str, str]], batch: dict[str, str] | None = None) -> Path:
    """An image manifest with a project_id column: rows are (reference_id, project_id); with `batch`
    (project → batch_id) a batch_id column too."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "image_url", "project_id", *(["batch_id"] if batch else [])])
        for ref, project in rows:
            extra = [batch[project]] if batch else []
            w.writerow([ref, f"https://cdn.example.com/{project}/{ref}.jpg", project, *extra])
    return path


def run(manifest: Path | None, ledger: Path, base_url: str, *extra: str, timeout: float = 60) -> Any:
    args = ["run", *([str(manifest)] if manifest else []), "--work-flow-id", "wf", "--ledger", str(ledger)]
    return up(*args, "--base-url", base_url, "--allow-http", "--quiet", *extra, timeout=timeout)


def ledger_rows(ledger: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(project_id, reference_id) → the row's status, job_id, batch_id, error_code, straight from SQLite."""
    con = sqlite3.connect(ledger)
    try:
        got = con.execute("SELECT project_id, reference_id, status, job_id, batch_id, error_code FROM jobs").fetchall()
    finally:
        con.close()
    return {(p, r): {"status": s, "job_id": j, "batch_id": b, "error_code": e} for p, r, s, j, b, e in got}


def sandbox_truth(box: Sandbox) -> dict[tuple[str, str], dict[str, Any]]:
    """(project_id, reference_id) → the sandbox's job, asserting each pair has exactly one."""
    truth: dict[tuple[str, str], dict[str, Any]] = {}
    for job in box.jobs():
        key = (job["project_id"], job["reference_id"])
        assert key not in truth, f"two jobs for {key}"
        truth[key] = job
    return truth


def batches_of(box: Sandbox) -> dict[str, str]:
    """batch_id → project_id for every batch the sandbox holds (default batches included)."""
    state = box._on_loop(lambda: box._engine.app.state)  # type: ignore[union-attr]
    return {b: p.id for p in state.projects.values() for b in p.batches}


def batch_names_of(box: Sandbox) -> dict[str, str]:
    """batch_id → name for every batch the sandbox holds."""
    state = box._on_loop(lambda: box._engine.app.state)  # type: ignore[union-attr]
    return {b: batch.name for p in state.projects.values() for b, batch in p.batches.items()}


def assert_matches_truth(ledger: Path, truth: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Every succeeded row holds the job of its own (project, reference_id); every job is some row's."""
    rows = ledger_rows(ledger)
    wrong = {k: (r["status"], r["job_id"]) for k, r in rows.items() if r["status"] != "succeeded"}
    assert not wrong, wrong
    assert {k: r["job_id"] for k, r in rows.items()} == {k: j["job_id"] for k, j in truth.items()}


def export_csv(ledger: Path) -> list[dict[str, str]]:
    done = up("export", "--ledger", str(ledger))
    assert done.returncode == 0, done.stderr
    return list(csv.DictReader(done.stdout.splitlines()))


# -- a truth-keeping per-project API on loopback ---------------------------------------------------------


def default_batch(project: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"truth-default/{project}"))


class TruthApi(Served):
    """Jobs per project, reference_id unique per project (FS_0001), batches per project (a listing of a batch
    of another project is GE_0001), GET job only in the job's own project. `drop`: (project, reference_id)
    pairs whose first creation succeeds but whose answer is lost (connection closed). `forbidden`: projects
    answered 403 `unauthorized` on every request, `refuse_reads` on every GET (both mutable while serving)."""

    def __init__(self, drop: set[tuple[str, str]] | None = None, forbidden: set[str] | None = None) -> None:
        self.drop = set(drop or ())
        self.forbidden = set(forbidden or ())
        self.refuse_reads: set[str] = set()
        #: How a refused project is answered: (HTTP status, error code or None for a bare answer with no body).
        self.refusal: tuple[int, str | None] = (403, "unauthorized")
        self.lock = threading.Lock()
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.batches: dict[str, str] = {}  #: batch_id → project
        self.posts: list[tuple[str, str]] = []  #: (project, reference_id) of each job POST
        self.reads: list[tuple[str, str, str]] = []  #: (method, project, path tail) of every request
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _fail(self, status: int, code: str, message: str) -> None:
                self._send(status, {"success": False, "error": {"code": code, "message": message, "errors": []}})

            def _route(self) -> tuple[str, list[str]] | None:
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 4 or parts[:2] != ["v1", "projects"]:
                    self._fail(404, "resource_error", "not found")
                    return None
                if self.headers.get("x-api-key") != KEY:
                    self._fail(401, "auth-failure", "API key incorrect")
                    return None
                project = parts[2]
                with api.lock:
                    api.reads.append((self.command, project, "/".join(parts[3:])))
                if project in api.forbidden or (self.command == "GET" and project in api.refuse_reads):
                    status, code = api.refusal
                    if code is None:
                        self.send_response(status)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    else:
                        self._fail(status, code, "the key has no access to this project")
                    return None
                return project, parts[3:]

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                routed = self._route()
                if routed is None:
                    return
                project, rest = routed
                body = json.loads(raw)
                if rest == ["batch"]:
                    batch_id = str(uuid.uuid4())
                    with api.lock:
                        api.batches[batch_id] = project
                    return self._send(200, {"success": True, "data": {"batch_id": batch_id}})
                if rest != ["jobs"]:
                    return self._fail(404, "resource_error", "not found")
                ref = body["reference_id"]
                batch_id = body.get("batch_id") or default_batch(project)
                with api.lock:
                    api.posts.append((project, ref))
                    if batch_id != default_batch(project) and api.batches.get(batch_id) != project:
                        return self._fail(400, "GE_0001", "invalid parameter: batch_id")
                    if (project, ref) in api.jobs:
                        return self._fail(400, "FS_0001", "reference_id already in use")
                    job = {
                        "job_id": str(uuid.uuid4()),
                        "reference_id": ref,
                        "batch_id": batch_id,
                        "project_id": project,
                    }
                    api.jobs[project, ref] = job
                    lost = (project, ref) in api.drop
                    api.drop.discard((project, ref))
                if lost:  # created, answer lost
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._send(
                    200, {"success": True, "data": {"job_id": job["job_id"], "reference_id": ref, "work_flow_id": "wf"}}
                )

            def do_GET(self) -> None:  # noqa: N802
                routed = self._route()
                if routed is None:
                    return
                project, rest = routed
                with api.lock:
                    jobs = [j for j in api.jobs.values() if j["project_id"] == project]
                    batches = dict(api.batches)
                if len(rest) == 2 and rest[0] == "jobs":
                    for j in jobs:
                        if j["job_id"] == rest[1]:
                            return self._send(200, {"success": True, "data": {**j, "status": "in_progress"}})
                    return self._fail(400, "FS_0006", "job not found")
                if len(rest) == 2 and rest[0] == "batch":
                    batch_id = rest[1]
                    if batch_id != default_batch(project) and batches.get(batch_id) != project:
                        return self._fail(400, "GE_0001", "invalid parameter: batch_id (no such batch in this project)")
                    listed = [
                        {"id": j["job_id"], "reference_id": j["reference_id"], "status": "in_progress"}
                        for j in jobs
                        if j["batch_id"] == batch_id
                    ]
                    doc = {"id": batch_id, "project_id": project, "name": "b", "jobs": listed, "next_page_token": ""}
                    return self._send(200, {"success": True, "data": doc})
                self._fail(404, "resource_error", "not found")

        self._serve(Handler)

    def put(self, project: str, ref: str, batch_id: str | None = None) -> str:
        """A job created elsewhere (the UI, another ledger): its job_id."""
        batch_id = batch_id or default_batch(project)
        job = {"job_id": str(uuid.uuid4()), "reference_id": ref, "batch_id": batch_id, "project_id": project}
        with self.lock:
            self.jobs[project, ref] = job
        return job["job_id"]

    def new_batch(self, project: str) -> str:
        batch_id = str(uuid.uuid4())
        with self.lock:
            self.batches[batch_id] = project
        return batch_id

    def truth(self) -> dict[tuple[str, str], dict[str, Any]]:
        with self.lock:
            return {k: dict(v) for k, v in self.jobs.items()}


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(api_key=KEY)) as sb:
        yield sb


SHARED = [("same", "pa"), ("same", "pb"), ("only-a", "pa"), ("only-b", "pb"), ("7", "pa"), ("7", "pb")]


# -- creation: one job per (project, reference_id), in a batch of its own project -------------------------


@pytest.mark.parametrize("batching", [[], ["--default-batch"]], ids=["auto-batch", "default-batch"])
def test_same_reference_id_in_two_projects_gives_two_jobs_each_on_its_own_row(
    box: Sandbox, tmp_path: Path, batching: list[str]
) -> None:
    """`same` and `7` in projects pa and pb (--project-id names pa, the column overrides it): four jobs at the
    sandbox, each row of the ledger holding its own project's job_id, each job in a batch of its own
    project, and export / show --project-id telling the same."""
    ledger = tmp_path / "l.db"
    m = write_manifest(tmp_path / "m.csv", SHARED)
    done = run(m, ledger, box.base_url, "--project-id", "pa", *batching)
    assert done.returncode == 0, done.stderr
    truth = sandbox_truth(box)
    assert set(truth) == {(p, r) for r, p in SHARED}
    assert_matches_truth(ledger, truth)
    homes = batches_of(box)
    assert all(homes[j["batch_id"]] == p for (p, _), j in truth.items())
    exported = {(r["project_id"], r["reference_id"]): r["job_id"] for r in export_csv(ledger)}
    assert exported == {k: j["job_id"] for k, j in truth.items()}
    for project in ("pa", "pb"):
        shown = up("show", "same", "--project-id", project, "--ledger", str(ledger), "--json")
        assert shown.returncode == 0, shown.stderr
        assert truth[project, "same"]["job_id"] in shown.stdout
        assert truth[{"pa": "pb", "pb": "pa"}[project], "same"]["job_id"] not in shown.stdout


def test_batch_name_gives_each_project_a_batch_of_its_own(box: Sandbox, tmp_path: Path) -> None:
    """Found, fixed (a row of another project than --project-id gets no default batch: the run gives it one of its own
    project). `uploader run m.csv --project-id pa --batch-name nb` over a manifest whose project_id column names pa
    and pb. The batch `nb` is created once, in pa, and its id is then every row's default batch_id
    (uploader/manifest/reader.py `Manifest._settings`: `batch or self._batch`, whatever the row's project;
    uploader/send/runner.py `_with_named_batch` puts it in the options before the load). The rows of pb are sent
    with a batch of pa: the sandbox (like the API) answers GE_0001 and they are failed for good ("invalid parameter:
    batch_id"); an API that accepted an unknown batch would put them who knows where. Truth: each project's rows go
    into a batch of their own project (runner's own docstring: "the run's --batch-id / --batch-name for its
    project"); a user splitting one upload over projects gets half of it failed, with an error that does not say
    why."""
    ledger = tmp_path / "l.db"
    m = write_manifest(tmp_path / "m.csv", SHARED)
    done = run(m, ledger, box.base_url, "--project-id", "pa", "--batch-name", "nb")
    rows = ledger_rows(ledger)
    assert not any(r["status"] == "succeeded" and r["job_id"] is None for r in rows.values())
    homes = batches_of(box)
    assert all(homes.get(r["batch_id"]) == p for (p, _), r in rows.items()), {
        k: (r["status"], r["error_code"], homes.get(r["batch_id"])) for k, r in rows.items()
    }
    assert done.returncode == 0, done.stdout + done.stderr
    assert_matches_truth(ledger, sandbox_truth(box))
    names = batch_names_of(box)
    assert {(p, names[r["batch_id"]]) for (p, _), r in rows.items()} == {("pa", "nb"), ("pb", "nb")}


def test_batch_name_rows_of_its_own_project_land_in_it(box: Sandbox, tmp_path: Path) -> None:
    """The part of --batch-name that holds: the rows of --project-id's project are created in the named batch,
    of that project, and no job of pb is ever created in a batch of pa."""
    ledger = tmp_path / "l.db"
    m = write_manifest(tmp_path / "m.csv", SHARED)
    run(m, ledger, box.base_url, "--project-id", "pa", "--batch-name", "nb")
    homes = batches_of(box)
    truth = sandbox_truth(box)
    assert {k for k in truth if k[0] == "pa"} == {(p, r) for r, p in SHARED if p == "pa"}
    assert all(homes[j["batch_id"]] == p for (p, _), j in truth.items())
    rows = ledger_rows(ledger)
    assert all(rows[k]["job_id"] == j["job_id"] for k, j in truth.items())


def test_load_then_run_with_batch_name_gives_other_projects_their_own_batch(box: Sandbox, tmp_path: Path) -> None:
    """The same manifest loaded first (`uploader load`), then `uploader run --batch-name nb` with no manifest:
    pa's rows go into nb (of pa), pb's rows into a batch nb the run creates in pb, every row succeeds with its
    own project's job. (What `run m.csv --batch-name nb` should do too: see the FINDING above.)"""
    ledger = tmp_path / "l.db"
    m = write_manifest(tmp_path / "m.csv", SHARED)
    loaded = up("load", str(m), "--project-id", "pa", "--work-flow-id", "wf", "--ledger", str(ledger))
    assert loaded.returncode == 0, loaded.stderr
    done = run(None, ledger, box.base_url, "--project-id", "pa", "--batch-name", "nb")
    assert done.returncode == 0, done.stdout + done.stderr
    truth = sandbox_truth(box)
    assert_matches_truth(ledger, truth)
    homes = batches_of(box)
    assert all(homes[j["batch_id"]] == p for (p, _), j in truth.items())
    names = batch_names_of(box)
    assert {names[j["batch_id"]] for j in truth.values()} == {"nb"}
    assert len({j["batch_id"] for j in truth.values()}) == 2  # one batch nb in each project


# -- FS_0001: resolved in the row's own project and batch ------------------------------------------------


@pytest.mark.parametrize("batching", ["auto-batch", "manifest-batch", "default-batch"])
def test_lost_answers_for_the_same_reference_id_resolve_each_in_its_own_project(tmp_path: Path, batching: str) -> None:
    """`same` exists in pa and pb; both creations succeed at the server but their answers are lost. The retry
    meets FS_0001 in each project, and each row must be settled with its own project's job (listing its own
    project's batch: with --default-batch, the default batch's id learnt from a job of that same project),
    never the other's."""
    pairs = [("same", "pa"), ("same", "pb"), ("x", "pa"), ("y", "pb")]
    with TruthApi(drop={("pa", "same"), ("pb", "same")}) as api:
        batch = {"pa": api.new_batch("pa"), "pb": api.new_batch("pb")} if batching == "manifest-batch" else None
        extra = ["--default-batch"] if batching == "default-batch" else []
        ledger = tmp_path / "l.db"
        m = write_manifest(tmp_path / "m.csv", pairs, batch)
        done = run(m, ledger, api.base_url, "--project-id", "pa", *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        assert api.posts.count(("pa", "same")) == 2 and api.posts.count(("pb", "same")) == 2  # FS_0001 met
        assert_matches_truth(ledger, api.truth())
        listed = [(p, tail[len("batch/") :]) for method, p, tail in api.reads if tail.startswith("batch/")]
        assert listed and all(
            b in (default_batch(p), *[k for k, v in api.batches.items() if v == p]) for p, b in listed
        )


def test_fs0001_in_one_project_is_never_settled_with_the_other_projects_job(tmp_path: Path) -> None:
    """`dup` already exists in pb (created elsewhere, in the batch the manifest names for pb). The ledger
    holds `dup` of pa (new) and `dup` of pb. pa's answer is lost (FS_0001 on retry: its own job), pb's creation
    meets FS_0001 at once (a job this ledger never sent). The pa row must get pa's job; the pb row must
    never be given pa's job, and never be called `succeeded` with a job it did not create."""
    with TruthApi(drop={("pa", "dup")}) as api:
        batch = {"pa": api.new_batch("pa"), "pb": api.new_batch("pb")}
        theirs = api.put("pb", "dup", batch["pb"])
        ledger = tmp_path / "l.db"
        m = write_manifest(tmp_path / "m.csv", [("dup", "pa"), ("dup", "pb")], batch)
        run(m, ledger, api.base_url, "--project-id", "pa")
        rows = ledger_rows(ledger)
        mine = api.truth()["pa", "dup"]["job_id"]
    assert rows["pa", "dup"]["status"] == "succeeded" and rows["pa", "dup"]["job_id"] == mine
    assert rows["pb", "dup"]["job_id"] in (None, theirs)
    assert rows["pb", "dup"]["status"] in ("conflict", "uncertain"), rows["pb", "dup"]


# -- a fatal error that concerns one project -------------------------------------------------------------


def test_a_forbidden_project_stops_the_run_names_it_and_leaves_the_other_project_pending(tmp_path: Path) -> None:
    """The key may not use pb (403 unauthorized, as API.md: "stops the run"). With the ledger's own batches the
    run creates pa's batch, is refused pb's, and stops (exit 1) naming pb and `forget --project-id pb`; no
    row is failed, no job created anywhere. After `forget --project-id pb` the same command sends pa's rows
    only, and pb's are gone from the ledger; pa's are untouched by the forget."""
    pairs = [(f"a{i}", "pa") for i in range(4)] + [(f"b{i}", "pb") for i in range(4)] + [("same", "pa"), ("same", "pb")]
    with Sandbox(SandboxConfig(api_key=KEY, forbidden_projects=frozenset({"pb"}))) as sb:
        ledger = tmp_path / "l.db"
        m = write_manifest(tmp_path / "m.csv", pairs)
        done = run(m, ledger, sb.base_url, "--project-id", "pa")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "'pb'" in done.stderr and "forget --project-id pb" in done.stderr, done.stderr
        rows = ledger_rows(ledger)
        assert {r["status"] for r in rows.values()} == {"pending"}
        assert not sb.jobs()
        forgot = up("forget", "--project-id", "pb", "--ledger", str(ledger))
        assert forgot.returncode == 0, forgot.stderr
        assert {p for p, _ in ledger_rows(ledger)} == {"pa"}
        again = run(None, ledger, sb.base_url)
        assert again.returncode == 0, again.stdout + again.stderr
        assert_matches_truth(ledger, sandbox_truth(sb))


def test_a_forbidden_project_mid_run_fails_no_row_and_a_later_run_finishes_it(tmp_path: Path) -> None:
    """--default-batch (no batch to create first): pa's jobs are created, pb's requests are refused 403 and the
    run stops, exit 1, naming pb. pb's rows stay pending (attempt refunded: nothing failed), pa's rows are
    succeeded with their jobs. Once the key may use pb, the same command creates pb's jobs, one each, and
    every row holds its own project's job."""
    pairs = [(f"a{i}", "pa") for i in range(5)] + [(f"b{i}", "pb") for i in range(5)] + [("same", "pa"), ("same", "pb")]
    with Sandbox(SandboxConfig(api_key=KEY, forbidden_projects=frozenset({"pb"}))) as sb:
        ledger = tmp_path / "l.db"
        m = write_manifest(tmp_path / "m.csv", pairs)
        done = run(m, ledger, sb.base_url, "--project-id", "pa", "--default-batch", "--concurrency", "1")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "'pb'" in done.stderr, done.stderr
        rows = ledger_rows(ledger)
        truth = sandbox_truth(sb)
        assert all(p == "pa" for p, _ in truth)
        for (p, r), row in rows.items():
            if p == "pb":
                assert row["status"] == "pending" and row["job_id"] is None, (p, r, row)
            elif (p, r) in truth:
                assert row["status"] == "succeeded" and row["job_id"] == truth[p, r]["job_id"], (p, r, row)
            else:
                assert row["status"] == "pending", (p, r, row)
        sb.configure(forbidden_projects=frozenset())
        again = run(None, ledger, sb.base_url, "--default-batch")
        assert again.returncode == 0, again.stdout + again.stderr
        assert_matches_truth(ledger, sandbox_truth(sb))


def _refused_run(tmp_path: Path, refusal: tuple[int, str | None]) -> tuple[Any, dict[tuple[str, str], dict[str, Any]]]:
    """A --default-batch run over pa and pb whose pb requests are refused with `refusal`; (result, rows)."""
    pairs = [(f"a{i}", "pa") for i in range(3)] + [(f"b{i}", "pb") for i in range(3)]
    with TruthApi(forbidden={"pb"}) as api:
        api.refusal = refusal
        ledger = tmp_path / "l.db"
        m = write_manifest(tmp_path / "m.csv", pairs)
        done = run(m, ledger, api.base_url, "--project-id", "pa", "--default-batch", "--concurrency", "1")
        rows = ledger_rows(ledger)
        truth = api.truth()
    assert done.returncode == 1, done.stdout + done.stderr
    for key, row in rows.items():  # whatever the words, no row is in a wrong state
        if key[0] == "pb":
            assert row["status"] == "pending" and row["job_id"] is None, (key, row)
        else:
            assert row["status"] == "succeeded" and row["job_id"] == truth[key]["job_id"], (key, row)
    return done, rows


@pytest.mark.parametrize("refusal", [(403, "unauthorized"), (404, "resource_error"), (400, "PR_0001")])
def test_a_project_refusal_names_the_project_and_leaves_other_rows_true(
    tmp_path: Path, refusal: tuple[int, str]
) -> None:
    """pb refused with a documented project code (the key may not use it, or it does not exist): exit 1, pa's
    rows succeeded with their jobs, pb's pending, and the error names pb and `forget --project-id pb`."""
    done, _ = _refused_run(tmp_path, refusal)
    assert "'pb'" in done.stderr and "forget --project-id pb" in done.stderr, done.stderr


def test_the_older_unauthorized_code_names_the_project_too(tmp_path: Path) -> None:
    """Found, fixed (the alias is a project code). API.md: `unauthorized` (also `core.webutil.auther`): the key has no
    access to the project, stops the run. Answered `core.webutil.auther` for pb only: the run stops (exit 1, rows
    true) but says only "error: the API refused the run (core.webutil.auther)": not which project, not that the key
    may not use it, no `forget --project-id pb` (uploader/cli/forgetting.py `PROJECT_CODES` and
    uploader/send/summary.py `fatal_message`'s hints list `unauthorized` but not its alias). The user sees pa's rows
    succeed and a vague refusal, and cannot tell which of the manifest's projects to fix or drop."""
    done, _ = _refused_run(tmp_path, (400, "core.webutil.auther"))
    assert "pb" in done.stderr, done.stderr


@pytest.mark.parametrize("status", [401, 403])
def test_a_bare_refusal_for_one_project_names_the_project(tmp_path: Path, status: int) -> None:
    """Found, fixed (a 403, and a 401 when the ledger holds several projects, name the project). pb's requests answered
    a bare 401 or 403 (no body: the older server's auth answer, a gateway's access rule), while the same key has
    just created pa's jobs. The run stops (exit 1, rows true) and says "the API key was refused: check --api-key"
    (401) or "the API refused the run (http_403)" (403), never that only project pb is refused, although the
    FatalApiError carries project_id=pb (uploader/send/submit.py `_Run._send`); uploader/cli/forgetting.py
    `project_hint` is limited to PROJECT_CODES. The user is sent to check a key that works, with no word of which
    project's rows stopped the run."""
    done, _ = _refused_run(tmp_path, (status, None))
    assert "pb" in done.stderr, done.stderr


def test_reconcile_with_one_forbidden_project_keeps_the_others_rows_true(tmp_path: Path) -> None:
    """Uncertain rows in pa and pb (answers lost, and the run killed before its lookups: made here by a run
    whose listings are refused for both projects). Then only pb stays forbidden: `reconcile` stops on pb
    (exit 1, naming pb), and no row of either project is given a job that is not its own; a second
    reconcile once pb answers settles every row with its own project's job."""
    pairs = [("same", "pa"), ("same", "pb"), ("k", "pa")]
    with TruthApi(drop={("pa", "same"), ("pb", "same"), ("pa", "k")}) as api:
        batch = {"pa": api.new_batch("pa"), "pb": api.new_batch("pb")}
        ledger = tmp_path / "l.db"
        m = write_manifest(tmp_path / "m.csv", pairs, batch)
        # Only the listing is refused: creations go through, their answers are lost, FS_0001 on the retry.
        api.refuse_reads = {"pa", "pb"}
        first = run(m, ledger, api.base_url, "--project-id", "pa", timeout=60)
        for _ in range(3):  # a row whose retry had not come when the refused listing stopped the run is pending
            if all(r["status"] != "pending" for r in ledger_rows(ledger).values()):
                break
            run(None, ledger, api.base_url, "--project-id", "pa", timeout=60)
        api.refuse_reads = set()
        rows = ledger_rows(ledger)
        assert first.returncode != 0
        assert all(r["status"] == "uncertain" for r in rows.values()), rows
        api.forbidden = {"pb"}
        rec = up("reconcile", "--ledger", str(ledger), "--base-url", api.base_url, "--allow-http")
        truth = api.truth()
        rows = ledger_rows(ledger)
        assert rec.returncode != 0 and "pb" in rec.stderr, rec.stdout + rec.stderr
        for key, row in rows.items():
            assert row["job_id"] in (None, truth[key]["job_id"]), (key, row)
            if key[0] == "pb":
                assert row["status"] == "uncertain", (key, row)
        api.forbidden = set()
        rec = up("reconcile", "--ledger", str(ledger), "--base-url", api.base_url, "--allow-http")
        assert rec.returncode == 0, rec.stdout + rec.stderr
        assert_matches_truth(ledger, api.truth())


# -- the describing commands keep projects apart ---------------------------------------------------------


def test_show_without_project_refuses_an_ambiguous_reference_id(box: Sandbox, tmp_path: Path) -> None:
    """`show same` when pa and pb both hold `same`: an error naming both projects and --project-id (exit 1),
    not one of them silently; `show only-b` (one project) works without --project-id."""
    ledger = tmp_path / "l.db"
    assert run(write_manifest(tmp_path / "m.csv", SHARED), ledger, box.base_url, "--project-id", "pa").returncode == 0
    shown = up("show", "same", "--ledger", str(ledger))
    assert shown.returncode != 0
    assert "'pa'" in shown.stderr and "'pb'" in shown.stderr and "--project-id" in shown.stderr, shown.stderr
    truth = sandbox_truth(box)
    assert truth["pa", "same"]["job_id"] not in shown.stdout and truth["pb", "same"]["job_id"] not in shown.stdout
    one = up("show", "only-b", "--ledger", str(ledger), "--json")
    assert one.returncode == 0 and truth["pb", "only-b"]["job_id"] in one.stdout, one.stderr
    none = up("show", "only-b", "--project-id", "pa", "--ledger", str(ledger))
    assert none.returncode != 0 and truth["pb", "only-b"]["job_id"] not in none.stdout


def test_status_report_and_forget_keep_projects_apart(tmp_path: Path) -> None:
    """pb forbidden, --default-batch: pa succeeded, pb pending. `status --json` counts per project exactly as
    the rows are; `report` names both projects; `forget --project-id pa --status succeeded` without
    --include-created forgets nothing (their jobs exist); `forget --project-id pb --reference-id-file` (same)
    removes pb's `same` only, not pa's; `forget --project-id pb` removes pb's rows only."""
    pairs = [(f"a{i}", "pa") for i in range(3)] + [(f"b{i}", "pb") for i in range(2)] + [("same", "pa"), ("same", "pb")]
    with Sandbox(SandboxConfig(api_key=KEY, forbidden_projects=frozenset({"pb"}))) as sb:
        ledger = tmp_path / "l.db"
        run(write_manifest(tmp_path / "m.csv", pairs), ledger, sb.base_url, "--project-id", "pa", "--default-batch")
    rows = ledger_rows(ledger)
    status = up("status", "--json", "--ledger", str(ledger))
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    per = doc["projects"]
    for project in ("pa", "pb"):
        counts = per[project]
        mine = [r["status"] for (p, _), r in rows.items() if p == project]
        for state in set(mine):
            assert counts[state] == mine.count(state), (project, counts, mine)
    report = tmp_path / "r.html"
    made = up("report", "-o", str(report), "--ledger", str(ledger))
    assert made.returncode == 0, made.stderr
    html = report.read_text()
    assert "pa" in html and "pb" in html
    kept = up("forget", "--project-id", "pa", "--status", "succeeded", "--ledger", str(ledger))
    assert kept.returncode == 0, kept.stderr
    assert ledger_rows(ledger) == rows
    refs = tmp_path / "refs.txt"
    refs.write_text("same\n")
    one = up("forget", "--project-id", "pb", "--reference-id-file", str(refs), "--ledger", str(ledger))
    assert one.returncode == 0, one.stderr
    assert ledger_rows(ledger) == {k: r for k, r in rows.items() if k != ("pb", "same")}
    gone = up("forget", "--project-id", "pb", "--ledger", str(ledger))
    assert gone.returncode == 0, gone.stderr
    assert ledger_rows(ledger) == {k: r for k, r in rows.items() if k[0] == "pa"}


def test_adopt_of_one_project_never_takes_a_row_of_another(tmp_path: Path) -> None:
    """The ledger holds `same` and `k` of pa (sent). `adopt --project-id pb --batch-id B` where B (of pb) holds
    jobs `same` and `k` made elsewhere: pa's rows keep their own job_ids, and pb's jobs get rows of pb."""
    with TruthApi() as api:
        ledger = tmp_path / "l.db"
        pa_batch = api.new_batch("pa")
        m = write_manifest(tmp_path / "m.csv", [("same", "pa"), ("k", "pa")], {"pa": pa_batch})
        assert run(m, ledger, api.base_url, "--project-id", "pa").returncode == 0
        before = ledger_rows(ledger)
        pb_batch = api.new_batch("pb")
        theirs = {ref: api.put("pb", ref, pb_batch) for ref in ("same", "k")}
        done = up(
            "adopt", "--project-id", "pb", "--batch-id", pb_batch, "--ledger", str(ledger),
            "--base-url", api.base_url, "--allow-http",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        rows = ledger_rows(ledger)
    assert {k: rows[k]["job_id"] for k in before} == {k: r["job_id"] for k, r in before.items()}
    assert {ref: rows["pb", ref]["job_id"] for ref in theirs} == theirs


def test_sync_results_go_to_per_project_files_holding_their_own_jobs(tmp_path: Path) -> None:
    """`sync --results DIR` over a ledger of pa and pb, `same` in both: DIR/pa/same.json and DIR/pb/same.json,
    each the result of its own project's job; each row's platform status recorded."""
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0)) as sb:
        ledger = tmp_path / "l.db"
        assert (
            run(write_manifest(tmp_path / "m.csv", SHARED), ledger, sb.base_url, "--project-id", "pa").returncode == 0
        )
        res = tmp_path / "res"
        done = up("sync", "--results", str(res), "--ledger", str(ledger), "--base-url", sb.base_url, "--allow-http")
        assert done.returncode == 0, done.stdout + done.stderr
        truth = sandbox_truth(sb)
    for project in ("pa", "pb"):
        text = (res / project / "same.json").read_text()
        assert truth[project, "same"]["job_id"] in text
        assert truth[{"pa": "pb", "pb": "pa"}[project], "same"]["job_id"] not in text
    assert all(r["platform_status"] for r in export_csv(ledger)), export_csv(ledger)


@pytest.mark.parametrize("how", ["forbidden", "not-found"])
def test_sync_when_one_project_is_refused_marks_no_job_gone(tmp_path: Path, how: str) -> None:
    """After a run over pa and pb, pb is refused (403 unauthorized, or 404 project not found: the key lost
    it). `sync` must not record pb's jobs as deleted (`job_not_found`, failed): the project answers nothing,
    so nothing is known of its jobs. pa's rows stay succeeded with their job_ids."""
    with Sandbox(SandboxConfig(api_key=KEY)) as sb:
        ledger = tmp_path / "l.db"
        assert (
            run(write_manifest(tmp_path / "m.csv", SHARED), ledger, sb.base_url, "--project-id", "pa").returncode == 0
        )
        before = ledger_rows(ledger)
        if how == "forbidden":
            sb.configure(forbidden_projects=frozenset({"pb"}))
        else:
            sb.configure(projects=frozenset({"pa"}))
        done = up("sync", "--ledger", str(ledger), "--base-url", sb.base_url, "--allow-http")
    after = ledger_rows(ledger)
    assert done.returncode != 0
    assert "pb" in done.stderr, done.stderr
    assert {k: (r["status"], r["job_id"]) for k, r in after.items()} == {
        k: (r["status"], r["job_id"]) for k, r in before.items()
    }, done.stderr


# -- interrupted runs ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_over_two_projects_resumes_with_every_row_its_own_job(tmp_path: Path, sig: int) -> None:
    """60 rows, 20 reference_ids used in both pa and pb, sandbox answering slowly; the run is killed after some
    jobs exist; the same command (no manifest) finishes. One job per (project, reference_id), each in a batch of
    its own project, every row holding its own project's job."""
    pairs = [(f"s{i:02d}", p) for i in range(20) for p in ("pa", "pb")] + [(f"u{i:02d}", "pa") for i in range(10)]
    pairs += [(f"v{i:02d}", "pb") for i in range(10)]
    with Sandbox(SandboxConfig(api_key=KEY, latency_ms=60, slow_rate=0.3, slow_ms=200, seed=4)) as sb:
        ledger = tmp_path / "l.db"
        m = write_manifest(tmp_path / "m.csv", pairs)
        args = ["run", str(m), "--project-id", "pa", "--work-flow-id", "wf", "--ledger", str(ledger)]
        args += ["--base-url", sb.base_url, "--allow-http", "--quiet", "--concurrency", "4"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "uploader", *args],
            env={**os.environ, "PLAYMENT_API_KEY": KEY},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while len(sb.jobs()) < 12 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        assert len(sb.jobs()) < len(pairs), "the run finished before it was killed"
        again = run(None, ledger, sb.base_url, timeout=90)
        assert again.returncode == 0, again.stdout + again.stderr
        truth = sandbox_truth(sb)
        assert set(truth) == {(p, r) for r, p in pairs}
        assert_matches_truth(ledger, truth)
        homes = batches_of(sb)
        assert all(homes[j["batch_id"]] == p for (p, _), j in truth.items())
