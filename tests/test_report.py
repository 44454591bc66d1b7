"""`uploader report`: the figures (aggregated in SQL, on both engines), the page's numbers against
`status --json`, and the page in a real browser (headless Chromium: console errors, charts, screenshots)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from uploader.cli.commands import cli
from uploader.cli.report import advice, bar_chart
from uploader.ledger import Ledger, Status, bucket_seconds, record_activity, report_data

ARTIFACTS = Path(os.environ.get("UPLOADER_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
T0 = dt.datetime(2026, 12, 1, 22, 0)

#: (status, error_code, http_status, error_message, attempts, origin): the ledger a night's upload leaves.
KINDS = [
    (Status.SUCCEEDED, None, 200, None, 1, "created"),
    (Status.SUCCEEDED, None, 200, None, 2, "created"),
    (Status.SUCCEEDED, "FS_0001", 409, None, 1, "recovered"),
    (Status.FAILED, "FS_0003", 400, "image_url is not a valid URL", 1, None),
    (Status.PENDING, "FS_0000", 503, "internal error, try again", 2, None),
    (Status.PENDING, "http_429", 429, "too many requests", 1, None),
    (Status.UNCERTAIN, "ambiguous", None, "the answer was lost", 3, None),
    (Status.BLOCKED, "url_http_error", None, "https://e.com/x.jpg: HTTP 403", 0, None),
    (Status.PENDING, None, None, None, 0, None),
]


def fill(engine, rows: int = 90) -> None:
    """Insert `rows` jobs cycling through KINDS, answered over 45 minutes, in two projects and three batches."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO manifests (path, size, sha256, options_hash, row_count, loaded_at, "
                "conflicts, changed) VALUES ('night.csv', 1, 'a', 'b', :n, :t, 0, :n)"
            ),
            {"n": rows, "t": T0},
        )
        conn.execute(
            text(
                "INSERT INTO batches (project_id, name, batch_id, created_at, auto) "
                "VALUES ('proj-0', 'night 1', 'batch-1', :t, false)"
            ),
            {"t": T0},
        )
        conn.execute(
            text(
                "INSERT INTO jobs (project_id, reference_id, work_flow_id, batch_id, body, body_hash, status, "
                "error_code, http_status, error_message, attempts, origin, recovered, lease_token, created_at, "
                "updated_at, manifest_id) VALUES (:p, :r, 'wf', :b, '{}', 'h', :s, :c, :h, :m, :a, :o, false, 0, "
                ":t0, :t, 1)"
            ),
            [
                {
                    "p": f"proj-{i % 2}",
                    "r": f"ref-{i:03}",
                    "b": f"batch-{i % 3}" if i % 3 else None,
                    "s": k[0].value,
                    "c": k[1],
                    "h": k[2],
                    "m": k[3],
                    "a": k[4],
                    "o": k[5],
                    "t0": T0,
                    "t": T0 + dt.timedelta(minutes=i // 2),
                }
                for i, k in ((i, KINDS[i % len(KINDS)]) for i in range(rows))
            ],
        )


def test_report_data_aggregates_in_sql(ledger):
    fill(ledger.engine)
    data = report_data(ledger.engine)
    assert data.counts == ledger.counts() and data.total == 90
    assert data.bucket == 60 and data.measured_from is None  # no run wrote activity: derived from the rows
    # minute by minute from the first answer; the last two rows (blocked, pending) were never sent
    assert data.throughput[0][0] == T0 and data.throughput[-1][0] == T0 + dt.timedelta(minutes=43)
    assert sum(c for _, c, _, _ in data.throughput) == 20  # 10 of each of the two "created" kinds
    assert sum(r for _, _, r, _ in data.throughput) == 10 * sum(k[4] for k in KINDS)
    assert sum(t for _, _, _, t in data.throughput) == 10
    codes = {(c, s): (n, m, ex) for c, s, n, m, ex in data.errors}
    assert codes[("FS_0003", "failed")][:2] == (10, "image_url is not a valid URL")
    assert len(codes[("FS_0003", "failed")][2]) == 3
    assert ("FS_0001", "succeeded") not in codes  # a job that exists is no error
    assert dict(data.attempts) == {0: 20, 1: 40, 2: 20, 3: 10}
    assert len(data.uncertain) == 10 and len(data.blocked) == 10
    assert {p: sum(c.values()) for p, c in data.projects.items()} == {"proj-0": 45, "proj-1": 45}
    assert data.batch_count == 6 and sum(sum(c.values()) for _, _, c in data.batches) == 90
    assert data.platform == {} and data.results is None  # never synced: the columns are there, empty
    assert data.batch_names == {"batch-1": "night 1"}


#: (platform_status, result_path, result, result_error) of ref-000.. after a sync: the job_id `job-<n>-id` is in
#: each error text, as sync writes it.
SYNCED = [
    ("completed", "/res/ref-000.json", None, None),
    ("completed", "/res/ref-001.json", None, None),
    ("rejected", None, '{"labels": []}', None),
    ("completed", None, None, "cannot read the result of job {job}: bad_result HTTP 403: not a result"),
    ("failed", None, None, "cannot read the result of job {job}: bad_result HTTP 403: not a result"),
    ("completed", None, None, "cannot write /res/ref-005.json: [Errno 28] No space left on device"),
    ("completed", None, None, None),
    ("in_progress", None, None, None),
    ("in_progress", None, None, "a failure left from when the job was final"),
]


def sync_rows(engine, rows=SYNCED) -> None:
    """Write what `uploader sync --results` leaves in the first len(rows) rows of a `fill`ed ledger."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET job_id = :j, platform_status = :s, platform_status_at = :t, result_path = :p, "
                "result = :r, result_error = :e WHERE reference_id = :ref"
            ),
            [
                {
                    "ref": f"ref-{i:03}",
                    "j": f"job-{i}-id",
                    "s": s,
                    "t": T0,
                    "p": p,
                    "r": r,
                    "e": e and e.format(job=f"job-{i}-id"),
                }
                for i, (s, p, r, e) in enumerate(rows)
            ],
        )


def test_results_of_final_jobs_are_counted_and_failures_grouped_by_cause(ledger):
    """`uploader sync`'s columns (migration 0008): the jobs per platform status, and of the final ones
    (completed, rejected, failed) the results fetched as files or inline, failed (each cause once, its job
    left out of the text, the most common first, with an example) and not fetched yet."""
    fill(ledger.engine, 9)
    sync_rows(ledger.engine)
    data = report_data(ledger.engine)
    assert data.platform == {"completed": 5, "in_progress": 2, "rejected": 1, "failed": 1}
    results = data.results
    assert results is not None
    assert (results.final, results.files, results.inline, results.failed, results.not_fetched) == (7, 2, 1, 3, 1)
    assert results.fetched == 3
    assert results.errors == [
        ("cannot read the result of job …: bad_result HTTP 403: not a result", 2, "ref-003"),
        ("cannot write /res/….json: [Errno 28] No space left on device", 1, "ref-005"),
    ]


def test_a_long_result_error_is_cut_and_only_the_commonest_are_listed(ledger):
    fill(ledger.engine, 9)
    rows = [("completed", None, None, f"cause {i % 7}: " + "x" * 300) for i in range(9)]
    sync_rows(ledger.engine, rows)
    results = report_data(ledger.engine).results
    assert results is not None and results.failed == 9 and results.not_fetched == 0
    assert [n for _, n, _ in results.errors] == [2, 2, 1, 1, 1]  # causes 0 and 1 twice, then the first others
    assert all(len(e) == 160 and e.endswith("…") for e, _, _ in results.errors)


def test_page_tells_the_results(tmp_path):
    """The "On the platform" part: the counts of the results as numbers a reader finds, each failure's cause,
    what to run; no "Fetched" table of timestamp columns."""
    out, _ = _page(tmp_path, rows=9, synced=True)
    page = out.read_text()
    part = page[page.index("<h2>On the platform") : page.index("<h2>How this report was made")]
    cards = {k: int(n.replace(",", "")) for k, n in re.findall(r'data-result="([^"]+)">.*?<b>([\d,]+)</b>', part)}
    assert cards == {"fetched": 3, "failed": 3, "not fetched yet": 1}
    assert "<b data-final>7</b> jobs with a final status (completed, rejected, failed)" in part
    assert "(2 as files, 1 inline)" in part
    assert "cannot read the result of job …: bad_result HTTP 403: not a result" in part and "job-3-id" not in part
    assert "<code>uploader sync --results DIR</code>" in part
    assert "platform_status_at" not in page and "Fetched" not in part


def test_page_of_synced_jobs_none_final_says_no_result_is_due(tmp_path):
    out, _ = _page(tmp_path, rows=9, synced=[("in_progress", None, None, None)])
    part = out.read_text().split("<h2>On the platform", 1)[1]
    assert "No job has a final status (completed, rejected, failed) yet" in part and "data-result" not in part


def test_buckets_grow_with_the_span():
    assert bucket_seconds(None, None) == 60
    assert bucket_seconds(T0, T0 + dt.timedelta(hours=1)) == 60
    assert bucket_seconds(T0, T0 + dt.timedelta(hours=10)) == 300
    assert bucket_seconds(T0, T0 + dt.timedelta(days=30)) == 6 * 3600
    assert dt.timedelta(days=3000) / dt.timedelta(seconds=bucket_seconds(T0, T0 + dt.timedelta(days=3000))) < 240


def test_advice_per_kind_of_error():
    assert "access to the attachment" in advice("url_http_error", "blocked")
    assert "Sign the attachment URLs again" in advice("url_expires_soon", "blocked")
    assert "Fix the manifest" in advice("FS_0003", "failed")
    assert "retried" in advice("FS_0000", "pending")
    assert "reconcile" in advice("ambiguous", "uncertain")
    assert "Throttled" in advice("http_429", "pending") and "Throttled" in advice("rate_limited", "pending")
    assert "retry --error-code job_not_found" in advice("job_not_found", "failed")
    assert "retry --error-code FS_0007" in advice("FS_0007", "failed")


def test_bar_chart_draws_a_bar_per_value():
    svg = bar_chart(["a", "b", "c"], [1, 0, 5], "#000", "rows")
    assert svg.count("<rect") == 3 and svg.startswith("<svg") and "c: 5 rows" in svg


def _page(tmp_path: Path, rows: int = 90, activity: bool = False, synced: bool | list = False) -> tuple[Path, dict]:
    """The report of a `fill`ed ledger (with `activity`: two runs' counts per minute over 45 minutes, with a
    burst of 429s; with `synced`: the first rows as a sync left them, SYNCED or the list given), and `status
    --json` of the same ledger."""
    path = tmp_path / "ledger.db"
    led = Ledger.open(str(path))
    fill(led.engine, rows)
    if synced:
        sync_rows(led.engine, SYNCED if synced is True else synced)
    for owner, minute in ((o, m) for o in ("run-a", "run-b") for m in range(45)) if activity else ():
        throttled = 30 + minute if 10 < minute < 20 else minute % 3
        counts = {"requests": 900 + 7 * minute, "recovered": 2, "failed": 3, "throttled": throttled, "retried": 4}
        record_activity(led.engine, owner, T0 + dt.timedelta(minutes=minute), {**counts, "created": 880 - throttled})
    led.close()
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", "--ledger", str(path), "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    status = CliRunner().invoke(cli, ["status", "--ledger", str(path), "--json"], catch_exceptions=False)
    return out, json.loads(status.output)


def test_page_totals_are_status_json(tmp_path):
    out, status = _page(tmp_path)
    page = out.read_text()
    assert re.search(r"<b data-total>([\d,]+)</b>", page).group(1).replace(",", "") == str(status["total"])
    shown = {
        s: int(n.replace(",", ""))
        for s, n in re.findall(r'data-state="(\w+)"><span class="muted">\w+</span><b>([\d,]+)</b>', page)
    }
    assert shown == status["counts"]
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert "night.csv" in page and "uploader report" in page and "night 1<br>" in page
    assert "check access to the attachment" in page.lower()


def test_report_of_an_empty_ledger(tmp_path):
    path = tmp_path / "empty.db"
    Ledger.open(str(path)).close()
    out = tmp_path / "r.html"
    result = CliRunner().invoke(cli, ["report", "--ledger", str(path), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["total"] == 0
    page = out.read_text()
    assert "Nothing sent yet" in page and "No row has an error" in page


def _chromium() -> str | None:
    return os.environ.get("UPLOADER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_flags(tmp_path: Path) -> list[str]:
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium not found under CI: .ci/run should have installed it")
        pytest.skip("chromium not installed (Debian's `chromium` package): the browser test is skipped")
    return [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]


def _load(flags: list[str], page: Path) -> tuple[str, list[str]]:
    """The DOM after the page loaded, and every console message it logged (errors included)."""
    dom = subprocess.run(
        [*flags, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout, [line for line in dom.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.slow
def test_the_console_check_sees_errors(tmp_path):
    """The check below would catch a page's error: a page that logs one and throws is caught."""
    flags = _browser_flags(tmp_path)
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><p>x</p><script>console.error("boom"); missing();</script>')
    _, console = _load(flags, bad)
    assert any("boom" in line for line in console) and any("Uncaught" in line for line in console)


@pytest.mark.slow
def test_page_in_a_real_browser(tmp_path):
    """Headless Chromium loads the page with no console message, every chart drew, and screenshots at a
    laptop's and a phone's width land in the test artifacts."""
    flags = _browser_flags(tmp_path)
    out, _ = _page(tmp_path, activity=True, synced=True)
    dom, console = _load(flags, out)
    assert not console, console
    svgs = re.findall(r"<svg[^>]*>(.*?)</svg>", dom, re.S)
    # the share bar, requests by answer, 429s, attempts: each drew its bars
    assert len(svgs) == out.read_text().count("<svg") >= 4 and all("<rect" in s for s in svgs)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, width, height in (("report-laptop.png", 1280, 3000), ("report-phone.png", 390, 5000)):
        shot = ARTIFACTS / name
        subprocess.run(
            [*flags, f"--window-size={width},{height}", f"--screenshot={shot}", out.as_uri()],
            capture_output=True,
            timeout=120,
            check=True,
        )
        assert shot.stat().st_size > 10_000
