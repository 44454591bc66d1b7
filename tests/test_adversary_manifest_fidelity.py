"""Adversarial tests of the promise "what the API receives is exactly what the manifest says", and "bad input gets
a clear error naming the file, line and column, exit 1, no traceback, nothing half-written, nothing sent".

Every case runs the real command (`python -m uploader run MANIFEST …`, `plan`, `export`) as a subprocess against
the built-in sandbox on loopback. The sandbox runs in this process, and its request decoder is wrapped to keep
the raw bytes of every POST it receives, so each created job's body is compared with what the manifest file
says: strings exactly, numbers by their exact decimal value (`Decimal`), key order kept. Tests whose docstring
starts with FINDING fail because the product is wrong: each says what it did versus the truth and why a user
would care.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shlex
import sqlite3
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import uploader.sandbox.app as sandbox_app
import uploader.sandbox.state as sandbox_state
from uploader.sandbox import Sandbox, SandboxConfig

KEY = "fidelity-key-5c1e"
OPTS = ("--project-id", "p", "--work-flow-id", "w")
BOM = "\ufeff"


# --- harness ------------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}


def uploader(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m uploader ARGS` (its output decoded leniently: a surrogate the product prints is still seen)."""
    return subprocess.run(
        [sys.executable, "-m", "uploader", *map(str, args)],
        env=_env(),
        capture_output=True,
        encoding="utf-8",
        errors="backslashreplace",
        timeout=timeout,
    )


def exact(text: str | bytes) -> Any:
    """JSON with every non-integer number as a Decimal of exactly the digits written (no rounding to a float)."""
    return json.loads(text, parse_float=Decimal)


@dataclass
class Api:
    """The sandbox, and the raw bytes of every POST body it received (jobs and batches)."""

    box: Sandbox
    raw: list[bytes] = field(default_factory=list)

    @property
    def args(self) -> tuple[str, ...]:
        return ("--base-url", self.box.base_url, "--api-key", KEY)

    def job_posts(self) -> list[bytes]:
        return [r for r in self.raw if b'"work_flow_id"' in r and b'"reference_id"' in r]

    def sent(self) -> dict[str, Any]:
        """reference_id -> the last job body POSTed for it (batch_id removed), parsed exactly; each body must be
        valid UTF-8."""
        out: dict[str, Any] = {}
        for body in self.job_posts():
            body.decode("utf-8")  # strict: a lone surrogate or a stray byte on the wire fails here
            doc = exact(body)
            doc.pop("batch_id", None)
            out[doc["reference_id"]] = doc
        return out

    def requests(self) -> int:
        return int(self.box.stats()["requests_total"])


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    original = sandbox_state.decode_body
    holder: list[bytes] = []

    def recording(raw: bytes) -> dict[str, Any] | None:
        holder.append(bytes(raw))
        return original(raw)

    monkeypatch.setattr(sandbox_app, "decode_body", recording)
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        yield Api(box, holder)


def run(manifest: Path, ledger: Path, api: Api, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return uploader("run", manifest, *OPTS, "--ledger", ledger, *api.args, *extra, timeout=timeout)


def plan(manifest: Path, ledger: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return uploader("plan", manifest, *OPTS, "--ledger", ledger, "--json", *extra)


def export_jsonl(ledger: Path) -> list[dict[str, Any]]:
    done = uploader("export", "--ledger", ledger, "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    return [exact(line) for line in done.stdout.split("\n") if line]


def dump(ledger: Path) -> str:
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        return "\n".join(db.iterdump())


def _image_csv(path: Path, urls: dict[str, str]) -> Path:
    path.write_text("reference_id,image_url\n" + "".join(f"{r},{u}\n" for r, u in urls.items()))
    return path


def job_body(ref: str, data: dict[str, Any], priority: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"reference_id": ref, "work_flow_id": "w", "data": data}
    if priority is not None:
        body["priority_weight"] = priority
    return body


def ordered(value: Any) -> Any:
    """A JSON value with its objects as lists of pairs, so that comparing two values compares key order too."""
    if isinstance(value, dict):
        return [(k, ordered(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [ordered(v) for v in value]
    return value


def assert_clean_refusal(done: subprocess.CompletedProcess[str], where: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr[-1500:]
    assert done.returncode == 1, f"exit {done.returncode}: {done.stdout[-500:]} {done.stderr[-500:]}"
    assert where in done.stderr, done.stderr[-1500:]


# --- text manifests: encodings, line ends, quoting, odd values ------------------------------------------------

#: (reference_id, image_url, metadata, priority_weight, note) — note is an extra column: never sent, exported.
ODD_ROWS: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("007", "https://cdn.example.com/a.jpg?x=1&y=%20", {"k": "007", "n": 7, "z": None}, "007", "1e5"),
    (unicodedata.normalize("NFC", "café"), "https://cdn.example.com/é.jpg", {"lang": "ünï漢🎉"}, "", "NaN"),
    (unicodedata.normalize("NFD", "café"), "https://cdn.example.com/e\u0301.jpg", {}, "10", "true"),
    ("trail ", "https://cdn.example.com/t.jpg", {"b": False, "nested": {"l": [1, "2", 3.5]}}, "1", " lead"),
    ("zw\u200bsp", "https://cdn.example.com/z.jpg", {"quote": 'say "hi"', "tab": "a\tb"}, "", 'q"uo,te'),
    ("NaN", "https://cdn.example.com/n.jpg", {"sep": "\u2028", "nl": "x\ny"}, "5", "multi\r\nline\nend"),
    ("1e5", "https://cdn.example.com/e.jpg", {"big": 2**70}, "", ""),
    ("true", "https://cdn.example.com/b.jpg", {"z": "Z", "a": "A"}, "", "=1+1"),
]


def _write_text_manifest(path: Path, fmt: str, eol: str) -> None:
    """The ODD_ROWS with a UTF-8 BOM, `eol` line ends and no newline after the last line."""
    if fmt == "jsonl":
        lines = []
        for ref, url, meta, pw, note in ODD_ROWS:
            row: dict[str, Any] = {"reference_id": ref, "image_url": url, "note": note}
            if meta:
                row["metadata"] = meta
            if pw:
                row["priority_weight"] = pw
            lines.append(json.dumps(row, ensure_ascii=False))
        text = eol.join(lines)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t" if fmt == "tsv" else ",", lineterminator=eol)
        writer.writerow(["reference_id", "image_url", "metadata", "priority_weight", "note"])
        for ref, url, meta, pw, note in ODD_ROWS:
            writer.writerow([ref, url, json.dumps(meta, ensure_ascii=False) if meta else "", pw, note])
        text = buffer.getvalue().removesuffix(eol)
    path.write_bytes((BOM + text).encode("utf-8"))


def _odd_expected() -> dict[str, Any]:
    out = {}
    for ref, url, meta, pw, _ in ODD_ROWS:
        data: dict[str, Any] = {"image_url": url}
        if meta:
            data["metadata"] = exact(json.dumps(meta))
        out[ref] = job_body(ref, data, int(pw) if pw else None)
    return out


@pytest.mark.parametrize(
    ("fmt", "eol"),
    [
        ("csv", "\n"),
        ("csv", "\r\n"),
        ("csv", "\r"),
        ("tsv", "\n"),
        ("tsv", "\r\n"),
        ("tsv", "\r"),
        ("jsonl", "\n"),
        ("jsonl", "\r\n"),
        ("jsonl", "\r"),
    ],
    ids=lambda v: {"\n": "LF", "\r\n": "CRLF", "\r": "CR"}.get(v, v),
)
def test_text_manifest_reaches_the_api_exactly(api: Api, tmp_path: Path, fmt: str, eol: str) -> None:
    """A BOM, LF / CRLF / lone-CR line ends and no final newline, in CSV, TSV and JSON Lines; ids `007`, `NaN`,
    `1e5`, `true`, `café` in NFC and in NFD (two jobs), a trailing space, a zero-width space; metadata with
    quotes, tabs, U+2028, a newline, integers beyond 64 bits, key order; an extra column with quoted CR/LF,
    doubled quotes and commas. `plan` predicts every row and the first payload; the API receives each body
    exactly (and nothing of the extra column); `export` gives the extra column back exactly."""
    manifest = tmp_path / f"m.{fmt}"
    _write_text_manifest(manifest, fmt, eol)
    ledger = tmp_path / "l.db"
    expected = _odd_expected()

    planned = plan(manifest, ledger)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    doc = exact(planned.stdout)
    assert (doc["new"], doc["to_send"]) == (len(ODD_ROWS), len(ODD_ROWS))
    assert ordered(doc["first_payload"]) == ordered(expected[ODD_ROWS[0][0]])
    assert not ledger.exists()

    done = run(manifest, ledger, api)
    assert done.returncode == 0, done.stderr
    sent = api.sent()
    assert len(api.job_posts()) == len(ODD_ROWS)
    assert {ref: ordered(body) for ref, body in sent.items()} == {ref: ordered(b) for ref, b in expected.items()}
    assert not any(b"note" in body for body in api.job_posts())  # an extra column is never sent

    exported = export_jsonl(ledger)
    by_ref = {row["reference_id"]: row for row in exported}
    assert {ref: by_ref[ref]["note"] for ref, *_ in ODD_ROWS} == {ref: note for ref, *_, note in ODD_ROWS}
    assert {r["reference_id"]: r["job_id"] for r in exported} == {
        j["reference_id"]: j["job_id"] for j in api.box.jobs()
    }


def test_unicode_lookalike_reference_ids_are_distinct_jobs_and_a_rerun_sends_nothing(api: Api, tmp_path: Path) -> None:
    """NFC and NFD `é`, `A1` and `a1`, `x` and `x ` (trailing space), `y` and `y<ZWSP>`, a BOM inside an id: each
    written id is its own job, created once under exactly its own bytes, and a rerun of the same manifest (and a
    `plan` of it) sends nothing."""
    refs = ["\u00e9", "e\u0301", "A1", "a1", "x", "x ", "y", "y\u200b", "in\ufeffside"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"reference_id": r, "image_url": f"https://cdn.example.com/{i}.jpg"}, ensure_ascii=False) + "\n"
            for i, r in enumerate(refs)
        ),
        encoding="utf-8",
    )
    ledger = tmp_path / "l.db"
    assert run(manifest, ledger, api).returncode == 0
    assert sorted(j["reference_id"] for j in api.box.jobs()) == sorted(refs)
    assert api.box.stats()["jobs_created_per_reference_id_max"] == 1
    before = api.requests()
    again = plan(manifest, ledger)
    assert again.returncode == 0 and exact(again.stdout)["to_send"] == 0, again.stdout
    assert run(manifest, ledger, api).returncode == 0
    assert api.requests() == before
    assert sorted(r["reference_id"] for r in export_jsonl(ledger)) == sorted(refs)


# --- bad text and Parquet input: one clear error, nothing sent, nothing written --------------------------------


def _bad_cases(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (manifest, the location its error must name). Each file has good rows before the bad one."""
    good = "r0,https://cdn.example.com/0.jpg\n"
    cases: dict[str, tuple[bytes, str]] = {
        "latin1.csv": (
            f"reference_id,image_url\n{good}".encode() + b"r1,https://cdn.example.com/caf\xe9.jpg\n",
            ":3: column 'image_url'",
        ),
        "nul.tsv": (
            b"reference_id\timage_url\nr0\thttps://cdn.example.com/0.jpg\nr\x001\thttps://cdn.example.com/1.jpg\n",
            ":3: column 'reference_id'",
        ),
        "utf16.tsv": (
            "reference_id\timage_url\nr0\thttps://cdn.example.com/0.jpg\n".encode("utf-16"),
            "utf16.tsv: file is UTF-16",
        ),
        "unterminated.csv": (
            f'reference_id,image_url,note\n{good[:-1]},x\nr1,https://cdn.example.com/1.jpg,"open\n'.encode(),
            ":3",
        ),
        "ragged.csv": (f"reference_id,image_url\n{good}r1,https://cdn.example.com/1.jpg,extra\n".encode(), ":3"),
        "surrogate.jsonl": (
            b'{"reference_id":"r0","image_url":"https://cdn.example.com/0.jpg"}\n'
            b'{"reference_id":"r1","image_url":"https://cdn.example.com/\\ud800.jpg"}\n',
            ":2",
        ),
        "array_line.jsonl": (b'{"reference_id":"r0","image_url":"https://cdn.example.com/0.jpg"}\n\n[1,2]\n', ":3"),
        "deep.jsonl": (
            b'{"reference_id":"r0","image_url":"https://cdn.example.com/0.jpg"}\n'
            + b'{"reference_id":"r1","data":'
            + b'{"a":' * 10_000
            + b"1"
            + b"}" * 10_000
            + b"}\n",
            ":2",
        ),
        "dup_key_in_data.csv": (
            b'reference_id,data\nr0,"{""image_url"":""https://c.example/0.jpg""}"\n'
            b'r1,"{""image_url"":""https://c.example/1.jpg"",""k"":1,""k"":2}"\n',
            ":3: column 'data'",
        ),
        "nan_literal.jsonl": (
            b'{"reference_id":"r0","image_url":"https://c.example/0.jpg"}\n'
            b'{"reference_id":"r1","image_url":"https://c.example/1.jpg","metadata":{"v":NaN}}\n',
            ":2",
        ),
        "frames_empty.jsonl": (
            b'{"reference_id":"v0","frames":[{"frame_id":"f","src":"https://cdn.example.com/f.jpg"}]}\n'
            b'{"reference_id":"v1","frames":[]}\n',
            ":2: column 'frames'",
        ),
    }
    out = {}
    for name, (content, where) in cases.items():
        path = folder / name
        path.write_bytes(content)
        out[name] = (path, f"{path}{where}" if where.startswith(":") else where)
    t = pa.table(
        {"reference_id": pa.array(["a", "b", None, "d"]), "image_url": [f"https://c.example/{i}" for i in range(4)]}
    )
    pq.write_table(t, folder / "null_ref.parquet", row_group_size=2)  # the null is the first row of group 2
    out["null_ref.parquet"] = (
        folder / "null_ref.parquet",
        f"{folder / 'null_ref.parquet'}: row 2: column 'reference_id'",
    )
    pq.write_table(t.slice(0, 0), folder / "zero_rows.parquet")
    out["zero_rows.parquet"] = (
        folder / "zero_rows.parquet",
        "zero_rows.parquet: the Parquet file has columns but no rows",
    )
    return out


BAD_NAMES = [
    "latin1.csv",
    "nul.tsv",
    "utf16.tsv",
    "unterminated.csv",
    "ragged.csv",
    "surrogate.jsonl",
    "array_line.jsonl",
    "deep.jsonl",
    "dup_key_in_data.csv",
    "nan_literal.jsonl",
    "frames_empty.jsonl",
    "null_ref.parquet",
    "zero_rows.parquet",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_manifest_run_names_the_place_sends_nothing_and_leaves_no_ledger(
    api: Api, tmp_path: Path, name: str
) -> None:
    """Latin-1 bytes, a NUL, UTF-16, an unterminated quote, a ragged row, a lone surrogate escape, a top-level
    array after a blank line, nesting 10,000 deep, a key given twice inside a `data` cell, a `NaN` literal, an
    empty frame list, a null reference_id in the second row
    group of a Parquet file, a Parquet file of zero rows: `uploader run` exits 1 with the file, line (Parquet:
    row) and column, no traceback, sends nothing (not even the good rows before), and leaves no ledger file."""
    manifest, where = _bad_cases(tmp_path)[name]
    ledger = tmp_path / "l.db"
    done = run(manifest, ledger, api)
    assert_clean_refusal(done, where)
    assert api.requests() == 0 and api.box.jobs() == []
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("l.db")]


def test_bad_manifest_run_does_not_send_the_pending_rows_already_in_the_ledger(api: Api, tmp_path: Path) -> None:
    """A ledger holds two pending rows (loaded, never sent). `uploader run BAD.csv` (a Latin-1 byte on line 3)
    stops at the manifest: exit 1 naming line and column, no request at all, the ledger's content unchanged."""
    ledger = tmp_path / "l.db"
    good = tmp_path / "good.csv"
    good.write_text("reference_id,image_url\ng1,https://cdn.example.com/1.jpg\ng2,https://cdn.example.com/2.jpg\n")
    assert uploader("load", good, *OPTS, "--ledger", ledger).returncode == 0
    before = dump(ledger)
    manifest, where = _bad_cases(tmp_path)["latin1.csv"]
    done = run(manifest, ledger, api)
    assert_clean_refusal(done, where)
    assert api.requests() == 0
    assert dump(ledger) == before


def test_manifest_whose_file_name_is_not_utf8_loads_or_is_refused_cleanly(api: Api, tmp_path: Path) -> None:
    """A manifest whose file name is not UTF-8 (`caf\\xe9.csv`, as a Windows zip or an old share leaves it;
    Python sees it with a surrogate escape), in a folder whose name is not UTF-8 either, loads and is sent like
    any other: the ledger records its path with the bytes escaped (uploader/ledger/loading.py:
    manifest_path_text), where it once died with a traceback (UnicodeEncodeError: surrogates not allowed) and
    left a new, empty ledger file behind. (A clean refusal, one error line naming the file, exit 1 and no
    ledger left, would also do.)"""
    folder = tmp_path / os.fsdecode(b"d\xe9p\xf4t")
    folder.mkdir()
    manifest = folder / os.fsdecode(b"caf\xe9.csv")
    manifest.write_text("reference_id,image_url\nr1,https://cdn.example.com/1.jpg\n")
    ledger = tmp_path / "l.db"
    done = run(manifest, ledger, api)
    assert "Traceback" not in done.stderr, done.stderr[-700:]
    if done.returncode == 0:
        assert [j["reference_id"] for j in api.box.jobs()] == ["r1"]
    else:
        assert done.returncode == 1 and "caf" in done.stderr, done.stderr
        assert not ledger.exists(), "a failed first command left its new ledger file behind"


def test_json_error_for_a_manifest_with_a_lone_surrogate_key_is_one_document(api: Api, tmp_path: Path) -> None:
    """Fixed. A JSON Lines file whose only key is the escape `\\ud800` (a broken export) fits no shape. Without
    `--json` the error is one line. With `--json` (what scripts use) `uploader run` dies with a traceback:
    emit_error (uploader/cli/app.py:91-97) prints `json.dumps(…, ensure_ascii=False)` to stdout, which cannot
    encode the lone surrogate that _no_shape (uploader/manifest/columns.py) copied from the key into the
    message. The program reading stdout gets no JSON document at all."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"\\ud800": "x"}\n', encoding="utf-8")
    done = uploader("run", manifest, *OPTS, "--ledger", tmp_path / "l.db", *api.args, "--json")
    assert "Traceback" not in done.stderr, done.stderr[-900:]
    assert done.returncode == 1
    assert json.loads(done.stdout)["exit"] == 1


@pytest.mark.parametrize(
    "header",
    ["\u200breference_id", BOM + "reference_id", "reference_id\u00a0"],
    ids=["zero-width-space", "second-BOM", "no-break-space"],
)
def test_a_header_name_with_an_invisible_character_is_shown_visibly(api: Api, tmp_path: Path, header: str) -> None:
    """Fixed. A header name copied from a web page or a spreadsheet, `<ZWSP>reference_id` or
    `reference_id<NBSP>`, or a second BOM (a file saved with a BOM twice): the error says the image manifest is
    "missing reference_id" and lists "found columns: reference_id, image_url" with the name printed raw, so the
    user sees the very column it says is missing (uploader/manifest/columns.py:138, _no_shape joins the names
    as they are, where every other message quotes values with `show`, i.e. repr). Expected: the name shown so
    that the odd character is visible (quoted and escaped, or named as U+200B / U+FEFF / U+00A0)."""
    manifest = tmp_path / "m.csv"
    manifest.write_bytes((BOM + f"{header},image_url\nr1,https://cdn.example.com/1.jpg\n").encode())
    done = run(manifest, tmp_path / "l.db", api)
    assert_clean_refusal(done, "m.csv")
    assert api.requests() == 0
    odd = next(c for c in header if not c.isascii())
    visible = {repr(header), ascii(header), json.dumps(header), f"U+{ord(odd):04X}", f"\\u{ord(odd):04x}"}
    assert any(v in done.stderr for v in visible), done.stderr


def test_a_manifest_given_as_a_pipe_is_read_or_refused_truthfully(api: Api, tmp_path: Path) -> None:
    """Fixed. `uploader run <(zcat m.csv.gz) --format csv` (process substitution: the manifest is the pipe
    /dev/fd/63; `/dev/stdin` fed by a pipe is the same) says "error: /dev/fd/63: file is empty" and exits 1.
    The manifest is opened several times and a pipe can be read only once: `run` first hashes the whole file
    on a thread (uploader/cli/commands.py:731-733, _start_early -> prefetch_sha256, uploader/load/digest.py),
    which drains the pipe; then Manifest (uploader/manifest/formats.py: sniff_start, reader.py:
    _read_columns) opens it again and finds nothing. Only `-` is spooled to a temporary file
    (uploader/cli/stdin.py: spooled_manifest). The rows were there; the message says they were not. Expected:
    the pipe read once like `-` and its 3 rows sent, or an error saying it is a pipe and to pass `-`."""
    manifest = _image_csv(tmp_path / "m.csv", {k: f"https://c.example/{k}.jpg" for k in ("a", "b", "c")})
    command = " ".join(
        shlex.quote(str(a))
        for a in (
            sys.executable,
            "-m",
            "uploader",
            "run",
            "--format",
            "csv",
            *OPTS,
            "--ledger",
            tmp_path / "l.db",
            *api.args,
        )
    )
    done = subprocess.run(
        ["bash", "-c", f"{command} <(cat {shlex.quote(str(manifest))})"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in done.stderr, done.stderr[-500:]
    if done.returncode == 0:
        assert sorted(api.sent()) == ["a", "b", "c"]
    else:
        assert "file is empty" not in done.stderr, done.stderr


@pytest.mark.slow
def test_a_named_fifo_manifest_does_not_hang(api: Api, tmp_path: Path) -> None:
    """Fixed. A manifest that is a named FIFO (`mkfifo m.csv; producer > m.csv & uploader run m.csv`) makes
    `uploader run` hang for good: the first of its several opens (the hash of _start_early, then sniff_start
    in uploader/manifest/formats.py) takes the producer's data, and a later open waits forever for a writer
    that has already left. No message, no exit. Expected: the FIFO read once (spooled as `-` is) and its rows
    sent, or a refusal at once."""
    fifo = tmp_path / "m.csv"
    os.mkfifo(fifo)
    content = b"reference_id,image_url\na,https://c.example/a.jpg\n"

    def produce() -> None:
        with open(fifo, "wb") as out:
            out.write(content)

    writer = threading.Thread(target=produce, daemon=True)
    writer.start()
    try:
        done = run(fifo, tmp_path / "l.db", api, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("`uploader run FIFO` still waiting after 10 s (killed)")
    finally:
        with contextlib.suppress(OSError):  # release a writer still waiting for a reader
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(timeout=5)
    assert "Traceback" not in done.stderr
    assert done.returncode == 0 and list(api.sent()) == ["a"], done.stderr


def test_stdin_manifest_is_sniffed_and_sent_exactly(api: Api, tmp_path: Path) -> None:
    """`uploader run -` with a BOM + CRLF TSV on standard input whose values hold commas: sniffed as TSV (its
    header has tabs and no comma), each value reaches the API exactly, and errors name `<stdin>`."""
    tsv = (BOM + "reference_id\timage_url\tnote\r\na,b\thttps://c.example/a.jpg?x=1,2\tx, y\r\n").encode()
    done = subprocess.run(
        [sys.executable, "-m", "uploader", "run", "-", *OPTS, "--ledger", str(tmp_path / "l.db"), *api.args],
        input=tsv,
        env=_env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert api.sent() == {"a,b": job_body("a,b", {"image_url": "https://c.example/a.jpg?x=1,2"})}
    bad = subprocess.run(
        [sys.executable, "-m", "uploader", "run", "-", *OPTS, "--ledger", str(tmp_path / "l2.db"), *api.args],
        input=b"reference_id,image_url\nz,ftp://c.example/z.jpg\n",
        env=_env(),
        capture_output=True,
        timeout=60,
    )
    assert bad.returncode == 1 and b"<stdin>:2: column 'image_url'" in bad.stderr, bad.stderr


def test_stdin_tsv_with_lone_cr_line_ends_is_sniffed_as_tsv(api: Api, tmp_path: Path) -> None:
    """Fixed. The same TSV with lone-CR line ends (classic Mac; the readers accept them: "LF, CRLF and lone
    CR all end a line") piped to `uploader run -` is sniffed as CSV, because uploader/cli/stdin.py:
    sniff_format takes the header as everything up to the first LF — here the whole input — and finds the
    comma of a value in it. The run then fails with "the columns fit no manifest shape. found columns:
    reference_id<TAB>image_url<TAB>note". The same bytes in a file named .tsv load. Expected: sniffed as TSV
    and sent."""
    tsv = b"reference_id\timage_url\tnote\ra\thttps://c.example/a.jpg\tx, y\r"
    done = subprocess.run(
        [sys.executable, "-m", "uploader", "run", "-", *OPTS, "--ledger", str(tmp_path / "l.db"), *api.args],
        input=tsv,
        env=_env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert list(api.sent()) == ["a"]


# --- JSON numbers ------------------------------------------------------------------------------------------


def test_json_numbers_keep_their_value_on_the_way_to_the_api(api: Api, tmp_path: Path) -> None:
    """Fixed (refused, naming the line). README: `data` is "a JSON object, sent unchanged". A JSON Lines `data` holding
    `1.00000000000000001`, `9007199254740993.0`, `1e-400` and `0.1000000000000000000001` reaches the API as
    `1.0`, `9007199254740992.0`, `0.0` and `0.1`: the loader parses numbers into binary floats
    (uploader/manifest/values.py:82, _decode_strict has no parse_float) and writes the rounded float back. `1e400`
    is refused with its line ("contains NaN or an infinite number"), but `1e-400` silently becomes zero and a
    17-digit number silently changes. The same happens to a CSV `data`/`metadata` cell, and `export` gives an
    extra column's `1e-400` back as `0.0`. A measurement or a large float id in the job's data is not what the
    manifest said. Expected: every number sent with its exact value (its digits kept), or a refusal naming the
    line and column."""
    numbers = ["1.00000000000000001", "9007199254740993.0", "1e-400", "0.1000000000000000000001"]
    manifest = tmp_path / "m.jsonl"
    data = '{"image_url":"https://cdn.example.com/1.jpg","v":[' + ",".join(numbers) + "]}"
    ok = '{"reference_id":"r0","data":{"image_url":"https://cdn.example.com/0.jpg"}}\n'
    manifest.write_text(ok + '{"reference_id":"r1","data":' + data + "}\n", encoding="utf-8")
    done = run(manifest, tmp_path / "l.db", api)
    if done.returncode == 1:  # a refusal is acceptable when it names the place
        assert_clean_refusal(done, f"{manifest}:2")
        return
    assert done.returncode == 0, done.stderr
    got = api.sent()["r1"]["data"]["v"]
    assert got == [Decimal(n) for n in numbers], f"manifest says {numbers}; the API received {got}"


def test_json_integers_and_float_forms_are_sent_exactly(api: Api, tmp_path: Path) -> None:
    """Integers beyond 2^53, 2^64 and negative 2^70 stay exact; `1` stays an integer and `1.0` a float; `-0.0`
    keeps its sign; `1e5` is sent as the number 100000. In `data` (JSON Lines) and in a CSV `metadata` cell."""
    values = "[9007199254740993,18446744073709551617,-1180591620717411303424,1,1.0,-0.0,1e5,0.5]"
    want = [2**53 + 1, 2**64 + 1, -(2**70), 1, Decimal("1.0"), Decimal("-0.0"), Decimal("1e5"), Decimal("0.5")]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"reference_id":"j","data":{"image_url":"https://c.example/j.jpg","v":' + values + "}}\n")
    table = tmp_path / "m.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(
            [["reference_id", "image_url", "metadata"], ["c", "https://c.example/c.jpg", '{"v":' + values + "}"]]
        )
    assert run(jsonl, tmp_path / "l.db", api).returncode == 0
    assert run(table, tmp_path / "l.db", api).returncode == 0
    sent = api.sent()
    for got in (sent["j"]["data"]["v"], sent["c"]["data"]["metadata"]["v"]):
        assert got == want
        assert [type(v) for v in got] == [type(v) for v in want]  # 1 is no float, 1.0 no integer
        assert str(got[5]) == "-0.0"


def test_jsonl_integer_reference_ids_become_their_decimal_text(api: Api, tmp_path: Path) -> None:
    """A JSON Lines reference_id written as an integer beyond 2^64 is sent as its exact decimal text; the
    integer `7` and the string `"7"` are the same id, refused as a duplicate with both lines named; nothing is
    sent."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"reference_id":18446744073709551617,"image_url":"https://c.example/1.jpg"}\n')
    assert run(manifest, tmp_path / "l.db", api).returncode == 0
    assert list(api.sent()) == ["18446744073709551617"]
    dup = tmp_path / "dup.jsonl"
    dup.write_text(
        '{"reference_id":7,"image_url":"https://c.example/1.jpg"}\n{"reference_id":"7","image_url":"https://c.example/2.jpg"}\n'
    )
    done = run(dup, tmp_path / "other.db", api)
    assert_clean_refusal(done, f"{dup}:2: column 'reference_id'")
    assert "first on line 1" in done.stderr
    assert len(api.job_posts()) == 1


def test_a_data_or_metadata_key_named_batch_id_is_sent_unchanged(api: Api, tmp_path: Path) -> None:
    """The run adds its batch_id to each body; a body that already says `"batch_id"` somewhere (here inside
    `data.metadata` and as a key of `data`) is re-encoded on that path (uploader/send/submit.py:
    body_for_send). The job still gets exactly the manifest's data: key order, unicode, U+2028, big integers
    and floats as loaded, and the run's batch at the top."""
    data = {
        "image_url": "https://c.example/1.jpg",
        "batch_id": "not-the-batch",
        "metadata": {"batch_id": "mine", "ü": "\u2028", "n": 2**65, "f": 0.1, "z": -0.0},
    }
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"reference_id": "r", "data": data}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert run(manifest, tmp_path / "l.db", api, "--batch-name", "fidelity").returncode == 0
    (raw,) = api.job_posts()
    top = exact(raw)
    assert set(top) == {"batch_id", "reference_id", "work_flow_id", "data"}
    assert ordered(top["data"]) == ordered(exact(json.dumps(data)))
    (job,) = api.box.jobs()
    assert top["batch_id"] == job["batch_id"]


# --- Parquet -----------------------------------------------------------------------------------------------


def test_parquet_column_types_reach_the_api_and_the_export_exactly(api: Api, tmp_path: Path) -> None:
    """Dictionary-encoded ids, large_string URLs, a work_flow_id column, an int64 `priority_weight`, a struct
    `metadata` holding an int64 beyond 2^53 and a list; extra columns of a UTC-offset timestamp, a decimal, an
    int64 beyond 2^53, all nulls and a nested list; five rows in row groups of two: every body exact, every
    extra back from `export` with its value."""
    n = 5
    table = pa.table(
        {
            "reference_id": pa.array([f"0{i}" for i in range(n)]).dictionary_encode(),
            "image_url": pa.array([f"https://c.example/{i}.jpg" for i in range(n)], pa.large_string()),
            "work_flow_id": pa.array([f"wf-{i}" for i in range(n)]),
            "priority_weight": pa.array([1, 2, None, 9, 10], pa.int64()),
            "metadata": pa.array([{"id": 2**53 + i, "tags": ["a", "b"][: i % 3]} for i in range(n)]),
            "seen": pa.array([1_767_225_600_000_000 + i for i in range(n)], pa.timestamp("us", tz="+05:30")),
            "price": pa.array(
                [Decimal("1.10"), Decimal("-2.50"), None, Decimal("0.00"), Decimal("9.99")], pa.decimal128(6, 2)
            ),
            "big": pa.array([2**63 - 1, -(2**63), 2**53 + 1, 0, None], pa.int64()),
            "nothing": pa.array([None] * n, pa.null()),
            "boxes": pa.array([[[1, 2]], [], None, [[3]], [[4, 5], [6]]], pa.list_(pa.list_(pa.int64()))),
        }
    )
    manifest = tmp_path / "m.parquet"
    pq.write_table(table, manifest, row_group_size=2)
    ledger = tmp_path / "l.db"
    done = run(manifest, ledger, api)
    assert done.returncode == 0, done.stderr
    rows = table.to_pylist()
    want = {}
    for r in rows:
        body = {
            "reference_id": r["reference_id"],
            "work_flow_id": r["work_flow_id"],
            "data": {"image_url": r["image_url"], "metadata": r["metadata"]},
        }
        if r["priority_weight"] is not None:
            body["priority_weight"] = r["priority_weight"]
        want[r["reference_id"]] = ordered(body)
    assert {ref: ordered(b) for ref, b in api.sent().items()} == want
    exported = {e["reference_id"]: e for e in export_jsonl(ledger)}
    for r in rows:
        e = exported[r["reference_id"]]
        assert e["big"] == r["big"] and e["nothing"] is None and e["boxes"] == r["boxes"]
        assert e["price"] == (None if r["price"] is None else str(r["price"]))
        assert e["seen"] == r["seen"].isoformat()


@pytest.mark.parametrize("column", ["reference_id", "image_url"])
def test_parquet_string_view_column_is_read_as_text(api: Api, tmp_path: Path, column: str) -> None:
    """A Parquet manifest whose `reference_id` or `image_url` column is Arrow's `string_view` (pyarrow keeps
    that type in the file's schema; Arrow-native writers such as polars use view strings) is read as text:
    the rows are sent with the column's values. (uploader/manifest/formats.py: _parquet_cells casts a view
    column to a plain one per batch; `pc.fill_null` has no string_view kernel and once died with a
    traceback.)"""
    values = {"reference_id": ["a", "b"], "image_url": ["https://c.example/a.jpg", "https://c.example/b.jpg"]}
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({**values, column: pa.array(values[column], pa.string_view())}), manifest)
    done = run(manifest, tmp_path / "l.db", api)
    assert "Traceback" not in done.stderr, done.stderr[-300:]
    assert done.returncode == 0, done.stderr
    assert {r: b["data"]["image_url"] for r, b in api.sent().items()} == dict(zip(*values.values()))


def test_parquet_double_column_with_a_nan_keeps_its_type_in_a_parquet_export(api: Api, tmp_path: Path) -> None:
    """FINDING. README: "a Parquet … number … is one again in JSON Lines and Parquet". A Parquet manifest's
    float64 `score` column [1.5, NaN, -0.0] (NaN is an ordinary double in Parquet, written by Spark or polars
    for "not a number") comes back from `export --format parquet` as a *string* column ['1.5', 'nan', '-0.0']:
    uploader/manifest/values.py: cell_value turns the NaN into the text "nan" for the JSON the ledger keeps,
    and the export then sees a column mixing numbers and text, so every value of the column loses its type.
    A user reading the export with pandas gets an object column of strings. Expected: a double column holding
    1.5, NaN and -0.0."""
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "reference_id": ["a", "b", "c"],
                "image_url": [f"https://c.example/{i}" for i in range(3)],
                "score": pa.array([1.5, float("nan"), -0.0]),
            }
        ),
        manifest,
    )
    ledger = tmp_path / "l.db"
    assert run(manifest, ledger, api).returncode == 0
    out = tmp_path / "out.parquet"
    assert uploader("export", "--ledger", ledger, "-o", out).returncode == 0
    score = pq.read_table(out).column("score")
    assert str(score.type) == "double", f"exported as {score.type}: {score.to_pylist()}"
    got = score.to_pylist()
    assert got[0] == 1.5 and math.isnan(got[1]) and got[2] == 0.0 and math.copysign(1, got[2]) == -1
    # JSON has no NaN: JSON Lines says null (every line valid JSON); CSV writes NaN, which readers take as one
    lines = uploader("export", "--ledger", ledger, "--format", "jsonl").stdout.splitlines()
    assert [json.loads(x, parse_constant=lambda c: pytest.fail(c))["score"] for x in lines] == [1.5, None, -0.0]
    rows = list(csv.DictReader(io.StringIO(uploader("export", "--ledger", ledger).stdout)))
    assert [r["score"] for r in rows] == ["1.5", "NaN", "-0.0"]


# --- video -------------------------------------------------------------------------------------------------


def test_wide_video_frames_are_sent_in_order_as_written(api: Api, tmp_path: Path) -> None:
    """Wide-form videos: one frame; the same image URL for several frames; 3,000 frames; extra keys in a frame
    object kept: each `frames` list reaches the API exactly and in order."""
    videos = {
        "one": [{"frame_id": "f0", "src": "https://c.example/only.jpg"}],
        "dup-src": [{"frame_id": f"f{i}", "src": "https://c.example/same.jpg"} for i in range(4)],
        "long": [{"frame_id": f"{i:05d}", "src": f"https://c.example/v/{i}.jpg"} for i in range(3000)],
        "keys": [{"src": "https://c.example/k.jpg", "frame_id": "k", "t": 0.04, "extra": {"a": [1]}}],
    }
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"reference_id": r, "frames": f}) + "\n" for r, f in videos.items()))
    assert run(manifest, tmp_path / "l.db", api).returncode == 0
    sent = api.sent()
    for ref, frames in videos.items():
        assert ordered(sent[ref]["data"]) == ordered({"video_data": {"frames": exact(json.dumps(frames))}}), ref


def test_long_video_frames_go_in_frame_index_order(api: Api, tmp_path: Path) -> None:
    """Long-form video rows interleaved across two videos, out of order, with `frame_index` (`007` and `7` would
    be one index: here 2, 10, 1) and frame_ids `007`, `1e5`: the frames are sent grouped per video, in index
    order, with their ids as written."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "reference_id,frame_id,src,frame_index\n"
        "v1,007,https://c.example/v1/b.jpg,2\n"
        "v2,x,https://c.example/v2/x.jpg,0\n"
        "v1,1e5,https://c.example/v1/c.jpg,10\n"
        "v1,NaN,https://c.example/v1/a.jpg,1\n"
    )
    assert run(manifest, tmp_path / "l.db", api).returncode == 0
    frames = {ref: body["data"]["video_data"]["frames"] for ref, body in api.sent().items()}
    assert frames["v1"] == [
        {"frame_id": "NaN", "src": "https://c.example/v1/a.jpg"},
        {"frame_id": "007", "src": "https://c.example/v1/b.jpg"},
        {"frame_id": "1e5", "src": "https://c.example/v1/c.jpg"},
    ]
    assert frames["v2"] == [{"frame_id": "x", "src": "https://c.example/v2/x.jpg"}]


def test_long_video_per_frame_extra_values_are_not_silently_dropped(api: Api, tmp_path: Path) -> None:
    """A long-form video manifest with a per-frame extra column (`ts`: each frame's timestamp) whose values
    differ between the frames of one video is refused where the frames disagree (line and column, exit 1,
    nothing loaded), as it is for metadata: a job keeps one set of extras, so loading it would silently drop
    the other frames' values (README: "Any other column is kept in the ledger and comes back in export").
    uploader/manifest/frames.py: _video_ok checks the extra columns too. (Keeping every frame's values would
    also do.)"""
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "reference_id,frame_id,src,frame_index,ts\n"
        "v1,b,https://c.example/v1/b.jpg,2,0.2\n"
        "v1,a,https://c.example/v1/a.jpg,1,0.1\n"
        "v1,c,https://c.example/v1/c.jpg,3,1.0\n"
    )
    ledger = tmp_path / "l.db"
    done = run(manifest, ledger, api)
    if done.returncode == 1:
        assert_clean_refusal(done, f"{manifest}:3: column 'ts'")
        return
    assert done.returncode == 0, done.stderr
    (row,) = export_jsonl(ledger)
    kept = json.dumps(row["ts"])
    assert all(v in kept for v in ("0.1", "0.2", "1.0")), f"three frames' ts 0.2, 0.1, 1.0; export keeps {kept}"


# --- reloads, plan versus run ------------------------------------------------------------------------------


def test_edited_manifest_sends_only_the_changed_pending_row_with_its_new_payload(api: Api, tmp_path: Path) -> None:
    """Loaded twice (the second load is a no-op), edited (one pending row's URL changed), planned, run: `plan`
    says 1 changed and 3 to send; the load says 1 updated; the API receives each row once, the changed row
    with the new URL; a rerun sends nothing."""
    ledger = tmp_path / "l.db"
    m = _image_csv(
        tmp_path / "m.csv",
        {"a": "https://c.example/a.jpg", "b": "https://c.example/OLD.jpg", "c": "https://c.example/c.jpg"},
    )
    assert uploader("load", m, *OPTS, "--ledger", ledger).returncode == 0
    again = uploader("load", m, *OPTS, "--ledger", ledger)
    assert again.returncode == 0 and "already loaded" in again.stdout, again.stdout
    _image_csv(m, {"a": "https://c.example/a.jpg", "b": "https://c.example/NEW.jpg", "c": "https://c.example/c.jpg"})
    planned = exact(plan(m, ledger).stdout)
    assert (planned["changed"], planned["unchanged"], planned["to_send"]) == (1, 2, 3)
    done = run(m, ledger, api)
    assert done.returncode == 0 and "1 updated" in done.stdout, done.stdout
    assert {r: b["data"]["image_url"] for r, b in api.sent().items()} == {
        "a": "https://c.example/a.jpg",
        "b": "https://c.example/NEW.jpg",
        "c": "https://c.example/c.jpg",
    }
    assert len(api.job_posts()) == 3
    before = api.requests()
    assert run(m, ledger, api).returncode == 0 and api.requests() == before


def test_run_that_holds_back_a_changed_sent_row_exits_3_as_plan_says(api: Api, tmp_path: Path) -> None:
    """Fixed. Row `b` was created with OLD.jpg; the manifest is edited to NEW.jpg and a row `d` added. `plan`
    says "held back: 1 in conflict" and exits 3. `uploader run` then does hold `b` back ("1 conflicting …
    left unchanged (not sent again)" on stderr), sends only `d` — and exits 0, as if every job matched the
    manifest: uploader/cli/commands.py (run, lines 709-717) decides the exit code from the ledger's row states
    only, and `b` stays `succeeded`. README's exit code 3 is for a run where rows "are in conflict (their job
    may hold other data than the manifest says)" — exactly `b`. A pipeline `uploader run m.csv && publish`
    goes on with a job whose image is not the manifest's; `plan` and `run` disagree on the same situation."""
    ledger = tmp_path / "l.db"
    m = _image_csv(tmp_path / "m.csv", {"a": "https://c.example/a.jpg", "b": "https://c.example/OLD.jpg"})
    assert run(m, ledger, api).returncode == 0
    _image_csv(m, {"a": "https://c.example/a.jpg", "b": "https://c.example/NEW.jpg", "d": "https://c.example/d.jpg"})
    planned = plan(m, ledger)
    assert planned.returncode == 3 and exact(planned.stdout)["conflicts"] == 1, planned.stdout
    done = run(m, ledger, api)
    assert {j["reference_id"]: j["data"]["image_url"] for j in api.box.jobs()} == {
        "a": "https://c.example/a.jpg",
        "b": "https://c.example/OLD.jpg",  # held back: never sent again silently (good)
        "d": "https://c.example/d.jpg",
    }
    assert "1 conflicting" in done.stdout
    assert done.returncode == 3, f"plan exits 3 (held back: 1 in conflict); run exits {done.returncode}"


def test_project_ids_from_the_manifest_reach_their_own_projects(api: Api, tmp_path: Path) -> None:
    """`project_id` and `work_flow_id` columns holding `café`, `a%2Fb`, `a+b`, `x.y~z`: each job is created in
    exactly the project and workflow the manifest names (the id travels percent-encoded as one path segment).
    `p q` (a space: it cannot go into a URL path) is refused with its line and column, nothing sent."""
    bad = tmp_path / "bad.csv"
    bad.write_text("reference_id,image_url,project_id\nr0,https://c.example/0.jpg,p q\n")
    assert_clean_refusal(run(bad, tmp_path / "bad.db", api), f"{bad}:2: column 'project_id'")
    projects = {"r1": "café", "r2": "a%2Fb", "r3": "a+b", "r4": "x.y~z"}
    m = tmp_path / "m.csv"
    m.write_text(
        "reference_id,image_url,project_id,work_flow_id\n"
        + "".join(f"{r},https://c.example/{r}.jpg,{p},wf-{p}\n" for r, p in projects.items()),
        encoding="utf-8",
    )
    done = run(m, tmp_path / "l.db", api)
    assert done.returncode == 0, done.stderr
    assert {j["reference_id"]: (j["project_id"], j["work_flow_id"]) for j in api.box.jobs()} == {
        r: (p, f"wf-{p}") for r, p in projects.items()
    }


def test_a_10_mb_extra_cell_is_kept_for_export_and_never_sent(api: Api, tmp_path: Path) -> None:
    """A 10 MB extra cell (quote-free: a file the slice processes read) loads, the API receives only the job's
    fields, and `export` gives the 10 MB value back exactly."""
    huge = "x" * (10 * 1024 * 1024)
    m = tmp_path / "m.csv"
    m.write_text(f"reference_id,image_url,note\nr1,https://c.example/1.jpg,{huge}\nr2,https://c.example/2.jpg,small\n")
    ledger = tmp_path / "l.db"
    assert run(m, ledger, api).returncode == 0
    assert max(map(len, api.job_posts())) < 200
    notes = {r["reference_id"]: r["note"] for r in export_jsonl(ledger)}
    assert notes == {"r1": huge, "r2": "small"}
