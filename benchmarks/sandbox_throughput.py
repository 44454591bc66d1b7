"""How many job POSTs a second the sandbox answers, so we know it is never a benchmark's bottleneck.

The sandbox runs in its own process (client and server each get a core); a bare aiohttp client sends
N job creations with unique reference_ids at a fixed concurrency, once per latency setting. Besides the
client-side rate, the server's own CPU time is read from /proc, giving its capacity on one core even when
the client is the slower side. Loopback only, bounded in count and time.

    .venv/bin/python benchmarks/sandbox_throughput.py [--n 20000] [--concurrency 64] [--latencies 0,20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from uploader.sandbox import DEFAULT_API_KEY, SandboxConfig, serve

WARMUP = 500
API_KEY = DEFAULT_API_KEY


def _server_main(latency_ms: float, urls: Any) -> None:
    serve(SandboxConfig(latency_ms=latency_ms), port=0, on_ready=urls.put)


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (Linux /proc); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    latency_ms: float
    requests: int
    ok: int
    seconds: float
    server_cpu_s: float | None

    def line(self) -> str:
        rate = self.requests / self.seconds
        text = f"latency {self.latency_ms:>4g} ms: {self.requests} POSTs in {self.seconds:.2f} s = {rate:,.0f} req/s"
        if self.ok != self.requests:
            text += f" ({self.requests - self.ok} not 200!)"
        if self.server_cpu_s:
            text += (
                f"; server CPU {self.server_cpu_s:.2f} s = {1e6 * self.server_cpu_s / self.requests:.0f} µs/request"
                f" (capacity ~{self.requests / self.server_cpu_s:,.0f} req/s on one core)"
            )
        return text


async def _blast(base_url: str, prefix: str, n: int, concurrency: int) -> int:
    """POST n jobs over `concurrency` keep-alive connections; returns how many got 200."""
    url = f"{base_url}/v1/projects/bench/jobs"
    headers = {"x-api-key": API_KEY, "Content-Type": "application/json"}
    bodies = [
        json.dumps(
            {"reference_id": f"{prefix}-{i}", "work_flow_id": "wf", "data": {"image_url": f"https://img/{i}.jpg"}}
        ).encode()
        for i in range(n)
    ]
    next_index = iter(range(n))
    ok = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal ok
            for i in next_index:
                async with session.post(url, data=bodies[i], headers=headers) as response:
                    await response.read()
                    ok += response.status == 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def run_one(latency_ms: float, n: int, concurrency: int, time_limit_s: float) -> Result:
    ctx = multiprocessing.get_context("spawn")
    urls = ctx.Queue()
    process = ctx.Process(target=_server_main, args=(latency_ms, urls), daemon=True)
    process.start()
    try:
        base_url = urls.get(timeout=30)
        asyncio.run(asyncio.wait_for(_blast(base_url, "warm", WARMUP, concurrency), time_limit_s))
        cpu_before = _cpu_seconds(process.pid or 0)
        started = time.perf_counter()
        ok = asyncio.run(asyncio.wait_for(_blast(base_url, "run", n, concurrency), time_limit_s))
        seconds = time.perf_counter() - started
        cpu_after = _cpu_seconds(process.pid or 0)
        cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
        return Result(latency_ms, n, ok, seconds, cpu)
    finally:
        process.terminate()  # SIGTERM: serve() returns cleanly
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="job POSTs per latency setting")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latencies", default="0,20", help="comma-separated latency_ms values")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds allowed per run")
    args = parser.parse_args()
    print(f"sandbox throughput: {args.n} job POSTs per run, concurrency {args.concurrency}, {os.cpu_count()} CPUs")
    for latency in (float(x) for x in args.latencies.split(",") if x.strip()):
        result = run_one(latency, args.n, args.concurrency, args.time_limit)
        expected = f" (ideal {args.concurrency / (latency / 1000):,.0f}/s)" if latency else ""
        print(result.line() + expected, flush=True)


if __name__ == "__main__":
    main()
