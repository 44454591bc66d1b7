"""`StagedJob`: one valid job of a manifest, as the reader yields it and the loader stages it; `JobColumns`: a
chunk of them column by column, as the slice readers write them."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

__all__ = ["JobColumns", "StagedJob", "staged_job"]


class StagedJob(NamedTuple):
    """One valid job, ready to POST: `body` is the exact compact JSON payload; `extra` the manifest's own
    columns as a JSON object (or None); `line` where it is in the file (Parquet: its row number)."""

    line: int
    project_id: str
    reference_id: str
    work_flow_id: str
    batch_id: str | None
    body: str
    extra: str | None


#: A StagedJob from a tuple of its seven fields, at C speed (for whole chunks of rows built by zip();
#: StagedJob._make checks the length in Python, which a reader of millions of rows would feel).
staged_job = partial(tuple.__new__, StagedJob)


class JobColumns(NamedTuple):
    """A chunk of valid jobs, column by column (StagedJob's fields). `own` is None when every row takes the
    load's project_id, work_flow_id and batch_id, else those three columns; `extras` is None when no row
    has an extra. Manifest.chunk_columns builds a plain image manifest's chunks this way directly, never as
    rows."""

    lines: Sequence[int]
    refs: Sequence[str]
    bodies: Sequence[str]
    extras: Sequence[str | None] | None
    own: tuple[Sequence[str], Sequence[str], Sequence[str | None]] | None
