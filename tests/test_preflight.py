"""Attachment preflight end to end: `uploader check`, `run --preflight`, the blocked state, `retry --blocked`,
`run --allow-blocked`, signed-URL expiry — against the sandbox's attachment files over loopback."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from uploader.cli.commands import cli
from uploader.sandbox import Sandbox, SandboxConfig

LOAD = ["--project-id", "proj", "--work-flow-id", "wf"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def box():
    with Sandbox(SandboxConfig(check_attachments=True)) as sb:
        yield sb


def files(box: Sandbox, name: str, query: str = "") -> str:
    return f"{box.base_url}/_sandbox/files/{name}" + (f"?{query}" if query else "")


def write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("reference_id,image_url\n" + "".join(f"{r},{u}\n" for r, u in rows))
    return path


def statuses(ledger: Path) -> dict[str, tuple[str, str | None, str | None]]:
    with sqlite3.connect(ledger) as db:
        return {
            r: (s, c, m)
            for r, s, c, m in db.execute("SELECT reference_id, status, error_code, error_message FROM jobs")
        }


def url_checks(ledger: Path) -> int:
    with sqlite3.connect(ledger) as db:
        return db.execute("SELECT COUNT(*) FROM urls").fetchone()[0]


def requests_since(box: Sandbox, before: dict[str, int]) -> dict[str, int]:
    """The attachment requests the sandbox received since its `file_requests` were `before`, by method."""
    after = box.stats()["file_requests"]
    return {m: n - before.get(m, 0) for m, n in after.items() if n != before.get(m, 0)}


def test_check_blocks_rows_whose_attachment_would_not_open(box, tmp_path):
    ledger = tmp_path / "l.db"
    before = box.stats()["file_requests"]
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            ("ok1", files(box, "a.jpg")),
            ("ok2", files(box, "a.jpg")),  # one URL shared by two rows
            ("gone", files(box, "b.jpg", "status=404")),
            ("html", files(box, "c.html")),
            ("empty", files(box, "d.png", "size=0")),
            ("s3", files(box, "e.jpg", "head=403")),
        ],
    )
    result = invoke("check", str(manifest), *LOAD, "--ledger", str(ledger))
    assert result.exit_code == 3, result.output
    assert "3 rows blocked" in result.output and "HTTP 404" in result.output
    rows = statuses(ledger)
    assert {r: s for r, (s, _, _) in rows.items()} == {
        "ok1": "pending",
        "ok2": "pending",
        "s3": "pending",
        "gone": "blocked",
        "html": "blocked",
        "empty": "blocked",
    }
    assert rows["gone"][1:] == ("url_http_error", f"{files(box, 'b.jpg', 'status=404')}: HTTP 404")
    assert rows["html"][1] == "url_not_media" and rows["empty"][1] == "url_empty"
    assert url_checks(ledger) == 5  # five distinct URLs
    assert requests_since(box, before) == {"GET": 5}  # one ranged GET each; no HEAD, even to the s3 one

    # A rerun checks nothing again: every verdict is stored.
    before = box.stats()["file_requests"]
    result = invoke("check", "--ledger", str(ledger), "--json")
    assert result.exit_code == 0, result.output  # the bad rows are blocked already: no pending row is bad
    report = json.loads(result.output)
    assert report["checked"] == 0 and report["rows"] == 0 and report["bad_rows"] == 0  # checked rows are skipped
    assert box.stats()["file_requests"] == before

    # Blocked rows are never sent; status and export show them with the reason.
    run = invoke("run", "--ledger", str(ledger), "--base-url", box.base_url, "--api-key", box.api_key)
    assert box.stats()["jobs_created"] == 3
    assert run.exit_code == 3, run.output  # something held back
    status = json.loads(invoke("status", "--ledger", str(ledger), "--json").output)
    assert status["counts"]["blocked"] == 3 and status["counts"]["succeeded"] == 3
    export = invoke("export", "--ledger", str(ledger), "--status", "blocked", "--format", "jsonl").output
    exported = {json.loads(line)["reference_id"]: json.loads(line) for line in export.splitlines()}
    assert set(exported) == {"gone", "html", "empty"}
    assert "HTTP 404" in json.dumps(exported["gone"])


def test_retry_blocked_releases_and_rechecks(box, tmp_path):
    ledger = tmp_path / "l.db"
    manifest = write_manifest(
        tmp_path / "m.csv", [("gone", files(box, "b.jpg", "status=404")), ("ok", files(box, "a.jpg"))]
    )
    assert invoke("check", str(manifest), *LOAD, "--ledger", str(ledger)).exit_code == 3
    result = invoke("retry", "--blocked", "--ledger", str(ledger))
    assert result.exit_code == 0 and "1 blocked row is pending again" in result.output
    assert statuses(ledger)["gone"] == ("pending", None, None)
    before = box.stats()["file_requests"]
    # Still broken: the preflight of the run checks the URL again (its bad verdict was dropped) and blocks it.
    run = invoke("run", "--ledger", str(ledger), "--base-url", box.base_url, "--api-key", box.api_key, "--preflight")
    assert requests_since(box, before) == {"GET": 1}
    assert statuses(ledger)["gone"][0] == "blocked" and statuses(ledger)["ok"][0] == "succeeded"
    assert "1 rows blocked" in run.output


def test_run_allow_blocked_sends_them_anyway(box, tmp_path):
    ledger = tmp_path / "l.db"
    manifest = write_manifest(tmp_path / "m.csv", [("gone", files(box, "b.jpg", "status=404"))])
    assert invoke("check", str(manifest), *LOAD, "--ledger", str(ledger)).exit_code == 3
    run = invoke(
        "run",
        "--ledger",
        str(ledger),
        "--base-url",
        box.base_url,
        "--api-key",
        box.api_key,
        "--allow-blocked",
        "--preflight",
    )
    assert "would be blocked" in run.output
    # Sent: the platform itself refuses the attachment (the sandbox's FS_0007).
    assert statuses(ledger)["gone"][:2] == ("failed", "FS_0007")


def test_run_preflight_with_a_manifest_checks_before_the_first_send(box, tmp_path):
    ledger = tmp_path / "l.db"
    manifest = write_manifest(
        tmp_path / "m.csv", [("bad", files(box, "x.jpg", "status=403")), ("good", files(box, "y.jpg"))]
    )
    run = invoke(
        "run",
        str(manifest),
        *LOAD,
        "--ledger",
        str(ledger),
        "--base-url",
        box.base_url,
        "--api-key",
        box.api_key,
        "--preflight",
    )
    assert run.exit_code == 3, run.output
    assert box.stats()["fs_0001_refusals"] == 0 and box.stats()["jobs_created"] == 1
    assert box.stats()["requests_by_status"].get("400", 0) == 0  # no FS_0007: the bad row never went out
    assert statuses(ledger)["bad"][0] == "blocked"


def _aws(signed_at: datetime, seconds: int) -> str:
    return (
        f"https://bucket.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20261203"
        f"&X-Amz-Date={signed_at:%Y%m%dT%H%M%SZ}&X-Amz-Expires={seconds}&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=00"
    )


def test_signed_urls_expiring_too_soon_are_blocked_without_a_request(tmp_path, box):
    now = datetime.now(UTC).replace(microsecond=0)
    soon, later = _aws(now, 3600), _aws(now, 7 * 86400)
    ledger = tmp_path / "l.db"
    manifest = write_manifest(tmp_path / "m.csv", [("soon", soon), ("later", later)])
    # The check of `later` itself fails (no network here: bucket.s3.amazonaws.com does not resolve), so only
    # the expiry verdicts are compared.
    result = invoke(
        "check", str(manifest), *LOAD, "--ledger", str(ledger), "--min-url-validity", "1d", "--check-timeout", "0.5"
    )
    rows = statuses(ledger)
    assert rows["soon"][:2] == ("blocked", "url_expires_soon")
    assert rows["later"][1] != "url_expires_soon"
    assert "the earliest expires" in result.output
    expected = (now + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")
    assert expected in rows["soon"][2]


def test_duration_option_rejects_nonsense(tmp_path):
    result = CliRunner().invoke(cli, ["check", "--ledger", str(tmp_path / "l.db"), "--recheck-after", "soon"])
    assert result.exit_code == 2 and "not a duration" in result.output


def test_status_counts_verdicts_and_rows_never_checked(box, tmp_path):
    ledger = tmp_path / "l.db"
    m = write_manifest(tmp_path / "m.csv", [("a", files(box, "a.jpg")), ("b", files(box, "b.jpg", "status=404"))])
    assert invoke("load", str(m), *LOAD, "--ledger", str(ledger)).exit_code == 0
    status = json.loads(invoke("status", "--ledger", str(ledger), "--json").output)
    assert status["attachments"] == {"never_checked": 2, "urls": {}}
    assert "2 pending rows never had their attachments checked" in invoke("status", "--ledger", str(ledger)).output
    invoke("check", "--ledger", str(ledger))
    status = json.loads(invoke("status", "--ledger", str(ledger), "--json").output)
    assert status["attachments"] == {"never_checked": 0, "urls": {"http_error": 1, "ok": 1}}
    # A changed payload must be checked again.
    m2 = write_manifest(tmp_path / "m2.csv", [("a", files(box, "a2.jpg")), ("b", files(box, "b.jpg", "status=404"))])
    assert invoke("load", str(m2), *LOAD, "--ledger", str(ledger)).exit_code == 0
    status = json.loads(invoke("status", "--ledger", str(ledger), "--json").output)
    assert status["attachments"]["never_checked"] == 1 and status["counts"]["blocked"] == 1


def test_check_sample_checks_n_urls_per_host_and_blocks_nothing(box, tmp_path):
    ledger = tmp_path / "l.db"
    rows = [(f"ok{i}", files(box, f"ok{i}.jpg")) for i in range(30)]
    rows += [
        (f"bad{i}", f"http://localhost:{box.base_url.rsplit(':', 1)[1]}/_sandbox/files/x{i}.jpg?status=404")
        for i in range(10)
    ]
    m = write_manifest(tmp_path / "m.csv", rows)
    assert invoke("load", str(m), *LOAD, "--ledger", str(ledger)).exit_code == 0
    before = box.stats()["file_requests"]
    result = invoke("check", "--ledger", str(ledger), "--sample", "4", "--json")
    assert result.exit_code == 0, result.output
    hosts = json.loads(result.output)
    assert set(hosts) == {box.base_url.split("//")[1], f"localhost:{box.base_url.rsplit(':', 1)[1]}"}
    good, bad = hosts[box.base_url.split("//")[1]], hosts[f"localhost:{box.base_url.rsplit(':', 1)[1]}"]
    assert (good["urls"], good["checked"], good["failure_rate"]) == (30, 4, 0.0)
    assert (bad["urls"], bad["checked"], bad["failure_rate"]) == (10, 4, 1.0) and "HTTP 404" in bad["example"]
    assert requests_since(box, before) == {"GET": 8}
    assert {s for s, _, _ in statuses(ledger).values()} == {"pending"}  # nothing blocked
    assert url_checks(ledger) == 8  # the verdicts are kept for the full check


def test_a_url_shared_across_pages_is_checked_once(box, tmp_path):
    ledger = tmp_path / "l.db"
    shared = files(box, "shared.jpg")
    rows = [(f"r{i}", shared if i % 2 else files(box, f"own{i}.jpg")) for i in range(4500)]  # > 2 pages
    m = write_manifest(tmp_path / "m.csv", rows)
    before = box.stats()["file_requests"]
    result = invoke("check", str(m), *LOAD, "--ledger", str(ledger), "--per-host-rate", "100000", "--json")
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["rows"] == 4500 and report["bad_rows"] == 0
    assert requests_since(box, before) == {"GET": 2250 + 1}  # one GET per distinct URL


def test_a_row_checked_earlier_is_blocked_when_its_signed_url_nears_expiry(box, tmp_path):
    now = datetime.now(UTC).replace(microsecond=0)
    url = (
        f"{files(box, 'signed.jpg')}?X-Amz-Credential=c&X-Amz-Date={now:%Y%m%dT%H%M%SZ}"
        "&X-Amz-Expires=172800&X-Amz-Signature=s"
    ).replace("signed.jpg?", "signed.jpg?size=10&")
    ledger = tmp_path / "l.db"
    m = write_manifest(tmp_path / "m.csv", [("s", url)])
    assert invoke("check", str(m), *LOAD, "--ledger", str(ledger), "--min-url-validity", "1d").exit_code == 0
    assert statuses(ledger)["s"][0] == "pending"
    before = box.stats()["file_requests"]
    later = invoke("check", "--ledger", str(ledger), "--min-url-validity", "3d")
    assert later.exit_code == 3, later.output
    assert statuses(ledger)["s"][:2] == ("blocked", "url_expires_soon")
    assert requests_since(box, before) == {}  # decided from the stored expiry, no request


def test_preflight_writes_on_both_engines(ledger, tmp_path):
    """The preflight's grouped writes (the driver's executemany, `?` or `%s`) store verdicts, block and mark
    rows on SQLite and PostgreSQL alike; a row no longer pending is left alone and not counted."""
    from tests.conftest import fake_manifest
    from uploader.ledger import UrlVerdict, pending_payloads, store_preflight, verdicts_since
    from uploader.load import load_manifest

    rows = [(f"ref-{i}", f"https://example.com/{i}.jpg") for i in range(4)]
    load_manifest(ledger, fake_manifest(tmp_path, rows), "opts")
    ids = {ref: i for page in pending_payloads(ledger.engine) for i, ref, _ in page}
    at = datetime(2026, 12, 3, 10, 0, 0)  # whole seconds: the DateTime binding keeps them exact
    verdicts = [
        UrlVerdict(rows[0][1], "ok", "image/jpeg", 200, "image/jpeg", 10, at),
        UrlVerdict(rows[1][1], "http_error", "HTTP 404", 404, None, None, at),
    ]
    expires = datetime(2027, 1, 1, 12, 30)
    blocks = [(ids["ref-1"], "url_http_error", "HTTP 404"), (ids["ref-1"], "url_http_error", "again")]
    blocked = store_preflight(ledger.engine, verdicts, blocks, [(ids["ref-0"], expires), (ids["ref-2"], None)])
    assert blocked == 1  # the second block of ref-1 found it no longer pending
    stored = verdicts_since(ledger.engine, [rows[0][1], rows[1][1], rows[3][1]], at)
    assert stored == {v.url: v for v in verdicts}
    assert verdicts_since(ledger.engine, [rows[0][1]], at + timedelta(seconds=1)) == {}
    assert [ref for page in pending_payloads(ledger.engine) for _, ref, _ in page] == ["ref-3"]  # others checked
    with ledger.engine.connect() as conn:
        got = {
            r: (s, c, e)
            for r, s, c, e in conn.exec_driver_sql("SELECT reference_id, status, error_code, expires_at FROM jobs")
        }
    assert got["ref-1"][:2] == ("blocked", "url_http_error")
    assert got["ref-0"][0] == "pending" and str(got["ref-0"][2]).startswith("2027-01-01 12:30:00")
    assert got["ref-2"] == ("pending", None, None)


def test_the_run_progress_total_leaves_blocked_rows_out(box, tmp_path):
    """3 rows blocked, 2 sendable: the run's progress says x/2, not x/5 (a bar that could never fill)."""
    from uploader.send.summary import progress_span

    ledger = tmp_path / "l.db"
    bad = [(f"bad{i}", files(box, f"b{i}.jpg", "status=404")) for i in range(3)]
    manifest = write_manifest(tmp_path / "m.csv", [*bad, ("ok1", files(box, "a.jpg")), ("ok2", files(box, "c.jpg"))])
    assert invoke("check", str(manifest), *LOAD, "--ledger", str(ledger)).exit_code == 3
    run = invoke("run", "--ledger", str(ledger), "--base-url", box.base_url, "--api-key", box.api_key)
    progress_lines = [line for line in run.output.splitlines() if " done: " in line]
    assert progress_lines and all("/2 done" in line for line in progress_lines), run.output
    counts = {"pending": 2, "in_flight": 0, "succeeded": 4, "failed": 1, "uncertain": 0, "conflict": 0, "blocked": 3}
    assert progress_span(counts) == (7, 5)  # the bar: 7 - 5 = the 2 pending rows


def test_load_reports_signed_urls_expiring_too_soon_and_the_earliest(tmp_path, box):
    """`load` (and `run`, when it loads) says how many signed URLs of the pending rows expire before now +
    --min-url-validity, and the earliest expiry; in text and in --json."""
    now = datetime.now(UTC).replace(microsecond=0)
    soon, later = _aws(now, 3600), _aws(now, 7 * 86400)
    rows = [("soon", soon), ("later", later), ("plain", files(box, "a.jpg"))]
    ledger = tmp_path / "l.db"
    manifest = write_manifest(tmp_path / "m.csv", rows)
    result = invoke("load", str(manifest), *LOAD, "--ledger", str(ledger), "--min-url-validity", "1d")
    assert result.exit_code == 0, result.output
    earliest = (now + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")
    assert "signed URLs: 2 in pending rows; 1 expire before" in result.output
    assert f"the earliest at {earliest} UTC" in result.output
    document = json.loads(
        invoke("load", str(manifest), *LOAD, "--ledger", str(ledger), "--min-url-validity", "2h", "--json").output
    )
    signed = document["signed_urls"]
    assert (signed["urls"], signed["expiring"]) == (2, 1)
    assert signed["earliest_expiry"] == (now + timedelta(hours=1)).isoformat()
    relaxed = invoke("load", str(manifest), *LOAD, "--ledger", str(ledger), "--min-url-validity", "30m", "--json")
    assert json.loads(relaxed.output)["signed_urls"]["expiring"] == 0
    # A manifest without signed URLs: nothing said.
    plain = write_manifest(tmp_path / "p.csv", [("p", files(box, "b.jpg"))])
    other = tmp_path / "o.db"
    assert "signed URLs" not in invoke("load", str(plain), *LOAD, "--ledger", str(other)).output
    # `run` loading a manifest says the same before it sends.
    run_ledger = tmp_path / "r.db"
    run = invoke(
        "run", str(manifest), *LOAD, "--ledger", str(run_ledger), "--base-url", box.base_url, "--api-key", box.api_key
    )
    assert "signed URLs: 2 in pending rows; 1 expire before" in run.output
    json_ledger = tmp_path / "j.db"
    run = invoke(
        "run",
        str(manifest),
        *LOAD,
        "--ledger",
        str(json_ledger),
        "--base-url",
        box.base_url,
        "--api-key",
        box.api_key,
        "--json",
        "--min-url-validity",
        "1d",
    )
    summary = json.loads(run.stdout)
    assert (summary["signed_urls"]["urls"], summary["signed_urls"]["expiring"]) == (2, 1) and "counts" in summary


def test_judge_row_reads_each_expiry_once_and_keeps_the_first_problem(monkeypatch):
    """One parse per URL gives both the row's problem (first URL in order wins) and its earliest expiry."""
    import uploader.send.preflight as preflight
    from uploader.ledger import UrlVerdict

    now = datetime.now(UTC).replace(microsecond=0)
    calls: list[str] = []
    real = preflight.url_expiry
    monkeypatch.setattr(preflight, "url_expiry", lambda url: calls.append(url) or real(url))
    bad = UrlVerdict("https://h/x.jpg", "http_error", "HTTP 404", 404, None, None, now.replace(tzinfo=None))
    urls = ["https://h/x.jpg", _aws(now, 3600), _aws(now - timedelta(days=1), 7 * 86400)]
    problem, earliest = preflight.judge_row(urls, {bad.url: bad}, (now + timedelta(days=1)).replace(tzinfo=None))
    assert problem == ("url_http_error", "https://h/x.jpg: HTTP 404")  # the first URL's problem, not the expiry
    assert earliest == now + timedelta(hours=1)
    assert calls == urls  # each URL's expiry read once


def test_pending_pages_read_only_the_pending_rows_span(ledger, tmp_path):
    """Pages of pending rows, page size 2, with finished rows before, between and after them: every pending
    row once, in id order, on both engines; none at all once nothing is pending."""
    from tests.conftest import fake_manifest
    from uploader.ledger import pending_payloads, pending_signed_payloads
    from uploader.load import load_manifest

    signed = "?X-Amz-Credential=c&X-Amz-Signature=s"
    rows = [(f"ref-{i}", f"https://example.com/{i}.jpg{signed if i % 2 else ''}") for i in range(7)]
    load_manifest(ledger, fake_manifest(tmp_path, rows), "opts")
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE jobs SET status = 'succeeded' WHERE reference_id IN ('ref-0', 'ref-1', 'ref-3', 'ref-6')"
        )
    pages = [[ref for _, ref, _ in page] for page in pending_payloads(ledger.engine, page=2)]
    assert pages == [["ref-2", "ref-4"], ["ref-5"]]
    bodies = [body for page in pending_signed_payloads(ledger.engine, page=1) for body in page]
    assert len(bodies) == 1 and "5.jpg" in bodies[0]
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE jobs SET status = 'succeeded'")
    assert list(pending_payloads(ledger.engine)) == [] and list(pending_signed_payloads(ledger.engine)) == []


def test_the_log_file_has_a_line_per_url_checked_with_its_host_only(box, tmp_path):
    """`check --log-file`: one JSON line per distinct URL checked (event `check`: host, verdict, final HTTP
    status, latency), a URL shared by two rows once; never the URL's path or query (a signed URL's query is
    a credential)."""
    log = tmp_path / "check.jsonl"
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            ("ok1", files(box, "a.jpg", "sig=SECRET1")),
            ("ok2", files(box, "a.jpg", "sig=SECRET1")),
            ("gone", files(box, "b.jpg", "status=404&sig=SECRET2")),
        ],
    )
    result = invoke("check", str(manifest), *LOAD, "--ledger", str(tmp_path / "l.db"), "--log-file", str(log))
    assert result.exit_code == 3, result.output
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    host = box.base_url.split("://")[1]
    got = sorted((x["event"], x["host"], x["outcome"], x["http_status"], x["level"]) for x in lines)
    assert got == [("check", host, "http_error", 404, "info"), ("check", host, "ok", 206, "debug")], got
    assert "SECRET" not in text and "a.jpg" not in text and "b.jpg" not in text
