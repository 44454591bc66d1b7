"""CSV export keeps identifiers and manifest values verbatim (issue 10, item 14).

The CSV export used to prefix `-5`, `+5`, `=1+1`, `@mention` with a quote, so the exported mapping no longer
matched the manifest or the API. Now: reference_ids, job_ids and the manifest's own columns round-trip
exactly; text the API wrote (error code and message) is neutralised in CSV; `--spreadsheet-safe` neutralises
every cell. Real `uploader` processes, the sandbox, and a real HTTP server that refuses with a formula.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from uploader.sandbox import Sandbox, SandboxConfig

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: reference_id -> the manifest's extra column `note`
ROWS = {
    "-5": "=1+2",
    "+5": "-7",
    "=1+1": "+cmd",
    "@mention": "@SUM(A1)",
    "plain": "\tindented",
    '=HYPERLINK("http://evil.example/","x")': "ok",
}


def uploader(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    return subprocess.run(
        [sys.executable, "-m", "uploader", *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd
    )


def write_manifest(path: Path) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["reference_id", "image_url", "note"])
        for i, (ref, note) in enumerate(ROWS.items()):
            writer.writerow([ref, f"https://cdn.example.com/{i}.jpg", note])
    return path


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


@pytest.mark.slow
def test_csv_export_round_trips_identifiers_and_manifest_values(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.csv")
    ledger = tmp_path / "ledger.db"
    with Sandbox(SandboxConfig(api_key="k")) as box:
        done = uploader(
            "run",
            str(manifest),
            "--project-id",
            "p",
            "--work-flow-id",
            "w",
            "--ledger",
            str(ledger),
            "--base-url",
            box.base_url,
            "--api-key",
            "k",
            "--quiet",
        )
        api = {job["reference_id"]: job["job_id"] for job in box.jobs()}
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(api) == set(ROWS)

    out = tmp_path / "jobs.csv"
    done = uploader("export", "--ledger", str(ledger), "-o", str(out))
    assert done.returncode == 0, done.stderr
    stdout = uploader("export", "--ledger", str(ledger)).stdout
    for text in (out.read_text(encoding="utf-8"), stdout):
        rows = read_csv(text)
        assert {r["reference_id"]: r["note"] for r in rows} == ROWS  # exactly the manifest's values
        assert {r["reference_id"]: r["job_id"] for r in rows} == api  # and the API's ids

    safe = tmp_path / "safe.csv"
    done = uploader("export", "--ledger", str(ledger), "-o", str(safe), "--spreadsheet-safe")
    assert done.returncode == 0, done.stderr
    rows = read_csv(safe.read_text(encoding="utf-8"))
    cells = [cell for r in rows for cell in r.values()]
    assert not any(cell.startswith(FORMULA_START) for cell in cells)
    assert {r["reference_id"]: r["note"] for r in rows} == {
        ("'" + k if k.startswith(FORMULA_START) else k): ("'" + v if v.startswith(FORMULA_START) else v)
        for k, v in ROWS.items()
    }

    done = uploader("export", "--ledger", str(ledger), "--format", "jsonl", "--spreadsheet-safe")
    assert done.returncode == 2 and "--spreadsheet-safe is for CSV" in done.stderr


class FormulaRefusal(BaseHTTPRequestHandler):
    """An API that refuses every job with an error message (and code) that is a spreadsheet formula."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps(
            {
                "success": False,
                "error": {
                    "code": "-FS_9",
                    "message": '=HYPERLINK("http://evil.example/","click")',
                    "errors": [{"validation_code": "@x"}],
                },
            }
        ).encode()
        self.send_response(400)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.slow
def test_api_text_is_neutralised_in_csv_by_default(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.csv")
    ledger = tmp_path / "ledger.db"
    server = ThreadingHTTPServer(("127.0.0.1", 0), FormulaRefusal)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        done = uploader(
            "run",
            str(manifest),
            "--project-id",
            "p",
            "--work-flow-id",
            "w",
            "--ledger",
            str(ledger),
            "--base-url",
            f"http://127.0.0.1:{server.server_address[1]}",
            "--api-key",
            "key-4f2a",
            "--quiet",
            "--max-attempts",
            "1",
            "--default-batch",
        )  # the server refuses batches too
    finally:
        server.shutdown()
        server.server_close()
    # Every row refused with the same permanent code: the run stops as on a systematic error (exit 1) and
    # says so with the API's message; every row is recorded failed.
    assert done.returncode == 1, done.stdout + done.stderr
    assert "all refused with -FS_9" in done.stderr

    rows = read_csv(uploader("export", "--ledger", str(ledger)).stdout)
    assert {r["reference_id"]: r["note"] for r in rows} == ROWS  # ours: verbatim
    assert {r["error_message"] for r in rows} == {"'" + '=HYPERLINK("http://evil.example/","click")'}
    assert {r["error_code"] for r in rows} == {"'-FS_9"}  # the API's: neutralised

    lines = uploader("export", "--ledger", str(ledger), "--format", "jsonl").stdout.splitlines()
    assert {json.loads(line)["error_message"] for line in lines} == {'=HYPERLINK("http://evil.example/","click")'}
