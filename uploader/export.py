"""Write the reference_id → job_id mapping (and every job's state) as CSV, JSON Lines or Parquet.

Where the output goes (`output_plan`): a regular file, or a new path, is written to a temporary file in the
same folder (created 0600; an existing file's mode is kept), synced and renamed into place only when
complete, so an interrupted export never leaves a half-written file behind; a symlink has its target written
that way (the link stays). A FIFO, a character device (/dev/null, a terminal) or a pipe (/dev/fd/N, `>(cmd)`)
is written straight through: it cannot be replaced. Nothing that is not a regular file is ever replaced; a
missing folder, a folder or any other kind of file is refused with one line naming the path.

Cells are written verbatim, so the mapping matches the manifest and the API (`-5`, `=1+1`, `@mention` are
reference_ids like any other), except in CSV the text the API wrote (API_TEXT_COLUMNS), which a hostile or
careless server could make a formula: it is neutralised. `spreadsheet_safe` neutralises every CSV cell, for a
file meant to be opened in a spreadsheet rather than read by a program.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from uploader._leftovers import owned_prefix, sweep
from uploader.errors import UploaderError

__all__ = [
    "API_TEXT_COLUMNS",
    "FORMATS",
    "OutputPlan",
    "export_rows",
    "neutralise_formula",
    "output_plan",
    "parquet_types",
    "write_output",
]

FORMATS = ("csv", "jsonl", "parquet")
#: Columns holding text the API wrote (not identifiers): neutralised in CSV by default.
API_TEXT_COLUMNS = frozenset({"error_code", "error_message", "error_details"})
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(value: Any) -> Any:
    """Prefix a cell a spreadsheet would execute (=, +, -, @) with a quote, as OWASP advises."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def export_rows(
    rows: Iterable[dict[str, Any]],
    fmt: str,
    output: str | None,
    columns: list[str],
    *,
    spreadsheet_safe: bool = False,
    types: dict[str, str] | None = None,
) -> int:
    """Write rows to `output` (stdout when None); returns the number written. `spreadsheet_safe`: neutralise
    every CSV cell a spreadsheet would run as a formula, not only the API's text (module docstring). `types`:
    Parquet column types other than text (`parquet_types`)."""
    if fmt == "parquet" and output is None:
        raise ValueError("Parquet export needs -o FILE (it is a binary format)")
    if output is None:
        return _write_text(rows, fmt, sys.stdout, columns, spreadsheet_safe)
    if fmt == "parquet":
        return write_output(output, lambda f: _write_parquet(rows, f, columns, types or {}))

    def text(f: BinaryIO) -> int:
        out = io.TextIOWrapper(f, encoding="utf-8", newline="")
        try:
            return _write_text(rows, fmt, out, columns, spreadsheet_safe)
        finally:
            out.detach()

    return write_output(output, text)


@dataclass(frozen=True)
class OutputPlan:
    """How to write an output path: `atomic` (temp file in `path`'s folder, fsync, rename over `path`, which
    gets `mode`, and the replaced file's `owner` (uid, gid) if any), or straight through (`path` opened as
    is). `error`: refused, with the reason."""

    path: str
    atomic: bool = True
    mode: int = 0o600
    owner: tuple[int, int] | None = None
    error: str | None = None


def output_plan(output: str, st: os.stat_result | None, resolved: str, parent_is_dir: bool) -> OutputPlan:
    """Decide how to write `output`, given what it is: `st` its stat following symlinks (None: no such
    file), `resolved` the path with symlinks resolved, `parent_is_dir` whether that path's folder exists."""
    if st is None:
        if not parent_is_dir:
            return OutputPlan(output, error=f"cannot write {output}: folder {os.path.dirname(resolved)} does not exist")
        return OutputPlan(resolved)
    if stat.S_ISREG(st.st_mode):
        return OutputPlan(resolved, mode=stat.S_IMODE(st.st_mode), owner=(st.st_uid, st.st_gid))
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        return OutputPlan(output, atomic=False)
    kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file, a FIFO or a character device"
    return OutputPlan(output, error=f"cannot write {output}: it is {kind}")


def write_output(output: str, write: Callable[[BinaryIO], int]) -> int:
    """Write an output file as `output_plan` decides; `write` fills the open binary file and returns the row
    count, which is returned. An OSError is one line naming the path (UploaderError, exit 1)."""
    try:
        st: os.stat_result | None = os.stat(output)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:
        raise UploaderError(f"cannot write {output}: {exc.strerror}") from None
    resolved = os.path.realpath(output)
    plan = output_plan(output, st, resolved, os.path.isdir(os.path.dirname(resolved)))
    if plan.error:
        raise UploaderError(plan.error)
    try:
        with _opened(plan) as f:
            return write(f)
    except OSError as exc:
        raise UploaderError(f"cannot write {output}: {exc.strerror or exc}") from None


@contextmanager
def _opened(plan: OutputPlan) -> Iterator[BinaryIO]:
    """The file to write `plan.path` through; an atomic one is renamed into place when the block ends
    without an error, and removed otherwise."""
    if not plan.atomic:
        with open(plan.path, "wb") as f:
            yield f
        return
    target = Path(plan.path)
    sweep(target.parent, f".{target.name}.", ".part")  # what a killed export of this file left (no clean-up ran)
    fd, tmp = tempfile.mkstemp(prefix=owned_prefix(f".{target.name}."), suffix=".part", dir=target.parent)
    try:
        if plan.owner is not None and plan.owner != (os.geteuid(), os.getegid()):
            try:
                os.fchown(fd, *plan.owner)  # root replacing another user's file: it stays theirs
            except PermissionError:
                pass
        os.fchmod(fd, plan.mode)
        with open(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: some file systems refuse to sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_text(
    rows: Iterable[dict[str, Any]], fmt: str, out: IO[str], columns: list[str], spreadsheet_safe: bool = False
) -> int:
    n = 0
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(neutralise_formula(c) if spreadsheet_safe else c for c in columns)
        neutral = [spreadsheet_safe or c in API_TEXT_COLUMNS for c in columns]
        for row in rows:
            writer.writerow(
                [
                    neutralise_formula(_cell(row.get(c))) if safe else _cell(row.get(c))
                    for c, safe in zip(columns, neutral)
                ]
            )
            n += 1
    else:
        for row in rows:
            out.write(_json_line({c: row.get(c) for c in columns}) + "\n")
            n += 1
    out.flush()
    return n


def _json_line(record: dict[str, Any]) -> str:
    """A JSON Lines record; a NaN or infinite number (a Parquet manifest's double) is null there: JSON has
    no such number, and a reader would refuse the line that wrote one."""
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(record), ensure_ascii=False)


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinite float inside it made None."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _cell(value: Any) -> Any:
    """A CSV cell: text as it is, null empty, anything else (a manifest's number, boolean, list) as JSON."""
    if value is None:
        return ""
    if type(value) is str:
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


#: A Parquet type for each set of JSON kinds a column holds (nulls aside); any other mix is text.
_PARQUET_TYPE = {
    frozenset({"bool"}): "bool",
    frozenset({"int"}): "int64",
    frozenset({"float"}): "float64",
    frozenset({"int", "float"}): "float64",
}
_INT64 = range(-(2**63), 2**63)
#: The `types` value of a time column (export_rows gives its times as ISO 8601 UTC text: `…Z`).
_UTC_TIME = "timestamp[us, UTC]"


def _json_kind(value: Any) -> str:
    if type(value) is int:
        return "int" if value in _INT64 else "big"
    return {str: "str", bool: "bool", float: "float"}.get(type(value), "json")


def parquet_types(rows: Iterable[dict[str, Any]], columns: Iterable[str]) -> dict[str, str]:
    """The Parquet type of each of `columns` (a manifest's own) that holds only booleans, only integers, or
    numbers (float64), nulls aside; the others are text (`export_rows`'s `types`)."""
    kinds: dict[str, set[str]] = {c: set() for c in columns}
    for row in rows:
        for c, seen in kinds.items():
            value = row.get(c)
            if value is not None:
                seen.add(_json_kind(value))
    return {c: t for c, seen in kinds.items() if (t := _PARQUET_TYPE.get(frozenset(seen)))}


def _chunks(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_parquet(rows: Iterable[dict[str, Any]], sink: BinaryIO, columns: list[str], types: dict[str, str]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"attempts": "int64", "platform_status_at": _UTC_TIME, **types}
    schema = pa.schema([pa.field(c, _arrow_type(pa, types.get(c, "string"))) for c in columns])
    n = 0
    with pq.ParquetWriter(sink, schema) as writer:
        for chunk in _chunks(rows, 50_000):
            arrays = {c: [_typed(r.get(c), types.get(c)) for r in chunk] for c in columns}
            try:
                table = pa.table(arrays, schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # a reload changed a column's values
                raise UploaderError("the ledger changed while it was exported; export again") from None
            writer.write_table(table)
            n += len(chunk)
    return n


def _arrow_type(pa: Any, kind: str) -> Any:
    """The Arrow type of a `types` value: a pyarrow alias, or _UTC_TIME."""
    return pa.timestamp("us", tz="UTC") if kind == _UTC_TIME else pa.type_for_alias(kind)


def _typed(value: Any, kind: str | None) -> Any:
    """A value for a Parquet column: as it is in a typed column (a time parsed from its ISO 8601 text), else
    text (JSON for a non-text value)."""
    if value is None:
        return value
    if kind is not None:
        return dt.datetime.fromisoformat(value) if kind == _UTC_TIME else value
    return value if type(value) is str else _cell(value)
