"""Load benchmark: `uploader load` of a generated image manifest vs the sqlite3 shell's `.import`.

Prints both times (min / median / max of --repeat runs, taken in turns so that a busy moment of a shared
machine hits both), their CPU seconds (user + system, the command and its processes), the ratio of the
medians, and the loader's peak RSS (its own, and the largest of its slice processes), for each size
(default 100k and 1M rows), so RSS growth with manifest size is visible. `--big` also loads a 10,000,000-row
manifest once (generated, and deleted after with its ledger). Figures, not a test:

    python benchmarks/load_benchmark.py [--rows 100000 1000000] [--repeat 5] [--big]
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from _sandbox import measure_cli, spread

OUT = Path(__file__).resolve().parent / "out"
#: Rows of the --big manifest.
BIG = 10_000_000


def make_manifest(path: Path, rows: int) -> None:
    if path.exists():
        return
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "image_url", "camera"])
        for i in range(rows):
            w.writerow([f"img-{i:08d}", f"https://cdn.example.com/images/{i:08d}.jpg", f"cam-{i % 7}"])


def time_uploader(manifest: Path, ledger: Path, fresh: bool = True) -> tuple[float, float, float, float]:
    """Seconds, CPU seconds, peak RSS (MB) and its slice processes' largest peak RSS (MB) of `python -m
    uploader load`, into a new ledger file (or, with fresh=False, into `ledger` as it is)."""
    for suffix in ("", "-wal", "-shm") if fresh else ():
        Path(str(ledger) + suffix).unlink(missing_ok=True)
    args = ("load", str(manifest), "--project-id", "p", "--work-flow-id", "wf", "--ledger", str(ledger))
    done = measure_cli(*args)
    return done.wall, done.cpu, done.rss_mib, done.children_rss_mib


def time_sqlite_shell(manifest: Path, db: Path) -> tuple[float, float]:
    """Seconds and CPU seconds of the sqlite3 shell's import of the same manifest."""
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
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(["sqlite3", str(db)], input=script, text=True, check=True)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each, in turns; min/median/max shown")
    parser.add_argument(
        "--non-empty",
        action="store_true",
        help="also load each manifest into a ledger that already holds another one's jobs",
    )
    parser.add_argument("--big", action="store_true", help=f"also load a {BIG:,}-row manifest once (then deleted)")
    args = parser.parse_args()
    if not shutil.which("sqlite3"):
        raise SystemExit("needs the sqlite3 command-line shell (Debian package sqlite3)")
    OUT.mkdir(exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores shared: figures are noisy)")
    print("min/median/max of runs; ratio: of the medians")
    for rows in args.rows:
        manifest = OUT / f"images_{rows}.csv"
        make_manifest(manifest, rows)
        ours: list[tuple[float, float, float, float]] = []
        shell: list[tuple[float, float]] = []
        for _ in range(args.repeat):
            ours.append(time_uploader(manifest, OUT / f"bench_{rows}.db"))
            shell.append(time_sqlite_shell(manifest, OUT / f"shell_{rows}.db"))
        ratio = statistics.median(r[0] for r in ours) / statistics.median(r[0] for r in shell)
        print(f"{rows:,} rows ({os.path.getsize(manifest) / 1e6:.1f} MB):")
        print(f"  uploader wall s {spread([r[0] for r in ours])}  CPU s {spread([r[1] for r in ours])}")
        print(f"  sqlite3  wall s {spread([r[0] for r in shell])}  CPU s {spread([r[1] for r in shell])}")
        print(
            f"  ratio {ratio:.2f}  peak RSS MB {max(r[2] for r in ours):.1f}, "
            f"slice processes {max(r[3] for r in ours):.1f}"
        )
        if args.non_empty:
            print(f"  into a non-empty ledger: {_non_empty(manifest, args.repeat):.2f} s (median)")
    if args.big:
        _big()
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("targets: ratio <= 1.0, peak RSS <= 150 MB and flat from 100k to 10M rows")


def _big() -> None:
    """One load of a BIG-row manifest into a new ledger; the manifest and the ledger are deleted after."""
    manifest, ledger = OUT / f"images_{BIG}.csv", OUT / f"bench_{BIG}.db"
    try:
        make_manifest(manifest, BIG)
        seconds, cpu, own, children = time_uploader(manifest, ledger)
        print(
            f"{BIG:,} rows ({os.path.getsize(manifest) / 1e6:.0f} MB): {seconds:.1f} s, CPU {cpu:.1f} s, "
            f"peak RSS MB {own:.1f}, slice processes {children:.1f}"
        )
    finally:
        for path in (manifest, ledger, Path(f"{ledger}-wal"), Path(f"{ledger}-shm")):
            path.unlink(missing_ok=True)


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
