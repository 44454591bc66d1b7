"""Adversarial tests of resource failures and interrupts: a disk that fills up under `load`, `run`, `sync
--results`, `report` and a log file; a full temporary folder; stdout that is a full device, closed, or a pipe
nobody reads; a ledger on a read-only mount; SIGKILL in the middle of a reload and of `report -o`.

Everything goes through real `python -m uploader` processes, real SQLite files and the sandbox on loopback.
A full disk is a real one: a small tmpfs mounted for the test (skipped where it cannot be mounted), or
/dev/full.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_adversary_resources_server import (
    KEY,
    SmallDisk,
    assert_ledger_matches_server,
    env,
    integrity,
    ledger_rows,
    no_key_in,
    uploader,
    write_images,
)
from tests.waiting import wait_until
from uploader.sandbox import Sandbox, SandboxConfig

OPTS = ("--project-id", "res", "--work-flow-id", "wf")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str, str], SmallDisk]]:
    """Mount small tmpfs file systems in tmp_path (`small_disk(name, size)`); unmounted after the test."""
    mounted: list[SmallDisk] = []

    def make(name: str, size: str) -> SmallDisk:
        disk = SmallDisk(tmp_path / name, size)
        mounted.append(disk)
        return disk

    yield make
    for disk in mounted:
        disk.unmount()


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(api_key=KEY)) as sandbox:
        yield sandbox


def run(ledger: Path, box: Sandbox, *extra: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return uploader("run", *extra, "--ledger", ledger, "--base-url", box.base_url, "--concurrency", "8", **kwargs)


def no_traceback(done: subprocess.CompletedProcess[str]) -> bool:
    return "Traceback" not in done.stderr and "Logging error" not in done.stderr


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- a disk that fills up ------------------------------------------------------------------------------------


def test_a_reload_that_fills_the_disk_is_one_error_line_and_leaves_the_ledger_as_it_was(
    tmp_path: Path, small_disk: Callable[[str, str], SmallDisk]
) -> None:
    """A ledger of 3,000 rows on a disk with 300 KB left; a reload of 6,000 rows (3,000 new, 3,000 with a changed
    extra column) cannot be written: exit 1, "disk is full" on one line, the ledger file byte for byte as it was;
    once space is freed the same reload succeeds."""
    disk = small_disk("disk", "8m")
    ledger = disk.path / "ledger.db"
    assert uploader("load", write_images(tmp_path / "a.csv", 3000), *OPTS, "--ledger", ledger).returncode == 0
    bigger = write_images(tmp_path / "b.csv", 6000, pad=60)
    disk.fill(leave=300_000)
    before = sha256(ledger)
    done = uploader("load", bigger, *OPTS, "--ledger", ledger)
    assert done.returncode == 1, done.stderr
    assert no_traceback(done) and "disk is full" in done.stderr and len(error_lines(done)) == 1, done.stderr
    assert sha256(ledger) == before
    assert integrity(ledger) == "ok" and len(ledger_rows(ledger)) == 3000
    disk.empty_filler()
    again = uploader("load", bigger, *OPTS, "--ledger", ledger)
    assert again.returncode == 0, again.stderr
    assert len(ledger_rows(ledger)) == 6000


def test_a_new_ledger_whose_first_load_fills_the_disk_is_not_left_behind(
    tmp_path: Path, small_disk: Callable[[str, str], SmallDisk]
) -> None:
    """`uploader load` of 3,000 rows into a new ledger on a 256 KiB disk: exit 1, one line, and no ledger file left
    (as a load refused for a bad manifest leaves none: "all or nothing")."""
    disk = small_disk("disk", "256k")
    ledger = disk.path / "ledger.db"
    done = uploader("load", write_images(tmp_path / "a.csv", 3000), *OPTS, "--ledger", ledger)
    assert done.returncode == 1, done.stderr
    assert no_traceback(done) and "disk is full" in done.stderr, done.stderr
    assert sorted(p.name for p in disk.path.iterdir()) == []


def test_a_run_that_fills_the_disk_stops_with_one_line_and_the_rerun_creates_every_job_once(
    tmp_path: Path, box: Sandbox, small_disk: Callable[[str, str], SmallDisk]
) -> None:
    """A run of 3,000 rows whose ledger's disk has the ledger's size and 1 MB left (the WAL fills it after some
    hundred jobs): exit 1,
    one "disk is full" line saying the run stopped, no key anywhere; the rows whose answers could not be
    recorded stay in the ledger; after the disk grows, the rerun finishes and the server has every job once
    with its row's payload and job_id."""
    disk = small_disk("disk", "6m")
    ledger = disk.path / "ledger.db"
    assert uploader("load", write_images(tmp_path / "a.csv", 3000), *OPTS, "--ledger", ledger).returncode == 0
    disk.fill(leave=ledger.stat().st_size + 1_000_000)  # the run's first write touches every row (the batch)
    done = run(ledger, box)
    assert done.returncode == 1, done.stderr
    assert no_traceback(done) and "disk is full" in done.stderr, done.stderr
    assert no_key_in(done.stdout, done.stderr)
    assert box.stats()["jobs_created"] > 0, "the disk should fill up during the run, not before it"
    assert integrity(ledger) == "ok"
    disk.remount("size=64m")
    again = run(ledger, box, "--quiet")
    assert again.returncode == 0, again.stderr
    assert_ledger_matches_server(ledger, box, "res")
    logged = [p for p in disk.path.iterdir() if p.is_file() and p.name != "filler"]
    assert all(KEY.encode() not in p.read_bytes() for p in logged)


def _finished_jobs(tmp_path: Path, rows: int) -> tuple[Sandbox, Path]:
    box = Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0))
    box.start()
    ledger = tmp_path / "ledger.db"
    done = run(ledger, box, write_images(tmp_path / "a.csv", rows), *OPTS, "--quiet")
    assert done.returncode == 0, done.stderr
    return box, ledger


def _sync(ledger: Path, box: Sandbox, results: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return uploader("sync", "--ledger", ledger, "--base-url", box.base_url, "--results", results, *extra)


def test_sync_results_onto_a_full_disk_names_the_failures_and_the_next_sync_fetches_them(
    tmp_path: Path, small_disk: Callable[[str, str], SmallDisk]
) -> None:
    """`sync --results DIR` with DIR on a 64 KiB disk and 200 final jobs: exit 3, the failures name the disk
    being full, no file at a result's name is partial; after the disk grows, the next sync fetches every
    result (exit 0) and no temporary file is left."""
    box, ledger = _finished_jobs(tmp_path, 200)
    try:
        disk = small_disk("disk", "64k")
        results = disk.path / "results"
        done = _sync(ledger, box, results)
        assert done.returncode == 3, done.stderr
        assert no_traceback(done) and "No space left on device" in done.stderr, done.stderr[-2000:]
        assert no_key_in(done.stdout, done.stderr)
        for path in results.glob("img-*.json"):  # whole or absent
            assert json.loads(path.read_text())["reference_id"] == path.stem
        disk.remount("size=16m")
        again = _sync(ledger, box, results)
        assert again.returncode == 0, again.stderr
        assert sorted(p.name for p in results.iterdir()) == [f"img-{i:06d}.json" for i in range(200)]
        recorded = {r["reference_id"]: r["result_path"] for r in ledger_rows(ledger).values()}
        assert recorded == {f"img-{i:06d}": str(results / f"img-{i:06d}.json") for i in range(200)}
    finally:
        box.stop()


def test_a_sync_stopped_by_a_full_disk_leaves_no_temporary_files_taking_its_space(
    tmp_path: Path, small_disk: Callable[[str, str], SmallDisk]
) -> None:
    """After `sync --results DIR` met a full disk, DIR holds no `.part` file: the temporary files of the downloads
    it could not place are removed (left there, they keep the disk full, so every later result of the same sync
    fails too, and the space stays taken until some later sync into the same DIR)."""
    box, ledger = _finished_jobs(tmp_path, 200)
    try:
        disk = small_disk("disk", "64k")
        results = disk.path / "results"
        done = _sync(ledger, box, results)
        assert done.returncode == 3, done.stderr
        assert [p.name for p in results.iterdir() if p.name.endswith(".part")] == []
    finally:
        box.stop()


def test_a_quiet_sync_whose_results_fail_on_a_full_disk_still_says_so(
    tmp_path: Path, small_disk: Callable[[str, str], SmallDisk]
) -> None:
    """`sync --results DIR -q` with DIR on a full disk: `-q` "prints only errors, warnings and the final result",
    so the failed results (or at least their count and cause) are on stderr, not an exit 3 in silence."""
    box, ledger = _finished_jobs(tmp_path, 200)
    try:
        disk = small_disk("disk", "64k")
        done = _sync(ledger, box, disk.path / "results", "--quiet")
        assert done.returncode == 3, done.stderr
        assert "No space left on device" in done.stderr, (done.stdout, done.stderr)
    finally:
        box.stop()


def test_report_onto_a_full_disk_keeps_the_old_report(
    tmp_path: Path, box: Sandbox, small_disk: Callable[[str, str], SmallDisk]
) -> None:
    """`report -o FILE` with FILE on a full disk: exit 1, one line naming FILE, the old FILE byte for byte, no
    temporary file beside it, the ledger unchanged."""
    ledger = tmp_path / "ledger.db"
    assert run(ledger, box, write_images(tmp_path / "a.csv", 500), *OPTS, "--quiet").returncode == 0
    disk = small_disk("disk", "64k")
    page = disk.path / "report.html"
    page.write_bytes(b"the previous report\n")
    disk.fill()
    before = sha256(ledger)
    done = uploader("report", "--ledger", ledger, "-o", page)
    assert done.returncode == 1, done.stderr
    assert no_traceback(done) and f"cannot write {page}" in done.stderr and len(error_lines(done)) == 1, done.stderr
    assert page.read_bytes() == b"the previous report\n"
    assert sorted(p.name for p in disk.path.iterdir()) == ["filler", "report.html"]
    assert sha256(ledger) == before


# --- stdout: a full device, closed, a pipe nobody reads --------------------------------------------------------

READ_COMMANDS = {
    "status": ["status"],
    "status-json": ["status", "--json"],
    "export": ["export"],
    "export-jsonl": ["export", "--format", "jsonl"],
    "show": ["show", "img-000001"],
}


@pytest.fixture(scope="module")
def sent_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger whose 300 rows were all sent (read only by the tests that use it)."""
    folder = tmp_path_factory.mktemp("sent")
    with Sandbox(SandboxConfig(api_key=KEY)) as sandbox:
        ledger = folder / "ledger.db"
        done = run(ledger, sandbox, write_images(folder / "a.csv", 300), *OPTS, "--quiet")
        assert done.returncode == 0, done.stderr
    return ledger


def _dev_full() -> Path:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    return Path("/dev/full")


@pytest.mark.parametrize("command", list(READ_COMMANDS))
def test_output_to_a_full_device_is_one_error_line(command: str, sent_ledger: Path) -> None:
    """`uploader status > /dev/full` (any output on a full disk): exit 1 and one line saying stdout could not be
    written (no space left), not a Python traceback."""
    with open(_dev_full(), "w") as full:
        done = uploader(*READ_COMMANDS[command], "--ledger", sent_ledger, stdout=full)
    assert done.returncode == 1, done.stderr
    assert no_traceback(done) and len(error_lines(done)) == 1, done.stderr
    assert "no space left" in done.stderr.lower(), done.stderr


def test_a_run_whose_output_goes_to_a_full_device_still_records_every_job(tmp_path: Path, box: Sandbox) -> None:
    """`uploader run --json > /dev/full`: the output cannot be written, but every job the server created is
    recorded as it is (the same run again sends nothing)."""
    ledger = tmp_path / "ledger.db"
    with open(_dev_full(), "w") as full:
        first = uploader("load", write_images(tmp_path / "a.csv", 300), *OPTS, "--ledger", ledger)
        assert first.returncode == 0, first.stderr
        done = run(ledger, box, "--json", stdout=full)
    assert done.returncode != 0 and no_key_in(done.stderr)
    assert_ledger_matches_server(ledger, box, "res")
    requests = box.stats()["requests_total"]
    again = run(ledger, box, "--quiet")
    assert again.returncode == 0, again.stderr
    assert box.stats()["requests_total"] == requests


def test_a_run_whose_output_goes_to_a_full_device_says_so_in_one_line(tmp_path: Path, box: Sandbox) -> None:
    """`uploader run M --json > /dev/full`: one error line (no space left on stdout), not a traceback."""
    ledger = tmp_path / "ledger.db"
    assert uploader("load", write_images(tmp_path / "a.csv", 300), *OPTS, "--ledger", ledger).returncode == 0
    with open(_dev_full(), "w") as full:
        done = run(ledger, box, "--json", stdout=full)
    assert done.returncode == 1, done.stderr
    assert no_traceback(done) and "no space left" in error_lines(done)[-1].lower(), done.stderr


def _close_stdout() -> None:
    os.close(1)


@pytest.mark.parametrize("command", ["status", "export"])
def test_a_reading_command_with_stdout_closed_is_one_error_line(command: str, sent_ledger: Path) -> None:
    """`uploader status >&-` (cron, a daemon): exit 1 and one line on stderr, not a traceback."""
    done = uploader(command, "--ledger", sent_ledger, stdout=None, preexec_fn=_close_stdout)
    assert done.returncode == 1, done.stderr
    assert no_traceback(done) and len(error_lines(done)) == 1, done.stderr


def test_report_to_a_file_with_stdout_closed_succeeds(sent_ledger: Path, tmp_path: Path) -> None:
    """`uploader report -o FILE >&-` needs no stdout (its message goes to stderr): exit 0, FILE written."""
    page = tmp_path / "report.html"
    done = uploader("report", "--ledger", sent_ledger, "-o", page, stdout=None, preexec_fn=_close_stdout)
    assert page.read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert done.returncode == 0 and no_traceback(done), done.stderr


def _closed_pipe(args: list[str | Path]) -> subprocess.CompletedProcess[str]:
    """`uploader ARGS` writing into a pipe whose reader has already gone (its first write gets EPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return uploader(*args, stdout=write_end)
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "command", [*READ_COMMANDS, "report-json", "plan", "config"], ids=[*READ_COMMANDS, "report-json", "plan", "config"]
)
def test_a_closed_pipe_ends_each_command_quietly_with_141(command: str, sent_ledger: Path, tmp_path: Path) -> None:
    """`uploader status | head -0` (the reader gone before the first line): exit 141, nothing on stderr, and the
    ledger unchanged by a command that only reads."""
    args: list[str | Path] = {
        "report-json": ["report", "--json", "-o", tmp_path / "r.html"],
        "plan": ["plan", write_images(tmp_path / "p.csv", 5, prefix="new"), *OPTS],
        "config": ["config", "run"],
    }.get(command, READ_COMMANDS.get(command, []))  # type: ignore[arg-type]
    before = sha256(sent_ledger)
    done = _closed_pipe([*args, "--ledger", sent_ledger])
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""
    assert sha256(sent_ledger) == before


def test_a_run_into_a_closed_pipe_then_again_creates_every_job_once(tmp_path: Path, box: Sandbox) -> None:
    """`uploader run M … | head -0`: exit 141 and nothing on stderr; the ledger and server agree on whatever was
    done, and the same command with a reader finishes with every job created once."""
    ledger, manifest = tmp_path / "ledger.db", write_images(tmp_path / "a.csv", 300)
    args: list[str | Path] = ["run", manifest, *OPTS, "--ledger", ledger, "--base-url", box.base_url]
    done = _closed_pipe(args)
    assert done.returncode == 141 and done.stderr == "", done.stderr
    succeeded = {k for k, r in ledger_rows(ledger).items() if r["status"] == "succeeded"}
    assert {j["reference_id"] for j in box.jobs()} <= set(ledger_rows(ledger)) and succeeded <= {
        j["reference_id"] for j in box.jobs()
    }
    again = uploader(*args, "--quiet")
    assert again.returncode == 0, again.stderr
    assert_ledger_matches_server(ledger, box, "res")


# --- a read-only ledger ----------------------------------------------------------------------------------------


def _read_only_ledger(tmp_path: Path, box: Sandbox, small_disk: Callable[[str, str], SmallDisk]) -> Path:
    """A ledger (WAL mode: it has been run) with 50 sent rows and 50 pending ones, on a mount made read-only."""
    disk = small_disk("disk", "8m")
    ledger = disk.path / "ledger.db"
    assert run(ledger, box, write_images(tmp_path / "a.csv", 50), *OPTS, "--quiet").returncode == 0
    assert (
        uploader("load", write_images(tmp_path / "b.csv", 50, prefix="more"), *OPTS, "--ledger", ledger).returncode == 0
    )
    disk.remount("ro")
    return ledger


def test_a_run_on_a_read_only_ledger_creates_no_job(
    tmp_path: Path, box: Sandbox, small_disk: Callable[[str, str], SmallDisk]
) -> None:
    """`uploader run` on a ledger it cannot write: exit 1, one line, no traceback, and no job created (a job it
    could not record would be created again by the next run)."""
    ledger = _read_only_ledger(tmp_path, box, small_disk)
    created = box.stats()["jobs_created"]
    done = run(ledger, box)
    assert done.returncode == 1, done.stderr
    assert no_traceback(done) and len(error_lines(done)) == 1, done.stderr
    assert box.stats()["jobs_created"] == created


@pytest.mark.parametrize("command", ["status", "export", "report"])
def test_a_ledger_on_a_read_only_mount_is_named_in_the_error(
    command: str, tmp_path: Path, box: Sandbox, small_disk: Callable[[str, str], SmallDisk]
) -> None:
    """`uploader status` of a ledger on a read-only file system: exit 1 and one line naming the ledger file and
    saying it cannot be written (what to do: copy it somewhere writable), not a bare SQLite message."""
    ledger = _read_only_ledger(tmp_path, box, small_disk)
    args: list[str | Path] = [command] + (["-o", tmp_path / "r.html"] if command == "report" else [])
    done = uploader(*args, "--ledger", ledger)
    assert done.returncode == 1, done.stderr
    assert no_traceback(done) and len(error_lines(done)) == 1, done.stderr
    assert str(ledger) in done.stderr and "read-only" in done.stderr.lower(), done.stderr


# --- a full temporary folder -------------------------------------------------------------------------------------


def test_load_from_stdin_with_a_full_temporary_folder_is_one_error_line(
    tmp_path: Path, small_disk: Callable[[str, str], SmallDisk]
) -> None:
    """`uploader load - < big.csv` with TMPDIR on a full disk: exit 1, one line naming the temporary folder and
    the lack of space, no traceback, no ledger."""
    tmp = small_disk("tmp", "256k")
    manifest, ledger = write_images(tmp_path / "a.csv", 20_000), tmp_path / "ledger.db"
    with open(manifest, "rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "uploader", "load", "-", "--format", "csv", *OPTS, "--ledger", str(ledger)],
            env=env(TMPDIR=str(tmp.path)),
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert no_traceback(done) and len(error_lines(done)) == 1, done.stderr
    assert str(tmp.path) in done.stderr, done.stderr
    assert not ledger.exists()


def test_a_big_load_with_a_full_temporary_folder_names_that_folder_not_the_ledger(
    tmp_path: Path, small_disk: Callable[[str, str], SmallDisk]
) -> None:
    """A 6 MB manifest (read by the slice processes into scratch files under TMPDIR) with TMPDIR on a 256 KiB disk
    and the ledger on a roomy one: exit 1, no ledger, and the one line names the temporary folder, since freeing
    space where the ledger is would not help."""
    tmp = small_disk("tmp", "256k")
    manifest, ledger = write_images(tmp_path / "a.csv", 60_000, pad=40), tmp_path / "ledger.db"
    assert manifest.stat().st_size > 4 << 20
    done = uploader("load", manifest, *OPTS, "--ledger", ledger, TMPDIR=str(tmp.path))
    assert done.returncode == 1, done.stderr
    assert no_traceback(done) and len(error_lines(done)) == 1, done.stderr
    assert not ledger.exists()
    assert str(tmp.path) in done.stderr, done.stderr


# --- a log file that cannot be written ---------------------------------------------------------------------------


def test_a_log_file_on_a_full_disk_is_one_warning_and_the_run_still_succeeds(tmp_path: Path, box: Sandbox) -> None:
    """`uploader run M --log-file /dev/full` (its disk full): every job is created and recorded; one warning that
    the log cannot be written, not a traceback per request; exit 0 since every row succeeded."""
    ledger = tmp_path / "ledger.db"
    done = run(ledger, box, write_images(tmp_path / "a.csv", 200), *OPTS, "--log-file", _dev_full())
    assert_ledger_matches_server(ledger, box, "res")
    assert no_key_in(done.stdout, done.stderr)
    assert no_traceback(done) and "Logging error" not in done.stderr, done.stderr[:3000]
    assert [line for line in error_lines(done) if "log file" in line] == [
        f"warning: cannot write the log file {_dev_full()}: No space left on device; going on without it"
    ], done.stderr[:3000]
    assert done.returncode == 0, done.stderr[-2000:]


# --- SIGKILL in the middle ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("wal_bytes", [1, 4 << 20], ids=["early", "late"])
def test_sigkill_during_a_reload_leaves_the_old_or_the_new_ledger_and_the_rerun_creates_each_job_once(
    wal_bytes: int, tmp_path: Path, box: Sandbox
) -> None:
    """A ledger of 2,000 sent rows; a reload of a 12 MB manifest (those rows with a changed extra column, and 2,000
    new ones) is SIGKILLed once its WAL holds `wal_bytes`: the ledger is sound and holds either the old rows
    or all the new ones (never part of the load), the sent rows keep their job_ids; the next `run` finishes
    with every job created once."""
    ledger = tmp_path / "ledger.db"
    assert run(ledger, box, write_images(tmp_path / "a.csv", 2000), *OPTS, "--quiet").returncode == 0
    sent = {k: r["job_id"] for k, r in ledger_rows(ledger).items()}
    wide = write_images(tmp_path / "b.csv", 4000, pad=3000)
    wal = Path(f"{ledger}-wal")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uploader", "load", str(wide), *OPTS, "--ledger", str(ledger)],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: proc.poll() is not None or (wal.exists() and wal.stat().st_size >= wal_bytes),
            "the reload to write its WAL",
        )
    finally:
        proc.kill()
        proc.wait()
    status = uploader("status", "--json", "--ledger", ledger)
    assert status.returncode == 0, status.stderr
    assert integrity(ledger) == "ok"
    rows = ledger_rows(ledger)
    assert len(rows) in (2000, 4000), len(rows)
    assert json.loads(status.stdout)["total"] == len(rows)
    assert {k: rows[k]["job_id"] for k in sent} == sent
    notes = {len(json.loads(r["extra"])["note"]) for r in rows.values()}
    assert notes == ({10} if len(rows) == 2000 else {3000}), notes
    again = run(ledger, box, wide, *OPTS, "--quiet")
    assert again.returncode == 0, again.stderr
    assert_ledger_matches_server(ledger, box, "res")
    assert len(ledger_rows(ledger)) == 4000


def test_sigkill_of_report_never_leaves_a_partial_page(tmp_path: Path, sent_ledger: Path) -> None:
    """`report -o FILE` onto an existing FILE, SIGKILLed at several moments: FILE is the old bytes or a whole
    page, never part of one; the ledger is unchanged."""
    page = tmp_path / "report.html"
    before = sha256(sent_ledger)
    for delay in (0.05, 0.2, 0.4, 0.6, 0.9):
        page.write_bytes(b"the previous report\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "uploader", "report", "--ledger", str(sent_ledger), "-o", str(page)],
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        got = page.read_bytes()
        assert got == b"the previous report\n" or got.rstrip().endswith(b"</html>"), got[-200:]
    assert sha256(sent_ledger) == before
    for leftover in tmp_path.glob(".report.html.*.part"):
        leftover.unlink()
