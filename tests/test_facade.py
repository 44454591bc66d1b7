"""`uploader.upload` and `Ledger.to_pandas` as a notebook user calls them: a DataFrame (or Arrow Table, or a
file) against the sandbox over real HTTP, from plain code, from inside a running event loop, and from a real
Jupyter kernel; and pandas stays out of the CLI's start-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from waiting import wait_until

import uploader
from uploader.errors import ManifestError, UsageError
from uploader.ledger import Ledger
from uploader.sandbox import Sandbox, SandboxConfig

KEY = "test-secret-key-facade-1"
URL = "https://cdn.example.com/img"


def images(n: int, prefix: str = "img") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "reference_id": [f"{prefix}-{i:03d}" for i in range(n)],
            "image_url": [f"{URL}/{prefix}/{i}.jpg" for i in range(n)],
            "camera": [f"cam{i % 3}" for i in range(n)],
        }
    )


@pytest.fixture
def box():
    with Sandbox(SandboxConfig(api_key=KEY, seed=11)) as sb:
        yield sb


def send(manifest, box: Sandbox, ledger, **kw):
    return uploader.upload(
        manifest, project_id="proj", work_flow_id="wf", ledger=ledger, api_key=KEY, base_url=box.base_url, **kw
    )


def assert_all_created_once(box: Sandbox, ledger: Path, n: int) -> pd.DataFrame:
    """Every row succeeded with the job_id the sandbox made for it, each job created once; the export."""
    led = Ledger.open(ledger)
    try:
        out = led.to_pandas()
    finally:
        led.close()
    created = {j["reference_id"]: j["job_id"] for j in box.jobs()}
    assert len(out) == n and set(out["status"]) == {"succeeded"}
    assert dict(zip(out["reference_id"], out["job_id"])) == created
    assert box.stats()["jobs_created_per_reference_id_max"] == 1
    return out


def test_dataframe_upload_sends_every_row_once_and_a_rerun_sends_nothing(box, tmp_path):
    df = images(30).set_index("reference_id")  # a named index is a column like any other
    ledger = tmp_path / "jobs.db"
    summary = send(df, box, ledger)
    assert summary.counts["succeeded"] == 30 and not summary.interrupted and summary.fatal is None
    out = assert_all_created_once(box, ledger, 30)
    assert list(out.columns) == [*uploader.ledger.EXPORT_COLUMNS, "camera"]
    assert list(out["reference_id"]) == list(df.index) and list(out["camera"]) == list(df["camera"])
    assert (out["project_id"] == "proj").all() and (out["attempts"] == 1).all()
    assert out["attempts"].dtype == "int64"

    again = send(df, box, ledger)
    assert again.counts["succeeded"] == 30 and again.progress.requests == 0
    assert not list(tmp_path.glob("uploader-*"))  # the temporary Parquet file is gone


def test_arrow_table_and_file_take_the_same_path(box, tmp_path):
    ledger = tmp_path / "jobs.db"
    table = pa.Table.from_pandas(images(4, "arrow"), preserve_index=False)
    assert send(table, box, ledger).counts["succeeded"] == 4
    path = tmp_path / "more.csv"
    images(3, "csv").to_csv(path, index=False)
    assert send(str(path), box, ledger).counts["succeeded"] == 7
    assert send(None, box, ledger).progress.requests == 0  # None: only what the ledger holds
    assert_all_created_once(box, ledger, 7)


def test_to_pandas_filters_by_status_and_is_empty_but_typed_on_an_empty_ledger(box, tmp_path):
    ledger = tmp_path / "jobs.db"
    df = images(3)
    df.loc[1, "image_url"] = "ftp://nowhere/1.jpg"  # refused by the manifest checks: nothing is loaded
    with pytest.raises(ManifestError) as caught:
        send(df, box, ledger)
    (problem,) = caught.value.problems
    assert str(problem).startswith("DataFrame: row 1: column 'image_url': ")  # not the temporary file
    assert not ledger.exists()  # the ledger this call created is removed again: all or nothing
    led = Ledger.open(ledger)
    try:
        empty = led.to_pandas()
        assert empty.empty and list(empty.columns) == list(uploader.ledger.EXPORT_COLUMNS)
    finally:
        led.close()
    send(images(3), box, led)  # an open Ledger is used as it is and left open
    assert len(led.to_pandas(["succeeded"])) == 3 and led.to_pandas(["failed"]).empty
    led.close()


def test_bad_arguments_are_clear(box, tmp_path, monkeypatch):
    monkeypatch.delenv("PLAYMENT_API_KEY", raising=False)
    with pytest.raises(UsageError, match="no API key"):
        uploader.upload(images(1), project_id="p", work_flow_id="w", ledger=tmp_path / "l.db")
    with pytest.raises(UsageError, match="https"):
        uploader.upload(
            images(1),
            project_id="p",
            work_flow_id="w",
            ledger=tmp_path / "l.db",
            api_key=KEY,
            base_url="http://api.example.com",
        )
    with pytest.raises(UsageError, match="format is for a manifest file"):
        send(images(1), box, tmp_path / "l.db", format="csv")
    with pytest.raises(TypeError, match="not list"):
        send([{"reference_id": "a"}], box, tmp_path / "l.db")
    assert not (tmp_path / "l.db").exists()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_upload_works_inside_a_running_event_loop(box, tmp_path):
    """A notebook cell runs inside the kernel's event loop: asyncio.run() would refuse, upload() does not."""
    ledger = tmp_path / "jobs.db"
    summary = send(images(10), box, ledger)
    assert summary.counts["succeeded"] == 10
    more = await uploader.upload_async(
        images(5, "async"), project_id="proj", work_flow_id="wf", ledger=ledger, api_key=KEY, base_url=box.base_url
    )
    assert more.counts["succeeded"] == 15
    assert_all_created_once(box, ledger, 15)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(*sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["--version"]])
def test_cli_start_up_imports_neither_pandas_nor_pyarrow(args):
    loaded = _modules_after(
        f"import sys\nsys.argv = ['uploader', *{args!r}]\nfrom uploader.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )
    assert "uploader.cli.commands" in loaded
    assert not loaded & {"pandas", "pyarrow"}


def test_the_send_path_imports_no_sqlalchemy_orm():
    """The ledger is SQLAlchemy Core only: the ORM's import is a visible share of `uploader run`'s start-up."""
    loaded = _modules_after(
        "import uploader.send.submit, uploader.send.runner, uploader.load.prepare, uploader.api.client"
    )
    assert "uploader.ledger.ledger" in loaded and "sqlalchemy.orm" not in loaded


def test_import_uploader_and_its_upload_import_neither_pandas_nor_pyarrow():
    loaded = _modules_after("import uploader\nuploader.upload, uploader.upload_async")
    assert "uploader.facade" in loaded and not loaded & {"pandas", "pyarrow"}


def posts_received(box: Sandbox) -> int:
    return sum(box._engine.app.stats.per_reference.values())  # noqa: SLF001


def _interrupt_a_cell(tmp_path, seed: int, prelude: str, interrupt) -> None:  # type: ignore[no-untyped-def]
    """Run 60 rows through upload() as ipykernel runs a cell (inside a running event loop, so upload() goes to a
    helper thread), call `interrupt(proc)` once the sandbox has 4 job requests, and check that the run stopped
    gently: a summary that says so, some rows sent, the rest pending, each sent row created once."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=seed, latency_ms=400)) as box:
        script = tmp_path / "cell.py"
        script.write_text(
            textwrap.dedent(prelude)
            + textwrap.dedent(f"""
            import asyncio, json, pandas as pd, uploader
            df = pd.DataFrame({{"reference_id": [f"r{{i}}" for i in range(60)],
                                "image_url": [f"{URL}/{{i}}.jpg" for i in range(60)]}})
            async def cell():
                return uploader.upload(df, project_id="proj", work_flow_id="wf", ledger="jobs.db",
                                       api_key={KEY!r}, base_url={box.base_url!r},
                                       run_options=uploader.RunOptions(concurrency=2))
            summary = asyncio.new_event_loop().run_until_complete(cell())
            print(json.dumps({{"interrupted": summary.interrupted, **summary.counts}}))
        """)
        )
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_until(lambda: posts_received(box) >= 4, "the sandbox to receive 4 job requests")
        interrupt(proc)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        result = json.loads(out)
        assert result["interrupted"] is True
        assert 4 <= result["succeeded"] < 60 and result["succeeded"] + result["pending"] == 60
        assert box.stats()["jobs_created"] == result["succeeded"]


@pytest.mark.slow
def test_an_interrupt_stops_an_upload_running_inside_an_event_loop_gently(tmp_path):
    """In a notebook, upload() runs in a helper thread, where no signal handler can be set: the kernel's
    interrupt (SIGINT → KeyboardInterrupt in the main thread) must still stop the run gently, with a summary."""
    _interrupt_a_cell(tmp_path, 12, "", lambda proc: proc.send_signal(signal.SIGINT))


@pytest.mark.slow
def test_an_interrupt_the_kernel_hands_to_another_thread_still_stops_the_upload(tmp_path):
    """Linux may deliver a process's SIGINT to any thread that does not block it (when the main thread has a
    signal pending already). Python runs the handler only in the main thread, which upload() keeps waiting:
    it must wake on its own to turn the interrupt into a gentle stop. Here a thread of the cell's own
    signals itself, as the kernel would hand it the signal."""
    prelude = """
        import os, signal, threading, time
        def other_thread():
            while not os.path.exists("go"):
                time.sleep(0.02)
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        threading.Thread(target=other_thread, daemon=True).start()
    """
    _interrupt_a_cell(tmp_path, 13, prelude, lambda proc: (tmp_path / "go").touch())


def _kernel_starts() -> str | None:
    """None if a python3 Jupyter kernel starts here, else why not."""
    from jupyter_client.manager import start_new_kernel

    try:
        km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60)
    except Exception as exc:  # noqa: BLE001 - any failure to start is a reason to skip, named in the skip
        return f"{type(exc).__name__}: {exc}"
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    return None


@pytest.mark.slow
def test_a_notebook_uploads_a_dataframe(box, tmp_path):
    """A real Jupyter kernel runs the README's cells: upload(df, ...) inside the kernel's loop, to_pandas()."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (pip install nbclient ipykernel)")
    nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (pip install nbclient ipykernel)")
    pytest.importorskip("ipykernel", reason="ipykernel not installed (pip install nbclient ipykernel)")
    why_not = _kernel_starts()
    if why_not is not None:
        pytest.skip(f"the Jupyter kernel could not start: {why_not}")
    cells = [
        "import asyncio\nimport pandas as pd\nimport uploader\nasyncio.get_running_loop() is not None",
        f"df = pd.DataFrame({{'reference_id': ['a', 'b', 'c'], 'image_url': ['{URL}/a.jpg', '{URL}/b.jpg', "
        f"'{URL}/c.jpg']}})",
        f"summary = uploader.upload(df, project_id='proj', work_flow_id='wf', ledger='jobs.db', api_key={KEY!r}, "
        f"base_url={box.base_url!r})\nsummary.counts['succeeded']",
        "uploader.Ledger.open('jobs.db').to_pandas()[['reference_id', 'status']].to_dict('records')",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    assert nb.cells[0].outputs[0]["data"]["text/plain"] == "True"  # cells run inside the kernel's event loop
    assert nb.cells[2].outputs[0]["data"]["text/plain"] == "3"
    records = nb.cells[3].outputs[0]["data"]["text/plain"]
    assert all(f"'reference_id': '{r}', 'status': 'succeeded'" in records for r in "abc")
    assert_all_created_once(box, tmp_path / "jobs.db", 3)
