"""Adversarial tests of `uploader load` (CSV, TSV, Parquet, JSONL; reloads), `uploader export` and the row
selections of `uploader forget` / `retry`.

Everything goes through real `python -m uploader` processes, a real SQLite ledger file and, where jobs must
exist, the built-in sandbox on loopback. Tests whose docstring starts with FINDING fail on purpose: each says
what the ledger or the command says versus the truth, and why a demanding user would care.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from uploader.sandbox import Sandbox, SandboxConfig

OPTS = ("--project-id", "p", "--work-flow-id", "w")
KEY = "adversary-key"


def env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    return {**clean, **extra}


def uploader(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "uploader", *map(str, args)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load(manifest: Path, ledger: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return uploader("load", manifest, *OPTS, "--ledger", ledger, *extra)


def dump(ledger: Path) -> str:
    """The ledger's logical content (schema and every row), to compare before and after a command."""
    with closing(sqlite3.connect(ledger)) as db:
        return "\n".join(db.iterdump())


def export_records(ledger: Path, fmt: str, out: Path) -> list[dict[str, Any]]:
    done = uploader("export", "--ledger", ledger, "-o", out, "--format", fmt)
    assert done.returncode == 0, done.stderr
    if fmt == "csv":
        with open(out, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    if fmt == "jsonl":
        return [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]
    return pq.read_table(out).to_pylist()  # type: ignore[no-any-return]


def export_jsonl(ledger: Path) -> list[dict[str, Any]]:
    done = uploader("export", "--ledger", ledger, "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.split("\n") if line]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- the manifest's own columns in export ---------------------------------------------------------------


def test_extra_columns_named_like_export_columns_come_back_in_export(tmp_path: Path) -> None:
    """FINDING. README: "Any other column is kept in the ledger and comes back in `export`", and export lists
    "the manifest's extra columns, verbatim". A manifest with its own `status` (a review state such as
    `approved`), `job_id` (the customer's own job number) or `error_message` column loads without a word, and
    the values are in the ledger's `extra` JSON, but `export` silently drops those columns in every format:
    the ledger's word (`status`, `job_id`) wins and the customer's data is gone from the only place they can
    read it back. A demanding user joining the export back to their catalogue loses those columns without any
    warning at load or export; they should be exported under another name, or refused at load (file and
    column named)."""
    manifest = write_csv(
        tmp_path / "m.csv",
        ["reference_id", "image_url", "status", "job_id", "error_message", "note"],
        [["r1", "https://cdn.example.com/1.jpg", "approved", "CUST-17", "none", "kept"]],
    )
    ledger = tmp_path / "ledger.db"
    done = load(manifest, ledger)
    assert done.returncode == 0, done.stderr
    with closing(sqlite3.connect(ledger)) as db:
        (extra,) = db.execute("SELECT extra FROM jobs").fetchone()
    assert json.loads(extra)["status"] == "approved"  # the ledger holds it ...
    for fmt in ("csv", "jsonl", "parquet"):
        records = export_records(ledger, fmt, tmp_path / f"out.{fmt}")
        values = {v for v in records[0].values() if isinstance(v, str)}
        assert "kept" in values  # an ordinary extra column comes back
        missing = {"approved", "CUST-17", "none"} - values
        assert not missing, f"{fmt} export lost the manifest's values {sorted(missing)}: {records[0]}"


def test_reload_that_changes_only_extra_columns_is_reflected_in_export(tmp_path: Path) -> None:
    """FINDING. A manifest whose payload columns are unchanged but whose own columns were corrected (a `note`
    fixed, a `tag` column added) reloads as "1 unchanged", and `export` keeps giving the first load's values
    (`old`) and never shows the new column: the merge compares and replaces rows only by the payload's hash
    (uploader/ledger/loading.py: MERGE_COUNTS / MERGE_CHANGED ignore `extra`). Nothing says the corrected
    values were dropped; the export a user joins back to their data is stale."""
    ledger = tmp_path / "ledger.db"
    first = write_csv(tmp_path / "m.csv", ["reference_id", "image_url", "note"], [["a", "https://x.example/a", "old"]])
    assert load(first, ledger).returncode == 0
    fixed = write_csv(
        tmp_path / "m2.csv",
        ["reference_id", "image_url", "note", "tag"],
        [["a", "https://x.example/a", "corrected", "T1"]],
    )
    done = load(fixed, ledger)
    assert done.returncode == 0, done.stderr
    (row,) = export_jsonl(ledger)
    assert (row.get("note"), row.get("tag")) == ("corrected", "T1"), (
        f"load said: {done.stdout.strip()!r}; export still has note={row.get('note')!r}, tag={row.get('tag')!r}"
    )


# --- reloading a changed manifest ---------------------------------------------------------------------


def _delete_at_platform(box: Sandbox, job_id: str) -> None:
    request = urllib.request.Request(f"{box.base_url}/_sandbox/jobs/{job_id}", method="DELETE")
    with urllib.request.urlopen(request, timeout=10):
        pass


def test_a_fixed_manifest_reported_as_held_back_is_not_sent_with_the_old_payload(tmp_path: Path) -> None:
    """FINDING. Row `a` was created with OLD.jpg. The user fixes the manifest (FIXED.jpg) and reloads: "1
    conflicting … left unchanged (not sent again)", as README's "The ledger" says for a sent row. Then the job
    is deleted at the platform: `sync` records it failed (job_not_found) and `retry --error-code job_not_found`
    makes it pending, still with OLD.jpg. `uploader run m.csv` with the fixed manifest then says the manifest
    is "already loaded" (nothing merged), repeats "left unchanged (not sent again)" — and in the same command
    sends row `a` with OLD.jpg: the API creates a job from the payload the manifest no longer has. The
    ALREADY_LOADED shortcut (uploader/ledger/loading.py) treats a load whose conflicting rows were never taken
    as still applied, although those rows have since become sendable; the manifest can no longer get its fix
    in, and the command's own words ("not sent again") are false."""
    ledger = tmp_path / "ledger.db"
    manifest = tmp_path / "m.csv"
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        api = ("--base-url", box.base_url, "--api-key", KEY)
        write_csv(
            manifest,
            ["reference_id", "image_url"],
            [["a", "https://x.example/OLD.jpg"], ["b", "https://x.example/b.jpg"]],
        )
        done = uploader("run", manifest, *OPTS, "--ledger", ledger, *api)
        assert done.returncode == 0, done.stderr
        write_csv(
            manifest,
            ["reference_id", "image_url"],
            [["a", "https://x.example/FIXED.jpg"], ["b", "https://x.example/b.jpg"]],
        )
        done = load(manifest, ledger)
        assert done.returncode == 0 and "1 conflicting" in done.stdout, done.stdout + done.stderr
        (old_job,) = [j for j in box.jobs() if j["reference_id"] == "a"]
        _delete_at_platform(box, old_job["job_id"])
        done = uploader("sync", "--ledger", ledger, *api)
        assert done.returncode == 3 and "job_not_found" in done.stderr, done.stdout + done.stderr
        done = uploader("retry", "--error-code", "job_not_found", "--ledger", ledger)
        assert done.returncode == 0, done.stderr
        done = uploader("run", manifest, *OPTS, "--ledger", ledger, *api)
        sent_for_a = [j["data"]["image_url"] for j in box.jobs() if j["reference_id"] == "a"]
    assert done.returncode in (0, 3), done.stderr
    assert sent_for_a[-1] == "https://x.example/FIXED.jpg", (
        f"`uploader run m.csv` said {done.stdout.strip().splitlines()[:1]} and {done.stderr.strip().splitlines()[:1]}, "
        f"then sent row a with {sent_for_a[-1]} although the manifest says FIXED.jpg"
    )


# --- JSON Lines with a key given twice ------------------------------------------------------------------


def test_jsonl_line_with_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    """FINDING. `{"reference_id": "a", "reference_id": "b", …}` loads silently as reference_id `b` (and a
    repeated `image_url`, or a repeated key inside `data`, silently as the last value): JSON leaves duplicate
    names undefined, and the project itself refuses an API answer with a key given twice
    (tests/test_trust_hostile.py) — yet a manifest line that names two reference_ids for one job creates a job
    under one of them without a word. Expected: exit 1, the file and line named, nothing loaded."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"reference_id": "ok", "image_url": "https://x.example/0.jpg"}\n'
        '{"reference_id": "a", "reference_id": "b", "image_url": "https://x.example/1.jpg"}\n',
        encoding="utf-8",
    )
    ledger = tmp_path / "ledger.db"
    done = load(manifest, ledger)
    refs = [r["reference_id"] for r in export_jsonl(ledger)] if ledger.exists() else []
    assert done.returncode == 1 and f"{manifest.name}:2" in done.stderr, (
        f"exit {done.returncode}, {done.stdout.strip()!r}: loaded {refs}"
    )
    assert not ledger.exists()


# --- Parquet column types in export --------------------------------------------------------------------


def test_parquet_map_and_binary_extra_columns_are_not_exported_as_python_reprs(tmp_path: Path) -> None:
    """FINDING. A Parquet manifest from Spark often carries a `map<string,string>` column (tags) or a binary
    column. They load without a word, but the ledger keeps, and `export` gives back, Python's repr of the
    values: `[('team', 'x')]` for the map and `b'abc'` for the bytes `abc` (the whole binary column falls back
    to repr as soon as one value is not UTF-8) — neither the file's data nor JSON. A struct or list column in
    the same file comes back as JSON text, so the map is treated differently only by accident
    (uploader/manifest/formats.py: parquet_kind has no case for maps; _parquet_cells falls back to str()).
    Now a map comes back as a JSON object, bytes that are UTF-8 as text, and bytes that are not (no faithful
    text form) are refused with their row and column, nothing loaded."""
    columns = {
        "reference_id": ["a", "b"],
        "image_url": ["https://x.example/a.jpg", "https://x.example/b.jpg"],
        "tags": pa.array([[("team", "x")], []], pa.map_(pa.string(), pa.string())),
        "raw": pa.array([b"abc", b"d"]),
        "st": pa.array([{"team": "x"}, {"team": "y"}]),
    }
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table(columns), manifest)
    ledger = tmp_path / "ledger.db"
    assert load(manifest, ledger).returncode == 0
    first = export_jsonl(ledger)[0]
    assert first["st"] == {"team": "x"}  # a struct: a JSON object
    assert first["tags"] == {"team": "x"}, f"map exported as {first['tags']!r}"
    assert first["raw"] == "abc", f"bytes exported as {first['raw']!r}"
    pq.write_table(pa.table({**columns, "raw": pa.array([b"abc", b"\xff"])}), manifest)
    other = tmp_path / "other.db"
    done = load(manifest, other)
    assert done.returncode == 1 and "m.parquet: row 1: column 'raw'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not other.exists()


# --- forget's --reference-id-file -----------------------------------------------------------------------


def _jsonl_manifest(path: Path, refs: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, ref in enumerate(refs):
            f.write(json.dumps({"reference_id": ref, "image_url": f"https://x.example/{i}.jpg"}, ensure_ascii=False))
            f.write("\n")
    return path


def test_forget_by_reference_id_file_forgets_exactly_the_ids_in_it(tmp_path: Path) -> None:
    """FINDING. reference_ids may hold U+2028 (LINE SEPARATOR): the loader accepts it (not a control
    character). `forget --reference-id-file F` with F holding the one line `a<U+2028>b` forgets the rows `a`
    and `b` — two other jobs — and keeps `a<U+2028>b`: the file is split with str.splitlines(), which breaks at
    U+2028/U+2029 too (uploader/cli/forgetting.py: forget_selection). With `--include-created --yes` the
    wrong rows' job_ids are lost and a reload would create their jobs twice."""
    ledger = tmp_path / "ledger.db"
    refs = ["a", "b", "a\u2028b", "c"]
    assert load(_jsonl_manifest(tmp_path / "m.jsonl", refs), ledger).returncode == 0
    ids = tmp_path / "ids.txt"
    ids.write_text("a\u2028b\n", encoding="utf-8")
    done = uploader("forget", "--ledger", ledger, "--reference-id-file", ids)
    assert done.returncode == 0, done.stderr
    left = sorted(r["reference_id"] for r in export_jsonl(ledger))
    assert left == ["a", "b", "c"], f"forget said {done.stdout.strip()!r}; the ledger keeps {left}"


def test_forget_reference_id_file_that_is_not_utf8_is_one_error_line(tmp_path: Path) -> None:
    """FINDING. A reference-id file saved in Latin-1 (`café`) makes `uploader forget` die with a Python
    traceback (UnicodeDecodeError from Path.read_text in uploader/cli/forgetting.py: forget_selection)
    instead of one line naming the file, line and byte, as a manifest with the same bytes gets."""
    ledger = tmp_path / "ledger.db"
    assert load(_jsonl_manifest(tmp_path / "m.jsonl", ["café"]), ledger).returncode == 0
    before = dump(ledger)
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"caf\xe9\n")
    done = uploader("forget", "--ledger", ledger, "--reference-id-file", ids)
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert done.returncode == 1 and "ids.txt" in done.stderr, done.stderr
    assert dump(ledger) == before


def test_forget_reference_id_file_with_a_bom_matches_its_first_id(tmp_path: Path) -> None:
    """FINDING. Manifests may start with a UTF-8 BOM (README: stripped), and so does a list of ids saved as
    "CSV UTF-8" by Excel or by many Windows editors. `forget --reference-id-file` keeps the BOM in the first
    id, so that row is silently not forgotten: "forgot 1 row" of the two named, exit 0, no word about an id
    that matched nothing."""
    ledger = tmp_path / "ledger.db"
    assert load(_jsonl_manifest(tmp_path / "m.jsonl", ["first", "second", "third"]), ledger).returncode == 0
    ids = tmp_path / "ids.txt"
    ids.write_text("\ufefffirst\r\nsecond\r\n", encoding="utf-8")
    done = uploader("forget", "--ledger", ledger, "--reference-id-file", ids)
    left = [r["reference_id"] for r in export_jsonl(ledger)]
    assert left == ["third"], f"forget said {done.stdout.strip()!r} (exit {done.returncode}); the ledger keeps {left}"


# --- Ctrl-C during a reload into a ledger that holds rows --------------------------------------------------

BIG_ROWS = 300_000


@pytest.fixture(scope="module")
def big_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300,000 image rows (~14 MB): read by the slice processes, merged through the staging table."""
    path = tmp_path_factory.mktemp("big") / "big.csv"
    with open(path, "w", encoding="utf-8") as f:
        f.write("reference_id,image_url,note\n")
        f.writelines(f"r{i:07d},https://cdn.example.com/{i}.jpg,n{i % 13}\n" for i in range(BIG_ROWS))
    return path


def _write_lock_held(ledger: Path) -> bool:
    """Whether another connection holds the ledger's write lock (probed without waiting, released at once)."""
    with closing(sqlite3.connect(ledger, timeout=0, isolation_level=None)) as probe:
        try:
            probe.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            return "locked" in str(exc)
        probe.execute("ROLLBACK")
        return False


def _stop_once_the_merge_holds_the_lock(proc: subprocess.Popen[bytes], ledger: Path) -> float:
    """SIGINT as soon as the load's merge transaction holds the write lock (or when it ends); the time sent."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if _write_lock_held(ledger):
            break
        time.sleep(0.002)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    return sent


@pytest.mark.slow
def test_ctrl_c_during_the_merge_of_a_reload_exits_130_at_once(big_manifest: Path, tmp_path: Path) -> None:
    """FINDING. Ctrl-C while `uploader load` merges a big manifest into a ledger that already holds rows
    (found by probing for the merge's write lock, then SIGINT; a few trials). The ledger's rows stay as they
    were (good), but in about half the trials the command does not stop: it waits SQLite's 30 s busy timeout
    and then ends with "error: ledger error: database is locked", exit 1 (or at once with "database table is
    locked"), instead of "interrupted; run the same command again to resume.", exit 130. The interrupt lands
    in MERGE_COUNTS; SQLAlchemy invalidates the connection, whose sqlite3 connection lingers holding the
    write lock (its cursor referenced by the traceback), and load_manifest's `finally` (uploader/load/merge.py)
    runs STAGING_DROP on a fresh connection that inherited `sqlite_begin="IMMEDIATE"` from _merge's
    execution_options, so it waits for the lock its own process holds. A user who pressed Ctrl-C waits half a
    minute and is told the ledger is locked — by whom? — and may go looking for another process or a damaged
    file."""
    seed = write_csv(
        tmp_path / "seed.csv",
        ["reference_id", "image_url", "note"],
        [[f"s{i}", f"https://x.example/s{i}", "x"] for i in range(10)],
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    outcomes = []
    for trial in range(4):
        ledger = tmp_path / f"ledger{trial}.db"
        assert load(seed, ledger).returncode == 0
        before = dump(ledger)
        proc = subprocess.Popen(
            [sys.executable, "-m", "uploader", "load", str(big_manifest), *OPTS, "--ledger", str(ledger)],
            env=env(TMPDIR=str(scratch)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            sent = _stop_once_the_merge_holds_the_lock(proc, ledger)
            try:
                _, err_bytes = proc.communicate(timeout=15)  # the bug waited out the 30 s busy timeout
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err_bytes = proc.communicate()
                err_bytes += b"\n(still running 15 s after Ctrl-C; killed)"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err = err_bytes.decode()
        took = time.monotonic() - sent
        outcomes.append((trial, proc.returncode, round(took, 1), err.strip()[-120:]))
        assert "Traceback" not in err, err
        left = _scratch_left(scratch)
        assert left == [], f"scratch files left behind: {left}; {outcomes}"
        if proc.returncode == 0:  # finished before the signal: every row in
            continue
        assert dump(ledger) == before, f"trial {trial}: interrupted, yet the ledger changed"
        assert proc.returncode == 130 and "interrupted; run the same command again" in err, outcomes


def _scratch_left(scratch: Path, seconds: float = 5.0) -> list[str]:
    """What is still in the load's temp folder after up to `seconds` (slice processes clean up as they end)."""
    deadline = time.monotonic() + seconds
    while (left := [p.name for p in scratch.iterdir()]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# --- passing guards -------------------------------------------------------------------------------------

#: Values an extra column (and, where allowed, a reference_id) must keep exactly, in every format.
ODD_VALUES = [
    "007",
    "-5",
    "=1+1",
    "1e5",
    "NaN",
    "true",
    "null",
    " lead",
    "trail ",
    "  ",
    "",
    "ünï©ødé 漢字 🎉",
    'q"uote',
    "com,ma",
    "tab\there",
    "new\nline",
    "cr\rin",
    "crlf\r\nin",
    "\u2028sep",
    "\\back",
    "x" * 100_000,
]
ODD_IDS = [
    "007",
    "-5",
    "=1+1",
    "1e5",
    "NaN",
    "true",
    "null",
    " lead",
    "trail ",
    "ünï漢🎉",
    'q"uote',
    "com,ma",
    "@x",
    "+1",
    "0x1F",
    "-0",
    "e\u0301",
    "\u00a0a",
]


def _odd_rows() -> list[dict[str, str]]:
    return [
        {
            "reference_id": ODD_IDS[i] if i < len(ODD_IDS) else f"id-{i}",
            "image_url": f"https://cdn.example.com/{i}.jpg",
            "note": value,
            "other": value[::-1],
        }
        for i, value in enumerate(ODD_VALUES)
    ]


def _write_odd(path: Path, rows: list[dict[str, str]]) -> None:
    if path.suffix in (".csv", ".tsv"):
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("source", ["csv", "tsv", "jsonl", "parquet"])
def test_odd_values_round_trip_load_then_export_in_every_format(source: str, tmp_path: Path) -> None:
    """Ids such as `007`, `-5`, `=1+1`, `1e5`, `NaN`, `-0`, spaces kept at either end, unicode (NFD too), and
    extra values with quotes, commas, tabs, CR/LF/CRLF, U+2028 and 100,000 characters: loaded from each
    format, every export format gives each back exactly."""
    rows = _odd_rows()
    manifest = tmp_path / f"m.{source}"
    _write_odd(manifest, rows)
    ledger = tmp_path / "ledger.db"
    done = load(manifest, ledger)
    assert done.returncode == 0, done.stderr
    for fmt in ("csv", "jsonl", "parquet"):
        got = export_records(ledger, fmt, tmp_path / f"out.{fmt}")
        assert [(g["reference_id"], g["note"], g["other"]) for g in got] == [
            (r["reference_id"], r["note"], r["other"]) for r in rows
        ], f"{source} -> {fmt}"


def _big_odd_csv(path: Path, rows: int) -> list[tuple[str, str]]:
    """A big quote-free CSV with a BOM, LF and CRLF line ends alternating and blank lines at the end."""
    notes = ["007", " lead", "trail ", "ünï漢🎉", "=1+1", "-5", "NaN", "", "  ", "'x"]
    want = []
    with open(path, "wb") as f:
        f.write(b"\xef\xbb\xbfreference_id,image_url,note\n")
        for i in range(rows):
            ref = f" r{i:07d}ü " if i % 7 == 0 else f"{i:07d}"
            note = notes[i % len(notes)]
            eol = "\r\n" if i % 2 else "\n"
            f.write(f"{ref},https://cdn.example.com/{i}.jpg,{note}{eol}".encode())
            want.append((ref, note))
        f.write(b"\n\n")
    return want


def test_big_manifest_with_bom_mixed_line_ends_and_trailing_blank_lines_loads_verbatim(tmp_path: Path) -> None:
    """A 5 MB CSV (over the slice processes' threshold) with a BOM, LF and CRLF alternating, trailing blank
    lines, ids with spaces at both ends and unicode: every row loads, with its physical line, and the export
    gives every value back exactly."""
    manifest = tmp_path / "big.csv"
    want = _big_odd_csv(manifest, 100_000)
    assert manifest.stat().st_size > 4 * 1024 * 1024
    ledger = tmp_path / "ledger.db"
    done = load(manifest, ledger)
    assert done.returncode == 0 and "100000 new" in done.stdout, done.stdout + done.stderr
    got = export_records(ledger, "csv", tmp_path / "out.csv")
    assert [(g["reference_id"], g["note"]) for g in got] == want
    with closing(sqlite3.connect(ledger)) as db:
        assert db.execute("SELECT MIN(manifest_line), MAX(manifest_line) FROM jobs").fetchone() == (2, 100_001)


def test_bad_last_row_of_a_big_manifest_names_it_and_leaves_no_ledger(tmp_path: Path) -> None:
    """A 5 MB manifest whose very last row (after 100,000 good ones, no newline at the end) has an ftp:// URL,
    into a ledger that does not exist: one problem naming file, line and column, exit 1, no traceback, and
    no ledger file (nor -wal, -shm, -journal) left behind."""
    manifest = tmp_path / "big.csv"
    _big_odd_csv(manifest, 100_000)
    with open(manifest, "ab") as f:
        f.write(b"zzz,ftp://cdn.example.com/z.jpg,x")
    ledger = tmp_path / "ledger.db"
    done = load(manifest, ledger)
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr
    assert "big.csv:100004: column 'image_url'" in done.stderr, done.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("ledger.db")]


@pytest.fixture(scope="module")
def loaded_ledger(big_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger holding the 300,000 rows of `big_manifest` (exports only read it)."""
    ledger = tmp_path_factory.mktemp("loaded") / "ledger.db"
    assert load(big_manifest, ledger).returncode == 0
    return ledger


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_ctrl_c_during_export_keeps_the_old_file(fmt: str, loaded_ledger: Path, tmp_path: Path) -> None:
    """`export -o FILE` of 300,000 rows onto an existing FILE, SIGINT after 0.3 s and 0.8 s: exit 130, the old
    file byte for byte, and no temporary file beside it."""
    out = tmp_path / f"jobs.{fmt}"
    for delay in (0.3, 0.8):
        out.write_bytes(b"the previous export\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "uploader", "export", "--ledger", str(loaded_ledger), "-o", str(out)],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        if proc.returncode == 0:  # finished first: a whole export
            assert out.read_bytes() != b"the previous export\n"
            continue
        assert proc.returncode == 130, err.decode()
        assert out.read_bytes() == b"the previous export\n"
        assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]


def _small_files() -> None:
    """In the child: files may grow to 2 MiB at most (writing more fails with EFBIG: Python ignores SIGXFSZ)."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024 * 1024, 2 * 1024 * 1024))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_that_fails_midway_keeps_the_old_file(fmt: str, loaded_ledger: Path, tmp_path: Path) -> None:
    """`export -o FILE` onto an existing FILE that cannot be written to the end (the file size limit stops it
    after 2 MiB of ~20 MB, as a full disk would): one error line naming FILE, exit 1, no traceback, the old
    file byte for byte, no temporary file beside it, and the ledger unchanged."""
    out = tmp_path / f"jobs.{fmt}"
    out.write_bytes(b"the previous export\n")
    before = hashlib.sha256(loaded_ledger.read_bytes()).hexdigest()
    done = subprocess.run(
        [sys.executable, "-m", "uploader", "export", "--ledger", str(loaded_ledger), "-o", str(out)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_small_files,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and f"cannot write {out}" in done.stderr, done.stderr
    assert out.read_bytes() == b"the previous export\n"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert hashlib.sha256(loaded_ledger.read_bytes()).hexdigest() == before


def test_csv_edge_shapes_load_verbatim(tmp_path: Path) -> None:
    """A BOM with quoted header names, CRLF, a quoted CR/LF/CRLF in the last field of a file with no final
    newline; a file of lone CRs with a quoted CRLF inside; a TSV with a quoted tab and a bare quote mid-field:
    each loads with its values exactly."""
    cases = {
        "bom.csv": (
            b'\xef\xbb\xbf"reference_id","image_url","note"\r\na,https://x.example/a.jpg,"multi\r\nline\nlast"',
            [("a", "multi\r\nline\nlast")],
        ),
        "cr.csv": (
            b'reference_id,image_url,note\ra,https://x.example/a.jpg,"x\r\ny"\rb,https://x.example/b.jpg,z\r',
            [("a", "x\r\ny"), ("b", "z")],
        ),
        "t.tsv": (
            b'reference_id\timage_url\tnote\na\thttps://x.example/a.jpg\t"quoted\ttab"\n'
            b'b\thttps://x.example/b.jpg\tsay "hi"\n',
            [("a", "quoted\ttab"), ("b", 'say "hi"')],
        ),
    }
    for name, (content, want) in cases.items():
        manifest = tmp_path / name
        manifest.write_bytes(content)
        ledger = tmp_path / f"{name}.db"
        done = load(manifest, ledger)
        assert done.returncode == 0, (name, done.stderr)
        assert [(r["reference_id"], r["note"]) for r in export_jsonl(ledger)] == want, name


def test_unterminated_quote_on_the_last_line_leaves_an_existing_ledger_unchanged(tmp_path: Path) -> None:
    """An unterminated quote on the last line of a CSV loaded into an existing ledger: one line naming file
    and line, exit 1, the ledger's content unchanged."""
    ledger = tmp_path / "ledger.db"
    good = write_csv(tmp_path / "good.csv", ["reference_id", "image_url", "note"], [["a", "https://x.example/a", "n"]])
    assert load(good, ledger).returncode == 0
    before = dump(ledger)
    bad = tmp_path / "bad.csv"
    bad.write_text('reference_id,image_url,note\nb,https://x.example/b,"unterminated\n', encoding="utf-8")
    done = load(bad, ledger)
    assert done.returncode == 1 and "bad.csv:2" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert dump(ledger) == before
