"""The load's SQL lives in uploader.ledger by name (CONTRIBUTING "SQL only in ledger/"), and its rows have types.

The staging statements run on real SQLite databases here; the merge and the empty-ledger path that use
them are tested end to end in tests/test_ledger.py and tests/test_parallel_load.py.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sqlite3
from pathlib import Path

import pytest

import uploader
from uploader.ledger import (
    MERGE_CHANGED,
    MERGE_COUNTS,
    MERGE_NEW,
    SCRATCH_ROW,
    SCRATCH_ROW_NO_EXTRA,
    SCRATCH_ROW_OWN,
    SCRATCH_SETUP,
    STAGING_DUPLICATE_COUNT,
    STAGING_TABLE,
    StagingRow,
    Status,
    attach_slice,
    insert_new,
    merge_examples,
    staging_duplicates,
    staging_from_slice,
    staging_insert,
)
from uploader.load.slices import staged_rows
from uploader.manifest import Manifest, ManifestOptions, StagedJob

LOAD = Path(uploader.__file__).parent / "load"
#: Words that begin (or make up) an SQL statement.
SQL = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|PRAGMA|ATTACH|DETACH|BEGIN|COMMIT|ROLLBACK|LOCK|"
    r"ANALYZE|COPY)\b"
)


def _strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants of a module, docstrings left out."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


@pytest.mark.parametrize("path", sorted(LOAD.glob("*.py")), ids=lambda p: p.name)
def test_the_load_package_holds_no_sql(path: Path) -> None:
    found = [(node.lineno, node.value) for node in _strings(ast.parse(path.read_text())) if SQL.search(node.value)]
    assert found == []


def test_status_words_in_the_merge_are_statuses() -> None:
    statuses = {s.value for s in Status}
    for sql in (
        MERGE_COUNTS,
        MERGE_CHANGED,
        MERGE_NEW,
        merge_examples(True, 5),
        merge_examples(False, 5),
        insert_new("2026-01-01 00:00:00.000000", 1),
        insert_new("2026-01-01 00:00:00.000000", 1, "p0"),
    ):
        words = set(re.findall(r"'([a-z_]+)'", sql))
        assert words and words <= statuses, sql


def test_staging_row_is_the_staging_tables_row() -> None:
    db = sqlite3.connect(":memory:")
    db.execute(STAGING_TABLE)
    assert [column[1] for column in db.execute("PRAGMA table_info(staging)")] == list(StagingRow._fields)
    row = StagingRow(2, "p", "r", "w", None, '{"a":1}', "h", None)
    db.executemany(staging_insert("?"), [row])
    assert [StagingRow(*r) for r in db.execute("SELECT * FROM staging")] == [row]


def test_duplicates_are_found_after_their_first_line() -> None:
    db = sqlite3.connect(":memory:")
    db.execute(STAGING_TABLE)
    rows = [
        StagingRow(line, "p", ref, "w", None, "{}", "h", None) for line, ref in [(2, "a"), (3, "b"), (4, "a"), (5, "a")]
    ]
    db.executemany(staging_insert("?"), rows)
    assert db.execute(STAGING_DUPLICATE_COUNT).fetchone() == (2,)
    assert db.execute(staging_duplicates(1)).fetchall() == [(4, "a", 2)]


def test_a_slices_scratch_file_copies_into_staging_with_the_loads_defaults(tmp_path: Path) -> None:
    scratch = sqlite3.connect(tmp_path / "part0.db", isolation_level=None)
    for statement in SCRATCH_SETUP:
        scratch.execute(statement)
    scratch.execute(SCRATCH_ROW, (2, "a", "{}", "h1", None))
    scratch.execute(SCRATCH_ROW_OWN, (3, "b", "{}", "h2", '{"x":"1"}', "p2", "w2", "batch"))
    scratch.execute(SCRATCH_ROW_NO_EXTRA, (4, "c", "{}", "h3"))
    scratch.close()
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute(STAGING_TABLE)
    db.execute(attach_slice("part0"), (str(tmp_path / "part0.db"),))
    db.execute(staging_from_slice("part0"), {"project_id": "p", "work_flow_id": "w", "batch_id": None})
    assert [StagingRow(*r) for r in db.execute("SELECT * FROM staging ORDER BY line")] == [
        StagingRow(2, "p", "a", "w", None, "{}", "h1", None),
        StagingRow(3, "p2", "b", "w2", "batch", "{}", "h2", '{"x":"1"}'),
        StagingRow(4, "p", "c", "w", None, "{}", "h3", None),
    ]


def test_staged_rows_add_the_payload_hash() -> None:
    job = StagedJob(7, "p", "r", "w", None, '{"reference_id":"r"}', None)
    (row,) = staged_rows([job])
    assert type(row) is StagingRow
    assert row == StagingRow(7, "p", "r", "w", None, job.body, hashlib.sha256(job.body.encode()).hexdigest(), None)


@pytest.mark.parametrize(
    "text",
    [
        "reference_id,image_url\nr1,https://e.com/1.jpg\nr2,https://e.com/2.jpg\n",  # a whole chunk at once
        'reference_id,data\nr1,"{""k"": 1}"\n',  # row by row
        "reference_id,frame_id,src\nv1,f1,https://e.com/1\nv1,f2,https://e.com/2\n",  # long-form video
    ],
    ids=["image", "raw", "video_long"],
)
def test_a_manifest_yields_staged_jobs(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text)
    manifest = Manifest(path, ManifestOptions(project_id="p", work_flow_id="w"))
    jobs = [job for chunk in manifest.chunk_tuples() for job in chunk]
    assert manifest.problems == [] and jobs
    assert {type(job) for job in jobs} == {StagedJob}
    assert jobs[0].line == 2 and jobs[0].project_id == "p" and jobs[0].reference_id in ("r1", "v1")


LEDGER = Path(uploader.__file__).parent / "ledger"
#: A status word written as an SQL literal, e.g. 'pending'.
STATUS_LITERAL = re.compile("'(" + "|".join(s.value for s in Status) + ")'")


@pytest.mark.parametrize("path", sorted(LEDGER.glob("*.py")), ids=lambda p: p.name)
def test_the_ledgers_sql_spells_no_status_word(path: Path) -> None:
    """Status words in SQL come from Status (f-strings), so a renamed state cannot leave a stale literal."""
    found = [
        (node.lineno, node.value) for node in _strings(ast.parse(path.read_text())) if STATUS_LITERAL.search(node.value)
    ]
    assert found == []


def test_status_words_from_status_give_the_same_sql() -> None:
    from uploader.ledger import forget, ledger

    assert forget.MAY_HAVE_JOB == (
        "(job_id IS NOT NULL OR status IN ('succeeded', 'conflict', 'uncertain', 'in_flight') "
        "OR sent_hashes IS NOT NULL OR attempt_hash IS NOT NULL)"
    )
    assert ledger._UNBATCHED == "status = 'pending' AND batch_id IS NULL AND attempts = 0 AND sent_hashes IS NULL"
    assert ledger._IN_DEFAULT_BATCH == (
        "batch_id IS NULL AND (status IN ('in_flight', 'uncertain') "
        "OR (status = 'pending' AND (attempts > 0 OR sent_hashes IS NOT NULL)))"
    )
