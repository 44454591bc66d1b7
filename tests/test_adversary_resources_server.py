"""Helpers of tests/test_adversary_resources.py: a small file system that really fills up (a tmpfs mounted for
one test), manifests, `uploader` processes with a clean environment, and the check that the ledger's word
matches the sandbox's truth.

A tmpfs needs root (or CAP_SYS_ADMIN); where it cannot be mounted, the tests that need one are skipped.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from uploader.sandbox import Sandbox

KEY = "resources-secret-key-7f3a91"


def env(**extra: str) -> dict[str, str]:
    """The environment of an `uploader` process: none of the caller's UPLOADER_/PLAYMENT_ settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    return {**clean, **extra}


def uploader(
    *args: str | Path,
    stdout: Any = subprocess.PIPE,
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = 120,
    **extra_env: str,
) -> subprocess.CompletedProcess[str]:
    """`python -m uploader ARGS` to the end; stderr captured as text (stdout too unless redirected)."""
    return subprocess.run(
        [sys.executable, "-m", "uploader", *map(str, args)],
        env=env(PLAYMENT_API_KEY=KEY, **extra_env),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def write_images(path: Path, n: int, *, prefix: str = "img", pad: int = 10) -> Path:
    """An image manifest of `n` rows with an extra column `note` of `pad` characters."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "image_url", "note"])
        for i in range(n):
            w.writerow([f"{prefix}-{i:06d}", f"https://cdn.example.com/{prefix}/{i}.jpg", "n" * pad])
    return path


def ledger_rows(ledger: Path) -> dict[str, dict[str, Any]]:
    """Every jobs row by reference_id, read with plain sqlite3 (not through the code under test)."""
    with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        return {r["reference_id"]: dict(r) for r in db.execute("SELECT * FROM jobs")}


def integrity(ledger: Path) -> str:
    with closing(sqlite3.connect(ledger)) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def assert_ledger_matches_server(ledger: Path, box: Sandbox, project: str) -> None:
    """Every row succeeded with the one job the server has for its reference_id, holding the row's payload;
    the server has no other job of `project`, and created none twice."""
    rows = ledger_rows(ledger)
    jobs: dict[str, list[dict[str, Any]]] = {}
    for job in box.jobs():
        if job["project_id"] == project:
            jobs.setdefault(job["reference_id"], []).append(job)
    assert {r["status"] for r in rows.values()} == {"succeeded"}, {
        k: r["status"] for k, r in rows.items() if r["status"] != "succeeded"
    }
    assert set(jobs) == set(rows), set(jobs) ^ set(rows)
    twice = {ref for ref, js in jobs.items() if len(js) != 1}
    assert not twice, twice
    for ref, row in rows.items():
        job = jobs[ref][0]
        body = json.loads(row["body"])
        assert row["job_id"] == job["job_id"], (ref, row["job_id"], job["job_id"])
        assert (job["data"], job["work_flow_id"]) == (body["data"], body["work_flow_id"]), ref
    assert integrity(ledger) == "ok"


def no_key_in(*texts: str) -> bool:
    return all(KEY not in t for t in texts)


class SmallDisk:
    """A tmpfs of `size` mounted at `path` for one test: writes beyond it fail with ENOSPC, as on a full disk."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take all the free space but `leave` bytes with a filler file."""
        need = self.free() - leave
        if need > 0:
            fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.posix_fallocate(fd, os.fstat(fd).st_size, need)
            finally:
                os.close(fd)

    def empty_filler(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)
