"""`uploader load` into a new ledger forks its slice readers (uploader.load.slices) before SQLAlchemy is imported.

The parallel first load relies on it (README "How a load works"): the workers read the manifest while the
parent imports SQLAlchemy and creates the ledger, and a fork of a process that has SQLAlchemy (and its
engine, pools and threads) loaded would copy all of it. Nothing but this test notices when an import of a
package's `__init__`, of the cli or of the load path starts to pull SQLAlchemy in earlier: so each case runs
in a fresh interpreter whose `os.fork` records, at every fork, whether `sqlalchemy` is in `sys.modules`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import wait_until

#: Installed before anything of uploader is imported; prints one JSON line when the command ends.
PRELUDE = """
import json, os, sys
forks = []
real_fork = os.fork
def fork():
    forks.append("sqlalchemy" in sys.modules)
    return real_fork()
os.fork = fork
pid = os.getpid()
def report():
    if os.getpid() == pid:  # not in a forked worker
        print("FORKS " + json.dumps(forks), flush=True)
"""

CLI = (
    PRELUDE
    + """
sys.argv = ["uploader", *sys.argv[1:]]
try:
    from uploader.cli import main
    main()
finally:
    report()
"""
)

LIBRARY = (
    PRELUDE
    + """
from uploader.load import prepare_load
from uploader.manifest import ManifestOptions
path, ledger = sys.argv[1], sys.argv[2]
with prepare_load(path, ManifestOptions(project_id="p", work_flow_id="w"), new_ledger=True) as prepared:
    from uploader.ledger import Ledger
    led = Ledger.open(ledger)
    try:
        print(prepared.load(led).new, "new")
    finally:
        led.close()
report()
"""
)

#: Rows enough for a file over MIN_SPLIT_BYTES (4 MiB): the parallel path, as in tests/test_parallel_load.py.
ROWS = 80_000


@pytest.fixture(scope="module")
def big_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fork") / "big.csv"
    with path.open("w") as f:
        f.write("reference_id,image_url\n")
        for i in range(ROWS):
            f.write(f"ref-{i:07d},https://example.com/images/some/folder/image-{i:07d}.jpg\n")
    from uploader.load.slices import MIN_SPLIT_BYTES

    assert path.stat().st_size > MIN_SPLIT_BYTES
    return path


def run(code: str, *args: str, cwd: Path) -> tuple[list[bool], str]:
    env = {**os.environ, "TMPDIR": str(cwd)}
    env.pop("UPLOADER_LEDGER", None)
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("FORKS ")]
    return json.loads(line.removeprefix("FORKS ")), result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="the parallel load forks on Linux")
def test_uploader_load_forks_its_readers_before_sqlalchemy_is_imported(big_manifest: Path, tmp_path: Path) -> None:
    forks, out = run(
        CLI,
        "load",
        str(big_manifest),
        "--project-id",
        "p",
        "--work-flow-id",
        "w",
        "--ledger",
        str(tmp_path / "new.db"),
        cwd=tmp_path,
    )
    assert f"{ROWS} new" in out.replace(",", "")
    assert len(forks) >= 2, "the load did not take the parallel path: the test proves nothing"
    assert not any(forks), f"SQLAlchemy was imported before a slice reader was forked: {forks}"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="the parallel load forks on Linux")
def test_prepare_load_forks_its_readers_before_sqlalchemy_is_imported(big_manifest: Path, tmp_path: Path) -> None:
    forks, out = run(LIBRARY, str(big_manifest), str(tmp_path / "new.db"), cwd=tmp_path)
    assert f"{ROWS} new" in out
    assert len(forks) >= 2, "the load did not take the parallel path: the test proves nothing"
    assert not any(forks), f"SQLAlchemy was imported before a slice reader was forked: {forks}"


@pytest.fixture
def sandbox_url() -> Iterator[str]:
    """`uploader sandbox` in a process of its own (in this process its thread would keep the load from forking);
    project `secret` is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "uploader", "sandbox", "--port", str(port), "--api-key", "k1"]
    proc = subprocess.Popen([*cmd, "--forbidden-project", "secret"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), "the sandbox to answer")
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_sandbox/stats", timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(
    not hasattr(os, "fork") or sys.platform != "linux" or (os.cpu_count() or 1) < 2,
    reason="the parallel load forks on Linux with more than one CPU",
)
def test_uploader_run_loads_in_parallel_after_its_http_warm_up(
    big_manifest: Path, tmp_path: Path, sandbox_url: str
) -> None:
    """`run` imports its HTTP stack on a thread while the ledger opens (uploader.api.warm). A load forks its
    slice readers only while no other thread runs: the thread must have ended by then. The project is refused
    at the first request, after the load."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "UPLOADER_API_KEY": "k1"}
    env.pop("UPLOADER_LEDGER", None)
    args = [str(big_manifest), "--project-id", "secret", "--work-flow-id", "w", "--ledger", str(tmp_path / "r.db")]
    result = subprocess.run(
        [sys.executable, "-c", CLI, "run", *args, "--base-url", sandbox_url, "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and '"code": "unauthorized"' in result.stdout, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("FORKS ")]
    assert len(json.loads(line.removeprefix("FORKS "))) >= 2, "the load of `run` did not fork its slice readers"
