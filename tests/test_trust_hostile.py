"""Adversarial trust cases, over real HTTP on loopback against tests/hostile_api.py, on a real SQLite ledger: the
ledger must never say more than the API said (a job `failed` or `created_elsewhere` that a listing never got to
see, a job_id one of two, a status or result of another job, a result cut short), and every command must end
whatever the listing's paging does."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import fake_manifest
from tests.hostile_api import BATCH, CUTS, HostileApi, one_page, plain_answer
from tests.reliability.harness import write_images
from tests.test_run import KEY, invoke
from tests.test_trust import rows
from uploader.api import (
    STALE_PAGES_LIMIT,
    ApiClient,
    ApiResult,
    Found,
    PageTrail,
    Verdict,
    classify,
    job_id_text,
    job_read_problem,
    listed_jobs,
    named_twice,
    status_text,
)
from uploader.api.body import parse_envelope
from uploader.ledger.ledger import Ledger, Result
from uploader.ledger.models import Status
from uploader.ledger.transitions import holder_yields
from uploader.load import load_manifest
from uploader.sandbox import Sandbox, SandboxConfig


def run_args(manifest: Path | None, ledger: Path, api: HostileApi, *extra: str) -> list[str]:
    args = ["run"] + ([str(manifest)] if manifest else [])
    common = ["--project-id", "proj", "--work-flow-id", "wf", "--ledger", str(ledger), "--batch-id", BATCH]
    return args + common + ["--base-url", api.base_url, "--quiet", *extra]


def object_job_id(ref: str, job: str) -> bytes:
    """A success whose job_id is an object: the row goes uncertain and the batch listing decides."""
    return json.dumps({"success": True, "data": {"job_id": {"id": job}, "reference_id": ref}}).encode()


def first_job_then(next_pages: str):  # type: ignore[no-untyped-def]
    """A listing whose first page shows the first job only, then `loop` (the same token again, forever) or
    `endless` (a new token each time, every page empty)."""

    def pages(jobs: list[tuple[str, str]], token: str) -> dict[str, Any]:
        if token == "":
            shown = [{"id": job, "reference_id": ref, "status": "completed"} for ref, job in jobs[:1]]
            return {"id": BATCH, "jobs": shown, "next_page_token": "t1"}
        following = "t1" if next_pages == "loop" else f"t{int(token[1:]) + 1}"
        return {"id": BATCH, "jobs": [], "next_page_token": following}

    return pages


# -- a listing that does not end -------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("paging", ["loop", "endless"])
def test_a_listing_that_never_ends_leaves_the_rows_it_did_not_show_uncertain(tmp_path: Path, paging: str) -> None:
    """Every answer is malformed (uncertain rows, a listing decides), and the listing shows the first job, then
    pages that show nothing for ever: the same page token again, or a new token each time. The run ends; the
    job the listing showed is settled; the others stay uncertain (exit 3) — not `failed` ("the job was not
    created"): the API holds them, and the listing never said otherwise. `reconcile` says why."""
    with HostileApi(KEY, answer=object_job_id, pages=first_job_then(paging)) as api:
        ledger = tmp_path / "l.db"
        result = invoke(*run_args(write_images(tmp_path / "m.csv", 4), ledger, api, "--concurrency", "1"))
        got = rows(ledger)
        first = next(iter(api.jobs))
        assert got[first]["status"] == "succeeded" and got[first]["job_id"] == api.jobs[first]
        assert {k: (r["status"], r["job_id"]) for k, r in got.items() if k != first} == {
            k: ("uncertain", None) for k in api.jobs if k != first
        }
        assert result.exit_code == 3, result.output
        assert api.requests["list"] < 200
        again = invoke("reconcile", "--ledger", str(ledger), "--base-url", api.base_url)
        assert again.exit_code != 0 and "page" in again.output, again.output
        assert {r["status"] for k, r in rows(ledger).items() if k != first} == {"uncertain"}
        assert set(api.created.values()) == {1}


@pytest.mark.timeout(120)
def test_sync_and_adopt_end_on_an_endless_listing(tmp_path: Path) -> None:
    """`sync` reads the status of a job no listing showed on its own (GET job), and `adopt` records what the
    pages it read showed: both end, whatever the paging does."""
    with HostileApi(KEY, pages=first_job_then("endless")) as api:
        ledger = tmp_path / "l.db"
        assert invoke(*run_args(write_images(tmp_path / "m.csv", 3), ledger, api)).exit_code == 0
        synced = invoke("sync", "--ledger", str(ledger), "--base-url", api.base_url, "--json")
        assert synced.exit_code == 0, synced.output
        assert {r["platform_status"] for r in rows(ledger).values()} == {"completed"}
        other = tmp_path / "other.db"
        adopted = invoke(
            "adopt", "--project-id", "proj", "--batch-id", BATCH, "--ledger", str(other), "--base-url", api.base_url
        )
        assert adopted.exit_code == 3, adopted.output  # not every job was seen: the command says so
        assert f"the listing of batch {BATCH} does not end" in adopted.output, adopted.output
        assert "were not adopted" in adopted.output, adopted.output
        assert api.requests["list"] < 400


def test_page_trail_ends_at_the_last_page_and_at_loops() -> None:
    """policy.PageTrail, pure: the last page (no token) ends a complete listing; a token given before, or pages
    that keep showing nothing new while naming another page, end it incomplete, saying why."""
    trail = PageTrail()
    assert trail.next({"jobs": [{"id": "j1"}], "next_page_token": "a"}) == "a"
    assert trail.next({"jobs": [{"id": "j2"}], "next_page_token": None}) is None and trail.complete
    looping = PageTrail()
    assert looping.next({"jobs": [{"id": "j1"}], "next_page_token": "a"}) == "a"
    assert looping.next({"jobs": [{"id": "j2"}], "next_page_token": "a"}) is None
    assert not looping.complete and "'a' a second time" in (looping.problem or "")
    for page in ({"jobs": [], "next_page_token": 1}, {"jobs": [{"id": "j1"}], "next_page_token": 1}):
        endless = PageTrail()
        tokens = [endless.next({**page, "next_page_token": f"t{i}"}) for i in range(STALE_PAGES_LIMIT + 5)]
        stale_from = 0 if not page["jobs"] else 1  # the first page of the same jobs is new
        assert tokens.index(None) == stale_from + STALE_PAGES_LIMIT - 1
        assert not endless.complete and "no new job" in (endless.problem or "")
    fresh = PageTrail()  # distinct pages: as many as the API has
    assert all(fresh.next({"jobs": [{"id": i}], "next_page_token": f"t{i}"}) for i in range(100)) and fresh.complete


# -- GET job answered with another job -------------------------------------------------------------------


def another_job(job: dict[str, Any], store: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """GET job answers with the next job of the store (a cache or a proxy mixing answers up)."""
    ids = sorted(store)
    return store[ids[(ids.index(job["job_id"]) + 1) % len(ids)]]


def unlisted(jobs: list[tuple[str, str]], token: str) -> dict[str, Any]:
    """A listing that shows no job: sync reads each job's status on its own (GET job)."""
    return {"id": BATCH, "jobs": [], "next_page_token": ""}


@pytest.mark.parametrize("pages", ["listed", "unlisted"])
def test_a_job_read_answered_with_another_job_records_nothing_of_it(tmp_path: Path, pages: str) -> None:
    """GET job answers with another job's data (its job_id, reference_id, status, result URL). `sync --results`
    must not record that job's status or result against this row: no result file holds another job's result,
    the rows carry a result error instead (exit 3), or the sync stops (exit 1) when a status read is wrong."""
    with HostileApi(KEY, job=another_job, pages=one_page if pages == "listed" else unlisted) as api:
        ledger = tmp_path / "l.db"
        assert invoke(*run_args(write_images(tmp_path / "m.csv", 3), ledger, api)).exit_code == 0
        results = tmp_path / "results"
        api.job = another_job
        synced = invoke("sync", "--ledger", str(ledger), "--base-url", api.base_url, "--results", str(results))
        got = rows(ledger)
        for ref, row in got.items():
            assert row["result_sha256"] is None and row["result_path"] is None, (ref, row)
            if pages == "unlisted":
                assert row["platform_status"] is None  # the status read was another job's
        assert not [p for p in results.glob("*.json")] if results.exists() else True
        assert synced.exit_code == (3 if pages == "listed" else 1), synced.output
        assert "another job" in synced.output, synced.output


def test_job_read_problem_names_an_answer_for_another_job() -> None:
    """policy.job_read_problem, pure: only what the answer names is checked; an id that is no usable id (an
    object, `true`) is not the job asked for either."""
    assert job_read_problem({"status": "completed"}, "j1", "r1") is None
    assert job_read_problem({"job_id": "j1", "id": "j1", "reference_id": "r1"}, "j1", "r1") is None
    assert job_read_problem({"job_id": 7, "reference_id": 7}, "7", "7") is None
    assert job_read_problem({"reference_id": "r2"}, "j1") is None  # no reference_id known: not checked
    for data in ({"job_id": "j2"}, {"id": "j2"}, {"job_id": {"id": "j1"}}, {"id": True}, {"reference_id": "r2"}):
        assert "another job" in (job_read_problem(data, "j1", "r1") or ""), data


# -- an answer that says two things ----------------------------------------------------------------------


def two_job_ids(ref: str, job: str) -> bytes:
    """The job's own id first, then another under the same key (json.loads keeps the last)."""
    data = f'"job_id": "{job}", "job_id": "not-{job[4:]}", "reference_id": "{ref}"'
    return ('{"success": true, "data": {' + data + "}}").encode()


def test_an_answer_with_a_key_given_twice_is_not_trusted(tmp_path: Path) -> None:
    """A success answer names two job_ids under one key. Neither is recorded from it: the row is sent again
    (the answer is no API answer), FS_0001 follows, and the batch listing gives each row its own job."""
    with HostileApi(KEY, answer=two_job_ids) as api:
        ledger = tmp_path / "l.db"
        result = invoke(*run_args(write_images(tmp_path / "m.csv", 3), ledger, api))
        got = rows(ledger)
        assert {k: r["job_id"] for k, r in got.items()} == api.jobs
        assert {(r["status"], r["origin"]) for r in got.values()} == {("succeeded", "recovered")}
        assert result.exit_code == 0, result.output
        assert set(api.created.values()) == {1} and api.requests["exists"] == 3


def test_parse_envelope_refuses_a_key_given_twice_at_any_depth() -> None:
    for raw in (
        b'{"success": false, "success": true, "data": {"job_id": "j"}}',
        b'{"success": true, "data": {"job_id": "a", "job_id": "b"}}',
        b'{"success": false, "error": {"code": "FS_0003", "code": "FS_0001"}}',
    ):
        result = parse_envelope(200, raw, None)
        assert (result.success, result.data, result.code) == (None, None, "not_json"), raw
        assert "a key given twice" in (result.message or "")
    assert parse_envelope(200, b'{"success": true, "data": {"job_id": "a", "x": {"job_id": "b"}}}', None).success


# -- a result cut short ----------------------------------------------------------------------------------

_WHOLE = b'{"labels": [1, 2, 3], "note": "whole"}'
CUT_RESULTS = {
    # no length, no chunks: the end of the connection is the end of the body (HTTP/1.1 allows it)
    "closed": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + _WHOLE[:20],
    "short": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n" + _WHOLE,
    "chunk": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n"
    + _WHOLE[:16]
    + b"\r\n",
}


def test_a_result_cut_short_is_never_recorded(tmp_path: Path) -> None:
    """The result download ends early, on a connection closed where nothing says how long the body is (HTTP/1.1
    allows it). No row records a result (path, sha256), no result file is left, the rows carry a result error
    and `sync` exits 3; whole results sent the same way are kept."""
    with HostileApi(KEY, result_raw=CUT_RESULTS["closed"]) as api:
        ledger = tmp_path / "l.db"
        assert invoke(*run_args(write_images(tmp_path / "m.csv", 2), ledger, api)).exit_code == 0
        results = tmp_path / "results"
        synced = invoke("sync", "--ledger", str(ledger), "--base-url", api.base_url, "--results", str(results))
        got = rows(ledger)
        assert all(r["result_sha256"] is None and r["result_error"] for r in got.values()), got
        assert not list(results.glob("*.json"))
        assert synced.exit_code == 3, synced.output
        api.result_raw = CUT_RESULTS["closed"].split(b"\r\n\r\n")[0] + b"\r\n\r\n" + _WHOLE  # whole, then closed
        again = invoke("sync", "--ledger", str(ledger), "--base-url", api.base_url, "--results", str(results))
        assert again.exit_code == 0, again.output
        assert {(results / f"{k}.json").read_bytes() for k in rows(ledger)} == {_WHOLE}


@pytest.mark.parametrize("cut", sorted(CUT_RESULTS))
def test_a_download_cut_short_is_no_result(cut: str) -> None:
    """One download (`ApiClient.download`) of each cut body: never a success, and retried, whether the
    transport says the body is incomplete (a Content-Length not reached, a chunk cut off) or only the JSON does
    (a body that ends with its connection: most likely the same cut)."""

    async def download() -> ApiResult:
        async with ApiClient(api.base_url, KEY) as client:
            return await client.download(f"{api.base_url}/results/j", io.BytesIO(), max_bytes=1 << 20)

    with HostileApi(KEY, result_raw=CUT_RESULTS[cut]) as api:
        result = asyncio.run(download())
    assert result.success is not True and result.data is None, result
    assert classify(result, expect="sha256").verdict is Verdict.RETRYABLE, result


# -- a listing that names a job twice --------------------------------------------------------------------


def first_job_twice(jobs: list[tuple[str, str]], token: str) -> dict[str, Any]:
    """Each job under its own reference_id, and first of all the first job under the second reference_id too:
    that job has two reference_ids, that reference_id two jobs (the API allows neither)."""
    listed = [{"id": job, "reference_id": ref, "status": "completed"} for ref, job in jobs]
    if len(jobs) > 1:
        listed.insert(0, {"id": jobs[0][1], "reference_id": jobs[1][0], "status": "completed"})
    return {"id": BATCH, "jobs": listed, "next_page_token": ""}


def nothing_then_loop(jobs: list[tuple[str, str]], token: str) -> dict[str, Any]:
    """A listing that shows nothing and loops: the rows it was to settle stay uncertain."""
    return {"id": BATCH, "jobs": [], "next_page_token": "t1"}


def test_a_listing_that_names_a_job_for_two_reference_ids_settles_neither(tmp_path: Path) -> None:
    """The rows are uncertain (malformed answers; the run's listing settles nothing), then `reconcile` meets a
    listing that contradicts itself about the first two. No row records a job_id the API holds for another
    reference_id: those two stay uncertain (exit 3), the others are settled."""
    with HostileApi(KEY, answer=object_job_id, pages=nothing_then_loop) as api:
        ledger = tmp_path / "l.db"
        result = invoke(*run_args(write_images(tmp_path / "m.csv", 4), ledger, api))
        assert result.exit_code == 3 and {r["status"] for r in rows(ledger).values()} == {"uncertain"}
        api.pages = first_job_twice
        reconciled = invoke("reconcile", "--ledger", str(ledger), "--base-url", api.base_url)
        got = rows(ledger)
        assert all(r["job_id"] in (None, api.jobs[k]) for k, r in got.items()), {k: r["job_id"] for k, r in got.items()}
        refs = list(api.jobs)
        assert {k: (r["status"], r["job_id"]) for k, r in got.items()} == {
            **{k: ("uncertain", None) for k in refs[:2]},
            **{k: ("succeeded", api.jobs[k]) for k in refs[2:]},
        }
        assert reconciled.exit_code != 0 and "two" in reconciled.output, reconciled.output


def test_adopt_never_gives_one_job_to_two_rows(tmp_path: Path) -> None:
    """`adopt` of the same self-contradicting listing: the first job goes to the first reference_id it is named
    for; naming it again for another is a conflict, reported, and that row gets its own job or none."""
    with HostileApi(KEY, pages=first_job_twice) as api:
        assert invoke(*run_args(write_images(tmp_path / "m.csv", 3), tmp_path / "theirs.db", api)).exit_code == 0
        ledger = tmp_path / "l.db"
        adopted = invoke(
            "adopt", "--project-id", "proj", "--batch-id", BATCH, "--ledger", str(ledger), "--base-url", api.base_url
        )
        got = rows(ledger)
        held = [r["job_id"] for r in got.values() if r["job_id"]]
        assert len(held) == len(set(held)), {k: r["job_id"] for k, r in got.items()}
        assert all(r["job_id"] in (None, api.jobs[k]) for k, r in got.items())
        assert adopted.exit_code == 3, adopted.output


def test_found_keeps_only_what_the_listing_says_once() -> None:
    """policy.Found, pure: a wanted reference_id named with two jobs, or whose job is named for another
    reference_id (wanted or not, before or after it), is neither found nor missing; the same entry twice is no
    contradiction."""
    found = Found({"r1", "r2", "r3", "r4", "r5", "r6"})
    for ref, job in [("r1", "j1"), ("r1", "j1"), ("r2", "j1"), ("r3", "j3"), ("r3", "j9"), ("r3", "j3"), ("x", "j4")]:
        found.note(ref, job)
    for ref, job in [("r4", "j4"), ("r5", "j5"), ("r5", "j5"), ("r6", "j6"), ("y", "j6"), ("z", "j7")]:
        found.note(ref, job)
    found.settle()
    assert dict(found) == {"r5": "j5"} and found.ambiguous == {"r1", "r2", "r3", "r4", "r6"}


def test_named_twice_finds_the_contradictions_of_a_page() -> None:
    page = [("r1", "j1", ""), ("r2", "j1", ""), ("r3", "j3", ""), ("r3", "j4", ""), ("r5", "j5", ""), ("r5", "j5", "")]
    assert named_twice(page) == {"r1", "r2", "r3"}


# -- success answers the client must not take at their word ----------------------------------------------

ODD_ANSWERS = {
    "empty body": lambda ref, job: b"",
    "utf-8 BOM": lambda ref, job: b"\xef\xbb\xbf" + json.dumps({"success": True, "data": {"job_id": job}}).encode(),
    "NaN job_id": lambda ref, job: b'{"success": true, "data": {"job_id": NaN}}',
    "Infinity job_id": lambda ref, job: b'{"success": true, "data": {"job_id": -Infinity}}',
    "blank job_id": lambda ref, job: b'{"success": true, "data": {"job_id": " \\t "}}',
    "long job_id": lambda ref, job: json.dumps({"success": True, "data": {"job_id": job * 3}}).encode(),
    "NUL in job_id": lambda ref, job: json.dumps({"success": True, "data": {"job_id": job + "\0"}}).encode(),
    "escape in job_id": lambda ref, job: json.dumps({"success": True, "data": {"job_id": "\x1b[2J" + job}}).encode(),
    "newline in job_id": lambda ref, job: json.dumps({"success": True, "data": {"job_id": job[:8] + "\n"}}).encode(),
    "surrogate in job_id": lambda ref, job: b'{"success": true, "data": {"job_id": "\\ud800' + job.encode() + b'"}}',
    "success false in a 200": lambda ref, job: b'{"success": false, "error": {"code": "XX_9"}}',
}


@pytest.mark.slow  # a regression guard over many cases (the fixes have fast tests)
@pytest.mark.parametrize("odd", sorted(ODD_ANSWERS))
def test_odd_success_answers_never_put_a_job_id_in_the_ledger_the_api_did_not_give(tmp_path: Path, odd: str) -> None:
    """The API creates every job but answers oddly. Whatever the answer, no row records a job_id other than the
    API's, no job is created twice, and every row whose job exists ends with that job (sent again: FS_0001; or
    looked up: the listing) — except an explicit refusal (`success: false` in a 200), which fails the row."""
    with HostileApi(KEY, answer=ODD_ANSWERS[odd]) as api:
        ledger = tmp_path / "l.db"
        result = invoke(*run_args(write_images(tmp_path / "m.csv", 3), ledger, api))
        got = rows(ledger)
        assert set(api.created.values()) == {1}
        assert all(r["job_id"] in (None, api.jobs[k]) for k, r in got.items()), {k: r["job_id"] for k, r in got.items()}
        if odd == "success false in a 200":
            assert {(r["status"], r["error_code"]) for r in got.values()} == {("failed", "XX_9")}
            return
        assert {k: r["job_id"] for k, r in got.items()} == api.jobs
        assert {r["status"] for r in got.values()} == {"succeeded"}
        assert result.exit_code == 0, result.output


def test_control_characters_make_no_job_id_and_no_status() -> None:
    """policy.job_id_text and status_text, pure: a NUL (PostgreSQL cannot store it), an escape sequence or a
    newline is never recorded as an id or a status word."""
    for bad in ("j\x00", "\x1b[2Jj", "j\n", "j\x7f"):
        assert job_id_text(bad) is None and status_text(bad) == ""
        assert listed_jobs({"jobs": [{"id": "j", "reference_id": "r", "status": bad}]}) == [("r", "j", "")]
    assert job_id_text("jöb-1") == "jöb-1" and status_text("in progress (QA)") == "in progress (QA)"


# -- redirects and Retry-After ---------------------------------------------------------------------------


@pytest.mark.slow  # a regression guard over many cases (the fixes have fast tests)
@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_to_another_host_never_takes_the_key_and_fails_no_row(tmp_path: Path, status: int) -> None:
    """Every request is redirected to another server. The key never reaches it (nothing follows a redirect),
    the run stops at once naming the redirect (exit 1), no row is failed and none holds a job_id."""
    with HostileApi(KEY) as elsewhere:
        moved = {"Location": f"{elsewhere.base_url}/v1/projects/proj/jobs"}

        def redirect(method: str, path: str, count: int) -> tuple[int, dict[str, str], bytes]:
            return status, moved, b""

        with HostileApi(KEY, intercept=redirect) as api:
            ledger = tmp_path / "l.db"
            result = invoke(*run_args(write_images(tmp_path / "m.csv", 3), ledger, api))
        assert elsewhere.seen == []
        assert result.exit_code == 1 and str(status) in result.output, result.output
        assert {(r["status"], r["job_id"]) for r in rows(ledger).values()} == {("pending", None)}


RETRY_AFTER = ["1000000000", "-5", "1e309", "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 01 Jan 2100 00:00:00 GMT", "soon"]


@pytest.mark.slow
@pytest.mark.parametrize("hint", RETRY_AFTER)
def test_absurd_retry_after_values_neither_park_the_run_nor_cost_attempts(tmp_path: Path, hint: str) -> None:
    """The first three job POSTs are answered 429 with an absurd Retry-After (a billion seconds, negative, not
    finite, a date long past or far ahead, a word): `--max-retry-after 1` bounds each wait, the 429s cost no
    attempt, and every row is created once."""

    def throttle(method: str, path: str, count: int) -> tuple[int, dict[str, str], bytes] | None:
        return (429, {"Retry-After": hint}, b"") if method == "POST" and path.endswith("/jobs") and count < 3 else None

    with HostileApi(KEY, intercept=throttle) as api:
        ledger = tmp_path / "l.db"
        result = invoke(*run_args(write_images(tmp_path / "m.csv", 2), ledger, api, "--max-retry-after", "1"))
        assert result.exit_code == 0, result.output
        got = rows(ledger)
        assert {k: r["job_id"] for k, r in got.items()} == api.jobs
        assert {r["attempts"] for r in got.values()} == {1} and set(api.created.values()) == {1}


# -- an answer nobody asked for --------------------------------------------------------------------------


def no_reference_id(ref: str, job: str) -> bytes:
    return json.dumps({"success": True, "data": {"job_id": job}}).encode()


@pytest.mark.parametrize("delay", [0.0, 0.03])
@pytest.mark.parametrize("echo", ["reference_id", "job_id only"])
def test_an_answer_sent_twice_is_never_taken_for_the_next_request(tmp_path: Path, echo: str, delay: float) -> None:
    """The server sends each creation's answer a second time on the keep-alive connection, unasked (at once, or
    30 ms later while the connection waits in the pool). HTTP/1.1 ties answers to requests by order alone, so
    the second copy was read as the answer to the next request sent on that connection, and every later answer
    shifted by one: with answers that name no reference_id, rows were recorded `succeeded` with the job of the
    row before, for jobs the API never created. No row may hold another row's job, none is created twice, and
    once `retry` has sent again what may have failed (a run that stopped on too many answers that do not fit
    leaves rows as they were), every row has its own job. A copy that arrives while the next request still
    waits at the server is that request's answer as far as HTTP can tell: see
    test_a_row_whose_request_still_waits_at_the_server_is_sent_again_not_failed."""
    answer = plain_answer if echo == "reference_id" else no_reference_id
    with HostileApi(KEY, answer=answer, answer_twice=delay) as api:
        ledger = tmp_path / "l.db"
        result = invoke(*run_args(write_images(tmp_path / "m.csv", 6), ledger, api, "--concurrency", "1"))
        got = rows(ledger)
        assert all(r["job_id"] in (None, api.jobs.get(k)) for k, r in got.items()), (got, api.jobs)
        assert {r["status"] for r in got.values()} <= {"succeeded", "failed", "uncertain"}, result.output
        assert all(r["job_id"] == api.jobs[k] for k, r in got.items() if r["status"] == "succeeded")
        if any(r["status"] == "uncertain" for r in got.values()):
            invoke("reconcile", "--ledger", str(ledger), "--base-url", api.base_url)
        if any(r["status"] == "failed" for r in rows(ledger).values()):
            assert invoke("retry", "--all", "--ledger", str(ledger)).exit_code == 0
        api.answer_twice = None
        result = invoke(*run_args(None, ledger, api))  # sends only what `retry` made pending
        got = rows(ledger)
        assert {k: (r["status"], r["job_id"]) for k, r in got.items()} == {
            k: ("succeeded", api.jobs.get(k)) for k in got
        }
        assert set(api.created.values()) == {1} and len(api.created) == 6
        assert result.exit_code == 0, result.output


# -- a batch id that is no id ----------------------------------------------------------------------------


@pytest.mark.parametrize("batch_id", [{"id": BATCH}, True, 7.5, " ", "b\x00"])
def test_a_created_batch_whose_id_is_no_id_is_never_recorded_nor_sent(tmp_path: Path, batch_id: Any) -> None:
    """Creating the run's batch is answered `success: true` with a batch_id that is an object, `true`, a float,
    blank or holds a NUL. Its Python text (`{'id': …}`, `True`) was recorded as the batch and sent with every
    job. No job may be sent with it, and the ledger names no such batch."""
    answer = json.dumps({"success": True, "data": {"batch_id": batch_id}}).encode()

    def batch(method: str, path: str, count: int) -> tuple[int, dict[str, str], bytes] | None:
        return (200, {"Content-Type": "application/json"}, answer) if path.endswith("/batch") else None

    with HostileApi(KEY, intercept=batch) as api:
        ledger = tmp_path / "l.db"
        args = run_args(write_images(tmp_path / "m.csv", 2), ledger, api, "--max-attempts", "2")
        args[args.index("--batch-id") : args.index("--batch-id") + 2] = ["--batch-name", "b1"]
        result = invoke(*args)
        assert api.jobs == {}
        assert result.exit_code == 1, result.output
        assert "cannot create batch 'b1'" in result.output and "usable batch_id" in result.output, result.output
        con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) if ledger.exists() else None
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")} if con else set()
        if "batches" in tables:  # nothing loaded: the batch comes first
            assert con is not None and [r for r in con.execute("SELECT batch_id FROM batches") if r[0]] == []
            assert {r[0] for r in con.execute("SELECT batch_id FROM jobs")} <= {None}
        if con is not None:
            con.close()


# -- where a result URL points ---------------------------------------------------------------------------


def result_at(url: str):  # type: ignore[no-untyped-def]
    def job(job: dict[str, Any], store: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {**job, "result": url.replace("JOB", job["job_id"])}

    return job


@pytest.mark.slow
def test_result_urls_never_get_the_key_and_never_read_local_files(tmp_path: Path) -> None:
    """A result URL on the API's own host gets no x-api-key (a download never sends it); a `file://` URL, a
    path or `ftp://` is not fetched: the text is the result, as given."""
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    with HostileApi(KEY) as api:
        ledger = tmp_path / "l.db"
        assert invoke(*run_args(write_images(tmp_path / "m.csv", 1), ledger, api)).exit_code == 0
        results = tmp_path / "results"
        api.job = result_at(f"{api.base_url}/results/JOB")
        sync = ["sync", "--ledger", str(ledger), "--base-url", api.base_url, "--results", str(results)]
        assert invoke(*sync).exit_code == 0
        downloads = [key for method, path, key in api.seen if path.startswith("/results/")]
        assert downloads == [None]
        for url in (f"file://{secret}", str(secret), f"ftp://127.0.0.1/{secret}"):
            con = sqlite3.connect(ledger)
            with con:
                con.execute("UPDATE jobs SET result = NULL, result_path = NULL, result_sha256 = NULL")
            con.close()
            for stale in results.glob("*.json"):
                stale.unlink()
            api.job = result_at(url)
            synced = invoke(*sync)
            assert synced.exit_code == 0, synced.output
            (row,) = rows(ledger).values()
            assert row["result"] == json.dumps(url) and row["result_path"] is None, row
            assert not list(results.glob("*.json"))


# -- refusals whose text a ledger cannot hold ------------------------------------------------------------

ODD_REFUSALS = {
    "long code": {"code": "E" * 300, "message": "refused"},
    "NUL in code": {"code": "FS\x00_0003", "message": "refused"},
    "NUL in message": {"code": "FS_0003", "message": "bad\x00data"},
    "escape in message": {"code": "FS_0003", "message": "\x1b[31mred\x1b[0m\nsecond line"},
    "surrogate in message": {"code": "FS_0003", "message": "bad \ud800 data"},
    "surrogate in details": {"code": "FS_0003", "message": "bad", "errors": [{"meta_data": {"fields": ["\ud800"]}}]},
}


@pytest.mark.parametrize("odd", sorted(ODD_REFUSALS))
def test_a_refusal_whose_text_the_ledger_cannot_hold_still_fails_its_row(db_url: str, tmp_path: Path, odd: str) -> None:
    """Every job POST is refused (`success: false`, HTTP 400) with an error code longer than the ledger's column,
    or a code or message holding a NUL or an escape sequence. On PostgreSQL the write failed (a NUL cannot be
    stored, a varchar(64) refuses 300 characters) and every run stopped there, for ever. Each row must end
    `failed`, its code and message recorded as printable text on one line, exit 3."""
    refusal = json.dumps({"success": False, "error": ODD_REFUSALS[odd]}).encode()

    def refuse(method: str, path: str, count: int) -> tuple[int, dict[str, str], bytes] | None:
        return (400, {"Content-Type": "application/json"}, refusal) if path.endswith("/jobs") else None

    with HostileApi(KEY, intercept=refuse) as api:
        args = run_args(write_images(tmp_path / "m.csv", 1), tmp_path / "unused.db", api)
        args[args.index("--ledger") + 1] = db_url
        result = invoke(*args)
        assert result.exit_code == 3, result.output
    exported = json.loads(invoke("status", "--ledger", db_url, "--json").output)
    assert exported["counts"]["failed"] == 1, exported
    led = Ledger.open(db_url)
    try:
        got = led.export_rows()
    finally:
        led.close()
    for row in got:
        assert row["status"] == "failed" and row["error_code"], row
        for text in (row["error_code"], row["error_message"]):
            assert text is None or (text.isprintable() and len(row["error_code"]) <= 64), row


def with_odd_entries(jobs: list[tuple[str, str]], token: str) -> dict[str, Any]:
    """The store's jobs, and entries whose reference_id no manifest row can have (300 characters, a NUL) or
    whose status word is 300 characters long."""
    listed = [{"id": job, "reference_id": ref, "status": "x" * 300} for ref, job in jobs]
    odd = [("r" * 300, "6d0f6a4c-0000-4000-8000-000000000001"), ("r\x00", "6d0f6a4c-0000-4000-8000-000000000002")]
    odd += [("r\ud800", "6d0f6a4c-0000-4000-8000-000000000003")]
    listed += [{"id": job, "reference_id": ref, "status": "completed"} for ref, job in odd]
    return {"id": BATCH, "jobs": listed, "next_page_token": ""}


def test_adopt_and_sync_survive_listing_entries_no_row_can_hold(db_url: str, tmp_path: Path) -> None:
    """A listing names jobs under a reference_id of 300 characters or with a NUL (PostgreSQL cannot hold either
    in the ledger's column), and gives status words of 300 characters. `adopt` records the usable jobs and skips
    those; `sync` records the status cut to the column."""
    with HostileApi(KEY, pages=with_odd_entries) as api:
        assert invoke(*run_args(write_images(tmp_path / "m.csv", 2), tmp_path / "theirs.db", api)).exit_code == 0
        adopted = invoke(
            "adopt", "--project-id", "proj", "--batch-id", BATCH, "--ledger", db_url, "--base-url", api.base_url
        )
        assert adopted.exit_code == 0, adopted.output
        synced = invoke("sync", "--ledger", db_url, "--base-url", api.base_url)
        assert synced.exit_code == 0, synced.output
        led = Ledger.open(db_url)
        try:
            got = {r["reference_id"]: r for r in led.export_rows()}
        finally:
            led.close()
        assert {k: r["job_id"] for k, r in got.items()} == api.jobs


# -- an answer cut short ---------------------------------------------------------------------------------


@pytest.mark.slow  # a regression guard over many cases (the fixes have fast tests)
@pytest.mark.parametrize("cut", sorted(CUTS))
def test_a_creation_answer_cut_short_is_never_a_success_nor_a_second_job(tmp_path: Path, cut: str) -> None:
    """The API creates each job and its answer is cut short (the connection closed after the status line, a
    body shorter or longer than its Content-Length, a chunked body or a length-less body cut off). No row is
    recorded from the cut answer; the row is sent again, FS_0001 follows and the listing gives each row its own
    job, created once; none is failed."""
    with HostileApi(KEY, cut=cut) as api:
        ledger = tmp_path / "l.db"
        result = invoke(*run_args(write_images(tmp_path / "m.csv", 3), ledger, api))
        got = rows(ledger)
        assert {k: r["job_id"] for k, r in got.items()} == api.jobs
        assert {(r["status"], r["origin"]) for r in got.values()} == {("succeeded", "recovered")}
        assert set(api.created.values()) == {1} and api.requests["exists"] >= 3
        assert result.exit_code == 0, result.output


# -- a listing against an answer that was another request's ---------------------------------------------


def test_a_job_id_from_an_answer_yields_to_the_listing(ledger: Ledger, tmp_path: Path) -> None:
    """ref-a was recorded `succeeded` with J from a creation answer; the listing shows J under ref-b (uncertain).
    The API's listing is the mapping reference_id → job: ref-b takes J, ref-a gives it up (uncertain, looked
    up by its own reference_id) — before, ref-b became a conflict and ref-a kept a job that is not its own.
    A job_id from a listing, an adoption, or one followed by sync stays (the found row is the conflict)."""
    assert holder_yields("succeeded", "created", None)
    assert not any(
        holder_yields(*h)
        for h in [("succeeded", "recovered", None), ("succeeded", "adopted", None), ("succeeded", "created", "done")]
    )
    assert not holder_yields("conflict", "created", None)
    load_manifest(
        ledger, fake_manifest(tmp_path, [("ref-a", "https://e.com/a.jpg"), ("ref-b", "https://e.com/b.jpg")]), "o"
    )
    owner = ledger.register_worker()
    c = {claim.reference_id: claim for claim in ledger.claim(owner, 10, 60)}
    ledger.record(
        [
            Result(
                c["ref-a"].id,
                c["ref-a"].lease_token,
                Status.SUCCEEDED,
                job_id="J",
                origin="created",
                may_have_created=True,
            ),
            Result(
                c["ref-b"].id, c["ref-b"].lease_token, Status.UNCERTAIN, error_code="bad_job_id", may_have_created=True
            ),
        ]
    )
    done = ledger.resolve_uncertain({c["ref-b"].id: "J"})
    assert (done.succeeded, done.conflict, done.demoted) == (1, 0, 1)
    got = {r["reference_id"]: (r["status"], r["job_id"], r["error_code"]) for r in ledger.export_rows()}
    assert got == {"ref-b": ("succeeded", "J", None), "ref-a": ("uncertain", None, "duplicate_job_id")}


# -- a job read whose answer holds a big result inline ----------------------------------------------------------


def inline_result(size: int):  # type: ignore[no-untyped-def]
    """GET job answers with the result inline: an object holding `size` characters of annotations."""

    def job(found: dict[str, Any], store: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {**found, "result": {"annotations": "a" * size}}

    return job


def test_a_job_read_holding_a_big_result_inline_is_read_and_recorded(tmp_path: Path) -> None:
    """A GET job answer of 3 MiB (the result inline: a long video's annotations) is an answer like any other,
    beyond the 1 MiB limit of the other answers: sync records the status and the whole result."""
    size = 3 << 20
    with HostileApi(KEY, job=inline_result(size), pages=unlisted) as api:
        ledger = tmp_path / "l.db"
        assert invoke(*run_args(write_images(tmp_path / "m.csv", 2), ledger, api)).exit_code == 0
        results = tmp_path / "results"
        synced = invoke("sync", "--ledger", str(ledger), "--base-url", api.base_url, "--results", str(results))
        assert synced.exit_code == 0, synced.output
        for ref, row in rows(ledger).items():
            assert row["platform_status"] == "completed", (ref, row)
            assert json.loads(row["result"]) == {"annotations": "a" * size}, ref


def test_a_job_read_beyond_its_limit_is_refused_unread(tmp_path: Path) -> None:
    """Past JOB_ANSWER_MAX_BYTES a GET job answer is refused (body_too_large), never read into memory whole."""
    from uploader.api.client import JOB_ANSWER_MAX_BYTES

    with HostileApi(KEY, job=inline_result(JOB_ANSWER_MAX_BYTES + 1), pages=unlisted) as api:
        assert invoke(*run_args(write_images(tmp_path / "m.csv", 1), tmp_path / "l.db", api)).exit_code == 0
        job_id = next(iter(api.jobs.values()))

        async def read() -> ApiResult:
            async with ApiClient(api.base_url, KEY) as client:
                return await client.get_job("proj", job_id)

        result = asyncio.run(read())
        assert (result.success, result.code) == (None, "body_too_large"), result


# -- a listing naming a row's job for another reference_id -------------------------------------------------------


def swapped_refs(jobs: list[tuple[str, str]], token: str) -> dict[str, Any]:
    """A listing that pairs each job with the next job's reference_id, and says every job failed."""
    refs = [ref for ref, _ in jobs]
    listed = [
        {"id": job, "reference_id": refs[(i + 1) % len(refs)], "status": "failed"} for i, (_, job) in enumerate(jobs)
    ]
    return {"id": BATCH, "jobs": listed, "next_page_token": ""}


def test_sync_records_nothing_from_a_listing_that_names_a_job_for_another_reference_id(tmp_path: Path) -> None:
    """The listing names each row's job with another row's reference_id: either the listing or the ledger's
    job_id is wrong, so nothing of it is recorded. Each row is read on its own (GET job, whose answer names the
    row's own reference_id and the status `completed`), and the output says so."""
    with HostileApi(KEY, pages=swapped_refs) as api:
        ledger = tmp_path / "l.db"
        assert invoke(*run_args(write_images(tmp_path / "m.csv", 3), ledger, api)).exit_code == 0
        reads = api.requests["get"]
        synced = invoke("sync", "--ledger", str(ledger), "--base-url", api.base_url)
        assert synced.exit_code == 0, synced.output
        assert {row["platform_status"] for row in rows(ledger).values()} == {"completed"}
        assert api.requests["get"] - reads == 3
        assert "named the job of 3 rows for another reference_id" in synced.output, synced.output
        as_json = invoke("sync", "--ledger", str(ledger), "--base-url", api.base_url, "--json")
        assert json.loads(as_json.stdout)["listing_mismatches"] == 3, as_json.output


def test_plan_listed_takes_a_status_only_for_the_row_the_entry_names() -> None:
    """tracking.plan_listed, pure: a row is seen only when the page names its job for its own reference_id; a
    job named for another reference_id, or for two (None), leaves the row unseen and counts as mismatched."""
    from uploader.ledger.tracking import plan_listed

    rows_ = [(1, "a", "j1", None, None, False), (2, "b", "j2", None, None, False), (3, "c", "j3", None, None, False)]
    page, writes, stale = plan_listed(rows_, {"j1": ("a", "completed"), "j2": ("x", "failed"), "j3": None}, "proj")
    assert (page.seen, writes, page.mismatched, stale) == ([1], [(1, "completed")], 2, [])


def test_plan_listed_dues_a_final_row_whose_recorded_file_is_not_present() -> None:
    """tracking.plan_listed, pure: a final row with a result is due again only when `present` says its file is
    not there; an inline result (no file) and a row without `present` (statuses only) are left."""
    from uploader.ledger.tracking import plan_listed

    rows_ = [
        (1, "a", "j1", "completed", "/r/a.json", True),
        (2, "b", "j2", "completed", "/gone/b.json", True),
        (3, "c", "j3", "completed", None, True),  # inline
        (4, "d", "j4", "completed", None, False),  # none yet
    ]
    named: dict[str, tuple[str, str] | None] = {f"j{i}": (ref, "completed") for i, ref in enumerate("abcd", 1)}
    page, writes, stale = plan_listed(rows_, named, "proj", lambda path: path.startswith("/r/"))
    assert ([row[0] for row in page.due], writes, stale) == ([2, 4], [], [])
    page, _, _ = plan_listed(rows_, named, "proj")
    assert [row[0] for row in page.due] == [4]


def test_keep_result_records_a_fetched_result_only_over_the_row_it_was_read_for() -> None:
    """tracking.keep_result, pure: a result read with status S is recorded only while the row's status is S and
    no result is recorded meanwhile (inline, or a file still present); else dropped, with a reason to record
    only when the row is left without a result."""
    from uploader.ledger.tracking import keep_result

    fetched = (1, "/r/x.json", None, "ab" * 32, "completed")
    present = {"/r/x.json"}.__contains__
    assert keep_result(("completed", None, False), fetched, present) is None
    assert keep_result(("completed", "/old/x.json", True), fetched, present) is None  # recorded file gone
    assert keep_result(None, fetched, present) == ""  # the row is no longer tracked
    assert keep_result(("completed", "/r/x.json", True), fetched, present) == ""  # another sync recorded it
    assert keep_result(("rejected", None, True), fetched, present) == ""  # inline, recorded meanwhile
    why = keep_result(("in_progress", None, False), fetched, present)
    assert why and "'completed' when read, 'in_progress' now" in why


# -- a request still waiting at the server when the listing is read --------------------------------------------


def _late_creation(api: HostileApi, delay: float, timers: list[threading.Timer]) -> Any:
    """An intercept: the first creation is answered at once with another row's answer, and the server creates
    that row's job only `delay` seconds later."""

    def queued(method: str, path: str, count: int) -> tuple[int, dict[str, str], bytes] | None:
        if method != "POST" or not path.endswith("/jobs") or timers:
            return None
        timer = threading.Timer(delay, api.create, [{"reference_id": "img-00000"}])
        timer.start()
        timers.append(timer)
        return 200, {"Content-Type": "application/json"}, plain_answer("img-00002", "job-of-another-row")

    return queued


@pytest.mark.parametrize("delay", [0.2, 1.5])
def test_a_row_whose_request_still_waits_at_the_server_is_sent_again_not_failed(tmp_path: Path, delay: float) -> None:
    """The first creation is answered at once with another row's answer (what a server answering twice gives
    when the copy arrives while the next request still waits there), and the server creates that row's job
    only `delay` seconds later. A listing read in between does not show the job: the row was recorded
    `failed` ("the job was not created") although its job then came to exist. It must be sent again instead:
    the API creates the job then (and refuses the late request with FS_0001), or refuses the copy with FS_0001
    and the listing finds the job. Either way the ledger ends with the one job the API holds for each row."""
    timers: list[threading.Timer] = []
    with HostileApi(KEY) as api:
        api.intercept = _late_creation(api, delay, timers)
        ledger = tmp_path / "l.db"
        result = invoke(*run_args(write_images(tmp_path / "m.csv", 3), ledger, api, "--concurrency", "1"))
        timers[0].join()
        got = rows(ledger)
        assert {k: (r["status"], r["job_id"]) for k, r in got.items()} == {
            k: ("succeeded", api.jobs[k]) for k in got
        }, result.output
        assert set(api.created.values()) == {1} and len(api.created) == 3
        assert api.requests["exists"] >= 1  # the late request, or the copy: refused as a twin
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("delay", "grace"), [(0.3, 1.0), (1.5, 2.5)])
def test_a_last_attempt_still_waiting_at_the_server_is_not_failed_by_a_listing_read_too_soon(
    tmp_path: Path, delay: float, grace: float
) -> None:
    """As above, with one attempt per row: the row's only request is answered with another row's answer and its
    job created `delay` seconds later. The listing read at once does not show it: the row was recorded `failed`
    ("not created") while its job came to exist. Within `late_grace` of that attempt a listing that misses the
    row leaves it uncertain; the run lists once more after the grace and finds the job: succeeded, recovered."""
    from uploader.ledger import Ledger
    from uploader.manifest import ManifestOptions
    from uploader.send import RunOptions, run_upload

    timers: list[threading.Timer] = []
    with HostileApi(KEY) as api:
        api.intercept = _late_creation(api, delay, timers)
        led = Ledger.open(tmp_path / "l.db")
        try:
            summary = run_upload(
                led,
                write_images(tmp_path / "m.csv", 3),
                ManifestOptions(project_id="proj", work_flow_id="wf", batch_id=BATCH),
                base_url=api.base_url,
                api_key=KEY,
                run_options=RunOptions(concurrency=1, max_attempts=1, late_grace=grace),
                handle_signals=False,
            )
        finally:
            led.close()
        timers[0].join()
        got = rows(tmp_path / "l.db")
        assert {k: (r["status"], r["job_id"]) for k, r in got.items()} == {
            k: ("succeeded", api.jobs[k]) for k in got
        }, summary
        assert got["img-00000"]["origin"] == "recovered" and set(api.created.values()) == {1}


def test_a_last_attempt_is_failed_once_a_listing_read_after_the_grace_misses_it(tmp_path: Path) -> None:
    """The same row, whose job is never created: after the grace the second listing misses it too, and the row
    is `failed` as before (`retry` may send it again), not left uncertain for ever."""
    from uploader.ledger import Ledger
    from uploader.manifest import ManifestOptions
    from uploader.send import RunOptions, run_upload

    answered: list[str] = []

    def lost(method: str, path: str, count: int) -> tuple[int, dict[str, str], bytes] | None:
        if method != "POST" or not path.endswith("/jobs") or answered:
            return None
        answered.append(path)
        return 200, {"Content-Type": "application/json"}, plain_answer("img-00002", "job-of-another-row")

    with HostileApi(KEY, intercept=lost) as api:
        led = Ledger.open(tmp_path / "l.db")
        try:
            run_upload(
                led,
                write_images(tmp_path / "m.csv", 3),
                ManifestOptions(project_id="proj", work_flow_id="wf", batch_id=BATCH),
                base_url=api.base_url,
                api_key=KEY,
                run_options=RunOptions(concurrency=1, max_attempts=1, late_grace=0.5),
                handle_signals=False,
            )
        finally:
            led.close()
        got = rows(tmp_path / "l.db")
        assert (got["img-00000"]["status"], got["img-00000"]["error_code"]) == ("failed", "mismatched_answer")
        assert "img-00000" not in api.jobs
        assert {k: got[k]["status"] for k in ("img-00001", "img-00002")} == dict.fromkeys(
            ("img-00001", "img-00002"), "succeeded"
        )


def test_reconcile_says_which_rows_it_made_pending_again(tmp_path: Path) -> None:
    """A row left uncertain after a mismatched answer, that the batch listing does not show: reconcile makes it
    pending again (it has attempts left) and says so, for the next run to send."""
    ledger_path = tmp_path / "l.db"
    manifest = write_images(tmp_path / "m.csv", 2)
    load = ["load", str(manifest), "--project-id", "proj", "--work-flow-id", "wf", "--batch-id", BATCH]
    assert invoke(*load, "--ledger", str(ledger_path)).exit_code == 0
    led = Ledger.open(str(ledger_path))
    try:
        owner = led.register_worker()
        (claim,) = led.claim(owner, 1, 60)
        led.record([Result(claim.id, claim.lease_token, Status.UNCERTAIN, error_code="mismatched_answer")])
    finally:
        led.close()
    with HostileApi(KEY) as api:
        common = ["--ledger", str(ledger_path), "--base-url", api.base_url]
        said = invoke("reconcile", *common)
        assert said.exit_code == 0, said.output
        assert "1 uncertain row resolved, 0 still uncertain." in said.stdout
        assert "1 row is pending again (their batch's listing did not show them" in said.stdout
        assert f"`uploader run --ledger {ledger_path} --base-url {api.base_url}` sends them" in said.stdout
        assert {r["status"] for r in rows(ledger_path).values()} == {"pending"}
        assert json.loads(invoke("reconcile", *common, "--json").stdout)["pending_again"] == 0  # nothing left
        done = invoke(*run_args(None, ledger_path, api))
        assert done.exit_code == 0, done.output
        assert {k: (r["status"], r["job_id"]) for k, r in rows(ledger_path).items()} == {
            k: ("succeeded", api.jobs[k]) for k in ("img-00000", "img-00001")
        }


# -- a job the API no longer knows ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["resource_error", "FS_0006"])
def test_sync_records_a_job_the_api_does_not_know_and_goes_on(tmp_path: Path, code: str) -> None:
    """A job deleted at the platform after the run (neither listed nor readable: GET job answers 404
    resource_error, or FS_0006 "job unit not found" as the sandbox does). Sync once stopped there; then it
    named the row but left it `succeeded` with its dead job_id, which `export` handed out. The project
    answers, so the job, not the project, is gone: sync names the row, records it `failed` (job_not_found,
    the job_id only in its message, its own payload in sent_hashes), checks the others and exits 3; `--watch`
    ends. The next sync no longer reads it (exit 0). A project that never answers still stops the sync (exit
    1). `retry --error-code job_not_found` and a run create the job again."""

    def unlisted_after_first(jobs: list[tuple[str, str]], token: str) -> dict[str, Any]:
        return one_page(jobs[:1], token)  # later rows are read on their own (GET job)

    with HostileApi(KEY, pages=unlisted_after_first) as api:
        ledger = tmp_path / "l.db"
        assert invoke(*run_args(write_images(tmp_path / "m.csv", 4), ledger, api)).exit_code == 0
        gone = api.jobs.pop("img-00001")
        if code == "FS_0006":
            unit = b'{"success": false, "error": {"code": "FS_0006", "message": "job unit not found"}}'
            api.intercept = lambda method, path, count: (404, {}, unit) if path.endswith(f"/jobs/{gone}") else None
        common = ["--ledger", str(ledger), "--base-url", api.base_url]
        said = invoke("sync", *common, "--watch", "0.1")  # ends: no later round can make that job final
        assert said.exit_code == 3, said.output
        assert f"the API does not know the job of 1 row: img-00001 (job {gone})" in said.stderr
        assert "recorded as failed (job_not_found" in said.stderr
        got = rows(ledger)
        lost = got["img-00001"]
        assert (lost["status"], lost["error_code"], lost["job_id"], lost["origin"]) == (
            "failed",
            "job_not_found",
            None,
            None,
        )
        assert gone in lost["error_message"] and lost["sent_hashes"] == lost["body_hash"]
        assert {k: got[k]["platform_status"] for k in ("img-00000", "img-00002", "img-00003")} == dict.fromkeys(
            ("img-00000", "img-00002", "img-00003"), "completed"
        )
        exported = invoke("export", "--ledger", str(ledger), "--format", "jsonl")
        mapping = {r["reference_id"]: (r["status"], r["job_id"]) for r in map(json.loads, exported.stdout.splitlines())}
        assert mapping["img-00001"] == ("failed", None) and gone not in {job for _, job in mapping.values()}
        document = json.loads(invoke("sync", *common, "--json").stdout)
        assert (document["jobs_not_found"], document["job_requests"], document["tracked"]) == (0, 2, 3)
        gone_project = b'{"success": false, "error": {"code": "resource_error", "message": "no such project"}}'
        api.intercept = lambda method, path, count: (404, {}, gone_project) if method == "GET" else None
        stopped = invoke("sync", *common)
        assert stopped.exit_code == 1 and "resource_error" in stopped.output
        api.intercept = None
        again = invoke("retry", "--ledger", str(ledger), "--error-code", "job_not_found")
        assert again.exit_code == 0, again.output
        assert invoke(*run_args(None, ledger, api)).exit_code == 0
        back = rows(ledger)["img-00001"]
        assert (back["status"], back["job_id"], back["origin"]) == ("succeeded", api.jobs["img-00001"], "created")
        assert back["job_id"] != gone and api.created["img-00001"] == 2


def test_reconcile_learns_the_default_batch_from_another_job_when_the_first_one_asked_is_gone(tmp_path: Path) -> None:
    """The default batch's id is learnt from a GET of a job known to be in it. When the platform had deleted
    that job (FS_0006), the lookup stopped there (exit 1), every time, and the uncertain row was never settled;
    now another job is asked and the listing settles the row. (The gone job is `sync`'s to record.)"""
    ledger = tmp_path / "l.db"
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        args = ["run", str(write_images(tmp_path / "m.csv", 4)), "--project-id", "proj", "--work-flow-id", "wf"]
        sent = invoke(*args, "--ledger", str(ledger), "--base-url", box.base_url, "--default-batch", "--quiet")
        assert sent.exit_code == 0, sent.output
        before = rows(ledger)
        with sqlite3.connect(ledger) as db:  # its answer lost: the job exists, the ledger does not know its id
            db.execute(
                "UPDATE jobs SET status = 'uncertain', job_id = NULL, origin = NULL, error_code = 'mismatched_answer', "
                "sent_hashes = body_hash WHERE reference_id = 'img-00003'"
            )
        probe = Ledger.open(str(ledger))
        try:
            known = probe.known_job_in_default_batch("proj")
        finally:
            probe.close()
        assert known is not None and known[1] != "img-00003"
        assert httpx.delete(f"{box.base_url}/_sandbox/jobs/{known[2]}").status_code == 200
        said = invoke("reconcile", "--ledger", str(ledger), "--base-url", box.base_url)
        assert said.exit_code == 0, said.output
        after = rows(ledger)
        assert (after["img-00003"]["status"], after["img-00003"]["job_id"]) == (
            "succeeded",
            before["img-00003"]["job_id"],
        )
        assert after[known[1]]["status"] == "succeeded"
        synced = invoke("sync", "--ledger", str(ledger), "--base-url", box.base_url)
        assert synced.exit_code == 3 and f"{known[1]} (job {known[2]})" in synced.stderr, synced.output
        assert (rows(ledger)[known[1]]["status"], rows(ledger)[known[1]]["error_code"]) == ("failed", "job_not_found")
