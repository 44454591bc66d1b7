"""Files and ledgers (issue 12): where `export -o` writes, follow-up hints that name the same ledger,
`uploader forget`, per-project status, ledger paths that are not ledgers, and `-` as a manifest on stdin."""

from __future__ import annotations

import csv
import io
import os
import stat
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from uploader.cli.commands import cli

LOAD = ["--project-id", "proj", "--work-flow-id", "wf"]
ROWS = "reference_id,image_url\nr1,https://e.com/1.jpg\nr2,https://e.com/2.jpg\nr3,https://e.com/3.jpg\n"


def invoke(*args: str, input: str | bytes | None = None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def loaded(tmp_path: Path) -> str:
    """A ledger with three pending rows of project `proj`."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(ROWS)
    ledger = str(tmp_path / "l.db")
    result = invoke("load", str(manifest), *LOAD, "--ledger", ledger)
    assert result.exit_code == 0, result.output
    return ledger


def _reference_ids(text: str) -> list[str]:
    return [row["reference_id"] for row in csv.DictReader(io.StringIO(text))]


# -- export -o: what is written, and what is never replaced ---------------------------------------------------


def test_export_to_regular_file_is_atomic_and_keeps_its_mode(loaded, tmp_path):
    out = tmp_path / "jobs.csv"
    out.write_text("old\n")
    out.chmod(0o644)
    result = invoke("export", "--ledger", loaded, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert _reference_ids(out.read_text()) == ["r1", "r2", "r3"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_export_keeps_the_replaced_files_owner(loaded, tmp_path):
    out = tmp_path / "theirs.csv"
    out.write_text("old\n")
    os.chown(out, 4321, 4322)
    assert invoke("export", "--ledger", loaded, "-o", str(out)).exit_code == 0
    st = out.stat()
    assert (st.st_uid, st.st_gid) == (4321, 4322)
    assert _reference_ids(out.read_text()) == ["r1", "r2", "r3"]


def test_export_new_file_is_0600(loaded, tmp_path):
    out = tmp_path / "new.csv"
    assert invoke("export", "--ledger", loaded, "-o", str(out)).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_export_through_a_symlink_writes_its_target(loaded, tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    result = invoke("export", "--ledger", loaded, "-o", str(link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert _reference_ids(target.read_text()) == ["r1", "r2", "r3"]


def test_export_through_a_dangling_symlink_creates_its_target(loaded, tmp_path):
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "later.csv")
    assert invoke("export", "--ledger", loaded, "-o", str(link)).exit_code == 0
    assert link.is_symlink()
    assert _reference_ids((tmp_path / "later.csv").read_text()) == ["r1", "r2", "r3"]


def _reader(path: str, into: list[bytes]) -> threading.Thread:
    def read() -> None:
        with open(path, "rb") as f:
            into.append(f.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_export_to_a_fifo_writes_through_it(loaded, tmp_path):
    fifo = tmp_path / "myfifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = _reader(str(fifo), got)
    result = invoke("export", "--ledger", loaded, "-o", str(fifo))
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced"
    reader.join(10)
    assert _reference_ids(got[0].decode()) == ["r1", "r2", "r3"]


def test_export_to_dev_fd_writes_through_the_pipe(loaded):
    """What a shell passes for `-o >(wc -l)`: /dev/fd/N, a pipe."""
    r, w = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(open(r, "rb").read()), daemon=True)
    reader.start()
    try:
        result = invoke("export", "--ledger", loaded, "-o", f"/dev/fd/{w}")
    finally:
        os.close(w)
    reader.join(10)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert _reference_ids(got[0].decode()) == ["r1", "r2", "r3"]


def test_export_parquet_to_a_pipe(loaded):
    import pyarrow.parquet as pq

    r, w = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(open(r, "rb").read()), daemon=True)
    reader.start()
    try:
        result = invoke("export", "--ledger", loaded, "--format", "parquet", "-o", f"/dev/fd/{w}")
    finally:
        os.close(w)
    reader.join(10)
    assert result.exit_code == 0, result.output
    assert pq.read_table(io.BytesIO(got[0])).column("reference_id").to_pylist() == ["r1", "r2", "r3"]


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_export_to_a_character_device_is_not_replaced(loaded, tmp_path):
    node = tmp_path / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # the device of /dev/null, in a scratch folder
    result = invoke("export", "--ledger", loaded, "-o", str(node))
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.lstat(node).st_mode), "the device node was replaced"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_export_into_a_missing_folder_is_one_line_exit_1(loaded, tmp_path):
    out = tmp_path / "nodir" / "x.csv"
    result = invoke("export", "--ledger", loaded, "-o", str(out))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(out) in lines[0]
    assert "does not exist" in lines[0]


def test_export_to_a_folder_is_refused(loaded, tmp_path):
    result = invoke("export", "--ledger", loaded, "-o", str(tmp_path), "--format", "csv")
    assert result.exit_code in (1, 2)
    assert "Traceback" not in result.output
    assert tmp_path.is_dir()


def _ledger_bytes(ledger: str) -> dict[str, bytes | None]:
    return {s: Path(ledger + s).read_bytes() if Path(ledger + s).exists() else None for s in ("", "-wal", "-shm")}


@pytest.mark.parametrize(
    "command",
    [
        ["export", "-o", "{ledger}"],
        ["export", "-o", "{ledger}-wal", "--format", "csv"],
        ["export", "-o", "{link}", "--format", "jsonl"],
        ["export", "-o", "{hardlink}", "--format", "parquet"],
        ["report", "-o", "{ledger}"],
        ["status", "--log-file", "{ledger}"],
        ["run", "--sandbox", "--log-file", "{link}"],
        ["load", "{manifest}", *LOAD, "--log-file", "{manifest}"],
    ],
    ids=["export", "export-wal", "export-symlink", "export-hardlink", "report", "log", "log-symlink", "log-manifest"],
)
def test_an_output_that_is_the_ledger_or_the_manifest_is_refused_and_nothing_changes(loaded, tmp_path, command):
    """A slip such as `export -o uploader.db` would replace the ledger with a CSV: one line, exit 1, and the
    ledger (under any of its names) and the manifest stay byte for byte as they were."""
    (tmp_path / "link.db").symlink_to(loaded)
    os.link(loaded, tmp_path / "hard.db")
    manifest = tmp_path / "m.csv"
    before, manifest_before = _ledger_bytes(loaded), manifest.read_bytes()
    names = {"ledger": loaded, "link": str(tmp_path / "link.db"), "hardlink": str(tmp_path / "hard.db")}
    args = [a.format(manifest=manifest, **names) for a in command]
    result = invoke(*args[:1], "--ledger", loaded, *args[1:])
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "name another file" in line
    assert _ledger_bytes(loaded) == before and manifest.read_bytes() == manifest_before
    assert invoke("status", "--ledger", loaded).exit_code == 0


def test_report_is_written_whole_and_a_missing_folder_is_one_line(loaded, tmp_path):
    result = invoke("report", "--ledger", loaded, "-o", str(tmp_path / "nodir" / "r.html"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write {tmp_path / 'nodir' / 'r.html'}: folder {tmp_path / 'nodir'} does not exist"
    ]
    assert invoke("report", "--ledger", loaded, "-o", str(tmp_path / "r.html")).exit_code == 0
    assert (tmp_path / "r.html").read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or "tmp" in p.name] == []


def test_output_plan_decisions():
    from uploader.export import output_plan

    def st(mode: int) -> os.stat_result:
        return os.stat_result((mode, 0, 0, 1, 0, 0, 0, 0, 0, 0))

    assert output_plan("a.csv", None, "/x/a.csv", True).atomic
    assert output_plan("a.csv", None, "/x/a.csv", False).error
    regular = output_plan("l.csv", st(stat.S_IFREG | 0o640), "/x/real.csv", True)
    assert regular.atomic and regular.path == "/x/real.csv" and regular.mode == 0o640
    for kind in (stat.S_IFIFO, stat.S_IFCHR):
        plan = output_plan("/dev/fd/3", st(kind | 0o600), "/proc/1/fd/pipe:[1]", True)
        assert not plan.atomic and plan.path == "/dev/fd/3" and plan.error is None
    for kind in (stat.S_IFDIR, stat.S_IFBLK, stat.S_IFSOCK):
        assert output_plan("o", st(kind | 0o600), "/x/o", True).error


# -- follow-up hints repeat --ledger (and --base-url) ----------------------------------------------------------


def test_run_hint_repeats_the_ledger_shell_quoted(tmp_path):
    import shlex

    manifest = tmp_path / "m.csv"
    manifest.write_text(ROWS)
    ledger = str(tmp_path / "other ledger.db")
    result = invoke("run", str(manifest), *LOAD, "--ledger", ledger, "--sandbox")  # not -q: it drops the follow-up hint
    assert result.exit_code == 0, result.output
    assert f"uploader export -o jobs.csv --ledger {shlex.quote(ledger)}" in result.stdout
    # The hint works as printed: it exports this ledger.
    words = shlex.split(result.stdout.rsplit("with: ", 1)[1].strip())
    out = tmp_path / "jobs.csv"
    words[words.index("-o") + 1] = str(out)
    assert invoke(*words[1:]).exit_code == 0
    assert _reference_ids(out.read_text()) == ["r1", "r2", "r3"]


def test_hint_without_ledger_option_names_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text(ROWS)
    result = invoke("run", "m.csv", *LOAD, "--sandbox")
    assert result.exit_code == 0, result.output
    assert "with: uploader export -o jobs.csv\n" in result.stdout


def test_ledger_from_the_environment_is_not_repeated(tmp_path, monkeypatch):
    monkeypatch.setenv("UPLOADER_LEDGER", str(tmp_path / "env.db"))
    (tmp_path / "m.csv").write_text(ROWS)
    result = invoke("run", str(tmp_path / "m.csv"), *LOAD, "--sandbox")
    assert result.exit_code == 0, result.output
    assert "with: uploader export -o jobs.csv\n" in result.stdout


def test_status_and_retry_hints_repeat_the_ledger(loaded):
    import shlex

    from uploader.ledger import Ledger, Result, Status

    led = Ledger.open(loaded)
    owner = led.register_worker()
    claims = led.claim(owner, 10, 60)
    led.record(
        [
            Result(claims[0].id, claims[0].lease_token, Status.FAILED, error_code="FS_0007"),
            Result(claims[1].id, claims[1].lease_token, Status.UNCERTAIN, error_code="FS_0001"),
            Result(claims[2].id, claims[2].lease_token, Status.CONFLICT, error_code="payload_changed"),
        ]
    )
    led.stop_worker(owner)
    led.close()
    q = shlex.quote(loaded)
    status = invoke("status", "--ledger", loaded)
    assert f"`uploader retry --all --ledger {q}`" in status.stdout
    assert f"`uploader reconcile --ledger {q}`" in status.stdout
    assert f"`uploader export --status conflict --ledger {q}`" in status.stdout
    retry = invoke("retry", "--all", "--ledger", loaded)
    assert f"`uploader run --ledger {q}` sends them" in retry.stdout


def test_hint_repeats_base_url_for_reconcile_and_hides_a_password():
    from uploader.cli.hints import Repeat

    repeat = Repeat(ledger="postgresql+psycopg://u:s3cret@db:5432/x", base_url="https://api.example/v")
    assert repeat.command("reconcile", api=True) == (
        "uploader reconcile --ledger postgresql+psycopg://u:PASSWORD@db:5432/x --base-url https://api.example/v"
    )
    assert (
        repeat.command("export -o jobs.csv")
        == "uploader export -o jobs.csv --ledger postgresql+psycopg://u:PASSWORD@db:5432/x"
    )
    assert Repeat(ledger="a b.db").command("retry --all") == "uploader retry --all --ledger 'a b.db'"


# -- uploader forget ---------------------------------------------------------------------------------------------


def _settle(ledger: str, outcomes: dict[str, tuple]) -> None:
    """Claim the first rows (those named, in load order) and record `outcomes[reference_id]` = (Status,
    job_id); the other rows are never claimed (a released claim may have sent its row)."""
    from uploader.ledger import Ledger, Result

    led = Ledger.open(ledger)
    owner = led.register_worker()
    claims = led.claim(owner, len(outcomes), 60)
    assert sorted(c.reference_id for c in claims) == sorted(outcomes)
    led.record(
        [Result(c.id, c.lease_token, outcomes[c.reference_id][0], job_id=outcomes[c.reference_id][1]) for c in claims]
    )
    led.stop_worker(owner)
    led.close()


def _refs(ledger: str) -> list[str]:
    return _reference_ids(invoke("export", "--ledger", ledger).stdout)


def test_forget_needs_a_filter(loaded):
    result = invoke("forget", "--ledger", loaded)
    assert result.exit_code == 2 and "at least one filter" in result.output
    assert _refs(loaded) == ["r1", "r2", "r3"]


def test_forget_deletes_rows_without_a_job_and_keeps_created_ones(loaded):
    from uploader.ledger import Status

    _settle(loaded, {"r1": (Status.SUCCEEDED, "J1")})
    result = invoke("forget", "--project-id", "proj", "--ledger", loaded)
    assert result.exit_code == 0, result.output
    assert "forgot 2 rows: 2 that never created a job." in result.stdout
    assert "kept 1 row whose job exists or may exist at the API (1 with a job_id)" in result.stdout
    assert _refs(loaded) == ["r1"]


def test_forget_include_created_refuses_without_a_terminal(loaded):
    from uploader.ledger import Status

    _settle(loaded, {"r1": (Status.SUCCEEDED, "J1")})
    result = invoke("forget", "--project-id", "proj", "--include-created", "--ledger", loaded)
    assert result.exit_code == 2
    assert "1 row whose job exists (or may exist) at the API will be forgotten, 1 job_ids" in result.stderr
    assert "--yes" in result.stderr
    assert _refs(loaded) == ["r1", "r2", "r3"]


def test_forget_include_created_asks_on_a_terminal(loaded, monkeypatch):
    from uploader.cli import forgetting
    from uploader.ledger import Status

    _settle(loaded, {"r1": (Status.SUCCEEDED, "J1")})
    monkeypatch.setattr(forgetting, "_stdin_is_tty", lambda: True)
    no = invoke("forget", "--status", "succeeded", "--include-created", "--ledger", loaded, input="n\n")
    assert no.exit_code == 1 and _refs(loaded) == ["r1", "r2", "r3"]
    yes = invoke("forget", "--status", "succeeded", "--include-created", "--ledger", loaded, input="y\n")
    assert yes.exit_code == 0, yes.output
    assert "1 whose job exists or may (1 job_ids)" in yes.stdout
    assert _refs(loaded) == ["r2", "r3"]


def test_forget_include_created_with_yes(loaded):
    from uploader.ledger import Status

    _settle(loaded, {"r1": (Status.SUCCEEDED, "J1"), "r2": (Status.UNCERTAIN, None)})
    result = invoke("forget", "--project-id", "proj", "--include-created", "--yes", "--ledger", loaded)
    assert result.exit_code == 0, result.output
    assert "forgot 3 rows: 1 that never created a job, 2 whose job exists or may (1 job_ids)." in result.stdout
    assert _refs(loaded) == []


def test_forget_by_reference_id_file_and_manifest(loaded, tmp_path):
    refs = tmp_path / "refs.txt"
    refs.write_text("r2\r\n\nnot-there\n")
    result = invoke("forget", "--reference-id-file", str(refs), "--ledger", loaded)
    assert result.exit_code == 0 and "forgot 1 row:" in result.stdout
    assert _refs(loaded) == ["r1", "r3"]
    other = invoke("forget", "--manifest", str(tmp_path / "elsewhere.csv"), "--ledger", loaded)
    assert other.exit_code == 1 and "no load of that file is recorded in this ledger" in other.output
    assert str(tmp_path / "m.csv") in other.output and _refs(loaded) == ["r1", "r3"]  # its loads are named
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.csv").symlink_to(tmp_path / "m.csv")
    mine = invoke(
        "forget", "--manifest", str(tmp_path / "sub" / ".." / "m.csv"), "--status", "failed", "--ledger", loaded
    )
    assert mine.exit_code == 0 and "forgot 0 rows" in mine.stdout  # another spelling of the same file
    mine = invoke("forget", "--manifest", str(tmp_path / "link.csv"), "--ledger", loaded)
    assert mine.exit_code == 0 and "forgot 2 rows" in mine.stdout
    assert _refs(loaded) == []


def test_forgotten_rows_come_back_when_the_manifest_is_loaded_again(loaded, tmp_path):
    assert (
        invoke("forget", "--reference-id-file", str(_write(tmp_path / "r.txt", "r1\n")), "--ledger", loaded).exit_code
        == 0
    )
    again = invoke("load", str(tmp_path / "m.csv"), *LOAD, "--ledger", loaded)
    assert again.exit_code == 0, again.output
    assert "already loaded" not in again.stdout and "1 new" in again.stdout
    assert sorted(_refs(loaded)) == ["r1", "r2", "r3"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_forget_refuses_while_a_live_run_holds_rows(loaded):
    from uploader.ledger import Ledger

    led = Ledger.open(loaded)
    owner = led.register_worker()
    led.heartbeat(owner, 60, 0)
    assert led.claim(owner, 1, 60)
    try:
        result = invoke("forget", "--project-id", "proj", "--ledger", loaded)
        assert result.exit_code == 1 and "running `uploader run`" in result.stderr
        assert _refs(loaded) == ["r1", "r2", "r3"]
    finally:
        led.release(owner)
        led.stop_worker(owner)
        led.close()
    assert invoke("forget", "--project-id", "proj", "--ledger", loaded).exit_code == 0


# -- status per project; a run stopped by another project's rows -------------------------------------------------


def test_status_breaks_counts_down_by_project(loaded, tmp_path):
    import json

    other = _write(tmp_path / "o.csv", "reference_id,image_url\nx1,https://e.com/x.jpg\n")
    assert invoke("load", str(other), "--project-id", "old", "--work-flow-id", "wf", "--ledger", loaded).exit_code == 0
    text = invoke("status", "--ledger", loaded).stdout
    assert "2 projects:" in text
    assert "  old: 1 jobs (1 pending)" in text and "  proj: 3 jobs (3 pending)" in text
    data = json.loads(invoke("status", "--ledger", loaded, "--json").stdout)
    assert data["projects"]["old"]["pending"] == 1 and data["projects"]["proj"]["pending"] == 3
    single = tmp_path / "single.db"
    assert invoke("load", str(tmp_path / "m.csv"), *LOAD, "--ledger", str(single)).exit_code == 0
    assert "projects:" not in invoke("status", "--ledger", str(single)).stdout


@pytest.mark.parametrize("batch", [[], ["--default-batch"]], ids=["own-batch", "default-batch"])
def test_run_stopped_by_another_projects_rows_names_it_and_suggests_forget(loaded, tmp_path, batch):
    """Refused creating that project's batch, or (default batch) its first job: either way the message names
    the project whose rows stopped the run and how to forget them."""
    import shlex

    from uploader.sandbox import Sandbox, SandboxConfig

    other = _write(tmp_path / "o.csv", "reference_id,image_url\nx1,https://e.com/x.jpg\nx2,https://e.com/y.jpg\n")
    assert invoke("load", str(other), "--project-id", "old", "--work-flow-id", "wf", "--ledger", loaded).exit_code == 0
    with Sandbox(SandboxConfig(api_key="k", forbidden_projects=frozenset({"old"}))) as box:
        result = invoke(
            "run",
            str(tmp_path / "m.csv"),
            *LOAD,
            "--ledger",
            loaded,
            "--base-url",
            box.base_url,
            "--api-key",
            "k",
            "--quiet",
            "--concurrency",
            "1",
            *batch,
        )
    assert result.exit_code == 1, result.output
    assert "stopped by a row of project 'old'" in result.stderr and "holds 2 rows of that project" in result.stderr
    assert f"`uploader forget --project-id old --ledger {shlex.quote(loaded)}`" in result.stderr


# -- ledger paths that cannot hold a ledger -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["load", "status", "export"])
@pytest.mark.parametrize("ledger", ["FOLDER", ":memory:", "sqlite://", "sqlite:///:memory:", "sqlite:///FOLDER"])
def test_ledger_that_cannot_be_a_ledger_is_one_line_exit_1(tmp_path, monkeypatch, command, ledger):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text(ROWS)
    folder = tmp_path / "folder"
    folder.mkdir()
    ledger = ledger.replace("FOLDER", str(folder))
    args = ["load", "m.csv", *LOAD] if command == "load" else [command]
    result = CliRunner().invoke(cli, [*args, "--ledger", ledger])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ledger "), result.stderr
    assert ("in-memory" in lines[0]) != ("is a folder" in lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "m.csv"]
    assert list(folder.iterdir()) == []


# -- `-`: the manifest on stdin -----------------------------------------------------------------------------------


def _manifest_paths(ledger: str) -> list[str]:
    import sqlite3

    con = sqlite3.connect(ledger)
    try:
        return [p for (p,) in con.execute("SELECT path FROM manifests ORDER BY id")]
    finally:
        con.close()


def test_load_csv_from_stdin_is_recorded_as_stdin(tmp_path):
    ledger = str(tmp_path / "l.db")
    result = invoke("load", "-", *LOAD, "--ledger", ledger, input=ROWS)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("<stdin>: 3 rows: 3 new")
    assert _manifest_paths(ledger) == ["<stdin>"]
    assert _refs(ledger) == ["r1", "r2", "r3"]
    again = invoke("load", "-", *LOAD, "--ledger", ledger, input=ROWS)
    assert "<stdin>: already loaded" in again.stdout
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("uploader-stdin-*/stdin.csv"))
    forgot = invoke("forget", "--manifest", "-", "--ledger", ledger)
    assert forgot.exit_code == 0 and "forgot 3 rows" in forgot.stdout


def test_load_from_stdin_into_a_ledger_with_rows(loaded):
    more = "reference_id,image_url\nr3,https://e.com/3.jpg\nr4,https://e.com/4.jpg\n"
    result = invoke("load", "-", *LOAD, "--ledger", loaded, input=more)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("<stdin>: 2 rows: 1 new, 1 unchanged")
    assert _manifest_paths(loaded)[-1] == "<stdin>"
    assert _refs(loaded) == ["r1", "r2", "r3", "r4"]


def test_load_jsonl_from_stdin_is_sniffed(tmp_path):
    ledger = str(tmp_path / "l.db")
    lines = (
        '{"reference_id": "j1", "image_url": "https://e.com/1.jpg"}\n'
        '{"reference_id": "j2", "image_url": "https://e.com/2.jpg"}\n'
    )
    result = invoke("load", "-", *LOAD, "--ledger", ledger, input=lines)
    assert result.exit_code == 0, result.output
    assert _refs(ledger) == ["j1", "j2"]


def test_load_from_stdin_with_format(tmp_path):
    ledger = str(tmp_path / "l.db")
    tsv = "reference_id\timage_url\nt1\thttps://e.com/1.jpg\n"
    result = invoke("load", "-", *LOAD, "--format", "tsv", "--ledger", ledger, input=tsv)
    assert result.exit_code == 0, result.output
    assert _refs(ledger) == ["t1"]


def test_problems_in_stdin_name_stdin(tmp_path):
    ledger = tmp_path / "l.db"
    bad = "reference_id,image_url\nr1,https://e.com/1.jpg\nr2,not a url\n"
    result = invoke("load", "-", *LOAD, "--ledger", str(ledger), input=bad)
    assert result.exit_code == 1
    assert "<stdin>:3: column 'image_url'" in result.stderr
    assert "uploader-stdin-" not in result.output
    assert not ledger.exists()


def test_run_from_stdin(tmp_path):
    ledger = str(tmp_path / "l.db")
    result = invoke("run", "-", *LOAD, "--ledger", ledger, "--sandbox", input=ROWS)  # not -q: it drops the load report
    assert result.exit_code == 0, result.output
    assert "<stdin>: 3 rows: 3 new" in result.stdout
    assert _manifest_paths(ledger) == ["<stdin>"]
    assert "3 succeeded" in result.stdout


def test_sniff_format():
    from uploader.cli.stdin import sniff_format

    assert sniff_format(b"PAR1\x00") == "parquet"
    assert sniff_format(b'\xef\xbb\xbf  {"a": 1}\n') == "jsonl"
    assert sniff_format(b"a\tb\n1\t2\n") == "tsv"
    assert sniff_format(b"a,b\n1,2\n") == "csv"


def test_forget_rows_and_project_counts_on_every_engine(ledger, tmp_path):
    """The ledger side of `forget` and `status` per project, on SQLite and (when given) PostgreSQL."""
    from tests.conftest import fake_manifest
    from uploader.ledger import ForgetCounts, Result, Selection, Status, count_forget, forget_rows, project_counts
    from uploader.load.merge import load_manifest

    rows = [(f"r{i}", f"https://e.com/{i}.jpg") for i in range(700)]  # more reference_ids than one chunk
    load_manifest(ledger, fake_manifest(tmp_path, rows, project="a"), "o")
    load_manifest(ledger, fake_manifest(tmp_path, rows[:2], name="b.csv", project="b"), "o")
    assert {p: sum(c.values()) for p, c in project_counts(ledger.engine).items()} == {"a": 700, "b": 2}
    owner = ledger.register_worker()
    claim = ledger.claim(owner, 1, 60)[0]
    assert claim.project_id == "a"
    ledger.record([Result(claim.id, claim.lease_token, Status.SUCCEEDED, job_id="J")])
    ledger.stop_worker(owner)
    everything = Selection(project_id="a", reference_ids=tuple(r for r, _ in rows))
    assert count_forget(ledger.engine, everything) == ForgetCounts(699, 1, 1)
    assert forget_rows(ledger.engine, everything) == ForgetCounts(699, 0, 0)
    assert project_counts(ledger.engine)["a"]["succeeded"] == 1
    with pytest.raises(ValueError):
        forget_rows(ledger.engine, Selection())
    assert forget_rows(ledger.engine, everything, include_created=True) == ForgetCounts(0, 1, 1)
    assert list(project_counts(ledger.engine)) == ["b"]
