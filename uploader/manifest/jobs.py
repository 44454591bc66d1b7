"""`StagedJob`: one valid job of a manifest, as the reader yields it and the loader stages it."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

__all__ = ["StagedJob", "staged_job"]


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
