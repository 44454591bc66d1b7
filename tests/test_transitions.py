"""The decision tables of uploader.ledger.transitions, one row per rule."""

from __future__ import annotations

import pytest

from uploader.api import policy
from uploader.ledger import transitions
from uploader.ledger.transitions import Settlement, settle_found, settle_missing


def test_exists_codes_agree_with_the_api_policy() -> None:
    """The ledger knows no API: it keeps its own copy of the "reference_id exists" codes, which must agree."""
    assert transitions.EXISTS_CODES == policy.EXISTS_CODES


H, OLD = "a" * 64, "b" * 64


@pytest.mark.parametrize(
    ("sent", "held", "expected"),
    [
        (H, False, ("succeeded", "recovered", None)),  # our own lost answer: the normal crash recovery
        (f"{H} ", False, ("succeeded", "recovered", None)),
        (None, False, ("conflict", "pre-existing", "created_elsewhere")),
        ("", False, ("conflict", "pre-existing", "created_elsewhere")),
        (OLD, False, ("conflict", "recovered", "payload_changed")),
        (f"{OLD} {H}", False, ("conflict", "recovered", "payload_changed")),
        (f"{H} {OLD}", False, ("conflict", "recovered", "payload_changed")),
        (H, True, ("conflict", "recovered", "duplicate_job_id")),
        (None, True, ("conflict", "pre-existing", "duplicate_job_id")),
    ],
)
def test_settle_found(sent: str | None, held: bool, expected: tuple) -> None:
    settled = settle_found(sent, H, held)
    assert isinstance(settled, Settlement)
    assert (settled.status, settled.origin, settled.code) == expected
    assert (settled.message is None) == (settled.status == "succeeded")


@pytest.mark.parametrize(
    ("code", "sent", "expected"),
    [
        ("FS_0001", H, None),  # our own earlier send may be the job: a later listing may show it
        ("FS_0001", f"{H} {OLD}", None),
        ("FS_0001", None, ("conflict", "pre-existing", "created_elsewhere")),  # never sent by this ledger
        ("FS_0001", "", ("conflict", "pre-existing", "created_elsewhere")),
        ("timeout", H, ("failed", None, "timeout")),
        ("connection_closed", None, ("failed", None, "connection_closed")),
        ("http_502", H, ("failed", None, "http_502")),
        ("bad_job_id", H, ("failed", None, "bad_job_id")),
        ("mismatched_answer", H, ("failed", None, "mismatched_answer")),
        ("duplicate_job_id", H, ("failed", None, "duplicate_job_id")),
        (None, H, ("failed", None, None)),
    ],
)
@pytest.mark.parametrize("attempts_left", [False, True])
def test_settle_missing(
    code: str | None, sent: str | None, expected: tuple[str, str | None, str | None] | None, attempts_left: bool
) -> None:
    """With no attempt left, the table as written. With attempts left, a row that is not FS_0001 is sent again
    (pending, its last error kept): its request may still wait at the server, and FS_0001 refuses a twin."""
    settled = settle_missing(code, sent, attempts_left)
    if attempts_left and expected is not None and expected[0] == "failed":
        expected = ("pending", None, expected[2])
    assert (None if settled is None else (settled.status, settled.origin, settled.code)) == expected
    recent = settle_missing(code, sent, attempts_left, recent=True)
    if expected is not None and expected[0] == "failed":  # its request may still wait at the server: it stays
        expected = None
    assert (None if recent is None else (recent.status, recent.origin, recent.code)) == expected
