"""Adversarial tests of the commands that change or describe the ledger after a run: `reconcile`, `adopt`,
`retry`, `status`, `show`, `plan`, `report` and `export --status`, over real HTTP on loopback against
tests/test_adversary_ledger_commands_server.py (a correct per-project job store whose batch listings a test
may replace), on a real SQLite ledger read back with plain sqlite3.

What is checked against the server's store:
- a row the ledger calls `succeeded` holds the job_id of the job that holds its payload, in its project;
- `adopt` never makes a row succeeded with a job the ledger knows may hold another payload, nor takes jobs
  from a listing page that says it is another project's batch;
- `retry` + `run` never POST a row that has no payload;
- `status`, `plan`, `export --status` and `report` tell the same story as the ledger's rows.

States that only a crash or a lost answer produce are made with the ledger's own API (`claim` + `record`:
what a run records), then the commands under test run through the CLI (click's CliRunner, in process).
"""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.test_adversary_ledger_commands_server import BATCH, LedgerApi
from tests.test_trust import rows
from uploader.cli.commands import cli
from uploader.ledger.ledger import Ledger
from uploader.ledger.ledger import Result as Outcome
from uploader.ledger.models import Status
from uploader.ledger.report import report_data

KEY = "sk-ledger-commands-5e1a9c7b3d2f"
PROJECT = "proj"
#: Another batch (of this project or another), for jobs created elsewhere.
OTHER_BATCH = "9e8d7c6b-5a49-4837-a261-50f4e3d2c1b0"


# -- helpers ---------------------------------------------------------------------------------------------


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"PLAYMENT_API_KEY": KEY}, catch_exceptions=False)


def write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "image_url"])
        w.writerows(rows)
    return path


def url(name: str) -> str:
    return f"https://cdn.example.com/{name}.jpg"


def opts(ledger: Path, *extra: str) -> list[str]:
    return ["--project-id", PROJECT, "--work-flow-id", "wf", "--ledger", str(ledger), *extra]


def load(ledger: Path, manifest: Path, *extra: str) -> None:
    result = invoke("load", str(manifest), *opts(ledger, "--batch-id", BATCH, *extra))
    assert result.exit_code == 0, result.output


def settle(ledger: Path, outcomes: dict[str, dict[str, Any]], release: bool = True) -> None:
    """Claim every pending row as a run does and record `outcomes` {reference_id: Result fields} for some of
    them (what a run records for that answer); the other rows are given back (`release`) or kept in flight."""
    led = Ledger.open(str(ledger))
    try:
        owner = led.register_worker()
        claimed = {c.reference_id: c for c in led.claim(owner, 1000, 60)}
        led.record([Outcome(claimed[ref].id, claimed[ref].lease_token, **kw) for ref, kw in outcomes.items()])
        if release:
            led.release(owner)
    finally:
        led.close()


#: What a run records for an attempt whose answer was lost (a timeout): the job may exist.
LOST = {"status": Status.PENDING, "error_code": "timeout", "may_have_created": True}
LOST_LAST = {"status": Status.UNCERTAIN, "error_code": "timeout", "may_have_created": True}


def export_jsonl(ledger: Path, tmp: Path, *extra: str) -> list[dict[str, Any]]:
    out = tmp / "export.jsonl"
    result = invoke("export", "--ledger", str(ledger), "-o", str(out), "--format", "jsonl", *extra)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def status_counts(ledger: Path) -> dict[str, int]:
    result = invoke("status", "--ledger", str(ledger), "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout)["counts"])


# -- reconcile: a job the listing also names for another reference_id ------------------------------------


@pytest.mark.parametrize("order", ["other reference_id first", "ours first"])
def test_reconcile_never_takes_a_job_the_listing_names_for_another_reference_id(tmp_path: Path, order: str) -> None:
    """The listing of r0's batch names job J for reference_id `x` and for `r0` (the API allows one job one
    reference_id: the listing contradicts itself). Whatever the order of the two entries, r0 must not become
    `succeeded` with J: that is x's job, holding x's payload. Today the outcome depends on the order:
    `ours first` leaves r0 uncertain, `other reference_id first` records x's job as r0's."""
    ledger = tmp_path / "l.db"
    load(ledger, write_manifest(tmp_path / "m.csv", [("r0", url("r0"))]))
    settle(ledger, {"r0": LOST_LAST})
    with LedgerApi(KEY) as api:
        jx = api.put(PROJECT, "x", {"image_url": url("x")})

        def listing(project: str, batch: str, token: str, _: LedgerApi) -> dict[str, Any]:
            entries = [{"id": jx, "reference_id": "x", "status": "created"}]
            entries.append({"id": jx, "reference_id": "r0", "status": "created"})
            if order == "ours first":
                entries.reverse()
            return {"id": batch, "project_id": project, "jobs": entries, "next_page_token": ""}

        api.listing = listing
        result = invoke("reconcile", "--ledger", str(ledger), "--base-url", api.base_url)
    got = rows(ledger)["r0"]
    assert (got["status"], got["job_id"]) != ("succeeded", jx), (order, result.output)
    assert got["status"] == "uncertain" and result.exit_code != 0, (order, got["status"], result.output)


# -- a listing page of another batch, of another project ------------------------------------------------


def _misrouted(project: str, batch: str, token: str, api: LedgerApi) -> dict[str, Any]:
    """Every listing answered with project `other`'s batch OTHER_BATCH, the page saying so (`id`, `project_id`):
    a proxy or cache that mixes up paths."""
    return api.store_page("other", OTHER_BATCH, token)


def test_reconcile_takes_no_job_from_a_listing_page_of_another_project(tmp_path: Path) -> None:
    """r0 of project `proj` is uncertain (its answer was lost). The listing asked for proj's batch answers a
    page that names itself batch OTHER_BATCH of project `other`, where another job has reference_id r0 (the
    same reference_id may be used in each project). The client checks a GET job's answer names the job asked
    for (policy.job_read_problem) but not that a listing page is the batch asked for: r0 is recorded
    `succeeded` with project other's job, which holds other data."""
    ledger = tmp_path / "l.db"
    load(ledger, write_manifest(tmp_path / "m.csv", [("r0", url("r0"))]))
    settle(ledger, {"r0": LOST_LAST})
    with LedgerApi(KEY, listing=_misrouted) as api:
        theirs = api.put("other", "r0", {"image_url": url("theirs")}, OTHER_BATCH)
        result = invoke("reconcile", "--ledger", str(ledger), "--base-url", api.base_url)
    got = rows(ledger)["r0"]
    assert got["job_id"] != theirs and got["status"] != "succeeded", (got["status"], got["job_id"], result.output)
    assert result.exit_code != 0, result.output


def test_adopt_takes_no_job_from_a_listing_page_of_another_project(tmp_path: Path) -> None:
    """`adopt --project-id proj --batch-id B` meets the same misrouted listing: the page says it is batch
    OTHER_BATCH of project `other`. Its jobs are not jobs of proj: none may be recorded as proj's (a later
    `run` would then send nothing for a proj row r0, and `export` would map r0 to another project's job)."""
    ledger = tmp_path / "l.db"
    with LedgerApi(KEY, listing=_misrouted) as api:
        theirs = api.put("other", "r0", {"image_url": url("theirs")}, OTHER_BATCH)
        result = invoke(
            "adopt", "--project-id", PROJECT, "--batch-id", BATCH, "--ledger", str(ledger), "--base-url", api.base_url
        )
    recorded = {ref: (r["project_id"], r["job_id"]) for ref, r in rows(ledger).items()} if ledger.exists() else {}
    assert theirs not in {job for _, job in recorded.values()}, (recorded, result.output)
    assert result.exit_code != 0, result.output


# -- adopt: a job the ledger knows may hold an earlier payload ------------------------------------------


def _sent_then_changed(tmp_path: Path, api: LedgerApi) -> Path:
    """r0 was sent with its old image and the answer was lost (the job was created: it holds the old image);
    the run stopped with r0 pending; then the manifest was fixed (new image) and loaded again, which updates
    the pending row (its sent_hashes keep the old payload's hash)."""
    ledger = tmp_path / "l.db"
    load(ledger, write_manifest(tmp_path / "m1.csv", [("r0", url("old"))]))
    settle(ledger, {"r0": LOST})
    api.put(PROJECT, "r0", {"image_url": url("old")}, BATCH)  # what that lost send created
    load(ledger, write_manifest(tmp_path / "m2.csv", [("r0", url("new"))]))
    row = rows(ledger)["r0"]
    assert row["status"] == "pending" and row["sent_hashes"] and row["sent_hashes"] != row["body_hash"]
    return ledger


def test_run_makes_a_job_that_may_hold_the_earlier_payload_a_conflict(tmp_path: Path) -> None:
    """The guarantee `adopt` must keep too: `run` sends the new payload, meets FS_0001, finds the job in the
    listing and, since the ledger sent another payload before, records `conflict` (`payload_changed`), exit 3."""
    with LedgerApi(KEY) as api:
        ledger = _sent_then_changed(tmp_path, api)
        result = invoke("run", *opts(ledger, "--base-url", api.base_url, "--quiet"))
        job = api.job_of(PROJECT, "r0")
        assert api.created[(PROJECT, "r0")] == 1
    got = rows(ledger)["r0"]
    assert (got["status"], got["error_code"], got["job_id"]) == ("conflict", "payload_changed", job), result.output
    assert result.exit_code == 3


def test_adopt_does_not_call_succeeded_a_job_that_may_hold_the_earlier_payload(tmp_path: Path) -> None:
    """The same ledger, but `adopt --batch-id B` instead of `run`: the listing shows r0's job, which holds the
    OLD image while the row now holds the NEW one, and the ledger knows it (sent_hashes). adopt_jobs
    (uploader/ledger/tracking.py) adopts any pending/failed/uncertain row with no job_id without looking at
    sent_hashes: r0 becomes `succeeded` (origin adopted), `run` will never send the fix, `export` maps r0 to a
    job holding the old image, and adopt exits 0."""
    with LedgerApi(KEY) as api:
        ledger = _sent_then_changed(tmp_path, api)
        job = api.job_of(PROJECT, "r0")
        result = invoke(
            "adopt", "--project-id", PROJECT, "--batch-id", BATCH, "--ledger", str(ledger), "--base-url", api.base_url
        )
    got = rows(ledger)["r0"]
    assert got["status"] != "succeeded", (got["status"], got["origin"], got["job_id"], job, result.output)
    assert result.exit_code == 3, result.output


def test_adopt_leaves_a_row_a_run_holds_in_flight_alone(tmp_path: Path) -> None:
    """A row a live run has claimed (its request may be in the air) is not adopted: reported as a conflict,
    unchanged, exit 3; the rows with no request in the air are adopted."""
    ledger = tmp_path / "l.db"
    load(ledger, write_manifest(tmp_path / "m.csv", [("r0", url("r0")), ("r1", url("r1"))]))
    settle(ledger, {"r1": {"status": Status.PENDING, "error_code": "http_429", "refund_attempt": True}}, release=False)
    assert {ref: r["status"] for ref, r in rows(ledger).items()} == {"r0": "in_flight", "r1": "pending"}
    with LedgerApi(KEY) as api:
        j0 = api.put(PROJECT, "r0", {"image_url": url("r0")})
        j1 = api.put(PROJECT, "r1", {"image_url": url("r1")})
        result = invoke(
            "adopt",
            "--project-id",
            PROJECT,
            "--batch-id",
            BATCH,
            "--ledger",
            str(ledger),
            "--base-url",
            api.base_url,
            "--json",
        )
    assert result.exit_code == 3, result.output
    doc = json.loads(result.stdout)
    assert doc["adopted"] == 1 and [c["reference_id"] for c in doc["conflicts"]] == ["r0"]
    got = rows(ledger)
    assert (got["r0"]["status"], got["r0"]["job_id"]) == ("in_flight", None)
    assert (got["r1"]["status"], got["r1"]["job_id"], got["r1"]["origin"]) == ("succeeded", j1, "adopted")
    assert j0 not in {r["job_id"] for r in got.values()}


# -- retry: a row with no payload ------------------------------------------------------------------------


def test_retry_of_an_adopted_job_found_gone_never_posts_a_row_without_payload(tmp_path: Path) -> None:
    """`adopt` records a job with no manifest row as a row with no payload (body ''). The job is deleted at the
    platform; `sync` records the row failed `job_not_found` and says `uploader retry --error-code job_not_found`
    sends it again. Doing so makes the payload-less row pending (Ledger.retry, uploader/ledger/ledger.py: no
    check of the body), and the next `run` POSTs it: an empty body the API refuses (GE_0001), recorded as the
    row's error. Nothing should be sent for a row that has nothing to send."""
    ledger = tmp_path / "l.db"
    with LedgerApi(KEY) as api:
        gone = api.put(PROJECT, "theirs-0", {"image_url": url("t0")})
        api.put(PROJECT, "theirs-1", {"image_url": url("t1")})
        adopted = invoke(
            "adopt", "--project-id", PROJECT, "--batch-id", BATCH, "--ledger", str(ledger), "--base-url", api.base_url
        )
        assert adopted.exit_code == 0, adopted.output
        assert rows(ledger)["theirs-0"]["body"] == ""
        shown = invoke("show", "theirs-0", "--ledger", str(ledger), "--json")  # a payload-less row shows, no traceback
        assert shown.exit_code == 0 and json.loads(shown.stdout)["job_id"] == gone, shown.output
        with api.lock:
            del api.store[(PROJECT, "theirs-0")]  # deleted at the platform
        synced = invoke("sync", "--ledger", str(ledger), "--base-url", api.base_url, "--json")
        assert synced.exit_code == 3 and rows(ledger)["theirs-0"]["error_code"] == "job_not_found", synced.output
        invoke("retry", "--error-code", "job_not_found", "--ledger", str(ledger))
        run = invoke("run", *opts(ledger, "--base-url", api.base_url, "--quiet"))
        posts = list(api.posts)
    row = rows(ledger)["theirs-0"]
    assert posts == [], (posts, run.output)
    assert row["error_code"] in (None, "job_not_found"), (row["status"], row["error_code"], row["error_message"])


# -- plan, status, export and report against the ledger's rows ------------------------------------------


def test_plan_holds_back_a_row_already_in_conflict_as_run_does(tmp_path: Path) -> None:
    """r0's reference_id was used before this ledger sent it (a job in another batch): the run records it
    `conflict` (created_elsewhere) and exits 3; `status` counts 1 conflict. `plan` of the same manifest says
    `conflicts 0`, `held_back 0` and exits 0, although a run of it holds r0 back and exits 3 again: plan
    counts as conflicts only rows whose payload changed (MERGE_COUNTS, uploader/ledger/loading.py), never a
    row the ledger already holds in conflict (nor uncertain), while it does count unchanged blocked rows."""
    ledger = tmp_path / "l.db"
    manifest = write_manifest(tmp_path / "m.csv", [("r0", url("r0")), ("r1", url("r1"))])
    with LedgerApi(KEY) as api:
        api.put(PROJECT, "r0", {"image_url": url("r0")}, OTHER_BATCH)
        first = invoke("run", str(manifest), *opts(ledger, "--base-url", api.base_url, "--quiet"))
        assert first.exit_code == 3 and rows(ledger)["r0"]["status"] == "conflict", first.output
        assert status_counts(ledger)["conflict"] == 1
        planned = invoke("plan", str(manifest), *opts(ledger, "--json"))
        again = invoke("run", str(manifest), *opts(ledger, "--base-url", api.base_url, "--quiet"))
    assert again.exit_code == 3
    doc = json.loads(planned.stdout)
    assert (planned.exit_code, doc["held_back"]) == (3, 1), (planned.exit_code, doc)


def test_export_status_failed_gives_the_rows_status_counts_as_failed(tmp_path: Path) -> None:
    """`uploader sync` recorded platform status `failed` for job a (the platform's word: annotation failed) and
    `completed` for b. The ledger has no failed row (`status`: failed 0, both succeeded). `export --status
    failed` — the rows to fix and retry — hands out a, a succeeded row with its job_id: export_rows
    (uploader/ledger/queries.py) ORs the ledger state with the platform status, and `failed` is a word of
    both vocabularies, so the two can never be told apart."""
    ledger = tmp_path / "l.db"
    manifest = write_manifest(tmp_path / "m.csv", [("a", url("a")), ("b", url("b"))])
    with LedgerApi(KEY) as api:
        assert invoke("run", str(manifest), *opts(ledger, "--base-url", api.base_url, "--quiet")).exit_code == 0

        def platform_says(project: str, batch: str, token: str, api: LedgerApi) -> dict[str, Any]:
            page = api.store_page(project, batch, token)
            for job in page["jobs"]:
                job["status"] = "failed" if job["reference_id"] == "a" else "completed"
            return page

        api.listing = platform_says
        assert invoke("sync", "--ledger", str(ledger), "--base-url", api.base_url, "--quiet").exit_code == 0
    assert [r["reference_id"] for r in export_jsonl(ledger, tmp_path, "--status", "completed")] == ["b"]
    failed = export_jsonl(ledger, tmp_path, "--status", "failed")
    assert status_counts(ledger)["failed"] == 0
    assert [(r["reference_id"], r["status"]) for r in failed] == [], failed


def test_export_refuses_an_unknown_status_and_writes_nothing(tmp_path: Path) -> None:
    ledger = tmp_path / "l.db"
    load(ledger, write_manifest(tmp_path / "m.csv", [("r0", url("r0"))]))
    out = tmp_path / "out.csv"
    result = invoke("export", "--ledger", str(ledger), "-o", str(out), "--status", "succeded")
    assert result.exit_code == 2 and "succeded" in result.output and not out.exists(), result.output


def test_status_report_and_the_rows_agree_on_every_state(tmp_path: Path) -> None:
    """A ledger with rows in every state a run and a lookup leave (succeeded, failed, uncertain, conflict,
    pending, in flight): `status --json`, the report's totals and a plain GROUP BY over the rows agree."""
    ledger = tmp_path / "l.db"
    refs = [f"r{i}" for i in range(8)]
    load(ledger, write_manifest(tmp_path / "m.csv", [(r, url(r)) for r in refs]))
    settle(
        ledger,
        {
            "r0": {"status": Status.SUCCEEDED, "job_id": "J0", "origin": "created", "may_have_created": True},
            "r1": {"status": Status.FAILED, "error_code": "FS_0003", "error_message": "Invalid data passed"},
            "r2": LOST_LAST,
            "r3": {"status": Status.UNCERTAIN, "error_code": "FS_0001"},
            "r4": {"status": Status.PENDING, "error_code": "FS_0000", "may_have_created": True},
        },
    )
    settle(ledger, {"r5": {"status": Status.PENDING, "error_code": "http_429", "refund_attempt": True}}, release=False)
    with LedgerApi(KEY) as api:  # r3: FS_0001 at its first send, not in its batch → conflict (created elsewhere)
        assert invoke("reconcile", "--ledger", str(ledger), "--base-url", api.base_url).exit_code == 3
    con = sqlite3.connect(ledger)
    try:
        truth = {s.value: 0 for s in Status} | dict(con.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"))
    finally:
        con.close()
    assert truth["conflict"] == 1 and truth["in_flight"] > 0 and truth["failed"] >= 1, truth
    counts = status_counts(ledger)
    led = Ledger.open(str(ledger))
    try:
        reported = report_data(led.engine).counts
    finally:
        led.close()
    assert counts == truth == {s: reported.get(s, 0) for s in truth}, (counts, truth, reported)


def test_the_reports_advice_for_a_job_found_gone_is_the_retry_that_sends_it(tmp_path: Path) -> None:
    """A job `sync` found gone leaves its row failed `job_not_found`; what brings it back is `uploader retry
    --error-code job_not_found` (README, `sync`). The report's "What to do" for it says "Fix the manifest
    row, load it again, then `uploader run`" (uploader/cli/report.py `advice`: every failed code not
    otherwise named): loading the unchanged manifest changes nothing and `run` sends nothing, so the row stays
    failed for good."""
    ledger = tmp_path / "l.db"
    manifest = write_manifest(tmp_path / "m.csv", [("a", url("a")), ("b", url("b"))])
    with LedgerApi(KEY) as api:
        assert invoke("run", str(manifest), *opts(ledger, "--base-url", api.base_url, "--quiet")).exit_code == 0
        with api.lock:
            del api.store[(PROJECT, "a")]
        assert invoke("sync", "--ledger", str(ledger), "--base-url", api.base_url, "--quiet").exit_code == 3
    assert rows(ledger)["a"]["error_code"] == "job_not_found"
    page = tmp_path / "report.html"
    assert invoke("report", "--ledger", str(ledger), "-o", str(page)).exit_code == 0
    html = page.read_text()
    row = html[html.index("<code class=key>job_not_found</code>") :]
    row = row[: row.index("</tr>")]
    todo = row[row.index('data-label="What to do">') :]  # the message cell names the retry; the advice must too
    assert "retry" in todo and "load it again" not in todo, todo


# -- reconcile: what it settles, what it says, its exit code --------------------------------------------


def test_reconcile_requeues_a_row_a_complete_listing_misses_and_exits_0_when_nothing_is_left(tmp_path: Path) -> None:
    """r0's lost answer created nothing (the store has no job): a complete listing misses it, reconcile makes it
    pending again (attempts left), says so in `pending_again`, exits 0; r1's lost answer did create its job:
    found, succeeded with exactly that job_id; the next run sends r0 once and creates one job."""
    ledger = tmp_path / "l.db"
    load(ledger, write_manifest(tmp_path / "m.csv", [("r0", url("r0")), ("r1", url("r1"))]))
    settle(ledger, {"r0": LOST_LAST, "r1": LOST_LAST})
    with LedgerApi(KEY) as api:
        j1 = api.put(PROJECT, "r1", {"image_url": url("r1")})
        result = invoke("reconcile", "--ledger", str(ledger), "--base-url", api.base_url, "--json")
        doc = json.loads(result.stdout)
        assert result.exit_code == 0, result.output
        assert (doc["resolved"], doc["uncertain"], doc["pending_again"]) == (2, 0, 1), doc
        got = rows(ledger)
        assert (got["r0"]["status"], got["r1"]["status"], got["r1"]["job_id"]) == ("pending", "succeeded", j1)
        assert invoke("run", *opts(ledger, "--base-url", api.base_url, "--quiet")).exit_code == 0
        assert api.created == {(PROJECT, "r0"): 1, (PROJECT, "r1"): 1}
        assert rows(ledger)["r0"]["job_id"] == api.job_of(PROJECT, "r0")


def test_adopt_refused_by_the_api_leaves_no_ledger_file_behind(tmp_path: Path) -> None:
    """`adopt --ledger NEW` with a key the API refuses: exit 1 with one line, and — as for `load`, `check` and
    `run` (README: a ledger file that a failed command created is removed when nothing was written to it) — no
    new, empty ledger file left behind. `adopt` opens the ledger with create=True (uploader/cli/commands.py)
    but never discards the file it created when the listing is refused."""
    ledger = tmp_path / "new.db"
    with LedgerApi("another-key") as api:
        result = invoke(
            "adopt", "--project-id", PROJECT, "--batch-id", BATCH, "--ledger", str(ledger), "--base-url", api.base_url
        )
    assert result.exit_code == 1 and "auth-failure" in result.output, result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())
