"""Start-up of the command: `uploader --help`, and `uploader run` on a 12-row manifest against the sandbox.

Each figure is the wall time of the whole command (interpreter start and imports included), run N times
(default 9) in a fresh process, printed as min / median / max beside the targets (0.15 s for --help, 0.5 s
for the run). Each run uses a new ledger and a new project, so every run creates its 12 jobs. Then the
slowest imports of one run: the modules it imported, imported again one after the other under `python -X
importtime` (cumulative microseconds; the run itself imports its HTTP stack on a thread, uploader.api.warm).

    python benchmarks/startup_benchmark.py [--repeat 9]

Run it from an installed copy (`pip install .`) for the figure a user sees: an editable install with the
test tools also imports what those bring (import-linter brings rich, which httpx then imports).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _sandbox import KEY, bench_env, pinned, start_sandbox, stop

MANIFEST = Path(__file__).resolve().parent.parent / "sample_manifests" / "images.csv"


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return elapsed


def line(name: str, figures: list[float], target: float) -> str:
    med = statistics.median(figures)
    return (
        f"{name:<24} min {min(figures):.3f} s  median {med:.3f} s  max {max(figures):.3f} s  "
        f"(target <= {target} s: {'met' if med <= target else 'NOT met'})"
    )


def run_command(work: Path, url: str, i: int) -> list[str]:
    return [
        *("uploader", "run", str(MANIFEST), "--project-id", f"start-{os.getpid()}-{i}", "--work-flow-id", "wf"),
        *("--ledger", str(work / f"ledger-{i}.db"), "--base-url", url, "-q"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    env = bench_env(UPLOADER_API_KEY=KEY)
    uploader = [sys.executable, "-m", "uploader"]
    sandbox, url = start_sandbox(prefix=pinned(1))  # the server on its own core: the figure is the client's
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            helps = [timed([*uploader, "--help"], env) for _ in range(args.repeat)]
            runs = [timed([*uploader, *run_command(work, url, i)[1:]], env) for i in range(args.repeat)]
            print(line("uploader --help", helps, 0.15))
            print(line("uploader run (12 rows)", runs, 0.5))
            # `run` imports its HTTP stack on a thread while the main thread imports the rest (uploader.api.warm);
            # -X importtime mixes the two threads' nesting. So: which modules of uploader one run imported, then
            # the cost of importing those, one after the other, in a fresh interpreter.
            code = (
                "import sys\nsys.argv = sys.argv[1:]\nfrom uploader.cli import main\ntry:\n    main()\n"
                "except SystemExit:\n    pass\nprint('MODULES', *(m for m in sys.modules if m.startswith('uploader')))"
            )
            argv = ["uploader", *run_command(work, url, args.repeat)[1:]]
            done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
            (listed,) = [row for row in done.stdout.splitlines() if row.startswith("MODULES ")]
            modules = listed.split()[1:]
            cmd = [sys.executable, "-X", "importtime", "-c", "".join(f"import {m}\n" for m in modules)]
            report = subprocess.run(cmd, capture_output=True, text=True, env=env).stderr
    finally:
        stop(sandbox)
    top: list[tuple[int, str]] = []
    for row in report.splitlines()[1:]:
        parts = row.split("|")
        if len(parts) == 3 and parts[2].startswith(" ") and not parts[2][1:].startswith(" "):
            top.append((int(parts[1]), parts[2].strip()))
    print(f"imports of the run, one after the other: {sum(t for t, _ in top) / 1e6:.3f} s; the slowest top-level ones:")
    for micros, name in sorted(top, reverse=True)[:8]:
        print(f"  {micros / 1e6:.3f} s  {name}")


if __name__ == "__main__":
    main()
