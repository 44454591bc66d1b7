"""Throughput of the whole `uploader run` command against the sandbox, beside a bare aiohttp loop.

1. N image rows (default 20,000), sandbox at 20 ms latency in its own process, concurrency 64: the whole
   command (start-up and load included) vs a bare aiohttp client loop against the same sandbox, vs the
   bound concurrency / latency. CPU (user + system) of the uploader process only beside the CPU of the bare
   loop, each run in its own child process and measured from RUSAGE_CHILDREN deltas; with >= 2 cores the
   sandbox is pinned to core 1 and the clients to core 0 (`taskset`), so the ratio measures the client.
   Two ratios: CPU per job / bare CPU per request (target <= 1.5) and jobs/s / bare req/s (target >= 0.85).
   The uploader runs on uvloop (uploader.api.loop) and the bare loop on asyncio's own loop, as a plain
   aiohttp script would; the same ratios against the bare loop on uvloop are printed too, for what the
   uploader adds over the same loop. `--repeat K` runs all three K times and prints min/median/max.

    python benchmarks/run_benchmark.py [--rows 20000] [--repeat 5]

The rerun over a finished ledger is benchmarks/rerun_benchmark.py.

Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _sandbox import KEY, bench_env, pinning, spread, start_sandbox, stop

OUT = Path(__file__).resolve().parent / "out"


def precompile() -> None:
    """Write the uploader's bytecode caches before timing anything: with PYTHONDONTWRITEBYTECODE set (or a
    checkout never imported), every timed `uploader run` would compile its sources again, a cost no installed
    copy pays and the bare loop (aiohttp, installed with its caches) never does."""
    compileall.compile_dir(Path(__file__).resolve().parent.parent / "uploader", quiet=1)


def make_manifest(path: Path, rows: int) -> None:
    if path.exists():
        return
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "image_url"])
        for i in range(rows):
            w.writerow([f"img-{i:08d}", f"https://cdn.example.com/images/{i:08d}.jpg"])


async def bare_loop(url: str, n: int, concurrency: int, project: str) -> float:
    """Requests per second of a plain aiohttp loop (run in a child: `--bare URL N PROJECT`)."""
    import aiohttp

    counter = iter(range(n))
    headers = {"x-api-key": KEY, "content-type": "application/json"}

    async def one(session: aiohttp.ClientSession) -> None:
        for i in counter:
            body = json.dumps(
                {
                    "reference_id": f"bare-{i}",
                    "work_flow_id": "wf",
                    "data": {"image_url": f"https://cdn.example.com/{i}.jpg"},
                }
            )
            async with session.post(f"{url}/v1/projects/{project}/jobs", data=body, headers=headers) as r:
                await r.read()

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        t = time.perf_counter()
        await asyncio.gather(*(one(session) for _ in range(concurrency)))
        return n / (time.perf_counter() - t)


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_bare(url: str, n: int, project: str, prefix: list[str], loop: str = "asyncio") -> tuple[float, float]:
    """(seconds, CPU seconds) of the bare loop (on `loop`: asyncio or uvloop) in its own process."""
    before = child_cpu()
    t = time.perf_counter()
    proc = subprocess.run(
        [*prefix, sys.executable, __file__, "--bare", url, str(n), project, loop], capture_output=True, text=True
    )
    elapsed = time.perf_counter() - t
    cpu = child_cpu() - before
    if proc.returncode != 0:
        raise SystemExit(f"bare loop failed: {proc.stderr[-2000:]}")
    return elapsed, cpu


def run_uploader(
    manifest: Path, ledger: Path, url: str, project: str, extra: list[str] = (), prefix: list[str] = ()
) -> tuple[float, float, dict]:
    before = child_cpu()
    t = time.perf_counter()
    proc = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "uploader",
            "run",
            str(manifest),
            "--project-id",
            project,
            "--work-flow-id",
            "wf",
            "--ledger",
            str(ledger),
            "--base-url",
            url,
            "--concurrency",
            "64",
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=bench_env(PLAYMENT_API_KEY=KEY),
    )
    elapsed = time.perf_counter() - t
    cpu = child_cpu() - before
    if proc.returncode != 0:
        raise SystemExit(f"uploader run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed, cpu, json.loads(proc.stdout)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--bare":
        factory = None
        if sys.argv[5] == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(bare_loop(sys.argv[2], int(sys.argv[3]), 64, sys.argv[4]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    precompile()
    server_prefix, client_prefix, note = pinning()
    proc, url = start_sandbox("--latency-ms", str(args.latency_ms), prefix=server_prefix)
    try:
        manifest = OUT / f"run_{args.rows}.csv"
        make_manifest(manifest, args.rows)
        ledger = OUT / "run_bench.db"
        cpu_ratio: list[float] = []
        wall_ratio: list[float] = []
        job_us: list[float] = []
        bare_us: list[float] = []
        uv_cpu_ratio: list[float] = []
        uv_wall_ratio: list[float] = []
        print(f"rows={args.rows} latency={args.latency_ms} ms concurrency=64; {note}; load {os.getloadavg()}")
        for k in range(args.repeat):
            bare_s, bare_cpu = run_bare(url, args.rows, f"bare-{k}", client_prefix)
            uv_s, uv_cpu = run_bare(url, args.rows, f"bare-uv-{k}", client_prefix, "uvloop")
            for suffix in ("", "-wal", "-shm"):
                Path(str(ledger) + suffix).unlink(missing_ok=True)
            project = f"bench-{int(time.time())}-{k}"
            elapsed, cpu, summary = run_uploader(manifest, ledger, url, project, prefix=client_prefix)
            if summary["counts"].get("succeeded") != args.rows:
                raise SystemExit(f"not every job succeeded: {summary['counts']}")
            job_us.append(cpu / args.rows * 1e6)
            bare_us.append(bare_cpu / args.rows * 1e6)
            cpu_ratio.append(job_us[-1] / bare_us[-1])
            wall_ratio.append(bare_s / elapsed)
            uv_cpu_ratio.append(cpu / uv_cpu)
            uv_wall_ratio.append(uv_s / elapsed)
            print(
                f"[{k + 1}] bare {args.rows / bare_s:6.0f} req/s {bare_us[-1]:5.0f} CPU us/req | uploader run "
                f"{args.rows / elapsed:6.0f} jobs/s ({elapsed:.2f} s) {job_us[-1]:5.0f} CPU us/job | "
                f"CPU ratio {cpu_ratio[-1]:.2f} wall ratio {wall_ratio[-1]:.2f} | bare on uvloop "
                f"{args.rows / uv_s:6.0f} req/s {uv_cpu / args.rows * 1e6:5.0f} CPU us/req"
            )
        print(f"bound concurrency/latency: {64 / (args.latency_ms / 1000):.0f} req/s")
        print(f"uploader CPU us per job     min/median/max: {spread(job_us, '{:.0f}')}")
        print(f"bare CPU us per request     min/median/max: {spread(bare_us, '{:.0f}')}")
        print(f"CPU per job / bare per req  min/median/max: {spread(cpu_ratio, '{:.2f}')}  (target <= 1.5)")
        print(f"wall: uploader / bare rate  min/median/max: {spread(wall_ratio, '{:.2f}')}  (target >= 0.85)")
        print(
            f"against the bare loop on uvloop: CPU ratio {spread(uv_cpu_ratio, '{:.2f}')}, wall ratio "
            f"{spread(uv_wall_ratio, '{:.2f}')}"
        )
        print(f"load average after: {os.getloadavg()}")
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
