"""The low-level half of `uploader.manifest`: streaming readers for CSV/TSV, JSONL and Parquet.

Readers deal only with the physical file (encodings, line numbers, quoting, ragged rows, JSON syntax, Parquet
types). They hand back `Chunk`s of rows, cells aligned with the file's columns, and report what is wrong with
a row as `(line, column, message)`; what a row *means* is decided in `manifest.py`. Nothing here holds more
than one chunk (plus one read block) in memory. Single values are checked in `_manifest_values`, long-form
video frames are grouped in `_manifest_frames`.
"""

from __future__ import annotations

import csv
import gc
import io
import re
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Any

from uploader._manifest_values import bad_unicode, json_error, json_kind, loads_strict
from uploader.errors import ManifestError, Problem

__all__ = [
    "EXTENSIONS", "FORMATS", "Chunk", "CsvReader", "Issue", "Span", "detect_format", "fail", "jsonl_chunks",
    "jsonl_columns", "no_gc", "open_parquet", "parquet_chunks", "parquet_kind", "sniff_start",
]

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


@dataclass(frozen=True)
class Span:
    """A slice of a CSV/TSV file that starts and ends on line boundaries, read apart from the rest (by a
    parallel loader): bytes [start, end), the number of its first line, and the file's header."""

    start: int
    end: int
    first_line: int
    header: tuple[str, ...]


class _ByteRange(io.RawIOBase):
    """Bytes [start, end) of a file, as a raw stream."""

    def __init__(self, path: Path, start: int, end: int) -> None:
        self._f = open(path, "rb", buffering=0)
        self._f.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._f.readinto(memoryview(buffer)[: self._left]) if self._left > 0 else 0
        self._left -= n or 0
        return n or 0

    def close(self) -> None:
        self._f.close()
        super().close()


class CsvReader:
    """CSV/TSV rows in chunks, with the physical line where each row starts.

    The file is decoded in ~1 MB blocks of whole lines (surrogateescape: invalid UTF-8 never raises; each
    block is checked once, at C speed, for NULs and undecodable bytes, and only chunks overlapping a flagged
    block get a per-cell scan). A block without any quote character is split with str.split, which is what
    csv would do with it, at twice the speed; runs of blocks with quotes go through csv.reader (strict)
    until the quotes balance, so a quoted field may span blocks.
    """

    def __init__(self, path: Path, delimiter: str, span: Span | None = None) -> None:
        self.path, self._delim, self._size = path, delimiter, 1  # one row per segment until chunks()
        if csv.field_size_limit() < _FIELD_LIMIT:
            csv.field_size_limit(_FIELD_LIMIT)
        self._first_line = span.first_line if span else 1
        if span is None:
            self._file = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
        else:
            raw = io.BufferedReader(_ByteRange(path, span.start, span.end), _BLOCK)
            self._file = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        self._bad: deque[tuple[int, int]] = deque()  # line ranges of blocks with NULs / invalid UTF-8
        self._segments = self._read_segments()
        self._pending: list[Segment] = []
        self.header = self._read_header() if span is None else list(span.header)
        self.ncols = len(self.header)

    def close(self) -> None:
        self._file.close()

    def _blocks(self) -> Iterator[tuple[str, int, bool]]:
        """(text, number of its first line, whether every line end in it is one CRLF) of whole-line blocks;
        LF, CRLF and lone CR all end lines."""
        read, lines = self._file.read, self._first_line - 1
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
            crlf_only = False
            if "\r" in block:
                cr, crlf = block.count("\r"), block.count("\r\n")
                crlf_only = cr == crlf == n
                n += cr - crlf
            if _has_bad_chars(block):
                self._bad.append((lines + 1, lines + n + 1))
            yield block, lines + 1, crlf_only
            lines += n

    def _read_segments(self) -> Iterator[Segment]:
        """(line before the rows, rows, last line consumed, csv error or None), at most self._size rows."""
        blocks, delim = self._blocks(), self._delim
        for text, first, crlf_only in blocks:
            lines = _split_lines(text, crlf_only) if '"' not in text else None
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


def _split_lines(text: str, crlf_only: bool) -> list[str] | None:
    """The lines of a quote-free block, or None if it mixes line ends or has lone CRs (csv.reader handles
    those). `crlf_only`: the block's every line end is a CRLF (as counted by CsvReader._blocks)."""
    if "\r" in text:
        if not crlf_only:
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

