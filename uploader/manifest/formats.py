"""The low-level half of `uploader.manifest.reader`: what every reader shares, and the JSONL and Parquet readers.

Readers deal only with the physical file (encodings, line numbers, quoting, ragged rows, JSON syntax, Parquet
types). They hand back `Chunk`s of rows, cells aligned with the file's columns, and report what is wrong with
a row as `(line, column, message)`; what a row *means* is decided in `reader`. Nothing here holds more
than one chunk (plus one read block) in memory. The CSV/TSV reader is in `csv_reader` (which builds on
this module), single values are checked in `values`, long-form video frames are grouped in
`frames`.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uploader.errors import ManifestError, Problem
from uploader.manifest.values import json_error, json_kind, loads_strict

__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "Chunk",
    "Issue",
    "Span",
    "detect_format",
    "fail",
    "jsonl_chunks",
    "jsonl_columns",
    "no_gc",
    "open_parquet",
    "parquet_chunks",
    "parquet_kind",
    "sniff_start",
]

EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
FORMATS = ("csv", "tsv", "parquet", "jsonl")
Issue = tuple[int, str | None, str]


@dataclass
class Chunk:
    """Rows read together. `clean` promises single-line rows of full width with no bad bytes. A reader may
    give a clean chunk's rows column by column instead (`cols`; `rows` is then empty): `cells` has them as rows."""

    lines: list[int] | range
    rows: list[Any]
    issues: list[Issue] = field(default_factory=list)
    clean: bool = False
    cols: list[list[Any]] | None = None

    def cells(self) -> list[Any]:
        """The rows, each a sequence of its cells (from `cols` when the reader gave columns)."""
        return self.rows if self.cols is None else list(zip(*self.cols))


def fail(path: Path, message: str, column: str | None = None) -> ManifestError:
    """A file-level ManifestError with one problem."""
    return ManifestError([Problem(str(path), None, column, message)])


#: (device, inode, size, modification time in ns): a file whose identity is unchanged has not been written to.
FileIdentity = tuple[int, int, int, int]


def file_identity(path: Path) -> FileIdentity:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def check_unchanged(path: Path, identity: FileIdentity) -> None:
    """Refuse a load whose manifest was written to (or replaced) since the load began (`identity`: the file then):
    what was read would be neither the old file nor the new one, and the ledger would record it as loaded."""
    try:
        now = file_identity(path)
    except OSError as e:
        raise fail(path, f"cannot read the file any more: {e.strerror or e}; nothing was loaded") from None
    if now != identity:
        raise fail(
            path,
            "the file changed while it was being loaded (it was written to or replaced); load it again once it "
            "is complete",
        )


def detect_format(path: Path, override: str | None) -> str:
    """The format named by --format, else by the file's extension."""
    if override:
        fmt = override.lower().lstrip(".")
        fmt = "jsonl" if fmt == "ndjson" else fmt
        if fmt not in FORMATS:
            raise fail(path, f"unknown format {override!r}; use --format csv, tsv, parquet or jsonl")
        return fmt
    by_suffix = EXTENSIONS.get(path.suffix.lower())
    if by_suffix is None:
        raise fail(
            path,
            f"unknown format for {'a ' + path.suffix if path.suffix else 'an extension-less'} file; "
            "use --format csv, tsv, parquet or jsonl",
        )
    return by_suffix


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


@dataclass(frozen=True)
class Span:
    """A slice of a manifest, read apart from the rest (by a parallel loader): in a CSV/TSV/JSONL file,
    bytes [start, end) starting and ending on line ends; in Parquet, rows [start, end). Also the number of
    its first line (Parquet: row index) and the file's header. Here, not in `csv_reader`, because the
    loader's planner (`staging`) cuts files into spans without reading rows."""

    start: int
    end: int
    first_line: int
    header: tuple[str, ...]


# --- JSONL -----------------------------------------------------------------------------------------


def _jsonl_lines(path: Path, span: Span | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each non-blank line; LF, CRLF and lone CR all end a line. With `span`, only
    the lines of that slice (it starts and ends on line ends)."""
    start, end, number = (span.start, span.end, span.first_line - 1) if span else (0, None, 0)
    with open(path, "rb") as f:
        f.seek(start)
        offset = start
        for raw in f:
            if end is not None and offset >= end:
                break
            if offset == 0 and raw.startswith(b"\xef\xbb\xbf"):
                offset, raw = offset + 3, raw[3:]
            offset += len(raw)
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
        return None, (
            number,
            None,
            f"is not valid UTF-8 (byte 0x{raw[e.start]:02X} at byte {e.start + 1}); save the file as UTF-8",
        )
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


def jsonl_chunks(path: Path, columns: list[str], size: int, span: Span | None = None) -> Iterator[Chunk]:
    chunk = Chunk([], [])
    for number, raw in _jsonl_lines(path, span):
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
    """How a column's values become cells: 'text', 'int', 'object' (lists, structs, maps: JSON), 'binary'
    (UTF-8 text, else refused) or 'other'. (The reader makes an extra column's kind 'value': as it is.) View
    types (string_view, binary_view: Arrow-native writers use them) count as their plain types."""
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
    if t.is_list(arrow_type) or t.is_large_list(arrow_type) or t.is_struct(arrow_type) or t.is_map(arrow_type):
        return "object"
    binary = (t.is_binary, t.is_large_binary, t.is_binary_view, t.is_fixed_size_binary)
    if any(is_binary(arrow_type) for is_binary in binary):
        return "binary"
    return "other"


class _NotCell(ValueError):
    """A value no cell can hold: at row `index` of the array, why."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(why)
        self.index = index


def _parquet_cells(array: Any, kind: str) -> list[Any]:
    """Python cells for one column: text verbatim, integers as decimal text, lists, structs and maps (as
    objects) for JSON, bytes that are UTF-8 as text, nulls as ''. _NotCell for a map with a key given twice or
    bytes that are not UTF-8 (neither has a faithful text form)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == "null":
        return [""] * len(array)
    if kind == "value":
        return array.to_pylist()  # type: ignore[no-any-return]
    if kind == "object":
        try:
            return array.to_pylist(maps_as_pydicts="strict")  # type: ignore[no-any-return]
        except (KeyError, ValueError):
            for i in range(len(array)):
                try:
                    array[i : i + 1].to_pylist(maps_as_pydicts="strict")
                except (KeyError, ValueError):
                    raise _NotCell(i, "holds a map with a key given twice") from None
            raise
    if kind == "binary":
        return _utf8_cells(array)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_string_view(array.type):  # compute kernels (fill_null) have none for view strings
        array = array.cast(pa.large_string())
    if kind != "text":
        try:
            array = pc.cast(array, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return ["" if v is None else str(v) for v in array.to_pylist()]
    return pc.fill_null(array, "").to_pylist()  # type: ignore[no-any-return]


def _utf8_cells(array: Any) -> list[str]:
    """A binary column's bytes as text (nulls as ''); _NotCell at the first value that is not UTF-8."""
    cells = []
    for i, value in enumerate(array.to_pylist()):
        try:
            cells.append("" if value is None else value.decode("utf-8"))
        except UnicodeDecodeError:
            raise _NotCell(i, "holds bytes that are not UTF-8 text; drop the column or encode it") from None
    return cells


def parquet_chunks(pf: Any, kinds: list[str], size: int, path: Path, span: Span | None = None) -> Iterator[Chunk]:
    """Rows in chunks, numbered by row index. With `span`, only rows [span.start, span.end): the row groups
    before it are skipped unread, and the edge batches sliced."""
    start, end, offset = 0, pf.metadata.num_rows, 0
    groups: list[int] | None = None  # with a span: the row groups it overlaps
    if span is not None:
        start, end, groups, first = span.start, span.end, [], 0
        for g in range(pf.metadata.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if first + rows > start and first < end:  # the group overlaps the span
                offset = offset if groups else first
                groups.append(g)
            first += rows
    batches = pf.iter_batches(batch_size=size, row_groups=groups)
    while offset < end:
        try:
            batch = next(batches, None)
        except Exception as e:  # a damaged page: pyarrow raises OSError, ArrowInvalid, ...
            message = f"cannot read the Parquet file from this row on (is it damaged?): {str(e).strip()}"
            raise ManifestError([Problem(str(path), offset, None, message, "row")]) from None
        if batch is None:
            return
        first, offset = offset, offset + batch.num_rows
        lo, hi = max(start - first, 0), min(end - first, batch.num_rows)
        if lo >= hi:
            continue
        if lo or hi < batch.num_rows:
            batch = batch.slice(lo, hi - lo)
        cols = []
        for i, kind in enumerate(kinds):
            try:
                cols.append(_parquet_cells(batch.column(i), kind))
            except _NotCell as bad:
                problem = Problem(str(path), first + lo + bad.index, batch.schema.names[i], str(bad), "row")
                raise ManifestError([problem]) from None
        yield Chunk(range(first + lo, first + hi), list(zip(*cols)), clean=True)


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
