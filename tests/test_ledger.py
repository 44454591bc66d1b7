"""The ledger's state machine on both engines (a real SQLite file, a real PostgreSQL database): loads, claims,
leases, fenced results, concurrent claims from two "machines"."""

from __future__ import annotations

import datetime as dt
import os
import stat
import threading
import time

import pytest

from tests.conftest import fake_manifest, is_sqlite, sqlite_only
from uploader.errors import ManifestError
from uploader.ledger.ledger import Ledger, Resolution, Result, utcnow
from uploader.ledger.models import Status
from uploader.load import load_manifest

ROWS = [(f"ref-{i}", f"https://example.com/{i}.jpg") for i in range(10)]


@sqlite_only
def test_ledger_file_is_private_and_wal(ledger, ledger_path):
    assert stat.S_IMODE(os.stat(ledger_path).st_mode) == 0o600
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


@sqlite_only
def test_background_checkpoints_keep_the_wal_checkpointed_off_the_writers_thread(ledger, ledger_path, tmp_path):
    """While `background_checkpoints` runs, its own thread checkpoints the WAL the writers fill: the ledger's
    main file alone (copied by another process, which leaves this one's locks alone) soon holds the rows. A
    writer checkpoints only past AUTOCHECKPOINT_PAGES (its connections say so), so without the thread they
    would stay in the WAL. The thread is gone afterwards, even when the body raises."""
    import sqlite3
    import subprocess
    import sys

    from uploader.ledger.bare import AUTOCHECKPOINT_PAGES
    from uploader.ledger.engine import background_checkpoints, write_tx

    def rows_in_main_file() -> int:
        copy = tmp_path / "main-only.db"
        copy.unlink(missing_ok=True)
        code = "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])"
        subprocess.run([sys.executable, "-c", code, str(ledger_path), str(copy)], check=True)
        with sqlite3.connect(copy) as db:
            try:
                return int(db.execute("SELECT count(*) FROM manifests").fetchone()[0])
            except sqlite3.OperationalError:  # no such table: the schema itself is still in the WAL
                return -1

    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == AUTOCHECKPOINT_PAGES
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="body"), background_checkpoints(ledger.engine, every=0.05):
        for i in range(20):
            with write_tx(ledger.engine) as conn:
                conn.exec_driver_sql(
                    "INSERT INTO manifests (path, size, sha256, options_hash, row_count, loaded_at) "
                    f"VALUES ('m{i}', {i}, '{i:064d}', 'o', 0, '2026-12-03 00:00:00')"
                )
        with ledger.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT count(*) FROM manifests").scalar()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not seen or seen[-1] != rows):
            seen.append(rows_in_main_file())
            time.sleep(0.05)
        raise RuntimeError("the body fails")
    assert rows >= 20 and seen[-1] == rows, (rows, seen)
    assert "uploader-checkpoint" not in threading_names()


def threading_names() -> list[str]:
    return [t.name for t in threading.enumerate()]


@pytest.mark.slow
def test_load_is_idempotent_and_detects_changes(ledger, tmp_path):
    first = load_manifest(ledger, fake_manifest(tmp_path, ROWS), "opts")
    assert (first.new, first.unchanged, first.updated, first.conflicts) == (10, 0, 0, 0)
    again = load_manifest(ledger, fake_manifest(tmp_path, ROWS), "opts")
    assert again.already_loaded and again.unchanged == 10

    # ref-0 succeeds; then a new manifest changes ref-0 (conflict) and ref-1 (update) and adds ref-10
    owner = ledger.register_worker()
    claims = {c.reference_id: c for c in ledger.claim(owner, 100, 60)}
    ledger.record([Result(claims["ref-0"].id, claims["ref-0"].lease_token, Status.SUCCEEDED, job_id="J0")])
    ledger.release(owner)
    changed = [(r, u + "?v=2") if r in ("ref-0", "ref-1") else (r, u) for r, u in ROWS] + [("ref-10", "https://e/x")]
    report = load_manifest(ledger, fake_manifest(tmp_path, changed, name="m2.csv"), "opts")
    assert (report.new, report.unchanged, report.updated, report.conflicts) == (1, 8, 1, 1)
    assert report.conflict_examples == ("ref-0",) and report.updated_examples == ("ref-1",)
    # the identical file again: a no-op, but its conflict still stands and is reported again
    again = load_manifest(ledger, fake_manifest(tmp_path, changed, name="m2.csv"), "opts")
    assert again.already_loaded and (again.rows, again.unchanged, again.conflicts) == (11, 10, 1)
    assert again.conflict_examples == ("ref-0",) and again.updated == 0
    rows = {r["reference_id"]: r for r in ledger.export_rows()}
    assert rows["ref-0"]["job_id"] == "J0" and rows["ref-0"]["status"] == "succeeded"
    assert ledger.counts()["pending"] == 10


def _snapshot(ledger, ledger_path):
    """The ledger's whole state: the file's bytes (SQLite), or every row of the tables a load writes."""
    ledger.engine.dispose()
    if is_sqlite(str(ledger.engine.url)):
        return ledger_path.read_bytes()
    with ledger.engine.connect() as conn:
        return {t: conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY id").all() for t in ("jobs", "manifests")}


def test_invalid_manifest_leaves_ledger_unchanged(ledger, ledger_path, tmp_path):
    load_manifest(ledger, fake_manifest(tmp_path, ROWS), "opts")
    before = _snapshot(ledger, ledger_path)
    rows = ROWS + [("ref-3", "https://x"), ("new", "https://y")]
    with pytest.raises(ManifestError) as err:
        load_manifest(ledger, fake_manifest(tmp_path, rows, name="b.csv"), "opts")
    assert "duplicate reference_id 'ref-3' (first on line 5)" in str(err.value)
    assert "b.csv:12: column" in str(err.value) and "1 problem found" in str(err.value)
    assert _snapshot(ledger, ledger_path) == before
    assert ledger.counts()["pending"] == 10


def test_claim_marks_in_flight_and_counts_attempts(ledger, tmp_path):
    load_manifest(ledger, fake_manifest(tmp_path, ROWS), "opts")
    owner = ledger.register_worker()
    first = ledger.claim(owner, 4, 60)
    second = ledger.claim(owner, 100, 60)
    assert len(first) == 4 and len(second) == 6
    assert not {c.id for c in first} & {c.id for c in second}
    assert all(c.attempts == 1 and c.lease_token == 1 for c in first + second)
    assert ledger.counts()["in_flight"] == 10
    assert ledger.claim(owner, 100, 60) == []


def test_results_are_fenced_by_lease_token(ledger, tmp_path):
    load_manifest(ledger, fake_manifest(tmp_path, ROWS[:1]), "opts")
    zombie = ledger.register_worker()
    (old,) = ledger.claim(zombie, 1, lease_seconds=0.01)
    later = utcnow() + dt.timedelta(seconds=1)
    newer = ledger.register_worker()
    (new,) = ledger.claim(newer, 1, 60, now=later)  # the lease expired: reclaimed and re-sent
    assert new.id == old.id and new.lease_token == old.lease_token + 1 and new.attempts == 2
    assert ledger.record([Result(old.id, old.lease_token, Status.FAILED, error_code="FS_0003")]) == (0, 1)
    assert ledger.record([Result(new.id, new.lease_token, Status.SUCCEEDED, job_id="J")]) == (1, 0)
    (row,) = list(ledger.export_rows())
    assert row["status"] == "succeeded" and row["job_id"] == "J" and row["error_code"] is None


def test_backoff_and_refund(ledger, tmp_path):
    load_manifest(ledger, fake_manifest(tmp_path, ROWS[:2]), "opts")
    owner = ledger.register_worker()
    a, b = ledger.claim(owner, 2, 60)
    soon = utcnow() + dt.timedelta(seconds=30)
    ledger.record(
        [
            Result(a.id, a.lease_token, Status.PENDING, error_code="FS_0000", not_before=soon),
            Result(
                b.id, b.lease_token, Status.PENDING, error_code="rate_limited", not_before=soon, refund_attempt=True
            ),
        ]
    )
    assert ledger.claim(owner, 10, 60) == []
    assert abs((ledger.next_wakeup() - soon).total_seconds()) < 1e-3
    again = ledger.claim(owner, 10, 60, now=soon + dt.timedelta(seconds=1))
    assert sorted(c.attempts for c in again) == [1, 2]


def test_a_claim_takes_the_callers_due_retries_whatever_their_not_before(ledger, tmp_path):
    """A run times its own retries on the monotonic clock: rows it finds due are claimed even when their
    wall-clock `not_before` lies ahead (the clock was stepped back since); only pending ones."""
    load_manifest(ledger, fake_manifest(tmp_path, ROWS[:3]), "opts")
    owner = ledger.register_worker()
    a, b, c = ledger.claim(owner, 3, 60)
    hour = utcnow() + dt.timedelta(hours=1)
    ledger.record([Result(r.id, r.lease_token, Status.PENDING, error_code="FS_0000", not_before=hour) for r in (a, b)])
    assert ledger.claim(owner, 10, 60) == []
    assert [r.id for r in ledger.claim(owner, 10, 60, due=[a.id, c.id])] == [a.id]  # c is in flight: not pending
    assert ledger.claim(owner, 10, 60) == []  # b: its not_before still rules


def test_a_claim_never_takes_over_the_claiming_runs_own_leases(ledger, tmp_path):
    """A clock stepped forward past the lease makes a run's own leases look expired: they stay its own."""
    load_manifest(ledger, fake_manifest(tmp_path, ROWS[:2]), "opts")
    owner, other = ledger.register_worker(), ledger.register_worker()
    held = ledger.claim(owner, 2, 60)
    later = utcnow() + dt.timedelta(hours=2)
    assert ledger.claim(owner, 10, 60, now=later) == []
    assert sorted(r.id for r in ledger.claim(other, 10, 60, now=later)) == sorted(r.id for r in held)


@pytest.mark.slow
def test_release_and_dead_worker_reaping(ledger, tmp_path, db_url):
    load_manifest(ledger, fake_manifest(tmp_path, ROWS[:3]), "opts")
    owner = ledger.register_worker()
    ledger.claim(owner, 3, 3600)
    assert ledger.release(owner) == 3
    assert ledger.counts()["pending"] == 3
    (c,) = ledger.claim(owner, 1, 3600)
    assert c.attempts == 1  # the released attempt was not counted
    # a worker of this host whose process is gone: its leases expire when the next run registers
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE workers SET pid = 999999999")
    other = Ledger.open(db_url)
    try:
        owner2 = other.register_worker()
        reclaimed = other.claim(owner2, 10, 60)
    finally:
        other.close()
    assert c.id in {x.id for x in reclaimed}


@pytest.mark.slow
def test_retry_and_status(ledger, tmp_path):
    load_manifest(ledger, fake_manifest(tmp_path, ROWS[:3]), "opts")
    owner = ledger.register_worker()
    a, b, c = ledger.claim(owner, 3, 60)
    ledger.record(
        [
            Result(a.id, a.lease_token, Status.FAILED, error_code="FS_0003", error_message="bad"),
            Result(b.id, b.lease_token, Status.FAILED, error_code="FS_0007"),
            Result(c.id, c.lease_token, Status.UNCERTAIN, error_code="FS_0001"),
        ]
    )
    report = ledger.status()
    assert report.counts["failed"] == 2 and report.counts["uncertain"] == 1
    assert report.error_codes == {"FS_0003": 1, "FS_0007": 1, "FS_0001": 1}
    assert ledger.retry(["FS_0007"]) == 1
    assert ledger.retry([], everything=True) == 1
    assert ledger.counts()["pending"] == 2
    (group,) = ledger.uncertain_groups()
    assert group[0] == "p1" and group[1] is None and group[2][0][1] == c.reference_id
    # c was refused with FS_0001 at its first send: this ledger never sent it before, so the job found is
    # someone else's (tests/test_trust_ledger.py covers every case)
    assert ledger.resolve_uncertain({c.id: "JOB"}) == Resolution(conflict=1)
    assert ledger.counts()["conflict"] == 1


def test_counts_match_a_group_by_whatever_the_statuses(ledger, tmp_path):
    """counts() derives `succeeded` as the total less the other statuses: it must equal a plain GROUP BY,
    also with no succeeded row, only succeeded rows, and a status word this version does not know."""
    from sqlalchemy import text

    load_manifest(ledger, fake_manifest(tmp_path, ROWS), "opts")

    def grouped() -> dict[str, int]:
        with ledger.engine.connect() as conn:
            return dict(conn.execute(text("SELECT status, COUNT(*) FROM jobs GROUP BY status")).all())

    layouts = [
        {},
        {"succeeded": range(10)},
        {"succeeded": range(4), "failed": range(4, 6), "uncertain": [6], "zzz-unknown": [7], "a-unknown": [8]},
        {"conflict": range(3), "blocked": [3], "in_flight": [4, 5]},
    ]
    for layout in layouts:
        with ledger.engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET status = 'pending'"))
            for status, ids in layout.items():
                for i in ids:
                    conn.execute(
                        text("UPDATE jobs SET status = :s WHERE reference_id = :r"), {"s": status, "r": f"ref-{i}"}
                    )
        counts = ledger.counts()
        assert {k: v for k, v in counts.items() if v} == grouped()
        assert set(counts) >= {s.value for s in Status} and sum(counts.values()) == 10


def test_batches_and_extra_columns(ledger, tmp_path):
    load_manifest(ledger, fake_manifest(tmp_path, ROWS[:2], extra={"camera": "=cmd()"}), "opts")
    assert ledger.extra_columns() == ["camera"]
    assert next(iter(ledger.export_rows()))["camera"] == "=cmd()"
    assert ledger.batch_id_for("p1", "b") is None
    ledger.save_batch("p1", "b", "uuid-1")
    assert ledger.batch_id_for("p1", "b") == "uuid-1"


@pytest.mark.slow
def test_two_machines_claiming_concurrently_never_share_a_row(ledger, db_url, tmp_path):
    """Two engines on one ledger (two "machines"), several threads each, claiming in small bites: every row
    is claimed exactly once (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: BEGIN IMMEDIATE serialises)."""
    rows = [(f"ref-{i}", f"https://example.com/{i}.jpg") for i in range(600)]
    load_manifest(ledger, fake_manifest(tmp_path, rows), "opts")
    machines = [Ledger.open(db_url) for _ in range(2)]
    claimed: list[tuple[str, int, int]] = []  # (owner, row id, lease token)
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def work(machine: Ledger) -> None:
        try:
            owner = machine.register_worker()
            start.wait()
            while batch := machine.claim(owner, 7, 600):
                with lock:
                    claimed.extend((owner, c.id, c.lease_token) for c in batch)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(daemon=True, target=work, args=(m,)) for m in machines for _ in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for m in machines:
            m.close()
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    ids = [row_id for _, row_id, _ in claimed]
    assert len(ids) == len(set(ids)) == len(rows)  # no row twice, none missed
    assert {token for _, _, token in claimed} == {1}
    assert ledger.counts()["in_flight"] == len(rows)


def test_next_wakeup_waits_for_other_workers_rows(ledger, tmp_path):
    load_manifest(ledger, fake_manifest(tmp_path, ROWS[:2]), "opts")
    mine, theirs = ledger.register_worker(), ledger.register_worker()
    (a,) = ledger.claim(mine, 1, 60)
    assert ledger.next_wakeup(mine) <= utcnow()  # b is pending and claimable: now
    (b,) = ledger.claim(theirs, 1, 60)
    assert ledger.next_wakeup(mine) is not None  # b is held by another live worker: wait for it
    ledger.release(theirs)  # that run stopped: b is claimable at once (not "nothing left")
    assert ledger.next_wakeup(mine) <= utcnow()
    (b,) = ledger.claim(theirs, 1, 60)
    ledger.record([Result(b.id, b.lease_token, Status.SUCCEEDED, job_id="J")])
    assert ledger.next_wakeup(mine) is None


@pytest.mark.slow
def test_batch_reservations_pick_one_creator_and_give_rows_a_batch(ledger, db_url, tmp_path):
    """Runs reserving one batch name (or the project's own batch) in one transaction each, from several
    threads on two engines: exactly one reservation; the others see it, then its id; a dead reservation is
    taken over; a failed one is given up. Only rows with no batch that were never sent get a batch."""
    other = Ledger.open(db_url)
    try:
        slots, errors = [], []

        def reserve(led: Ledger, who: str, auto: bool) -> None:
            try:
                slots.append(led.reserve_batch("p1", f"name-{who}" if auto else "nov", who, auto=auto))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        for auto in (False, True):
            slots.clear()
            threads = [
                threading.Thread(target=reserve, args=(led, f"{auto}-{i}-{n}", auto))
                for i in range(4)
                for n, led in enumerate((ledger, other))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            assert len({s.id for s in slots}) == 1 and len({s.reserved_by for s in slots}) == 1
            assert slots[0].batch_id is None and slots[0].auto is auto
        named, own = ledger.reserve_batch("p1", "nov", "x"), ledger.reserve_batch("p1", "n", "x", auto=True)
        assert ledger.take_over_batch(named, "late", None)  # a dead owner's reservation is taken over...
        assert not ledger.take_over_batch(named, "other", None)  # ...once: `named` is stale now
        assert ledger.batch_slot(named.id).reserved_by == "late"
        assert ledger.take_over_batch(own, "heir", "own-2")
        assert ledger.batch_slot(own.id).name == "own-2" and not ledger.take_over_batch(own, "third", None)
        ledger.cancel_reservation(named.id, "late")
        assert ledger.batch_slot(named.id) is None
        assert ledger.complete_batch(own.id, "B-OWN") == "B-OWN"
        assert ledger.complete_batch(own.id, "B-LATE") == "B-OWN"  # recorded first wins; every run uses it
        assert ledger.reserve_batch("p1", "another", "y", auto=True).batch_id == "B-OWN"  # one per project

        load_manifest(ledger, fake_manifest(tmp_path, ROWS[:6]), "opts")
        owner = ledger.register_worker()
        sent = ledger.claim(owner, 2, 60)  # two rows in the air: they keep their (default) batch
        assert ledger.projects_needing_batch() == []  # unresolved rows in the default batch: it stays
        ledger.record([Result(c.id, c.lease_token, Status.SUCCEEDED, job_id=f"J{c.id}") for c in sent])
        assert ledger.projects_needing_batch() == ["p1"]
        assert ledger.assign_batch("p1", "B-OWN") == 4
        assert ledger.projects_needing_batch() == []
        rows = {r["reference_id"]: r for r in ledger.export_rows()}
        assert sorted(r["batch_id"] or "-" for r in rows.values()) == ["-", "-", "B-OWN", "B-OWN", "B-OWN", "B-OWN"]
        assert all('"batch_id"' not in c.body for c in ledger.claim(owner, 10, 60))  # bodies unchanged
    finally:
        other.close()


def test_split_record_sends_only_interacting_results_one_at_a_time():
    """One group statement for the live rows whose job_id no other row has; the rest in order, one at a time."""
    from uploader.ledger.ledger import split_record

    def ok(row_id, token, job_id=None, status=Status.SUCCEEDED):
        return Result(row_id, token, status, job_id=job_id)

    results = [
        ok(1, 1, "A"),  # fast
        ok(2, 1, "B"),  # B answered twice in the group: slow
        ok(3, 1, "B"),  # slow
        ok(4, 1, "C"),  # C held by row 9, which is in this group too: both slow
        ok(9, 1, None, Status.FAILED),  # holder of C: slow
        ok(5, 7, "D"),  # fenced (token 7 not live): neither
        ok(6, 1, "E"),  # E held by row 6 itself: fast
        ok(7, 1, None, Status.FAILED),  # fast
    ]
    live = {(1, 1), (2, 1), (3, 1), (4, 1), (9, 1), (5, 1), (6, 1), (7, 1)}
    holders = {"C": {9}, "E": {6}}
    assert split_record(results, live, holders) == ([0, 6, 7], [1, 2, 3, 4])


def test_clock_skew_is_measured_against_the_database_server(db_url: str) -> None:
    """PostgreSQL: the server's clock against this machine's (here the same machine: well under a second);
    SQLite has no clock of its own."""
    led = Ledger.open(db_url)
    try:
        skew = led.clock_skew()
    finally:
        led.close()
    if is_sqlite(db_url):
        assert skew is None
    else:
        assert skew is not None and abs(skew) < 1.0, skew


@pytest.mark.parametrize(
    ("skew", "lease", "expected"),
    [
        (None, 120, None),
        (1.9, 120, None),
        (-1.9, 120, None),
        (5.0, 120, "this machine's clock is 5 s behind the ledger database's; runs on other machines"),
        (-40.0, 120, "warning: this machine's clock is 40 s ahead of the ledger database's, a large part of the 120 s"),
        (-10.0, 20, "warning: this machine's clock is 10 s ahead of the ledger database's, a large part of the 20 s"),
    ],
)
def test_a_clock_skew_worth_telling(skew: float | None, lease: float, expected: str | None) -> None:
    from uploader.send.runner import clock_skew_notice

    notice = clock_skew_notice(skew, lease)
    if expected is None:
        assert notice is None
    else:
        assert notice is not None and notice.startswith(expected), notice


def test_a_holder_is_alive_by_its_clock_or_by_its_process_on_this_host():
    """`forget` refuses rows of a live run: one whose lease and heartbeat look current, or whose process runs
    here whatever the clocks say (a clock stepped forward makes both look old), within a day."""
    from uploader.ledger.forget import holder_alive

    now = dt.datetime(2026, 12, 6, 12, 0, 0)
    ago = lambda s: now - dt.timedelta(seconds=s)  # noqa: E731
    later = now + dt.timedelta(seconds=90)
    assert holder_alive(later, ago(5), now, process_alive_here=False)
    assert not holder_alive(ago(1), ago(5), now, process_alive_here=False)  # its lease expired
    assert not holder_alive(later, ago(600), now, process_alive_here=False)  # no heartbeat for 10 minutes
    assert holder_alive(ago(500), ago(600), now, process_alive_here=True)  # its process runs here
    assert not holder_alive(ago(500), ago(2 * 86_400), now, process_alive_here=True)  # a pid reused since
    assert not holder_alive(later, None, now, process_alive_here=True)
