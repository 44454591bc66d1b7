"""What a person sees while a run goes (issue 12, "While it runs"): slow start, the early stop on a systematic
error, the summary's error codes, trouble shown as it happens, resume wording, the workers in `status`."""

from __future__ import annotations

import random

import pytest
from test_run import KEY, invoke, ledger_rows, run_args, write_images

from uploader.sandbox import Sandbox, SandboxConfig
from uploader.send.pacing import Pacer


def test_slow_start_window_begins_at_one_and_doubles_per_round():
    p = Pacer(64, random.Random(0), slow_start=True)
    assert p.window == 1
    p.answered(throttled=False)  # the first answer: two may go
    assert p.window == 2
    for _ in range(2):  # the second round: both answer
        p.answered(throttled=False)
    assert p.window == 4
    for _ in range(200):
        p.answered(throttled=False)
    assert p.window == 64  # never above the concurrency
    q = Pacer(64, random.Random(0), slow_start=True)
    q.answered(throttled=False, grow=False)  # an answer that stops the run does not widen
    assert q.window == 1


def test_slow_start_widens_without_answers_when_the_api_is_slow():
    """A slow API is no sign of a wrong key: with no answer, the window still doubles every `patience` s."""
    import asyncio
    import time

    async def go() -> list[int]:
        p = Pacer(8, random.Random(0), slow_start=True, patience=0.05)
        started = time.monotonic()
        seen = []
        for _ in range(8):  # nobody answers: each acquire holds its slot
            assert await p.acquire(lambda: False)
            seen.append(int(p.window))
        assert time.monotonic() - started < 1.0
        return seen

    assert asyncio.run(go()) == [1, 2, 4, 4, 8, 8, 8, 8]


def test_slow_start_ends_on_the_first_429():
    p = Pacer(64, random.Random(0), slow_start=True)
    for _ in range(7):
        p.answered(throttled=False)
    p.throttled(1.0, flying=8)
    assert p.window == 4 and not p.slow_start


def test_a_wrong_key_costs_one_request_not_a_window(tmp_path):
    with Sandbox(SandboxConfig(api_key=KEY, seed=7)) as box:
        manifest = write_images(tmp_path / "images.csv", 200)
        # --default-batch: no batch is created first, the jobs themselves meet the wrong key (seen: 64)
        result = invoke(
            *run_args(manifest, tmp_path / "l.db", box, "--default-batch"), env={"PLAYMENT_API_KEY": "wrong-key"}
        )
        assert result.exit_code == 1, result.output
        assert box.stats()["requests_total"] == 1
        assert all(r["status"] == "pending" for r in ledger_rows(tmp_path / "l.db").values())


def test_the_first_rows_all_refused_the_same_way_stop_the_run(tmp_path):
    """Seen: a bad --batch-id failed all 12 rows with only `GE_0001 × 12` shown; at 100k rows, 100k requests."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=7)) as box:
        manifest = write_images(tmp_path / "images.csv", 500)
        ledger = tmp_path / "l.db"
        result = invoke(*run_args(manifest, ledger, box, "--batch-id", "6f1c1a52-8a5e-4c1b-9d55-0c4d5b3f1e2a"))
        assert result.exit_code == 1, result.output
        assert "the first 20 rows sent were all refused with GE_0001" in result.output
        assert "batch" in result.output.split("GE_0001", 1)[1]  # the API's own message is quoted
        rows = ledger_rows(ledger).values()
        failed = [r for r in rows if r["status"] == "failed"]
        assert 20 <= len(failed) < 64 and box.stats()["requests_total"] < 64
        assert sum(r["status"] == "pending" for r in rows) == 500 - len(failed)


def test_few_rows_all_refused_also_stop_with_the_message(tmp_path):
    with Sandbox(SandboxConfig(api_key=KEY, seed=7)) as box:
        manifest = write_images(tmp_path / "images.csv", 12)
        result = invoke(
            *run_args(manifest, tmp_path / "l.db", box, "--batch-id", "6f1c1a52-8a5e-4c1b-9d55-0c4d5b3f1e2a")
        )
        assert result.exit_code == 1, result.output
        assert "the first 12 rows sent were all refused with GE_0001" in result.output


def test_mixed_answers_never_stop_the_run():
    from uploader.api import Decision, Verdict
    from uploader.send.watch import FirstAnswers

    w = FirstAnswers(3)
    bad = Decision(Verdict.PERMANENT, "GE_0001", "batch not found")
    assert not w.add(1, "a", bad, True)
    assert not w.add(1, "a", bad, True)  # the same row again does not count
    assert not w.add(2, "b", Decision(Verdict.THROTTLED, "rate_limited", None), True)  # says nothing of rows
    assert not w.add(2, "b", bad, False)  # no answer from the API
    assert not w.add(2, "b", bad, True)
    assert w.add(3, "c", bad, True) and w.example == "a"
    v = FirstAnswers(3)
    v.add(1, "a", bad, True)
    v.add(2, "b", Decision(Verdict.SUCCEEDED, None, None), True)
    assert not v.add(3, "c", bad, True) and not v.add(4, "d", bad, True)


# -- the summary and `status`: error codes with their message, this run apart from the ledger, throttling ------


def _load(ledger_path, manifest):
    from uploader.ledger import Ledger
    from uploader.load import load
    from uploader.manifest import ManifestOptions

    led = Ledger.open(ledger_path)
    load(led, manifest, ManifestOptions(project_id="proj", work_flow_id="wf"))
    return led


def test_summary_shows_each_code_with_message_and_example_and_this_run_apart(tmp_path):
    """Seen: only `GE_0001 × 12`, and one line mixing this run's counts with the whole ledger's."""
    with Sandbox(SandboxConfig(api_key=KEY, seed=7)) as box:
        ledger = tmp_path / "l.db"
        bad = tmp_path / "bad.csv"
        bad.write_text("reference_id,image_url,batch_id\nc,https://x.com/c.jpg,6f1c1a52-8a5e-4c1b-9d55-0c4d5b3f1e2a\n")
        assert invoke(*run_args(bad, ledger, box)).exit_code == 3
        good = write_images(tmp_path / "images.csv", 5)
        result = invoke(*run_args(good, ledger, box))
        assert result.exit_code == 3, result.output  # the ledger still holds the failed row
        lines = result.output.splitlines()
        this_run = next(line for line in lines if "This run:" in line)
        assert "5 created or found" in this_run and "0 failed" in this_run
        assert not any(line.startswith("  GE_0001") for line in lines)  # no error of this run
        ledger_line = lines.index(next(line for line in lines if line.startswith("ledger (every run):")))
        assert "5 succeeded, 1 failed" in lines[ledger_line]
        assert "GE_0001 × 1: invalid parameter: batch_id (e.g. c)" in "\n".join(lines[ledger_line:])
        shown = invoke("status", "--ledger", str(ledger)).output
        assert (
            "error codes (failed, uncertain, conflict):\n  GE_0001 × 1: invalid parameter: batch_id (e.g. c)" in shown
        )


def test_this_runs_failures_are_listed_with_their_message(tmp_path):
    with Sandbox(SandboxConfig(api_key=KEY, seed=7)) as box:
        manifest = tmp_path / "m.csv"
        manifest.write_text(
            "reference_id,image_url,batch_id\nok,https://x.com/a.jpg,\n"
            "bad,https://x.com/c.jpg,6f1c1a52-8a5e-4c1b-9d55-0c4d5b3f1e2a\n"
        )
        result = invoke(*run_args(manifest, tmp_path / "l.db", box))
        assert result.exit_code == 3
        this_run = result.output.split("This run:", 1)[1].split("ledger (every run)")[0]
        assert "1 failed" in this_run and "GE_0001 × 1: invalid parameter: batch_id (e.g. bad)" in this_run


def test_throttled_rows_show_as_throttling_not_as_error_codes(tmp_path):
    from uploader.ledger import Result, Status

    manifest = write_images(tmp_path / "images.csv", 3)
    led = _load(tmp_path / "l.db", manifest)
    owner = led.register_worker()
    claims = led.claim(owner, 10, 60)
    led.record(
        [
            Result(
                c.id,
                c.lease_token,
                Status.PENDING,
                error_code="rate_limited",
                error_message="rate limit exceeded, retry later",
                http_status=429,
                refund_attempt=True,
            )
            for c in claims
        ]
    )
    led.release(owner)
    led.close()
    shown = invoke("status", "--ledger", str(tmp_path / "l.db")).output
    assert "error codes" not in shown
    assert "throttling (the API asked to slow down" in shown
    assert "rate_limited × 3: rate limit exceeded, retry later (e.g. img-00000)" in shown


def test_an_interrupted_runs_summary_starts_with_interrupted(capsys):
    from uploader.cli.output import print_summary
    from uploader.send import Progress, RunSummary

    counts = dict.fromkeys(("pending", "in_flight", "succeeded", "failed", "uncertain", "conflict"), 0)
    print_summary(RunSummary(counts, Progress(requests=3), {}, 1.0, True, None), as_json=False)
    assert capsys.readouterr().out.startswith("interrupted after 1.0 s")
    print_summary(RunSummary(counts, Progress(requests=3), {}, 1.0, False, None), as_json=False)
    assert capsys.readouterr().out.startswith("done in 1.0 s")


def test_resume_says_how_much_is_done_and_how_much_to_send(tmp_path):
    """Seen: "already loaded …; nothing to do" printed right before 4,068 rows were sent."""
    from uploader.ledger import Result, Status

    manifest = write_images(tmp_path / "images.csv", 10)
    led = _load(tmp_path / "l.db", manifest)
    owner = led.register_worker()
    claims = led.claim(owner, 4, 60)
    led.record([Result(c.id, c.lease_token, Status.SUCCEEDED, job_id=f"job-{c.id}") for c in claims])
    led.release(owner)
    led.stop_worker(owner)
    led.close()

    def loud(manifest):  # not --quiet: it prints only errors and the final line
        return [a for a in run_args(manifest, tmp_path / "l.db", box, "--default-batch") if a != "--quiet"]

    with Sandbox(SandboxConfig(api_key=KEY, seed=7)) as box:
        result = invoke(*loud(manifest))
        assert result.exit_code == 0, result.output
        assert "already loaded; resuming: 4 done, 6 to send" in result.output
        assert "nothing to do" not in result.output
        again = invoke(*loud(manifest))
        assert "already loaded; every row is done (10); nothing to send." in again.output
        alone = invoke(*loud(None))
        assert "; every row is done (10); nothing to send." in alone.output and alone.exit_code == 0


# -- trouble as it happens -------------------------------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connections are refused


def test_a_refused_connection_is_said_in_the_users_words():
    """Seen: `Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed ...]` for a plain-http URL."""
    import asyncio

    from uploader.api import ApiClient

    port = _closed_port()

    async def send() -> str | None:
        async with ApiClient(f"http://127.0.0.1:{port}", KEY, concurrency=1, timeout=3) as client:
            return (await client.create_job("p", b"{}")).message

    message = asyncio.run(send())
    assert message == f"cannot connect to 127.0.0.1:{port} (connection refused)"


@pytest.mark.slow
def test_an_outage_is_told_as_it_happens(tmp_path):
    """Seen: a frozen 0 % bar for 32 s. Now a notice after 5 s, and the bar says what holds the run up."""
    from uploader.errors import FatalApiError
    from uploader.ledger import Ledger
    from uploader.manifest import ManifestOptions
    from uploader.send import RunOptions, run_upload

    port = _closed_port()
    manifest = write_images(tmp_path / "images.csv", 20)
    led = Ledger.open(tmp_path / "l.db")
    troubles: list[str | None] = []
    seen: list[str] = []

    def on_progress(p) -> None:
        troubles.append(p.trouble)
        seen[:] = p.notices

    try:
        run_upload(
            led,
            manifest,
            ManifestOptions(project_id="proj", work_flow_id="wf"),
            base_url=f"http://127.0.0.1:{port}",
            api_key=KEY,
            default_batch=True,
            on_progress=on_progress,
            run_options=RunOptions(concurrency=4, outage_seconds=6.5, backoff_base=0.2),
            handle_signals=False,
        )
    except FatalApiError as exc:
        assert f"cannot connect to 127.0.0.1:{port} (connection refused)" in str(exc)
    else:
        raise AssertionError("the run did not stop")
    finally:
        led.close()
    told = [n for n in seen if n.startswith("API unreachable for")]
    assert told == [
        f"API unreachable for 5 s, retrying (cannot connect to 127.0.0.1:{port} (connection refused)); "
        "nothing is marked failed meanwhile"
    ]
    assert any(t and t.startswith("API unreachable for") and t.endswith("s, retrying") for t in troubles)


def test_what_holds_the_run_up_in_a_few_words():
    from uploader.send.submit import trouble

    assert trouble(100.0, None, 0.0, None) is None
    assert trouble(100.0, 12.4, 0.0, None) == "API unreachable for 12 s, retrying"
    assert trouble(100.0, None, 103.0, None) == "throttled (429): paused 3 s"
    assert trouble(100.0, None, 0.0, {7: (112.0, "FS_0000")}) == "1 row waits 12 s to retry (FS_0000)"
    assert (
        trouble(100.0, None, 0.0, {7: (112.0, "FS_0000"), 8: (130.0, "http_502")})
        == "2 rows wait 12 s to retry (FS_0000)"
    )
    assert trouble(100.0, None, 0.0, {7: (100.5, "FS_0000")}) is None  # a short wait is not trouble


def test_the_bar_shows_ok_first_and_what_retries_now_not_a_running_total():
    """Seen: `failed=0, ok=799, retrying=373` at the end: sorted keys and a total of retries."""
    from uploader.cli.output import postfix
    from uploader.send import Progress

    p = Progress(succeeded=799, failed=0, retrying=373, retrying_now=1)
    assert postfix(p) == "ok=799, failed=0, retrying=1"
    p.throttled = 45
    assert postfix(p) == "ok=799, failed=0, retrying=1, throttled=45"


# -- workers in `status` ---------------------------------------------------------------------------------------


def test_status_lists_a_worker_whose_process_is_gone_as_dead(tmp_path):
    import subprocess
    import sys

    from sqlalchemy import text

    from uploader.ledger import write_tx

    manifest = write_images(tmp_path / "images.csv", 3)
    led = _load(tmp_path / "l.db", manifest)
    live = led.register_worker()
    gone = led.register_worker()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with write_tx(led.engine) as conn:  # a worker killed without stopping: its process has exited
        conn.execute(text("UPDATE workers SET pid = :p WHERE owner = :o"), {"p": proc.pid, "o": gone})
    report = led.status()
    assert [w["owner"] for w in report.live_workers] == [live]
    assert [w["pid"] for w in report.dead_workers] == [proc.pid]
    shown = invoke("status", "--ledger", str(tmp_path / "l.db")).output
    assert "1 live worker (" in shown and "dead worker: " in shown and f"pid {proc.pid} (the process is gone" in shown
    led.close()


def test_a_live_workers_rate_is_its_current_one(tmp_path):
    """Seen: a live worker shown at 0/s (its average since it started, 0 before its first heartbeat)."""
    manifest = write_images(tmp_path / "images.csv", 3)
    led = _load(tmp_path / "l.db", manifest)
    owner = led.register_worker()
    led.heartbeat(owner, 60, 1000, rate=250.0)  # 1000 requests, lately at 250/s
    (worker,) = led.status().live_workers
    assert worker["requests_per_second"] == 250.0
    assert worker["average_requests_per_second"] != 250.0
    led.close()


@pytest.mark.slow
def test_status_shows_a_new_runs_rate_within_seconds(tmp_path):
    import subprocess
    import sys
    import time

    from uploader.ledger import Ledger

    manifest = write_images(tmp_path / "images.csv", 3000)
    ledger = tmp_path / "l.db"
    with Sandbox(SandboxConfig(api_key=KEY, seed=3, latency_ms=20)) as box:
        cmd = [sys.executable, "-m", "uploader", *run_args(manifest, ledger, box, "--concurrency", "4")]
        proc = subprocess.Popen(
            cmd,
            env={**__import__("os").environ, "PLAYMENT_API_KEY": KEY},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            rates: list[float] = []
            while time.monotonic() < deadline and not any(rates):
                time.sleep(0.2)
                if ledger.exists():
                    led = Ledger.open(ledger, create=False)
                    try:
                        rates = [w["requests_per_second"] for w in led.status().live_workers]
                    finally:
                        led.close()
            assert any(r > 0 for r in rates), rates
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_the_bar_leaves_room_for_the_terminals_ctrl_c(monkeypatch):
    """Seen: Ctrl-C left two bars: the terminal's `^C` after a full-width bar wrapped it onto a new line, where
    it was drawn again. The bar is two columns narrower than the terminal (as wide as it is now)."""
    import os

    from uploader.cli import output

    monkeypatch.setattr(output.os, "get_terminal_size", lambda fd: os.terminal_size((80, 24)))
    assert output.bar_width() == 78
    monkeypatch.setattr(output.os, "get_terminal_size", lambda fd: os.terminal_size((160, 24)))
    assert output.bar_width() == 158
