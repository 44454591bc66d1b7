"""What a manifest's columns mean: the options that map and default them, the shapes they can make, and the
check of a file's columns against both.

A module of its own because all of this is settled once, from the header (or JSONL keys, or Parquet
schema) and the options, before any row is read: the row code in `reader` only looks up the result
(API field -> column, and the shapes the file can hold).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from uploader.errors import ManifestError, Problem
from uploader.manifest import values as val
from uploader.manifest.values import show

__all__ = ["API_NAMES", "OVERRIDES", "SHAPES", "ManifestOptions", "resolve_columns"]

#: Columns (API field names, after --column mapping) that make each manifest shape.
SHAPES: dict[str, tuple[str, ...]] = {
    "image": ("reference_id", "image_url"),
    "video_long": ("reference_id", "frame_id", "src"),
    "video_wide": ("reference_id", "frames"),
    "raw": ("reference_id", "data"),
}
_SHAPE_NAMES = {
    "image": "an image manifest",
    "video_long": "a long-form video",
    "video_wide": "a wide-form video",
    "raw": "a raw manifest",
}
#: File-level problems: each a message, or a (column, message) pair.
_Problems = list[str | tuple[str | None, str]]
OVERRIDES = ("project_id", "work_flow_id", "batch_id", "priority_weight", "metadata")
API_NAMES = frozenset({"frame_index", *OVERRIDES, *(c for cols in SHAPES.values() for c in cols)})


@dataclass(frozen=True)
class ManifestOptions:
    """How to read a manifest; the CLI's defaults for columns a manifest does not have."""

    project_id: str | None = None
    work_flow_id: str | None = None
    batch_id: str | None = None
    format: str | None = None
    columns: tuple[tuple[str, str], ...] = ()
    #: Accept s3:// and gs:// storage URLs (`--sign`): uploader signs them at send time. Not part of the
    #: fingerprint: the stored rows keep the storage URL, so a manifest that loads without it loads the same
    #: rows with it (one that needs it does not load without it).
    sign: bool = False

    def fingerprint(self) -> str:
        """sha256 of the options: the same file loaded with the same options is the same load."""
        doc = {
            "v": 1,
            "project_id": self.project_id,
            "work_flow_id": self.work_flow_id,
            "batch_id": self.batch_id,
            "format": self.format.lower() if self.format else None,
            "columns": sorted([api, col] for api, col in self.columns),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _fail(path: Path, problems: _Problems) -> ManifestError:
    """A ManifestError of file-level problems: each a message, or a (column, message) pair."""
    return ManifestError([Problem(str(path), None, *(p if isinstance(p, tuple) else (None, p))) for p in problems])


def resolve_columns(
    path: Path, file_format: str, cols: tuple[str, ...], opts: ManifestOptions, kinds: list[str], types: list[str]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Apply --column mappings, detect the shapes and check the defaults; raise if the file cannot work.

    `kinds` and `types` are, for Parquet, each column's `parquet_kind` and Arrow type (else empty). Returns
    API field -> manifest column, and the shapes the columns fit (more than one: a mixed manifest).
    Raises with every problem of a stage at once: the header and mappings, then the shapes, then the
    defaults and column types."""
    problems = _header_problems(file_format, cols)
    mapping = _mapping(opts.columns, cols, problems)
    if problems:
        raise _fail(path, problems)
    claimed = set(mapping.values())  # a column mapped elsewhere does not also supply its own name
    names = {api: mapping.get(api, api) for api in API_NAMES if api in mapping or (api in cols and api not in claimed)}
    fits = [s for s, req in SHAPES.items() if all(f in names for f in req)]
    if not fits:
        raise _fail(path, [_no_shape(cols, names)])
    keep = {*OVERRIDES, *(f for s in fits for f in SHAPES[s])}
    if "video_long" in fits:
        keep.add("frame_index")
    names = {api: c for api, c in names.items() if api in keep}  # the rest are extra columns
    problems = _default_problems(opts, names) + (_parquet_type_problems(names, cols, kinds, types) if kinds else [])
    if problems:
        raise _fail(path, problems)
    return names, tuple(fits)


def _header_problems(file_format: str, cols: tuple[str, ...]) -> _Problems:
    """Column names used twice, or missing."""
    problems: _Problems = []
    dups = sorted(c for c, n in Counter(cols).items() if n > 1)
    if dups:
        problems.append(f"duplicate column names in the header: {', '.join(map(show, dups[:20]))}")
    if "" in cols:
        problems.append(
            'a line has an empty key ("")'
            if file_format == "jsonl"
            else f"column {cols.index('') + 1} of the header has no name"
        )
    return problems


def _mapping(columns: tuple[tuple[str, str], ...], cols: tuple[str, ...], problems: _Problems) -> dict[str, str]:
    """API field -> manifest column of the --column options that can apply; the others go to `problems`."""
    mapping: dict[str, str] = {}
    for api, col in columns:
        if api not in API_NAMES:
            problems.append(f"--column {api}={col}: unknown API field {api!r}; known: {', '.join(sorted(API_NAMES))}")
        elif api in mapping:
            problems.append(f"--column {api}=... is given twice")
        elif col not in cols:
            problems.append((col, f"--column {api}={col}: the manifest has no column {col!r}"))
        else:
            mapping[api] = col
    return mapping


def _visible(name: str) -> str:
    """A column name as a message shows it: as it is, or, when it holds a character that shows as nothing or
    as a plain space (a zero-width space, a BOM, a no-break space, a control), with Python's escapes."""
    return name if name.isprintable() else ascii(name)


def _no_shape(cols: tuple[str, ...], names: dict[str, str]) -> str:
    """Why columns that fit no shape do not: what each shape needs, and (the first of) the columns found."""
    needs = "; ".join(
        f"{_SHAPE_NAMES[s]} needs {', '.join(req)} (missing {', '.join(f for f in req if f not in names)})"
        for s, req in SHAPES.items()
    )
    found = ", ".join(_visible(c if len(c) <= 60 else c[:60] + "…") for c in cols[:50])
    found += f", … ({len(cols)} columns)" if len(cols) > 50 else ""
    return (
        f"the columns fit no manifest shape. found columns: {found}; {needs}. "
        "Rename a column or map it with --column API_FIELD=COLUMN"
    )


def _default_problems(opts: ManifestOptions, names: dict[str, str]) -> _Problems:
    """Bad --project-id/--work-flow-id/--batch-id values, and ids neither given nor in a column."""
    problems: _Problems = []
    for api, flag, value in (
        ("project_id", "--project-id", opts.project_id),
        ("work_flow_id", "--work-flow-id", opts.work_flow_id),
    ):
        if value and (why := val.id_problem(value)):
            problems.append((api, f"{flag} {show(value)} {why}"))
        elif not value and api not in names:
            problems.append((api, f"no {api}: give {flag} or a {api} column"))
    if opts.batch_id and not val.UUID.fullmatch(opts.batch_id):
        problems.append(("batch_id", f"--batch-id {opts.batch_id!r} is not a UUID"))
    return problems


def _parquet_type_problems(
    names: dict[str, str], cols: tuple[str, ...], kinds: list[str], types: list[str]
) -> _Problems:
    """Parquet columns whose type cannot hold their field: JSON fields need text or lists/structs, URLs text,
    the other fields text or integers (integers are ids, never URLs or JSON objects)."""
    problems: _Problems = []
    for api, col in names.items():
        kind, json_field = kinds[cols.index(col)], api in ("data", "metadata", "frames")
        url_field = api in ("image_url", "src")
        if kind not in ("text", "null", "object" if json_field else "text" if url_field else "int"):
            want = "JSON text" if json_field else "text" if url_field else "text (or integers)"
            problems.append((col, f"column {col!r} has Parquet type {types[cols.index(col)]}; {api} must be {want}"))
    return problems
