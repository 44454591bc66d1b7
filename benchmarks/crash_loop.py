"""Crash loop, long version: SIGKILL `uploader run` (a real subprocess) 30 times at random moments during
a 5,000-row upload against the sandbox (20 ms latency + 20 ms jitter), then let a last run finish.

Prints the kills survived, where they landed, the requests the sandbox saw (job POSTs and lookup GETs),
the FS_0001 refusals the kills cost, and anything lost or duplicated (both must be 0). The invariants of
tests/reliability/harness.py (check_ledger) are asserted at the end.

    python benchmarks/crash_loop.py [--rows 5000] [--kills 30] [--seed 1] [--concurrency 64]

Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "reliability")]

from harness import KEY, crash_loop  # noqa: E402

from uploader.sandbox import Sandbox, SandboxConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Sandbox(SandboxConfig(api_key=KEY, seed=args.seed, latency_ms=20, jitter_ms=20)) as box,
    ):
        report = crash_loop(
            box,
            Path(tmp),
            rows=args.rows,
            kills=args.kills,
            seed=args.seed,
            concurrency=args.concurrency,
            deadline_s=600,
        )
    figures = report.figures()
    for k in report.kills:
        print(
            f"  kill {k.mode:<12} after {k.after_s:5.2f}s  created so far {k.created_at_kill:5d}  "
            f"ledger {dict(sorted(k.statuses.items()))}"
        )
    print(json.dumps(figures, indent=2))
    if figures["kills_survived"] < args.kills:
        print(f"note: only {figures['kills_survived']} kills landed before the upload completed")
    print("lost:", figures["lost"], " duplicated:", figures["duplicates"])
    sys.exit(1 if figures["lost"] or figures["duplicates"] else 0)


if __name__ == "__main__":
    main()
