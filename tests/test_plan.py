"""`uploader plan`: the manifest against the ledger, read only — counts, what a run would send and hold back,
the first payload; the ledger file byte for byte unchanged."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from uploader.cli.commands import cli
from uploader.sandbox import Sandbox

LOAD = ["--project-id", "p", "--work-flow-id", "w"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def manifest(path: Path, rows: dict[str, str]) -> Path:
    path.write_text("reference_id,image_url\n" + "".join(f"{r},{u}\n" for r, u in rows.items()))
    return path


def folder_state(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def box():
    with Sandbox() as sb:
        yield sb


def test_plan_counts_and_leaves_the_ledger_untouched(tmp_path, box):
    ledger = tmp_path / "l.db"
    # r0 and r1 are sent (succeeded); then r2, r3 are loaded and stay pending.
    two = manifest(tmp_path / "two.csv", {"r0": "https://e.com/0.jpg", "r1": "https://e.com/1.jpg"})
    run = invoke("run", str(two), *LOAD, "--ledger", str(ledger), "--base-url", box.base_url, "--api-key", box.api_key)
    assert box.stats()["jobs_created"] == 2, run.output
    rest = manifest(tmp_path / "rest.csv", {"r2": "https://e.com/2.jpg", "r3": "https://e.com/3.jpg"})
    assert invoke("load", str(rest), *LOAD, "--ledger", str(ledger)).exit_code == 0
    second = manifest(
        tmp_path / "b.csv",
        {
            "r0": "https://e.com/0.jpg",  # unchanged, sent
            "r1": "https://e.com/1-new.jpg",  # changed after it was sent: a conflict, held back
            "r2": "https://e.com/2-new.jpg",  # changed, never sent: sent with the new payload
            "r3": "https://e.com/3.jpg",  # unchanged, still pending
            "r9": "https://e.com/9.jpg",  # new
        },
    )
    before = folder_state(tmp_path)
    requests = box.stats()["requests_total"]
    result = invoke("plan", str(second), *LOAD, "--ledger", str(ledger), "--json")
    assert result.exit_code == 3, result.output  # the conflict is held back
    plan = json.loads(result.output)
    assert (plan["new"], plan["unchanged"], plan["changed"], plan["conflicts"]) == (1, 2, 1, 1)
    assert plan["to_send"] == 3 and plan["pending_unchanged"] == 1 and plan["held_back"] == 1
    assert plan["conflict_examples"] == ["r1"] and plan["changed_examples"] == ["r2"]
    assert plan["first_payload"]["reference_id"] == "r2"
    assert plan["first_payload"]["data"]["image_url"] == "https://e.com/2-new.jpg"
    assert folder_state(tmp_path) == before  # the ledger (and any -wal/-shm) byte for byte as it was
    assert box.stats()["requests_total"] == requests  # nothing sent

    text = invoke("plan", str(second), *LOAD, "--ledger", str(ledger))
    assert "held back: 1 in conflict" in text.output and '"reference_id": "r2"' in text.output
    # The plan agrees with what the load then does.
    loaded = invoke("load", str(second), *LOAD, "--ledger", str(ledger)).output
    assert "1 new, 2 unchanged, 1 updated, 1 conflicting" in loaded


def test_plan_against_a_missing_ledger_creates_nothing(tmp_path):
    m = manifest(tmp_path / "m.csv", {"a": "https://e.com/a.jpg", "b": "https://e.com/b.jpg"})
    result = invoke("plan", str(m), *LOAD, "--ledger", str(tmp_path / "none.db"))
    assert result.exit_code == 0, result.output
    assert "new 2" in result.output and "a run would send 2 rows" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


def test_plan_holds_back_signed_urls_that_expire_too_soon(tmp_path):
    now = datetime.now(UTC)
    url = (
        f"https://b.s3.amazonaws.com/k.jpg?X-Amz-Credential=c&X-Amz-Date={now:%Y%m%dT%H%M%SZ}"
        "&X-Amz-Expires=600&X-Amz-Signature=s"
    )
    m = manifest(tmp_path / "m.csv", {"soon": url, "plain": "https://e.com/p.jpg"})
    result = invoke("plan", str(m), *LOAD, "--ledger", str(tmp_path / "l.db"), "--json")
    assert result.exit_code == 3
    plan = json.loads(result.output)
    assert plan["expiring"] == 1 and plan["expiring_examples"][0].startswith("soon")
    ok = invoke("plan", str(m), *LOAD, "--ledger", str(tmp_path / "l.db"), "--min-url-validity", "5m")
    assert ok.exit_code == 0, ok.output


def test_plan_of_a_bad_manifest_names_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("reference_id,image_url\na,https://e.com/a.jpg\na,https://e.com/b.jpg\n")
    result = invoke("plan", str(bad), *LOAD, "--ledger", str(tmp_path / "l.db"))
    assert result.exit_code == 1
    assert f"{bad}:3" in result.output and "duplicate reference_id" in result.output
    assert "Traceback" not in result.output
