"""Adversarial tests of what a user looks at: `uploader status` (text, `-q`, `--json`), `uploader report` (the
HTML page), `uploader show`, the logs (`-v`, `--log-file`) and `uploader config`.

The truth is the ledger read with plain sqlite3; every figure a command prints is held against it, for ledgers in
every state (made with the ledger's own API, as a run records them, or by real runs over loopback HTTP against
tests/test_adversary_report_status_server.py, a job API whose answers carry hostile text), empty and one-row
ledgers, several projects and batches, a ledger of an older schema, one another process writes to meanwhile.
Hostile text (HTML, ANSI escapes, bidi overrides, line separators, NUL, very long strings, the API key in its
encoded forms) must reach neither the page as markup nor the terminal as control, and no secret may be shown.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import importlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner, Result
from test_adversary_report_status_server import BATCH, THROTTLED, Answer, HostileApi, refusal

from tests.conftest import migrate_sqlite
from uploader.cli.commands import cli
from uploader.ledger import adopt_jobs, block_rows
from uploader.ledger.ledger import Ledger
from uploader.ledger.ledger import Result as Outcome
from uploader.ledger.models import Status

#: A key whose percent-encoded and HTML-escaped forms differ from it (`<`, `&`, `"`, `/`, `+`, `=`, `%`).
KEY = 'sk-Adv<&"Key/+=%42-7f3a9c'
KEY_FORMS = (KEY, quote(KEY, safe=""), quote(KEY), html.escape(KEY), html.escape(KEY, quote=False), json.dumps(KEY))
STATES = [s.value for s in Status]
BATCH_B = "5d6e7f80-1a2b-4c3d-9e8f-0a1b2c3d4e5f"
#: Characters that drive a terminal or reorder or break what it shows: C0/C1 controls (ESC, NUL, CSI), bidi
#: embeddings, overrides and isolates, and the Unicode line and paragraph separators.
TERMINAL_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


# -- helpers ---------------------------------------------------------------------------------------------


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={"PLAYMENT_API_KEY": KEY, **(env or {})}, catch_exceptions=False)


def write_manifest(path: Path, refs: list[str], project_column: str | None = None) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["reference_id", "image_url", *(["project_id"] if project_column else [])])
        for i, ref in enumerate(refs):
            w.writerow([ref, f"https://cdn.example.com/{i}.jpg", *([project_column] if project_column else [])])
    return path


def load(ledger: Path, manifest: Path, project: str = "proj", batch: str = BATCH) -> None:
    args = ["load", str(manifest), "--project-id", project, "--work-flow-id", "wf", "--batch-id", batch]
    result = invoke(*args, "--ledger", str(ledger))
    assert result.exit_code == 0, result.output


def run_against(api: HostileApi, ledger: Path, manifest: Path | None, *extra: str) -> Result:
    args = ["run", *([str(manifest)] if manifest else []), "--project-id", "proj", "--work-flow-id", "wf"]
    return invoke(*args, "--batch-id", BATCH, "--ledger", str(ledger), "--base-url", api.base_url, *extra)


def write(ledger: Path, statement: str) -> None:
    """One committed write with plain sqlite3, as another process (a run recording results) makes it."""
    con = sqlite3.connect(ledger)
    try:
        con.execute(statement)
        con.commit()
    finally:
        con.close()


def sql(ledger: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of a query over the ledger, read with plain sqlite3 (not through the code under test)."""
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return list(con.execute(query, params))
    finally:
        con.close()


def truth_counts(ledger: Path, where: str = "1 = 1") -> dict[str, int]:
    found = dict(sql(ledger, f"SELECT status, COUNT(*) FROM jobs WHERE {where} GROUP BY status"))
    return {s: int(found.get(s, 0)) for s in STATES} | {k: int(v) for k, v in found.items() if k not in STATES}


def settle(ledger: Path, outcomes: dict[str, dict[str, Any]]) -> None:
    """Claim every pending row as a run does, record `outcomes` {reference_id: Result fields} (what a run
    records for that answer) and give the other rows back."""
    led = Ledger.open(str(ledger))
    try:
        owner = led.register_worker()
        claimed = {c.reference_id: c for c in led.claim(owner, 10_000, 60)}
        led.record([Outcome(claimed[ref].id, claimed[ref].lease_token, **kw) for ref, kw in outcomes.items()])
        led.release(owner)
        led.stop_worker(owner)
    finally:
        led.close()


def status_json(ledger: Path) -> dict[str, Any]:
    result = invoke("status", "--ledger", str(ledger), "--json")
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def report_page(ledger: Path, out: Path) -> str:
    result = invoke("report", "--ledger", str(ledger), "-o", str(out))
    assert result.exit_code == 0, result.output
    return out.read_text(encoding="utf-8")


def number(text: str) -> int:
    return int(text.replace(",", ""))


#: Elements with no end tag.
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """The report as a browser's parser reads it: every start tag with its attributes, the text under each
    <h2>, each table's rows as {data-label: cell text} under the heading before it, the <title> text."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.title = ""
        self._heading: str | None = None
        self._in: list[str] = []
        self._row: dict[str, str] | None = None
        self._cell: tuple[str, list[str]] | None = None
        self._text: list[str] = []
        self.feed(source)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        if tag not in VOID:
            self._in.append(tag)
        if tag == "h2":
            self._text = []
        elif tag == "table" and self._heading is not None:
            self.tables.setdefault(self._heading, [])
        elif tag == "tr":
            self._row = {}
        elif tag in ("td", "th") and self._row is not None:
            self._cell = (dict(attrs).get("data-label") or "", [])

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()
        if tag == "h2":
            self._heading = "".join(self._text).strip()
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row[self._cell[0]] = "".join(self._cell[1])
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row and self._heading is not None and "" not in self._row:
                self.tables.setdefault(self._heading, []).append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._in[-2:] == ["head", "title"]:
            self.title += data
        if self._in and "h2" in self._in:
            self._text.append(data)
        if self._cell is not None:
            self._cell[1].append(data)

    def table(self, heading: str) -> list[dict[str, str]]:
        """The rows of the first table whose heading starts with `heading`."""
        return next(rows for h, rows in self.tables.items() if h.startswith(heading))


def cards(page: str) -> dict[str, int]:
    return {
        s: number(n)
        for s, n in re.findall(r'data-state="([^"]+)"><span class="muted">[^<]+</span><b>([\d,]+)</b>', page)
    }


def page_total(page: str) -> int:
    found = re.search(r"<b data-total>([\d,]+)</b>", page)
    assert found is not None, page[:2000]
    return number(found.group(1))


def every_state_ledger(tmp_path: Path) -> Path:
    """Rows in every state a run, a lookup, a preflight and an adoption leave, in two projects and three
    batches (one with no batch_id): pending (never sent; waiting to retry after FS_0000; throttled), in flight,
    succeeded (created, recovered, adopted, and a job made elsewhere), failed (three codes), uncertain, conflict,
    blocked."""
    ledger = tmp_path / "every.db"
    load(ledger, write_manifest(tmp_path / "a.csv", [f"a{i}" for i in range(14)]), "proj", BATCH)
    load(ledger, write_manifest(tmp_path / "b.csv", [f"b{i}" for i in range(6)]), "other", BATCH_B)
    nobatch = write_manifest(tmp_path / "c.csv", ["c0", "c1"])
    result = invoke("load", str(nobatch), "--project-id", "other", "--work-flow-id", "wf", "--ledger", str(ledger))
    assert result.exit_code == 0, result.output
    led = Ledger.open(str(ledger))
    try:
        ids = {r: i for r, i in sql(ledger, "SELECT reference_id, id FROM jobs")}
        assert block_rows(led.engine, [(ids["a13"], "url_http_error", "https://cdn.example.com/13.jpg: HTTP 403")])
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        found = [("a12", "JOB-ADOPTED", "created"), ("made-elsewhere", "JOB-ELSEWHERE", "completed")]
        adoption = adopt_jobs(led.engine, "proj", BATCH, found, now)
        assert (adoption.adopted, adoption.added) == (1, 1), adoption
    finally:
        led.close()
    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=1)
    settle(
        ledger,
        {
            "a0": {"status": Status.SUCCEEDED, "job_id": "J0", "origin": "created", "may_have_created": True},
            "a1": {"status": Status.SUCCEEDED, "job_id": "J1", "origin": "created", "may_have_created": True},
            "a2": {"status": Status.SUCCEEDED, "job_id": "J2", "recovered": True, "origin": "recovered"},
            "a3": {"status": Status.FAILED, "error_code": "FS_0003", "error_message": "Invalid data passed"},
            "a4": {"status": Status.FAILED, "error_code": "FS_0003", "error_message": "Invalid data passed"},
            "a5": {"status": Status.FAILED, "error_code": "FS_0007", "error_message": "attachment not accessible"},
            "b0": {"status": Status.FAILED, "error_code": "GE_0001", "error_message": "invalid parameter"},
            "a6": {"status": Status.UNCERTAIN, "error_code": "timeout", "may_have_created": True},
            "b1": {"status": Status.UNCERTAIN, "error_code": "FS_0001", "error_message": "reference_id used"},
            "a7": {
                "status": Status.CONFLICT,
                "job_id": "J7",
                "origin": "pre-existing",
                "error_code": "created_elsewhere",
                "error_message": "FS_0001 for a reference_id this ledger never sent",
            },
            "a8": {
                "status": Status.PENDING,
                "error_code": "FS_0000",
                "error_message": "internal error",
                "not_before": later,
                "may_have_created": True,
            },
            "b2": {"status": Status.PENDING, "error_code": "http_429", "http_status": 429, "refund_attempt": True},
            "c0": {"status": Status.SUCCEEDED, "job_id": "JC0", "origin": "created", "may_have_created": True},
        },
    )
    led = Ledger.open(str(ledger))
    try:  # one row stays in flight: a run holds it
        assert len(led.claim(led.register_worker(), 1, 600)) == 1
    finally:
        led.close()
    truth = truth_counts(ledger)
    assert all(truth[s] for s in STATES), truth
    return ledger


def code_table(rows: list[dict[str, str]]) -> dict[tuple[str, str], int]:
    return {(r["Code"], r["State"]): number(r["Rows"]) for r in rows}


# -- the counts: status ------------------------------------------------------------------------------------


def test_status_json_text_and_quiet_give_the_ledgers_counts_in_every_state(tmp_path: Path) -> None:
    """`status --json`: counts, total, per project, error codes (failed, uncertain, conflict and waiting rows),
    origins and the oldest pending row equal a plain GROUP BY; the text lists the same counts, and `-q` too."""
    ledger = every_state_ledger(tmp_path)
    truth = truth_counts(ledger)
    doc = status_json(ledger)
    assert doc["counts"] == truth and doc["total"] == sum(truth.values())
    projects = {
        p: truth_counts(ledger, f"project_id = '{p}'") for (p,) in sql(ledger, "SELECT DISTINCT project_id FROM jobs")
    }
    assert doc["projects"] == projects
    codes = dict(
        sql(
            ledger,
            "SELECT error_code, COUNT(*) FROM jobs WHERE status IN ('failed', 'uncertain', 'conflict', 'pending') "
            "AND error_code IS NOT NULL GROUP BY error_code",
        )
    )
    assert doc["error_codes"] == codes
    assert {e["code"]: e["rows"] for e in doc["errors"]} == codes
    origins = dict(
        sql(ledger, "SELECT origin, COUNT(*) FROM jobs WHERE status IN ('succeeded', 'conflict') GROUP BY origin")
    )
    assert doc["origins"] == origins and origins.get("adopted") == 2
    (oldest,) = sql(ledger, "SELECT MIN(created_at) FROM jobs WHERE status = 'pending'")[0]
    assert doc["oldest_pending"] == dt.datetime.fromisoformat(oldest).isoformat() + "Z"

    text = invoke("status", "--ledger", str(ledger)).stdout
    shown = {m[0]: int(m[1]) for m in re.findall(r"^  (\w+) +(\d+)$", text, re.M) if m[0] in STATES}
    assert shown == truth and text.startswith(f"{sum(truth.values())} jobs\n"), text
    for project, counts in projects.items():
        assert f"  {project}: {sum(counts.values())} jobs (" in text, text
    quiet = invoke("status", "--ledger", str(ledger), "-q").stdout.strip()
    assert quiet == f"{sum(truth.values())} jobs: " + ", ".join(f"{n} {s}" for s, n in truth.items() if n), quiet


def test_status_of_an_empty_and_of_a_one_row_ledger(tmp_path: Path) -> None:
    """An empty ledger: 0 of every state, nothing pending, no activity, exit 0. One row that failed: exactly
    that, its code, message and reference_id."""
    empty = tmp_path / "empty.db"
    Ledger.open(str(empty)).close()
    doc = status_json(empty)
    assert doc["total"] == 0 and doc["counts"] == dict.fromkeys(STATES, 0)
    assert doc["oldest_pending"] is None and doc["last_activity"] is None and doc["errors"] == []
    text = invoke("status", "--ledger", str(empty))
    assert text.exit_code == 0 and text.stdout.startswith("0 jobs\n"), text.output

    one = tmp_path / "one.db"
    load(one, write_manifest(tmp_path / "m.csv", ["only"]))
    settle(one, {"only": {"status": Status.FAILED, "error_code": "FS_0003", "error_message": "Invalid data passed"}})
    doc = status_json(one)
    assert doc["total"] == 1 and doc["counts"] == dict.fromkeys(STATES, 0) | {"failed": 1}
    assert [(e["code"], e["rows"], e["message"], e["reference_id"]) for e in doc["errors"]] == [
        ("FS_0003", 1, "Invalid data passed", "only")
    ]
    assert "FS_0003 × 1: Invalid data passed (e.g. only)" in invoke("status", "--ledger", str(one)).stdout


def test_status_counts_are_one_snapshot_while_a_run_records_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`uploader status` reads its counts, error codes and error entries in one snapshot (uploader/ledger/
    queries.py `LedgerQueries.status`, one `read_snapshot`), as `uploader report` does: a run that records
    results meanwhile — the very moment a user runs `status` to watch a run — cannot make one document
    contradict itself (here 5 rows fail while `status` reads: it shows them all pending or all failed, never
    `failed: 0, pending: 5` beside `error_codes: {FS_0003: 5}`)."""
    ledger = tmp_path / "l.db"
    load(ledger, write_manifest(tmp_path / "m.csv", [f"r{i}" for i in range(5)]))
    from uploader.ledger.queries import LedgerQueries

    counted = LedgerQueries.counts

    def counts_then_a_run_records(self: LedgerQueries) -> dict[str, int]:
        out = counted(self)
        write(  # another process: a run records its five refusals
            ledger,
            "UPDATE jobs SET status = 'failed', error_code = 'FS_0003', error_message = 'Invalid data passed', "
            "attempts = 1 WHERE status = 'pending'",
        )
        return out

    monkeypatch.setattr(LedgerQueries, "counts", counts_then_a_run_records)
    doc = status_json(ledger)
    failed_codes = sum(e["rows"] for e in doc["errors"] if not e["waiting"])
    stated = doc["counts"]["failed"] + doc["counts"]["uncertain"] + doc["counts"]["conflict"]
    assert failed_codes <= stated, (doc["counts"], doc["error_codes"], doc["errors"])
    assert sum(doc["error_codes"].values()) <= doc["total"] - doc["counts"]["succeeded"], doc


# -- the counts: report ------------------------------------------------------------------------------------


def test_report_figures_equal_the_ledgers_rows_in_every_state(tmp_path: Path) -> None:
    """The page's total, state cards, per-project and per-batch tables, error table (rows per code and state)
    and the attempts chart (one bar per number of attempts) all equal plain GROUP BYs over the rows."""
    ledger = every_state_ledger(tmp_path)
    truth = truth_counts(ledger)
    source = report_page(ledger, tmp_path / "r.html")
    page = Page(source)
    assert page_total(source) == sum(truth.values()) and cards(source) == truth
    per_project = {r["Project"]: number(r["Jobs"]) for r in page.table("Per project")}
    assert per_project == dict(sql(ledger, "SELECT project_id, COUNT(*) FROM jobs GROUP BY project_id"))
    batch_rows = sql(ledger, "SELECT project_id, batch_id, COUNT(*) FROM jobs GROUP BY project_id, batch_id")
    per_batch = sorted(number(r["Jobs"]) for r in page.table("Per batch"))
    assert per_batch == sorted(n for _, _, n in batch_rows) and len(batch_rows) == 3, (
        page.table("Per batch"),
        batch_rows,
    )
    errors = sql(
        ledger,
        "SELECT error_code, status, COUNT(*) FROM jobs WHERE error_code IS NOT NULL AND status <> 'succeeded' "
        "GROUP BY error_code, status",
    )
    assert code_table(page.table("Errors")) == {(c, s): n for c, s, n in errors}
    attempts = dict(sql(ledger, "SELECT attempts, COUNT(*) FROM jobs GROUP BY attempts"))
    bars = {int(a): number(n) for a, n in re.findall(r"<title>(\d+): ([\d,]+) rows</title>", source)}
    assert bars == attempts
    assert f"<h2>Uncertain rows ({truth['uncertain']})</h2>" in source
    assert f"<h2>Blocked rows ({truth['blocked']})</h2>" in source
    listed = {r["reference_id"] for r in page.table("Uncertain rows")}
    assert listed == {r for (r,) in sql(ledger, "SELECT reference_id FROM jobs WHERE status = 'uncertain'")}


def test_report_of_an_empty_and_of_a_one_row_ledger(tmp_path: Path) -> None:
    """An empty ledger: 0 jobs, every card 0, exit 0, and `--json` says 0; one row: 1 job, its state 1."""
    empty = tmp_path / "empty.db"
    Ledger.open(str(empty)).close()
    out = tmp_path / "e.html"
    result = invoke("report", "--ledger", str(empty), "-o", str(out), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["total"] == 0, result.output
    source = out.read_text()
    assert page_total(source) == 0 and cards(source) == dict.fromkeys(STATES, 0)

    one = tmp_path / "one.db"
    load(one, write_manifest(tmp_path / "m.csv", ["only"]))
    settle(one, {"only": {"status": Status.SUCCEEDED, "job_id": "J", "origin": "created"}})
    source = report_page(one, tmp_path / "o.html")
    assert page_total(source) == 1 and cards(source) == dict.fromkeys(STATES, 0) | {"succeeded": 1}
    assert "succeeded: 1 (100.0%)" in source


def test_report_lists_every_error_code_or_says_how_many_it_left_out(tmp_path: Path) -> None:
    """36 failed rows, each with its own error code (an API that puts an id into its codes, or a long tail of
    rare codes). `status` lists all 36; the report's Errors table lists the LISTED_CODES (30) with the most rows
    and says how many more codes (and rows) it left out and that `uploader status` lists them all, so a reader
    of the page does not take the table for every error there is."""
    ledger = tmp_path / "l.db"
    load(ledger, write_manifest(tmp_path / "m.csv", [f"r{i:02d}" for i in range(36)]))
    settle(ledger, {f"r{i:02d}": {"status": Status.FAILED, "error_code": f"E_{i:02d}"} for i in range(36)})
    status_text = invoke("status", "--ledger", str(ledger)).stdout
    assert sum(f"E_{i:02d} × 1" in status_text for i in range(36)) == 36
    source = report_page(ledger, tmp_path / "r.html")
    shown = code_table(Page(source).table("Errors"))
    left_out = 36 - len(shown)
    assert left_out == 0 or re.search(rf"\b{left_out}\b[^<]*(other|more)[^<]*code", source), (len(shown), left_out)


def test_report_names_the_ledger_file_as_it_is_on_disk(tmp_path: Path) -> None:
    """Fixed: the report names its ledger (the heading, the <title>, "Ledger" under "How this report was
    made") by SQLAlchemy's rendering of its URL (uploader/cli/commands.py `report` passes `led.url`;
    uploader/ledger/ledger.py `Ledger.url`: `engine.url.render_as_string(hide_password=True)`), which
    percent-encodes the path: a ledger in `Téléchargements/run (1)/jobs.db` is shown as
    `…/T%C3%A9l%C3%A9chargements/run %281%29/jobs.db`, a path that exists nowhere. A reader who wants to open
    that ledger (or the colleague the page is mailed to) cannot copy it."""
    folder = tmp_path / "Téléchargements" / "run (1)"
    folder.mkdir(parents=True)
    ledger = folder / "jobs.db"
    load(ledger, write_manifest(tmp_path / "m.csv", ["a"]))
    source = report_page(ledger, tmp_path / "r.html")
    shown = re.search(r"<dt>Ledger</dt><dd><code>([^<]*)</code>", source)
    assert shown is not None
    assert html.unescape(shown.group(1)) in (str(ledger), f"sqlite:///{ledger}"), shown.group(1)


def test_report_percentages_add_up_to_100(tmp_path: Path) -> None:
    """The page's share bar labels each state with shares that add up to 100% (uploader/cli/report.py
    `percentages`, largest remainder rounding): a ledger of one pending, one succeeded and one failed row shows
    33.4% + 33.3% + 33.3%, not 33.3% three times (99.9%)."""
    ledger = tmp_path / "l.db"
    load(ledger, write_manifest(tmp_path / "m.csv", ["a", "b", "c"]))
    settle(
        ledger,
        {
            "a": {"status": Status.SUCCEEDED, "job_id": "JA", "origin": "created"},
            "b": {"status": Status.FAILED, "error_code": "FS_0003"},
        },
    )
    source = report_page(ledger, tmp_path / "r.html")
    bar = source[source.index("Share of the jobs by state") :]
    bar = bar[: bar.index("</svg>")]
    shares = [float(p) for p in re.findall(r"\(([\d.]+)%\)</title>", bar)]
    assert len(shares) == 3 and round(sum(shares), 1) == 100.0, shares


@pytest.mark.slow
def test_report_on_a_ledger_a_run_is_writing_to_is_one_consistent_snapshot(tmp_path: Path) -> None:
    """While `uploader run` (another process) records answers, every report written meanwhile is consistent
    in itself (cards add up to the total, per project and attempts too) and the last one, after the run,
    equals the rows."""
    ledger = tmp_path / "l.db"
    manifest = write_manifest(tmp_path / "m.csv", [f"r{i:03d}" for i in range(120)])
    script: dict[str, list[Answer | None]] = {f"r{i:03d}": [refusal("FS_0003", "bad")] for i in range(0, 120, 7)}
    with HostileApi(KEY, script) as api:
        api.delay = 0.02
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
        args = [sys.executable, "-m", "uploader", "run", str(manifest), "--project-id", "proj", "--work-flow-id"]
        args += ["wf", "--batch-id", BATCH, "--ledger", str(ledger), "--base-url", api.base_url, "--concurrency", "2"]
        proc = subprocess.Popen(
            args, env={**env, "PLAYMENT_API_KEY": KEY}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            pages = 0
            while proc.poll() is None and pages < 12:
                if not ledger.exists() or not api.count("POST", "create"):
                    time.sleep(0.05)
                    continue
                out = tmp_path / f"r{pages}.html"
                result = invoke("report", "--ledger", str(ledger), "-o", str(out))
                assert result.exit_code == 0, result.output
                source = out.read_text()
                total = page_total(source)
                assert sum(cards(source).values()) == total, cards(source)
                page = Page(source)
                assert sum(number(r["Jobs"]) for r in page.table("Per project")) == total
                bars = re.findall(r"<title>\d+: ([\d,]+) rows</title>", source)
                assert sum(number(n) for n in bars) == total
                pages += 1
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 3 and pages >= 2, (proc.returncode, pages, err[-2000:])
    source = report_page(ledger, tmp_path / "final.html")
    assert cards(source) == truth_counts(ledger) and truth_counts(ledger)["failed"] == len(script)


# -- older ledgers and throughput --------------------------------------------------------------------------


#: (reference_id, status, job_id, attempts, recovered, error_code, http_status, minute of its last answer)
OLD_ROWS = [
    ("o-pend", "pending", None, 0, 0, None, None, 0),
    ("o-ok1", "succeeded", "J1", 1, 0, None, 200, 1),
    ("o-ok2", "succeeded", "J2", 3, 0, None, 200, 2),
    ("o-rec", "succeeded", "J3", 2, 1, "FS_0001", 400, 2),
    ("o-fail", "failed", None, 1, 0, "FS_0003", 400, 3),
    ("o-thr", "pending", None, 1, 0, "http_429", 429, 3),
    ("o-unc", "uncertain", None, 8, 0, "timeout", None, 4),
]


def test_report_and_status_of_a_ledger_made_by_the_first_schema(tmp_path: Path) -> None:
    """A ledger of revision 0001 (the first uploader): `status --json` and the report (which migrate it) give
    its counts; the report's throughput, derived from the rows (no activity kept), says so, and counts each
    row's attempts as requests, its HTTP 429 as throttled, and created jobs (succeeded, not recovered)."""
    path = tmp_path / "old.db"
    migrate_sqlite(path, "0001")
    t0 = dt.datetime(2026, 3, 1, 10, 0)
    con = sqlite3.connect(path)
    try:
        con.execute(
            "INSERT INTO manifests (id, path, size, sha256, options_hash, row_count, loaded_at) "
            "VALUES (1, 'old.csv', 10, ?, ?, ?, ?)",
            ("a" * 64, "b" * 64, len(OLD_ROWS), str(t0)),
        )
        for line, (ref, status, job, attempts, recovered, code, http, minute) in enumerate(OLD_ROWS, start=2):
            con.execute(
                "INSERT INTO jobs (project_id, reference_id, work_flow_id, batch_id, body, body_hash, status, job_id, "
                "recovered, error_code, error_message, http_status, attempts, lease_token, created_at, updated_at, "
                "manifest_id, manifest_line) "
                "VALUES ('proj', ?, 'wf', ?, '{}', 'h', ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, 1, ?)",
                (ref, BATCH, status, job, recovered, code, code and "old message", http, attempts, str(t0),
                 str(t0 + dt.timedelta(minutes=minute)), line),
            )  # fmt: skip
        con.commit()
    finally:
        con.close()
    truth = dict.fromkeys(STATES, 0) | {"pending": 2, "succeeded": 3, "failed": 1, "uncertain": 1}
    assert status_json(path)["counts"] == truth == truth_counts(path)
    source = report_page(path, tmp_path / "r.html")
    assert cards(source) == truth and "derived from each row" in source
    sent = [r for r in OLD_ROWS if r[3] > 0 or r[6] is not None]
    assert f"<b data-requests>{sum(r[3] for r in sent)}</b>" in source
    assert "<b data-created>2</b>" in source and "<b data-throttled>1</b>" in source
    assert "First row loaded</dt><dd>2026-03-01 10:00:00 UTC" in source
    assert "Last activity</dt><dd>2026-03-01 10:04:00 UTC" in source


def test_report_throughput_keeps_the_jobs_created_before_an_upgrade(tmp_path: Path) -> None:
    """FINDING: a ledger whose first runs were made by an uploader that kept no activity (schema 0008), then
    resumed by this one: the report's throughput reads only the activity table once it has any row
    (uploader/ledger/report.py `_throughput`: `if start is not None` → activity only), so it says "3 jobs
    created" and "as the runs counted them: every request, every 429 answer" while the ledger holds 9 jobs
    created by its runs; the jobs made before the upgrade vanish from the chart and the totals. A user who
    upgrades mid-upload reads a third of the work."""
    ledger = tmp_path / "l.db"
    with HostileApi(KEY) as api:
        first = run_against(api, ledger, write_manifest(tmp_path / "first.csv", [f"f{i}" for i in range(6)]), "-q")
        assert first.exit_code == 0, first.output
        con = sqlite3.connect(ledger)
        con.execute("DELETE FROM activity")  # what an uploader of schema 0008 left: no counts per minute
        con.commit()
        con.close()
        migrate_sqlite(ledger, "0008", down=True)
        assert sql(ledger, "SELECT version_num FROM alembic_version") == [("0008",)]
        second = run_against(api, ledger, write_manifest(tmp_path / "second.csv", [f"s{i}" for i in range(3)]), "-q")
        assert second.exit_code == 0, second.output
        requests = api.count("POST", "create")
    created = sql(ledger, "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded' AND origin = 'created'")[0][0]
    assert created == 9 and requests == 9
    source = report_page(ledger, tmp_path / "r.html")
    shown = re.search(r"<b data-created>([\d,]+)</b>", source)
    asked = re.search(r"<b data-requests>([\d,]+)</b>", source)
    assert shown is not None and asked is not None
    assert (number(shown.group(1)), number(asked.group(1))) == (created, requests), (shown.group(0), asked.group(0))


def test_times_are_utc_whatever_the_local_time_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under TZ=Pacific/Chatham (+13:45) the status's times and the report's are the ledger's UTC times, and the
    report's own time is now in UTC."""
    ledger = tmp_path / "l.db"
    load(ledger, write_manifest(tmp_path / "m.csv", ["a", "b"]))
    settle(ledger, {"a": {"status": Status.SUCCEEDED, "job_id": "JA", "origin": "created"}})
    monkeypatch.setenv("TZ", "Pacific/Chatham")
    time.tzset()
    try:
        doc = status_json(ledger)
        source = report_page(ledger, tmp_path / "r.html")
    finally:
        monkeypatch.undo()
        time.tzset()
    last, oldest = sql(
        ledger, "SELECT MAX(updated_at), MIN(CASE WHEN status = 'pending' THEN created_at END) FROM jobs"
    )[0]
    assert doc["last_activity"] == dt.datetime.fromisoformat(last).isoformat() + "Z"
    assert doc["oldest_pending"] == dt.datetime.fromisoformat(oldest).isoformat() + "Z"
    assert f"Last activity</dt><dd>{dt.datetime.fromisoformat(last):%Y-%m-%d %H:%M:%S} UTC" in source
    made = re.search(r"Report made</dt><dd>([\d-]+ [\d:]+) UTC", source)
    assert made is not None
    age = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.datetime.fromisoformat(made.group(1))
    assert abs(age.total_seconds()) < 120, made.group(1)


# -- platform statuses after sync ---------------------------------------------------------------------------


def test_status_and_report_give_the_platform_statuses_sync_recorded(tmp_path: Path) -> None:
    """After `sync`, `status --json` (platform: tracked, final, by_status), its text line, and the report's
    "On the platform" chart and final count equal the rows' platform statuses, a hostile status word included
    (kept verbatim, escaped in the page)."""
    ledger = tmp_path / "l.db"
    hostile = "<img src=x onerror=console.error('XSS-platform')>"
    words = {"p0": "completed", "p1": "completed", "p2": "rejected", "p3": hostile, "p4": "in_progress"}
    with HostileApi(KEY) as api:
        assert run_against(api, ledger, write_manifest(tmp_path / "m.csv", [*words, "p5"]), "-q").exit_code == 0
        api.platform.update(words)
        synced = invoke("sync", "--ledger", str(ledger), "--base-url", api.base_url, "--json")
        assert synced.exit_code == 0, synced.output
    truth = dict(sql(ledger, "SELECT platform_status, COUNT(*) FROM jobs WHERE job_id IS NOT NULL GROUP BY 1"))
    assert truth == {"completed": 2, "rejected": 1, hostile: 1, "in_progress": 1, "created": 1}
    platform = status_json(ledger)["platform"]
    assert platform["by_status"] == truth and platform["tracked"] == 6 and platform["final"] == 3
    text = invoke("status", "--ledger", str(ledger)).stdout
    line = next(x for x in text.splitlines() if x.startswith("on the platform"))
    assert all(f"{n} {w}" in line for w, n in truth.items()), line
    source = report_page(ledger, tmp_path / "r.html")
    chart = source[source.index("Jobs by platform status") :]
    chart = chart[: chart.index("</svg>")]
    bars = {html.unescape(w): number(n) for w, n in re.findall(r"<title>([^<]*): ([\d,]+) jobs</title>", chart)}
    assert bars == truth
    assert "<b data-final>3</b>" in source and "<img src=x" not in source


# -- hostile text: the page ---------------------------------------------------------------------------------

#: (error code, message) a hostile API answers; each is recorded and shown.
HOSTILE = [
    ("<script>console.error('XSS-code')</script>", "</script><script>console.error('XSS-msg')</script>"),
    ("\"><img src=x onerror=console.error('XSS-attr')>", "{{7*7}} ${7*7} `id` <!-- -->]]>"),
    ("X_ANSI", "\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b[31mPWNED\x1b[0m \x9b2J"),
    ("X_NUL", "nul\x00here"),
    ("X_SEP", "line one\u2028line two\u2029paragraph\r\nCRLF"),
    ("X_BIDI", "invoice\u202egpj.exe\u202c and \u2067isolate\u2069"),
    ("X_KEY", f"bad key {KEY} or {quote(KEY, safe='')} or {html.escape(KEY)}"),
    ("X_LONG", "L" * 5000),
]
HOSTILE_REFS = ["h<b>1</b>", "h\"'><svg onload=console.error('XSS-ref')>", "h{{ref}}`", "h\u202eref", "h\u2028ref"]


def hostile_ledger(tmp_path: Path, log: Path | None = None) -> tuple[Path, Result]:
    """A run against an API that refuses r0…r7 with the HOSTILE codes and messages (details too), throttles
    one row twice, creates the others; then `adopt` takes jobs the listing names with hostile reference_ids."""
    ledger = tmp_path / "hostile.db"
    refs = [f"r{i}" for i in range(len(HOSTILE))] + [*HOSTILE_REFS, "ok", "thr"]
    script: dict[str, list[Answer | None]] = {
        f"r{i}": [refusal(c, m, [{"validation_code": m, "meta_data": {"fields": [c, KEY]}}])]
        for i, (c, m) in enumerate(HOSTILE)
    }
    script["thr"] = [THROTTLED, THROTTLED, None]
    with HostileApi(KEY, script) as api:
        extra = ["--log-file", str(log)] if log else []
        result = run_against(api, ledger, write_manifest(tmp_path / "m.csv", refs), "-vv", *extra)
        assert result.exit_code == 3, result.output
        api.elsewhere = [(f"adopted<i>{i}</i>\u202e", f"JOB-ELSE-{i}", "completed") for i in range(2)]
        adopted = invoke(
            "adopt", "--project-id", "proj", "--batch-id", BATCH, "--ledger", str(ledger), "--base-url", api.base_url
        )
        assert adopted.exit_code == 0, adopted.output
    return ledger, result


ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "b", "i", "br", "span", "div", "code",
    "table", "thead", "tbody", "tr", "th", "td", "svg", "g", "rect", "line", "text", "figure", "figcaption", "dl",
    "dt", "dd",
}  # fmt: skip


def test_report_escapes_hostile_text_from_the_api_the_manifest_and_the_ledgers_name(tmp_path: Path) -> None:
    """Error codes, messages, reference_ids (the manifest's and ones an adopted listing named), a project id,
    a batch name and the ledger's file name that hold markup: the page parses to the report's own elements
    only (no script, img, svg onload, no `on…` attribute), its title is intact, each hostile text shows as
    text, and no form of the API key is anywhere."""
    ledger, _ = hostile_ledger(tmp_path)
    named = tmp_path / "<img src=x onerror=console.error('XSS-file')>.db"
    named.write_bytes(ledger.read_bytes())
    project = "<b>P<i>&amp;{{p}}\"'"
    load(named, write_manifest(tmp_path / "p.csv", ["in-other-project"], project_column=project), project)
    con = sqlite3.connect(named)
    con.execute(
        "INSERT INTO batches (project_id, name, batch_id, created_at, auto) "
        "VALUES ('proj', '</title><script>console.error(''XSS-batch'')</script>', ?, '2026-01-01 00:00:00', 0)",
        (BATCH,),
    )
    con.commit()
    con.close()
    source = report_page(named, tmp_path / "r.html")
    page = Page(source)
    tags = {t for t, _ in page.tags}
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS
    handlers = [(t, a) for t, attrs in page.tags for a, _ in attrs if a.lower().startswith("on")]
    assert handlers == [], handlers
    assert page.title.startswith("Upload report — ") and page.title.endswith(".db"), page.title
    errors = code_table(page.table("Errors"))
    for code, _ in HOSTILE:
        assert (code, "failed") in errors, (code, list(errors))
    assert project in {r["Project"] for r in page.table("Per project")}
    assert "</title><script>console.error('XSS-batch')</script>" in {
        r["Batch"][: -len(BATCH)] for r in page.table("Per batch")
    }
    for form in KEY_FORMS:
        assert form not in source, form


@pytest.mark.slow
def test_report_with_hostile_text_runs_nothing_in_a_real_browser(tmp_path: Path) -> None:
    """Headless Chromium (tests/test_report.py's helpers) opens the page of the hostile ledger: no console
    message (every payload calls console.error), and the DOM holds no element the ledger's text injected."""
    helpers = importlib.import_module("test_report")
    flags = helpers._browser_flags(tmp_path)
    ledger, _ = hostile_ledger(tmp_path)
    out = tmp_path / "r.html"
    report_page(ledger, out)
    dom, console = helpers._load(flags, out)
    assert not console, console
    assert "<script" not in dom.lower() and "<img" not in dom.lower() and "onload=" not in dom.lower(), dom[:3000]
    assert "XSS-code" in dom and "XSS-msg" in dom  # shown as text


def test_report_stays_small_when_the_api_answers_a_huge_message(tmp_path: Path) -> None:
    """The report cuts each error code's API message as `status` does (one line of at most MESSAGE_CHARS,
    uploader/cli/output.py): an API answer may be 1 MiB (client max_body_bytes), and one refusal with a
    900,000 character message still gives a page of a few KB — the README promises a page that "stays small",
    mails as one file and reads on a phone."""
    ledger = tmp_path / "l.db"
    script: dict[str, list[Answer | None]] = {"big": [refusal("FS_0003", "Invalid data: " + "x" * 900_000)]}
    with HostileApi(KEY, script) as api:
        result = run_against(api, ledger, write_manifest(tmp_path / "m.csv", ["big", "ok"]), "-q")
        assert result.exit_code == 3, result.output
    (stored,) = sql(ledger, "SELECT LENGTH(error_message) FROM jobs WHERE reference_id = 'big'")[0]
    assert stored > 900_000
    status_line = next(x for x in invoke("status", "--ledger", str(ledger)).stdout.splitlines() if "FS_0003" in x)
    assert len(status_line) < 200
    source = report_page(ledger, tmp_path / "r.html")
    assert len(source.encode()) < 100_000, len(source.encode())


# -- hostile text: the terminal -----------------------------------------------------------------------------


def test_no_escape_sequence_or_control_from_the_api_reaches_the_terminal(tmp_path: Path) -> None:
    """ESC sequences (clear screen, set title, CSI as C1), BEL, NUL and CR/LF in the API's codes, messages and
    details: the run's -vv lines, `status`, `show` and `sync` write none of them (C0 and C1 controls other
    than the lines' own newlines)."""
    ledger, run = hostile_ledger(tmp_path)
    outputs = {"run -vv": run.stdout + run.stderr}
    outputs["status"] = invoke("status", "--ledger", str(ledger)).output
    for i in range(len(HOSTILE)):
        outputs[f"show r{i}"] = invoke("show", f"r{i}", "--ledger", str(ledger)).output
    for name, text in outputs.items():
        controls = re.findall(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text)
        assert controls == [], (name, controls)


def test_status_and_show_print_no_bidi_override_or_line_separator_from_the_api(tmp_path: Path) -> None:
    """Fixed: the API's text is made printable for the terminal by replacing C0/C1 controls only
    (uploader/api/body.py `printable`, `_UNPRINTABLE = [\\x00-\\x1f\\x7f-\\x9f…]`); Unicode bidi overrides
    and isolates (U+202A to U+202E, U+2066 to U+2069) and the line/paragraph separators U+2028/U+2029 pass, and
    `status` (uploader/cli/output.py `error_line`, which only folds whitespace) and `show` (`print_row`, the
    message and details verbatim) print them, as they print reference_ids an adopted listing named. A
    refusal saying "invoice\\u202egpj.exe" shows as "invoiceexe.jpg" in a bidi terminal (the Trojan Source
    trick, CVE-2021-42574); U+2028 breaks `show`'s one line per field in terminals and pagers that honour it."""
    ledger, _ = hostile_ledger(tmp_path)
    bidi = next(i for i, (c, _) in enumerate(HOSTILE) if c == "X_BIDI")
    sep = next(i for i, (c, _) in enumerate(HOSTILE) if c == "X_SEP")
    outputs = {
        "status": invoke("status", "--ledger", str(ledger)).stdout,
        "show bidi": invoke("show", f"r{bidi}", "--ledger", str(ledger)).stdout,
        "show separators": invoke("show", f"r{sep}", "--ledger", str(ledger)).stdout,
    }
    found = {
        name: sorted({f"U+{ord(c):04X}" for c in TERMINAL_CONTROL.findall(text)}) for name, text in outputs.items()
    }
    assert all(not v for v in found.values()), found


# -- secrets ------------------------------------------------------------------------------------------------


def test_the_api_key_is_in_no_output_log_page_or_setting(tmp_path: Path) -> None:
    """The API echoes the key (whole, percent-encoded, HTML-escaped) in codes, messages and details: the run's
    -vv output, `status` (text and JSON), `show` (text and JSON), the report, the --log-file and `config` (key
    from the flag, the environment and a key file) hold no form of it."""
    log = tmp_path / "log.jsonl"
    ledger, run = hostile_ledger(tmp_path, log)
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY + "\n")
    outputs = {
        "run": run.output,
        "log": log.read_text(),
        "status": invoke("status", "--ledger", str(ledger)).output,
        "status --json": invoke("status", "--ledger", str(ledger), "--json").output,
        "report": report_page(ledger, tmp_path / "r.html"),
        "config flag": invoke("config", "run", "--api-key", KEY, "--json").output,
        "config env": invoke("config", "run").output,
        "config file": invoke("config", "run", "--api-key-file", str(keyfile), env={"PLAYMENT_API_KEY": ""}).output,
    }
    for i in range(len(HOSTILE)):
        outputs[f"show r{i}"] = invoke("show", f"r{i}", "--ledger", str(ledger)).output
        outputs[f"show r{i} --json"] = invoke("show", f"r{i}", "--ledger", str(ledger), "--json").output
    assert "[redacted]" in outputs["status"] and "[redacted]" in outputs["show r6"]
    for name, text in outputs.items():
        for form in KEY_FORMS:
            assert form not in text, (name, form)
    assert json.loads(outputs["config flag"])["settings"]["api_key"] == {"value": "set", "source": "flag"}, outputs[
        "config flag"
    ]


@pytest.mark.parametrize("password", ["s3cretPW", "Xy7p/Qz+Wd", "Xy7pQ?z9", "Xy7pQ#z9"])
def test_config_never_prints_a_ledger_urls_password(tmp_path: Path, password: str) -> None:
    """`uploader config` shows a ledger URL with its password masked, also a password holding `/`, `?` or `#`
    (SQLAlchemy reads `bob:Xy7p/Qz+Wd@db` as password `Xy7p/Qz+Wd`; an RFC 3986 parse ends the user info at
    the `/` and showed the password, or its first part). Given as a flag, from UPLOADER_LEDGER, or from a
    profile, in text and JSON."""
    url = f"postgresql+psycopg://bob:{password}@db.example.com:5432/uploads"
    (tmp_path / "uploader.toml").write_text(f'[default]\nledger = "{url}"\n')
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        outputs = {
            "flag": invoke("config", "status", "--ledger", url).output,
            "flag --json": invoke("config", "report", "--ledger", url, "--json").output,
            "env": invoke("config", "export", env={"UPLOADER_LEDGER": url}).output,
            "profile": invoke("config", "run").output,
        }
    finally:
        os.chdir(cwd)
    head = re.split(r"[/?#]", password)[0]  # what precedes the character that ends an RFC 3986 authority
    for name, text in outputs.items():
        assert password not in text and head not in text, (name, text)
        assert "db.example.com" in text, (name, text)


@pytest.mark.parametrize("password", ["Xy7p/Qz+Wd", "Xy7pQ?z9", "Xy7pQ#z9"])
def test_printed_commands_never_carry_a_ledger_urls_password(password: str) -> None:
    """The commands `status`, `run` and `reconcile` suggest, and the report's "Command" line, repeat `--ledger`
    with its password replaced (uploader/cli/hints.py `hide_password`), also a password holding `/`, `?` or
    `#`, which `urllib.parse.urlsplit` did not find."""
    from sqlalchemy.engine import make_url

    from uploader.cli.hints import Repeat

    url = f"postgresql+psycopg://bob:{password}@db.example.com/uploads"
    assert make_url(url).password == password  # what --ledger connects with
    printed = Repeat(ledger=url).command("retry --all")
    assert password not in printed and re.split(r"[/?#]", password)[0] not in printed, printed
    assert "db.example.com" in printed, printed


# -- logs -----------------------------------------------------------------------------------------------------


def log_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def test_the_log_file_has_a_line_for_each_job_request_with_the_servers_answer(tmp_path: Path) -> None:
    """Every job creation the server answered has one JSON line with its reference_id and the HTTP status the
    server sent (429s included), in the order of that row's attempts; hostile codes are JSON text; no key."""
    log = tmp_path / "log.jsonl"
    script: dict[str, list[Answer | None]] = {
        "bad": [refusal("\x1b[2J<script>", "m\u2028m")],
        "thr": [THROTTLED, None],
        "flaky": [refusal("FS_0000", "try again", status=500), None],
    }
    with HostileApi(KEY, script) as api:
        result = run_against(
            api, tmp_path / "l.db", write_manifest(tmp_path / "m.csv", ["ok", *script]), "--log-file", str(log)
        )
        assert result.exit_code == 3, result.output
        answered = {ref: list(statuses) for ref, statuses in api.answered.items()}
    lines = [x for x in log_lines(log) if x.get("event") == "request"]
    logged: dict[str, list[int]] = {}
    for x in lines:
        logged.setdefault(x["reference_id"], []).append(x["http_status"])
        assert x["time"].endswith("+00:00") and x["project_id"] == "proj"
    assert logged == answered
    assert next(x["code"] for x in lines if x["reference_id"] == "bad") == " [2J<script>"
    assert not any(form in log.read_text() for form in KEY_FORMS)


def test_the_log_file_of_run_has_a_line_for_every_request_it_made(tmp_path: Path) -> None:
    """FINDING: README: "`--log-file PATH` appends one JSON line per request". A run that creates its batch
    (`--batch-name`), sends 4 rows (one answered 502 twice: it may have been created) and looks that row up by
    listing the batch makes 7 requests (a batch creation, 5 job creations, a listing); the log has 5 lines: only
    job creations are logged (uploader/send/submit.py `_log_answer`, called for job answers only); the batch
    creation (uploader/send/batches.py) and the lookup's listing (uploader/send/resolve.py) write nothing.
    Whoever audits what the tool sent, or why a row became succeeded, finds requests missing."""
    log = tmp_path / "log.jsonl"
    lost = Answer(502, b"<html>bad gateway</html>", {"Content-Type": "text/html"}, create=True)
    with HostileApi(KEY, {"lost": [lost]}) as api:
        args = ["run", str(write_manifest(tmp_path / "m.csv", ["a", "b", "c", "lost"])), "--project-id", "proj"]
        args += ["--work-flow-id", "wf", "--batch-name", "nightly", "--ledger", str(tmp_path / "l.db")]
        result = invoke(*args, "--base-url", api.base_url, "--max-attempts", "2", "--log-file", str(log))
        assert result.exit_code == 0, result.output
        made = list(api.requests)
    assert [k for _, k, _ in made].count("batch") == 1 and [k for _, k, _ in made].count("list") >= 1, made
    assert len(log_lines(log)) == len(made), (len(log_lines(log)), made)


def test_the_log_file_of_sync_has_a_line_for_every_request_it_made(tmp_path: Path) -> None:
    """FINDING: every command takes `--log-file` (README: "appends one JSON line per request"), but
    `uploader sync --log-file F` writes nothing to F for its listings and job reads: only `run`'s job
    creations log (uploader/send/submit.py `_log_answer`); uploader/send/sync.py logs no request. The same
    holds for `adopt` and `reconcile`."""
    ledger = tmp_path / "l.db"
    log = tmp_path / "sync.jsonl"
    with HostileApi(KEY) as api:
        assert run_against(api, ledger, write_manifest(tmp_path / "m.csv", ["a", "b"]), "-q").exit_code == 0
        before = len(api.requests)
        synced = invoke("sync", "--ledger", str(ledger), "--base-url", api.base_url, "--log-file", str(log), "-q")
        assert synced.exit_code == 0, synced.output
        made = api.requests[before:]
    assert made and log.exists()
    assert len(log_lines(log)) == len(made), (log.read_text(), made)


# -- exit codes and refusals ----------------------------------------------------------------------------------


def test_exit_codes_and_refusals_of_status_report_and_show(tmp_path: Path) -> None:
    """A missing ledger: status, report and show exit 1 with one line, create no ledger and no page. `show` of
    an unknown reference_id exits 1; of one in two projects without --project-id exits 2; with it, 0. `report
    -o` naming the ledger is refused (exit 1), the ledger unchanged; into a missing folder, exit 1."""
    missing = tmp_path / "missing.db"
    page = tmp_path / "r.html"
    for args in (["status"], ["status", "--json"], ["report", "-o", str(page)], ["show", "x"]):
        result = invoke(*args, "--ledger", str(missing))
        assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, (args, result.output)
        assert not missing.exists() and not page.exists(), args
    ledger = tmp_path / "l.db"
    load(ledger, write_manifest(tmp_path / "a.csv", ["same"]), "p1")
    load(ledger, write_manifest(tmp_path / "b.csv", ["same"]), "p2")
    assert invoke("show", "nope", "--ledger", str(ledger)).exit_code == 1
    assert invoke("show", "same", "--ledger", str(ledger)).exit_code == 2
    shown = invoke("show", "same", "--project-id", "p2", "--ledger", str(ledger), "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["project_id"] == "p2", shown.output
    before = ledger.read_bytes()
    result = invoke("report", "--ledger", str(ledger), "-o", str(ledger))
    assert result.exit_code == 1 and ledger.read_bytes() == before, result.output
    result = invoke("report", "--ledger", str(ledger), "-o", str(tmp_path / "nowhere" / "r.html"))
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output


def test_status_per_project_counts_are_the_same_snapshot_as_its_totals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-project table, the attachment and platform figures of `uploader status` come from the snapshot
    its totals do: a run that records results right after the totals were read (here 4 rows of project p2
    fail) cannot make the per-project counts disagree with the totals beside them."""
    ledger = tmp_path / "l.db"
    load(ledger, write_manifest(tmp_path / "a.csv", ["a0", "a1"]), "p1")
    load(ledger, write_manifest(tmp_path / "b.csv", [f"b{i}" for i in range(4)]), "p2")
    from uploader.ledger.queries import LedgerQueries

    status = LedgerQueries.status

    def status_then_a_run_records(self: LedgerQueries, *args: Any, **kwargs: Any) -> Any:
        out = status(self, *args, **kwargs)
        write(ledger, "UPDATE jobs SET status = 'failed', error_code = 'FS_0003', attempts = 1 WHERE project_id = 'p2'")
        return out

    monkeypatch.setattr(LedgerQueries, "status", status_then_a_run_records)
    doc = status_json(ledger)
    per_project = doc["projects"]
    summed = {s: sum(p[s] for p in per_project.values()) for s in STATES}
    assert summed == {s: doc["counts"][s] for s in STATES}, (per_project, doc["counts"])
    assert sql(ledger, "SELECT COUNT(*) FROM jobs WHERE status = 'failed'") == [(4,)]  # the run did record
