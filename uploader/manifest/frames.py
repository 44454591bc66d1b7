"""Long-form video manifests: one row per frame, the frames of one video anywhere in the file.

Such a manifest cannot be turned into jobs row by row, and must not be held in memory to group it, so each
checked frame row is parked in a `FrameStore` (an external merge sort: sorted runs spilled to private
temporary files) and, once the file has been read, the frames are read back grouped by
(project_id, reference_id) and each video is checked as a whole.
Apart from the row code (`reader`) because this is the only place rows wait for one another.
"""

from __future__ import annotations

import heapq
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from itertools import groupby, islice
from operator import itemgetter
from typing import Any

from uploader.manifest.jobs import StagedJob
from uploader.manifest.values import (
    INTEGER,
    LONE_SURROGATE,
    Errors,
    bad_unicode,
    dumps,
    job_body,
    show,
    unencodable,
    url_problem,
)

__all__ = ["FrameStore", "frame_row", "videos"]

#: Frame rows held in memory at most (plus one chunk): more are sorted and spilled to a run file.
RUN_ROWS = 20_000
#: Rows per pickled block of a run file: what the merge holds in memory per run.
BLOCK_ROWS = 256
#: Runs merged at once; with more, the first ones are merged into one run first (so open files and the
#: merge's memory stay bounded).
FAN_IN = 64

Row = tuple[Any, ...]  # pid, ref, ord, line, fid, src, wf, batch, pw, meta, extra, bad
_order = itemgetter(0, 1, 2, 3)  # (pid, ref, ord, line): a video's frames together, in frame order


class FrameStore:
    """Frames of long-form videos, sorted by (project_id, reference_id, frame order, line) without the
    manifest being held in memory: at most `RUN_ROWS` rows are held, and each full batch is sorted and
    spilled as a run file (pickled blocks) to a private temporary directory; `videos()` merges the runs."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="uploader-frames-")
        self._rows: list[Row] = []
        self._runs: list[str] = []
        self._made = 0  # run files written, for their names

    def add(self, rows: list[Row]) -> None:
        self._rows += rows
        if len(self._rows) >= RUN_ROWS:
            self._rows.sort(key=_order)
            self._runs.append(self._write(self._rows))
            self._rows = []

    def videos(self) -> Iterator[tuple[tuple[str, str], Iterator[Row]]]:
        """Frames grouped by (project_id, reference_id), in frame order (frame_index, else file order)."""
        rows: Iterable[Row] = sorted(self._rows, key=_order)
        self._rows = []
        while len(self._runs) > FAN_IN:
            first, self._runs = self._runs[:FAN_IN], self._runs[FAN_IN:]
            self._runs.append(self._write(heapq.merge(*map(_read, first), key=_order)))
            for path in first:
                os.unlink(path)
        if self._runs:
            rows = heapq.merge(*map(_read, self._runs), rows, key=_order)
        return groupby(rows, key=itemgetter(0, 1))

    def _write(self, rows: Iterable[Row]) -> str:
        """A run file of `rows` (sorted), in pickled blocks of `BLOCK_ROWS`."""
        path = os.path.join(self.path, f"run-{self._made}")
        self._made += 1
        with open(path, "wb") as f:
            it = iter(rows)
            while block := list(islice(it, BLOCK_ROWS)):
                pickle.dump(block, f, pickle.HIGHEST_PROTOCOL)
        return path

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _read(path: str) -> Iterator[Row]:
    """The rows of a run file, one block in memory at a time."""
    with open(path, "rb") as f:
        while True:
            try:
                block: list[Row] = pickle.load(f)
            except EOFError:
                return
            yield from block


def frame_row(
    line: int,
    text: Callable[[str], str | None],
    has_index: bool,
    errs: Errors,
    job: tuple[Any, ...],
    sign: bool = False,
) -> tuple[Any, ...] | None:
    """Check one long-form frame row, adding to `errs`; the row to park in the frame store (flagged if it has
    problems), or None if it has no reference_id to be grouped by. `text(api)` reads one of its cells."""
    pid, ref, wf, batch, pw, meta, extra = job
    fid, src = text("frame_id"), text("src")
    if fid == "":
        errs.append(("frame_id", "frame_id is empty"))
    if src is not None and (why := url_problem(src, sign)):
        errs.append(("src", f"src {why}"))
    order = line
    if has_index:
        index = text("frame_index")
        if index == "":
            errs.append(("frame_index", "frame_index is empty (with the column, every frame needs one)"))
        elif index is not None and not INTEGER.fullmatch(index):
            errs.append(("frame_index", f"frame_index must be an integer, not {show(index)}"))
        order = int(index) if index and not errs else 0
    meta_text = None
    if meta is not None:
        try:
            meta_text = dumps(meta)
        except (ValueError, TypeError, RecursionError):
            errs += unencodable({"metadata": meta})
    row = (pid, ref, order, line, fid, src, wf, batch, pw, meta_text, extra)
    if not errs and bad_unicode(f"{pid}{ref}{fid}{src}{wf}{batch}{pw}{meta_text}{extra}"):
        errs.append((None, LONE_SURROGATE))
    if ref and not bad_unicode(ref + pid):
        return (*row, 1 if errs else 0)
    return None


Report = Callable[[int, str, str], None]  # (line, column, message) of a problem


def videos(
    store: FrameStore, size: int, names: dict[str, str], problem: Report, unit: str = "line"
) -> Iterator[list[StagedJob]]:
    """Group the parked frames into one job per (project_id, reference_id), checking each as a whole.
    `names` maps API fields to the manifest's columns; problems go to `problem`."""
    out: list[StagedJob] = []
    for (pid, ref), group in store.videos():
        rows = list(group)
        if any(r[11] for r in rows) or not _video_ok(ref, rows, names, problem, unit):
            continue  # problems are recorded
        first = min(rows, key=itemgetter(3))  # the first row in the file gives the line and the (agreed) extras
        data: dict[str, Any] = {"video_data": {"frames": [{"frame_id": r[4], "src": r[5]} for r in rows]}}
        if first[9] is not None:
            data["metadata"] = json.loads(first[9])
        body = job_body(ref, first[6], first[7], data, first[8])
        out.append(StagedJob(first[3], pid, ref, first[6], first[7], body, first[10]))
        if len(out) >= size:
            yield out
            out = []
    if out:
        yield out


def _video_ok(ref: str, rows: list[tuple[Any, ...]], names: dict[str, str], problem: Report, unit: str) -> bool:
    """Frames of one video: no frame_id (or frame_index) twice, and all agree on the job's settings and on
    the extra columns' values."""
    first, ok = min(rows, key=itemgetter(3)), True
    seen: dict[tuple[str, Any], int] = {}
    for r in rows:
        index = r[2] if "frame_index" in names else None
        for api, key in (("frame_id", r[4]), ("frame_index", index)):
            if key is not None and (api, key) in seen:
                a, b = sorted((seen[api, key], r[3]))
                problem(
                    b,
                    names[api],
                    f"{api} {show(str(key))} appears twice for reference_id {show(ref)} ({unit}s {a} and {b})",
                )
                ok = False
            seen.setdefault((api, key), r[3])
        for k, api in ((6, "work_flow_id"), (7, "batch_id"), (8, "priority_weight"), (9, "metadata")):
            if r[k] != first[k]:
                was, now = show(str(first[k] or "")), show(str(r[k] or ""))
                message = f"{api} {now} differs from {was} on {unit} {first[3]}; all frames must agree"
                problem(r[3], names.get(api, api), message)
                ok = False
        if r[10] != first[10]:
            ok = _extras_agree(r, first, problem, unit) and ok
    return ok


def _extras_agree(row: Row, first: Row, problem: Report, unit: str) -> bool:
    """Whether a frame row's extra columns hold the same values as the video's first row, reporting each one
    that does not: the job keeps one set of extras (the first row's), so another value would be lost unseen.
    Values are compared as JSON text, so 1, 1.0 and true stay different."""
    was, now = json.loads(first[10]), json.loads(row[10])
    ok = True
    for column in dict.fromkeys([*was, *now]):  # a value on one row only (the other's cell empty) differs too
        value = now.get(column)
        if dumps(value) != dumps(was.get(column)):
            message = f"{column} {_shown(value)} differs from {_shown(was.get(column))} on {unit} {first[3]}"
            problem(row[3], column, message + "; all frames must agree")
            ok = False
    return ok


def _shown(value: Any) -> str:
    """An extra value for a message: text as it is, anything else as JSON."""
    return show(value if isinstance(value, str) else dumps(value))
