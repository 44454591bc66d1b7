"""Attachment preflight speed: `uploader check` over N distinct URLs against the sandbox's files, beside a
bare aiohttp HEAD loop against the same server, and a rerun that checks nothing.

Sandbox in its own process; each file answers after `--latency-ms` (its `slow=` parameter); concurrency 128
for both clients; the per-host rate cap lifted (one host here). Prints URLs/s of each, their ratio (target
>= 0.8), the peak RSS of the check, and the rerun's seconds (target <= 1 s).

    python benchmarks/preflight_benchmark.py [--urls 100000] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_benchmark import start_sandbox  # noqa: E402 - the same sandbox start-up as the run benchmark

CONCURRENCY = 128


def urls(base: str, n: int, latency_ms: float) -> list[str]:
    return [f"{base}/_sandbox/files/img{i}.jpg?slow={int(latency_ms)}" for i in range(n)]


async def bare_head_loop(targets: list[str]) -> float:
    import aiohttp

    queue = iter(targets)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:

        async def worker() -> None:
            for url in queue:
                async with session.head(url) as response:
                    assert response.status == 200

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


def run_check(ledger: Path) -> tuple[float, int, str]:
    """`uploader check` in its own process: seconds, peak RSS (KiB), its last line."""
    started = time.perf_counter()
    proc = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%M",
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
        ],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    rss = int(proc.stderr.strip().splitlines()[-1])
    return seconds, rss, proc.stdout.strip().splitlines()[-1] if proc.stdout else proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--urls", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    proc, base = start_sandbox(0)
    try:
        targets = urls(base, args.urls, args.latency_ms)
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / "m.csv"
            manifest.write_text("reference_id,image_url\n" + "".join(f"r{i},{u}\n" for i, u in enumerate(targets)))
            ledger = Path(tmp) / "l.db"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "uploader",
                    "load",
                    str(manifest),
                    "--project-id",
                    "p",
                    "--work-flow-id",
                    "w",
                    "--ledger",
                    str(ledger),
                ],
                check=True,
                capture_output=True,
            )
            bare = asyncio.run(bare_head_loop(targets))
            seconds, rss, _ = run_check(ledger)
            rerun, _, _ = run_check(ledger)
    finally:
        proc.kill()
    n = args.urls
    print(f"{n:,} URLs, {args.latency_ms:.0f} ms each, concurrency {CONCURRENCY}")
    print(f"bare aiohttp HEAD loop: {bare:.2f} s, {n / bare:,.0f} URLs/s")
    print(f"uploader check (whole command): {seconds:.2f} s, {n / seconds:,.0f} URLs/s, peak RSS {rss / 1024:.0f} MB")
    print(f"ratio check / bare: {bare / seconds:.2f} (target >= 0.8)")
    print(f"rerun (every verdict known): {rerun:.2f} s (target <= 1 s)")


if __name__ == "__main__":
    main()
