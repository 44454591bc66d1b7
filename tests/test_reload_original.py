"""Reloading the original manifest after an edited one (issue 10, item 4).

Load M1, then an edited M2 (one row's URL changed: updated), then M1 again: that used to print "already
loaded with the same options; nothing to do" and the run sent M2's URL. The shortcut may skip a reload only
when no later load added or changed a row (`manifests.changed`), so M1 is merged again and its row is
updated back. Through the library on SQLite and PostgreSQL, and through real `uploader` processes against
the sandbox (which must receive M1's URL).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from uploader.ledger.ledger import Ledger
from uploader.load import load
from uploader.manifest.reader import ManifestOptions
from uploader.sandbox import Sandbox, SandboxConfig

OPTIONS = ManifestOptions(project_id="proj", work_flow_id="wf")
M1 = "reference_id,image_url\n" + "".join(f"r{i},https://cdn.example.com/m1/{i}.jpg\n" for i in range(5))
M2 = M1.replace("https://cdn.example.com/m1/2.jpg", "https://cdn.example.com/m2/2-fixed.jpg")


def url_of(led: Ledger, ref: str) -> str:
    import json

    with led.engine.connect() as conn:
        body = conn.execute(text("SELECT body FROM jobs WHERE reference_id = :r"), {"r": ref}).scalar_one()
    return json.loads(body)["data"]["image_url"]


@pytest.mark.slow
def test_m1_m2_m1_puts_m1_back(ledger: Ledger, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(M1)
    first = load(ledger, manifest, OPTIONS)
    assert (first.new, first.already_loaded) == (5, False)
    manifest.write_text(M2)
    edited = load(ledger, manifest, OPTIONS)
    assert (edited.updated, edited.unchanged, edited.updated_examples) == (1, 4, ("r2",))
    assert url_of(ledger, "r2") == "https://cdn.example.com/m2/2-fixed.jpg"

    manifest.write_text(M1)  # the original again: the ledger holds M2's payload, so it is merged
    again = load(ledger, manifest, OPTIONS)
    assert not again.already_loaded
    assert (again.updated, again.unchanged, again.updated_examples) == (1, 4, ("r2",))
    assert url_of(ledger, "r2") == "https://cdn.example.com/m1/2.jpg"

    same = load(ledger, manifest, OPTIONS)  # nothing changed since: the shortcut holds again
    assert same.already_loaded and (same.rows, same.unchanged) == (5, 5)

    manifest.write_text(M2)  # and M2, loaded before, is not skipped either
    back = load(ledger, manifest, OPTIONS)
    assert not back.already_loaded and back.updated == 1
    assert url_of(ledger, "r2") == "https://cdn.example.com/m2/2-fixed.jpg"


@pytest.mark.slow
def test_a_later_manifest_that_only_adds_rows_also_ends_the_shortcut(ledger: Ledger, tmp_path: Path) -> None:
    """`changed` counts added rows too: a reload after any load that changed the ledger compares its rows
    (and finds them unchanged), which is always right; only a reload with nothing changed since is skipped."""
    m1, other = tmp_path / "m1.csv", tmp_path / "other.csv"
    m1.write_text(M1)
    other.write_text("reference_id,image_url\nx1,https://cdn.example.com/x1.jpg\n")
    load(ledger, m1, OPTIONS)
    assert load(ledger, m1, OPTIONS).already_loaded
    load(ledger, other, OPTIONS)
    again = load(ledger, m1, OPTIONS)
    assert not again.already_loaded and again.unchanged == 5
    assert load(ledger, m1, OPTIONS).already_loaded


def uploader(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    return subprocess.run(
        [sys.executable, "-m", "uploader", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_m1_m2_m1_through_the_cli_sends_m1s_url(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    ledger = tmp_path / "ledger.db"
    opts = ["--project-id", "proj", "--work-flow-id", "wf", "--ledger", str(ledger)]
    manifest.write_text(M1)
    done = uploader("load", str(manifest), *opts)  # a new ledger: the empty-ledger bulk path
    assert done.returncode == 0 and "5 new" in done.stdout, done.stderr
    manifest.write_text(M2)
    done = uploader("load", str(manifest), *opts)
    assert done.returncode == 0 and "1 updated" in done.stdout, done.stdout + done.stderr
    manifest.write_text(M1)
    done = uploader("load", str(manifest), *opts)
    assert done.returncode == 0, done.stderr
    assert "already loaded" not in done.stdout and "4 unchanged, 1 updated" in done.stdout, done.stdout
    with Sandbox(SandboxConfig(api_key="k")) as box:
        done = uploader("run", str(manifest), *opts, "--base-url", box.base_url, "--api-key", "k")  # not -q:
        # it drops the load report
        sent = {job["reference_id"]: job["data"]["image_url"] for job in box.jobs()}
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already loaded" in done.stdout  # nothing changed since the last load of M1
    assert sent == {f"r{i}": f"https://cdn.example.com/m1/{i}.jpg" for i in range(5)}
    with sqlite3.connect(ledger) as db:  # the bulk path of the first load counted its rows as changed too
        assert db.execute("SELECT row_count, changed FROM manifests ORDER BY id").fetchall() == [(5, 5), (5, 1), (5, 1)]
    db.close()
