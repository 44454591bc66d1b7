"""What ApiClient costs per request compared with a bare aiohttp loop (the worker's throughput ceiling).

A trivial aiohttp server runs in a subprocess (its own core): it answers every job POST with a fixed
success envelope after a 20 ms sleep, like a real API's latency. The same N create_job calls at a fixed
concurrency then go through (a) a bare aiohttp.ClientSession, (b) ApiClient (its own HTTP/1.1 transport,
uploader.api.wire), and (c) httpx.AsyncClient over the httpx-aiohttp transport (a test extra), for the record
of why ApiClient does not go through httpx's models on its hot path. Rounds
alternate so drift hits every contender alike; the median round is reported, with client CPU time per
request (the figure that matters when the box, not the latency, is the limit). Loopback only.

    .venv/bin/python benchmarks/client_overhead.py [--n 5000] [--concurrency 64] [--rounds 3] [--sleep-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
from httpx_aiohttp import AiohttpTransport  # noqa: E402

from uploader.api.client import ApiClient  # noqa: E402

API_KEY = "benchmark-key"
PROJECT = "p1"
BODY = json.dumps(
    {"reference_id": "ref-000001", "work_flow_id": "wf-1", "batch_id": "", "data": {"image_url": "https://x/1.jpg"}}
)

SERVER = r"""
import asyncio, sys
from aiohttp import web
SLEEP = float(sys.argv[1]) / 1000
BODY = (b'{"data": {"job_id": "3f2a0b8e-0000-4000-8000-000000000001", "reference_id": "ref-000001", '
        b'"work_flow_id": "wf-1"}, "success": true}')
async def create(request):
    await request.read()
    await asyncio.sleep(SLEEP)
    return web.Response(body=BODY, content_type="application/json")
async def main():
    app = web.Application()
    app.router.add_post("/v1/projects/{project}/jobs", create)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def _drive(n: int, concurrency: int, call: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """(requests a second, client CPU µs a request) for n calls by `concurrency` workers."""
    remaining = iter(range(n))

    async def worker() -> None:
        for _ in remaining:
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu / n * 1e6


async def bare(base: str, n: int, concurrency: int) -> tuple[float, float]:
    url, body = f"{base}/v1/projects/{PROJECT}/jobs", BODY.encode()
    headers = {"x-api-key": API_KEY, "content-type": "application/json", "user-agent": "bench"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def call() -> None:
            async with session.post(url, data=body, headers=headers) as response:
                assert json.loads(await response.read())["success"]

        await _drive(min(n, 500), concurrency, call)  # warm the pool
        return await _drive(n, concurrency, call)


async def api_client(base: str, n: int, concurrency: int) -> tuple[float, float]:
    async with ApiClient(base, API_KEY, concurrency=concurrency) as client:

        async def call() -> None:
            assert (await client.create_job(PROJECT, BODY)).success

        await _drive(min(n, 500), concurrency, call)
        return await _drive(n, concurrency, call)


async def httpx_async_client(base: str, n: int, concurrency: int) -> tuple[float, float]:
    url, body = f"{base}/v1/projects/{PROJECT}/jobs", BODY.encode()
    headers = {"x-api-key": API_KEY, "content-type": "application/json"}

    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

    transport = AiohttpTransport(client=session)
    async with httpx.AsyncClient(transport=transport, headers=headers) as client:

        async def call() -> None:
            async with client.stream("POST", url, content=body) as response:
                assert json.loads(await response.aread())["success"]

        await _drive(min(n, 500), concurrency, call)
        return await _drive(n, concurrency, call)


CONTENDERS = {"bare aiohttp": bare, "ApiClient": api_client, "httpx.AsyncClient": httpx_async_client}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sleep-ms", type=float, default=20.0)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(args.sleep_ms)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{int(server.stdout.readline())}"
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in CONTENDERS}
        for _ in range(args.rounds):
            for name, contender in CONTENDERS.items():
                runs[name].append(asyncio.run(contender(base, args.n, args.concurrency)))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(
        f"N={args.n} create_job calls, concurrency {args.concurrency}, server sleep {args.sleep_ms:g} ms, "
        f"median of {args.rounds} rounds"
    )
    rate = {name: statistics.median(r for r, _ in results) for name, results in runs.items()}
    cpu = {name: statistics.median(c for _, c in results) for name, results in runs.items()}
    for name in CONTENDERS:
        ratio = rate[name] / rate["bare aiohttp"]
        print(f"  {name:<18} {rate[name]:>7,.0f} req/s  {cpu[name]:>5.0f} µs CPU/req  ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
