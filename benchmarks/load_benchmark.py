"""Load benchmark: `uploader load` of a generated image manifest vs the sqlite3 shell's `.import`.

Prints both times, the ratio, and the loader's peak RSS, for each size (default 100k and 1M rows), so RSS
growth with manifest size is visible. Figures, not a test:

    python benchmarks/load_benchmark.py [--rows 100000 1000000]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def make_manifest(path: Path, rows: int) -> None:
    if path.exists():
        return
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "image_url", "camera"])
        for i in range(rows):
            w.writerow([f"img-{i:08d}", f"https://cdn.example.com/images/{i:08d}.jpg", f"cam-{i % 7}"])


def time_uploader(manifest: Path, ledger: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of `python -m uploader load` in a child process."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(ledger) + suffix).unlink(missing_ok=True)
    code = (
        "import resource, sys; from uploader.cli import main; sys.argv = sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\nelse:\n    rc = 0\n"
        "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)"
    )
    cmd = [sys.executable, "-c", code, "uploader", "load", str(manifest), "--project-id", "p", "--work-flow-id",
           "wf", "--ledger", str(ledger)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"uploader load failed: {proc.stderr}")
    rss_kb = int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("RSS")))
    return elapsed, rss_kb / 1024


def time_sqlite_shell(manifest: Path, db: Path) -> float:
    db.unlink(missing_ok=True)
    # .import into a new table takes the header as column names; we skip it and name columns ourselves
    script = f"""
CREATE TABLE staging_raw (reference_id TEXT, image_url TEXT, camera TEXT);
CREATE TABLE jobs (reference_id TEXT NOT NULL, body TEXT NOT NULL, camera TEXT);
CREATE UNIQUE INDEX jobs_ref ON jobs (reference_id);
.import --csv --skip 1 {manifest} staging_raw
BEGIN;
INSERT INTO jobs SELECT reference_id, json_object('reference_id', reference_id, 'work_flow_id', 'wf',
  'data', json_object('image_url', image_url)), camera FROM staging_raw;
COMMIT;
"""
    t = time.perf_counter()
    subprocess.run(["sqlite3", str(db)], input=script, text=True, check=True)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    if not shutil.which("sqlite3"):
        raise SystemExit("needs the sqlite3 command-line shell (Debian package sqlite3)")
    OUT.mkdir(exist_ok=True)
    print(f"{'rows':>9} {'MB':>6} {'uploader s':>11} {'sqlite3 s':>10} {'ratio':>6} {'peak RSS MB':>12}")
    for rows in args.rows:
        manifest = OUT / f"images_{rows}.csv"
        make_manifest(manifest, rows)
        ours, rss = time_uploader(manifest, OUT / f"bench_{rows}.db")
        shell = time_sqlite_shell(manifest, OUT / f"shell_{rows}.db")
        mb = os.path.getsize(manifest) / 1e6
        print(f"{rows:>9} {mb:>6.1f} {ours:>11.2f} {shell:>10.2f} {ours / shell:>6.2f} {rss:>12.1f}")
    print("targets: ratio <= 1.5, peak RSS <= 150 MB and flat from 100k to 1M rows")


if __name__ == "__main__":
    main()
