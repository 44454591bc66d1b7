"""Issue 10, items 2, 3 and 5, end to end: `uploader` against the sandbox or a misbehaving API of our own, over
real HTTP on loopback, on a real SQLite ledger; real subprocesses where the item is about processes.

- item 2: a success answer is recorded only when it fits the request (a job_id that is a non-empty string or
  an integer, the reference_id sent, no other row's job_id); anything else leaves the row `uncertain` and
  the batch listing decides; many such answers stop the run.
- item 3: a job found after FS_0001 is a clean success only when this ledger sent exactly the current payload
  before; a job created elsewhere, or possibly by an earlier payload, is a `conflict` (exit 3).
- item 5: a row whose attempts ran out on answers that may have come after the job was created ends
  `uncertain`, and the listing decides (found: succeeded; not found: failed).

Only APIs that existed before these fixes are used, so the file runs unchanged against the old code.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.misbehaving_api import BATCH, MisbehavingApi
from tests.reliability.harness import write_images
from tests.test_run import KEY, invoke, run_args
from uploader.sandbox import Sandbox, SandboxConfig

ROOT = Path(__file__).resolve().parents[1]


def rows(ledger: Path) -> dict[str, dict[str, Any]]:
    """Every jobs row by reference_id, read with plain sqlite3 (not through the code under test)."""
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        return {r["reference_id"]: dict(r) for r in con.execute("SELECT * FROM jobs")}
    finally:
        con.close()


def summary_of(output: str) -> dict[str, Any]:
    return json.loads(output[output.index("{") :])


def sandbox_jobs(box: Sandbox) -> dict[str, dict[str, Any]]:
    return {j["reference_id"]: j for j in box.jobs() if j["project_id"] == "proj"}


def cli_env() -> dict[str, str]:
    env = {**os.environ, "PLAYMENT_API_KEY": KEY}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def in_state(ledger: Path, status: str) -> int:
    if not ledger.exists():
        return 0
    try:
        with sqlite3.connect(ledger, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]
    except sqlite3.OperationalError:  # not created / migrated yet
        return 0


def wait_for(predicate, seconds: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


# -- item 5: timeouts on jobs the API created ------------------------------------------------------------


@pytest.mark.slow
def test_timeouts_after_the_api_created_the_jobs_end_succeeded_not_failed(tmp_path: Path) -> None:
    """The API creates each job and answers 150 ms later; the client gives up after 100 ms. Every attempt
    times out (the later ones on FS_0001 answers), yet every job exists: the rows end uncertain when their
    attempts run out, and the batch listing finds them: succeeded, a clean recovery (same payload)."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=21, slow_rate=1.0, slow_ms=150)) as box:
        manifest = write_images(tmp_path / "m.csv", 100)
        ledger = tmp_path / "l.db"
        result = invoke(
            *run_args(
                manifest, ledger, box, "--timeout", "0.1", "--max-attempts", "3", "--batch-name", "slow", "--json"
            )
        )
        created = sandbox_jobs(box)
        got = rows(ledger)
        assert len(created) == 100 and box.stats()["jobs_created_per_reference_id_max"] == 1
        assert {r["status"] for r in got.values()} == {"succeeded"}, {r["status"] for r in got.values()}
        assert result.exit_code == 0, result.output
        assert {k: r["job_id"] for k, r in got.items()} == {k: j["job_id"] for k, j in created.items()}
        assert {r["origin"] for r in got.values()} == {"recovered"}
        assert all(r["attempts"] == 3 and r["error_code"] is None for r in got.values())
        summary = summary_of(result.output)
        assert summary["counts"]["succeeded"] == 100 and summary["this_run"]["recovered"] == 100


@pytest.mark.slow
def test_timeouts_before_the_api_created_anything_end_failed_after_the_listing(tmp_path: Path) -> None:
    """The complement: the sandbox waits 400 ms before creating, and a client that hangs up first cancels
    the creation. The rows go uncertain (the client cannot know), the listing does not find them: failed
    with their timeout, and `retry` + a rerun creates each once."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=22, latency_ms=400)) as box:
        manifest = write_images(tmp_path / "m.csv", 20)
        ledger = tmp_path / "l.db"
        result = invoke(
            *run_args(manifest, ledger, box, "--timeout", "0.1", "--max-attempts", "2", "--batch-name", "never")
        )
        assert result.exit_code == 3, result.output
        assert box.stats()["jobs_created"] == 0
        got = rows(ledger)
        assert {(r["status"], r["error_code"], r["job_id"]) for r in got.values()} == {("failed", "timeout", None)}
        assert all("not found in its batch's listing" in r["error_message"] for r in got.values())
        assert invoke("retry", "--all", "--ledger", str(ledger)).exit_code == 0
        box.configure(latency_ms=0)
        again = invoke(*run_args(None, ledger, box, "--batch-name", "never"))
        assert again.exit_code == 0, again.output
        got = rows(ledger)
        assert {(r["status"], r["origin"]) for r in got.values()} == {("succeeded", "created")}
        assert box.stats()["jobs_created_per_reference_id_max"] == 1 and len(sandbox_jobs(box)) == 20


# -- item 3: a job that may hold other data than the manifest -------------------------------------------


def test_reference_ids_created_elsewhere_are_conflicts_not_successes(tmp_path: Path) -> None:
    """5 of 10 reference_ids already belong to jobs someone else created with other data: the run records
    them `conflict` (origin pre-existing, code created_elsewhere) with the API's job_id, exit 3; status,
    the summary and export say so; a rerun and `retry --all` leave them alone."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=23)) as box:
        headers = {"x-api-key": KEY}
        batch = httpx.post(
            f"{box.base_url}/v1/projects/proj/batch", json={"name": "theirs", "description": ""}, headers=headers
        ).json()["data"]["batch_id"]
        for i in range(5):
            body = {
                "reference_id": f"img-{i:05d}",
                "work_flow_id": "wf",
                "batch_id": batch,
                "data": {"image_url": f"https://elsewhere.example.com/{i}.png"},
            }
            assert httpx.post(f"{box.base_url}/v1/projects/proj/jobs", json=body, headers=headers).status_code == 200
        theirs = {k: j["job_id"] for k, j in sandbox_jobs(box).items()}
        manifest = write_images(tmp_path / "m.csv", 10)
        ledger = tmp_path / "l.db"
        result = invoke(*run_args(manifest, ledger, box, "--batch-id", batch, "--json"))
        assert result.exit_code == 3, result.output
        got = rows(ledger)
        conflicts = {k for k, r in got.items() if r["status"] == "conflict"}
        assert conflicts == set(theirs)
        assert all(
            (got[k]["origin"], got[k]["error_code"], got[k]["job_id"])
            == ("pre-existing", "created_elsewhere", theirs[k])
            for k in conflicts
        )
        assert {(r["status"], r["origin"]) for k, r in got.items() if k not in conflicts} == {("succeeded", "created")}
        summary = summary_of(result.output)
        assert summary["counts"]["conflict"] == 5 and summary["this_run"]["conflict"] == 5
        status = invoke("status", "--ledger", str(ledger), "--json")
        report = json.loads(status.output)
        assert report["counts"]["conflict"] == 5 and report["error_codes"]["created_elsewhere"] == 5
        assert report["origins"] == {"created": 5, "pre-existing": 5}
        text = invoke("status", "--ledger", str(ledger)).output
        assert "5 rows are in conflict" in text
        exported = list(csv.DictReader(invoke("export", "--ledger", str(ledger)).output.splitlines()))
        assert {(e["reference_id"], e["status"], e["origin"]) for e in exported if e["status"] == "conflict"} == {
            (k, "conflict", "pre-existing") for k in conflicts
        }
        requests = box.stats()["requests_total"]
        assert invoke("retry", "--all", "--ledger", str(ledger)).output.startswith("0 failed rows")
        again = invoke(*run_args(manifest, ledger, box, "--batch-id", batch))
        assert again.exit_code == 3 and "5 rows are in conflict" in again.output
        assert box.stats()["requests_total"] == requests  # never sent again
        assert box.stats()["jobs_created_per_reference_id_max"] == 1


def test_reference_ids_created_elsewhere_in_another_batch_are_conflicts_too(tmp_path: Path) -> None:
    """The likelier case: the jobs someone else created are in another batch (here the project's default
    batch), so the run's own batch listing can never find them. Rows this ledger never sent end `conflict`
    (created_elsewhere, origin pre-existing, no job_id) at the end of the run, exit 3 — not `uncertain`
    for ever with advice to reconcile."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=29)) as box:
        for i in range(3):
            body = {
                "reference_id": f"img-{i:05d}",
                "work_flow_id": "wf",
                "data": {"image_url": f"https://elsewhere.example.com/{i}.png"},
            }
            assert (
                httpx.post(f"{box.base_url}/v1/projects/proj/jobs", json=body, headers={"x-api-key": KEY}).status_code
                == 200
            )
        ledger = tmp_path / "l.db"
        result = invoke(*run_args(write_images(tmp_path / "m.csv", 8), ledger, box, "--json"))
        assert result.exit_code == 3, result.output
        got = rows(ledger)
        assert {
            k: (r["status"], r["origin"], r["error_code"], r["job_id"])
            for k, r in got.items()
            if r["status"] != "succeeded"
        } == {f"img-{i:05d}": ("conflict", "pre-existing", "created_elsewhere", None) for i in range(3)}
        assert summary_of(result.output)["counts"]["uncertain"] == 0
        assert box.stats()["jobs_created_per_reference_id_max"] == 1


def _stop_while_answers_are_late(cmd: list[str], box: Sandbox, ledger: Path, n: int, how: str) -> None:
    """Start `cmd`, let the sandbox create all `n` jobs (their answers are held back), then stop the run
    before it records any answer: twice SIGINT (the hard stop cancels the requests in the air), or SIGKILL
    followed by a resume with a wrong API key (it takes the dead run's rows over and is refused, 401: the
    rows go back to pending). Every row ends pending, its one creating send never answered."""
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: box.stats()["jobs_created"] >= n)
        time.sleep(0.2)
        assert in_state(ledger, "in_flight") == n
        if how == "sigint":
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=20)
            assert proc.returncode == 130
            return
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    box.configure(slow_rate=0.0)
    resume = [c for c in cmd[3:] if not c.endswith(".csv")]
    refused = invoke(*resume, env={"PLAYMENT_API_KEY": "wrong-key"})
    assert refused.exit_code == 1 and "API key" in refused.output, refused.output
    assert box.stats()["jobs_created"] == n


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_a_fix_that_never_reached_the_api_is_a_conflict(tmp_path: Path, how: str) -> None:
    """A run sends 10 rows with a wrong URL; the API creates the jobs but the run is stopped before it
    records any answer. The user fixes the manifest and reloads (the rows are updated), and runs again:
    the new payload is refused with FS_0001, and the job found holds the OLD data: conflict
    (payload_changed), exit 3 — not succeeded."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=24, slow_rate=1.0, slow_ms=60_000)) as box:
        ledger = tmp_path / "l.db"
        wrong = write_images(tmp_path / "wrong.csv", 10, host="wrong.example.com")
        cmd = [
            sys.executable,
            "-m",
            "uploader",
            *run_args(wrong, ledger, box, "--batch-name", "fix", "--concurrency", "16", "--timeout", "120"),
        ]
        _stop_while_answers_are_late(cmd, box, ledger, 10, how)
        assert {r["status"] for r in rows(ledger).values()} == {"pending"}
        box.configure(slow_rate=0.0, latency_ms=0)
        fixed = write_images(tmp_path / "fixed.csv", 10)
        loud = [a for a in run_args(fixed, ledger, box, "--batch-name", "fix") if a != "--quiet"]  # -q: no load report
        result = invoke(*loud)
        assert "updated (payload changed, will be sent)" in result.output
        created = sandbox_jobs(box)
        assert all("wrong.example.com" in j["data"]["image_url"] for j in created.values())  # the API's truth
        got = rows(ledger)
        assert {(r["status"], r["origin"], r["error_code"]) for r in got.values()} == {
            ("conflict", "recovered", "payload_changed")
        }, {(r["status"], r["error_code"]) for r in got.values()}
        assert {k: r["job_id"] for k, r in got.items()} == {k: j["job_id"] for k, j in created.items()}
        assert result.exit_code == 3, result.output
        assert "10 rows are in conflict" in result.output
        assert box.stats()["jobs_created_per_reference_id_max"] == 1


# -- item 2: answers that do not fit the request ---------------------------------------------------------


def api_run_args(manifest: Path | None, ledger: Path, api: MisbehavingApi, *extra: str) -> list[str]:
    args = ["run"] + ([str(manifest)] if manifest else [])
    return args + [
        "--project-id",
        "proj",
        "--work-flow-id",
        "wf",
        "--ledger",
        str(ledger),
        "--batch-id",
        BATCH,
        "--base-url",
        api.base_url,
        "--quiet",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("answer", ["swap", "same", "object", "true"])
def test_answers_that_do_not_fit_the_request_are_looked_up(tmp_path: Path, answer: str) -> None:
    """The API creates every job but answers with another row's reference_id and job_id ("swap"), one
    job_id for every row ("same"), a job_id that is an object or `true`. None of those job_ids is recorded:
    the rows are uncertain until the batch listing gives each its own job_id."""
    with MisbehavingApi(answer, key=KEY) as api:
        manifest = write_images(tmp_path / "m.csv", 6)
        ledger = tmp_path / "l.db"
        result = invoke(*api_run_args(manifest, ledger, api, "--concurrency", "1"))
        got = rows(ledger)
        assert {k: r["job_id"] for k, r in got.items()} == api.jobs  # each row its own job, as the API holds it
        assert {r["status"] for r in got.values()} == {"succeeded"}
        assert result.exit_code == 0, result.output
        assert set(api.created.values()) == {1}


@pytest.mark.slow
def test_many_answers_that_do_not_fit_stop_the_run(tmp_path: Path) -> None:
    """Every answer carries `job_id: true`: after 10 the run stops (exit 1) with a message naming what was
    wrong and an example; the answered rows are uncertain, the rows never sent still pending. Once the API
    answers properly, the rerun settles the uncertain rows from the listing and sends the rest."""
    with MisbehavingApi("true", key=KEY) as api:
        manifest = write_images(tmp_path / "m.csv", 200)
        ledger = tmp_path / "l.db"
        result = invoke(*api_run_args(manifest, ledger, api, "--concurrency", "2"))
        assert result.exit_code == 1, result.output
        assert "did not fit their requests" in result.output and "success answer with job_id true" in result.output
        got = rows(ledger)
        states = {s: sum(r["status"] == s for r in got.values()) for s in ("uncertain", "pending", "succeeded")}
        assert 10 <= states["uncertain"] <= 12 and states["succeeded"] == 0
        assert states["pending"] == 200 - states["uncertain"]
        assert all(r["attempts"] == 0 for r in got.values() if r["status"] == "pending")
        assert not any(r["job_id"] for r in got.values())
        api.answer = "ok"
        again = invoke(*api_run_args(None, ledger, api))
        assert again.exit_code == 0, again.output
        got = rows(ledger)
        assert {k: r["job_id"] for k, r in got.items()} == api.jobs and set(api.created.values()) == {1}


@pytest.mark.slow
def test_listing_entries_are_validated_like_answers(tmp_path: Path) -> None:
    """The listing, too, names every job `id: true`: no such id is recorded. A listing that shows no usable
    job for a row whose answer was malformed does not say the job was not created: the row is sent again, the
    API refuses the twin with FS_0001 (the job exists), and the row stays uncertain with no job_id (before, it
    was recorded failed: "not created")."""
    with MisbehavingApi("object", listing="true", key=KEY) as api:
        manifest = write_images(tmp_path / "m.csv", 4)
        ledger = tmp_path / "l.db"
        result = invoke(*api_run_args(manifest, ledger, api))
        assert result.exit_code == 3, result.output
        got = rows(ledger)
        assert {(r["status"], r["error_code"], r["job_id"]) for r in got.values()} == {("uncertain", "FS_0001", None)}
        assert {r["attempts"] for r in got.values()} == {2}
        assert set(api.created.values()) == {1}


def test_rows_an_earlier_run_left_uncertain_are_counted_as_settled_not_as_negative_uncertain(tmp_path: Path) -> None:
    """An earlier run left 10 rows uncertain (answers lost on its last attempts); the listing finds none of their
    jobs, so this run sends them again. Its summary says 10 settled from earlier runs and 0 uncertain (not -10),
    and the progress it reports never counts below 0 nor past its total."""
    import uploader
    from tests.test_adversary_ledger_commands import LOST_LAST, settle
    from uploader.send import Progress

    with Sandbox(SandboxConfig(api_key=KEY, seed=3)) as box:
        ledger = tmp_path / "l.db"
        assert invoke(*run_args(write_images(tmp_path / "m.csv", 4), ledger, box)).exit_code == 0
        manifest = write_images(tmp_path / "m.csv", 14)
        batch = rows(ledger)["img-00000"]["batch_id"]
        loaded = invoke("load", str(manifest), "--project-id", "proj", "--work-flow-id", "wf", "--ledger", str(ledger),
                        "--batch-id", batch)  # fmt: skip
        assert loaded.exit_code == 0, loaded.output
        settle(ledger, {f"img-{i:05d}": LOST_LAST for i in range(4, 14)})
        seen: list[tuple[int, int, int]] = []

        def on_progress(p: Progress) -> None:
            seen.append((p.uncertain, p.done - p.done_before, p.total - p.done_before))

        summary = uploader.upload(
            None, project_id="proj", ledger=ledger, api_key=KEY, base_url=box.base_url, allow_http=True,
            on_progress=on_progress, handle_signals=False,
        )  # fmt: skip
    p = summary.progress
    assert (p.succeeded, p.recovered, p.uncertain, p.settled_earlier, p.requests) == (10, 0, 0, 10, 10)
    assert p.done == 14 == p.total and summary.counts["succeeded"] == 14
    assert seen and all(u >= 0 and 0 <= done <= total for u, done, total in seen), seen
    assert seen[-1][1:] == (10, 10)  # the bar counted the 10 rows to look up, and filled
    assert summary.as_dict()["this_run"]["settled_from_earlier_runs"] == 10
    assert {r["status"] for r in rows(ledger).values()} == {"succeeded"}


def test_row_bits_tell_this_runs_uncertain_rows_from_an_earlier_runs() -> None:
    from uploader.send.resolve import RowBits

    mine = RowBits()
    mine.add(3, 70_000, 9)
    assert mine.take([1, 3, 3, 70_000, 10**7]) == 2  # each counted once; ids never added, or past the end, are not
    assert mine.take([9, 3]) == 1 and mine.take([9, 70_000]) == 0
