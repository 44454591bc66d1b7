"""Issue 10, items 2, 3 and 5, at the ledger (a real SQLite file and a real PostgreSQL database): the payload
hash of every attempt that may have created a job, a job_id answered for two rows, and how a batch listing
settles uncertain rows (succeeded, conflict or failed)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import fake_manifest
from uploader.ledger.ledger import Ledger, Resolution, Result, utcnow
from uploader.ledger.models import Status
from uploader.load import load_manifest

ROWS = [(f"ref-{i}", f"https://example.com/{i}.jpg") for i in range(4)]


def body_hash(ref: str, url: str) -> str:
    body = json.dumps({"reference_id": ref, "work_flow_id": "wf", "data": {"image_url": url}})
    return hashlib.sha256(body.encode()).hexdigest()


H = {ref: body_hash(ref, url) for ref, url in ROWS}


def row(ledger: Ledger, ref: str) -> dict:
    with ledger.engine.connect() as conn:
        found = (
            conn.execute(
                text(
                    "SELECT status, job_id, sent_hashes, attempt_hash, origin, error_code, error_message, recovered "
                    "FROM jobs "
                    "WHERE reference_id = :r"
                ),
                {"r": ref},
            )
            .mappings()
            .one()
        )
    return dict(found)


def claim_all(ledger: Ledger, owner: str, lease: float = 60) -> dict:
    return {c.reference_id: c for c in ledger.claim(owner, 100, lease)}


@pytest.mark.slow
def test_attempt_hashes_follow_what_may_have_created_the_job(ledger: Ledger, tmp_path: Path) -> None:
    load_manifest(ledger, fake_manifest(tmp_path, ROWS), "opts")
    owner = ledger.register_worker()
    c = claim_all(ledger, owner)
    assert row(ledger, "ref-0")["attempt_hash"] == H["ref-0"] and row(ledger, "ref-0")["sent_hashes"] is None
    ledger.record(
        [
            # a timeout may have created the job: kept; an API error envelope certainly did not: not kept
            Result(c["ref-0"].id, c["ref-0"].lease_token, Status.PENDING, error_code="timeout", may_have_created=True),
            Result(c["ref-1"].id, c["ref-1"].lease_token, Status.PENDING, error_code="FS_0000"),
            Result(
                c["ref-2"].id,
                c["ref-2"].lease_token,
                Status.SUCCEEDED,
                job_id="J2",
                may_have_created=True,
                origin="created",
            ),
        ]
    )
    assert (row(ledger, "ref-0")["sent_hashes"], row(ledger, "ref-0")["attempt_hash"]) == (H["ref-0"], None)
    assert (row(ledger, "ref-1")["sent_hashes"], row(ledger, "ref-1")["attempt_hash"]) == (None, None)
    assert (row(ledger, "ref-2")["origin"], row(ledger, "ref-2")["sent_hashes"]) == ("created", H["ref-2"])
    # the same payload again is kept once
    c = claim_all(ledger, owner)
    ledger.record([Result(c["ref-0"].id, c["ref-0"].lease_token, Status.PENDING, may_have_created=True)])
    assert row(ledger, "ref-0")["sent_hashes"] == H["ref-0"]
    # a stopped run's rows: kept, conservatively (a hard stop may cancel a request in the air)
    ledger.release(owner)
    assert (row(ledger, "ref-1")["sent_hashes"], row(ledger, "ref-1")["attempt_hash"]) == (H["ref-1"], None)


@pytest.mark.slow
def test_a_dead_runs_attempt_is_kept_when_its_row_is_claimed_again(ledger: Ledger, tmp_path: Path) -> None:
    """SIGKILL before any answer was recorded: the row is in_flight with its attempt's hash; the claim that
    takes it over first keeps that hash as sent; then a reload changes the payload: both hashes are kept."""
    load_manifest(ledger, fake_manifest(tmp_path, ROWS[:1]), "opts")
    dead = ledger.register_worker()
    ledger.claim(dead, 10, 1, now=utcnow() - dt.timedelta(seconds=60))  # its lease expired long ago
    other = ledger.register_worker()
    (c,) = ledger.claim(other, 10, 60)
    assert (row(ledger, "ref-0")["sent_hashes"], row(ledger, "ref-0")["attempt_hash"]) == (H["ref-0"], H["ref-0"])
    ledger.record([Result(c.id, c.lease_token, Status.PENDING, error_code="http_401", refund_attempt=True)])
    load_manifest(ledger, fake_manifest(tmp_path, [("ref-0", "https://example.com/fixed.jpg")], name="m2.csv"), "opts")
    (c,) = ledger.claim(other, 10, 60)
    new = body_hash("ref-0", "https://example.com/fixed.jpg")
    assert (row(ledger, "ref-0")["sent_hashes"], row(ledger, "ref-0")["attempt_hash"]) == (H["ref-0"], new)
    ledger.record([Result(c.id, c.lease_token, Status.PENDING, error_code="connection_closed", may_have_created=True)])
    assert row(ledger, "ref-0")["sent_hashes"] == f"{H['ref-0']} {new}"


@pytest.mark.slow
def test_listing_settles_uncertain_rows_by_what_was_sent(ledger: Ledger, tmp_path: Path) -> None:
    """ref-0: our own lost answer, same payload → succeeded (recovered). ref-1: FS_0001 at the first send →
    conflict, pre-existing. ref-2: an earlier, different payload was sent → conflict (payload_changed).
    ref-3: found with a job_id another row already holds → conflict (duplicate_job_id)."""
    load_manifest(ledger, fake_manifest(tmp_path, ROWS), "opts")
    owner = ledger.register_worker()
    c = claim_all(ledger, owner)
    ledger.record(
        [
            Result(c["ref-0"].id, c["ref-0"].lease_token, Status.PENDING, error_code="timeout", may_have_created=True),
            Result(c["ref-1"].id, c["ref-1"].lease_token, Status.UNCERTAIN, error_code="FS_0001"),
            Result(c["ref-2"].id, c["ref-2"].lease_token, Status.PENDING, error_code="timeout", may_have_created=True),
            Result(c["ref-3"].id, c["ref-3"].lease_token, Status.PENDING, error_code="timeout", may_have_created=True),
        ]
    )
    changed = [("ref-2", "https://example.com/changed.jpg")]
    assert load_manifest(ledger, fake_manifest(tmp_path, changed, name="m2.csv"), "opts").updated == 1
    c = claim_all(ledger, owner)
    ledger.record(
        [
            Result(c[ref].id, c[ref].lease_token, Status.UNCERTAIN, error_code="FS_0001")
            for ref in ("ref-0", "ref-2", "ref-3")
        ]
    )
    ids = {ref: c[ref].id for ref in ("ref-0", "ref-2", "ref-3")}
    ids["ref-1"] = row_id(ledger, "ref-1")
    done = ledger.resolve_uncertain({ids["ref-0"]: "J0", ids["ref-1"]: "J1", ids["ref-2"]: "J2", ids["ref-3"]: "J0"})
    assert done == Resolution(succeeded=1, conflict=3)
    got = {ref: row(ledger, ref) for ref, _ in ROWS}
    assert {ref: (r["status"], r["origin"], r["error_code"], r["job_id"]) for ref, r in got.items()} == {
        "ref-0": ("succeeded", "recovered", None, "J0"),
        "ref-1": ("conflict", "pre-existing", "created_elsewhere", "J1"),
        "ref-2": ("conflict", "recovered", "payload_changed", "J2"),
        "ref-3": ("conflict", "recovered", "duplicate_job_id", "J0"),
    }
    # a conflict is final: never claimed, never retried, a listing naming it again changes nothing
    assert ledger.claim(owner, 100, 60) == [] and ledger.retry([], everything=True) == 0
    assert ledger.resolve_uncertain({ids["ref-1"]: "J9"}, [ids["ref-2"]]) == Resolution()
    assert ledger.counts()["conflict"] == 3
    status = ledger.status()
    assert status.origins == {"pre-existing": 1, "recovered": 3}
    assert status.error_codes == {"created_elsewhere": 1, "payload_changed": 1, "duplicate_job_id": 1}
    exported = {r["reference_id"]: r for r in ledger.export_rows()}
    assert exported["ref-1"]["origin"] == "pre-existing" and exported["ref-1"]["status"] == "conflict"


def row_id(ledger: Ledger, ref: str) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(text("SELECT id FROM jobs WHERE reference_id = :r"), {"r": ref}).scalar_one()


def test_rows_a_complete_listing_does_not_find(ledger: Ledger, tmp_path: Path) -> None:
    """Not found: a row uncertain after a lost answer was not created → failed with its last error; an
    FS_0001 row this ledger had sent before stays uncertain (the API said it exists; it may be our job); an
    FS_0001 row this ledger never sent belongs to a job created elsewhere, in another batch → conflict
    `created_elsewhere` with no job_id (no listing of its batch can ever find it)."""
    load_manifest(ledger, fake_manifest(tmp_path, ROWS[:3]), "opts")
    owner = ledger.register_worker()
    c = claim_all(ledger, owner)
    ledger.record(
        [Result(c["ref-2"].id, c["ref-2"].lease_token, Status.PENDING, error_code="timeout", may_have_created=True)]
    )
    again = claim_all(ledger, owner)["ref-2"]
    ledger.record(
        [
            Result(
                c["ref-0"].id,
                c["ref-0"].lease_token,
                Status.UNCERTAIN,
                error_code="timeout",
                error_message="late",
                may_have_created=True,
            ),
            Result(c["ref-1"].id, c["ref-1"].lease_token, Status.UNCERTAIN, error_code="FS_0001"),
            Result(again.id, again.lease_token, Status.UNCERTAIN, error_code="FS_0001"),
        ]
    )
    ids = [c["ref-0"].id, c["ref-1"].id, again.id]
    assert ledger.resolve_uncertain({}, ids, max_attempts=1) == Resolution(conflict=1, failed=1)
    assert (row(ledger, "ref-0")["status"], row(ledger, "ref-0")["error_code"]) == ("failed", "timeout")
    ref1 = row(ledger, "ref-1")
    assert (ref1["status"], ref1["origin"], ref1["error_code"], ref1["job_id"]) == (
        "conflict",
        "pre-existing",
        "created_elsewhere",
        None,
    )
    assert row(ledger, "ref-2")["status"] == "uncertain"
    assert ledger.retry(["timeout"]) == 1
    assert ledger.retry(everything=True) == 0  # a conflict is not failed: retry never touches it


def test_a_row_a_complete_listing_does_not_find_is_sent_again_while_it_has_attempts_left(
    ledger: Ledger, tmp_path: Path
) -> None:
    """Its request may still wait at the server when the listing is read: with attempts left the row goes
    pending (its last error kept, claimable at once), so the run sends it again and the API either creates the
    job or refuses the twin with FS_0001. Once it has had `max_attempts`, the next miss fails it."""
    load_manifest(ledger, fake_manifest(tmp_path, ROWS[:1]), "opts")
    owner = ledger.register_worker()
    first = claim_all(ledger, owner)["ref-0"]
    lost = Result(first.id, first.lease_token, Status.UNCERTAIN, error_code="mismatched_answer", may_have_created=True)
    ledger.record([lost])
    assert ledger.resolve_uncertain({}, [first.id], max_attempts=2) == Resolution(requeued=1)
    got = row(ledger, "ref-0")
    assert (got["status"], got["error_code"], got["job_id"]) == ("pending", "mismatched_answer", None)
    assert "not found in its batch's listing: sent again" in got["error_message"]
    again = claim_all(ledger, owner)["ref-0"]
    assert again.attempts == 2
    ledger.record([Result(again.id, again.lease_token, Status.UNCERTAIN, error_code="timeout", may_have_created=True)])
    assert ledger.resolve_uncertain({}, [first.id], max_attempts=2) == Resolution(failed=1)
    assert (row(ledger, "ref-0")["status"], row(ledger, "ref-0")["error_code"]) == ("failed", "timeout")


def test_one_job_id_answered_for_two_rows_records_neither(ledger: Ledger, tmp_path: Path) -> None:
    """In one group commit, and against a row recorded earlier: the rows go uncertain (duplicate_job_id),
    and the earlier holder is demoted with them, since either may be the wrong one: the listing settles
    all of them. A fenced (stale) answer changes nothing, duplicate or not."""
    load_manifest(ledger, fake_manifest(tmp_path, ROWS), "opts")
    owner = ledger.register_worker()
    c = claim_all(ledger, owner)

    def ok(ref, job):
        return Result(
            c[ref].id,
            c[ref].lease_token,
            Status.SUCCEEDED,
            job_id=job,
            may_have_created=True,
            origin="created",
        )

    ledger.record([ok("ref-0", "J0")])
    duplicates: list[int] = []
    stale = Result(c["ref-0"].id, c["ref-0"].lease_token, Status.SUCCEEDED, job_id="J1")
    assert ledger.record([ok("ref-1", "J1"), ok("ref-2", "J1"), ok("ref-3", "J0"), stale], duplicates=duplicates) == (
        3,
        1,
    )
    assert sorted(duplicates) == sorted([c["ref-2"].id, c["ref-1"].id, c["ref-3"].id, c["ref-0"].id])
    got = {ref: row(ledger, ref) for ref, _ in ROWS}
    assert {ref: (r["status"], r["error_code"], r["job_id"], r["origin"]) for ref, r in got.items()} == {
        "ref-0": ("uncertain", "duplicate_job_id", "J0", None),
        "ref-1": ("uncertain", "duplicate_job_id", "J1", None),
        "ref-2": ("uncertain", "duplicate_job_id", "J1", None),
        "ref-3": ("uncertain", "duplicate_job_id", "J0", None),
    }
    assert all(got[ref]["sent_hashes"] == H[ref] for ref in got)  # each was sent: a clean recovery if found
    done = ledger.resolve_uncertain({row_id(ledger, ref): f"REAL-{ref}" for ref, _ in ROWS})
    assert done == Resolution(succeeded=4)
    assert {row(ledger, ref)["job_id"] for ref, _ in ROWS} == {f"REAL-{ref}" for ref, _ in ROWS}


def test_a_last_attempt_recorded_after_the_listing_began_less_the_grace_stays_uncertain(
    ledger: Ledger, tmp_path: Path
) -> None:
    """resolve_uncertain(listed_after=…): a row whose last attempt was recorded after that time may still have
    its request waiting at the server, so a listing that misses it leaves it uncertain (`late`); a listing
    begun long enough after it fails the row. Rows with attempts left go pending either way, and FS_0001 rows
    stay uncertain (not `late`)."""
    load_manifest(ledger, fake_manifest(tmp_path, ROWS[:3]), "opts")
    owner = ledger.register_worker()
    claims = claim_all(ledger, owner)
    codes = {"ref-0": "timeout", "ref-1": "FS_0001", "ref-2": "timeout"}
    ledger.record(
        [
            Result(claims[r].id, claims[r].lease_token, Status.UNCERTAIN, error_code=code, may_have_created=True)
            for r, code in codes.items()
        ]
    )
    ids = [claims[r].id for r in ("ref-0", "ref-1", "ref-2")]
    recorded = utcnow()
    soon = recorded - dt.timedelta(seconds=10)  # a listing begun right away, less a grace of 10 s
    assert ledger.resolve_uncertain({}, ids[:2], max_attempts=1, listed_after=soon) == Resolution(late=1)
    assert ledger.resolve_uncertain({}, ids[2:], max_attempts=2, listed_after=soon) == Resolution(requeued=1)
    assert [row(ledger, r)["status"] for r in ("ref-0", "ref-1", "ref-2")] == ["uncertain", "uncertain", "pending"]
    later = recorded + dt.timedelta(seconds=1)  # a listing begun more than the grace after the attempt
    assert ledger.resolve_uncertain({}, ids[:2], max_attempts=1, listed_after=later) == Resolution(failed=1)
    assert (row(ledger, "ref-0")["status"], row(ledger, "ref-1")["status"]) == ("failed", "uncertain")


def test_record_gone_on_every_engine(ledger: Ledger, tmp_path: Path) -> None:
    """record_gone (uploader sync): a tracked row that still holds the job_id goes failed / job_not_found, its
    job_id dropped, its own payload in sent_hashes (origin created); a row holding another job_id stays."""
    from uploader.ledger import GONE_CODE, record_gone

    load_manifest(ledger, fake_manifest(tmp_path, ROWS[:2]), "opts")
    with ledger.engine.begin() as conn:
        for ref, job in (("ref-0", "J0"), ("ref-1", "J1-new")):
            conn.execute(
                text("UPDATE jobs SET status = 'succeeded', job_id = :j, origin = 'created' WHERE reference_id = :r"),
                {"j": job, "r": ref},
            )
    ids = {ref: row_id(ledger, ref) for ref in ("ref-0", "ref-1")}
    assert record_gone(ledger.engine, [(ids["ref-0"], "J0"), (ids["ref-1"], "J1")], utcnow()) == 1
    gone, kept = row(ledger, "ref-0"), row(ledger, "ref-1")
    assert (gone["status"], gone["error_code"], gone["job_id"], gone["origin"]) == ("failed", GONE_CODE, None, None)
    assert gone["sent_hashes"] == body_hash("ref-0", ROWS[0][1]) and "job J0 " in gone["error_message"]
    assert (kept["status"], kept["job_id"]) == ("succeeded", "J1-new")


@pytest.mark.slow
def test_a_stopped_run_keeps_as_sent_only_the_attempts_it_started(ledger: Ledger, tmp_path: Path) -> None:
    """`release(owner, started)`: the rows whose request the run had begun keep their attempt's hash as sent; the
    rows still queued drop it (no byte of them left the process); every row is pending, attempt not counted."""
    load_manifest(ledger, fake_manifest(tmp_path, ROWS), "opts")
    owner = ledger.register_worker()
    c = claim_all(ledger, owner)
    assert ledger.release(owner, [c["ref-0"].id, c["ref-2"].id]) == 4
    for ref in ("ref-0", "ref-2"):
        assert (row(ledger, ref)["sent_hashes"], row(ledger, ref)["attempt_hash"]) == (H[ref], None)
    for ref in ("ref-1", "ref-3"):
        assert (row(ledger, ref)["status"], row(ledger, ref)["sent_hashes"], row(ledger, ref)["attempt_hash"]) == (
            "pending",
            None,
            None,
        )
    c = claim_all(ledger, owner)
    assert {claim.attempts for claim in c.values()} == {1}
    assert ledger.release(owner, []) == 4  # none started: nothing more kept as sent
    assert [row(ledger, ref)["sent_hashes"] for ref, _ in ROWS] == [H["ref-0"], None, H["ref-2"], None]


def batch_of(ledger: Ledger, ref: str) -> str | None:
    with ledger.engine.connect() as conn:
        found = conn.execute(text("SELECT batch_id FROM jobs WHERE reference_id = :r"), {"r": ref}).scalar()
    return None if found is None else str(found)


@pytest.mark.slow
def test_a_reloaded_row_keeps_the_batch_an_earlier_send_went_to(ledger: Ledger, tmp_path: Path) -> None:
    """A changed payload reloaded over a row that may have been sent (a lost answer) or was answered keeps the
    batch it went to (its job, if any, is found only there); a row never sent loses the run's batch, and gets
    the one the next run names (`projects_needing_batch`, `assign_batch`)."""
    load_manifest(ledger, fake_manifest(tmp_path, ROWS), "opts")
    assert ledger.assign_batch("p1", "B1") == 4
    owner = ledger.register_worker()
    c = claim_all(ledger, owner)
    ledger.record(
        [
            Result(c["ref-0"].id, c["ref-0"].lease_token, Status.PENDING, error_code="timeout", may_have_created=True),
            Result(c["ref-1"].id, c["ref-1"].lease_token, Status.FAILED, error_code="FS_0007"),
        ]
    )
    ledger.release(owner, [])  # ref-2 and ref-3 were claimed, never sent
    fixed = [(ref, f"{url}?fixed") for ref, url in ROWS]
    report = load_manifest(ledger, fake_manifest(tmp_path, fixed, name="m2.csv"), "opts")
    assert report.updated == 4
    assert [batch_of(ledger, ref) for ref, _ in ROWS] == ["B1", "B1", None, None]
    assert ledger.projects_needing_batch() == ["p1"]
    assert ledger.assign_batch("p1", "B2") == 2
    assert [batch_of(ledger, ref) for ref, _ in ROWS] == ["B1", "B1", "B2", "B2"]


def test_a_reload_never_moves_a_row_whose_job_may_exist_to_another_batch(ledger: Ledger, tmp_path: Path) -> None:
    """A manifest naming another batch for a row an earlier send may have created a job from (a lost answer)
    holds that row back as a conflict, with its batch and payload: its job is found, and a twin refused, only
    in the batch it went to. A row whose send certainly created nothing (a refusal) moves; an unchanged batch
    in any letter case is no move."""
    first, second = "6f1c1a52-8a5e-4c1b-9d55-0c4d5b3f1e2a", "0b9e2c1d-1111-4c1b-9d55-0c4d5b3f1e2b"
    load_manifest(ledger, fake_manifest(tmp_path, ROWS, batch=first), "opts")
    owner = ledger.register_worker()
    c = claim_all(ledger, owner)
    ledger.record(
        [
            Result(c["ref-0"].id, c["ref-0"].lease_token, Status.PENDING, error_code="timeout", may_have_created=True),
            Result(c["ref-1"].id, c["ref-1"].lease_token, Status.FAILED, error_code="FS_0007"),
        ]
    )
    ledger.release(owner, [])
    before = row(ledger, "ref-0")
    same = load_manifest(ledger, fake_manifest(tmp_path, ROWS, batch=first.upper(), name="m1.csv"), "opts")
    assert (same.conflicts, same.updated) == (0, 4)  # the same batch in capitals: the payloads change, no move
    assert (batch_of(ledger, "ref-0") or "").lower() == first
    report = load_manifest(ledger, fake_manifest(tmp_path, ROWS, batch=second, name="m2.csv"), "opts")
    assert report.conflicts == 1 and report.updated == 3, report
    assert (batch_of(ledger, "ref-0") or "").lower() == first
    assert row(ledger, "ref-0")["sent_hashes"] == before["sent_hashes"]
    assert [batch_of(ledger, ref) for ref, _ in ROWS[1:]] == [second] * 3


@pytest.mark.slow
def test_export_gives_a_job_id_only_for_jobs_known_to_be_the_rows(ledger: Ledger, tmp_path: Path) -> None:
    """`export_rows`: the job_id of succeeded and conflict rows; an uncertain or failed row's job_id is an
    unconfirmed answer: exported as none, kept in the ledger."""
    load_manifest(ledger, fake_manifest(tmp_path, ROWS), "opts")
    states = {"ref-0": "succeeded", "ref-1": "conflict", "ref-2": "uncertain", "ref-3": "failed"}
    with ledger.engine.begin() as conn:
        for ref, status in states.items():
            conn.execute(
                text("UPDATE jobs SET status = :s, job_id = :j WHERE reference_id = :r"),
                {"s": status, "j": f"J-{ref}", "r": ref},
            )
    exported = {r["reference_id"]: r["job_id"] for r in ledger.export_rows()}
    assert exported == {"ref-0": "J-ref-0", "ref-1": "J-ref-1", "ref-2": None, "ref-3": None}
    assert row(ledger, "ref-2")["job_id"] == "J-ref-2"
