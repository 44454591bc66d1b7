"""What the benchmarks share: a free port, the sandbox in its own process (pinned to its own core when
there are two), the environment the measured commands run in, and min/median/max.

Benchmarks import it as `from _sandbox import ...` (they run as `python benchmarks/NAME.py`).
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

#: The API key every benchmark's sandbox accepts.
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cpu: int) -> list[str]:
    """A `taskset` prefix for one CPU when there are two or more and taskset exists, else nothing."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def pinning() -> tuple[list[str], list[str], str]:
    """(sandbox prefix, client prefix, note): the sandbox on core 1 and the clients on core 0 when there are
    two or more, so that a client's figures are its own."""
    server, client = pinned(1), pinned(0)
    if server:
        return server, client, "sandbox pinned to core 1, clients to core 0"
    return [], [], f"NOT pinned ({os.cpu_count() or '?'} core(s) or no taskset): the figures include the server"


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of a measured command: as a user's, so compiled bytecode is written and used (an
    installed tool has it; PYTHONDONTWRITEBYTECODE in a developer's shell would add compiling to each run)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **extra}


def start_sandbox(
    *args: str,
    prefix: Sequence[str] = (),
    command: Sequence[str] | None = None,
    health: str = "/_sandbox/stats",
    attempts: int = 200,
) -> tuple[subprocess.Popen[bytes], str]:
    """`uploader sandbox --port P --api-key KEY *args` (or `command`, serving on the port its `{port}`
    placeholders name) started and answering `health`; (process, base URL)."""
    port = free_port()
    if command is None:
        argv = [sys.executable, "-m", "uploader", "sandbox", "--port", str(port), "--api-key", KEY, *args]
    else:
        argv = [part.replace("{port}", str(port)) for part in command]
    proc = subprocess.Popen([*prefix, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(attempts):
        try:
            urllib.request.urlopen(url + health, timeout=1).read()
            return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("sandbox did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


#: Runs `uploader ARGS` in this interpreter and prints, on stderr after it, its CPU seconds (its own and its
#: children's) and the peak RSS (KiB) of itself and of its largest child.
_MEASURED = (
    "import resource, sys; from uploader.cli import main; sys.argv = sys.argv[1:]\n"
    "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\nelse:\n    rc = 0\n"
    "u = resource.getrusage(resource.RUSAGE_SELF); c = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print('MEASURED', u.ru_utime + u.ru_stime + c.ru_utime + c.ru_stime, u.ru_maxrss, c.ru_maxrss,\n"
    "      file=sys.stderr)\n"
    "from uploader.cli.commands import exit_status, quick_exit\n"
    "quick_exit(exit_status(rc))  # as the `uploader` program ends"
)


@dataclass(frozen=True)
class Measured:
    """One whole `uploader` command: wall and CPU seconds, peak RSS of it and of its largest child, stdout."""

    wall: float
    cpu: float
    rss_mib: float
    children_rss_mib: float
    stdout: str


def measure_cli(*args: str, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> Measured:
    """Run `uploader ARGS` in a fresh process (environment `bench_env()` unless given); SystemExit if it exits
    with a code not in `ok`."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURED, "uploader", *args], capture_output=True, text=True, env=env or bench_env()
    )
    wall = time.perf_counter() - started
    if proc.returncode not in ok:
        raise SystemExit(f"uploader {' '.join(args[:1])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MEASURED"))
    cpu, own_kb, children_kb = (float(v) for v in line.split()[1:])
    return Measured(wall, cpu, own_kb / 1024, children_kb / 1024, proc.stdout)


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """min/median/max."""
    return "/".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))
