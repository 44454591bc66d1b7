"""A short API key must not corrupt the answers (issue 10, item 15).

The key used to be redacted from every byte of every answer, so a key that is also a common substring
(`_`, `id`, `ow`, `jo`, or `Zm`, which every base64 page token of the sandbox holds) rewrote JSON keys and
values: `work_flow_id` became `wor[redacted]_flow_id`, batch ids and page tokens broke, FS_0001 lookups
failed and rows stayed `uncertain`. Only text that is printed or stored is redacted now. Here a real
`uploader run` process talks to the sandbox with such a key, with dropped connections after the job was
created (so FS_0001 recovery through paged batch listing runs), and every row must end `succeeded` with the
sandbox's own job_id.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from uploader.sandbox import Sandbox, SandboxConfig
from uploader.sandbox.state import encode_page_token

pytestmark = pytest.mark.slow

ROWS = 60


def test_zm_is_in_every_sandbox_page_token() -> None:
    assert all("Zm" in encode_page_token(n) for n in (7, 14, 56))


@pytest.mark.parametrize("key", ["_", "id", "ow", "jo", "Zm"])
def test_a_short_key_leaves_job_ids_and_page_tokens_intact(key: str, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "reference_id,image_url\n" + "".join(f"row_{i:03d},https://cdn.example.com/{i}.jpg\n" for i in range(ROWS))
    )
    ledger = tmp_path / "ledger.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    config = SandboxConfig(api_key=key, drop_rate=0.3, seed=11, page_size=7)
    with Sandbox(config) as box:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "uploader",
                "run",
                str(manifest),
                "--project-id",
                "proj",
                "--work-flow-id",
                "work_flow",
                "--batch-name",
                "short key",
                "--ledger",
                str(ledger),
                "--base-url",
                box.base_url,
                "--api-key",
                key,
                "--quiet",
                "--timeout",
                "5",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        api_jobs = {job["reference_id"]: job for job in box.jobs()}
        drops = box.stats()["faults"]["drop"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert drops > 0  # some answers were lost: those rows were resolved by listing the batch
    with sqlite3.connect(ledger) as db:
        rows = db.execute("SELECT reference_id, status, job_id FROM jobs").fetchall()
    db.close()
    assert len(rows) == ROWS == len(api_jobs)
    assert {ref: (status, job_id) for ref, status, job_id in rows} == {
        ref: ("succeeded", job["job_id"]) for ref, job in api_jobs.items()
    }
    assert all(job["work_flow_id"] == "work_flow" for job in api_jobs.values())
