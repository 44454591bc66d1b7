"""A job row's states, and the clock the ledger stamps rows with. Standard library only: the load into a new
ledger (uploader.ledger.bare) and the SQL of uploader.ledger.loading name states without SQLAlchemy."""

from __future__ import annotations

import datetime as dt
import enum

__all__ = ["Status", "utcnow"]


class Status(str, enum.Enum):
    """The state of one job row; the legal moves between them live in ledger.py."""

    PENDING = "pending"  #: waiting to be sent (or to be re-sent once `not_before` has passed)
    IN_FLIGHT = "in_flight"  #: claimed by a worker under a lease; a request may be in the air
    SUCCEEDED = "succeeded"  #: the API created the job (or it was found existing); job_id is known
    FAILED = "failed"  #: permanent error, or retries exhausted; `uploader retry` sends it again
    UNCERTAIN = "uncertain"  #: the job may exist (FS_0001, an ambiguous last attempt, an answer that does not
    #: match the request) and its job_id is not known yet: a batch listing decides
    CONFLICT = "conflict"  #: the job exists (job_id known) but may hold other data than the manifest says
    BLOCKED = "blocked"  #: never sent: an attachment failed its preflight check (`uploader check`); released
    #: by `uploader retry --blocked`, or sent anyway by `run --allow-blocked`

    def __str__(self) -> str:
        return self.value


def utcnow() -> dt.datetime:
    """Naive UTC, as stored in the ledger."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
