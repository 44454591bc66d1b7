"""Write the reference_id → job_id mapping (and every job's state) as CSV, JSON Lines or Parquet.

Output is written to a temporary file beside the target, created 0600, and renamed into place only when
complete: an interrupted export never leaves a half-written file behind.

Cells are written verbatim, so the mapping matches the manifest and the API (`-5`, `=1+1`, `@mention` are
reference_ids like any other), except in CSV the text the API wrote (API_TEXT_COLUMNS), which a hostile or
careless server could make a formula: it is neutralised. `spreadsheet_safe` neutralises every CSV cell, for a
file meant to be opened in a spreadsheet rather than read by a program.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["API_TEXT_COLUMNS", "FORMATS", "export_rows", "neutralise_formula"]

FORMATS = ("csv", "jsonl", "parquet")
#: Columns holding text the API wrote (not identifiers): neutralised in CSV by default.
API_TEXT_COLUMNS = frozenset({"error_code", "error_message", "error_details"})
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(value: Any) -> Any:
    """Prefix a cell a spreadsheet would execute (=, +, -, @) with a quote, as OWASP advises."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def export_rows(rows: Iterable[dict[str, Any]], fmt: str, output: str | None, columns: list[str],
                *, spreadsheet_safe: bool = False) -> int:
    """Write rows to `output` (stdout when None); returns the number written. `spreadsheet_safe`: neutralise
    every CSV cell a spreadsheet would run as a formula, not only the API's text (module docstring)."""
    if fmt == "parquet" and output is None:
        raise ValueError("Parquet export needs -o FILE (it is a binary format)")
    if output is None:
        return _write_text(rows, fmt, sys.stdout, columns, spreadsheet_safe)
    target = Path(output)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent or Path("."))
    try:
        os.fchmod(fd, 0o600)
        if fmt == "parquet":
            os.close(fd)
            n = _write_parquet(rows, Path(tmp), columns)
        else:
            with open(fd, "w", encoding="utf-8", newline="") as f:
                n = _write_text(rows, fmt, f, columns, spreadsheet_safe)
        os.replace(tmp, target)
        return n
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(rows: Iterable[dict[str, Any]], fmt: str, out: IO[str], columns: list[str],
                spreadsheet_safe: bool = False) -> int:
    n = 0
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(neutralise_formula(c) if spreadsheet_safe else c for c in columns)
        neutral = [spreadsheet_safe or c in API_TEXT_COLUMNS for c in columns]
        for row in rows:
            writer.writerow([neutralise_formula(_cell(row.get(c))) if safe else _cell(row.get(c))
                             for c, safe in zip(columns, neutral)])
            n += 1
    else:
        for row in rows:
            out.write(json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False) + "\n")
            n += 1
    out.flush()
    return n


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _chunks(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_parquet(rows: Iterable[dict[str, Any]], path: Path, columns: list[str]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [pa.field(c, pa.int64() if c == "attempts" else pa.string()) for c in columns]
    schema = pa.schema(fields)
    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in _chunks(rows, 50_000):
            arrays = {
                c: [r.get(c) if c == "attempts" else _text_or_none(r.get(c)) for r in chunk] for c in columns
            }
            writer.write_table(pa.table(arrays, schema=schema))
            n += len(chunk)
    return n


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


