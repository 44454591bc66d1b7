"""What the commands print (issue 12, "Configuration and output"): --json on every command (errors included),
-q, `uploader show`, `retry` with a code no row has, why `reconcile` leaves rows uncertain, the help (workflow
order, a line for every option), one plural helper, shell completion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tests.reliability.harness import write_images
from uploader.cli.commands import cli
from uploader.cli.output import plural, rows_are
from uploader.ledger import Ledger, Result, Status
from uploader.sandbox import Sandbox, SandboxConfig

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_manifests"
LOAD = ["--project-id", "proj", "--work-flow-id", "wf"]


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("UPLOADER_", "PLAYMENT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def loaded(tmp_path: Path, rows: int = 4) -> Path:
    ledger = tmp_path / "l.db"
    assert invoke("load", str(write_images(tmp_path / "m.csv", rows)), *LOAD, "--ledger", str(ledger)).exit_code == 0
    return ledger


def settle(ledger: Path, outcomes: dict[str, Result]) -> None:
    """Record an outcome (id and lease filled in) for the named reference_ids, as a run would."""
    led = Ledger.open(ledger)
    try:
        owner = led.register_worker()
        claims = {c.reference_id: c for c in led.claim(owner, 1000, 60)}
        led.record(
            [
                Result(**{**r.__dict__, "id": claims[ref].id, "lease_token": claims[ref].lease_token})
                for ref, r in outcomes.items()
            ]
        )
        led.release(owner)
    finally:
        led.close()


def failed(code: str, message: str = "bad", details: str | None = None) -> Result:
    return Result(0, 0, Status.FAILED, error_code=code, error_message=message, error_details=details, http_status=400)


def test_plural():
    assert [plural(n, "row") for n in (0, 1, 2, 1234)] == ["0 rows", "1 row", "2 rows", "1234 rows"]
    assert [rows_are(n) for n in (1, 5)] == ["1 row is", "5 rows are"]
    assert plural(1, "batch", "batches") == "1 batch" and plural(3, "batch", "batches") == "3 batches"


def test_one_row_is_not_one_rows(tmp_path: Path):
    """Seen: `wrote 1 rows to …`, `1 failed rows are pending again`."""
    ledger = loaded(tmp_path, 1)
    result = invoke("export", "--ledger", str(ledger), "-o", str(tmp_path / "o.csv"))
    assert result.stderr == f"wrote 1 row to {tmp_path / 'o.csv'}\n"
    settle(ledger, {"img-00000": failed("GE_0001")})
    assert invoke("retry", "--all", "--ledger", str(ledger)).stdout.startswith("1 failed row is pending again")


def test_help_lists_commands_in_workflow_order():
    out = invoke("--help").stdout
    listed = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()]
    expected = [
        "load",
        "plan",
        "check",
        "run",
        "sync",
        "status",
        "report",
        "export",
        "retry",
        "reconcile",
        "adopt",
        "forget",
        "show",
        "config",
        "sandbox",
    ]
    assert listed == [name for name in expected if name in cli.commands]
    assert "_UPLOADER_COMPLETE=bash_source uploader" in out


def test_every_option_of_every_command_has_a_help_line():
    """Seen: --concurrency and --max-attempts had none."""
    missing = [
        (name, p.name)
        for name, command in cli.commands.items()
        for p in command.params
        if isinstance(p, click.Option) and not (p.help or "").strip()
    ]
    assert missing == []


def test_json_errors_leave_a_json_document_on_stdout(tmp_path: Path):
    """Seen: `run --json` with a bad manifest printed nothing on stdout."""
    for command in (["load"], ["run", "--sandbox"]):
        result = invoke(
            *command, str(SAMPLES / "broken_bad_rows.csv"), *LOAD, "--ledger", str(tmp_path / "l.db"), "--json"
        )
        assert result.exit_code == 1
        document = json.loads(result.stdout)
        assert document["exit"] == 1 and "broken_bad_rows.csv:3: column 'image_url'" in document["error"]
        assert json.loads(result.stderr.strip().splitlines()[-1]) == document
    result = invoke("status", "--ledger", str(tmp_path / "none.db"), "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["exit"] == 1
    result = invoke("status", "--ledger", str(tmp_path / "l.db"), "--json", "--bogus")  # click's usage error
    assert result.exit_code == 2 and "--bogus" in json.loads(result.stdout)["error"]
    with Sandbox(SandboxConfig(api_key="right")) as box:  # stopped by the API: the summary, with the error
        result = invoke(
            "run",
            str(SAMPLES / "images.csv"),
            *LOAD,
            "--ledger",
            str(tmp_path / "k.db"),
            "--json",
            "--base-url",
            box.base_url,
            "--api-key",
            "wrong",
            "--default-batch",
        )
    assert result.exit_code == 1
    document = json.loads(result.stdout)  # one document
    assert document["exit"] == 1 and "API key" in document["error"] and document["counts"]["pending"] == 12
    assert json.loads(result.stderr.strip().splitlines()[-1])["error"] == document["error"]
    Path("uploader.toml").write_text("[default\n")  # an error while the options are read
    result = invoke("status", "--json")
    assert result.exit_code == 1 and json.loads(result.stderr)["error"].startswith("uploader.toml:1:")


def test_json_on_every_command(tmp_path: Path):
    ledger = loaded(tmp_path, 2)
    assert (
        json.loads(invoke("load", str(tmp_path / "m.csv"), *LOAD, "--ledger", str(ledger), "--json").stdout)[
            "already_loaded"
        ]
        is True
    )
    assert json.loads(invoke("status", "--ledger", str(ledger), "--json").stdout)["total"] == 2
    lines = invoke("export", "--ledger", str(ledger), "--json").stdout.splitlines()
    assert [json.loads(line)["reference_id"] for line in lines] == ["img-00000", "img-00001"]
    out = json.loads(invoke("export", "--ledger", str(ledger), "--json", "-o", str(tmp_path / "o.csv")).stdout)
    assert out == {"rows": 2, "output": str(tmp_path / "o.csv"), "format": "csv"}
    assert json.loads(invoke("retry", "--all", "--ledger", str(ledger), "--json").stdout)["pending_again"] == 0
    assert json.loads(invoke("show", "img-00001", "--ledger", str(ledger), "--json").stdout)["status"] == "pending"
    assert "settings" in json.loads(invoke("config", "--json").stdout)
    reconciled = invoke("reconcile", "--ledger", str(ledger), "--sandbox", "--json")
    assert json.loads(reconciled.stdout) == {
        "resolved": 0,
        "uncertain": 0,
        "conflict": 0,
        "pending_again": 0,
        "why_uncertain": [],
    }
    for name, command in cli.commands.items():
        assert any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params), name


def test_quiet_prints_only_the_final_line(tmp_path: Path):
    ledger = tmp_path / "l.db"
    manifest = write_images(tmp_path / "m.csv", 3)
    result = invoke("load", str(manifest), *LOAD, "--ledger", str(ledger), "-q")
    assert result.stdout.count("\n") == 1 and "3 rows: 3 new" in result.stdout
    result = invoke("status", "--ledger", str(ledger), "-q")
    assert result.stdout == "3 jobs: 3 pending\n"
    result = invoke("run", "--ledger", str(ledger), "--sandbox", "-q")
    assert result.exit_code == 0, result.output
    # no progress lines, no "sandbox: …" line, no load report; of the run's notices only warnings (a batch created
    # is none)
    assert "sandbox: API emulator" not in result.stderr and " done: " not in result.stderr
    assert "created batch" not in result.stderr
    assert "3 rows: 3 new" not in result.output
    assert "uploader export" not in result.stdout and result.stdout.startswith("done in")


def test_show_prints_one_row_with_its_last_error(tmp_path: Path):
    ledger = loaded(tmp_path, 2)
    settle(ledger, {"img-00001": failed("GE_0001", "batch not found", '[{"field": "batch_id"}]')})
    text = invoke("show", "img-00001", "--ledger", str(ledger)).stdout
    for expected in (
        "status         failed",
        "error_code     GE_0001",
        "error_message  batch not found",
        'error_details  [{"field": "batch_id"}]',
        "attempts       1",
        "http_status    400",
        '"image_url": "https://cdn.example.com/img/1.jpg"',
        "manifest_line  3",
    ):
        assert expected in text, (expected, text)
    row = json.loads(invoke("show", "img-00001", "--ledger", str(ledger), "--json").stdout)
    assert row["payload"]["data"]["image_url"] == "https://cdn.example.com/img/1.jpg"
    assert row["error_details"] == [{"field": "batch_id"}] and row["created_at"].endswith("Z")
    missing = invoke("show", "nope", "--ledger", str(ledger))
    assert missing.exit_code == 1 and "no row with reference_id 'nope'" in missing.stderr


def test_show_a_reference_id_of_two_projects_needs_the_project(tmp_path: Path):
    ledger = loaded(tmp_path, 1)
    assert (
        invoke(
            "load", str(tmp_path / "m.csv"), "--project-id", "other", "--work-flow-id", "wf", "--ledger", str(ledger)
        ).exit_code
        == 0
    )
    both = invoke("show", "img-00000", "--ledger", str(ledger))
    assert both.exit_code == 2 and "'proj', 'other'" in both.stderr and "--project-id" in both.stderr
    one = invoke("show", "img-00000", "--project-id", "other", "--ledger", str(ledger))
    assert one.exit_code == 0 and "project_id     other" in one.stdout


def test_retry_a_code_no_failed_row_has_lists_the_codes_there_are(tmp_path: Path):
    """Seen: `retry --error-code NOPE` said `0 failed rows are pending again` and nothing else."""
    ledger = loaded(tmp_path, 4)
    settle(ledger, {"img-00000": failed("GE_0001"), "img-00001": failed("GE_0001"), "img-00002": failed("RE_0002")})
    result = invoke("retry", "--error-code", "NOPE", "--ledger", str(ledger))
    assert result.exit_code == 0
    assert "no failed row has error code NOPE; failed rows by code: GE_0001 × 2, RE_0002 × 1." in result.stderr
    result = invoke("retry", "--error-code", "RE_0002", "--ledger", str(ledger))
    assert result.stdout.startswith("1 failed row is pending again") and result.stderr == ""


def test_reconcile_says_why_rows_stay_uncertain(tmp_path: Path):
    ledger = loaded(tmp_path, 2)
    settle(ledger, {"img-00000": Result(0, 0, Status.UNCERTAIN, error_code="FS_0001")})
    result = invoke("reconcile", "--ledger", str(ledger), "--sandbox")
    assert result.exit_code == 3
    assert "1 row of project 'proj' (e.g. 'img-00000') went to the project's default batch" in result.stdout
    assert "--default-batch" in result.stdout


def test_shell_completion_script():
    env = {
        **os.environ,
        "_UPLOADER_COMPLETE": "bash_source",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    out = subprocess.run(
        [sys.executable, "-c", "from uploader.cli import main; main()"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and "complete -o nosort -F" in out.stdout
    assert "_UPLOADER_COMPLETE=bash_source uploader" in (ROOT / "README.md").read_text()


def test_run_json_keeps_the_notices_it_printed(tmp_path: Path):
    """`run --json`: the notices told on stderr before the summary (a batch created) are in its `notices` too."""
    manifest = write_images(tmp_path / "m.csv", 2)
    result = invoke("run", str(manifest), *LOAD, "--ledger", str(tmp_path / "l.db"), "--sandbox", "--json")
    assert result.exit_code == 0, result.output
    notices = json.loads(result.stdout)["notices"]
    assert any(n.startswith("created batch ") for n in notices), notices
