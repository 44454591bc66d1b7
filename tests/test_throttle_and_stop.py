"""Hammering and hangs (issue 10, items 7, 8, 10, 12), against a misbehaving API on loopback (loopback_api).

Real `uploader run` commands (in-process through click, or as subprocesses where a signal or the clock
matters) on real SQLite ledgers. Counts are asserted, not speeds; the time bounds are liveness bounds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from loopback_api import Answer, LoopbackApi

from tests.reliability.harness import write_images
from uploader.cli.commands import cli
from uploader.errors import UploaderError

pytestmark = pytest.mark.slow

KEY = "pacing-test-key-91c2e"
ROOT = Path(__file__).resolve().parents[1]


def run_args(manifest: Path | None, ledger: Path, base_url: str, *extra: str) -> list[str]:
    args = ["run"] + ([str(manifest)] if manifest else [])
    return args + [
        "--project-id",
        "proj",
        "--work-flow-id",
        "wf",
        "--ledger",
        str(ledger),
        "--base-url",
        base_url,
        "--quiet",
        *extra,
    ]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), env={"PLAYMENT_API_KEY": KEY}, catch_exceptions=False)


def spawn(manifest: Path | None, ledger: Path, base_url: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PLAYMENT_API_KEY": KEY}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "uploader", *run_args(manifest, ledger, base_url, *extra)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def rows(ledger: Path) -> list[dict]:
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT reference_id, status, attempts, job_id FROM jobs")]
    finally:
        con.close()


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the run did not end within {timeout} s; stderr: {err[-2000:]}")


# -- item 7: Retry-After 0 or in the past -----------------------------------------------------------------

PAST = format_datetime(datetime(2020, 1, 1, tzinfo=UTC), usegmt=True)


@pytest.mark.parametrize("retry_after", ["0", PAST], ids=["zero", "date-in-the-past"])
def test_retry_after_zero_backs_off_instead_of_hammering(tmp_path, retry_after):
    """429 `Retry-After: 0` (or a date in the past) for the first 2 s, then the API accepts. The run used to
    retry at ~780 requests/s for as long as the 429s lasted; now the backoff grows while they last."""

    def behave(index: int, elapsed: float) -> Answer | None:
        return Answer(429, {"Retry-After": retry_after}) if elapsed < 2.0 else None

    with LoopbackApi(KEY, behave) as api:
        result = invoke(
            *run_args(write_images(tmp_path / "m.csv", 20), tmp_path / "l.db", api.base_url, "--concurrency", "8")
        )
        throttled = api.answers.count(429)
    print(f"\n429 Retry-After {retry_after!r} for 2 s: {throttled} requests throttled")
    assert result.exit_code == 0, result.output
    assert throttled < 50, throttled  # the old code sent hundreds in those 2 s
    assert {r["status"] for r in rows(tmp_path / "l.db")} == {"succeeded"}
    assert all(r["attempts"] == 1 for r in rows(tmp_path / "l.db"))  # 429s cost no attempt


# -- item 8: Retry-After of a day -------------------------------------------------------------------------


def test_retry_after_of_a_day_then_sigterm_exits_at_once(tmp_path):
    """Every POST answered 429 `Retry-After: 86400`: the run waits (at most --max-retry-after, and says so);
    SIGTERM ends it within seconds (it used to go on waiting past 60 s), rows pending, no attempt spent."""
    with LoopbackApi(KEY, lambda i, t: Answer(429, {"Retry-After": "86400"})) as api:
        ledger = tmp_path / "l.db"
        proc = spawn(write_images(tmp_path / "m.csv", 10), ledger, api.base_url, "--concurrency", "4")
        wait_for(lambda: len(api.posts) >= 1)
        time.sleep(1.0)  # the 429s are in; the run is waiting
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = finish(proc, 30)
        stopped_in = time.monotonic() - signalled
    print(f"\nSIGTERM during a Retry-After of 86400 s: exit {proc.returncode} after {stopped_in:.2f} s")
    assert proc.returncode == 143, err  # 128 + SIGTERM
    assert stopped_in < 10
    assert "Traceback" not in err
    assert "86400 s (Retry-After)" in err and "--max-retry-after" in err  # told at once, on stderr
    assert "Retry-After answers asked to wait longer than --max-retry-after" in out  # and in the summary
    assert all(r["status"] == "pending" and r["attempts"] == 0 for r in rows(ledger))


def test_max_retry_after_cuts_a_long_retry_after(tmp_path):
    """The first answers ask for a day; with --max-retry-after 1 the run waits about a second and finishes."""

    def behave(index: int, elapsed: float) -> Answer | None:
        return Answer(429, {"Retry-After": "86400"}) if index < 2 else None

    with LoopbackApi(KEY, behave) as api:
        started = time.monotonic()
        result = invoke(
            *run_args(
                write_images(tmp_path / "m.csv", 5),
                tmp_path / "l.db",
                api.base_url,
                "--concurrency",
                "2",
                "--max-retry-after",
                "1",
                "--json",
            )
        )
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 30
    assert "waiting 1 s at most (--max-retry-after)" in result.output
    assert '"retry_after_capped": 2' in result.output
    assert {r["status"] for r in rows(tmp_path / "l.db")} == {"succeeded"}


# -- item 10: --rate ---------------------------------------------------------------------------------------


def test_rate_below_one_sends(tmp_path):
    """--rate 0.5 sent nothing at all (aiolimiter refused the rate in every sender, which died silently: the
    run ended with every row pending, exit 3, and no error). Now one request every 2 s."""
    with LoopbackApi(KEY) as api:
        proc = spawn(write_images(tmp_path / "m.csv", 3), tmp_path / "l.db", api.base_url, "--rate", "0.5")
        out, err = finish(proc, 60)
        arrivals = api.arrivals()
    print(f"\n--rate 0.5: arrivals {[round(t, 2) for t in arrivals]}")
    assert proc.returncode == 0, err
    assert {r["status"] for r in rows(tmp_path / "l.db")} == {"succeeded"}
    assert len(arrivals) == 3
    assert all(b - a > 1.9 for a, b in zip(arrivals, arrivals[1:]))  # one every 2 s


def test_rate_five_is_at_most_five_in_any_second(tmp_path):
    """--rate 5 sent 10 requests in the first second; the server's own clock now never sees 6 within 1 s."""
    with LoopbackApi(KEY) as api:
        proc = spawn(write_images(tmp_path / "m.csv", 30), tmp_path / "l.db", api.base_url, "--rate", "5")
        out, err = finish(proc, 60)
        t = api.arrivals()
    assert proc.returncode == 0, err
    assert len(t) == 30
    busiest = max(sum(s <= x < s + 1.0 for x in t) for s in t)
    closest = min(b - a for a, b in zip(t, t[5:]))  # 6 requests: first to last
    print(
        f"\n--rate 5: {sum(x < 1.0 for x in t)} in the first second, at most {busiest} in any 1 s window, "
        f"6 consecutive requests span at least {closest:.3f} s"
    )
    assert sum(x < 1.0 for x in t) <= 5
    assert busiest <= 5  # at most 5 in any one-second window, by the server's clock


def test_a_sender_that_raises_stops_the_run_with_a_clear_error(tmp_path, monkeypatch):
    """A sender task that raises used to die silently (the run hung); now the run stops, names it, exit 1,
    and the rows it held are pending again. Injected at the edge: an ApiClient whose create_job raises."""
    from uploader.api.client import ApiClient
    from uploader.ledger.ledger import Ledger
    from uploader.load import load
    from uploader.manifest.reader import ManifestOptions
    from uploader.send.submit import RunOptions, submit

    class Broken(ApiClient):
        async def create_job(self, project_id: str, body: str | bytes):  # type: ignore[override]
            raise RuntimeError("boom at the edge")

    ledger = tmp_path / "l.db"
    led = Ledger.open(ledger)
    load(led, write_images(tmp_path / "m.csv", 40), ManifestOptions(project_id="proj", work_flow_id="wf"))

    async def main() -> None:
        async with Broken("http://127.0.0.1:9", KEY) as client:
            await asyncio.wait_for(submit(led, client, RunOptions(concurrency=4), handle_signals=False), 30)

    with pytest.raises(UploaderError) as caught:
        asyncio.run(main())
    led.close()
    message = str(caught.value)
    print("\nsubmit raised:", message)
    assert "sender" in message and "RuntimeError: boom at the edge" in message
    assert all(r["status"] == "pending" and r["attempts"] == 0 for r in rows(ledger))

    # The same through the command: one clear error, exit 1, no traceback.
    monkeypatch.setattr(ApiClient, "create_job", Broken.create_job)
    with LoopbackApi(KEY) as api:
        result = CliRunner().invoke(cli, run_args(None, ledger, api.base_url), env={"PLAYMENT_API_KEY": KEY})
    assert result.exit_code == 1, result.output
    assert "error: the run stopped: its task 'sender" in result.output and "boom at the edge" in result.output
    assert "Traceback" not in result.output
    assert all(r["status"] == "pending" and r["attempts"] == 0 for r in rows(ledger))


# -- item 12: redirects ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 307, 308])
@pytest.mark.parametrize("where", ["jobs", "batch"])
def test_a_redirect_says_so_and_points_at_the_base_url(tmp_path, status, where):
    """A redirect used to read "the API refused the run (http_301)". On the job POSTs, and on the batch the
    run creates before them (uploader.send.batches), it now names the redirect and --base-url."""
    location = f"https://api.example.com/v1/projects/proj/{where}?signature=s3cr3t"
    redirect = Answer(status, {"Location": location})
    behave = (lambda i, t: redirect) if where == "jobs" else None
    with LoopbackApi(KEY, behave, batch_answer=redirect if where == "batch" else None) as api:
        result = invoke(*run_args(write_images(tmp_path / "m.csv", 10), tmp_path / "l.db", api.base_url))
    print("\n", result.output.strip().splitlines()[-1])
    assert result.exit_code == 1, result.output
    assert (
        f"the API answered a redirect (HTTP {status} to https://api.example.com/v1/projects/proj/{where})"
        in result.output
    )
    assert "does not follow redirects" in result.output and "--base-url" in result.output
    assert "s3cr3t" not in result.output
    assert all(r["status"] == "pending" and r["attempts"] == 0 for r in rows(tmp_path / "l.db"))
