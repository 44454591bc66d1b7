"""Attachment preflight speed: `uploader check` over N distinct URLs against the sandbox's files, beside a
bare aiohttp loop making the same request against the same server, and a rerun that checks nothing.

The check makes one request per URL, a GET with `Range: bytes=0-0` (uploader/api/attachments.py); so does
the bare loop, reading the one-byte body as the check does, so that the ratio measures uploader's overhead,
not a difference of method.

Sandbox in its own process, pinned to CPU 1 and both clients to CPU 0 when the machine has two or more
(`taskset`), so that neither client competes with the server for a core; each file answers after
`--latency-ms` (its `slow=` parameter); concurrency 128 for both clients; the per-host rate cap lifted (one
host here). Each client runs in its own process, `--repeat` times (a fresh copy of the loaded ledger for each
check). Prints, per round and as min/median/max: wall seconds and CPU seconds (user + system) of each client,
URLs/s, the ratio check / bare loop (target >= 0.8), the check's peak RSS (run with `--urls 10000` and with
the default to see that it is flat in N), and the rerun's seconds (target <= 1 s). The bare loop's seconds
are its loop alone; the check's are the whole command (start-up included).

    python benchmarks/preflight_benchmark.py [--urls 100000] [--latency-ms 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _sandbox import bench_env, pinned, spread, start_sandbox, stop

CONCURRENCY = 128
RANGE = {"Range": "bytes=0-0"}


def url_of(base: str, i: int, latency_ms: float) -> str:
    return f"{base}/_sandbox/files/img{i}.jpg?slow={int(latency_ms)}"


async def bare_get_loop(base: str, n: int, latency_ms: float) -> float:
    """Seconds for a one-byte ranged GET of each of the N URLs, CONCURRENCY at once, with nothing else done."""
    import aiohttp

    queue = iter([url_of(base, i, latency_ms) for i in range(n)])
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:

        async def worker() -> None:
            for url in queue:
                async with session.get(url, headers=RANGE) as response:
                    assert response.status == 206
                    await response.read()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


def timed(command: list[str]) -> tuple[float, float, int, str]:
    """Run `command` pinned to CPU 0 under /usr/bin/time: wall seconds, CPU seconds, peak RSS (KiB), stdout."""
    started = time.perf_counter()
    proc = subprocess.run(
        [*pinned(0), "/usr/bin/time", "-f", "%U %S %M", *command],
        capture_output=True,
        text=True,
        check=False,
        env=bench_env(),
    )
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 3):
        raise SystemExit(f"{command} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    user, system, rss = proc.stderr.strip().splitlines()[-1].split()
    return wall, float(user) + float(system), int(rss), proc.stdout


def check_command(ledger: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uploader",
        "check",
        "--ledger",
        str(ledger),
        "--check-concurrency",
        str(CONCURRENCY),
        "--per-host-rate",
        "1000000",
        "--json",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--urls", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bare-loop", metavar="BASE", help=argparse.SUPPRESS)  # the bare loop's own process
    args = parser.parse_args()
    if args.bare_loop:
        print(asyncio.run(bare_get_loop(args.bare_loop, args.urls, args.latency_ms)))
        return
    n = args.urls
    proc, base = start_sandbox(prefix=pinned(1))
    rounds: dict[str, list[float]] = {
        k: [] for k in ("bare", "bare_cpu", "check", "check_cpu", "rss", "rerun", "rerun_cpu")
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / "m.csv"
            with open(manifest, "w") as f:
                f.write("reference_id,image_url\n")
                f.writelines(f"r{i},{url_of(base, i, args.latency_ms)}\n" for i in range(n))
            loaded = Path(tmp) / "loaded.db"
            load = ["load", str(manifest), "--project-id", "p", "--work-flow-id", "w", "--ledger", str(loaded)]
            subprocess.run([sys.executable, "-m", "uploader", *load], check=True, capture_output=True)
            bare_command = [sys.executable, __file__, "--bare-loop", base, "--urls", str(n)]
            bare_command += ["--latency-ms", str(args.latency_ms)]
            for r in range(args.repeat):
                ledger = Path(tmp) / f"l{r}.db"
                shutil.copy(loaded, ledger)
                _, bare_cpu, _, out = timed(bare_command)
                check, check_cpu, rss, _ = timed(check_command(ledger))
                rerun, rerun_cpu, _, _ = timed(check_command(ledger))
                figures = (float(out), bare_cpu, check, check_cpu, rss / 1024, rerun, rerun_cpu)
                for key, value in zip(rounds, figures):
                    rounds[key].append(value)
                print(
                    f"round {r + 1}: bare {float(out):.2f} s ({bare_cpu:.2f} CPU-s), check {check:.2f} s "
                    f"({check_cpu:.2f} CPU-s, {rss / 1024:.0f} MiB), rerun {rerun:.2f} s ({rerun_cpu:.2f} CPU-s)",
                    flush=True,
                )
    finally:
        stop(proc)
    print(
        f"{n:,} URLs, {args.latency_ms:.0f} ms each, concurrency {CONCURRENCY}, {args.repeat} rounds (min/median/max)"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; sandbox pinned: {bool(pinned(1))}")
    print(f"bare aiohttp ranged GET loop: {spread(rounds['bare'])} s, CPU {spread(rounds['bare_cpu'])} s")
    print(f"uploader check (whole command): {spread(rounds['check'])} s, CPU {spread(rounds['check_cpu'])} s")
    print(f"URLs/s: bare {spread([n / s for s in rounds['bare']], '{:,.0f}')}, ", end="")
    print(f"check {spread([n / s for s in rounds['check']], '{:,.0f}')}")
    ratios = [b / c for b, c in zip(rounds["bare"], rounds["check"])]
    print(f"ratio check / bare (same round): {spread(ratios)} (target >= 0.8)")
    print(f"peak RSS of the check: {spread(rounds['rss'], '{:.0f}')} MiB")
    print(
        f"rerun (every verdict known): {spread(rounds['rerun'])} s, CPU {spread(rounds['rerun_cpu'])} s (target <= 1 s)"
    )


if __name__ == "__main__":
    main()
