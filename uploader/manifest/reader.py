"""Read a manifest of labeling jobs, validate every row and build the exact JSON body of each job.

A manifest is streamed, never held in memory: `Manifest.chunks()` yields `StagedJob`s for the ledger and
records what is wrong with individual rows in `Manifest.problems`; anything wrong with the file as a whole
raises ManifestError from the constructor. Every value is text and stays verbatim (`001` stays `001`).
File formats live in `uploader.manifest.formats` (CSV/TSV in `uploader.manifest.csv_reader`), the options, shapes and
column checks in `uploader.manifest.columns`, single-value checks and JSON in `uploader.manifest.values`, the
grouping of long-form video frames in `uploader.manifest.frames`.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from itertools import repeat
from pathlib import Path
from typing import Any

from uploader.errors import Problem
from uploader.manifest import formats as fmt
from uploader.manifest import frames as long_video
from uploader.manifest import values as val
from uploader.manifest.columns import API_NAMES, OVERRIDES, SHAPES, ManifestOptions, resolve_columns
from uploader.manifest.csv_reader import CsvReader
from uploader.manifest.jobs import JobColumns, StagedJob, staged_job
from uploader.manifest.values import MAX_ID_LENGTH, Errors, enc, reference_id_problem, show, url_problem

__all__ = [
    "API_NAMES",
    "MAX_ID_LENGTH",
    "SHAPES",
    "Manifest",
    "ManifestOptions",
    "StagedJob",
    "reference_id_problem",
    "url_problem",
]

MAX_PROBLEMS_KEPT = 1000
_HOST_PREFIX = re.compile(r"https?://[A-Za-z0-9][A-Za-z0-9.-]*[/?#]")
#: A row's (reference_id, project_id, work_flow_id, batch_id, priority_weight), defaults filled in.
Settings = tuple[str | None, str, str, str | None, str | None]


class Manifest:
    """One manifest file: its format, shape and columns (checked on construction) and its rows (streamed)."""

    def __init__(self, path: str | Path, options: ManifestOptions | None = None, label: str | None = None) -> None:
        self.path = Path(path)
        #: What the ledger records and reports name the manifest by, when not its path (e.g. "<stdin>", spooled
        #: to a temporary file).
        self.label = label
        self.options = options = options or ManifestOptions()
        self.problems: list[Problem] = []
        self.problem_count = 0
        self.format = fmt.detect_format(self.path, options.format)
        self.unit = "row" if self.format == "parquet" else "line"
        fmt.sniff_start(self.path)
        #: The file as its reading began: a load refuses a manifest that is written to while it reads it.
        self.identity = fmt.file_identity(self.path)
        self._kinds: list[str] = []  # Parquet only: how each column's values become cells
        self._types: list[str] = []  # Parquet only: each column's Arrow type, for messages
        self.columns = tuple(self._read_columns())
        # API field -> manifest column, and the shapes the columns fit (raises if the file cannot work)
        self._names, self._shapes = resolve_columns(
            self.path, self.format, self.columns, options, self._kinds, self._types
        )
        self.shape = self._shapes[0] if len(self._shapes) == 1 else "mixed"
        self._idx = {api: self.columns.index(col) for api, col in self._names.items()}
        used = set(self._names.values())
        self.extra_columns = tuple(c for c in self.columns if c not in used)
        self._extras = tuple((c, i) for i, c in enumerate(self.columns) if c not in used)
        for _, i in self._extras:  # Parquet: an extra column's values keep their type (the export gives it back)
            if self._kinds[i:] and self._kinds[i] not in ("binary", "object"):
                self._kinds[i] = "value"
        self._pid, self._wf = options.project_id or "", options.work_flow_id or ""
        self._batch = options.batch_id or None
        self._sign = options.sign
        self._fast = (
            self._shapes == ("image",)
            and self.format != "jsonl"
            and bool(self._pid and self._wf)
            and "object" not in self._kinds
        )  # see _fast_image
        batch = f',"batch_id":{enc(self._batch)}' if self._batch else ""
        self._fast_mid = f'","work_flow_id":{enc(self._wf)}{batch},"data":{{"image_url":"'

    # --- construction: file-level checks -------------------------------------------------------------

    def _read_columns(self) -> list[str]:
        if self.format == "jsonl":
            return fmt.jsonl_columns(self.path)
        if self.format == "parquet":
            schema = fmt.open_parquet(self.path).schema_arrow
            self._types = [str(f.type) for f in schema]
            self._kinds = [fmt.parquet_kind(f.type) for f in schema]
            return list(schema.names)
        reader = CsvReader(self.path, "\t" if self.format == "tsv" else ",")
        try:
            if not reader.has_rows():
                raise fmt.fail(self.path, "file has a header but no rows")
            return reader.header
        finally:
            reader.close()

    # --- streaming -------------------------------------------------------------------------------------

    def chunks(self, size: int = 5000) -> Iterator[list[StagedJob]]:
        """Stream the manifest: lists of at most `size` valid jobs; problems go to `self.problems`."""
        return self.chunk_tuples(size)

    @property
    def splittable(self) -> bool:
        """Whether slices of the file (`fmt.Span`s) can be read apart: any format, but no shape (long-form
        video) that groups rows across the whole file. Whether a given CSV/TSV/JSONL file can be cut is for
        the slice processes to find (uploader.load.slices)."""
        return "video_long" not in self._shapes

    def chunk_tuples(self, size: int = 5000, span: fmt.Span | None = None) -> Iterator[list[StagedJob]]:
        """As chunks() (StagedJob is a tuple); with `span`, only that slice of a splittable file is read."""
        for chunk in self._read(size, span, columns=False):
            assert isinstance(chunk, list)
            yield chunk

    def chunk_columns(self, size: int = 5000, span: fmt.Span | None = None) -> Iterator[JobColumns]:
        """As chunk_tuples(), each chunk column by column: what a slice reader writes, without a tuple built
        and taken apart again for every row of a plain image manifest."""
        for chunk in self._read(size, span, columns=True):
            yield chunk if isinstance(chunk, JobColumns) else self._columns(chunk)

    def _read(self, size: int, span: fmt.Span | None, columns: bool) -> Iterator[list[StagedJob] | JobColumns]:
        """The good rows in chunks: lists of StagedJob, or, with `columns`, JobColumns where a chunk of a
        plain image manifest takes the fast path. Each reading starts the problems afresh."""
        if size < 1:
            raise ValueError("size must be at least 1")
        self.problems, self.problem_count = [], 0
        store = long_video.FrameStore() if "video_long" in self._shapes else None
        source = self._source(size, span)
        try:
            while True:
                with fmt.no_gc():
                    chunk = next(source, None)
                    if chunk is None:
                        break
                    for issue in chunk.issues:
                        self._problem(*issue)
                    rows = chunk.rows or chunk.cols
                    jobs = self._fast_image(chunk, columns) if self._fast and chunk.clean and rows else None
                    if jobs is None:
                        jobs = []
                        frames: list[tuple[Any, ...]] = []
                        for line, cells in zip(chunk.lines, chunk.cells()):
                            self._build(line, cells, jobs, frames)
                        if frames:
                            store.add(frames)  # type: ignore[union-attr]
                    del chunk
                if jobs:
                    yield jobs
            if store is not None:
                yield from long_video.videos(store, size, self._names, self._problem, self.unit)
        finally:
            source.close()
            if store is not None:
                store.close()

    def _columns(self, jobs: list[StagedJob]) -> JobColumns:
        """A chunk of rows (not empty) as JobColumns."""
        lines, pids, refs, wfs, batches, bodies, extras = zip(*jobs)
        mine = len(set(pids)) == len(set(wfs)) == len(set(batches)) == 1
        own = (
            None
            if mine and (pids[0], wfs[0], batches[0]) == (self._pid, self._wf, self._batch)
            else (pids, wfs, batches)
        )
        return JobColumns(lines, refs, bodies, None if extras.count(None) == len(extras) else extras, own)

    def _source(self, size: int, span: fmt.Span | None = None) -> Generator[fmt.Chunk, None, None]:
        if span is not None and not self.splittable:
            raise ValueError(f"a {self.format} manifest of shape {self.shape} cannot be read in slices")
        if self.format == "jsonl":
            yield from fmt.jsonl_chunks(self.path, list(self.columns), size, span)
        elif self.format == "parquet":
            yield from fmt.parquet_chunks(fmt.open_parquet(self.path), self._kinds, size, self.path, span)
        else:
            reader = CsvReader(self.path, "\t" if self.format == "tsv" else ",", span)
            try:
                if tuple(reader.header) != self.columns:
                    raise fmt.fail(self.path, "the file's header changed while it was being read")
                yield from reader.chunks(size)
            finally:
                reader.close()

    def _problem(self, line: int | None, column: str | None, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(Problem(str(self.path), line, column, message, self.unit))

    def _fast_image(self, chunk: fmt.Chunk, columns: bool = False) -> list[StagedJob] | JobColumns | None:
        """A whole chunk of a plain image manifest at C speed (as rows, or with `columns` as JobColumns), or
        None to fall back to `_build` row by row.

        Says yes only when every row would certainly pass `_build`, which then gives the same body."""
        cols = chunk.cols if chunk.cols is not None else list(zip(*chunk.rows))
        if any(any(cols[self._idx[a]]) for a in OVERRIDES if a in self._idx):
            return None
        refs, urls = cols[self._idx["reference_id"]], cols[self._idx["image_url"]]
        if not (all(refs) and all(urls)) or max(map(len, refs)) > 255 or max(map(len, urls)) > val.MAX_URL_LENGTH:
            return None
        ref_blob, url_blob = "".join(refs), "".join(urls)
        ref_plain, url_plain = val.plain(ref_blob), val.plain(url_blob)
        if " " in url_blob or ref_plain is None or url_plain is None:
            return None
        if val.may_be_signed(url_blob) and any(map(val.signature_problem, urls)):
            return None
        if " " in ref_blob and not all(map(str.strip, refs)):
            return None
        lo, hi = min(urls), max(urls)  # every URL between them shares their common prefix
        m = _HOST_PREFIX.match(lo)
        if not (m and hi.startswith(m.group())) and not all(map(val.HOST.match, urls)):
            return None
        bodies = map(
            "".join,
            zip(
                repeat('{"reference_id":"'),
                refs if ref_plain else val.escaped(refs),
                repeat(self._fast_mid),
                urls if url_plain else val.escaped(urls),
                repeat('"}}'),
            ),
        )
        extras: Any = None
        if self._extras:
            pieces: list[Any] = []
            for j, (name, i) in enumerate(self._extras):
                key = ("," if j else "{") + enc(name) + ":"
                try:
                    plain = val.needs_no_escape("".join(cols[i]))
                    piece = map(enc, cols[i])
                except TypeError:  # Parquet: numbers, booleans, nulls keep their type
                    plain, piece = False, map(val.extra_json, cols[i])
                pieces += [key + '"', cols[i], '"'] if plain else [key, piece]
            extras = map("".join, zip(*(repeat(p) if isinstance(p, str) else p for p in [*pieces, "}"])))
        if columns:
            return JobColumns(chunk.lines, refs, list(bodies), None if extras is None else list(extras), None)
        return list(
            map(
                staged_job,
                zip(
                    chunk.lines,
                    repeat(self._pid),
                    refs,
                    repeat(self._wf),
                    repeat(self._batch),
                    bodies,
                    repeat(None) if extras is None else extras,
                ),
            )
        )

    # --- one row, the general way ----------------------------------------------------------------------

    def _text(self, cells: Any, api: str, errs: Errors) -> str | None:
        """A cell as text ('' if absent); None (and an error) if JSONL/Parquet gave a non-text value."""
        value = cells[self._idx[api]] if api in self._idx else None
        if type(value) is str:
            return value
        if value is None or type(value) is int:
            return "" if value is None else str(value)
        if type(value) is float:
            errs.append((api, f"{api} is the number {value!r}, which is ambiguous; write it as a string"))
        else:
            errs.append((api, f"{api} must be text, not {val.json_kind(value)}"))
        return None

    def _json(self, cells: Any, api: str, errs: Errors, want: type = dict) -> Any:
        """A JSON cell (parsed already in JSONL/Parquet, or JSON text) of type `want`; None if empty/bad."""
        value = cells[self._idx[api]] if api in self._idx else None
        if type(value) is str and value:
            try:
                value = val.loads_strict(value)
            except ValueError as e:
                errs.append((api, f"{api} is {val.json_error(e)}"))
                return None
        if value is None or value == "":
            return None
        if type(value) is not want:
            what = "a JSON object" if want is dict else "a JSON array of {frame_id, src} objects"
            errs.append((api, f"{api} must be {what}, not {val.json_kind(value)}"))
            return None
        return value

    def _frames(self, cells: Any, errs: Errors) -> list[Any] | None:
        before = len(errs)
        frames = self._json(cells, "frames", errs, list)
        if frames is None or not frames:
            if len(errs) == before:
                errs.append(
                    (
                        "frames",
                        f"frames is {'empty' if frames is None else 'an empty list'}; a video needs at least one frame",
                    )
                )
            return None
        seen: dict[str, int] = {}
        out, bad = [], []
        for n, frame in enumerate(frames):
            if type(frame) is not dict:
                bad.append(f"frames[{n}] is not an object with frame_id and src")
                continue
            fid, src = frame.get("frame_id"), frame.get("src")
            if type(fid) is int:
                frame = {**frame, "frame_id": (fid := str(fid))}
            if type(fid) is not str or not fid:
                bad.append(f"frames[{n}] has no frame_id")
            elif fid in seen:
                bad.append(f"frames[{n}] repeats frame_id {show(fid)} of frames[{seen[fid]}]")
            else:
                seen[fid] = n
            if why := url_problem(src, self._sign) if type(src) is str else "is missing":
                bad.append(f"frames[{n}].src {why}")
            out.append(frame)
        errs += [("frames", msg) for msg in bad[:10]]
        if len(bad) > 10:
            errs.append(("frames", f"... and {len(bad) - 10} more problems in frames"))
        return out

    def _row_shape(self, cells: Any, errs: Errors) -> str | None:
        """Which shape a row is: the only one, or in a mixed manifest the only one whose fields are set."""
        if len(self._shapes) == 1:
            return self._shapes[0]
        filled = [f for s in self._shapes for f in SHAPES[s][1:] if cells[self._idx[f]] not in (None, "")]
        shapes = {s for s in self._shapes if any(f in filled for f in SHAPES[s][1:])}
        if len(shapes) == 1:
            return shapes.pop()
        if not shapes:
            wanted = ", ".join("/".join(SHAPES[s][1:]) for s in self._shapes)
            errs.append((None, f"row sets none of {wanted}"))
        else:
            both = " and ".join(filled) if len(filled) == 2 else ", ".join(filled[:-1]) + " and " + filled[-1]
            errs.append((None, f"row mixes shapes ({both} {'both' if len(filled) == 2 else 'all'} set)"))
        return None

    def _build(self, line: int, cells: Any, jobs: list[StagedJob], frames: list[tuple[Any, ...]]) -> None:
        """Validate one row; append its job (or, for long-form video, its frame), or record its problems.

        The checks run in the order the row's problems are reported: its settings, metadata, shape, data,
        then what only the whole job shows (a frame's checks, JSON that cannot be written)."""
        if not any(cells) and all(c is None or c == "" for c in cells):
            return  # a spreadsheet's empty row (",,,") carries no job
        errs: Errors = []
        settings = self._settings(cells, errs)
        meta = self._json(cells, "metadata", errs)
        shape = self._row_shape(cells, errs)
        data = self._data(shape, cells, meta, errs)
        extra = val.dumps_extra({c: val.cell_value(cells[i]) for c, i in self._extras}) if self._extras else None
        if shape == "video_long":
            ref, pid, wf, batch, pw = settings
            frame = long_video.frame_row(
                line,
                lambda api: self._text(cells, api, errs),
                "frame_index" in self._idx,
                errs,
                (pid, ref or "", wf, batch, pw, meta, extra),
                self._sign,
            )
            if frame is not None:
                frames.append(frame)  # parked; its problems are recorded below
        elif not errs:
            job = _job(line, shape, settings, data, meta, extra, errs)
            if job is not None:
                jobs.append(job)
                return
        for api, message in errs:
            self._problem(line, self._names.get(api, api) if api else None, message)

    def _settings(self, cells: Any, errs: Errors) -> Settings:
        """The row's reference_id and its job settings (the options' defaults filled in), each checked."""
        ref = self._text(cells, "reference_id", errs)
        if ref is not None and (why := reference_id_problem(ref)):
            errs.append(("reference_id", why))
        pid, wf = self._ids(cells, errs)
        batch = self._text(cells, "batch_id", errs)
        if batch and not val.UUID.fullmatch(batch):
            errs.append(("batch_id", f"batch_id must be a UUID, not {show(batch)}"))
        pw = self._text(cells, "priority_weight", errs)
        if pw and not (pw.isascii() and pw.isdigit() and 1 <= int(pw) <= 10):
            errs.append(("priority_weight", f"priority_weight must be an integer 1-10, not {show(pw)}"))
        # The options' batch is a batch of their project: a row of another project (its own project_id) gets
        # none (the run gives it a batch of its project), as a batch of one project is refused by another.
        default_batch = self._batch if not self._pid or pid == self._pid else None
        return ref, pid, wf, batch or default_batch, pw

    def _ids(self, cells: Any, errs: Errors) -> tuple[str, str]:
        """The row's project_id and work_flow_id, checked (both read before either is checked, so the
        problems keep their order), else the options' defaults."""
        pid, wf = self._text(cells, "project_id", errs), self._text(cells, "work_flow_id", errs)
        for api, value, flag, default in (
            ("project_id", pid, "--project-id", self._pid),
            ("work_flow_id", wf, "--work-flow-id", self._wf),
        ):
            if value and (why := val.id_problem(value)):
                errs.append((api, f"{api} {show(value)} {why}"))
            elif value == "" and not default:
                errs.append((api, f"{api} is empty and has no default: give {flag} or a {api} column value"))
        return pid or self._pid, wf or self._wf

    def _data(self, shape: str | None, cells: Any, meta: Any, errs: Errors) -> Any:
        """The job's `data` for the shapes built row by row; None for long-form video (built per video, from
        its frames) and for a row of no shape."""
        if shape == "image":
            url = self._text(cells, "image_url", errs)
            if url is not None and (why := url_problem(url, self._sign)):
                errs.append(("image_url", f"image_url {why}"))
            return {"image_url": url}
        if shape == "raw":
            return self._raw_data(cells, meta, errs)
        if shape == "video_wide":
            return {"video_data": {"frames": self._frames(cells, errs)}}
        return None

    def _raw_data(self, cells: Any, meta: Any, errs: Errors) -> Any:
        """A raw row's `data` object: not empty, a valid data.image_url if it has one, and no metadata both
        inside it and in the metadata column."""
        before = len(errs)
        data = self._json(cells, "data", errs)
        if not data and len(errs) == before:
            errs.append(("data", "data is empty" if data is None else "data is an empty object"))
        elif data and "image_url" in data:
            u = data["image_url"]
            if why := url_problem(u, self._sign) if type(u) is str else "must be a string":
                errs.append(("data", f"data.image_url {why}"))
        if data and meta is not None and "metadata" in data:
            errs.append(("metadata", "metadata is set both in the metadata column and inside data"))
        return data


def _job(
    line: int, shape: str | None, settings: Settings, data: Any, meta: Any, extra: str | None, errs: Errors
) -> StagedJob | None:
    """The job of a row whose cells passed every check, or None with the
    reason in `errs`: its JSON cannot be written, or holds a lone surrogate."""
    ref, pid, wf, batch, pw = settings
    assert ref is not None  # a row without a text reference_id has a problem already
    full = data if meta is None else {**data, "metadata": meta}
    try:
        body = val.job_body(ref, wf, batch, full, pw)
    except (ValueError, TypeError, RecursionError):  # NaN/Infinity, a datetime/bytes, extreme nesting
        errs += val.unencodable({"data" if shape == "raw" else "frames": data, "metadata": meta})
        return None
    if val.bad_unicode(body + (extra or "")):
        errs.append((None, val.LONE_SURROGATE))
        return None
    return StagedJob(line, pid, ref, wf, batch, body, extra)
