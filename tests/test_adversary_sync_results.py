"""Adversarial `uploader sync --results` cases over real HTTP on loopback (tests/test_adversary_sync_results_server.py)
and a real SQLite ledger: after each scenario the ledger (platform_status, result_path, result_sha256, result,
result_error) is compared with what the server actually served and with the bytes on disk. The promise: the
ledger never says "result fetched" for a result that is not there, and never names a file whose bytes are not
the ones it recorded (the job's result as served)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from tests.test_adversary_sync_results_server import BATCH, Served, SyncApi, honest_job
from uploader.cli.commands import cli

KEY = "test-secret-key-7f3a9c"

#: Every column a sync writes, read with plain sqlite3 (not through the code under test).
_COLUMNS = "reference_id, job_id, status, error_code, platform_status, result_path, result_sha256, result, result_error"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"PLAYMENT_API_KEY": KEY}, catch_exceptions=False)


def ledger(path: Path) -> dict[str, dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        con.row_factory = sqlite3.Row
        return {r["reference_id"]: dict(r) for r in con.execute(f"SELECT {_COLUMNS} FROM jobs")}


def manifest(path: Path, refs: list[str]) -> Path:
    lines = [
        json.dumps({"reference_id": ref, "image_url": f"https://cdn.example.com/{i}.jpg"}) for i, ref in enumerate(refs)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def send(api: SyncApi, db: Path, manifest_path: Path) -> None:
    args = ["run", str(manifest_path), "--project-id", "proj", "--work-flow-id", "wf", "--ledger", str(db)]
    result = invoke(*args, "--batch-id", BATCH, "--base-url", api.base_url, "--quiet")
    assert result.exit_code == 0, result.output


def sync_args(api: SyncApi, db: Path, results: Path, *extra: str) -> list[str]:
    return ["sync", "--ledger", str(db), "--base-url", api.base_url, "--results", str(results), *extra]


def sync(api: SyncApi, db: Path, results: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = invoke(*sync_args(api, db, results, "--json", *extra))
    return result.exit_code, json.loads(result.stdout)


def sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_files_match_the_ledger(api: SyncApi, db: Path) -> None:
    """Each row naming a result file: the file is there, holds exactly the bytes whose sha256 the row records,
    and those are bytes the server served as that row's job's result."""
    for ref, row in ledger(db).items():
        if row["result_path"] is None:
            continue
        assert os.path.isfile(row["result_path"]), (ref, row)
        assert sha(row["result_path"]) == row["result_sha256"], (ref, "the file is not the bytes recorded", row)
        assert row["result_sha256"] in api.served_sha(row["job_id"]), (ref, "never served for this job", row)


# -- a result recorded for a job the API said is not final ----------------------------------------------


def test_a_job_read_saying_the_job_is_unfinished_is_not_recorded_as_its_result(tmp_path: Path) -> None:
    """FINDING. The listing says `completed`; the GET job that sync makes to find the result's URL answers
    `status: in_progress, result: null` (the job was reopened for review between the two reads, or the
    listing lags). sync ignores the status in that answer and records `result = "null"` as the job's fetched
    result (`results_fetched: 2`, platform_status `completed`). Worse, once the platform has the real result,
    the next sync fetches nothing: the row "has" its result. A user waiting for every result to export
    annotations gets `null` for a job the API itself said was unfinished, and never the real annotations.
    Suspect: uploader/send/sync.py:_Sync.result (reads `result` of the job answer, never its `status`)."""
    unfinished = {"on": True}

    def job(api: SyncApi, job_id: str, reference_id: str) -> dict[str, Any]:
        if unfinished["on"]:
            return {"job_id": job_id, "reference_id": reference_id, "batch_id": BATCH, "status": "in_progress"}
        return honest_job(api, job_id, reference_id)

    with SyncApi(KEY, job=job) as api:
        db = tmp_path / "l.db"
        send(api, db, manifest(tmp_path / "m.jsonl", ["a", "b"]))
        results = tmp_path / "res"
        code, first = sync(api, db, results)
        state = ledger(db)
        unfinished["on"] = False
        code, second = sync(api, db, results)
        assert first["results_fetched"] == 0 and all(r["result"] is None for r in state.values()), (first, state)
        for ref, row in ledger(db).items():  # the real result, once there is one
            assert row["result_path"] is not None and row["result_sha256"] in api.served_sha(row["job_id"]), ref
        assert_files_match_the_ledger(api, db)


def test_a_listing_whose_later_page_calls_a_job_unfinished_leaves_it_no_result(tmp_path: Path) -> None:
    """FINDING. The listing's first page says each job is `completed`, a later page of the same listing says
    `in_progress` (statuses that flip between pages). sync records `in_progress`, yet keeps the result it
    fetched for `completed` meanwhile: the ledger ends with platform_status `in_progress` AND a result file,
    `results: 2` in the summary, and `export --status in_progress` lists result paths. The next sync, which
    still sees `in_progress`, keeps them too. The documented rule "a change of status forgets the result
    recorded for the earlier one" is broken whenever the change arrives while the download is in flight.
    Suspect: uploader/ledger/tracking.py:record_results (writes the result whatever the row's status is now;
    no check that the status it was fetched for is still the row's) / uploader/send/sync.py:_Sync.record_group."""

    def flipping(api: SyncApi, jobs: list[tuple[str, str]], token: str) -> dict[str, Any]:
        word = "completed" if token == "" else "in_progress"
        listed = [{"id": job, "reference_id": ref, "status": word} for ref, job in jobs]
        return {"id": BATCH, "jobs": listed, "next_page_token": "p2" if token == "" else ""}

    with SyncApi(KEY, pages=flipping) as api:
        db = tmp_path / "l.db"
        send(api, db, manifest(tmp_path / "m.jsonl", ["a", "b"]))
        api.result_delay = 0.5  # the second page is read while the downloads are in flight
        results = tmp_path / "res"
        code, doc = sync(api, db, results)
        assert code == 0, doc
        rows = ledger(db)
        assert {r["platform_status"] for r in rows.values()} == {"in_progress"}, rows
        assert all(r["result_path"] is None and r["result"] is None for r in rows.values()), rows
        assert doc["results"] == 0, doc


def test_a_page_naming_one_job_twice_with_two_statuses_is_not_taken_at_its_first_word(tmp_path: Path) -> None:
    """FINDING. One listing page names job x twice, for the same reference_id: first `completed`, then
    `in_progress`; the job read (GET job) says `in_progress`, no result. sync takes the page's first word:
    the ledger says `completed`, `final: 1`, and records a result (`null`, see the finding above). A page that
    names a job for two reference_ids is not believed (the row is read on its own), and `adopt` refuses a
    job a page names twice; a page that gives one job two statuses contradicts itself just as much.
    Suspect: uploader/ledger/tracking.py:record_listed (`named.setdefault` keeps the first entry; only a
    second reference_id marks the job as contradicted)."""

    def twice(api: SyncApi, jobs: list[tuple[str, str]], token: str) -> dict[str, Any]:
        listed = []
        for ref, job in jobs:
            listed += [{"id": job, "reference_id": ref, "status": s} for s in ("completed", "in_progress")]
        return {"id": BATCH, "jobs": listed, "next_page_token": ""}

    with SyncApi(KEY, pages=twice) as api:
        db = tmp_path / "l.db"
        send(api, db, manifest(tmp_path / "m.jsonl", ["x"]))
        api.status[api.jobs["x"]] = "in_progress"  # what GET job says
        code, doc = sync(api, db, tmp_path / "res")
        row = ledger(db)["x"]
        assert (row["platform_status"], row["result"], row["result_path"]) == ("in_progress", None, None), row
        assert doc["final"] == 0 and doc["results_fetched"] == 0, doc


def test_the_report_never_calls_statuses_fetched_results(tmp_path: Path) -> None:
    """FINDING. Every result download is refused (403): sync exits 3, `result_errors: 3`, no result fetched.
    `uploader report` then shows, under "On the platform", a table "Fetched | Rows" with `platform_status_at
    | 3`, and says nothing else about results: not how many were fetched (0), not that 3 failed, nor why.
    README: the report shows "the platform's status of jobs and results". A lead reading the page sees
    "Fetched 3" for a delivery where no annotation was downloaded. Suspect: uploader/ledger/report.py:
    _added_columns (any `..._at` column is counted as "Fetched"; result_path / result_error are never read)
    and uploader/cli/report.py:_platform."""
    import re

    with SyncApi(KEY) as api:
        db = tmp_path / "l.db"
        send(api, db, manifest(tmp_path / "m.jsonl", ["x", "y", "z"]))
        api.result_status = 403
        code, doc = sync(api, db, tmp_path / "res")
        assert code == 3 and doc["result_errors"] == 3 and doc["results"] == 0, doc
        page = tmp_path / "report.html"
        made = invoke("report", "--ledger", str(db), "-o", str(page))
        assert made.exit_code == 0, made.output
        html = page.read_text()
        section = re.sub(r"<svg.*?</svg>|<[^>]+>", " ", html[html.index("On the platform") :], flags=re.S)
        section = section[: section.index("How this report was made")]
        words = " ".join(section.split())
        assert not re.search(r"Fetched .*\b3\b", words), words
        assert "result" in words.lower(), words


# -- files the ledger names that hold other bytes --------------------------------------------------------


def test_two_ledgers_sharing_a_results_folder_fetch_again_by_turns(tmp_path: Path) -> None:
    """FINDING. README: a file found at a result's name is kept only when it holds the downloaded bytes; "two
    ledgers with a reference_id in common set each other's file aside and fetch it again by turns". Ledger A
    syncs `x` into res/ (res/x.json, A's job); ledger B (another project, same reference_id) syncs into the same
    folder: it sets A's file aside and writes its own. A syncs again: it fetches nothing, and its ledger still
    names res/x.json with A's sha256 while the file holds B's job's result. `export` of A hands out a path to
    another job's annotations; nothing ever says so.
    Suspect: uploader/send/sync.py:_Sync.result_present (only `os.path.isfile`; the recorded sha256 is never
    compared with the file)."""
    with SyncApi(KEY) as a, SyncApi(KEY) as b:
        db_a, db_b = tmp_path / "a.db", tmp_path / "b.db"
        send(a, db_a, manifest(tmp_path / "m.jsonl", ["x"]))
        send(b, db_b, manifest(tmp_path / "m.jsonl", ["x"]))
        results = tmp_path / "res"
        assert sync(a, db_a, results)[1]["results_fetched"] == 1
        assert sync(b, db_b, results)[1]["results_fetched"] == 1
        code, again = sync(a, db_a, results)
        assert code == 0, again
        row = ledger(db_a)["x"]
        assert json.loads(Path(row["result_path"]).read_text())["job_id"] == a.jobs["x"], (again, row)
        assert_files_match_the_ledger(a, db_a)


def test_a_gone_jobs_result_set_aside_never_overwrites_another_rows_result(tmp_path: Path) -> None:
    """FINDING. A deleted job's result file is set aside as `<ref>.gone-<job_id>.json`, by `os.replace`. That
    name is also the result file of the reference_id `<ref>.gone-<job_id>` (lower-case letters, digits, `.`
    and `-` are kept as they are). Row `x.gone-<J>` has its result recorded in that file; job J (row `x`) is
    deleted at the platform; sync sets `x.json` aside onto it: the other row's result is destroyed (README:
    "set aside ..., never deleted"), and its row still names the file with its own sha256 while the file holds
    job J's result; later syncs fetch nothing. Suspect: uploader/send/sync.py:set_aside (a set-aside name can be
    a result name; `os.replace` overwrites whatever is there)."""
    with SyncApi(KEY) as api:
        db = tmp_path / "l.db"
        send(api, db, manifest(tmp_path / "m.jsonl", ["x"]))
        other = f"x.gone-{api.jobs['x']}"
        send(api, db, manifest(tmp_path / "m2.jsonl", [other]))
        results = tmp_path / "res"
        assert sync(api, db, results)[1]["results_fetched"] == 2
        with api.lock:
            del api.jobs["x"]  # deleted at the platform: GET job answers FS_0006, no listing shows it
        code, doc = sync(api, db, results)
        assert code == 3 and doc["jobs_not_found"] == 1, doc
        sync(api, db, results)
        row = ledger(db)[other]
        assert json.loads(Path(row["result_path"]).read_text())["reference_id"] == other, row
        assert_files_match_the_ledger(api, db)


# -- the results folder's own oddities -------------------------------------------------------------------


def test_a_directory_at_a_results_name_is_that_rows_error_not_a_traceback(tmp_path: Path) -> None:
    """FINDING. A directory happens to exist at `res/x.json`. `uploader sync --results res` dies with a Python
    traceback (IsADirectoryError from `open(path, "rb")`), exit 1, and so does every rerun: the results of the
    other rows still to fetch are never fetched while that directory is there. Expected: one row's result
    error (recorded, exit 3), the others fetched, or one clear line. Suspect: uploader/send/sync.py:
    _Sync.download (only FileNotFoundError is expected when reading the file already there; an OSError escapes
    the worker, whose `except` takes ApiUnreachableError alone).
    Now nothing found in the folder is replaced: the row's result is written beside the directory, as
    `x+<sha256 prefix>.json`, and recorded there (better than an error: the result is fetched)."""
    with SyncApi(KEY) as api:
        db = tmp_path / "l.db"
        send(api, db, manifest(tmp_path / "m.jsonl", ["x", "y", "z"]))
        results = tmp_path / "res"
        (results / "x.json").mkdir(parents=True)
        done = subprocess.run(
            [sys.executable, "-m", "uploader", *sync_args(api, db, results)],
            env={**os.environ, "PLAYMENT_API_KEY": KEY},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in done.stderr, done.stderr[-600:]
        assert done.returncode == 0, (done.returncode, done.stderr[-600:])
        rows = ledger(db)
        assert (results / "x.json").is_dir(), "the directory found there is left as it was"
        assert rows["x"]["result_path"] == str(results / f"x+{rows['x']['result_sha256'][:16]}.json"), rows["x"]
        assert all(rows[ref]["result_path"] for ref in ("y", "z")), rows
        assert_files_match_the_ledger(api, db)


def test_reference_ids_odd_as_file_names_stay_in_the_folder_and_apart(tmp_path: Path) -> None:
    """Guard. reference_ids `..`, `.`, `a/b`, `../escape`, `A`, `a`, unicode, 255 characters, `CON`: each result
    is written inside the results folder under a name of its own (two names differing only by case never
    share a file), nothing is written outside it, and every file is the bytes recorded and served."""
    refs = ["..", ".", "a/b", "../escape", "A", "a", "é", "e\u0301", "r" * 255, "CON", "x.json", "x"]
    with SyncApi(KEY) as api:
        db = tmp_path / "l.db"
        send(api, db, manifest(tmp_path / "m.jsonl", refs))
        results = tmp_path / "deep" / "res"
        before = sorted(p.name for p in tmp_path.iterdir())
        code, doc = sync(api, db, results)
        assert code == 0 and doc["results_fetched"] == len(refs), doc
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "deep"])
        assert [p.name for p in (tmp_path / "deep").iterdir()] == ["res"]
        rows = ledger(db)
        paths = {row["result_path"] for row in rows.values()}
        assert len(paths) == len(refs)
        folder = os.path.realpath(results)
        assert all(os.path.dirname(p) == folder for p in paths), paths
        assert {name.casefold() for name in os.listdir(results)} == {os.path.basename(p).casefold() for p in paths}
        for ref, row in rows.items():
            assert json.loads(Path(row["result_path"]).read_text())["reference_id"] == ref
        assert_files_match_the_ledger(api, db)


def test_a_symlink_at_a_results_name_is_never_written_through(tmp_path: Path) -> None:
    """Guard. `res/x.json` is a symlink to a file outside the folder, `res/y.json` a dangling one, and the
    results folder itself is reached through a symlink. The outside file is never written (the link is set
    aside), every result lands inside the real folder, and a rerun through the link fetches nothing."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "res"
    link.symlink_to(real)
    outside = tmp_path / "mine.json"
    outside.write_text('{"mine": true}')
    (real / "x.json").symlink_to(outside)
    (real / "y.json").symlink_to(tmp_path / "nowhere.json")
    with SyncApi(KEY) as api:
        db = tmp_path / "l.db"
        send(api, db, manifest(tmp_path / "m.jsonl", ["x", "y"]))
        code, doc = sync(api, db, link)
        assert code == 0 and doc["results_fetched"] == 2, doc
        assert outside.read_text() == '{"mine": true}' and not (tmp_path / "nowhere.json").exists()
        for row in ledger(db).values():
            assert os.path.dirname(row["result_path"]) == str(real.resolve()) and not os.path.islink(row["result_path"])
        assert_files_match_the_ledger(api, db)
        assert sync(api, db, link)[1]["results_fetched"] == 0 and api.requests["result"] == 2


def test_a_final_job_that_goes_back_to_work_loses_its_result_and_file(tmp_path: Path) -> None:
    """Guard. completed (result fetched) -> in_progress: the row's result and its file are forgotten (the file
    removed before the ledger stops naming it); -> completed with a new result: fetched again, and the ledger
    names the new bytes."""
    with SyncApi(KEY) as api:
        db = tmp_path / "l.db"
        send(api, db, manifest(tmp_path / "m.jsonl", ["x"]))
        results = tmp_path / "res"
        assert sync(api, db, results)[1]["results_fetched"] == 1
        path = ledger(db)["x"]["result_path"]
        job = api.jobs["x"]
        api.status[job] = "in_progress"
        code, doc = sync(api, db, results)
        row = ledger(db)["x"]
        assert code == 0 and doc["final"] == 0, doc
        assert (row["platform_status"], row["result_path"], row["result_sha256"]) == ("in_progress", None, None)
        assert not os.path.exists(path)
        api.status[job] = "completed"
        api.result[job] = json.dumps({"job_id": job, "reference_id": "x", "version": 2}).encode()
        assert sync(api, db, results)[1]["results_fetched"] == 1
        assert json.loads(Path(ledger(db)["x"]["result_path"]).read_text())["version"] == 2
        assert_files_match_the_ledger(api, db)


# -- result answers that are not a result ----------------------------------------------------------------


class _Elsewhere(Served):
    """Another host: records every request's x-api-key and answers a result."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler

        self.keys: list[str | None] = []
        other = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                other.keys.append(self.headers.get("x-api-key"))
                raw = b'{"planted": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._serve(Handler)


def test_a_result_redirected_elsewhere_is_an_error_and_the_other_host_gets_nothing(tmp_path: Path) -> None:
    """Guard. Every result URL answers 302 to another host. Nothing follows it (the other host gets no request,
    let alone the key), each row records a result error and no file, exit 3; the key is in no ledger column."""
    with SyncApi(KEY) as api, _Elsewhere() as other:
        db = tmp_path / "l.db"
        send(api, db, manifest(tmp_path / "m.jsonl", ["x", "y"]))
        api.result_status = 302
        api.result_headers = {"Location": f"{other.base_url}/planted"}
        results = tmp_path / "res"
        code, doc = sync(api, db, results)
        assert code == 3 and doc["result_errors"] == 2, doc
        assert other.keys == [] and set(api.keys) == {None}
        rows = ledger(db)
        assert all(r["result_path"] is None and r["result"] is None and r["result_error"] for r in rows.values())
        assert not [p for p in results.iterdir() if not p.name.startswith(".")]
        assert KEY.encode() not in db.read_bytes()


def test_a_gzip_result_is_capped_inflated_and_recorded_as_served_inflated(tmp_path: Path) -> None:
    """Guard. A result served gzip-encoded: a small one is stored inflated and its sha256 is of the inflated
    bytes; one that inflates past --max-result-bytes (a few KiB on the wire) is a result error, no file."""
    with SyncApi(KEY) as api:
        db = tmp_path / "l.db"
        send(api, db, manifest(tmp_path / "m.jsonl", ["small", "bomb"]))
        small, bomb = api.jobs["small"], api.jobs["bomb"]
        plain = json.dumps({"job_id": small, "labels": list(range(50))}).encode()
        huge = b'{"pad": "' + b"a" * (4 << 20) + b'"}'
        api.result[small] = gzip.compress(plain)
        api.result[bomb] = gzip.compress(huge)
        api.result_headers = {"Content-Encoding": "gzip"}
        results = tmp_path / "res"
        code, doc = sync(api, db, results, "--max-result-bytes", str(1 << 20))
        rows = ledger(db)
        assert code == 3, doc
        assert Path(rows["small"]["result_path"]).read_bytes() == plain
        assert rows["small"]["result_sha256"] == hashlib.sha256(plain).hexdigest()
        assert rows["bomb"]["result_path"] is None and rows["bomb"]["result_error"], rows["bomb"]
        assert sorted(p.name for p in results.iterdir()) == ["small.json"]


# -- two syncs at once on one ledger and folder ----------------------------------------------------------

#: `uploader sync` in a process that stops at `HOOK` (sync._rename_all, or sync.record_results) until the file
#: named by SX_GO exists, after creating the file named by SX_AT: the moment another sync starts. Timing only.
_PAUSED = """
import os, sys, time
import uploader.send.sync as sync
hook = os.environ["SX_HOOK"]
real = getattr(sync, hook)
calls = [0]
def paused(*args, **kwargs):
    calls[0] += 1
    if calls[0] > int(os.environ.get("SX_SKIP", "0")):
        open(os.environ["SX_AT"], "w").close()
        while not os.path.exists(os.environ["SX_GO"]):
            time.sleep(0.02)
    return real(*args, **kwargs)
setattr(sync, hook, paused)
from uploader.cli import main
sys.argv = ["uploader", *sys.argv[1:]]
main()
"""


@contextlib.contextmanager
def paused_sync(tmp_path: Path, hook: str, args: list[str], skip: int = 0) -> Iterator[subprocess.Popen[str]]:
    """A sync process stopped at `hook` (after `skip` calls of it); yields once it got there (the file SX_GO
    lets it go on)."""
    at, go = tmp_path / "at", tmp_path / "go"
    env = {**os.environ, "PLAYMENT_API_KEY": KEY, "SX_HOOK": hook, "SX_AT": str(at), "SX_GO": str(go)}
    env["SX_SKIP"] = str(skip)
    proc = subprocess.Popen(
        [sys.executable, "-c", _PAUSED, *args, "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not at.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        yield proc
    finally:
        go.touch()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()


def test_a_sync_started_while_another_writes_its_files_does_not_crash_it(tmp_path: Path) -> None:
    """FINDING. Two `uploader sync --results res` on one ledger (a `--watch` in cron, and one typed by hand):
    the second removes every `.NAME.part` file at its start as "left by a killed sync" — but they are the
    first one's files being written, under the same names the second one uses. The first then dies with a
    Python traceback (FileNotFoundError from os.replace in `_rename_all`), exit 1. Seen without any hook in 3
    of 4 tries with three syncs of 300 results at once; the hook here only holds the first sync between its
    writes and its renames, so the race is hit every time. Suspect: uploader/send/sync.py:_Sync.run (removes
    other processes' live temporary files; no lock on the folder), _part (one temporary name per result, shared
    by every process).
    Now a sync writes and records only under the folder's lock (sync._lock; its first call is the start-up's
    clean-up): the first sync is held with its downloads in hand, just before it takes the lock to write them."""
    with SyncApi(KEY) as api:
        db = tmp_path / "l.db"
        send(api, db, manifest(tmp_path / "m.jsonl", ["x", "y"]))
        results = tmp_path / "res"
        with paused_sync(tmp_path, "_lock", sync_args(api, db, results), skip=1) as first:
            code, doc = sync(api, db, results)
            assert code == 0, doc
        out, err = first.communicate()
        assert "Traceback" not in err, err[-800:]
        assert first.returncode == 0, (first.returncode, err[-800:])
        assert all(row["result_path"] for row in ledger(db).values())
        assert_files_match_the_ledger(api, db)


def test_two_syncs_at_once_never_leave_the_ledger_naming_other_bytes(tmp_path: Path) -> None:
    """FINDING. Sync 1 downloads job x's result (completed, version 1), renames it into res/x.json and is about
    to record it. Meanwhile the job is rejected with a new result, and sync 2 (same ledger, same folder) sees
    `rejected`, downloads version 2, finds version 1 at res/x.json (no row records it yet), sets it aside, writes
    version 2 and records it. Sync 1 then records its own download: the row (platform_status `rejected`) names
    res/x.json with version 1's sha256 while the file holds version 2; every later sync keeps it as it is.
    The same interleaving without any hook, three syncs of 300 results whose bytes differ per request, left
    19 rows naming files that did not hold their recorded sha256. Suspect: uploader/ledger/tracking.py:
    record_results (records over a row that changed since the download began: no status or version check) with
    uploader/send/sync.py:_Sync.result_present (never compares the recorded sha256 with the file).
    Now writes and records happen under the folder's lock (sync._lock; its first call is the start-up's
    clean-up): sync 1 is held with version 1 in hand, just before it takes the lock to write and record it."""
    with SyncApi(KEY) as api:
        db = tmp_path / "l.db"
        send(api, db, manifest(tmp_path / "m.jsonl", ["x"]))
        results = tmp_path / "res"
        job = api.jobs["x"]
        with paused_sync(tmp_path, "_lock", sync_args(api, db, results), skip=1):
            api.status[job] = "rejected"
            api.result[job] = json.dumps({"job_id": job, "reference_id": "x", "version": 2}).encode()
            code, doc = sync(api, db, results)
            assert code == 0 and doc["results_fetched"] == 1, doc
        code, doc = sync(api, db, results)
        row = ledger(db)["x"]
        assert row["platform_status"] == "rejected"
        assert sha(row["result_path"]) == row["result_sha256"], ("the file is not what the ledger recorded", row)
        assert json.loads(Path(row["result_path"]).read_text())["version"] == 2, row
        assert_files_match_the_ledger(api, db)
