"""The CSV/TSV reader of `uploader.manifest.reader`: rows in chunks, with the physical line where each row starts.

Apart from `formats` because CSV/TSV is the format big manifests come in, and so the one read by a
tuned fast path (whole blocks split at C speed, checked for bad bytes once per block) and the one read in
slices (`Span`s) by the parallel loader. What is shared by every format (`Chunk`, `Span`, `fail`) is
imported from `formats`; nothing there imports this module.
"""

from __future__ import annotations

import csv
import io
import re
from collections import deque
from collections.abc import Iterator
from itertools import chain, repeat
from pathlib import Path
from typing import Any

from uploader.manifest.formats import Chunk, Issue, Span, fail
from uploader.manifest.values import bad_unicode

__all__ = ["CsvReader"]

_BLOCK = 1 << 20  # characters decoded per read; small enough to stay flat, big enough to amortise
_FIELD_LIMIT = 1 << 27  # raw `data` cells (sensor data) can be far larger than csv's 128 KiB default
_SURROGATE = re.compile("[\udc80-\udcff]")
Segment = tuple[int, list[list[str]], int, str | None]


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
    csv would do with it, at twice the speed; a block with quotes goes through csv.reader (strict), and so do
    the blocks after it for as long as the reader is inside a record, so a quoted field may span blocks.
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
            if lines is not None and self._size > 1 and _full_width(lines, delim, self.ncols):
                yield from _column_segments(lines, delim, self.ncols, first, self._size)
                continue
            if lines is not None:
                rows = list(map(str.split, lines, repeat(delim)))
                if "" in lines:
                    rows = [[] if r == [""] else r for r in rows]  # a blank line, as csv reports it
                i = 0
                while i < len(rows):
                    part = rows if not i and len(rows) <= self._size else rows[i : i + self._size]
                    yield first - 1 + i, part, first - 1 + i + len(part), None
                    i += len(part)
                continue
            yield from self._quoted_segments(text, first, blocks)

    def _quoted_segments(self, text: str, first: int, blocks: Iterator[tuple[str, int, bool]]) -> Iterator[Segment]:
        """Segments of a block with quotes (its first line numbered `first`), read by csv.reader, and of the
        next blocks as long as the reader is inside a record at a block's end (a quoted field with line
        breaks). Where the reader is decides, not a count of quotes: a stray quote in an unquoted field
        (`5" screen`, which csv reads as it is) would upset the count."""
        given = done = 0  # lines handed to csv.reader, and the lines of the records it has returned

        def region(text: str) -> Iterator[str]:
            nonlocal given
            while True:
                for line in io.StringIO(text, newline=""):
                    given += 1
                    yield line
                if done == given:
                    return
                nxt = next(blocks, None)
                if nxt is None:
                    return
                text = nxt[0]

        reader, base = csv.reader(region(text), delimiter=self._delim, strict=True), first - 1
        while True:
            start, rows, error = base + reader.line_num, [], None
            try:
                for row in reader:
                    rows.append(row)
                    done = reader.line_num
                    if len(rows) == self._size:
                        break
            except csv.Error as e:
                error = str(e)
                done = reader.line_num
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
        if isinstance(rows, _Columns):
            if not (bad and bad[0][0] <= end):
                return Chunk(range(start + 1, end + 1), [], clean=True, cols=list(rows))
            rows = [list(row) for row in zip(*rows)]  # bad bytes somewhere: each row looked at below
        if (
            error is None
            and end - start == len(rows)
            and not (bad and bad[0][0] <= end)
            and set(map(len, rows)) == {self.ncols}
        ):
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


class _Columns(list[list[str]]):
    """A segment's rows column by column (what `_column_segments` yields in a Segment's place of rows)."""


def _full_width(lines: list[str], delim: str, ncols: int) -> bool:
    """Whether every line of a quote-free block has the header's width: then its cells are the block's fields
    in order, `ncols` to a line, and it is split in one go (no list per row). A blank line is not."""
    return bool(lines) and "" not in lines and set(map(str.count, lines, repeat(delim))) == {ncols - 1}


def _column_segments(lines: list[str], delim: str, ncols: int, first: int, size: int) -> Iterator[Segment]:
    """Segments of at most `size` rows of a full-width block (`_full_width`), each as `_Columns`."""
    fields = delim.join(lines).split(delim)
    for i in range(0, len(lines), size):
        part = fields[i * ncols : (i + size) * ncols]
        n = len(part) // ncols
        yield first - 1 + i, _Columns(part[j::ncols] for j in range(ncols)), first - 1 + i + n, None


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
