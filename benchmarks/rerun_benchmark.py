"""Rerun over a finished ledger: the whole `uploader run` command with the same manifest, when every job has
succeeded already. It must send nothing and return quickly; and a changed manifest row must still be sent.

Loads R rows (default 1,000,000) into a new ledger, marks every job succeeded (as if a previous run had sent
them), then times `uploader run` over it --repeat times (against the sandbox at 0 ms): requests, wall seconds,
CPU seconds (user + system of the command) and peak RSS, min/median/max. Last, one row of a copy of the
manifest is changed: the run over it must find that row (a conflict: its job succeeded already, so the
ledger keeps its payload and nothing is sent):

    python benchmarks/rerun_benchmark.py [--rows 1000000] [--repeat 5]

Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from _sandbox import KEY, bench_env, measure_cli, spread, start_sandbox, stop

OUT = Path(__file__).resolve().parent / "out"
PROJECT = "rerun"


def make_manifest(path: Path, rows: int) -> None:
    if path.exists():
        return
    with open(path, "w") as f:
        f.write("reference_id,image_url\n")
        for i in range(rows):
            f.write(f"img-{i:08d},https://cdn.example.com/images/{i:08d}.jpg\n")


def finished_ledger(manifest: Path, ledger: Path) -> None:
    """`ledger`: the manifest loaded, every job succeeded (as if a previous run had sent them all)."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(ledger) + suffix).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "uploader", "load", str(manifest), "--project-id", PROJECT]
    subprocess.run([*cmd, "--work-flow-id", "wf", "--ledger", str(ledger)], check=True, capture_output=True)
    with sqlite3.connect(ledger) as db:
        db.execute("UPDATE jobs SET status = 'succeeded', job_id = 'job-' || id, attempts = 1")


def run(manifest: Path, ledger: Path, url: str, ok: tuple[int, ...] = (0,)) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds, peak RSS (MB) and requests of one whole `uploader run` (exiting with a code
    in `ok`)."""
    done = measure_cli(
        *("run", str(manifest), "--project-id", PROJECT, "--work-flow-id", "wf", "--ledger", str(ledger)),
        *("--base-url", url, "--json"),
        env=bench_env(PLAYMENT_API_KEY=KEY),
        ok=ok,
    )
    rss = max(done.rss_mib, done.children_rss_mib)
    return done.wall, done.cpu, rss, int(json.loads(done.stdout)["this_run"]["requests"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    manifest, ledger = OUT / f"rerun_{args.rows}.csv", OUT / f"rerun_{args.rows}.db"
    make_manifest(manifest, args.rows)
    finished_ledger(manifest, ledger)
    proc, url = start_sandbox("--latency-ms", "0")
    try:
        runs = [run(manifest, ledger, url) for _ in range(args.repeat)]
        print(f"rerun over {args.rows} succeeded rows, {args.repeat} runs, min / median / max:")
        print(f"  requests {sorted({r[3] for r in runs})}  (target 0)")
        print(f"  wall s   {spread([r[0] for r in runs])}  (target <= 0.5)")
        print(f"  CPU s    {spread([r[1] for r in runs])}")
        print(f"  RSS MB   {spread([r[2] for r in runs])}")
        changed = OUT / f"rerun_{args.rows}_changed.csv"
        shutil.copy(manifest, changed)
        with open(changed, "r+b") as f:  # the last row's URL, same length: a changed payload
            f.seek(-6, os.SEEK_END)
            f.write(b"X.jpg\n")
        wall, _, _, requests = run(changed, ledger, url, ok=(3,))  # 3: a conflict held back
        with sqlite3.connect(ledger) as db:
            (conflicts,) = db.execute("SELECT conflicts FROM manifests ORDER BY id DESC LIMIT 1").fetchone()
        print(
            f"  one changed row: {conflicts} conflict(s) recorded, {requests} requests, {wall:.2f} s  (must be 1 and "
            "0: the change is found, and a job that succeeded keeps its payload)"
        )
        changed.unlink()
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
