"""`uploader report` on a 1,000,000-row SQLite ledger: the seconds and the peak memory of building the page.

Fills a fresh ledger with N rows in every state (answered over 8 hours, in 2 projects and 200 batches, with
error codes and attempts), then times `uploader report` in a process of its own (start-up included) and reads
its peak resident memory and CPU time, three times (min/median/max); the same for a ledger a tenth the size,
so that flat memory shows as the same peak. Prints the figures, the page's size and the load average, and
the seconds of building the page in-process.

    python benchmarks/report_benchmark.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _sandbox import spread

STATES = ["succeeded"] * 14 + ["failed", "pending", "uncertain", "blocked", "conflict", "pending"]
CODES = {
    "failed": "FS_0003",
    "pending": "FS_0000",
    "uncertain": "ambiguous",
    "blocked": "url_http_error",
    "conflict": "FS_0001",
}


def fill(path: Path, rows: int) -> None:
    """A ledger of `rows` jobs, written with one INSERT … SELECT over a recursive counter (seconds, not minutes)."""
    import sqlite3

    from uploader.ledger import Ledger

    Ledger.open(str(path)).close()
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO manifests (path, size, sha256, options_hash, row_count, loaded_at, conflicts, "
        "changed) VALUES ('night.csv', 1, 'a', 'b', ?, '2026-12-01 22:00:00', 0, ?)",
        (rows, rows),
    )
    states = "CASE i % 20 " + " ".join(f"WHEN {k} THEN '{s}'" for k, s in enumerate(STATES)) + " END"
    conn.execute(f"""
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {rows})
        INSERT INTO jobs (project_id, reference_id, work_flow_id, batch_id, body, body_hash, status, error_code,
                          http_status, error_message, attempts, origin, recovered, lease_token, created_at,
                          updated_at, manifest_id)
        SELECT 'proj-' || (i % 2), 'ref-' || i, 'wf', 'batch-' || (i % 200), '{{}}', 'h', s,
               CASE s {" ".join(f"WHEN '{k}' THEN '{v}'" for k, v in CODES.items())} END,
               CASE WHEN i % 97 = 0 THEN 429 ELSE 200 END,
               CASE WHEN s <> 'succeeded' THEN 'message ' || s END,
               1 + i % 3, CASE WHEN s = 'succeeded' THEN 'created' END, 0, 0,
               '2026-12-01 22:00:00', datetime('2026-12-01 22:00:00', '+' || (i * 28800 / {rows}) || ' seconds'), 1
        FROM (SELECT i, {states} AS s FROM n)
    """)
    conn.commit()
    conn.close()


def measure(path: Path) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds, peak RSS in MiB, page bytes) of `uploader report` on the ledger, in a child
    process of its own (os.wait4: that process's own peak and CPU time)."""
    out = path.with_suffix(".html")
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "uploader", "report", "--ledger", str(path), "-o", str(out), "-q"])
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    assert os.waitstatus_to_exitcode(status) == 0, status
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024, out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of `uploader report` per ledger")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for rows in (args.rows // 10, args.rows):
            path = Path(tmp) / f"ledger-{rows}.db"
            start = time.perf_counter()
            fill(path, rows)
            print(f"{rows:>9,} rows: ledger filled in {time.perf_counter() - start:.1f} s", flush=True)
            runs = [measure(path) for _ in range(args.repeat)]
            print(
                f"{rows:>9,} rows: uploader report (process start included), min/median/max of {args.repeat}: "
                f"{spread([r[0] for r in runs], '{:.2f}')} s wall, {spread([r[1] for r in runs], '{:.2f}')} s CPU, "
                f"peak RSS {spread([r[2] for r in runs], '{:.0f}')} MiB, page {runs[0][3] / 1024:.0f} KiB; "
                f"load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        print(f"{args.rows:>9,} rows: the page built in {build(path):.2f} s in this process (no start-up)")


def build(path: Path) -> float:
    """Seconds to aggregate the ledger and render the page, imports and opening the ledger excluded."""
    import datetime as dt

    from uploader.cli.report import Provenance, render_report
    from uploader.ledger import Ledger, report_data

    led = Ledger.open(str(path), create=False)
    try:
        start = time.perf_counter()
        render_report(report_data(led.engine), Provenance("benchmark", str(path), dt.datetime(2026, 1, 1), {}))
        return time.perf_counter() - start
    finally:
        led.close()


if __name__ == "__main__":
    main()
