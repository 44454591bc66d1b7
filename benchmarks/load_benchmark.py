"""Load benchmark: `uploader load` of a generated image manifest vs the sqlite3 shell's `.import`.

Prints both times (median of --repeat runs, taken in turns so that a busy moment of a shared machine hits
both), the ratio, and the loader's peak RSS (its own, and the largest of its staging worker processes),
for each size (default 100k and 1M rows), so RSS growth with manifest size is visible. Figures, not a test:

    python benchmarks/load_benchmark.py [--rows 100000 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
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


def time_uploader(manifest: Path, ledger: Path, fresh: bool = True) -> tuple[float, float, float]:
    """Seconds, peak RSS (MB) and its workers' largest peak RSS (MB) of `python -m uploader load`, into a
    new ledger file (or, with fresh=False, into `ledger` as it is)."""
    for suffix in ("", "-wal", "-shm") if fresh else ():
        Path(str(ledger) + suffix).unlink(missing_ok=True)
    code = (
        "import resource, sys; from uploader.cli import main; sys.argv = sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\nelse:\n    rc = 0\n"
        "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,\n"
        "      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"
    )
    cmd = [
        sys.executable,
        "-c",
        code,
        "uploader",
        "load",
        str(manifest),
        "--project-id",
        "p",
        "--work-flow-id",
        "wf",
        "--ledger",
        str(ledger),
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"uploader load failed: {proc.stderr}")
    own_kb, workers_kb = map(int, next(line.split()[1:] for line in proc.stderr.splitlines() if line.startswith("RSS")))
    return elapsed, own_kb / 1024, workers_kb / 1024


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
    parser.add_argument("--repeat", type=int, default=5, help="runs of each, in turns; the median is shown")
    parser.add_argument(
        "--non-empty",
        action="store_true",
        help="also load each manifest into a ledger that already holds another one's jobs",
    )
    args = parser.parse_args()
    if not shutil.which("sqlite3"):
        raise SystemExit("needs the sqlite3 command-line shell (Debian package sqlite3)")
    OUT.mkdir(exist_ok=True)
    print(
        f"{'rows':>9} {'MB':>6} {'uploader s':>11} {'sqlite3 s':>10} {'ratio':>6} {'RSS MB':>7} {'workers MB':>11}"
        "   (median of runs; all runs: uploader / sqlite3)"
    )
    for rows in args.rows:
        manifest = OUT / f"images_{rows}.csv"
        make_manifest(manifest, rows)
        ours: list[float] = []
        shell: list[float] = []
        rss = workers = 0.0
        for _ in range(args.repeat):
            seconds, own, children = time_uploader(manifest, OUT / f"bench_{rows}.db")
            ours.append(seconds)
            rss, workers = max(rss, own), max(workers, children)
            shell.append(time_sqlite_shell(manifest, OUT / f"shell_{rows}.db"))
        mb = os.path.getsize(manifest) / 1e6
        a, b = statistics.median(ours), statistics.median(shell)
        runs = " ".join(f"{x:.2f}/{y:.2f}" for x, y in zip(ours, shell))
        print(f"{rows:>9} {mb:>6.1f} {a:>11.2f} {b:>10.2f} {a / b:>6.2f} {rss:>7.1f} {workers:>11.1f}   {runs}")
        if args.non_empty:
            print(f"{'':>9} into a non-empty ledger: {_non_empty(manifest, args.repeat):.2f} s (median)")
    print("targets: ratio <= 1.5, peak RSS <= 150 MB and flat from 100k to 1M rows")


def _non_empty(manifest: Path, repeat: int) -> float:
    """Median seconds to load `manifest` into a ledger that holds one job of another manifest: the staging
    table and the ordinary merge, not the empty-ledger fast path."""
    seed = OUT / "seed.csv"
    seed.write_text("reference_id,image_url,camera\nseed-1,https://cdn.example.com/seed.jpg,cam-0\n")
    times = []
    for _ in range(repeat):
        ledger = OUT / "bench_non_empty.db"
        time_uploader(seed, ledger)
        times.append(time_uploader(manifest, ledger, fresh=False)[0])
    return statistics.median(times)


if __name__ == "__main__":
    main()
