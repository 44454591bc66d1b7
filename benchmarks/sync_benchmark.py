"""`uploader sync` over a large ledger against the sandbox at 20 ms, beside a bare aiohttp GET loop.

A ledger of N sent jobs (default 100,000; built directly: the sandbox replays a journal of the same jobs, all
already completed) is synced with `--results DIR`, `--runs` times (a fresh copy of the ledger and an empty
directory each time). Reported per run: listing requests against the target 1.05 x N/100, job reads, wall
and CPU seconds (and CPU per result), the requests used (listing, job reads, result downloads), the sync
process's peak memory, and results per second beside two bare aiohttp loops at the same concurrency in the
same run:

- `bare_job_and_result`: per result, GET job (with the key) then GET the result URL it names: the two
  requests the API requires (the listing names no result URL). This is the fair comparison.
- `bare_result_only`: per result, one GET of a result URL known in advance (an upper bound no client of
  this API can reach).

The sync's rate counts its whole run (process start, listing and results). With 2 cores or more the
sandbox runs pinned to core 1 and this process, the sync and the bare loops to core 0, so neither side
takes the other's core.

    python benchmarks/sync_benchmark.py [--jobs 100000] [--concurrency 64] [--runs 3]

Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from _sandbox import KEY, bench_env, pinned, start_sandbox

PROJECT = "bench"
#: Two cores or more: the sandbox on core 1, the client side on core 0.
PINNED = (os.cpu_count() or 1) >= 2
_SERVE = """
import sys
from pathlib import Path
from uploader.sandbox import SandboxConfig, serve
serve(SandboxConfig(api_key={key!r}, latency_ms={latency}, faults_on_all=True, complete_after_s=0,
                    state_file=Path({state!r})), host="127.0.0.1", port={{port}})
"""


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
    with contextlib.closing(sqlite3.connect(ledger)) as conn, conn:  # closed: no WAL left beside a copy
        conn.executemany(
            "UPDATE jobs SET status = 'succeeded', job_id = ?, batch_id = ?, origin = 'created' "
            "WHERE project_id = ? AND reference_id = ?",
            [(j, batch, PROJECT, r) for r, j in zip(refs, ids)],
        )
    return journal, ledger, batch


def start_journal_sandbox(journal: Path, latency_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    """The sandbox serving `journal` (its jobs already final), on core 1 when there are two."""
    code = _SERVE.format(key=KEY, latency=latency_ms, state=str(journal))
    pin = pinned(1) if PINNED else []
    return start_sandbox(command=[sys.executable, "-c", code], prefix=pin, health="/_sandbox/health", attempts=1200)


def stats(url: str) -> dict[str, object]:
    document: dict[str, object] = json.loads(urllib.request.urlopen(url + "/_sandbox/stats", timeout=30).read())
    return document


def run_sync(ledger: Path, url: str, results: Path, concurrency: int) -> tuple[float, float, float, dict[str, object]]:
    """(seconds, CPU seconds and peak MiB of the sync process, its --json document). The figures are the sync
    process's own (wait4), not RUSAGE_CHILDREN's, whose peak is the largest of every child so far (the
    `uploader load` that built the ledger among them)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
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
            env=bench_env(UPLOADER_API_KEY=KEY),  # compiled bytecode written and used, as a user's install
            stdout=out,
            stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"sync failed ({proc.returncode}): {err.read()[-2000:].decode(errors='replace')}")
        document: dict[str, object] = json.loads(out.read())
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, document


async def bare_loop(base_url: str, job_ids: list[str], concurrency: int, job_first: bool) -> tuple[float, float]:
    """(seconds, CPU seconds) for a bare aiohttp client to fetch every job's result, `concurrency` at a time:
    with `job_first`, GET job then the result URL it names; else the result URL alone."""
    import aiohttp

    queue = list(reversed(job_ids))
    headers = {"x-api-key": KEY}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            while queue:
                job_id = queue.pop()
                url = f"{base_url}/_sandbox/results/{PROJECT}/{job_id}"
                if job_first:
                    async with session.get(f"{base_url}/v1/projects/{PROJECT}/jobs/{job_id}", headers=headers) as r:
                        url = (await r.json())["data"]["result"]
                async with session.get(url) as response:
                    await response.read()

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, time.process_time() - cpu


def measure(jobs: int, concurrency: int, latency_ms: float, runs: int) -> list[dict[str, object]]:
    """`runs` syncs of a fresh copy of one N-job ledger, each followed by the two bare loops."""
    out = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        journal, built, _ = build(tmp, jobs)
        with sqlite3.connect(built) as conn:
            job_ids = [r[0] for r in conn.execute("SELECT job_id FROM jobs ORDER BY id")]
        proc, url = start_journal_sandbox(journal, latency_ms)
        try:
            for run in range(runs):
                ledger = tmp / f"run{run}.db"
                shutil.copy(built, ledger)
                seconds, cpu, peak_mib, doc = run_sync(ledger, url, tmp / f"results{run}", concurrency)
                shutil.rmtree(tmp / f"results{run}")
                ledger.unlink()
                pair, pair_cpu = asyncio.run(bare_loop(url, job_ids, concurrency, job_first=True))
                one, _ = asyncio.run(bare_loop(url, job_ids, concurrency, job_first=False))
                results = int(str(doc["results_fetched"]))
                sync_rate = results / seconds
                out.append(
                    {
                        "jobs": jobs,
                        "listing_requests": doc["listing_requests"],
                        "listing_target": round(1.05 * jobs / 100),
                        "job_requests": doc["job_requests"],
                        "results": results,
                        "sync_seconds": round(seconds, 1),
                        "sync_cpu_seconds": round(cpu, 1),
                        "sync_peak_mib": round(peak_mib, 1),
                        "requests": int(str(doc["listing_requests"])) + int(str(doc["job_requests"])) + results,
                        "sync_cpu_ms_per_result": round(1000 * cpu / max(1, results), 2),
                        "bare_cpu_ms_per_result": round(1000 * pair_cpu / jobs, 2),
                        "results_per_s_sync": round(sync_rate, 1),
                        "results_per_s_bare_job_and_result": round(jobs / pair, 1),
                        "bare_job_and_result_cpu_seconds": round(pair_cpu, 1),
                        "results_per_s_bare_result_only": round(jobs / one, 1),
                        "ratio_to_bare_job_and_result": round(sync_rate * pair / jobs, 2),
                        "ratio_to_bare_result_only": round(sync_rate * one / jobs, 2),
                        "load_average": round(os.getloadavg()[0], 2),
                    }
                )
                print(json.dumps(out[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait()
    return out


def summary(rows: list[dict[str, object]]) -> dict[str, object]:
    """min / median / max of each figure over the runs."""
    keys = [k for k in rows[0] if k not in ("jobs", "listing_target")]
    spread = {}
    for key in keys:
        values = sorted(float(str(r[key])) for r in rows)
        spread[key] = [values[0], round(statistics.median(values), 2), values[-1]]
    return {"jobs": rows[0]["jobs"], "runs": len(rows), "min_median_max": spread}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-small", action="store_true", help="Measure N only, not N/10 too.")
    args = parser.parse_args()
    if PINNED:
        os.sched_setaffinity(0, {0})  # this process, the sync and the bare loops; the sandbox has core 1
    sizes = [args.jobs] if args.skip_small else [max(100, args.jobs // 10), args.jobs]
    for jobs in sizes:
        print(json.dumps(summary(measure(jobs, args.concurrency, args.latency_ms, args.runs))), flush=True)


if __name__ == "__main__":
    main()
