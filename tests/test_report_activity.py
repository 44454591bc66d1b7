"""The report's throughput from the runs' own counts per minute (the activity table, migration 0009): the
meter that splits a run's totals by minute, the upsert on both engines, and a real throttled run against the
sandbox whose report shows the run's own counts."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import event, text

from uploader.cli.commands import cli
from uploader.cli.report import axis_ticks, stacked_chart, time_marks
from uploader.ledger import ACTIVITY_COUNTERS, record_activity, report_data
from uploader.sandbox import Sandbox, SandboxConfig
from uploader.send.summary import ActivityMeter, Progress, activity_counts

KEY = "report-activity-key-5d1e"
T0 = dt.datetime(2026, 12, 1, 22, 0)


def totals(requests: int, created: int = 0, throttled: int = 0) -> dict[str, int]:
    return {"requests": requests, "created": created, "recovered": 0, "failed": 0, "throttled": throttled, "retried": 0}


def test_the_run_counters_are_the_tables_columns():
    p = Progress(requests=7, succeeded=5, recovered=1, failed=1, throttled=2, retrying=1)
    assert tuple(activity_counts(p)) == ACTIVITY_COUNTERS
    assert activity_counts(p) == {
        "requests": 7,
        "created": 4,
        "recovered": 1,
        "failed": 1,
        "throttled": 2,
        "retried": 1,
    }


def test_the_minutes_add_up_to_the_run_totals():
    meter = ActivityMeter()
    assert meter.tick(T0, totals(0)) is None  # nothing done yet: nothing written
    assert meter.tick(T0 + dt.timedelta(seconds=5), totals(10, 8, 2)) == (T0, totals(10, 8, 2))
    assert meter.tick(T0 + dt.timedelta(seconds=10), totals(10, 8, 2)) is None  # unchanged
    assert meter.tick(T0 + dt.timedelta(seconds=55), totals(30, 25, 3)) == (T0, totals(30, 25, 3))
    # the next minute counts what came after the previous tick, not what the previous minute had
    nxt = T0 + dt.timedelta(minutes=1)
    assert meter.tick(nxt + dt.timedelta(seconds=2), totals(34, 29, 3)) == (nxt, totals(4, 4, 0))
    # a quiet minute writes nothing; the one after counts from the last tick
    later = T0 + dt.timedelta(minutes=5)
    assert meter.tick(later - dt.timedelta(minutes=2), totals(34, 29, 3)) is None
    assert meter.tick(later + dt.timedelta(seconds=59, microseconds=9), totals(40, 30, 9)) == (later, totals(6, 1, 6))


def test_a_minute_met_again_adds_to_what_it_had():
    """A clock stepped back into a minute already written: that minute's counts grow, never start over."""
    meter = ActivityMeter()
    assert meter.tick(T0 + dt.timedelta(seconds=50), totals(30, 25, 5)) == (T0, totals(30, 25, 5))
    nxt = T0 + dt.timedelta(minutes=1)
    assert meter.tick(nxt + dt.timedelta(seconds=10), totals(40, 33, 7)) == (nxt, totals(10, 8, 2))
    assert meter.tick(T0 + dt.timedelta(seconds=45), totals(65, 55, 10)) == (T0, totals(55, 47, 8))


def test_activity_is_upserted_and_shown(ledger):
    """The same minute written again takes the newer counts (an upsert on SQLite and PostgreSQL); runs add up."""
    record_activity(ledger.engine, "run-a", T0, totals(5, 4, 1))
    record_activity(ledger.engine, "run-a", T0, totals(9, 7, 2))
    record_activity(ledger.engine, "run-b", T0, totals(1, 1, 0))
    record_activity(ledger.engine, "run-a", T0 + dt.timedelta(minutes=2), totals(3, 3, 0))
    with ledger.engine.connect() as conn:
        rows = conn.execute(text("SELECT owner, minute, requests FROM activity ORDER BY owner, minute")).all()
    assert [(o, r) for o, _, r in rows] == [("run-a", 9), ("run-a", 3), ("run-b", 1)]
    data = report_data(ledger.engine)
    assert data.measured_from is not None and not data.derived and data.bucket == 60
    assert data.throughput == [(T0, 8, 10, 2), (T0 + dt.timedelta(minutes=2), 3, 3, 0)]


def test_a_ledger_without_activity_keeps_the_derived_chart(ledger):
    data = report_data(ledger.engine)
    assert data.measured_from is None and data.throughput == []


def _images(path: Path, n: int) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "image_url"])
        for i in range(n):
            w.writerow([f"img-{i:05d}", f"https://cdn.example.com/{i}.jpg"])
    return path


def _shown(page: str, name: str) -> int:
    return int(re.search(rf"<b data-{name}>([\d,]+)</b>", page).group(1).replace(",", ""))


@pytest.mark.slow
def test_report_of_a_throttled_run_shows_the_runs_own_counts(db_url, tmp_path):
    """A real run against the sandbox, throttled (429 with Retry-After) and with transient errors: the
    report's requests, created jobs and 429s are the run's own counts, every request included (not only each
    row's last answer), and they match what the sandbox received. On SQLite and PostgreSQL (the upsert)."""
    config = SandboxConfig(api_key=KEY, seed=3, rate_limit=100, retry_after_s=1, error_rate=0.05)
    ledger, out = db_url, tmp_path / "report.html"
    with Sandbox(config) as box:
        args = ["run", str(_images(tmp_path / "m.csv", 150)), "--project-id", "proj", "--work-flow-id", "wf"]
        args += ["--ledger", str(ledger), "--base-url", box.base_url, "--json", "--quiet"]
        result = CliRunner().invoke(cli, args, env={"PLAYMENT_API_KEY": KEY}, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        run = json.loads(result.output[result.output.index("{") :])["this_run"]
        stats = box.stats()
    assert run["throttled"] > 0 and run["retries"] > 0  # the faults did happen
    assert stats["faults"]["rate_limited"] == run["throttled"]
    made = CliRunner().invoke(cli, ["report", "--ledger", str(ledger), "-o", str(out)], catch_exceptions=False)
    assert made.exit_code == 0, made.output
    page = out.read_text()
    assert _shown(page, "requests") == run["requests"] > 150
    assert _shown(page, "created") == run["succeeded"] - run["recovered"]
    assert _shown(page, "throttled") == run["throttled"]
    assert "as the runs counted them" in page


def test_the_y_axis_reads_at_round_values():
    assert axis_ticks(0) == [0, 1] and axis_ticks(3) == [0, 1, 2, 3]
    assert axis_ticks(39) == [0, 10, 20, 30, 40]
    assert axis_ticks(2340) == [0, 1000, 2000, 3000]
    assert axis_ticks(99_999) == [0, 25_000, 50_000, 75_000, 100_000]


def test_the_time_axis_is_labelled_at_round_times():
    minutes = [T0 + dt.timedelta(minutes=3 + i) for i in range(45)]  # 22:03 … 22:47
    assert [f"{minutes[i]:%H:%M}" for i in time_marks(minutes, 60)] == ["22:10", "22:20", "22:30", "22:40"]
    fives = [T0 + dt.timedelta(minutes=5 * i) for i in range(96)]  # 8 hours in 5-minute buckets
    assert [f"{fives[i]:%H:%M}" for i in time_marks(fives, 300)] == ["22:00", "00:00", "02:00", "04:00"]
    assert time_marks(minutes[:1], 60) == [0]


def test_the_requests_chart_stacks_the_answers():
    svg = stacked_chart(
        ["22:00"], [("created", "#0f0", [8]), ("throttled", "#f00", [2]), ("other", "#ccc", [0])], "requests"
    )
    assert svg.count("<rect") == 2  # an empty layer draws nothing
    assert "22:00: 10 requests (8 created, 2 throttled, 0 other)" in svg


def test_the_report_reads_with_a_small_cache_and_puts_the_ledgers_back(ledger):
    """The report's read uses a 2 MiB page cache (flat memory); the pooled connection gets its own size back."""
    if ledger.engine.dialect.name != "sqlite":
        pytest.skip("a SQLite page cache")
    with ledger.engine.connect() as conn:
        before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    seen: list[str] = []
    listen = lambda *args: seen.append(args[2])  # noqa: E731 (conn, cursor, statement, …)
    event.listen(ledger.engine, "before_cursor_execute", listen)
    try:
        report_data(ledger.engine)
    finally:
        event.remove(ledger.engine, "before_cursor_execute", listen)
    small = seen.index("PRAGMA cache_size = -2048")
    assert not [q for q in seen[:small] if q.startswith("SELECT")]  # before every query of the report
    assert seen[-1] == "PRAGMA cache_size = -32768"
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == before == -32768
