"""Scale-out: 1, 2 and 4 `uploader run` processes sharing one PostgreSQL ledger, beside SQLite with one.

The sandbox runs in its own process at 20 ms latency. Every configuration loads the same N-row manifest into
a fresh ledger, then starts P worker processes at once (each with --concurrency C) and measures the wall
time until all have exited (process start-up included) and the CPU seconds the workers used. Each
configuration is checked: every worker exited 0, the ledger holds N succeeded rows, and the sandbox created
exactly N jobs for it (one per reference_id). Results also go to benchmarks/out/scale_benchmark.json.

    UPLOADER_TEST_POSTGRES_URL=postgresql+psycopg://u:p@127.0.0.1/db \\
        python benchmarks/scale_benchmark.py [--rows 10000] [--concurrency 16]

Note: this machine has 2 cores shared by the sandbox and every worker process, so beyond ~2 processes the
figures measure CPU contention as much as the ledger.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sandbox import KEY, start_sandbox  # noqa: E402
from run_benchmark import OUT, make_manifest  # noqa: E402


def fresh_postgres(admin_url: str) -> tuple[str, str]:
    """A new empty database on the server; returns (sqlalchemy url, name)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"uploader_bench_{uuid.uuid4().hex[:8]}"
    url = make_url(admin_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False), name


def drop_postgres(admin_url: str, name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/_sandbox/stats", timeout=10) as r:
        return json.load(r)


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    ledger: str, processes: int, manifest: Path, url: str, project: str, concurrency: int, rows: int
) -> tuple[float, float]:
    """(wall seconds, worker CPU seconds) of P processes uploading the manifest; checks the outcome."""
    env = {**os.environ, "PLAYMENT_API_KEY": KEY}
    common = ["--project-id", project, "--work-flow-id", "wf", "--ledger", ledger]
    subprocess.run(
        [sys.executable, "-m", "uploader", "load", str(manifest), *common], check=True, env=env, capture_output=True
    )
    cmd = [
        sys.executable,
        "-m",
        "uploader",
        "run",
        *common,
        "--base-url",
        url,
        "--concurrency",
        str(concurrency),
        "--quiet",
    ]
    created_before = stats(url)["jobs_created"]
    cpu = cpu_children()
    t = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(processes)
    ]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - t
    cpu = cpu_children() - cpu
    failed = [(p.returncode, err[-2000:]) for p, err in zip(procs, errors) if p.returncode]
    if failed:
        raise SystemExit(f"{len(failed)} of {processes} workers failed: {failed!r}")
    status = subprocess.run(
        [sys.executable, "-m", "uploader", "status", "--json", "--ledger", ledger],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    succeeded = json.loads(status.stdout)["counts"]["succeeded"]
    created = stats(url)["jobs_created"] - created_before
    if succeeded != rows or created != rows:
        raise SystemExit(f"{project}: {succeeded} rows succeeded and {created} jobs created, of {rows}")
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    admin = os.environ.get("UPLOADER_TEST_POSTGRES_URL")
    if not admin:
        raise SystemExit("set UPLOADER_TEST_POSTGRES_URL (see .ci/run) to a PostgreSQL database")
    OUT.mkdir(exist_ok=True)
    manifest = OUT / f"scale_{args.rows}.csv"
    make_manifest(manifest, args.rows)
    sandbox, url = start_sandbox("--latency-ms", str(args.latency_ms))
    results: list[tuple[str, int, float, float]] = []
    try:
        sqlite_path = OUT / "scale_sqlite.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(sqlite_path) + suffix).unlink(missing_ok=True)
        secs, cpu = measure(str(sqlite_path), 1, manifest, url, "scale-sqlite", args.concurrency, args.rows)
        results.append(("sqlite", 1, secs, cpu))
        for processes in (1, 2, 4):
            ledger, name = fresh_postgres(admin)
            try:
                secs, cpu = measure(
                    ledger, processes, manifest, url, f"scale-pg-{processes}", args.concurrency, args.rows
                )
                results.append(("postgresql", processes, secs, cpu))
            finally:
                drop_postgres(admin, name)
        s = stats(url)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
    base = next(r for r in results if r[0] == "postgresql" and r[1] == 1)[2]
    bound = args.concurrency / (args.latency_ms / 1000)
    print(
        f"rows={args.rows} latency={args.latency_ms} ms concurrency/process={args.concurrency} "
        f"(bound per process {bound:.0f}/s)"
    )
    print(f"{'ledger':<11} {'procs':>5} {'seconds':>8} {'jobs/s':>8} {'scaling vs 1 pg':>16} {'worker CPU s/1k':>16}")
    for engine, procs, secs, cpu in results:
        print(
            f"{engine:<11} {procs:>5} {secs:>8.2f} {args.rows / secs:>8.0f} {base / secs:>16.2f} "
            f"{cpu / args.rows * 1000:>16.2f}"
        )
    print(
        f"sandbox: max jobs created per reference_id = {s['jobs_created_per_reference_id_max']}, "
        f"FS_0001 refusals = {s['fs_0001_refusals']}; cores: {os.cpu_count()}"
    )
    (OUT / "scale_benchmark.json").write_text(
        json.dumps(
            {
                "rows": args.rows,
                "latency_ms": args.latency_ms,
                "concurrency_per_process": args.concurrency,
                "cores": os.cpu_count(),
                "results": [
                    {
                        "ledger": e,
                        "processes": p,
                        "seconds": round(t, 2),
                        "jobs_per_second": round(args.rows / t),
                        "scaling_vs_1_pg": round(base / t, 2),
                        "worker_cpu_seconds": round(c, 1),
                    }
                    for e, p, t, c in results
                ],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
