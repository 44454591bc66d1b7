"""Throughput of the whole `uploader run` command against the sandbox, beside a bare aiohttp loop.

1. N image rows (default 20,000), sandbox at 20 ms latency in its own process, concurrency 64: the whole
   command (start-up and load included) vs a bare aiohttp client loop against the same sandbox, vs the
   bound concurrency / latency. Also CPU seconds per 1,000 jobs.
2. Rerun over a fully succeeded ledger of R rows (default 1,000,000) with the same manifest: requests sent
   and seconds.

    python benchmarks/run_benchmark.py [--rows 20000] [--rerun-rows 1000000]

Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sandbox(latency_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uploader",
            "sandbox",
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/_sandbox/stats", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("sandbox did not start")


def make_manifest(path: Path, rows: int) -> None:
    if path.exists():
        return
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "image_url"])
        for i in range(rows):
            w.writerow([f"img-{i:08d}", f"https://cdn.example.com/images/{i:08d}.jpg"])


async def bare_loop(url: str, n: int, concurrency: int, project: str) -> float:
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


def run_uploader(
    manifest: Path, ledger: Path, url: str, project: str, extra: list[str] = ()
) -> tuple[float, float, dict]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(
        [
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
        env={**os.environ, "PLAYMENT_API_KEY": KEY},
    )
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"uploader run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, json.loads(proc.stdout)


def rerun(rows: int, url: str) -> None:
    manifest = OUT / f"rerun_{rows}.csv"
    make_manifest(manifest, rows)
    ledger = OUT / f"rerun_{rows}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(ledger) + suffix).unlink(missing_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "uploader",
            "load",
            str(manifest),
            "--project-id",
            "rerun",
            "--work-flow-id",
            "wf",
            "--ledger",
            str(ledger),
        ],
        check=True,
        capture_output=True,
    )
    with sqlite3.connect(ledger) as db:  # as if a previous run had sent everything
        db.execute("UPDATE jobs SET status = 'succeeded', job_id = 'job-' || id, attempts = 1")
    elapsed, _, summary = run_uploader(manifest, ledger, url, "rerun")
    print(
        f"rerun over {rows} succeeded rows: {summary['this_run']['requests']} requests, {elapsed:.2f} s "
        "(target: 0 requests, <= 1 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rerun-rows", type=int, default=1_000_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    proc, url = start_sandbox(args.latency_ms)
    try:
        manifest = OUT / f"run_{args.rows}.csv"
        make_manifest(manifest, args.rows)
        bare = asyncio.run(bare_loop(url, args.rows, 64, "bare"))
        ledger = OUT / "run_bench.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(ledger) + suffix).unlink(missing_ok=True)
        project = f"bench-{int(time.time())}"
        elapsed, cpu, summary = run_uploader(manifest, ledger, url, project)
        ours = args.rows / elapsed
        bound = 64 / (args.latency_ms / 1000)
        print(f"rows={args.rows} latency={args.latency_ms} ms concurrency=64")
        print(f"bare aiohttp loop:        {bare:8.0f} req/s")
        print(
            f"uploader run (whole cmd): {ours:8.0f} jobs/s  ({elapsed:.2f} s, ratio to bare {ours / bare:.2f}, "
            f"target >= 0.70)"
        )
        print(f"bound concurrency/latency:{bound:8.0f} req/s")
        print(f"CPU: {cpu:.2f} s total, {cpu / args.rows * 1000:.3f} CPU s per 1,000 jobs")
        print(f"summary: {summary['counts']}")
        if args.rerun_rows:
            rerun(args.rerun_rows, url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
