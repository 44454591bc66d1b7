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
