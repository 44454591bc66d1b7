"""The low-level half of `uploader.manifest`: streaming readers for CSV/TSV, JSONL and Parquet, the checks
of single values (reference ids, URLs), and the scratch store that groups long-form video frames.

Readers deal only with the physical file (encodings, line numbers, quoting, ragged rows, JSON syntax, Parquet
types). They hand back `Chunk`s of rows, cells aligned with the file's columns, and report what is wrong with
a row as `(line, column, message)`; what a row *means* is decided in `manifest.py`. Nothing here holds more
than one chunk (plus one read block) in memory.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import os
import re
import sqlite3
import tempfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, groupby, islice, repeat
from json.encoder import c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring as enc  # C: json.dumps of one str, without the overhead
from operator import itemgetter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from uploader.errors import ManifestError, Problem

EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
FORMATS = ("csv", "tsv", "parquet", "jsonl")
_BLOCK = 1 << 20  # characters decoded per read; small enough to stay flat, big enough to amortise
_FIELD_LIMIT = 1 << 27  # raw `data` cells (sensor data) can be far larger than csv's 128 KiB default
_SURROGATE = re.compile("[\udc80-\udcff]")
Issue = tuple[int, str | None, str]
Segment = tuple[int, list[list[str]], int, str | None]


@dataclass
class Chunk:
    """Rows read together. `clean` promises single-line rows of full width with no bad bytes."""

    lines: list[int] | range
    rows: list[Any]
    issues: list[Issue] = field(default_factory=list)
    clean: bool = False


def fail(path: Path, message: str, column: str | None = None) -> ManifestError:
    """A file-level ManifestError with one problem."""
    return ManifestError([Problem(str(path), None, column, message)])


def detect_format(path: Path, override: str | None) -> str:
    """The format named by --format, else by the file's extension."""
    if override:
        fmt = override.lower().lstrip(".")
        fmt = "jsonl" if fmt == "ndjson" else fmt
        if fmt not in FORMATS:
            raise fail(path, f"unknown format {override!r}; use --format csv, tsv, parquet or jsonl")
        return fmt
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise fail(path, f"unknown format for {'a ' + path.suffix if path.suffix else 'an extension-less'} file; "
                         "use --format csv, tsv, parquet or jsonl")
    return fmt


def sniff_start(path: Path) -> bytes:
    """The first bytes of the file, refusing unreadable, empty and UTF-16/32 files up front."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except IsADirectoryError:
        raise fail(path, "is a directory, not a manifest file") from None
    except OSError as e:
        raise fail(path, f"cannot read the file: {e.strerror or e}") from None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise fail(path, "file is UTF-16 (or UTF-32); save it as UTF-8")
    if not head or head == b"\xef\xbb\xbf":
        raise fail(path, "file is empty")
    if len(head) == 4 and (head[1] == head[3] == 0) != (head[0] == head[2] == 0):  # ASCII text as UTF-16
        raise fail(path, "file looks like UTF-16 without a BOM (NUL bytes between the letters); save it as UTF-8")
    return head


def _bad_char_issue(line: int, column: str | None, text: str) -> Issue | None:
    """A NUL or an undecodable byte (kept by surrogateescape) in one cell, as an issue."""
    if "\x00" in text:
        return (line, column, "contains a NUL byte (is the file really UTF-8 text?)")
    m = _SURROGATE.search(text)
    if m:
        byte = ord(m.group()) - 0xDC00
        return (line, column, f"is not valid UTF-8 (byte 0x{byte:02X}); save the file as UTF-8")
    return None


def _has_bad_chars(text: str) -> bool:
    return "\x00" in text or bad_unicode(text)


class CsvReader:
    """CSV/TSV rows in chunks, with the physical line where each row starts.

    The file is decoded in ~1 MB blocks of whole lines (surrogateescape: invalid UTF-8 never raises; each
    block is checked once, at C speed, for NULs and undecodable bytes, and only chunks overlapping a flagged
    block get a per-cell scan). A block without any quote character is split with str.split, which is what
    csv would do with it, at twice the speed; runs of blocks with quotes go through csv.reader (strict)
    until the quotes balance, so a quoted field may span blocks.
    """

    def __init__(self, path: Path, delimiter: str) -> None:
        self.path, self._delim, self._size = path, delimiter, 1  # one row per segment until chunks()
        if csv.field_size_limit() < _FIELD_LIMIT:
            csv.field_size_limit(_FIELD_LIMIT)
        self._file = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
        self._bad: deque[tuple[int, int]] = deque()  # line ranges of blocks with NULs / invalid UTF-8
        self._segments = self._read_segments()
        self._pending: list[Segment] = []
        self.header = self._read_header()
        self.ncols = len(self.header)

    def close(self) -> None:
        self._file.close()

    def _blocks(self) -> Iterator[tuple[str, int]]:
        """(text, number of its first line) of whole-line blocks; LF, CRLF and lone CR all end lines."""
        read, lines = self._file.read, 0
        pending: list[str] = []  # a partial last line (a list, so a huge line is not copied quadratically)
        while True:
            text = read(_BLOCK)
            if not text:
                block, pending = "".join(pending), []
                if not block:
                    return
            else:
                cut = max(text.rfind("\n"), text.rfind("\r", 0, len(text) - 1)) + 1
                if cut == 0:
                    pending.append(text)
                    continue
                pending.append(text[:cut])
                block, pending = "".join(pending), [text[cut:]]
            n = block.count("\n")
            if "\r" in block:
                n += block.count("\r") - block.count("\r\n")
            if _has_bad_chars(block):
                self._bad.append((lines + 1, lines + n + 1))
            yield block, lines + 1
            lines += n

    def _read_segments(self) -> Iterator[Segment]:
        """(line before the rows, rows, last line consumed, csv error or None), at most self._size rows."""
        blocks, delim = self._blocks(), self._delim
        for text, first in blocks:
            lines = _split_lines(text) if '"' not in text else None
            if lines is not None:
                rows = list(map(str.split, lines, repeat(delim)))
                if "" in lines:
                    rows = [[] if r == [""] else r for r in rows]  # a blank line, as csv reports it
                i = 0
                while i < len(rows):
                    part = rows if not i and len(rows) <= self._size else rows[i:i + self._size]
                    yield first - 1 + i, part, first - 1 + i + len(part), None
                    i += len(part)
                continue
            parity = text.count('"') & 1

            def region(text: str = text) -> Iterator[io.StringIO]:
                nonlocal parity
                yield io.StringIO(text, newline="")
                while parity:  # inside a quoted field: the region goes on
                    nxt = next(blocks, None)
                    if nxt is None:
                        return
                    parity ^= nxt[0].count('"') & 1
                    yield io.StringIO(nxt[0], newline="")

            reader, base = csv.reader(chain.from_iterable(region()), delimiter=delim, strict=True), first - 1
            while True:
                start, rows, error = base + reader.line_num, [], None
                try:
                    rows.extend(islice(reader, self._size))
                except csv.Error as e:
                    error = str(e)
                if not rows and error is None:
                    break
                yield start, rows, base + reader.line_num, error

    def _read_header(self) -> list[str]:
        for _, rows, _, error in self._segments:  # segments of one row here
            if error is not None:
                raise fail(self.path, f"cannot parse the header: {error}")
            if rows and rows[0]:
                for name in rows[0]:
                    issue = _bad_char_issue(0, None, name)
                    if issue:
                        raise fail(self.path, f"the header {issue[2]}")
                return rows[0]
        raise fail(self.path, "file is empty")

    def has_rows(self) -> bool:
        """Whether anything but blank lines follows the header (a parse error counts as content)."""
        for segment in self._segments:
            if segment[3] is not None or any(segment[1]):
                self._pending.append(segment)
                return True
        return False

    def chunks(self, size: int) -> Iterator[Chunk]:
        self._size = size
        for segment in chain(self._pending, self._segments):
            yield self._chunk(*segment)

    def _chunk(self, start: int, rows: list[list[str]], end: int, error: str | None) -> Chunk:
        bad = self._bad
        while bad and bad[0][1] <= start:
            bad.popleft()
        if (error is None and end - start == len(rows) and not (bad and bad[0][0] <= end)
                and set(map(len, rows)) == {self.ncols}):
            return Chunk(range(start + 1, end + 1), rows, clean=True)
        return self._sort_out(rows, start, end, error)

    def _sort_out(self, rows: list[list[str]], start: int, end: int, error: str | None) -> Chunk:
        """Slow path: recover each row's first physical line and set aside blank, ragged and bad rows."""
        chunk = Chunk([], [])
        names, ncols, cur = self.header, self.ncols, start
        scan = bool(self._bad) and self._bad[0][0] <= end
        for row in rows:
            first = cur + 1
            cur += _span(row)
            if not row:
                continue
            if len(row) != ncols:
                chunk.issues.append((first, None, f"row has {len(row)} fields but the header has {ncols}"))
                continue
            if scan and _has_bad_chars("".join(row)):
                for name, cell in zip(names, row):
                    issue = _bad_char_issue(first, name, cell)
                    if issue:
                        chunk.issues.append(issue)
                continue
            chunk.lines.append(first)  # type: ignore[union-attr]
            chunk.rows.append(row)
        if error is not None:
            where = f" (lines {cur + 1}-{end})" if end > cur + 1 else ""
            kind = "TSV" if self._delim == "\t" else "CSV"
            chunk.issues.append((cur + 1, None, f"malformed {kind} record{where}: {error}"))
        return chunk


def _split_lines(text: str) -> list[str] | None:
    """The lines of a quote-free block, or None if it mixes line ends or has lone CRs (csv.reader handles
    those)."""
    if "\r" in text:
        crlf = text.count("\r\n")
        if text.count("\r") != crlf or text.count("\n") != crlf:
            return None
        lines = text.split("\r\n")
    else:
        lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _span(row: list[str]) -> int:
    """Physical lines a csv record took: 1 plus the line breaks inside its (quoted) fields."""
    joined = "".join(row)
    if "\r" not in joined:
        return 1 + joined.count("\n")
    return 1 + sum(f.count("\n") + f.count("\r") - f.count("\r\n") for f in row)


# --- JSONL -----------------------------------------------------------------------------------------

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_decode_strict = json.JSONDecoder(parse_constant=_reject_constant).decode


def loads_strict(text: str) -> Any:
    """json.loads that refuses NaN/Infinity, which the API (and JSON) cannot take (one decoder, built once),
    and raises ValueError (not RecursionError) for JSON nested too deeply to read."""
    try:
        return _decode_strict(text)
    except RecursionError:
        raise ValueError("it is nested too deeply (more than ~900 levels)") from None


def json_error(e: ValueError) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON at character {e.pos + 1}: {e.msg}"
    return f"invalid JSON: {e}"


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each non-blank line; LF, CRLF and lone CR all end a line."""
    with open(path, "rb") as f:
        number = 0
        for raw in f:
            if number == 0 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            body = raw.rstrip(b"\r\n")
            pieces = body.split(b"\r") if b"\r" in body else (body,)
            for piece in pieces:
                number += 1
                if piece.strip():
                    yield number, piece


def _jsonl_object(number: int, raw: bytes) -> tuple[dict[str, Any] | None, Issue | None]:
    if b"\x00" in raw:
        return None, (number, None, "contains a NUL byte (is the file really UTF-8 text?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, (number, None, f"is not valid UTF-8 (byte 0x{raw[e.start]:02X} at byte {e.start + 1}); "
                                    "save the file as UTF-8")
    try:
        obj = loads_strict(text)
    except ValueError as e:
        return None, (number, None, json_error(e))
    if type(obj) is not dict:
        return None, (number, None, f"is {json_kind(obj)}, not a JSON object; each line must be one object")
    return obj, None


def jsonl_columns(path: Path) -> list[str]:
    """All keys used by any line, in order of first use: JSONL has no header, so one pass finds them."""
    seen: dict[str, None] = {}
    lines = 0
    first: Issue | None = None  # why the first unusable line is unusable, told if no line is usable
    for number, raw in _jsonl_lines(path):
        lines += 1
        obj, issue = _jsonl_object(number, raw)
        if obj:
            seen.update(dict.fromkeys(obj))
        elif first is None:
            first = issue or (number, None, "is an empty object")
    if not lines:
        raise fail(path, "file is empty")
    if not seen:
        why = f" (line {first[0]} {first[2]})" if first else ""
        raise fail(path, f"no line is a non-empty JSON object{why}; a .jsonl manifest has one JSON object per line")
    return list(seen)


def jsonl_chunks(path: Path, columns: list[str], size: int) -> Iterator[Chunk]:
    chunk = Chunk([], [])
    for number, raw in _jsonl_lines(path):
        obj, issue = _jsonl_object(number, raw)
        if issue:
            chunk.issues.append(issue)
        else:
            assert obj is not None
            chunk.lines.append(number)  # type: ignore[union-attr]
            chunk.rows.append([obj.get(c) for c in columns])
        if len(chunk.rows) >= size or len(chunk.issues) >= size:
            yield chunk
            chunk = Chunk([], [])
    if chunk.rows or chunk.issues:
        yield chunk


# --- Parquet ---------------------------------------------------------------------------------------

def open_parquet(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise fail(path, f"cannot read the Parquet file: {str(e).strip()}") from None
    if pf.metadata.num_rows == 0:
        raise fail(path, "the Parquet file has columns but no rows")
    return pf


def parquet_kind(arrow_type: Any) -> str:
    """How a column's values become cells: 'text', 'int', 'object' (lists/structs) or 'other'."""
    import pyarrow as pa
    import pyarrow.types as t

    if t.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if t.is_string(arrow_type) or t.is_large_string(arrow_type) or arrow_type == pa.string_view():
        return "text"
    if t.is_integer(arrow_type):
        return "int"
    if t.is_null(arrow_type):
        return "null"
    if t.is_list(arrow_type) or t.is_large_list(arrow_type) or t.is_struct(arrow_type):
        return "object"
    return "other"


def _parquet_cells(array: Any, kind: str) -> list[Any]:
    """Python cells for one column: text verbatim, integers as decimal text, nulls as ''."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind in ("object", "null"):
        return array.to_pylist() if kind == "object" else [""] * len(array)  # type: ignore[no-any-return]
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if kind != "text":
        try:
            array = pc.cast(array, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return ["" if v is None else str(v) for v in array.to_pylist()]
    return pc.fill_null(array, "").to_pylist()  # type: ignore[no-any-return]


def parquet_chunks(pf: Any, kinds: list[str], size: int, path: Path) -> Iterator[Chunk]:
    offset = 0
    batches = pf.iter_batches(batch_size=size)
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:  # a damaged page: pyarrow raises OSError, ArrowInvalid, ...
            message = f"cannot read the Parquet file from this row on (is it damaged?): {str(e).strip()}"
            raise ManifestError([Problem(str(path), offset, None, message, "row")]) from None
        if batch is None:
            return
        cols = [_parquet_cells(batch.column(i), kind) for i, kind in enumerate(kinds)]
        n = batch.num_rows
        yield Chunk(range(offset, offset + n), list(zip(*cols)), clean=True)
        offset += n


# --- single values -----------------------------------------------------------------------------------

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
PATH_UNSAFE = re.compile("[/?#\\s\x00-\x1f\x7f-\x9f]")  # project_id / work_flow_id go into a URL path
INTEGER = re.compile(r"-?[0-9]+")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SPACE = re.compile(r"\s")
_CTRL = bytes(range(32)) + b"\x7f"
_CTRL_QB = _CTRL + b'"\\'
_ESC = bytes(range(32)) + b'"\\'
HOST = re.compile(r"https?://[A-Za-z0-9][A-Za-z0-9.-]*(?:[/?#]|\Z)")  # a start that is surely valid
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
if c_make_encoder is not None:  # json.dumps builds this C encoder anew on every call; build it once
    _c_encode = c_make_encoder(None, _encoder.default, enc, None, ":", ",", False, False, False)

    def dumps(obj: Any) -> str:
        """json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False), without the per-call
        setup. ValueError for NaN/±Infinity (JSON has no such numbers: 1e400 parses to inf), RecursionError
        for nesting deeper than the interpreter's stack."""
        return "".join(_c_encode(obj, 0))
else:  # pragma: no cover - CPython always has the C accelerator
    dumps = _encoder.encode


def show(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def json_kind(value: Any) -> str:
    names = {list: "an array", dict: "an object", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def reference_id_problem(ref: str) -> str | None:
    """Why `ref` cannot be a reference_id, or None."""
    if not ref.strip():
        return "reference_id is empty"
    if len(ref) > 255:
        return f"reference_id is {len(ref)} characters long; the limit is 255"
    if _CONTROL.search(ref):
        return "reference_id contains control characters"
    return None


def url_problem(url: str) -> str | None:
    """Why GT Studio could not fetch `url`, as a phrase to follow the field's name; None if it can."""
    if HOST.match(url) and url.isprintable() and " " not in url:
        return None  # the common case, without urlsplit
    if not url:
        return "is empty"
    if _SPACE.search(url):
        return f"contains whitespace: {show(url)}"
    if _CONTROL.search(url):
        return "contains control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        return f"is not a valid URL ({e}): {show(url)}"
    scheme = parts.scheme.lower()
    if scheme in ("s3", "gs"):
        return f"is {'an' if scheme == 's3' else 'a'} {scheme}:// URL, which GT Studio cannot fetch; use a signed " \
               "or public https URL"
    if scheme not in ("http", "https"):
        slashes = "//" if url[len(scheme) + 1:].startswith("//") else ""
        return f"must be an http:// or https:// URL, not {scheme + ':' + slashes if scheme else show(url)}"
    return None if parts.hostname else f"has no host: {show(url)}"


def cell_text(value: Any) -> str:
    """An extra column's value as text: strings verbatim, null empty, anything else as its JSON text."""
    if type(value) is str:
        return value
    if value is None:
        return ""
    try:
        return dumps(value)  # type: ignore[no-any-return]
    except (ValueError, TypeError):  # NaN/Infinity; Parquet datetimes, decimals, bytes inside a struct or list
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except RecursionError:
        return "(nested too deeply to show)"


def bad_unicode(text: str) -> bool:
    """A lone surrogate (from a JSON '\\ud800' escape) can be neither sent nor stored."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def plain(blob: str) -> bool | None:
    """For the fast path, of a chunk's values joined: True = printable and nothing to JSON-escape; False =
    printable but needs escaping; None = has control characters (the per-row checks will explain)."""
    if blob.isascii():
        b = blob.encode("ascii")
        if len(b.translate(None, _CTRL_QB)) == len(b):
            return True
        return False if len(b.translate(None, _CTRL)) == len(b) else None
    if not blob.isprintable():
        return None
    return '"' not in blob and "\\" not in blob


def escaped(values: tuple[str, ...]) -> list[str]:
    """JSON-escaped text of printable values, without quotes, in one C call (DEL cannot occur in them)."""
    return enc("\x7f".join(values))[1:-1].split("\x7f")  # type: ignore[no-any-return]


def needs_no_escape(blob: str) -> bool:
    if blob.isascii():
        b = blob.encode("ascii")
        return len(b.translate(None, _ESC)) == len(b)
    return '"' not in blob and "\\" not in blob and blob.isprintable()


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic GC while a chunk is built. Its rows are acyclic, and the collector would rescan them
    dozens of times per chunk (a third of the run time on a 1M-row file). Never held across a yield, so
    the caller's code runs with the collector as it was."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class FrameStore:
    """Frames of long-form videos, parked in a private temporary SQLite file so that the frames of one video
    can be anywhere in the manifest without the manifest being held in memory."""

    COLUMNS = "pid, ref, ord, line, fid, src, wf, batch, pw, meta, extra, bad"

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="uploader-frames-", suffix=".sqlite")
        os.close(fd)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute(f"CREATE TABLE f ({self.COLUMNS})")

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        self.db.executemany("INSERT INTO f VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def videos(self) -> Iterator[tuple[tuple[str, str], Iterator[tuple[Any, ...]]]]:
        """Frames grouped by (project_id, reference_id), in frame order (frame_index, else file order)."""
        return groupby(self.db.execute(f"SELECT {self.COLUMNS} FROM f ORDER BY pid, ref, ord, line"),
                       key=itemgetter(0, 1))

    def close(self) -> None:
        self.db.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
