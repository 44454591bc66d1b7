"""What a person sees while a run goes (issue 12, "While it runs"): slow start, the early stop on a systematic
error, the summary's error codes, trouble shown as it happens, resume wording, the workers in `status`."""

from __future__ import annotations

import random

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
        result = invoke(*run_args(manifest, tmp_path / "l.db", box, "--default-batch"),
                        env={"PLAYMENT_API_KEY": "wrong-key"})
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
        result = invoke(*run_args(manifest, tmp_path / "l.db", box, "--batch-id",
                                  "6f1c1a52-8a5e-4c1b-9d55-0c4d5b3f1e2a"))
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
