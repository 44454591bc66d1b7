"""What loading a manifest would do, without doing it: the counts of a load and the rows a run would send.

The manifest is read and checked exactly as a load does (every problem reported, nothing written), staged
in a TEMP table (SQLite keeps it outside the ledger file), and compared with `jobs` in a read transaction;
the staging table is dropped at the end. The ledger file is left byte for byte as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uploader.ledger import (
    MERGE_COUNTS,
    PLAN_COUNTS,
    PLAN_SENDABLE,
    merge_examples,
    translate_errors,
)
from uploader.load.merge import EXAMPLES, _check, _stage, drop_staging

if TYPE_CHECKING:
    from uploader.ledger import Ledger
    from uploader.load.source import ManifestLike

__all__ = ["LoadPlan", "plan_manifest"]


@dataclass(frozen=True)
class LoadPlan:
    """A load's counts (new, unchanged, changed: re-sent with the new payload, conflicts: kept as they are),
    and what a run would then do: send `to_send` rows of this manifest (of which `pending_unchanged` were
    loaded before and are still waiting), leave `blocked` rows blocked and `unresolved` rows (unchanged, in
    conflict or uncertain since an earlier run) as they are, and send `other_pending` rows of the ledger that
    the manifest does not name."""

    manifest: str
    rows: int
    new: int
    unchanged: int
    changed: int
    conflicts: int
    pending_unchanged: int
    blocked: int
    unresolved: int
    other_pending: int
    to_send: int
    changed_examples: tuple[str, ...]
    conflict_examples: tuple[str, ...]
    seconds: float


def plan_manifest(
    ledger: Ledger, manifest: ManifestLike, on_sendable: Callable[[str, str, str | None], None] | None = None
) -> LoadPlan:
    """Plan the load of `manifest` into `ledger` (raise ManifestError for a bad manifest, as a load would).
    `on_sendable(reference_id, payload, batch_id)` sees every row a run would send, in manifest order."""
    started = time.perf_counter()
    with translate_errors(), ledger.engine.connect() as conn:
        try:
            rows = _stage(conn, manifest)
            _check(conn, manifest)
            conn.rollback()  # a fresh snapshot for the comparison (autobegun, read only, rolled back)
            new, unchanged, changed, conflicts = conn.exec_driver_sql(MERGE_COUNTS).one()
            pending_unchanged, blocked, unresolved, other_pending = conn.exec_driver_sql(PLAN_COUNTS).one()
            changed_ex = tuple(r[0] for r in conn.exec_driver_sql(merge_examples(True, EXAMPLES)))
            conflict_ex = tuple(r[0] for r in conn.exec_driver_sql(merge_examples(False, EXAMPLES)))
            to_send = 0
            for ref, payload, batch in conn.exec_driver_sql(PLAN_SENDABLE):
                to_send += 1
                if on_sendable is not None:
                    on_sendable(ref, payload, batch)
        finally:
            drop_staging(conn)
    return LoadPlan(
        manifest.label or str(Path(manifest.path)),
        rows,
        new,
        unchanged,
        changed,
        conflicts,
        pending_unchanged,
        blocked,
        unresolved,
        other_pending,
        to_send,
        changed_ex,
        conflict_ex,
        time.perf_counter() - started,
    )
