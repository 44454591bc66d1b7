"""Each run's counts per minute (the `activity` table): written by the sending run about once per heartbeat
from its in-memory counters, read by `uploader report` for its throughput chart."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from sqlalchemy import Engine, text

from uploader.ledger.engine import write_tx

__all__ = ["ACTIVITY_COUNTERS", "record_activity"]

#: The counters of one minute, as the table's columns name them.
ACTIVITY_COUNTERS = ("requests", "created", "recovered", "failed", "throttled", "retried")

#: An upsert both engines read the same way (SQLite 3.24+ and PostgreSQL 9.5+): a minute written again as
#: the run goes on takes the run's newer counts.
_UPSERT = text(
    f"INSERT INTO activity (owner, minute, {', '.join(ACTIVITY_COUNTERS)}) "
    f"VALUES (:owner, :minute, {', '.join(':' + c for c in ACTIVITY_COUNTERS)}) "
    "ON CONFLICT (owner, minute) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in ACTIVITY_COUNTERS)
)


def record_activity(engine: Engine, owner: str, minute: dt.datetime, counts: Mapping[str, int]) -> None:
    """Set what the run `owner` did in `minute` (naive UTC, whole minute), in a transaction of its own."""
    with write_tx(engine) as conn:
        conn.execute(_UPSERT, {"owner": owner, "minute": minute, **{c: int(counts[c]) for c in ACTIVITY_COUNTERS}})
