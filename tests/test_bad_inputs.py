"""The malformed-manifest corpus (tests/data/bad, made by tests/data/make_bad.py) through the real CLI.

Every bad file, loaded into an existing non-empty ledger, must: exit 1; name the file and, when the problem is
in a row, its line (Parquet: row index) and column; never show a traceback; and leave the ledger file byte for
byte as it was (and write nothing to its WAL). Most files go through click's CliRunner in this process; a
handful (one of each kind of failure) go through `python -m uploader` subprocesses, started all at once.
Every file of tests/data/edge is odd but valid and must load, with the right line numbers.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from click.testing import CliRunner

from uploader.cli.commands import cli
from uploader.ledger.ledger import Ledger
from uploader.load import load
from uploader.manifest.reader import ManifestOptions

DATA = Path(__file__).resolve().parent / "data"
BAD, EDGE = DATA / "bad", DATA / "edge"
SAMPLES = Path(__file__).resolve().parent.parent / "sample_manifests"
LOAD_OPTS = ["--project-id", "p", "--work-flow-id", "w"]

#: file -> (line or None for the whole file, column or None, part of the message). A Parquet file's `line` is
#: its 0-based row index (printed `file: row N`); a text file's is the 1-based physical line (`file:N`).
BAD_EXPECTED: dict[str, tuple[int | None, str | None, str]] = {
    # encodings
    "utf16_bom.csv": (None, None, "file is UTF-16 (or UTF-32); save it as UTF-8"),
    "utf16_be_bom.csv": (None, None, "file is UTF-16"),
    "utf16_nobom.csv": (None, None, "looks like UTF-16 without a BOM"),
    "utf16_bom.jsonl": (None, None, "file is UTF-16"),
    "utf16_nobom.jsonl": (None, None, "looks like UTF-16 without a BOM"),
    "latin1_in_utf8.csv": (3, "reference_id", "is not valid UTF-8 (byte 0xE9)"),
    "latin1_in_utf8.jsonl": (2, None, "is not valid UTF-8 (byte 0xE9"),
    "latin1_header.csv": (None, None, "the header is not valid UTF-8 (byte 0xE9)"),
    "nul_byte.csv": (3, "reference_id", "contains a NUL byte"),
    "nul_byte.jsonl": (2, None, "contains a NUL byte"),
    # the file as a whole
    "empty.csv": (None, None, "file is empty"),
    "empty.jsonl": (None, None, "file is empty"),
    "empty.parquet": (None, None, "file is empty"),
    "bom_only.csv": (None, None, "file is empty"),
    "blank_lines_only.jsonl": (None, None, "file is empty"),
    "header_only.csv": (None, None, "file has a header but no rows"),
    "header_only_blank_lines.tsv": (None, None, "file has a header but no rows"),
    "header_only.parquet": (None, None, "the Parquet file has columns but no rows"),
    "duplicate_headers.csv": (None, None, "duplicate column names in the header: 'image_url'"),
    "duplicate_columns.parquet": (None, None, "duplicate column names in the header: 'image_url'"),
    "blank_header_name.csv": (None, None, "column 3 of the header has no name"),
    "empty_key.jsonl": (None, None, 'a line has an empty key ("")'),
    "missing_columns.csv": (None, None, "the columns fit no manifest shape. found columns: reference_id, camera"),
    "missing_columns.parquet": (None, None, "an image manifest needs reference_id, image_url (missing reference_id)"),
    "unknown_extension.xlsx": (None, None, "unknown format for a .xlsx file; use --format"),
    "no_extension": (None, None, "unknown format for an extension-less file"),
    "huge_header_name.csv": (None, None, "the columns fit no manifest shape. found columns: xxxxx"),
    "many_columns.csv": (None, None, "c48, c49, … (5000 columns)"),
    "all_lines_bad.jsonl": (None, None, "no line is a non-empty JSON object (line 1 is an array"),
    # Parquet that is not (all) Parquet, and Parquet columns of the wrong type
    "truncated.parquet": (None, None, "cannot read the Parquet file: Parquet magic bytes not found"),
    "not_parquet.parquet": (None, None, "cannot read the Parquet file"),
    "footer_only_magic.parquet": (None, None, "cannot read the Parquet file"),
    "corrupt_pages.parquet": (0, None, "cannot read the Parquet file from this row on (is it damaged?)"),
    "reference_id_float.parquet": (None, "reference_id", "has Parquet type double; reference_id must be text"),
    "reference_id_list.parquet": (None, "reference_id", "has Parquet type list<element: string>"),
    "image_url_int64.parquet": (None, "image_url", "has Parquet type int64; image_url must be text"),
    "image_url_timestamp.parquet": (None, "image_url", "has Parquet type timestamp[ms]; image_url must be text"),
    "data_int64.parquet": (None, "data", "has Parquet type int64; data must be JSON text"),
    "data_binary.parquet": (None, "data", "has Parquet type binary; data must be JSON text"),
    # rows: structure (line numbers after quoted newlines, CRLF, lone CR, blank rows)
    "ragged_long.csv": (4, None, "row has 4 fields but the header has 3"),
    "ragged_short.tsv": (3, None, "row has 2 fields but the header has 3"),
    "unterminated_quote.csv": (4, None, "malformed CSV record (lines 4-6)"),
    "quoted_newline_then_bad.csv": (7, "image_url", "must be an http:// or https:// URL, not ftp://"),
    "crlf_then_bad.csv": (4, "image_url", "image_url contains whitespace: 'not a url'"),
    "lone_cr_then_bad.csv": (7, "reference_id", "duplicate reference_id 'c-9' (first on line 5)"),
    "jsonl_bad_line.jsonl": (3, None, "invalid JSON at character"),
    "jsonl_array_line.jsonl": (2, None, "is an array, not a JSON object"),
    "many_bad_rows.csv": (2, "image_url", "... and 4980 more problem(s)"),
    # rows: values
    "huge_reference_id.csv": (2, "reference_id", "reference_id is 10485760 characters long; the limit is 255"),
    "empty_reference_id.csv": (3, "reference_id", "reference_id is empty"),
    "control_char_reference_id.jsonl": (2, "reference_id", "reference_id contains control characters"),
    "duplicate_reference_id.csv": (5, "reference_id", "duplicate reference_id 'a-2' (first on line 3)"),
    "duplicate_reference_id.parquet": (2, "reference_id", "duplicate reference_id 'p-0' (first on row 0)"),
    "reference_id_null.parquet": (1, "reference_id", "reference_id is empty"),
    "reference_id_float.jsonl": (2, "reference_id", "reference_id is the number 1.5, which is ambiguous"),
    "reference_id_bool_object.jsonl": (2, "reference_id", "reference_id must be text, not an object"),
    "huge_integer.jsonl": (2, None, "invalid JSON: Exceeds the limit (4300 digits)"),
    "priority_weight_out_of_range.csv": (2, "priority_weight", "priority_weight must be an integer 1-10, not '11'"),
    # JSON columns
    "data_array.csv": (3, "data", "data must be a JSON object, not an array"),
    "data_array.jsonl": (2, "data", "data must be a JSON object, not an array"),
    "data_invalid_json.csv": (3, "data", "data is invalid JSON at character 7"),
    "data_nan.jsonl": (2, None, "NaN is not valid JSON"),
    "data_infinity.jsonl": (2, "data", "data contains NaN or an infinite number (e.g. 1e400)"),
    "data_infinity.csv": (3, "data", "data contains NaN or an infinite number"),
    "data_nan_struct.parquet": (1, "data", "data contains NaN or an infinite number"),
    "frames_infinity.parquet": (0, "frames", "frames contains NaN or an infinite number"),
    "data_timestamp_struct.parquet": (0, "data", "data contains a datetime value, which JSON cannot carry"),
    "metadata_infinity.csv": (2, "metadata", "metadata contains NaN or an infinite number"),
    "metadata_array.tsv": (2, "metadata", "metadata must be a JSON object, not an array"),
    "frames_invalid_json.csv": (2, "frames", "frames is invalid JSON"),
    "deep_nesting.jsonl": (2, None, "nested too deeply"),
    "deep_nesting_data.csv": (2, "data", "nested too deeply"),
    # URLs
    "s3_url.csv": (3, "image_url", "image_url is an s3:// URL, which GT Studio cannot fetch"),
    "gs_url.jsonl": (2, "image_url", "image_url is a gs:// URL, which GT Studio cannot fetch"),
    "javascript_url.csv": (3, "image_url", "must be an http:// or https:// URL, not javascript:"),
    "file_url.parquet": (1, "image_url", "must be an http:// or https:// URL, not file://"),
    "file_url_in_data.csv": (2, "data", "data.image_url must be an http:// or https:// URL, not file://"),
    "url_with_space.csv": (2, "image_url", "image_url contains whitespace"),
}

#: One of each kind (encoding, file-level, Parquet damage, row with line and column, JSON, huge) through a
#: real `python -m uploader` process; the rest run in-process.
SUBPROCESS = (
    "utf16_bom.csv",
    "truncated.parquet",
    "corrupt_pages.parquet",
    "quoted_newline_then_bad.csv",
    "jsonl_bad_line.jsonl",
    "deep_nesting_data.csv",
    "huge_reference_id.csv",
)


class Outcome(NamedTuple):
    code: int
    stdout: str
    stderr: str
    ledger: Path


def where(name: str, line: int | None, column: str | None) -> str:
    """The location prefix the README promises: `file:line: column 'c': ` (Parquet: `file: row N: ...`)."""
    text = str(BAD / name)
    if line is not None:
        text += f": row {line}" if name.endswith(".parquet") else f":{line}"
    if column is not None:
        text += f": column {column!r}"
    return text + ": "


def no_wal_writes(ledger: Path) -> bool:
    """The WAL is absent or holds no frames (an open reader creates it empty; a write would append to it)."""
    wal = Path(f"{ledger}-wal")
    return not wal.exists() or wal.stat().st_size == 0


@pytest.fixture(scope="module")
def base_ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A non-empty ledger, checkpointed and closed (no WAL), and its bytes."""
    path = tmp_path_factory.mktemp("base") / "ledger.db"
    led = Ledger.open(path)
    load(led, SAMPLES / "images.csv", ManifestOptions(project_id="p", work_flow_id="w"))
    led.close()
    assert not Path(f"{path}-wal").exists()
    return path, path.read_bytes()


def copy_ledger(base_ledger: tuple[Path, bytes], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "ledger.db"
    shutil.copyfile(base_ledger[0], target)
    return target


@pytest.fixture(scope="module")
def subprocess_outcomes(base_ledger, tmp_path_factory) -> dict[str, Outcome]:
    """Run the SUBPROCESS files through `python -m uploader load`, all at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    procs = {}
    root = tmp_path_factory.mktemp("sub")
    for name in SUBPROCESS:
        ledger = copy_ledger(base_ledger, root / name)
        cmd = [sys.executable, "-m", "uploader", "load", str(BAD / name), *LOAD_OPTS, "--ledger", str(ledger)]
        procs[name] = (ledger, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = {}
    for name, (ledger, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=120)  # a hang fails here; slowness on a busy machine does not
        out[name] = Outcome(
            proc.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"), ledger
        )
    return out


@pytest.mark.slow
def test_corpus_is_large_complete_and_reproducible() -> None:
    spec = importlib.util.spec_from_file_location("make_bad", DATA / "make_bad.py")
    assert spec and spec.loader
    make_bad = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_bad)
    assert len(make_bad.BAD_FILES) >= 30
    assert {p.name for p in BAD.iterdir()} == set(make_bad.BAD_FILES) == set(BAD_EXPECTED)
    assert {p.name for p in EDGE.iterdir()} == set(make_bad.EDGE_FILES) == set(EDGE_EXPECTED)
    for folder, files in ((BAD, make_bad.BAD_FILES), (EDGE, make_bad.EDGE_FILES)):
        for name, make in files.items():
            assert (folder / name).read_bytes() == make(), f"{name}: run tests/data/make_bad.py again"
    suffixes = {Path(n).suffix for n in BAD_EXPECTED}
    assert {".csv", ".tsv", ".jsonl", ".parquet"} <= suffixes


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BAD_EXPECTED))
def test_bad_input_is_refused_cleanly(name: str, base_ledger, subprocess_outcomes, tmp_path: Path) -> None:
    if name in SUBPROCESS:
        outcome = subprocess_outcomes[name]
    else:
        ledger = copy_ledger(base_ledger, tmp_path)
        result = CliRunner().invoke(cli, ["load", str(BAD / name), *LOAD_OPTS, "--ledger", str(ledger)])
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        outcome = Outcome(result.exit_code, result.stdout, result.stderr, ledger)
    line, column, message = BAD_EXPECTED[name]
    everything = outcome.stdout + outcome.stderr
    assert outcome.code == 1, everything
    assert "Traceback" not in everything
    assert outcome.stdout == ""
    assert outcome.stderr.startswith("error: ") and "nothing was loaded" in outcome.stderr
    assert len(outcome.stderr) < 10_000  # bounded however large or broken the input
    prefix = where(name, line, column)
    problems = [text.removeprefix("error: ") for text in outcome.stderr.splitlines()]
    assert any(p.startswith(prefix) for p in problems), f"no problem starts with {prefix!r}:\n{outcome.stderr}"
    assert any(message in p for p in problems), f"{message!r} not in:\n{outcome.stderr}"
    assert outcome.ledger.read_bytes() == base_ledger[1]
    assert no_wal_writes(outcome.ledger)


# --- edge cases: odd but valid -------------------------------------------------------------------------------

#: file -> {reference_id: line} of every job it must load (line: the physical line the row starts on, the
#: header being line 1; Parquet: the row index).
EDGE_EXPECTED: dict[str, dict[str, int]] = {
    "utf8_bom.csv": {"a-1": 2, "a-2": 3, "a-3": 4},
    "utf8_bom.jsonl": {"a": 1, "b": 2},
    "crlf.csv": {"a-1": 2, "a-2": 3, "a-3": 4},
    "lone_cr.csv": {"a-1": 2, "a-2": 3, "a-3": 4},
    "crlf_lone_cr.jsonl": {"a": 1, "b": 2},
    "quoted_newlines.csv": {"q-1": 2, "q-2": 4, "q-3": 7},
    "empty_lines.csv": {"a-1": 3, "a-2": 4, "a-5": 7},
    "empty_lines.jsonl": {"a": 2, "b": 5},
    "all_empty_row.csv": {"a-1": 2, "a-2": 4},
    "formula_reference_id.csv": {'=HYPERLINK("http://evil.example/","click")': 2, "+cmd": 3, "-3": 4},
    "verbatim_values.tsv": {"001": 2, "NaN": 3, "null": 4, "1e5": 5},
    "unicode.jsonl": {"日本語-ü-😀": 1, "Ελληνικά": 2},
    "http_urls.csv": {"h-1": 2, "h-2": 3},
    "integer_ids.parquet": {"1": 0, "2": 1},
    "extra_column_types.parquet": {"e-0": 0, "e-1": 1},
    "deep_but_fine.jsonl": {"a": 1, "b": 2},
    "huge_data_cell.csv": {"big-1": 2},
}


def jobs_in(ledger: Path, project: str = "p") -> dict[str, tuple[int, str, str]]:
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT reference_id, manifest_line, body, status FROM jobs WHERE project_id = ? "
            "AND manifest_id = (SELECT MAX(id) FROM manifests)",
            (project,),
        ).fetchall()
    db.close()
    return {ref: (line, body, status) for ref, line, body, status in rows}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EDGE_EXPECTED))
def test_edge_input_loads_with_right_lines(name: str, base_ledger, tmp_path: Path) -> None:
    ledger = copy_ledger(base_ledger, tmp_path)
    result = CliRunner().invoke(cli, ["load", str(EDGE / name), *LOAD_OPTS, "--ledger", str(ledger)])
    assert result.exit_code == 0, result.output
    assert result.exception is None
    expected = EDGE_EXPECTED[name]
    rows = "1 row" if len(expected) == 1 else f"{len(expected)} rows"
    assert f"{rows}: {len(expected)} new" in result.stdout
    jobs = jobs_in(ledger)
    assert {ref: line for ref, (line, _, _) in jobs.items()} == expected
    for ref, (_, body, status) in jobs.items():
        assert status == "pending"
        assert json.loads(body)["reference_id"] == ref  # verbatim text, whatever it looks like
    for fmt in ("csv", "jsonl", "parquet"):  # and whatever the extra columns hold, every export works
        out = tmp_path / f"out.{fmt}"
        exported = CliRunner().invoke(cli, ["export", "--ledger", str(ledger), "-o", str(out)])
        assert exported.exit_code == 0 and f"wrote {12 + len(expected)} rows" in exported.stderr, exported.output


@pytest.mark.slow
def test_huge_data_cell_is_kept_exactly_and_the_api_refusal_is_clear(base_ledger, tmp_path: Path) -> None:
    """A 10 MB `data` object loads (the manifest has no size limit of its own) and goes to the ledger
    unchanged; the API refuses a body that large, and that is a clear per-row failure, not a crash."""
    from uploader.sandbox import Sandbox, SandboxConfig

    ledger = copy_ledger(base_ledger, tmp_path)
    with Sandbox(SandboxConfig(api_key="k")) as box:
        result = CliRunner().invoke(
            cli,
            [
                "run",
                str(EDGE / "huge_data_cell.csv"),
                *LOAD_OPTS,
                "--ledger",
                str(ledger),
                "--base-url",
                box.base_url,
                "--api-key",
                "k",
                "--quiet",
            ],
        )
    assert result.exit_code == 3, result.output  # finished, some rows failed
    assert "Traceback" not in result.output
    ((line, body, status),) = jobs_in(ledger).values()
    assert status == "failed" and json.loads(body)["data"] == {"blob": "d" * (10 * 1024 * 1024)}
    exported = CliRunner().invoke(cli, ["export", "--ledger", str(ledger), "--format", "jsonl", "--status", "failed"])
    (row,) = map(json.loads, exported.stdout.splitlines())
    assert row["error_code"] == "GE_0001" and "too large" in row["error_message"]


def test_formula_cells_load_verbatim_and_csv_export_neutralises_them(base_ledger, tmp_path: Path) -> None:
    """`=HYPERLINK(...)` is a fine reference_id (text, sent as is): every export keeps it verbatim, so the
    mapping matches the manifest; a spreadsheet opening the CSV would run it, so `--spreadsheet-safe`
    prefixes such cells with a quote. JSONL and Parquet keep them verbatim."""
    import pyarrow.parquet as pq

    ledger = copy_ledger(base_ledger, tmp_path)
    assert (
        CliRunner()
        .invoke(cli, ["load", str(EDGE / "formula_reference_id.csv"), *LOAD_OPTS, "--ledger", str(ledger)])
        .exit_code
        == 0
    )
    formula = '=HYPERLINK("http://evil.example/","click")'
    raw = {formula: "=1+2", "+cmd": "@SUM(A1)", "-3": "cam0"}  # reference_id -> camera (an extra column)

    verbatim = CliRunner().invoke(cli, ["export", "--ledger", str(ledger)]).stdout
    rows = [r for r in csv.DictReader(io.StringIO(verbatim)) if r["reference_id"] in raw]
    assert {r["reference_id"]: r["camera"] for r in rows} == raw

    out_csv = tmp_path / "out.csv"
    assert (
        CliRunner().invoke(cli, ["export", "--ledger", str(ledger), "-o", str(out_csv), "--spreadsheet-safe"]).exit_code
        == 0
    )
    stdout = CliRunner().invoke(cli, ["export", "--ledger", str(ledger), "--spreadsheet-safe"]).stdout
    neutralised = {"'" + formula: "'=1+2", "'+cmd": "'@SUM(A1)", "'-3": "cam0"}
    for text in (out_csv.read_text(encoding="utf-8"), stdout):
        rows = [r for r in csv.DictReader(io.StringIO(text)) if r["reference_id"].lstrip("'") in raw]
        assert {r["reference_id"]: r["camera"] for r in rows} == neutralised
        assert not any(cell.startswith(("=", "+", "-", "@")) for r in rows for cell in r.values())

    out_jsonl = tmp_path / "out.jsonl"
    assert CliRunner().invoke(cli, ["export", "--ledger", str(ledger), "-o", str(out_jsonl)]).exit_code == 0
    got = {r["reference_id"]: r["camera"] for r in map(json.loads, out_jsonl.read_text().splitlines())}
    assert {k: got[k] for k in raw} == raw

    out_parquet = tmp_path / "out.parquet"
    assert CliRunner().invoke(cli, ["export", "--ledger", str(ledger), "-o", str(out_parquet)]).exit_code == 0
    table = pq.read_table(out_parquet).to_pylist()
    assert {r["reference_id"]: r["camera"] for r in table if r["reference_id"] in raw} == raw


@pytest.mark.slow
def test_bad_row_after_many_good_rows_leaves_an_existing_empty_ledger_unchanged(tmp_path: Path) -> None:
    """An empty ledger takes the loader's direct path (rows go straight into `jobs`, rolled back on a problem):
    a bad last row, after megabytes of good ones, must still leave the file as it was, and no WAL behind."""
    manifest = tmp_path / "big.csv"
    with open(manifest, "w", encoding="utf-8") as f:
        f.write("reference_id,image_url,note\n")
        f.writelines(f"r{i},https://cdn.example.com/{i}.jpg,{'n' * 200}\n" for i in range(20_000))
        f.write("last,ftp://cdn.example.com/x.jpg,n\n")
    ledger = tmp_path / "empty.db"
    Ledger.open(ledger).close()
    before = ledger.read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPLOADER_")}
    command = [sys.executable, "-m", "uploader", "load", str(manifest), *LOAD_OPTS, "--ledger", str(ledger)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    assert f"{manifest}:20002: column 'image_url'" in done.stderr
    assert ledger.read_bytes() == before and no_wal_writes(ledger)
