"""State-transition decisions of the ledger: pure functions, tested by a table (tests/test_transitions.py).

Where an `uncertain` row goes once the listing of its batch has been read: `settle_found` for a row whose
job the listing shows, `settle_missing` for one a complete listing does not show. `Ledger.resolve_uncertain`
applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EXISTS_CODES", "Settlement", "holder_yields", "settle_found", "settle_missing"]

#: The API's error code for "this reference_id already exists in the project" (the same set as
#: uploader.api's EXISTS_CODES; the ledger knows no API, so tests/test_transitions.py checks they agree).
EXISTS_CODES = frozenset({"FS_0001"})


@dataclass(frozen=True)
class Settlement:
    """Where an uncertain row goes once a batch listing settled it (found it, or completely missed it), and why."""

    status: str  #: "succeeded", "conflict", "failed", or "pending" (sent again)
    origin: str | None  #: "recovered" or "pre-existing"; None for a row that goes failed or pending
    code: str | None
    message: str | None


def settle_found(sent_hashes: str | None, body_hash: str, held_by_another: bool = False) -> Settlement:
    """An uncertain row whose job the listing found: a clean recovery only when every earlier attempt that
    may have created the job sent exactly the payload the row holds now (`sent_hashes` is that hash alone).

    - held_by_another: the job_id is already recorded for another row → conflict `duplicate_job_id`;
    - no earlier send (`sent_hashes` empty): the ledger never sent this reference_id before the API refused
      it, so someone else created the job → conflict `created_elsewhere`, origin pre-existing;
    - another payload among the sends (the manifest changed after an answer was lost) → conflict
      `payload_changed`: the job may hold that payload;
    - else → succeeded, origin recovered.
    """
    hashes = set((sent_hashes or "").split())
    origin = "pre-existing" if not hashes else "recovered"
    if held_by_another:
        return Settlement(
            "conflict",
            origin,
            "duplicate_job_id",
            "the listing gives this row a job_id already recorded for another row",
        )
    if not hashes:
        return Settlement(
            "conflict",
            origin,
            "created_elsewhere",
            "the job existed before this ledger ever sent the row (created elsewhere): it may hold "
            "other data than the manifest says",
        )
    if hashes != {body_hash}:
        return Settlement(
            "conflict",
            origin,
            "payload_changed",
            "an earlier send with another payload may have created this job (its answer was lost "
            "before the manifest changed): it may hold the old data",
        )
    return Settlement("succeeded", origin, None, None)


def settle_missing(
    error_code: str | None, sent_hashes: str | None, attempts_left: bool, recent: bool = False
) -> Settlement | None:
    """Where an uncertain row goes when a complete listing of its batch did not find it (None: it stays).

    - not refused with FS_0001 (uncertain only because its last attempt may have reached the API: a
      timeout, a lost or malformed answer): either nothing was created, or the server has not yet processed
      that request (it may still be queued there when the listing is read). So with `attempts_left` the row
      is sent again → pending: the API creates the job, or refuses a twin with FS_0001 and the listing then
      finds it. With no attempt left: while that attempt is `recent` (recorded shortly before the listing
      began) it stays uncertain, for a later listing to find the job the server may still be creating; after
      that → failed, so `uploader retry` may send it again (FS_0001 still guards);
    - FS_0001 and this ledger never sent the row before (`sent_hashes` empty): the reference_id belongs to
      a job created elsewhere, in another batch → conflict `created_elsewhere`, origin pre-existing, job_id
      unknown — no later listing of this batch can find it;
    - FS_0001 after sends of our own: stays uncertain (the API said the job exists: a later listing may
      show it).
    """
    if error_code not in EXISTS_CODES:
        if attempts_left:
            return Settlement(
                "pending",
                None,
                error_code,
                "not found in its batch's listing: sent again (the API refuses a twin with FS_0001)",
            )
        if recent:
            return None
        return Settlement(
            "failed",
            None,
            error_code,
            "not found in its batch's listing after its last attempt: the job was not created, or not yet "
            "(`uploader retry` sends it again; the API refuses a twin with FS_0001)",
        )
    if not (sent_hashes or "").split():
        return Settlement(
            "conflict",
            "pre-existing",
            "created_elsewhere",
            "the reference_id belongs to a job this ledger never sent (created elsewhere, not in "
            "this row's batch): its job_id is unknown and it may hold other data than the manifest "
            "says",
        )
    return None


def holder_yields(status: str, origin: str | None, platform_status: str | None) -> bool:
    """Whether a row holding the job_id a listing shows under another reference_id gives it up (goes uncertain,
    to be looked up by its own reference_id) rather than make the row found a `conflict`: only a `succeeded` row
    whose job_id came from a creation answer (origin `created`: HTTP/1.1 ties answers to requests by order
    alone, and a server answering twice hands one request another's answer) that no sync has followed yet.
    A job_id from a listing or an adoption, or one whose status has been followed since, stays."""
    return status == "succeeded" and origin == "created" and platform_status is None
