"""`uploader sync` over a large ledger against the sandbox at 20 ms, beside a bare aiohttp GET loop.

A ledger of N sent jobs (default 100,000; built directly: the sandbox replays a journal of the same jobs, all
already completed) is synced with `--results DIR`. Reported: listing requests against the target
1.05 x N/100, job reads, seconds, results downloaded per second beside a bare aiohttp loop fetching the same
result URLs at the same concurrency, and the sync process's peak memory at N and at N/10 (flat in N is the
goal).

    python benchmarks/sync_benchmark.py [--jobs 100000] [--concurrency 64]

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
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

KEY = "bench-key"
PROJECT = "bench"
_SERVE = """
import sys
from pathlib import Path
from uploader.sandbox import SandboxConfig, serve
serve(SandboxConfig(api_key={key!r}, latency_ms={latency}, faults_on_all=True, complete_after_s=0,
                    state_file=Path({state!r})), host="127.0.0.1", port={port})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def build(tmp: Path, jobs: int) -> tuple[Path, Path, str]:
    """A sandbox journal of `jobs` jobs in one batch and a ledger where each row has succeeded with its job."""
    batch = str(uuid.uuid4())
    refs = [f"img-{i:07d}" for i in range(jobs)]
    ids = [str(uuid.uuid4()) for _ in refs]
    journal = tmp / "state.jsonl"
    with journal.open("w") as f:
        f.write(json.dumps({"kind": "batch", "project_id": PROJECT, "batch_id": batch, "name": "b"}) + "\n")
        for ref, job_id in zip(refs, ids):
            f.write(
                json.dumps(
                    {
                        "kind": "job",
                        "project_id": PROJECT,
                        "batch_id": batch,
                        "reference_id": ref,
                        "job_id": job_id,
                        "work_flow_id": "wf",
                        "priority_weight": 5,
                        "data": {"image_url": f"https://cdn.example.com/{ref}.jpg"},
                    }
                )
                + "\n"
            )
    manifest = tmp / "m.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["reference_id", "image_url"])
        writer.writerows([ref, f"https://cdn.example.com/{ref}.jpg"] for ref in refs)
    ledger = tmp / "l.db"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "uploader",
            "load",
            str(manifest),
            "--project-id",
            PROJECT,
            "--work-flow-id",
            "wf",
            "--ledger",
            str(ledger),
            "--quiet",
        ],
        check=True,
    )
    with sqlite3.connect(ledger) as conn:
        conn.executemany(
            "UPDATE jobs SET status = 'succeeded', job_id = ?, batch_id = ?, origin = 'created' "
            "WHERE project_id = ? AND reference_id = ?",
            [(j, batch, PROJECT, r) for r, j in zip(refs, ids)],
        )
    return journal, ledger, batch


def start_sandbox(journal: Path, latency_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    code = _SERVE.format(key=KEY, latency=latency_ms, state=str(journal), port=port)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            urllib.request.urlopen(url + "/_sandbox/health", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("sandbox did not start")


def stats(url: str) -> dict[str, object]:
    document: dict[str, object] = json.loads(urllib.request.urlopen(url + "/_sandbox/stats", timeout=30).read())
    return document


def run_sync(ledger: Path, url: str, results: Path, concurrency: int) -> tuple[float, float, dict[str, object]]:
    """(seconds, peak MiB of the sync process, its --json document)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "uploader",
            "sync",
            "--ledger",
            str(ledger),
            "--base-url",
            url,
            "--results",
            str(results),
            "--concurrency",
            str(concurrency),
            "--json",
        ],
        env={**os.environ, "UPLOADER_API_KEY": KEY},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"sync failed ({out.returncode}): {out.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    document: dict[str, object] = json.loads(out.stdout)
    return seconds, max(peak, before) / 1024, document


async def bare_loop(urls: list[str], concurrency: int) -> float:
    """Seconds for a bare aiohttp client to GET every URL, `concurrency` at a time."""
    import aiohttp

    queue = list(reversed(urls))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            while queue:
                async with session.get(queue.pop()) as response:
                    await response.read()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


def measure(jobs: int, concurrency: int, latency_ms: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        journal, ledger, _ = build(tmp, jobs)
        proc, url = start_sandbox(journal, latency_ms)
        try:
            seconds, peak_mib, doc = run_sync(ledger, url, tmp / "results", concurrency)
            with sqlite3.connect(ledger) as conn:
                paths = [r[0] for r in conn.execute("SELECT job_id FROM jobs ORDER BY id")]
            bare_urls = [f"{url}/_sandbox/results/{PROJECT}/{job_id}" for job_id in paths]
            bare = asyncio.run(bare_loop(bare_urls, concurrency))
            sandbox = stats(url)
        finally:
            proc.terminate()
            proc.wait()
    results = int(str(doc["results_fetched"]))
    return {
        "jobs": jobs,
        "listing_requests": doc["listing_requests"],
        "listing_target": round(1.05 * jobs / 100),
        "job_requests": doc["job_requests"],
        "sync_seconds": round(seconds, 1),
        "results": results,
        "results_per_s_sync": round(results / seconds, 1),
        "results_per_s_bare_aiohttp": round(jobs / bare, 1),
        "sync_peak_mib": round(peak_mib, 1),
        "sandbox_result_requests": sandbox["result_requests"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--skip-small", action="store_true", help="Measure N only, not N/10 too.")
    args = parser.parse_args()
    if not args.skip_small:
        small = measure(max(100, args.jobs // 10), args.concurrency, args.latency_ms)
        print(json.dumps(small), flush=True)
    large = measure(args.jobs, args.concurrency, args.latency_ms)
    print(json.dumps(large), flush=True)


if __name__ == "__main__":
    main()
