"""`uploader sync`: platform statuses from batch listings and results downloaded, over real HTTP to the sandbox."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_run import KEY, invoke, ledger_rows, run_args, write_images
from test_trust import rows

from uploader.cli.commands import EXIT_SOME_FAILED
from uploader.ledger.ledger import Ledger
from uploader.sandbox import Sandbox, SandboxConfig
from uploader.send import result_file_name


def _sent(tmp_path: Path, box: Sandbox, n: int) -> Path:
    ledger = tmp_path / "l.db"
    result = invoke(*run_args(write_images(tmp_path / "m.csv", n), ledger, box))
    assert result.exit_code == 0, result.output
    return ledger


def _sync(ledger: Path, box: Sandbox, *extra: str) -> tuple[int, dict[str, Any]]:
    result = invoke("sync", "--ledger", str(ledger), "--base-url", box.base_url, "--json", *extra)
    return result.exit_code, json.loads(result.stdout)


def test_result_file_names_are_safe_and_distinct() -> None:
    assert result_file_name("img-00001") == "img-00001.json"
    names = {result_file_name(r) for r in ["A", "a", "../x", "a/b", "a%2Fb", ".hidden", "é", "x" * 500, "x" * 501]}
    assert len(names) == 9
    assert all("/" not in n and not n.startswith(".") and len(n) < 200 for n in names)


@pytest.mark.slow
def test_sync_records_statuses_as_jobs_complete_and_fetches_each_result_once(tmp_path: Path) -> None:
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=3600)) as box:
        ledger = _sent(tmp_path, box, 12)
        code, doc = _sync(ledger, box, "--results", str(tmp_path / "res"))
        assert code == 0 and doc["tracked"] == 12 and doc["final"] == 0
        assert doc["by_status"] == {"created": 12} and doc["results_fetched"] == 0
        box.configure(complete_after_s=0, reject_rate=0.25)
        code, doc = _sync(ledger, box, "--results", str(tmp_path / "res"))
        assert code == 0 and doc["final"] == 12 and doc["changed"] == 12
        completed = doc["by_status"].get("completed", 0)
        assert completed + doc["by_status"].get("rejected", 0) == 12 and completed > 0
        assert doc["results_fetched"] == 12  # a rejected job's (empty) result is stored inline
        files = sorted(p.name for p in (tmp_path / "res").iterdir())
        assert len(files) == completed and box.stats()["result_requests"] == completed
        rows = ledger_rows(ledger)
        one = next(r for r in rows.values() if r["platform_status"] == "completed")
        assert json.loads(Path(one["result_path"]).read_text())["reference_id"] == one["reference_id"]
        code, doc = _sync(ledger, box, "--results", str(tmp_path / "res"))
        assert code == 0 and doc["changed"] == 0 and doc["results_fetched"] == 0
        assert box.stats()["result_requests"] == completed


def test_results_are_named_absolutely_and_a_missing_file_or_another_folder_is_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--results res` (relative) recorded `res/img.json` relative to wherever the sync ran: the ledger now names
    the absolute path. A result whose recorded file was deleted, or which a sync into another folder asks for,
    was never fetched again (the ledger said it had it): it now is, and the ledger names the new file; a file
    still in place is neither fetched nor rewritten."""
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0)) as box:
        ledger = _sent(tmp_path, box, 4)
        monkeypatch.chdir(tmp_path)
        code, doc = _sync(ledger, box, "--results", "res")
        assert code == 0 and doc["results_fetched"] == 4, doc
        paths = {ref: row["result_path"] for ref, row in ledger_rows(ledger).items()}
        assert all(p == str(tmp_path / "res" / f"{ref}.json") for ref, p in paths.items()), paths
        kept = (tmp_path / "res" / "img-00002.json").stat()
        (tmp_path / "res" / "img-00001.json").unlink()
        code, doc = _sync(ledger, box, "--results", str(tmp_path / "res"))
        assert code == 0 and doc["results_fetched"] == 1 and box.stats()["result_requests"] == 5, doc
        assert json.loads((tmp_path / "res" / "img-00001.json").read_text())["reference_id"] == "img-00001"
        again = (tmp_path / "res" / "img-00002.json").stat()
        assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
        code, doc = _sync(ledger, box, "--results", "elsewhere")
        assert code == 0 and doc["results_fetched"] == 4 and box.stats()["result_requests"] == 9, doc
        rows = ledger_rows(ledger)
        assert all(r["result_path"] == str(tmp_path / "elsewhere" / f"{ref}.json") for ref, r in rows.items())
        assert len(list((tmp_path / "res").iterdir())) == 4  # the first folder is left as it was
        code, doc = _sync(ledger, box, "--results", "elsewhere")
        assert code == 0 and doc["results_fetched"] == 0 and box.stats()["result_requests"] == 9, doc


def test_export_gives_a_result_given_inline_beside_the_files(tmp_path: Path) -> None:
    """A result the platform gives inline (a rejected job's, here) is in `export`'s `result` column; a
    downloaded one is named by `result_path` (its `result` empty). 20 jobs: the sandbox rejects by a hash of the
    (random) job_id, so with 6 none or all were rejected in about 3% of runs; with 20, about 2 in a million."""
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0, reject_rate=0.5, seed=3)) as box:
        ledger = _sent(tmp_path, box, 20)
        code, doc = _sync(ledger, box, "--results", str(tmp_path / "res"))
        assert code == 0 and doc["results_fetched"] == 20, doc
    out = tmp_path / "out.jsonl"
    assert invoke("export", "--ledger", str(ledger), "--format", "jsonl", "-o", str(out)).exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    with sqlite3.connect(ledger) as db:
        inline = dict(db.execute("SELECT reference_id, result FROM jobs WHERE result IS NOT NULL"))
    assert inline and len(inline) < 20, inline
    for row in rows:
        if row["reference_id"] in inline:
            assert row["result"] == inline[row["reference_id"]] and row["result_path"] is None, row
        else:
            assert row["result"] is None and row["result_path"], row


@pytest.mark.parametrize("page_size", [1, 100, 1000])
def test_statuses_cost_one_request_per_page(tmp_path: Path, page_size: int) -> None:
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0, page_size=page_size)) as box:
        ledger = _sent(tmp_path, box, 30)
        code, doc = _sync(ledger, box)
        assert code == 0 and doc["by_status"] == {"completed": 30}
        assert doc["listing_requests"] == math.ceil(30 / page_size) and doc["job_requests"] == 0


def test_unknown_status_words_are_kept_verbatim(tmp_path: Path) -> None:
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=1000, working_status="sent_for_qc_review")) as box:
        ledger = _sent(tmp_path, box, 5)
        app = box._engine.app  # type: ignore[union-attr]
        real = app.clock
        app.clock = lambda: real() + 600  # past halfway, not yet due
        code, doc = _sync(ledger, box, "--results", str(tmp_path / "res"))
        assert code == 0 and doc["by_status"] == {"sent_for_qc_review": 5} and doc["final"] == 0
        assert {r["platform_status"] for r in ledger_rows(ledger).values()} == {"sent_for_qc_review"}


@pytest.mark.parametrize("failure", ["403", "html"])
def test_a_result_url_that_fails_is_an_error_retried_by_the_next_sync(tmp_path: Path, failure: str) -> None:
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0, result_failure=failure)) as box:
        ledger = _sent(tmp_path, box, 3)
        code, doc = _sync(ledger, box, "--results", str(tmp_path / "res"))
        assert code == EXIT_SOME_FAILED and len(doc["failed_results"]) == 3
        assert doc["result_errors"] == 3 and doc["results_fetched"] == 0
        assert list((tmp_path / "res").iterdir()) == []
        assert all(r["result_error"] and not r["result_path"] for r in ledger_rows(ledger).values())
        box.configure(result_failure="")
        code, doc = _sync(ledger, box, "--results", str(tmp_path / "res"))
        assert code == 0 and doc["results_fetched"] == 3 and doc["results"] == 3
        assert all(r["result_path"] and not r["result_error"] for r in ledger_rows(ledger).values())


@pytest.mark.slow
def test_a_temporary_file_is_removed_and_a_file_no_row_records_is_never_taken_as_the_result(tmp_path: Path) -> None:
    """A kill's temporary file is removed. A file at a result's name that no row records (a killed sync's, or
    anyone's) is recorded as the job's result only when it holds the bytes the download has: this one does
    not, so it is left as it is (not this ledger's to replace) and the result written beside it as
    `<name>+<sha256 prefix>.json`. (It used to be recorded, unread, as the job's result.)"""
    import hashlib

    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0)) as box:
        ledger = _sent(tmp_path, box, 4)
        res = tmp_path / "res"
        res.mkdir()
        (res / ".img-00000.json.part").write_text('{"half')
        foreign = b'{"renamed": "before the kill"}'
        (res / "img-00001.json").write_bytes(foreign)
        code, doc = _sync(ledger, box, "--results", str(res))
        assert code == 0 and doc["results_fetched"] == 4
        recorded = _results_recorded(ledger)
        path, sha256 = recorded["img-00001"]
        assert path == str(res / f"img-00001+{sha256[:16]}.json")
        assert (res / "img-00001.json").read_bytes() == foreign
        assert sorted(p.name for p in res.iterdir()) == sorted(
            [f"img-0000{i}.json" for i in range(4)] + [Path(path).name]
        )
        assert box.stats()["result_requests"] == 4
        job_ids = {ref: row["job_id"] for ref, row in ledger_rows(ledger).items()}
        for ref, (path, sha256) in recorded.items():
            data = Path(path).read_bytes()
            assert json.loads(data)["job_id"] == job_ids[ref] and hashlib.sha256(data).hexdigest() == sha256


def _batch_of(box: Sandbox) -> str:
    batches = {j["batch_id"] for j in box.jobs()}
    assert len(batches) == 1
    return batches.pop()


def test_adopt_a_batch_created_by_another_ledger_then_run_sends_nothing(tmp_path: Path) -> None:
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        other = tmp_path / "other"
        other.mkdir()
        _sent(other, box, 6)  # another tool made these six jobs
        batch = _batch_of(box)
        manifest = write_images(tmp_path / "m.csv", 4)  # our manifest names four of them
        ledger = tmp_path / "mine.db"
        assert (
            invoke(
                "load",
                str(manifest),
                "--project-id",
                "proj",
                "--work-flow-id",
                "wf",
                "--ledger",
                str(ledger),
                "--quiet",
            ).exit_code
            == 0
        )
        result = invoke(
            "adopt",
            "--project-id",
            "proj",
            "--batch-id",
            batch,
            "--ledger",
            str(ledger),
            "--base-url",
            box.base_url,
            "--json",
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {
            "adopted": 4,
            "added": 2,
            "already_known": 0,
            "conflicts": [],
            "unfinished_listings": [],
        }
        rows = ledger_rows(ledger)
        created = {j["reference_id"]: j["job_id"] for j in box.jobs()}
        assert {k: r["job_id"] for k, r in rows.items()} == created
        assert {r["origin"] for r in rows.values()} == {"adopted"} and len(rows) == 6
        before = box.stats()["requests_total"]
        run = invoke(*run_args(manifest, ledger, box))
        assert run.exit_code == 0, run.output
        assert box.stats()["jobs_created"] == 6 and box.stats()["fs_0001_refusals"] == 0
        assert box.stats()["requests_total"] == before  # nothing sent


def test_adopt_reports_conflicts_and_changes_nothing_for_them(tmp_path: Path) -> None:
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        first = _sent(tmp_path, box, 3)  # our ledger: three jobs, with their job_ids
        batch = _batch_of(box)
        led = Ledger.open(first)
        try:
            with led.engine.begin() as conn:
                conn.exec_driver_sql("UPDATE jobs SET job_id = 'someone-else' WHERE reference_id = 'img-00001'")
        finally:
            led.close()
        result = invoke(
            "adopt",
            "--project-id",
            "proj",
            "--batch-id",
            batch,
            "--ledger",
            str(first),
            "--base-url",
            box.base_url,
            "--json",
        )
        assert result.exit_code == EXIT_SOME_FAILED
        doc = json.loads(result.stdout)
        assert doc["already_known"] == 2 and doc["adopted"] == 0
        assert [c["reference_id"] for c in doc["conflicts"]] == ["img-00001"]
        assert ledger_rows(first)["img-00001"]["job_id"] == "someone-else"


def test_status_of_a_ledger_never_synced_has_no_platform_line(tmp_path: Path) -> None:
    manifest = write_images(tmp_path / "m.csv", 3)
    ledger = tmp_path / "l.db"
    load = invoke("load", str(manifest), "--project-id", "p", "--work-flow-id", "w", "--ledger", str(ledger))
    assert load.exit_code == 0, load.output
    text = invoke("status", "--ledger", str(ledger)).stdout
    assert "3 jobs" in text and "on the platform" not in text, text


@pytest.mark.slow
def test_status_and_export_show_the_platform_status_and_result(tmp_path: Path) -> None:
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0, reject_rate=0.5)) as box:
        ledger = _sent(tmp_path, box, 8)
        code, doc = _sync(ledger, box, "--results", str(tmp_path / "res"))
        assert code == 0
    status = json.loads(invoke("status", "--ledger", str(ledger), "--json").stdout)
    assert status["platform"]["tracked"] == 8 and status["platform"]["final"] == 8
    text = invoke("status", "--ledger", str(ledger)).stdout
    assert "on the platform (last `uploader sync`):" in text
    result = invoke("export", "--ledger", str(ledger), "--status", "completed", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    completed = doc["by_status"].get("completed", 0)
    assert len(rows) == completed and all(r["platform_status"] == "completed" for r in rows)
    assert all(r["result_path"] and r["platform_status_at"] for r in rows)
    assert invoke("export", "--ledger", str(ledger), "--status", "bogus").exit_code == 2


@pytest.mark.slow
def test_a_sync_killed_while_downloading_leaves_no_partial_result_and_the_rerun_fetches_the_rest(
    tmp_path: Path,
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from waiting import wait_until

    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0)) as box:
        ledger = _sent(tmp_path, box, 120)
        box.configure(faults_on_all=True, latency_ms=40)  # slow every request, result URLs included
        res = tmp_path / "res"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uploader",
                "sync",
                "--ledger",
                str(ledger),
                "--base-url",
                box.base_url,
                "--results",
                str(res),
                "--concurrency",
                "4",
                "--quiet",
            ],
            env={**os.environ, "UPLOADER_API_KEY": KEY},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(
                lambda: res.is_dir() and len(list(res.glob("img-*.json"))) >= 10, "10 results written", timeout=30
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        written = list(res.glob("img-*.json"))
        assert 10 <= len(written) < 120
        for path in written:  # whole or absent: never half-written
            assert json.loads(path.read_text())["reference_id"] == path.stem
        # The kill may land between a group's renames and its record: those files are whole but not recorded,
        # so the rerun downloads them again, finds the same bytes and keeps the files (never rewrites them).
        recorded = _results_recorded(ledger)
        assert set(recorded) <= {p.stem for p in written}
        inodes = {p.name: p.stat().st_ino for p in written}
        fetched_before = box.stats()["result_requests"]
        box.configure(faults_on_all=False, latency_ms=0)
        code, doc = _sync(ledger, box, "--results", str(res))
        assert code == 0 and doc["results"] == 120
        assert sorted(p.name for p in res.iterdir()) == [f"img-{i:05d}.json" for i in range(120)]  # no .part left
        assert {name: (res / name).stat().st_ino for name in inodes} == inodes
        # The rerun fetched what was not recorded (the server may count up to 4 of the killed sync's requests late).
        assert 0 <= box.stats()["result_requests"] - fetched_before - (120 - len(recorded)) <= 4
        assert fetched_before <= 120  # the killed sync fetched each result at most once (downloads it held are lost)


#: `uploader sync` in a process that dies (as if killed) right after the first group's files are renamed into
#: place, before the group is recorded; groups of 8 results.
_DIE_AFTER_RENAMES = """
import os, sys
import uploader.send.sync as sync
renamed = sync._rename_all
def rename_then_die(*args):
    renamed(*args)
    os._exit(137)
sync._rename_all = rename_then_die
sync.GROUP = 8
from uploader.cli import main
sys.argv = ["uploader", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_sync_killed_between_a_groups_renames_and_its_record_keeps_the_files_and_fetches_each_once(
    tmp_path: Path,
) -> None:
    """A group's files are whole under their names before the ledger records them: a kill in between leaves
    files the ledger does not name yet; the rerun fetches every result again and keeps each such file, not
    rewritten, as it holds the download's bytes (a file no row records is never trusted unread)."""
    import hashlib
    import os
    import subprocess
    import sys

    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0)) as box:
        ledger = _sent(tmp_path, box, 40)
        res = tmp_path / "res"
        args = ["sync", "--ledger", str(ledger), "--base-url", box.base_url, "--results", str(res), "--quiet"]
        killed = subprocess.run(
            [sys.executable, "-c", _DIE_AFTER_RENAMES, *args, "--concurrency", "4"],
            env={**os.environ, "UPLOADER_API_KEY": KEY},
            capture_output=True,
            timeout=120,
        )
        assert killed.returncode == 137, killed.stderr.decode()
        written = sorted(p.name for p in res.iterdir() if not p.name.startswith("."))
        assert len(written) >= 8
        assert _results_recorded(ledger) == {}
        before = {name: (res / name).stat() for name in written}
        fetched_before = box.stats()["result_requests"]
        code, doc = _sync(ledger, box, "--results", str(res))
        assert code == 0 and doc["results"] == 40
        assert box.stats()["result_requests"] - fetched_before == 40
        for name, stat in before.items():  # kept as they were: the same file, not written again
            after = (res / name).stat()
            assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name
        recorded = _results_recorded(ledger)
        assert sorted(Path(path).name for path, _ in recorded.values()) == sorted(p.name for p in res.iterdir())
        for reference_id, (path, sha256) in recorded.items():
            data = Path(path).read_bytes()
            assert json.loads(data)["reference_id"] == reference_id and sha256 == hashlib.sha256(data).hexdigest()


def _results_recorded(ledger: Path) -> dict[str, tuple[str, str]]:
    """{reference_id: (result_path, result_sha256)} of the rows with a result recorded."""
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(ledger)) as conn:
        rows = conn.execute("SELECT reference_id, result_path, result_sha256 FROM jobs WHERE result_sha256 IS NOT NULL")
        return {ref: (path, sha) for ref, path, sha in rows}


@pytest.mark.slow
def test_watch_repeats_until_every_job_is_final(tmp_path: Path) -> None:
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=1.0, complete_jitter_s=0.3)) as box:
        ledger = _sent(tmp_path, box, 5)
        code, doc = _sync(ledger, box, "--watch", "0.2", "--results", str(tmp_path / "res"))
        assert code == 0 and doc["final"] == doc["tracked"] == 5 and doc["results"] == 5
        result = invoke("sync", "--ledger", str(ledger), "--base-url", box.base_url, "--watch")
        assert result.exit_code == 0 and "5 / 5 jobs final" in result.stdout  # all final: one round


def test_a_result_is_fetched_again_after_its_job_changed_status(tmp_path: Path) -> None:
    """completed → rejected → completed, each with a new result: each sync downloads the result of the
    status it records. (The file of the earlier status used to be kept as if a killed sync had left it.)"""
    import asyncio

    import httpx

    from uploader.api import ApiClient
    from uploader.send import sync_async

    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        ledger_path = _sent(tmp_path, box, 2)
        batch = _batch_of(box)
    jobs = {r["job_id"]: r["reference_id"] for r in ledger_rows(ledger_path).values()}
    platform = {"status": "completed", "version": 1}
    downloads: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/results/"):
            downloads.append(path)
            return httpx.Response(200, json={"job": path.rsplit("/", 1)[1], "version": platform["version"]})
        if path.endswith(f"/batch/{batch}"):
            listing = [{"id": j, "reference_id": r, "status": platform["status"]} for j, r in jobs.items()]
            return httpx.Response(200, json={"success": True, "data": {"jobs": listing, "next_page_token": ""}})
        job_id = path.rsplit("/", 1)[1]
        data = {"status": platform["status"], "batch_id": batch, "result": f"http://results.test/results/{job_id}"}
        return httpx.Response(200, json={"success": True, "data": data})

    res = tmp_path / "res"
    ledger = Ledger.open(str(ledger_path), create=False)
    try:
        for status, version in [("completed", 1), ("rejected", 2), ("completed", 3)]:
            platform.update(status=status, version=version)
            before = len(downloads)

            async def once() -> None:
                async with ApiClient("http://api.test", KEY, transport=httpx.MockTransport(handler)) as client:
                    report = await sync_async(ledger, client, res)
                    assert report.results == 2 and not report.result_errors

            asyncio.run(once())
            assert len(downloads) - before == 2
            for row in ledger_rows(ledger_path).values():
                assert row["platform_status"] == status
                document = json.loads(Path(row["result_path"]).read_text())
                assert document == {"job": row["job_id"], "version": version}
        assert sorted(p.name for p in res.iterdir()) == sorted(result_file_name(r) for r in jobs.values())
    finally:
        ledger.close()


def _arrivals(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When each request reached the sandbox (its clock), recorded from the next sandbox started."""
    import time

    from uploader.sandbox.app import SandboxApp

    times: list[float] = []
    real = SandboxApp.handle

    async def handle(self: SandboxApp, request: Any) -> Any:
        if not request.path.startswith("/_sandbox/") or request.path.startswith("/_sandbox/results/"):
            times.append(time.monotonic())
        return await real(self, request)

    monkeypatch.setattr(SandboxApp, "handle", handle)
    return times


def _busiest_second(times: list[float]) -> int:
    return max((sum(s <= t < s + 1.0 for t in times) for s in times), default=0)


def test_sync_rate_caps_the_requests_the_sandbox_sees_in_any_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--rate 5: listing pages, job reads and result downloads together, never 6 within one second."""
    times = _arrivals(monkeypatch)
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0, page_size=2)) as box:
        ledger = _sent(tmp_path, box, 4)
        del times[:]
        code, doc = _sync(ledger, box, "--results", str(tmp_path / "res"), "--rate", "5")
        assert code == 0 and doc["results_fetched"] == 4
    assert len(times) == 2 + 4 + 4  # two pages, then a job read and a download per result
    assert _busiest_second(times) <= 5


def test_adopt_rate_caps_the_listing_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    times = _arrivals(monkeypatch)
    with Sandbox(SandboxConfig(api_key=KEY, page_size=1)) as box:
        _sent(tmp_path, box, 4)
        del times[:]
        result = invoke(
            "adopt",
            "--ledger",
            str(tmp_path / "other.db"),
            "--base-url",
            box.base_url,
            "--project-id",
            "proj",
            "--batch-id",
            _batch_of(box),
            "--rate",
            "2",
        )
        assert result.exit_code == 0, result.output
    assert len(times) == 4 and _busiest_second(times) <= 2


def test_the_sync_display_is_a_bar_of_final_jobs_on_a_terminal_lines_otherwise_nothing_with_quiet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from uploader.cli.output import SyncDisplay
    from uploader.send import SyncReport

    report = SyncReport(tracked=10, final=4, checked=7, results=3)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with SyncDisplay(quiet=False) as display:
        display.update(report)
        assert display.bar is not None and (display.bar.n, display.bar.total) == (4, 10)
        report.final = 9
        display.update(report)
        assert display.bar.n == 9 and "results=3" in str(display.bar)
    assert display.bar is None and "9/10" in capsys.readouterr().err
    with SyncDisplay(quiet=True, silent=True) as display:  # -q
        display.update(report)
        assert display.bar is None
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with SyncDisplay(quiet=False) as display:
        display.update(report)
        assert display.bar is None
        report.final, report.results = 10, 4
        display.update(report)  # within 5 s of the last line: not printed until the display closes
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["9/10 final: checked 7, results 3, failed 0", "10/10 final: checked 7, results 4, failed 0"]


def test_the_last_progress_a_sync_shows_has_the_counts_of_its_summary(tmp_path: Path) -> None:
    """The results recorded at the end (fewer than a group) reach the display too: its last line is not
    behind the summary."""
    from uploader.send import sync_ledger

    seen: list[tuple[int, int, int]] = []
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0)) as box:
        path = _sent(tmp_path, box, 5)
        ledger = Ledger.open(path)
        try:
            report = sync_ledger(
                ledger,
                base_url=box.base_url,
                api_key=KEY,
                results_dir=tmp_path / "res",
                on_progress=lambda r: seen.append((r.final, r.checked, r.results)),
            )
        finally:
            ledger.close()
    assert report.results == 5 and seen[-1] == (report.final, report.checked, report.results) == (5, 5, 5)


def test_sync_shows_progress_on_stderr_unless_quiet(tmp_path: Path) -> None:
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0)) as box:
        ledger = _sent(tmp_path, box, 3)
        args = ("sync", "--ledger", str(ledger), "--base-url", box.base_url)
        loud = invoke(*args)
        quiet = invoke(*args, "-q")
    assert loud.exit_code == 0 and "/3 final: checked" in loud.stderr
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_a_sync_reads_the_ledger_through_a_small_page_cache_then_gives_the_connection_its_own_back(
    tmp_path: Path,
) -> None:
    """The engine's 32 MiB cache made a sync's peak memory follow the ledger's size (87 MiB at 10k rows,
    122 at 100k); a sync's connections use 2 MiB and get their own size back when they return to the pool."""
    from sqlalchemy import text

    from uploader.ledger import small_page_cache

    ledger = Ledger.open(str(tmp_path / "l.db"), create=True)
    try:

        def cache() -> int:
            with ledger.engine.connect() as conn:
                return int(conn.execute(text("PRAGMA cache_size")).scalar_one())

        own = cache()
        with small_page_cache(ledger.engine):
            assert cache() == -2048
        assert cache() == own != -2048
    finally:
        ledger.close()


def test_a_listed_page_updates_only_the_tracked_rows_of_its_project(tmp_path: Path) -> None:
    """record_listed looks rows up by job_id alone (the index it can use) and keeps the tracked rows of its
    project: a row of another project holding the same job_id, and an untracked row, are left alone. And
    tracked_rows, reading by id alone, yields the tracked rows of every project, in id order."""
    import contextlib
    import sqlite3

    from uploader.ledger import record_listed, tracked_rows, utcnow

    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        ledger_path = _sent(tmp_path, box, 3)
    rows = sorted(ledger_rows(ledger_path).values(), key=lambda r: r["reference_id"])
    tracked, untracked, twin = (r["job_id"] for r in rows)
    ref_of = {r["job_id"]: r["reference_id"] for r in rows}
    with contextlib.closing(sqlite3.connect(ledger_path)) as conn, conn:
        columns = [c[1] for c in conn.execute("PRAGMA table_info(jobs)") if c[1] not in ("id", "project_id")]
        names = ", ".join(columns)
        conn.execute(
            f"INSERT INTO jobs (project_id, {names}) SELECT 'other', {names} FROM jobs WHERE job_id = ?", (twin,)
        )
        conn.execute("DELETE FROM jobs WHERE project_id = 'proj' AND job_id = ?", (twin,))
        conn.execute("UPDATE jobs SET status = 'failed' WHERE job_id = ?", (untracked,))
    ledger = Ledger.open(str(ledger_path), create=False)
    try:
        listed = [(ref_of[job_id], job_id, "completed") for job_id in (tracked, untracked, twin)]
        page = record_listed(ledger.engine, "proj", listed, utcnow())
        for size in (1, 2, 1000):  # read by id, the untracked row in between skipped
            assert [row[3] for rows in tracked_rows(ledger.engine, size) for row in rows] == [tracked, twin]
    finally:
        ledger.close()
    assert len(page.seen) == 1 and page.changed == 1 and [row[3] for row in page.due] == [tracked]
    statuses = {(r["project_id"], r["job_id"]): r["platform_status"] for r in ledger_rows(ledger_path).values()}
    assert statuses == {("proj", tracked): "completed", ("proj", untracked): None, ("other", twin): None}


def test_a_sync_that_fails_midway_writes_and_records_the_results_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing's second page is refused (the key, FatalApiError) after the first page's results were
    downloaded and held, before the writer's group was due: on the way out they are written whole and
    recorded, so the next sync fetches none of them again."""
    import asyncio

    import httpx

    import uploader.send.sync as sync_module
    from uploader.api import ApiClient
    from uploader.errors import FatalApiError
    from uploader.send import sync_async

    monkeypatch.setattr(sync_module, "GROUP_SECONDS", 60.0)  # no group due by time: all held at the failure
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        ledger_path = _sent(tmp_path, box, 5)
        batch = _batch_of(box)
    jobs = {r["job_id"]: r["reference_id"] for r in ledger_rows(ledger_path).values()}
    downloads: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/results/"):
            downloads.append(path)
            return httpx.Response(200, json={"job": path.rsplit("/", 1)[1]})
        if path.endswith(f"/batch/{batch}"):
            if request.url.params.get("page_token") == "2":
                while len(downloads) < len(jobs):
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.5)  # the workers hold what they downloaded
                return httpx.Response(403, json={"success": False, "error": {"code": "FS_0003", "message": "no"}})
            listing = [{"id": j, "reference_id": r, "status": "completed"} for j, r in jobs.items()]
            return httpx.Response(200, json={"success": True, "data": {"jobs": listing, "next_page_token": "2"}})
        job_id = path.rsplit("/", 1)[1]
        data = {"status": "completed", "batch_id": batch, "result": f"http://results.test/results/{job_id}"}
        return httpx.Response(200, json={"success": True, "data": data})

    res = tmp_path / "res"
    ledger = Ledger.open(str(ledger_path), create=False)
    try:

        async def once() -> None:
            async with ApiClient("http://api.test", KEY, transport=httpx.MockTransport(handler)) as client:
                await sync_async(ledger, client, res, max_retry_after=0.01)

        with pytest.raises(FatalApiError):
            asyncio.run(once())
    finally:
        ledger.close()
    assert len(downloads) == len(jobs)
    recorded = _results_recorded(ledger_path)
    assert sorted(recorded) == sorted(jobs.values())
    assert sorted(p.name for p in res.iterdir()) == sorted(Path(path).name for path, _ in recorded.values())
    for job_id, reference_id in jobs.items():
        assert json.loads(Path(recorded[reference_id][0]).read_text()) == {"job": job_id}


def _default_batch_probe_deleted(tmp_path: Path, box: Sandbox) -> tuple[Path, tuple[int, str, str]]:
    """5 rows sent to the default batch; the job a sync would ask for the batch's id deleted at the platform."""
    ledger = tmp_path / "l.db"
    sent = invoke(*run_args(write_images(tmp_path / "m.csv", 5), ledger, box, "--default-batch"))
    assert sent.exit_code == 0, sent.output
    assert all(r["batch_id"] is None for r in ledger_rows(ledger).values())
    probe = Ledger.open(str(ledger))
    try:
        known = probe.known_job_in_default_batch("proj", ())
    finally:
        probe.close()
    assert known is not None
    assert httpx.delete(f"{box.base_url}/_sandbox/jobs/{known[2]}").status_code == 200
    return ledger, known


def test_a_gone_job_that_would_tell_the_default_batch_is_recorded_and_the_next_one_asked(tmp_path: Path) -> None:
    """The default batch's id is learnt from a GET of a job known to be in it. When that job was deleted at the
    platform, sync stopped with "cannot read" and no row was checked; now that job is recorded gone
    (failed, job_not_found), the next job of the batch is asked, and the others are listed (exit 3)."""
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        ledger, (_, reference_id, job_id) = _default_batch_probe_deleted(tmp_path, box)
        code, doc = _sync(ledger, box)
        assert code == EXIT_SOME_FAILED and doc["jobs_not_found"] == 1
        assert doc["jobs_not_found_examples"] == [{"reference_id": reference_id, "job_id": job_id}]
        assert doc["batches"] == 1 and doc["listing_requests"] >= 1 and doc["tracked"] == 4
        after = ledger_rows(ledger)
        assert (after[reference_id]["status"], after[reference_id]["error_code"]) == ("failed", "job_not_found")
        assert all(r["platform_status"] for ref, r in after.items() if ref != reference_id)


def test_the_default_batch_probe_passes_over_a_gone_job_even_when_its_row_was_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """record_gone leaves a row that changed meanwhile (another job_id, no longer tracked); the probe must still
    ask another job next, not the same gone one again until its probes run out."""
    import uploader.send.sync as sync_module

    monkeypatch.setattr(sync_module, "record_gone", lambda *args, **kwargs: 0)  # every row "changed meanwhile"
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        ledger, known = _default_batch_probe_deleted(tmp_path, box)
        code, doc = _sync(ledger, box)
        assert code == EXIT_SOME_FAILED, doc
        assert doc["batches"] == 1, doc  # the batch was learnt from another job (the gone one is counted again)
        assert all(r["platform_status"] for ref, r in ledger_rows(ledger).items() if ref != known[1])


def test_record_gone_fails_only_the_tracked_row_that_still_holds_that_job_and_keeps_whose_sends_they_were(
    tmp_path: Path,
) -> None:
    """record_gone: a row is recorded only while it still holds the job_id found gone and is tracked (a run or
    an adopt may have changed it meanwhile); its own payload joins sent_hashes only when this ledger's send
    created the job (created, recovered), not for a job adopted or created elsewhere."""
    from uploader.ledger import GONE_CODE, record_gone, utcnow

    ledger = tmp_path / "l.db"
    load = ["load", str(write_images(tmp_path / "m.csv", 6)), "--project-id", "proj", "--work-flow-id", "wf"]
    assert invoke(*load, "--ledger", str(ledger)).exit_code == 0
    setup = [  # (reference_id, status, job_id, origin, sent_hashes)
        ("img-00000", "succeeded", "j0", "created", None),
        ("img-00001", "succeeded", "j1", "recovered", "old"),
        ("img-00002", "conflict", "j2", "pre-existing", None),
        ("img-00003", "succeeded", "j3", "adopted", None),
        ("img-00004", "succeeded", "j4-new", "created", None),  # holds another job_id by now
        ("img-00005", "failed", "j5", None, None),  # not tracked
    ]
    with sqlite3.connect(ledger) as db:
        for ref, status, job, origin, sent in setup:
            db.execute(
                "UPDATE jobs SET status = ?, job_id = ?, origin = ?, sent_hashes = ? WHERE reference_id = ?",
                (status, job, origin, sent, ref),
            )
        ids = dict(db.execute("SELECT reference_id, id FROM jobs"))
    led = Ledger.open(str(ledger))
    try:
        gone = [(ids[f"img-0000{i}"], job) for i, job in enumerate(["j0", "j1", "j2", "j3", "j4", "j5"])]
        assert record_gone(led.engine, gone, utcnow()) == 4
    finally:
        led.close()
    got = rows(ledger)
    for i in range(4):
        row = got[f"img-0000{i}"]
        assert (row["status"], row["error_code"], row["job_id"], row["origin"]) == ("failed", GONE_CODE, None, None)
        assert f"job j{i} " in row["error_message"]
    body = {ref: r["body_hash"] for ref, r in got.items()}
    assert got["img-00000"]["sent_hashes"] == body["img-00000"]
    assert got["img-00001"]["sent_hashes"] == f"old {body['img-00001']}"
    assert got["img-00002"]["sent_hashes"] is None and got["img-00003"]["sent_hashes"] is None
    assert (got["img-00004"]["status"], got["img-00004"]["job_id"]) == ("succeeded", "j4-new")
    assert (got["img-00005"]["status"], got["img-00005"]["job_id"]) == ("failed", "j5")


def test_two_projects_with_the_same_reference_ids_get_each_their_own_result(tmp_path: Path) -> None:
    """One ledger, two projects, the same reference_ids in both. Every result went to `<results>/<reference_id>
    .json`: the second project's download found the first's file there, kept it as a killed sync's, and the
    ledger recorded one project's result for the other's job. Now a ledger tracking several projects puts each
    result under `<results>/<project_id>/`, and every row's file holds its own job's result."""
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0)) as box:
        ledger = tmp_path / "l.db"
        manifest = write_images(tmp_path / "m.csv", 3)
        for project in ("proja", "projb"):
            args = ["run", str(manifest), "--project-id", project, "--work-flow-id", "wf", "--ledger", str(ledger)]
            assert invoke(*args, "--base-url", box.base_url, "--quiet").exit_code == 0
        code, doc = _sync(ledger, box, "--results", str(tmp_path / "res"))
        assert code == 0 and doc["results_fetched"] == 6, doc
        with sqlite3.connect(ledger) as db:
            recorded = db.execute("SELECT project_id, reference_id, job_id, result_path FROM jobs").fetchall()
        assert len(recorded) == 6
        for project, reference_id, job_id, path in recorded:
            assert path == str(tmp_path / "res" / project / f"{reference_id}.json")
            content = json.loads(Path(path).read_text())
            assert (content["job_id"], content["project_id"]) == (job_id, project)
        assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["proja", "projb"]
        code, doc = _sync(ledger, box, "--results", str(tmp_path / "res"))
        assert code == 0 and doc["results_fetched"] == 0 and box.stats()["result_requests"] == 6
