"""A model of the ledger: hypothesis drives the Ledger API on a real SQLite file with random sequences of loads,
claims by two workers at a controllable clock, every kind of result (some of them stale), releases, retries,
reconciles, clock jumps and crashes, and checks the file against a plain-Python model after every step.

Invariants: rows move only along the state diagram (README "The ledger", ledger.py docstring); the row count is the
number of reference_ids loaded; a succeeded row keeps its first job_id until an answer names that job_id for
another row (then both are uncertain until a listing settles them); no two succeeded rows share a job_id; a
conflict row never changes; a claim never hands out a row whose lease is still live; a stale (fenced) result
changes nothing; attempts never go negative; the payload hashes (sent_hashes, attempt_hash) and the origin
follow the rules of ledger.py exactly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from uploader.ledger.ledger import Claim, Ledger, Resolution, Result
from uploader.ledger.models import Status
from uploader.ledger.transitions import settle_found, settle_missing
from uploader.load import load_manifest
from uploader.manifest import file_identity

OWNERS = ("worker-a", "worker-b")
START = dt.datetime(2031, 3, 1, 12, 0, 0)

#: The legal moves of one row between two observations (one API call apart), besides staying put.
LEGAL_MOVES = {
    ("pending", "in_flight"),  # claim
    ("in_flight", "in_flight"),  # an expired lease claimed again (token bumped)
    ("in_flight", "succeeded"),  # 200, or FS_0001 resolved
    ("in_flight", "failed"),  # permanent, or retries exhausted
    ("in_flight", "pending"),  # retryable (backoff), throttled/run-fatal (refund), run stopped (release)
    ("in_flight", "uncertain"),  # exists / lost or malformed answer / job_id of another row
    ("failed", "pending"),  # retry; or reloaded with a changed payload
    ("uncertain", "succeeded"),  # a listing found it: a clean recovery
    ("uncertain", "conflict"),  # a listing found it, but it may hold other data
    ("uncertain", "failed"),  # a complete listing did not find it (not FS_0001), no attempt left
    ("uncertain", "pending"),  # a complete listing did not find it (not FS_0001), attempts left: sent again
    ("succeeded", "uncertain"),  # its job_id was answered for another row too: the listing settles both
}


class RowsManifest:
    """A stand-in for uploader.manifest.reader.Manifest at the loader's edge: (reference_id, body version) rows.
    Offers both chunk_tuples() (the loader's interface) and chunks() of the same rows."""

    def __init__(self, path: Path, rows: list[tuple[str, int]]) -> None:
        self.path, self.unit, self.problems, self.problem_count = path, "line", [], 0
        self.label = None  # recorded by its path
        self.splittable = False  # read in one piece: no worker processes (uploader.load.slices)
        self.rows = rows
        if not path.exists():  # the loader hashes the file: the name makes each new manifest a new content
            path.write_text(json.dumps([path.name, rows]))
        self.identity = file_identity(path)  # the file as the reader would have opened it

    def chunk_tuples(self, size: int = 5000) -> Iterator[list[tuple[Any, ...]]]:
        jobs = [
            (i + 2, "proj", ref, "wf", None, body(ref, version), None) for i, (ref, version) in enumerate(self.rows)
        ]
        for start in range(0, len(jobs), size):
            yield jobs[start : start + size]

    def chunks(self, size: int = 5000) -> Iterator[list[Any]]:
        from uploader.manifest.reader import StagedJob

        for chunk in self.chunk_tuples(size):
            yield [StagedJob(*job) for job in chunk]


def body(ref: str, version: int) -> str:
    data = {"image_url": f"https://e.com/{ref}?v={version}"}
    return json.dumps({"reference_id": ref, "work_flow_id": "wf", "data": data})


def body_hash(ref: str, version: int) -> str:
    return hashlib.sha256(body(ref, version).encode()).hexdigest()


@dataclass
class Row:
    """The model of one jobs row (the columns the state machine is about)."""

    id: int
    ref: str
    version: int
    status: str = "pending"
    job_id: str | None = None
    attempts: int = 0
    owner: str | None = None
    token: int = 0
    expires: dt.datetime | None = None
    not_before: dt.datetime | None = None
    error_code: str | None = None
    sent: list[str] | None = None  #: sent_hashes, in the order they were added
    attempt: str | None = None  #: attempt_hash
    origin: str | None = None

    def merge_attempt(self) -> None:
        """The attempt in the air may have created the job: its hash joins `sent` (once)."""
        if self.attempt is not None and self.attempt not in (self.sent or []):
            self.sent = [*(self.sent or []), self.attempt]

    @property
    def sent_hashes(self) -> str | None:
        return None if self.sent is None else " ".join(self.sent)


@dataclass
class Held:
    """A claim as its worker sees it: possibly stale by now."""

    owner: str
    claim: Claim


def _dt(value: Any) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(str(value))


_TEMPLATE: dict[str, Path] = {}


def template_ledger() -> Path:
    """One migrated empty ledger, copied for every example (migrating takes ~0.1 s, copying ~nothing)."""
    if "path" not in _TEMPLATE:
        path = Path(tempfile.mkdtemp(prefix="ledger-model-")) / "template.db"
        Ledger.open(path).close()
        _TEMPLATE["path"] = path
    return _TEMPLATE["path"]


@pytest.fixture(scope="module", autouse=True)
def _remove_template() -> Iterator[None]:
    yield
    if "path" in _TEMPLATE:
        shutil.rmtree(_TEMPLATE.pop("path").parent, ignore_errors=True)


class LedgerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ledger-model-"))
        self.generation = 0
        self.path = self.dir / "ledger-0.db"
        shutil.copyfile(template_ledger(), self.path)
        self.ledger = Ledger.open(self.path)
        self.now = START
        self.rows: dict[str, Row] = {}
        self.held: list[Held] = []
        self.first_job_id: dict[str, str] = {}
        #: ref -> (job_id, code) when it went conflict
        self.conflict_rows: dict[str, tuple[str | None, str | None]] = {}
        self.names = itertools.count()
        self.manifests: list[RowsManifest] = []
        self.conflicts: dict[Path, tuple[int, tuple[str, ...]]] = {}
        #: manifest -> whether a later load added or changed a row (then reloading it merges it again)
        self.changed_since: dict[Path, bool] = {}
        self.job_ids = itertools.count()
        self.last_seen: dict[str, str] = {}

    def teardown(self) -> None:
        self.ledger.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- reading the file ------------------------------------------------------------------------------

    def db_rows(self) -> dict[str, dict[str, Any]]:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT id, reference_id, status, job_id, attempts, lease_owner, lease_token, "
                "lease_expires_at, not_before, error_code, body, sent_hashes, attempt_hash, origin "
                "FROM jobs"
            ).fetchall()
        finally:
            db.close()
        return {r["reference_id"]: dict(r) for r in rows}

    # -- rules -----------------------------------------------------------------------------------------

    @initialize(n=st.integers(1, 6))
    def first_load(self, n: int) -> None:
        self.load_new(n)

    def _load(self, rows: list[tuple[str, int]]) -> Any:
        manifest = RowsManifest(self.dir / f"m{next(self.names)}.json", rows)
        self.manifests.append(manifest)
        report = load_manifest(self.ledger, manifest, "opts")
        self._loaded(manifest.path, report)
        return report

    def _loaded(self, path: Path, report: Any) -> None:
        self.conflicts[path] = (report.conflicts, report.conflict_examples)
        if report.new or report.updated:
            self.changed_since = dict.fromkeys(self.changed_since, True)
        self.changed_since[path] = False

    @precondition(lambda self: self.manifests)
    @rule(data=st.data())
    def load_same_file_again(self, data: st.DataObject) -> None:
        """The same file with the same options again is a no-op if no later load added or changed a row; it
        repeats the conflicts its last load reported (they still stand: a succeeded row stays as it was sent).
        Otherwise it is merged again: its pending/failed rows whose payload a later load changed get its
        payload back, other such rows are conflicts (issue 10, item 4)."""
        manifest = data.draw(st.sampled_from(self.manifests))
        report = load_manifest(self.ledger, RowsManifest(manifest.path, manifest.rows), "opts")
        if not self.changed_since[manifest.path]:
            assert report.already_loaded and report.new == report.updated == 0
            assert (report.conflicts, report.conflict_examples) == self.conflicts[manifest.path]
            return
        differ = [(ref, version) for ref, version in manifest.rows if self.rows[ref].version != version]
        updated = [(ref, v) for ref, v in differ if self.rows[ref].status in ("pending", "failed")]
        assert not report.already_loaded
        assert (report.new, report.unchanged, report.updated, report.conflicts) == (
            0,
            len(manifest.rows) - len(differ),
            len(updated),
            len(differ) - len(updated),
        )
        for ref, version in updated:
            row = self.rows[ref]
            row.version = version
            row.status, row.attempts, row.not_before, row.error_code = "pending", 0, None, None
        self._loaded(manifest.path, report)

    @rule(n=st.integers(1, 4), also_old=st.integers(0, 3))
    def load_new(self, n: int, also_old: int = 0) -> None:
        """New rows, plus some already loaded rows with an unchanged body (a no-op for those)."""
        new = [f"r{len(self.rows) + i}" for i in range(n)]
        old = [(ref, row.version) for ref, row in itertools.islice(self.rows.items(), also_old)]
        report = self._load([(ref, 0) for ref in new] + old)
        assert (report.new, report.unchanged, report.updated, report.conflicts) == (n, len(old), 0, 0)
        ids = {r["reference_id"]: r["id"] for r in self.db_rows().values()}
        for ref in new:
            self.rows[ref] = Row(ids[ref], ref, 0)

    @precondition(lambda self: self.rows)
    @rule(data=st.data())
    def reload_changed(self, data: st.DataObject) -> None:
        """A manifest that changes some payloads: pending/failed rows are updated (pending, attempts 0),
        every other state is a conflict and left alone."""
        refs = data.draw(st.lists(st.sampled_from(sorted(self.rows)), min_size=1, max_size=4, unique=True))
        report = self._load([(ref, self.rows[ref].version + 1) for ref in refs])
        updated = [ref for ref in refs if self.rows[ref].status in ("pending", "failed")]
        assert (report.new, report.updated, report.conflicts) == (0, len(updated), len(refs) - len(updated))
        for ref in updated:
            row = self.rows[ref]
            row.version += 1
            row.status, row.attempts, row.not_before, row.error_code = "pending", 0, None, None

    @rule(owner=st.sampled_from(OWNERS), limit=st.integers(1, 5), lease=st.sampled_from([0.5, 1, 3, 30]))
    def claim(self, owner: str, limit: int, lease: float) -> None:
        now = self.now
        # another owner's expired leases: never the claiming owner's own (it is sending those rows)
        expired = {
            r.ref for r in self.rows.values() if r.status == "in_flight" and r.expires < now and r.owner != owner
        }
        ready = {
            r.ref for r in self.rows.values() if r.status == "pending" and (r.not_before is None or r.not_before <= now)
        }
        claims = self.ledger.claim(owner, limit, lease, now=now)
        got = [c.reference_id for c in claims]
        assert len(got) == len(set(got))
        # expired leases are taken over first, then ready rows; never a row under a live lease
        n_expired = min(limit, len(expired))
        assert set(got[:n_expired]) <= expired and len([g for g in got if g in expired]) == n_expired
        assert set(got[n_expired:]) <= ready and len(got) == n_expired + min(limit - n_expired, len(ready))
        for c in claims:
            row = self.rows[c.reference_id]
            live = row.status == "in_flight" and row.expires >= now
            assert not live, f"{c.reference_id} handed to {owner} while {row.owner}'s lease runs to {row.expires}"
            row.status, row.attempts, row.owner, row.token = "in_flight", row.attempts + 1, owner, row.token + 1
            row.expires = now + dt.timedelta(seconds=lease)
            row.merge_attempt()  # the previous attempt's answer was never recorded (its run died)
            row.attempt = body_hash(row.ref, row.version)
            assert (c.id, c.attempts, c.lease_token) == (row.id, row.attempts, row.token)
            assert c.body == body(c.reference_id, row.version)
            self.held.append(Held(owner, c))

    @precondition(lambda self: self.held)
    @rule(
        data=st.data(),
        kind=st.sampled_from(
            ["succeeded", "recovered", "failed", "backoff", "refund", "uncertain", "lost", "duplicate"]
        ),
    )
    def record(self, data: st.DataObject, kind: str) -> None:
        """One worker's result for one of its claims: current (applied) or stale (fenced: ignored)."""
        held = data.draw(st.sampled_from(self.held))
        c = held.claim
        result = Result(c.id, c.lease_token, Status.PENDING)
        if kind in ("succeeded", "recovered", "duplicate"):
            known = sorted({r.job_id for r in self.rows.values() if r.job_id})
            job_id = data.draw(st.sampled_from(known)) if kind == "duplicate" and known else f"job-{next(self.job_ids)}"
            result = replace(
                result,
                status=Status.SUCCEEDED,
                job_id=job_id,
                may_have_created=True,
                recovered=kind == "recovered",
                origin=None if kind == "recovered" else "created",
                http_status=200,
            )
        elif kind == "failed":
            code = data.draw(st.sampled_from(["E_PERM", "E_EXHAUSTED"]))
            result = replace(result, status=Status.FAILED, error_code=code, error_message="no", http_status=400)
        elif kind == "backoff":
            wait = data.draw(st.sampled_from([0.5, 2, 20]))
            result = replace(
                result,
                error_code="FS_0000",
                not_before=self.now + dt.timedelta(seconds=wait),
                may_have_created=data.draw(st.booleans()),
            )
        elif kind == "refund":
            wait = data.draw(st.sampled_from([None, 1]))
            result = replace(
                result,
                error_code="429",
                refund_attempt=True,
                not_before=None if wait is None else self.now + dt.timedelta(seconds=wait),
            )
        elif kind == "lost":  # retries used up after an attempt that may have reached the API
            result = replace(result, status=Status.UNCERTAIN, error_code="timeout", may_have_created=True)
        else:
            result = replace(result, status=Status.UNCERTAIN, error_code="FS_0001")
        row = self.rows[c.reference_id]
        current = row.status == "in_flight" and row.token == c.lease_token
        duplicates: list[int] = []
        applied, ignored = self.ledger.record([result], now=self.now, duplicates=duplicates)
        assert (applied, ignored) == ((1, 0) if current else (0, 1))
        if not current:
            assert duplicates == []
            return
        if result.may_have_created:
            row.merge_attempt()
        row.attempt = None
        row.attempts -= 1 if result.refund_attempt else 0
        row.owner = row.expires = None
        row.not_before, row.error_code = result.not_before, result.error_code
        holders = [r for r in self.rows.values() if r is not row and result.job_id and r.job_id == result.job_id]
        if holders:  # another row holds this job_id: both uncertain, the listing decides
            row.status, row.job_id, row.error_code = "uncertain", result.job_id, "duplicate_job_id"
            demoted = [h for h in holders if h.status == "succeeded"]
            for h in demoted:
                h.status, h.error_code, h.origin = "uncertain", "duplicate_job_id", None
                h.sent = h.sent or [body_hash(h.ref, h.version)]
                self.first_job_id.pop(h.ref, None)
            assert duplicates == [row.id, *sorted(h.id for h in demoted)]
            return
        assert duplicates == []
        row.status, row.job_id = result.status.value, result.job_id or row.job_id
        row.origin = result.origin or row.origin
        if row.status == "succeeded":
            self.first_job_id.setdefault(row.ref, row.job_id)  # type: ignore[arg-type]

    @rule(owner=st.sampled_from(OWNERS), data=st.data())
    def release(self, owner: str, data: st.DataObject) -> None:
        """A run stops early: its rows go back to pending, the attempt not counted (lease expired or not). The
        attempts it says it started (any ids, also of rows it does not hold; None: it cannot tell, all) are
        kept as sent: a stop may have cut a request in the air; the others are dropped."""
        mine = [r for r in self.rows.values() if r.status == "in_flight" and r.owner == owner]
        ids = sorted(r.id for r in self.rows.values())
        started = data.draw(st.none() | st.sets(st.sampled_from(ids)) if ids else st.none())
        assert self.ledger.release(owner, started) == len(mine)
        for row in mine:
            row.status, row.attempts, row.owner, row.expires = "pending", row.attempts - 1, None, None
            if started is None or row.id in started:
                row.merge_attempt()
            row.attempt = None

    @rule(everything=st.booleans())
    def retry(self, everything: bool) -> None:
        failed = [r for r in self.rows.values() if r.status == "failed" and (everything or r.error_code == "E_PERM")]
        assert self.ledger.retry(["E_PERM"], everything=everything) == len(failed)
        for row in failed:
            row.status, row.attempts, row.not_before = "pending", 0, None

    @precondition(lambda self: self.rows)
    @rule(data=st.data())
    def resolve_uncertain(self, data: st.DataObject) -> None:
        """A listing found job_ids for some rows (fresh ones, or one another row holds) and missed others;
        it may name rows that are not uncertain any more."""
        refs = data.draw(st.lists(st.sampled_from(sorted(self.rows)), max_size=4, unique=True))
        known = sorted({r.job_id for r in self.rows.values() if r.job_id})
        found: dict[int, str] = {}
        for ref in refs:
            reuse = known and data.draw(st.booleans())
            found[self.rows[ref].id] = data.draw(st.sampled_from(known)) if reuse else f"job-{next(self.job_ids)}"
        missing_refs = data.draw(st.lists(st.sampled_from(sorted(self.rows)), max_size=3, unique=True))
        missing = [self.rows[ref].id for ref in missing_refs]
        max_attempts = data.draw(st.sampled_from([None, 1, 2, 3]))
        expected = {"succeeded": 0, "conflict": 0, "failed": 0, "requeued": 0}
        left: list[int] = []
        for ref in refs:  # in the order given, as the ledger does
            row = self.rows[ref]
            if row.status != "uncertain":
                continue
            job_id = found[row.id]
            held = any(
                r is not row and r.job_id == job_id and r.status in ("succeeded", "conflict")
                for r in self.rows.values()
            )
            settled = settle_found(row.sent_hashes, body_hash(ref, row.version), held)
            row.status, row.job_id, row.origin, row.error_code = settled.status, job_id, settled.origin, settled.code
            expected[settled.status] += 1
            left.append(row.id)
            if row.status == "succeeded":
                self.first_job_id.setdefault(row.ref, job_id)
            else:
                self.conflict_rows.setdefault(row.ref, (job_id, settled.code))
        for ref in missing_refs:
            row = self.rows[ref]
            if row.id in found or row.status != "uncertain":
                continue
            missed = settle_missing(
                row.error_code, row.sent_hashes, max_attempts is None or row.attempts < max_attempts
            )
            if missed is None:
                continue  # FS_0001 after sends of our own: stays uncertain
            row.status, row.job_id = missed.status, None
            if missed.status == "conflict":
                row.origin, row.error_code = missed.origin, missed.code
                self.conflict_rows.setdefault(row.ref, (None, missed.code))
            if missed.status == "pending":
                row.not_before = None
            expected["requeued" if missed.status == "pending" else missed.status] += 1
            left.append(row.id)
        done = self.ledger.resolve_uncertain(found, missing, max_attempts)
        assert done == Resolution(**expected) and list(done.left) == left

    @rule(seconds=st.sampled_from([0.5, 1, 2, 5, 31]))
    def advance_time(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)

    @rule()
    def crash(self) -> None:
        """The process dies between two transactions: the files as they are on disk (the WAL not checkpointed)
        are all the next run has. Copy them, abandon this engine, open the copy."""
        self.generation += 1
        target = self.dir / f"ledger-{self.generation}.db"
        shutil.copyfile(self.path, target)
        wal = Path(f"{self.path}-wal")
        if wal.exists():
            shutil.copyfile(wal, Path(f"{target}-wal"))
        self.ledger.engine.dispose()
        self.path, self.ledger = target, Ledger.open(target)

    @rule()
    def reopen(self) -> None:
        self.ledger.close()
        self.ledger = Ledger.open(self.path)

    # -- invariants ------------------------------------------------------------------------------------

    @invariant()
    def file_matches_model(self) -> None:
        db = self.db_rows()
        assert set(db) == set(self.rows), "row count must equal the reference_ids loaded"
        for ref, row in self.rows.items():
            got = db[ref]
            assert got["attempts"] >= 0
            assert got["status"] == row.status, ref
            assert (got["id"], got["job_id"], got["attempts"], got["lease_token"], got["error_code"]) == (
                row.id,
                row.job_id,
                row.attempts,
                row.token,
                row.error_code,
            ), ref
            assert got["body"] == body(ref, row.version)
            assert (got["sent_hashes"], got["attempt_hash"], got["origin"]) == (
                row.sent_hashes,
                row.attempt,
                row.origin,
            ), ref
            assert (row.attempt is not None) == (row.status == "in_flight"), ref
            assert _dt(got["not_before"]) == row.not_before
            if row.status == "in_flight":
                assert (got["lease_owner"], _dt(got["lease_expires_at"])) == (row.owner, row.expires)
            else:
                assert got["lease_owner"] is None and got["lease_expires_at"] is None

    @invariant()
    def only_legal_moves(self) -> None:
        now = {ref: r["status"] for ref, r in self.db_rows().items()}
        for ref, status in now.items():
            before = self.last_seen.get(ref, "pending")
            assert before == status or (before, status) in LEGAL_MOVES, f"{ref}: {before} -> {status}"
        self.last_seen = now

    @invariant()
    def succeeded_keeps_its_job_id(self) -> None:
        """Until a duplicate demotes it (first_job_id forgets it then); and no two succeeded rows share one."""
        db = self.db_rows()
        for ref, job_id in self.first_job_id.items():
            assert db[ref]["status"] == "succeeded" and db[ref]["job_id"] == job_id, ref
        held = [r["job_id"] for r in db.values() if r["status"] == "succeeded"]
        assert len(held) == len(set(held))

    @invariant()
    def conflict_is_final(self) -> None:
        db = self.db_rows()
        for ref, (job_id, code) in self.conflict_rows.items():
            assert (db[ref]["status"], db[ref]["job_id"], db[ref]["error_code"]) == ("conflict", job_id, code), ref


LedgerModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLedgerModel = LedgerModel.TestCase
TestLedgerModel.pytestmark = [pytest.mark.slow]
