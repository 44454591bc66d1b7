"""The decision tables of uploader.ledger.transitions, one row per rule."""

from __future__ import annotations

import pytest

from uploader.api import policy
from uploader.ledger import transitions
from uploader.ledger.transitions import Settlement, fails_when_not_found, settle_found


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
    ("code", "fails"),
    [("FS_0001", False), ("timeout", True), ("connection_closed", True), ("http_502", True), ("bad_job_id", True),
     ("mismatched_answer", True), ("duplicate_job_id", True), (None, True)],
)
def test_fails_when_not_found(code: str | None, fails: bool) -> None:
    assert fails_when_not_found(code) is fails
