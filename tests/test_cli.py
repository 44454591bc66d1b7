"""The command line through click's runner, and the installed package from a built wheel."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from uploader.cli.commands import cli

SAMPLES = Path(__file__).resolve().parent.parent / "sample_manifests"
LOAD = ["--project-id", "proj", "--work-flow-id", "wf"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    "sample, rows",
    [
        ("images.csv", 12),
        ("images.parquet", 12),
        ("video_frames.csv", 3),
        ("video.jsonl", None),
        ("sensor.jsonl", None),
    ],
)
def test_load_every_sample_then_reload_is_a_no_op(tmp_path, sample, rows):
    ledger = str(tmp_path / "l.db")
    first = invoke("load", str(SAMPLES / sample), *LOAD, "--ledger", ledger)
    assert first.exit_code == 0, first.output
    assert " new," in first.output
    if rows is not None:
        assert f"{rows} rows: {rows} new" in first.output
    again = invoke("load", str(SAMPLES / sample), *LOAD, "--ledger", ledger)
    assert again.exit_code == 0 and "already loaded" in again.output
    status = json.loads(invoke("status", "--ledger", ledger, "--json").output)
    assert status["counts"]["pending"] == status["total"] > 0


def test_identical_reload_repeats_its_conflicts(tmp_path):
    """A file whose load found conflicts (rows already sent with another payload) says so again when it is
    loaded again, though that reload changes nothing."""
    from uploader.ledger.ledger import Ledger, Result
    from uploader.ledger.models import Status

    ledger = str(tmp_path / "l.db")
    first = tmp_path / "a.csv"
    first.write_text("reference_id,image_url\nr1,https://e.com/1.jpg\nr2,https://e.com/2.jpg\n")
    assert invoke("load", str(first), *LOAD, "--ledger", ledger).exit_code == 0
    led = Ledger.open(ledger)
    owner = led.register_worker()
    claim = next(c for c in led.claim(owner, 10, 60) if c.reference_id == "r1")
    led.record([Result(claim.id, claim.lease_token, Status.SUCCEEDED, job_id="J1")])
    led.release(owner)
    led.close()
    changed = tmp_path / "b.csv"
    changed.write_text("reference_id,image_url\nr1,https://e.com/1-v2.jpg\nr2,https://e.com/2.jpg\n")
    for attempt in ("first", "again"):
        result = CliRunner().invoke(cli, ["load", str(changed), *LOAD, "--ledger", ledger])
        assert result.exit_code == 0, result.output
        assert "conflicts: 1 row already sent with a different payload were left unchanged" in result.stderr
        assert "e.g. r1" in result.stderr
        assert ("already loaded" in result.stdout) == (attempt == "again")


def test_bad_manifest_exit_1_no_traceback_no_ledger_left(tmp_path):
    ledger = tmp_path / "l.db"
    result = invoke("load", str(SAMPLES / "broken_bad_rows.csv"), *LOAD, "--ledger", str(ledger))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "broken_bad_rows.csv:3: column 'image_url'" in result.output
    assert "nothing was loaded" in result.output
    assert not ledger.exists()  # a ledger this command created and never filled is removed


def test_bad_manifest_leaves_existing_ledger_byte_for_byte(tmp_path):
    ledger = tmp_path / "l.db"
    assert invoke("load", str(SAMPLES / "images.csv"), *LOAD, "--ledger", str(ledger)).exit_code == 0
    before = ledger.read_bytes()
    for broken in ("broken_bad_rows.csv", "broken_json.jsonl", "broken_missing_column.csv"):
        assert invoke("load", str(SAMPLES / broken), *LOAD, "--ledger", str(ledger)).exit_code == 1
    assert ledger.read_bytes() == before


def test_missing_project_and_usage_errors(tmp_path):
    ledger = str(tmp_path / "l.db")
    result = invoke("load", str(SAMPLES / "images.csv"), "--ledger", ledger)
    assert result.exit_code == 1 and "project" in result.output
    assert invoke("load", str(SAMPLES / "images.csv"), *LOAD, "--column", "nonsense", "--ledger", ledger).exit_code == 2
    assert invoke("retry", "--ledger", ledger).exit_code == 2
    assert invoke("status", "--ledger", str(tmp_path / "none.db")).exit_code == 1
    assert not (tmp_path / "none.db").exists()


def test_export_formats_and_formula_neutralised(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "reference_id,image_url,note\n=HYPERLINK(1),https://x.com/a.jpg,+cmd\nb,https://x.com/b.jpg,ok\n"
    )
    ledger = str(tmp_path / "l.db")
    assert invoke("load", str(manifest), *LOAD, "--ledger", ledger).exit_code == 0
    out = invoke("export", "--ledger", ledger).output  # verbatim: the mapping matches the manifest
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0]["reference_id"] == "=HYPERLINK(1)" and rows[0]["note"] == "+cmd" and rows[1]["note"] == "ok"
    out = invoke("export", "--ledger", ledger, "--spreadsheet-safe").output  # for a spreadsheet
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0]["reference_id"] == "'=HYPERLINK(1)" and rows[0]["note"] == "'+cmd" and rows[1]["note"] == "ok"
    jl = tmp_path / "o.jsonl"
    assert invoke("export", "--ledger", ledger, "-o", str(jl)).exit_code == 0
    first = json.loads(jl.read_text().splitlines()[0])
    assert first["reference_id"] == "=HYPERLINK(1)" and first["status"] == "pending"  # JSON is not a spreadsheet
    pq = tmp_path / "o.parquet"
    assert invoke("export", "--ledger", ledger, "-o", str(pq), "--status", "pending").exit_code == 0
    import pyarrow.parquet as papq

    table = papq.read_table(pq)
    assert table.num_rows == 2 and "note" in table.column_names
    assert oct(pq.stat().st_mode & 0o777) == "0o600"
    assert invoke("export", "--ledger", ledger, "--status", "bogus").exit_code == 2


def test_every_command_has_help():
    for name, command in cli.commands.items():
        assert command.help, name
        assert invoke(name, "--help").exit_code == 0


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "uploader", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "uploader" in out.stdout


@pytest.mark.slow
def test_installed_wheel_migrates_a_ledger_in_an_empty_folder(tmp_path):
    """`pip install .` (non-editable) ships the migrations: build the wheel, install it apart, load."""
    root = Path(__file__).resolve().parent.parent
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(root)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("gtstudio_uploader-*.whl")  # the distribution name (PEP 427 escapes "-")
    names = zipfile.ZipFile(wheel).namelist()
    assert "uploader/migrations/env.py" in names
    assert any(n.startswith("uploader/migrations/versions/0001") for n in names)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "empty"
    work.mkdir()
    (work / "m.csv").write_text("reference_id,image_url\na,https://example.com/a.jpg\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("UPLOADER_LEDGER", None)
    code = (
        "import os, sys, uploader.cli.commands as c; "
        "assert c.__file__.startswith(os.environ['PYTHONPATH']), c.__file__; "
        "sys.argv[0] = 'uploader'; c.main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "load", "m.csv", *LOAD], cwd=work, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert (work / "uploader.db").exists() and "1 new" in result.stdout


def test_library_api_exports_resolve():
    import uploader

    for name in uploader.__all__:
        assert getattr(uploader, name) is not None, name


@pytest.mark.slow
def test_sandbox_command_serves_until_interrupted(tmp_path):
    """`uploader sandbox` as a real process: prints its URL and key, answers the API, stops on SIGINT."""
    import signal
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uploader",
            "sandbox",
            "--port",
            str(port),
            "--api-key",
            "k1",
            "--forbidden-project",
            "secret",
            "--page-size",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(url + "/_sandbox/stats", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "sandbox did not start"
                time.sleep(0.05)
        body = b'{"reference_id":"a","work_flow_id":"w","data":{"image_url":"https://x.com/a.jpg"}}'
        ok = httpx.post(f"{url}/v1/projects/p/jobs", content=body, headers={"x-api-key": "k1"})
        assert ok.status_code == 200 and ok.json()["success"] is True
        refused = httpx.post(f"{url}/v1/projects/secret/jobs", content=body, headers={"x-api-key": "k1"})
        assert refused.json()["error"]["code"] == "unauthorized"
        assert httpx.post(f"{url}/v1/projects/p/jobs", content=body).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert url in out and "API key: k1" in out and "Traceback" not in err


@pytest.mark.slow
def test_sandbox_command_refuses_bad_settings_and_busy_ports():
    bad = invoke("sandbox", "--error-rate", "0.7", "--html-error-rate", "0.7")
    assert bad.exit_code == 2 and "error" in bad.output
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "uploader", "sandbox", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert proc.returncode == 1 and f"cannot serve on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_exit_status_is_the_interpreters():
    from uploader.cli.commands import exit_status

    assert [exit_status(c) for c in (None, 0, 1, 3, 130)] == [0, 0, 1, 3, 130]


@pytest.mark.slow
def test_the_program_ends_with_its_output_whole_its_exit_code_and_the_ledger_closed(tmp_path):
    """`uploader` (and `python -m uploader`) end with os._exit after flushing: every line written reaches the
    pipe, the exit code is the command's, and the ledger was closed (no -wal/-shm left beside it)."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("reference_id,image_url\n" + "".join(f"r{i},https://e.com/{i}.jpg\n" for i in range(20_000)))
    ledger = tmp_path / "l.db"

    def program(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "uploader", *args, "--ledger", str(ledger)], capture_output=True, text=True
        )

    loaded = program("load", str(manifest), *LOAD)
    assert loaded.returncode == 0, loaded.stderr
    assert "20000 new" in loaded.stdout
    exported = program("export")
    assert exported.returncode == 0, exported.stderr
    lines = exported.stdout.splitlines()
    assert len(lines) == 20_001 and lines[-1].startswith("r19999,")  # all of it, though the process skipped teardown
    assert program("export", "--status", "nonsense").returncode == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("reference_id,image_url\nr1,not a url\n")
    assert program("load", str(bad), *LOAD).returncode == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("l.db-")]
