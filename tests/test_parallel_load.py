"""The parallel first load (uploader.load.slices): slice processes stage slices of a CSV/TSV file into scratch
SQLite files that the parent copies into an empty SQLite ledger.

In-process tests lower `uploader.load.slices.MIN_SPLIT_BYTES` so that small files take the parallel path, and
check that they did by wrapping (not replacing) `Production.__init__` / `Production.results`. The result of
every load is compared with the one-process load of the same file (`Production.suits` patched to refuse).
Subprocess tests run `python -m uploader load` on a ~4.5 MiB file with TMPDIR set to a folder of their own,
and kill or interrupt it while its slice processes run.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from uploader.cli.commands import cli
from uploader.ledger.ledger import Ledger
from uploader.load import load, prepare_load
from uploader.load import slices as staging
from uploader.manifest.reader import ManifestOptions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
        reason="the parallel load forks slice processes only on Linux with more than one CPU",
    ),
]

LOAD_OPTS = ("--project-id", "p", "--work-flow-id", "w")
JOB_COLUMNS = "project_id, reference_id, work_flow_id, batch_id, body, body_hash, extra, status, manifest_line"
BATCH = "6f1c2b7e-3d4a-4c5b-9e8f-0a1b2c3d4e5f"
OTHER_BATCH = "0b0c9d7e-1111-4222-8333-444455556666"
IMAGE_HEADER = ["reference_id", "image_url", "camera", "note"]


# --- helpers --------------------------------------------------------------------------------------------


@dataclass
class Spy:
    """What the real Production did in this process: its scratch folders, slice counts and slice results."""

    workdirs: list[Path] = field(default_factory=list)
    slices: list[int] = field(default_factory=list)
    parts: list[staging.PartResult] = field(default_factory=list)
    on_start: list[Callable[[], None]] = field(default_factory=list)  #: called as slice processes are started
    on_part: list[Callable[[], None]] = field(default_factory=list)  #: called as a slice is handed over

    def took_clean_parallel_path(self) -> bool:
        """One Production, every slice delivered in order (twice if the empty-ledger fast path gave up and
        the staging path used the slices again), none with a problem or uncuttable."""
        indexes, n = [p.index for p in self.parts], self.slices[0] if len(self.slices) == 1 else -1
        return indexes in (list(range(n)), list(range(n)) * 2) and not any(
            p.problem_count or p.uncuttable for p in self.parts
        )


@pytest.fixture
def scratch_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TMPDIR of this test's own, so scratch folders of other processes cannot interfere."""
    root = tmp_path / "tmpdir"
    root.mkdir()
    monkeypatch.setenv("TMPDIR", str(root))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR; restored after the test
    return root


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch, scratch_root: Path) -> Spy:
    """Any file big enough (1 byte) takes the parallel path; the real Production is wrapped and watched."""
    monkeypatch.setattr(staging, "MIN_SPLIT_BYTES", 1)
    seen = Spy()
    real_init, real_results = staging.Production.__init__, staging.Production.results

    def init(self: staging.Production, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        seen.workdirs.append(Path(self.workdir))
        seen.slices.append(self.parts)
        for hook in seen.on_start:
            hook()

    def results(self: staging.Production):  # type: ignore[no-untyped-def]
        for part in real_results(self):
            seen.parts.append(part)
            for hook in seen.on_part:
                hook()
            yield part

    monkeypatch.setattr(staging.Production, "__init__", init)
    monkeypatch.setattr(staging.Production, "results", results)
    return seen


@contextmanager
def one_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A context in which no manifest suits the parallel path."""
    with monkeypatch.context() as patch:
        patch.setattr(staging.Production, "suits", staticmethod(lambda manifest: False))
        yield


def cli_load(manifest: Path, ledger: Path, args: tuple[str, ...] = LOAD_OPTS):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(cli, ["load", str(manifest), *args, "--ledger", str(ledger)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def jobs(ledger: Path) -> list[tuple]:
    with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        return db.execute(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY project_id, reference_id").fetchall()


def row_ids(ledger: Path) -> list[tuple]:
    """(id, project_id, reference_id) of every job, by id: the order the rows went in."""
    with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        return db.execute("SELECT id, project_id, reference_id FROM jobs ORDER BY id").fetchall()


def lines_of(rows: list[tuple]) -> dict[tuple[str, str], int]:
    return {(r[0], r[1]): r[-1] for r in rows}


def scratch_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("uploader-load-*"))


def ledger_files(ledger: Path) -> list[Path]:
    return sorted(ledger.parent.glob(ledger.name + "*"))


def file_format(ledger: Path) -> tuple[int, int]:
    """The SQLite header's write/read format versions: (1, 1) rollback journal, (2, 2) WAL."""
    with open(ledger, "rb") as f:
        header = f.read(20)
    return header[18], header[19]


def no_wal_writes(ledger: Path) -> bool:
    wal = Path(f"{ledger}-wal")
    return not wal.exists() or wal.stat().st_size == 0


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3… of /proc/PID/stat (state, ppid, …), or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def children(pid: int, zombies: bool = False) -> dict[int, str]:
    """Child processes of `pid` (live ones, or also zombies): child pid -> its start time (to tell a
    reused pid)."""
    kids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := proc_stat(int(entry))) and int(fields[1]) == pid:
            if zombies or fields[0] not in "ZX":
                kids[int(entry)] = fields[19]
    return kids


def alive(pid: int, started: str) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[19] == started and fields[0] not in "ZX"


def waits_on_a_pipe(pid: int) -> bool:
    """Whether the process sleeps in a read of a pipe (where a slice process waits once its slices are done)."""
    try:
        return "pipe_read" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def ignores_sigint(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))


def wait_until(condition: Callable[[], bool], seconds: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# --- manifests ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A manifest's bytes, the CLI options to load it, and the (project_id, reference_id) -> line of every
    job it must load (the physical line the row is on, the header being line 1)."""

    data: bytes
    expected: dict[tuple[str, str], int]
    args: tuple[str, ...] = LOAD_OPTS
    suffix: str = ".csv"

    def write(self, folder: Path, name: str = "m") -> Path:
        path = folder / f"{name}{self.suffix}"
        path.write_bytes(self.data)
        return path


def build(
    header: list[str],
    rows: list[list[str] | None],
    *,
    sep: str = ",",
    eol: str = "\n",
    bom: bool = False,
    trailing: bool = True,
    args: tuple[str, ...] = LOAD_OPTS,
    suffix: str = ".csv",
    project: str = "p",
    ref_column: str = "reference_id",
) -> Case:
    """A manifest from rows of raw cells (None: a blank line). A cell holding a line break (quoted) moves the
    lines of later rows on; an all-empty row loads nothing."""
    ref, pid = header.index(ref_column), header.index("project_id") if "project_id" in header else None
    lines, expected, line = [sep.join(header)], {}, 2
    for row in rows:
        text = "" if row is None else sep.join(row)
        lines.append(text)
        if row is not None and any(row):
            expected[((row[pid] if pid is not None else "") or project, row[ref])] = line
        line += 1 + text.count("\n")
    body = eol.join(lines) + (eol if trailing else "")
    return Case(("\ufeff" if bom else "").encode() + body.encode(), expected, args, suffix)


def image_rows(n: int, start: int = 0) -> list[list[str] | None]:
    return [
        [f"r-{i:03d}", f"https://cdn.example.com/img/{i:03d}.jpg", f"cam{i % 3}", f"note {i}" if i % 5 else ""]
        for i in range(start, start + n)
    ]


def with_blank_lines() -> Case:
    rows = image_rows(40)
    for at in (38, 30, 12, 11, 3):
        rows.insert(at, None)
    rows.insert(20, ["", "", "", ""])  # a spreadsheet's empty row
    rows.append(None)
    return build(IMAGE_HEADER, rows)


def with_overrides(batch_default: bool) -> Case:
    """Override columns set on some rows of the second half only: early slices hold only rows with the
    load's defaults, later ones mix both (and one row names the defaults explicitly)."""
    header = ["project_id", "reference_id", "image_url", "work_flow_id", "batch_id", "priority_weight"]
    rows: list[list[str] | None] = []
    for i in range(40):
        own = i >= 20 and i % 3 != 0
        rows.append(
            [
                "other" if own and i % 2 else "",
                f"r-{i:03d}",
                f"https://cdn.example.com/{i}.jpg",
                "wf2" if own and i % 4 == 1 else "",
                OTHER_BATCH if own and i % 5 == 2 else "",
                str(i % 10 + 1) if own and i % 4 == 3 else "",
            ]
        )
    rows[30][0], rows[30][3] = "p", "w"  # type: ignore[index]  # the defaults, given in the row
    rows.insert(25, ["other", "r-001", "https://cdn.example.com/other-1.jpg", "", "", "3"])  # same id, other project
    args = LOAD_OPTS + (("--batch-id", BATCH) if batch_default else ())
    return build(header, rows, args=args)


def one_override(column: str, value: str, batch_default: bool = False) -> Case:
    """One override column, set on every ninth row only: a slice holding such a row differs from the
    load's defaults in that column alone."""
    rows: list[list[str] | None] = [r[:2] + [value if i % 9 == 4 else ""] for i, r in enumerate(image_rows(40)) if r]
    args = LOAD_OPTS + (("--batch-id", BATCH) if batch_default else ())
    return build(["reference_id", "image_url", column], rows, args=args)


def non_ascii() -> Case:
    names = ["bild-ü", "日本語", "😀", "Ελληνικά", "naïve café"]
    rows: list[list[str] | None] = [
        [f"{names[i % 5]}-{i}", f"https://cdn.example.com/ü/{i}.jpg", names[(i + 1) % 5], f"ß {i} €"] for i in range(40)
    ]
    return build(IMAGE_HEADER, rows)


def jsonl(
    objects: list[dict | None],
    *,
    eol: str = "\n",
    bom: bool = False,
    trailing: bool = True,
    args: tuple[str, ...] = LOAD_OPTS,
) -> Case:
    """A JSONL manifest, one object per line (None: a blank line); lines count from 1 (no header)."""
    lines = ["" if o is None else json.dumps(o, ensure_ascii=False) for o in objects]
    expected = {(o.get("project_id") or "p", o["reference_id"]): i + 1 for i, o in enumerate(objects) if o}
    body = eol.join(lines) + (eol if trailing else "")
    return Case(("\ufeff" if bom else "").encode() + body.encode(), expected, args, ".jsonl")


def jsonl_images(n: int) -> list[dict | None]:
    rows = [dict(zip(IMAGE_HEADER, r)) for r in image_rows(n) if r]
    for i, row in enumerate(rows):
        if i % 7 == 3:
            row["project_id"] = "other"  # a per-row override on some lines
        if i % 11 == 5:
            row["metadata"] = {"k": [1, "two"], "s": 'a "quoted" value'}
    return rows  # type: ignore[return-value]


def jsonl_raw(n: int) -> list[dict | None]:
    return [
        {"reference_id": f"s-{i:03d}", "data": {"sensor_data": {"frames": [{"ts": i, "note": 'x "y" é'}]}}}
        for i in range(n)
    ]


def parquet(rows: list[dict], row_group_size: int | None = None, args: tuple[str, ...] = LOAD_OPTS) -> Case:
    """A Parquet manifest; a job's "line" is its row index (from 0)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out, row_group_size=row_group_size)
    expected = {(r.get("project_id") or "p", r["reference_id"]): i for i, r in enumerate(rows)}
    return Case(out.getvalue(), expected, args, ".parquet")


def parquet_images(n: int) -> list[dict]:
    rows = [dict(zip(IMAGE_HEADER, r)) for r in image_rows(n) if r]
    for i, row in enumerate(rows):
        row["project_id"] = "other" if i % 7 == 3 else None  # a per-row override on some rows
    return rows


CUTTABLE: dict[str, Callable[[], Case]] = {
    "parquet, one row group": lambda: parquet(parquet_images(40)),
    "parquet, row groups of 3 (slices cut inside and across them)": lambda: parquet(parquet_images(40), 3),
    "parquet, fewer rows than slices": lambda: parquet(parquet_images(3), 1),
    "jsonl images (quotes are fine in JSONL)": lambda: jsonl(jsonl_images(40)),
    "jsonl bom, crlf, blank lines, no trailing newline": lambda: jsonl(
        [*jsonl_images(20)[:10], None, None, *jsonl_images(20)[10:]], eol="\r\n", bom=True, trailing=False
    ),
    "jsonl raw shape": lambda: jsonl(jsonl_raw(40)),
    "jsonl fewer lines than slices": lambda: jsonl(jsonl_images(3)),
    "image with extra columns": lambda: build(IMAGE_HEADER, image_rows(40)),
    "tsv": lambda: build(IMAGE_HEADER, [r[:3] + [f"a,b {r[0]}"] for r in image_rows(40) if r], sep="\t", suffix=".tsv"),
    "crlf": lambda: build(IMAGE_HEADER, image_rows(40), eol="\r\n"),
    "no trailing newline": lambda: build(IMAGE_HEADER, image_rows(40), trailing=False),
    "blank lines in the middle": with_blank_lines,
    "bom": lambda: build(IMAGE_HEADER, image_rows(40), bom=True),
    "bom, crlf, no trailing newline": lambda: build(IMAGE_HEADER, image_rows(40), bom=True, eol="\r\n", trailing=False),
    "per-row overrides": lambda: with_overrides(batch_default=False),
    "per-row overrides and --batch-id": lambda: with_overrides(batch_default=True),
    "project_id on some rows": lambda: one_override("project_id", "other"),
    "work_flow_id on some rows": lambda: one_override("work_flow_id", "wf2"),
    "batch_id on some rows": lambda: one_override("batch_id", OTHER_BATCH),
    "batch_id on some rows and --batch-id": lambda: one_override("batch_id", OTHER_BATCH, batch_default=True),
    "--batch-id default": lambda: build(IMAGE_HEADER, image_rows(40), args=LOAD_OPTS + ("--batch-id", BATCH)),
    "non-ascii text": non_ascii,
    "fewer lines than slices": lambda: build(IMAGE_HEADER, image_rows(3)),
    # Slices of well over uploader.load.slices._GROUP rows, not a multiple of it: grouped inserts and the rest
    "1,003 rows": lambda: build(IMAGE_HEADER, image_rows(1003)),
    "1,003 rows, project_id on some": lambda: build(
        ["reference_id", "image_url", "project_id"],
        [r[:2] + ["other" if i % 9 == 4 else ""] for i, r in enumerate(image_rows(1003)) if r],
    ),
    "--column mapping": lambda: build(
        ["id", "url", "cam"],
        [r[:3] for r in image_rows(40) if r],
        args=LOAD_OPTS + ("--column", "reference_id=id", "--column", "image_url=url"),
        ref_column="id",
    ),
}


def quoted_cell_in_last_row() -> Case:
    rows = image_rows(40)
    rows[-1][3] = '"a quoted, note"'  # type: ignore[index]
    return build(IMAGE_HEADER, rows)


def quoted_line_break_mid_file() -> Case:
    rows = image_rows(40)
    rows[20][3] = '"two\nlines"'  # type: ignore[index]  # a cut here would split the row
    return build(IMAGE_HEADER, rows)


def bare_cr_mid_file() -> Case:
    case = build(IMAGE_HEADER, image_rows(40))  # a lone CR ends a line too: line numbers stay the same
    data = case.data.replace(b"\nr-020,", b"\rr-020,", 1)
    assert data != case.data
    return Case(data, case.expected)


def quoted_cell_in_row(k: int) -> Case:
    rows = image_rows(40)
    rows[k][3] = '"a quoted, note"'  # type: ignore[index]
    return build(IMAGE_HEADER, rows)


def bare_cr_before_row(k: int) -> Case:
    case = build(IMAGE_HEADER, image_rows(40))
    data = case.data.replace(b"\nr-%03d," % k, b"\rr-%03d," % k, 1)
    assert data != case.data
    return Case(data, case.expected)


def bare_cr_ending_the_header() -> Case:
    case = build(IMAGE_HEADER, image_rows(40))  # the header's CR ends a line, the LF a blank one: a line more
    data = case.data.replace(b",note\n", b",note\r\r\n", 1)
    return Case(data, {key: line + 1 for key, line in case.expected.items()})


def quoted_line_break_in_header() -> Case:
    case = build(IMAGE_HEADER, image_rows(40))  # a header of two physical lines: every row one line later
    assert IMAGE_HEADER[-1] == "note"
    data = case.data.replace(b",note\n", b',"no\nte"\n', 1)
    return Case(data, {key: line + 1 for key, line in case.expected.items()})


def raw_shape(sep: str) -> Case:
    def data(i: int) -> str:
        text = json.dumps({"image_url": f"https://cdn.example.com/{i}.jpg", "n": i})
        return text if sep == "\t" else '"' + text.replace('"', '""') + '"'

    rows: list[list[str] | None] = [[f"raw-{i}", data(i)] for i in range(40)]
    return build(["reference_id", "data"], rows, sep=sep, suffix=".tsv" if sep == "\t" else ".csv")


UNCUTTABLE: dict[str, Callable[[], Case]] = {
    "quote only in the last row": quoted_cell_in_last_row,
    "quoted line break mid-file": quoted_line_break_mid_file,
    "bare CR mid-file": bare_cr_mid_file,
    "raw shape csv (JSON needs quotes)": lambda: raw_shape(","),
    "raw shape tsv": lambda: raw_shape("\t"),
    # Each slice process checks its own slices only (the other checks the rest): a quote or a bare CR in any
    # one slice (40 rows in 8 slices), or in the header (slice 0's process checks it), is still found.
    **{f"quote in row {k}": partial(quoted_cell_in_row, k) for k in (0, 4, 9, 14, 19, 26, 31, 36)},
    **{f"bare CR before row {k}": partial(bare_cr_before_row, k) for k in (1, 6, 11, 16, 21, 27, 32, 38)},
    "quoted line break in the header": quoted_line_break_in_header,
    "bare CR ending the header": bare_cr_ending_the_header,
}


def load_both_ways(
    case: Case, folder: Path, spy: Spy, monkeypatch: pytest.MonkeyPatch, seeded: bool = False
) -> tuple[list, list]:
    """Load the case into a new ledger with the parallel path allowed, then into another without it; return
    both ledgers' jobs. `seeded`: both ledgers already hold a job of another manifest (the staging path)."""
    manifest = case.write(folder)
    if seeded:
        seed = build(IMAGE_HEADER, [["seed-1", "https://cdn.example.com/seed.jpg", "cam", "n"]]).write(folder, "seed")
        with one_process(monkeypatch):
            for name in ("parallel.db", "serial.db"):
                assert cli_load(seed, folder / name, LOAD_OPTS).exit_code == 0
    parallel = cli_load(manifest, folder / "parallel.db", case.args)
    assert parallel.exit_code == 0, parallel.output
    n = len(case.expected)
    assert f"{n} rows: {n} new" in parallel.stdout
    seen = len(spy.parts)
    with one_process(monkeypatch):
        serial = cli_load(manifest, folder / "serial.db", case.args)
    assert serial.exit_code == 0, serial.output
    assert len(spy.parts) == seen, "the one-process load started slice processes"
    return jobs(folder / "parallel.db"), jobs(folder / "serial.db")


# --- equivalence ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seeded", [False, True], ids=["empty ledger", "non-empty ledger"])
@pytest.mark.parametrize("name", list(CUTTABLE))
def test_parallel_load_equals_one_process_load(
    name: str, seeded: bool, spy: Spy, tmp_path: Path, scratch_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every slice is staged by slice processes and copied in (straight into `jobs` of an empty ledger, else into
    the staging table of the ordinary merge), and `jobs` ends up exactly as the one-process load leaves it
    (ids, overrides and defaults, bodies and hashes, extra columns, status, physical line)."""
    case = CUTTABLE[name]()
    parallel, serial = load_both_ways(case, tmp_path, spy, monkeypatch, seeded)
    assert spy.took_clean_parallel_path(), spy.parts
    assert sum(p.rows for p in spy.parts) == len(case.expected)
    if name == "fewer lines than slices":
        assert any(p.rows == 0 for p in spy.parts)  # empty slices are fine
    assert parallel == serial
    assert row_ids(tmp_path / "parallel.db") == row_ids(tmp_path / "serial.db")  # in manifest order
    assert lines_of([r for r in parallel if r[1] != "seed-1"]) == case.expected
    assert scratch_dirs(scratch_root) == []


@pytest.mark.parametrize("name", list(UNCUTTABLE))
def test_uncuttable_file_loads_through_the_fallback(
    name: str, spy: Spy, tmp_path: Path, scratch_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quote anywhere (a quoted field may hold a line break) or a bare CR makes the slice processes report the
    file uncuttable; the one-process path then loads it, with the same rows and lines."""
    case = UNCUTTABLE[name]()
    parallel, serial = load_both_ways(case, tmp_path, spy, monkeypatch)
    assert len(spy.slices) == 1 and any(p.uncuttable for p in spy.parts), spy.parts
    assert parallel == serial
    assert lines_of(parallel) == case.expected
    assert scratch_dirs(scratch_root) == []


def test_a_dying_slice_process_falls_back_to_one_process(
    spy: Spy, tmp_path: Path, scratch_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slice process that dies mid-way (here: on slice 5) costs only the speed: the load rolls back what it
    copied and loads in one process; no slice process or scratch folder is left behind."""
    real = staging.write_part

    def write_part(manifest, index, *args, **kwargs):  # type: ignore[no-untyped-def]
        if index == 5:
            os._exit(3)  # runs in the slice process: it dies without a result
        return real(manifest, index, *args, **kwargs)

    monkeypatch.setattr(staging, "write_part", write_part)
    case = build(IMAGE_HEADER, image_rows(40))
    before = children(os.getpid(), zombies=True)
    result = cli_load(case.write(tmp_path), tmp_path / "ledger.db")
    assert result.exit_code == 0, result.output
    assert "40 rows: 40 new" in result.stdout
    # the fast path and then the staging path each see slices 0-4 and the lost slice process, then read alone
    assert len(spy.slices) == 1 and {p.index for p in spy.parts} == {0, 1, 2, 3, 4}
    assert lines_of(jobs(tmp_path / "ledger.db")) == case.expected
    assert children(os.getpid(), zombies=True).keys() <= before.keys()
    assert scratch_dirs(scratch_root) == []


def test_no_processes_to_be_had_loads_in_one_process(
    spy: Spy, tmp_path: Path, scratch_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the system refuses a fork (EAGAIN: a process limit), the load reads the file itself: slower, the
    same rows, and no scratch folder left behind."""

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(staging.os, "fork", no_fork)
    case = build(IMAGE_HEADER, image_rows(40))
    result = cli_load(case.write(tmp_path), tmp_path / "ledger.db")
    assert result.exit_code == 0, result.output
    assert "40 rows: 40 new" in result.stdout and spy.parts == []
    assert lines_of(jobs(tmp_path / "ledger.db")) == case.expected
    assert scratch_dirs(scratch_root) == []


@pytest.mark.parametrize("existing", [False, True], ids=["new ledger", "existing empty ledger"])
def test_disk_full_during_the_copy_is_a_clear_error_and_loads_nothing(
    existing: bool, spy: Spy, tmp_path: Path, scratch_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite itself runs out of room (max_page_count: a real SQLITE_FULL) while slices are copied in:
    exit 1 with the ledger error and no traceback, nothing loaded (a new file removed, an existing one
    byte-for-byte as it was), and no scratch folder left."""
    import uploader.load.bulk as bulk_load

    real_mode = bulk_load.sqlite_bulk_mode

    @contextmanager
    def cramped(raw: sqlite3.Connection, **kwargs: Any) -> Iterator[bool]:
        with real_mode(raw, **kwargs) as switched:
            pages = raw.execute("PRAGMA page_count").fetchone()[0]
            raw.execute(f"PRAGMA max_page_count = {pages + 4}")  # room for a slice or two, not all
            yield switched

    monkeypatch.setattr(bulk_load, "sqlite_bulk_mode", cramped)
    ledger = tmp_path / "ledger.db"
    if existing:
        Ledger.open(ledger).close()
    before = ledger.read_bytes() if existing else None
    case = build(
        IMAGE_HEADER, [[f"r-{i:04d}", f"https://cdn.example.com/{'x' * 200}/{i}.jpg", "cam", "n"] for i in range(3000)]
    )
    result = cli_load(case.write(tmp_path), ledger)
    assert result.exit_code == 1, result.output
    assert "disk is full" in result.output and "Traceback" not in result.output
    assert len(spy.parts) >= 1  # it failed while copying the slice processes' slices
    if existing:
        assert ledger.read_bytes() == before
    else:
        assert ledger_files(ledger) == []
    assert scratch_dirs(scratch_root) == []


# --- problems: reported by the one-process path, nothing loaded -----------------------------------------


@pytest.mark.parametrize("existing", [False, True], ids=["new ledger", "existing empty ledger"])
def test_bad_rows_in_late_slices_are_reported_and_nothing_is_loaded(
    existing: bool, spy: Spy, tmp_path: Path, scratch_root: Path
) -> None:
    """Bad rows near the end, after slices already copied into `jobs`: exit 1, every bad row named with its
    file:line and column, no traceback; a new ledger file is removed, an existing empty one is unchanged."""
    rows = image_rows(40)
    rows[34][1] = "s3://bucket/34.jpg"  # type: ignore[index]  # line 36
    rows[38][1] = "s3://bucket/38.jpg"  # type: ignore[index]  # line 40
    manifest = build(IMAGE_HEADER, rows).write(tmp_path)
    ledger = tmp_path / "ledger.db"
    if existing:
        Ledger.open(ledger).close()
        before = ledger.read_bytes()
    result = cli_load(manifest, ledger)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    for line in (36, 40):
        assert f"{manifest}:{line}: column 'image_url': image_url is an s3:// URL" in result.stderr
    assert "2 problems found; nothing was loaded." in result.stderr
    assert any(p.rows and not p.problem_count for p in spy.parts)  # good slices were copied first
    assert spy.parts[-1].problem_count
    if existing:
        assert ledger.read_bytes() == before and no_wal_writes(ledger)
        assert not Path(f"{ledger}-journal").exists()
    else:
        assert ledger_files(ledger) == []
    assert scratch_dirs(scratch_root) == []


def test_duplicate_reference_id_in_two_slices(spy: Spy, tmp_path: Path, scratch_root: Path) -> None:
    """A reference_id in the first and the last slice: every slice is clean on its own, but the unique index
    skips the second copy; the load falls back, names both lines, and loads nothing."""
    rows = image_rows(40)
    rows[38][0] = "r-002"  # type: ignore[index]  # line 40; the first is on line 4
    manifest = build(IMAGE_HEADER, rows).write(tmp_path)
    ledger = tmp_path / "ledger.db"
    result = cli_load(manifest, ledger)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"{manifest}:40: column 'reference_id': duplicate reference_id 'r-002' (first on line 4)" in result.stderr
    assert "1 problem found; nothing was loaded." in result.stderr
    assert spy.took_clean_parallel_path(), spy.parts
    assert ledger_files(ledger) == []
    assert scratch_dirs(scratch_root) == []


# --- afterwards -----------------------------------------------------------------------------------------


def test_reload_is_a_no_op_and_a_changed_copy_updates_as_before(spy: Spy, tmp_path: Path) -> None:
    """After a parallel first load, the same file is "already loaded"; a changed copy is staged by slice processes
    too and goes through the ordinary merge (the ledger is no longer empty), reporting its new and updated
    rows."""
    first = build(IMAGE_HEADER, image_rows(40))
    manifest, ledger = first.write(tmp_path), tmp_path / "ledger.db"
    assert cli_load(manifest, ledger).exit_code == 0
    assert spy.took_clean_parallel_path()
    parts = len(spy.parts)

    again = cli_load(manifest, ledger)
    assert again.exit_code == 0 and "already loaded with the same options (40 rows)" in again.stdout

    rows = image_rows(42)
    rows[5][1] = "https://cdn.example.com/changed/5.jpg"  # type: ignore[index]
    rows[30][1] = "https://cdn.example.com/changed/30.jpg"  # type: ignore[index]
    changed = build(IMAGE_HEADER, rows).write(tmp_path, "changed")
    result = cli_load(changed, ledger)
    assert result.exit_code == 0, result.output
    assert "42 rows: 2 new, 38 unchanged, 2 updated, 0 conflicting" in result.stdout
    assert "updated (payload changed, will be sent): r-005, r-030" in result.stdout
    assert len(spy.slices) == 2 and [p.index for p in spy.parts[parts:]] == list(range(spy.slices[1]))
    loaded = {r[1]: r for r in jobs(ledger)}
    assert len(loaded) == 42 and "changed/30.jpg" in loaded["r-030"][4]


def test_new_ledger_after_a_parallel_load_is_sound(spy: Spy, tmp_path: Path, scratch_root: Path) -> None:
    """A new ledger: the slice processes start before its file exists, the slices are copied under a rollback
    journal, and afterwards the ledger is back in WAL, intact, with no dangling foreign keys, private
    (0600), and no journal, scratch folder or slice process is left."""
    case = build(IMAGE_HEADER, image_rows(40))
    ledger = tmp_path / "ledger.db"
    existed, formats = [], []
    spy.on_start.append(lambda: existed.append(ledger.exists()))
    spy.on_part.append(lambda: formats.append(file_format(ledger)))
    before = children(os.getpid(), zombies=True)
    assert cli_load(case.write(tmp_path), ledger).exit_code == 0
    assert spy.took_clean_parallel_path()
    assert existed == [False]
    assert set(formats) == {(1, 1)}
    assert file_format(ledger) == (2, 2)
    with closing(sqlite3.connect(ledger)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("SELECT COUNT(*), MIN(manifest_id), MAX(manifest_id) FROM jobs").fetchone() == (40, 1, 1)
        assert db.execute("SELECT row_count FROM manifests").fetchall() == [(40,)]
    assert oct(ledger.stat().st_mode & 0o777) == "0o600"
    assert not Path(f"{ledger}-journal").exists()
    assert [d.parent for d in spy.workdirs] == [scratch_root] and not spy.workdirs[0].exists()
    assert scratch_dirs(scratch_root) == []
    assert children(os.getpid(), zombies=True).keys() <= before.keys()


def test_prepare_load_stages_before_the_ledger_is_opened(spy: Spy, tmp_path: Path, scratch_root: Path) -> None:
    """Library API: prepare_load(new_ledger=True) starts the slice processes before the ledger exists; loading it
    into the new ledger then copies their slices."""
    case = build(IMAGE_HEADER, image_rows(40))
    manifest, ledger = case.write(tmp_path), tmp_path / "ledger.db"
    with prepare_load(manifest, ManifestOptions(project_id="p", work_flow_id="w"), new_ledger=True) as prep:
        assert not ledger.exists() and len(spy.workdirs) == 1 and spy.workdirs[0].exists()
        led = Ledger.open(ledger)
        try:
            report = prep.load(led)
        finally:
            led.close()
    assert (report.rows, report.new) == (40, 40)
    assert spy.took_clean_parallel_path()
    assert lines_of(jobs(ledger)) == case.expected
    assert scratch_dirs(scratch_root) == []


def test_unused_prepared_load_stops_its_slice_processes(spy: Spy, tmp_path: Path, scratch_root: Path) -> None:
    """A PreparedLoad closed without loading kills and reaps its slice processes and removes their scratch folder."""
    manifest = build(IMAGE_HEADER, image_rows(40)).write(tmp_path)
    before = children(os.getpid(), zombies=True)
    prep = prepare_load(manifest, ManifestOptions(project_id="p", work_flow_id="w"), new_ledger=True)
    processes = children(os.getpid(), zombies=True).keys() - before.keys()
    assert len(processes) == 2 and len(scratch_dirs(scratch_root)) == 1
    prep.close()
    assert all(proc_stat(pid) is None for pid in processes)  # reaped, not zombies
    assert scratch_dirs(scratch_root) == []


def test_library_load_into_an_existing_empty_ledger(spy: Spy, tmp_path: Path) -> None:
    """load on an empty ledger (not created by this load) also takes the parallel path, and the
    ledger stays in WAL throughout (a failed load must leave such a file byte for byte unchanged)."""
    case = build(IMAGE_HEADER, image_rows(40))
    ledger_path = tmp_path / "ledger.db"
    Ledger.open(ledger_path).close()
    formats: list[tuple[int, int]] = []
    spy.on_part.append(lambda: formats.append(file_format(ledger_path)))
    led = Ledger.open(ledger_path)
    try:
        report = load(led, case.write(tmp_path), ManifestOptions(project_id="p", work_flow_id="w"))
    finally:
        led.close()
    assert report.new == 40 and spy.took_clean_parallel_path()
    assert set(formats) == {(2, 2)}
    assert lines_of(jobs(ledger_path)) == case.expected
    with closing(sqlite3.connect(ledger_path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _aws_signed(signed_at: datetime.datetime, seconds: int) -> str:
    return (
        "https://bucket.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20261203"
        f"&X-Amz-Date={signed_at:%Y%m%dT%H%M%SZ}&X-Amz-Expires={seconds}&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=00"
    )


@pytest.mark.parametrize("parallel", [True, False], ids=["slice processes", "one process"])
def test_signed_urls_after_a_load_into_an_empty_ledger(
    parallel: bool, spy: Spy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load into an empty ledger knows whether any payload may hold a signed URL: `load` then counts the
    pending rows' signed URLs as before (one in a late slice is found), and skips the ledger scan when none
    may (the report says so; its --json is unchanged)."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    rows = image_rows(40)
    rows[33][1] = _aws_signed(now, 3600)  # type: ignore[index]
    with contextlib.ExitStack() as stack:
        if not parallel:
            stack.enter_context(one_process(monkeypatch))
        signed = cli_load(build(IMAGE_HEADER, rows).write(tmp_path, "signed"), tmp_path / "signed.db")
        assert "signed URLs: 1 in pending rows" in signed.stdout, signed.output
        plain_manifest = build(IMAGE_HEADER, image_rows(40)).write(tmp_path, "plain")
        led = Ledger.open(tmp_path / "plain.db")
        try:
            report = load(led, plain_manifest, ManifestOptions(project_id="p", work_flow_id="w"))
        finally:
            led.close()
        assert report.new == 40 and not report.signed_possible
        document = json.loads(cli_load(plain_manifest, tmp_path / "json.db", (*LOAD_OPTS, "--json")).stdout)
        assert "signed_possible" not in document and "signed_urls" in document
        # A ledger that held rows before: the load cannot know about them, so the scan runs.
        assert cli_load(plain_manifest, tmp_path / "signed.db").exit_code == 0
        led = Ledger.open(tmp_path / "signed.db")
        try:
            assert load(led, plain_manifest, ManifestOptions(project_id="p", work_flow_id="w2")).signed_possible
        finally:
            led.close()
    assert bool(spy.parts) == parallel and not any(p.problem_count or p.uncuttable for p in spy.parts)


# --- real processes, killed and interrupted -------------------------------------------------------------

BIG_ROWS = 60_000


@pytest.fixture(scope="module")
def big_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~4.5 MiB of image rows: over MIN_SPLIT_BYTES, so a real `uploader load` forks its slice processes."""
    path = tmp_path_factory.mktemp("big") / "big.csv"
    with open(path, "w", encoding="utf-8") as f:
        f.write("reference_id,image_url,camera,note\n")
        f.writelines(
            f"ref-{i:06d},https://cdn.example.com/images/{i:06d}.jpg,cam{i % 4},note-{i % 97:02d}-abcdefgh\n"
            for i in range(BIG_ROWS)
        )
    assert path.stat().st_size > staging.MIN_SPLIT_BYTES
    return path


def subprocess_env(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    return {**env, "TMPDIR": str(scratch)}


#: `uploader` with a test-only patch applied first (argv[1]: a file the patch may touch to say "here now").
INSTRUMENTED = """
import pathlib, sys, time
{patch}
from uploader.cli.commands import cli
cli(sys.argv[2:], prog_name="uploader")
"""
#: The parent stops (sleeps) just before its first slice: the slice processes run to their end (and wait) while the
#: parent sits in the load's transaction, on a new ledger in its rollback-journal bulk mode.
PAUSE_BEFORE_COPY = """
import uploader.load.slices as staging
real = staging.Production.results
def results(self):
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(60)
    yield from real(self)
staging.Production.results = results
"""
#: Slice processes read their slices in chunks of 500 rows, half a second each: a slice takes many seconds.
SLOW_SLICE_PROCESSES = """
import uploader.manifest.reader as manifest
real = manifest.Manifest.chunk_columns
def chunk_columns(self, size=5000, span=None):
    if span is None:
        yield from real(self, size)
        return
    for chunk in real(self, 500, span):
        time.sleep(0.5)
        yield chunk
manifest.Manifest.chunk_columns = chunk_columns
"""


def start_load(
    manifest: Path,
    ledger: Path,
    scratch: Path,
    *,
    patch: str | None = None,
    marker: Path | None = None,
    output: int = subprocess.PIPE,
    **popen: Any,
) -> subprocess.Popen:
    """`python -m uploader load` (or, with `patch`, the instrumented equivalent) with TMPDIR=`scratch`.
    Killed processes get `output=DEVNULL`: their slice processes inherit stdout/stderr, so reading them to the end
    would wait for the slice processes too."""
    args = ["load", str(manifest), *LOAD_OPTS, "--ledger", str(ledger)]
    if patch is None:
        cmd = [sys.executable, "-m", "uploader", *args]
    else:
        cmd = [sys.executable, "-c", INSTRUMENTED.format(patch=patch), str(marker), *args]
    return subprocess.Popen(cmd, env=subprocess_env(scratch), stdout=output, stderr=output, **popen)


def wait_for_slice_processes(proc: subprocess.Popen, scratch: Path) -> dict[int, str]:
    """Wait until the load's scratch folder exists and its two slice processes run, ignoring SIGINT."""
    found: dict[int, str] = {}

    def ready() -> bool:
        nonlocal found
        assert proc.poll() is None, f"the load ended before its slice processes were seen: {proc.communicate()}"
        found = children(proc.pid)
        return len(found) == 2 and all(map(ignores_sigint, found)) and bool(scratch_dirs(scratch))

    wait_until(ready, 10, "the slice processes")
    return found


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the parent (only) and reap it."""
    proc.kill()
    proc.wait(timeout=10)


def wait_for_exit(processes: dict[int, str], seconds: float = 5.0) -> None:
    """Wait for the slice processes to end (if they do not, the test fails and they are killed)."""
    try:
        wait_until(
            lambda: not any(alive(pid, started) for pid, started in processes.items()),
            seconds,
            "the slice processes to exit",
        )
    finally:
        for pid, started in processes.items():
            if alive(pid, started):
                os.kill(pid, signal.SIGKILL)


def ledger_state(ledger: Path) -> tuple[int, str]:
    """(exit code, output) of `uploader status --ledger L --json`."""
    result = CliRunner().invoke(cli, ["status", "--ledger", str(ledger), "--json"])
    return result.exit_code, result.output


def assert_reload_succeeds(manifest: Path, ledger: Path) -> None:
    result = cli_load(manifest, ledger)
    assert result.exit_code == 0, result.output
    assert f"{BIG_ROWS} rows: {BIG_ROWS} new" in result.stdout
    with closing(sqlite3.connect(ledger)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone() == (BIG_ROWS,)


@pytest.mark.parametrize("existing", [False, True], ids=["new ledger", "existing empty ledger"])
def test_sigkilled_load_leaves_no_slice_processes_or_scratch(
    existing: bool, big_manifest: Path, tmp_path: Path, scratch_root: Path
) -> None:
    """SIGKILL the parent while its slice processes stage: they notice they are orphaned, remove the scratch folder
    and exit; the ledger (if it was created at all) holds no jobs, and the same load then succeeds."""
    ledger = tmp_path / "ledger.db"
    if existing:
        Ledger.open(ledger).close()
    proc = start_load(big_manifest, ledger, scratch_root, output=subprocess.DEVNULL)
    try:
        processes = wait_for_slice_processes(proc, scratch_root)
    finally:
        kill(proc)
    wait_for_exit(processes)
    wait_until(lambda: not scratch_dirs(scratch_root), 5, "the scratch folder to go")
    code, output = ledger_state(ledger)
    if ledger.exists():
        assert code == 0 and json.loads(output)["total"] == 0, output
    else:
        assert code == 1 and "no ledger at" in output and "Traceback" not in output
    assert_reload_succeeds(big_manifest, ledger)


def test_orphaned_slice_processes_stop_within_a_chunk(big_manifest: Path, tmp_path: Path, scratch_root: Path) -> None:
    """Slice processes check for their parent between chunks: with slow chunks (their slices would take many
    seconds more), a SIGKILLed parent's slice processes still exit promptly and remove the scratch folder."""
    proc = start_load(
        big_manifest, tmp_path / "ledger.db", scratch_root, patch=SLOW_SLICE_PROCESSES, output=subprocess.DEVNULL
    )
    try:
        processes = wait_for_slice_processes(proc, scratch_root)
    finally:
        kill(proc)
    wait_for_exit(processes, 5)
    wait_until(lambda: not scratch_dirs(scratch_root), 5, "the scratch folder to go")


def test_sigkilled_during_the_copy_leaves_an_empty_sound_ledger(
    big_manifest: Path, tmp_path: Path, scratch_root: Path
) -> None:
    """SIGKILL the parent inside the bulk transaction of a new ledger (rollback journal, not WAL): the next
    command finds a ledger with no jobs, and the same load then succeeds."""
    ledger, marker = tmp_path / "ledger.db", tmp_path / "paused"
    proc = start_load(
        big_manifest, ledger, scratch_root, patch=PAUSE_BEFORE_COPY, marker=marker, output=subprocess.DEVNULL
    )
    try:
        wait_until(marker.exists, 10, "the load to reach the copy")
        processes = children(proc.pid, zombies=True)
    finally:
        kill(proc)
    code, output = ledger_state(ledger)
    assert code == 0 and json.loads(output)["total"] == 0, output
    with closing(sqlite3.connect(ledger)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    wait_for_exit(processes)
    for leftover in scratch_dirs(scratch_root):  # may be left behind: see the next test
        shutil.rmtree(leftover)
    assert_reload_succeeds(big_manifest, ledger)


def test_sigkilled_after_the_slice_processes_finished_leaves_no_scratch(
    big_manifest: Path, tmp_path: Path, scratch_root: Path
) -> None:
    """The scratch folder goes even if the parent is killed after both slice processes wrote every slice: they
    wait for the parent (most of a big load is its copying) and clean up when it dies."""
    ledger, marker = tmp_path / "ledger.db", tmp_path / "paused"
    proc = start_load(
        big_manifest, ledger, scratch_root, patch=PAUSE_BEFORE_COPY, marker=marker, output=subprocess.DEVNULL
    )
    try:
        wait_until(marker.exists, 10, "the load to reach the copy")
        processes = children(proc.pid)
        assert len(processes) == 2
        wait_until(
            lambda: all(waits_on_a_pipe(pid) for pid in processes),
            10,
            "both slice processes to finish their slices and wait for the parent",
        )
        assert len(list(scratch_dirs(scratch_root)[0].glob("part*.db"))) == 8
    finally:
        kill(proc)
    wait_for_exit(processes, 5)
    assert scratch_dirs(scratch_root) == []


@pytest.mark.parametrize("target", ["parent", "process group", "parent during the copy"])
def test_sigint_stops_the_load_cleanly(target: str, big_manifest: Path, tmp_path: Path, scratch_root: Path) -> None:
    """Ctrl-C (SIGINT to the parent, or to the whole process group as a terminal sends it; slice processes ignore
    it) while slice processes stage or while their slices are copied: exit 130 with the resume hint, no traceback,
    no slice process or scratch folder left, no ledger or an empty one (in WAL), and the same load then succeeds."""
    ledger, marker = tmp_path / "ledger.db", tmp_path / "paused"
    during_copy = target == "parent during the copy"
    proc = start_load(
        big_manifest,
        ledger,
        scratch_root,
        patch=PAUSE_BEFORE_COPY if during_copy else None,
        marker=marker,
        start_new_session=True,
    )
    try:
        processes = wait_for_slice_processes(proc, scratch_root)
        if during_copy:
            wait_until(marker.exists, 10, "the load to reach the copy")
        if target == "process group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        out, err = (b.decode() for b in proc.communicate(timeout=20))
    finally:
        if proc.poll() is None:
            kill(proc)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in out + err
    assert "interrupted; run the same command again to resume." in err
    # Waited for, not asserted at once: a SIGINT that lands in the parent between forking a slice process and
    # recording its pid (Production.__init__) leaves that slice process unkilled, to notice the parent is gone.
    wait_for_exit(processes)
    wait_until(lambda: not scratch_dirs(scratch_root), 5, "the scratch folder to go")
    if during_copy:
        assert ledger.exists()  # interrupted inside the load's transaction
    if ledger.exists():
        code, output = ledger_state(ledger)
        assert code == 0 and json.loads(output)["total"] == 0, output
        with closing(sqlite3.connect(ledger)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert not Path(f"{ledger}-journal").exists()
    assert_reload_succeeds(big_manifest, ledger)


# --- while the loader copies a part: the board, the gate, the flusher ----------------------------------------


@pytest.mark.parametrize(
    "cpus, copying, parts, may",
    [
        # not copying: every slice process goes on
        (2, False, [3, 2], [True, True]),
        # copying on 2 cores: only the one on the earlier part (the loader needs it first)
        (2, True, [3, 2], [False, True]),
        (2, True, [4, 5], [True, False]),
        # one core: still one slice process goes on (never none: the loader would wait for ever)
        (1, True, [6, 7], [True, False]),
        # 4 cores leave 3 to the slice processes: both go on
        (4, True, [3, 2], [True, True]),
        # a slice process with no part left does not hold the other back
        (2, True, [staging._IDLE, 7], [False, True]),
    ],
)
def test_the_board_lets_on_the_slice_processes_the_loader_needs_first(
    monkeypatch: pytest.MonkeyPatch, cpus: int, copying: bool, parts: list[int], may: list[bool]
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    board = staging._Board(len(parts))
    try:
        with contextlib.ExitStack() as stack:
            for k, part in enumerate(parts):
                if part != staging._IDLE:
                    stack.enter_context(board.working(k, part))
            if copying:
                stack.enter_context(board.copying())
            assert [board.may_go_on(k) for k in range(len(parts))] == may
        assert all(board.may_go_on(k) for k in range(len(parts)))  # the copy is over
    finally:
        board.close()


def test_a_held_slice_process_goes_on_when_the_copy_ends_and_gives_up_when_the_loader_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    board = staging._Board(2)
    try:
        with board.working(0, 1), board.working(1, 2):
            copy = board.copying()
            copy.__enter__()
            timer = threading.Timer(0.2, copy.__exit__, (None, None, None))
            timer.start()
            started = time.monotonic()
            staging._Gate(board, 1, os.getppid()).wait()  # held until the copy ends
            assert time.monotonic() - started >= 0.15
            timer.join()
            staging._Gate(board, 0, 1).wait()  # the earlier part goes on whoever the parent is
            with board.copying(), pytest.raises(staging._Orphaned):
                staging._Gate(board, 1, parent=-1).wait()  # not our parent: the loader is gone
    finally:
        board.close()


def test_the_flusher_syncs_the_ledger_file_after_each_part_in_journal_mode_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uploader.load import bulk

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    threads = threading.active_count()
    with closing(sqlite3.connect(tmp_path / "l.db")) as raw:
        raw.execute("CREATE TABLE t (x)")
        with bulk._Flusher.of(raw, journal=False) as none:
            assert none is None  # WAL: the pages go to the log, not the file
        with bulk._Flusher.of(raw, journal=True) as flusher:
            assert flusher is not None
            flusher.request()
            deadline = time.monotonic() + 10
            while not synced and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(synced) == 1
            flusher.request()
    assert threading.active_count() == threads  # stopped, so a fallback load may fork
    with closing(sqlite3.connect(":memory:")) as raw, bulk._Flusher.of(raw, journal=True) as none:
        assert none is None  # no file to sync


# --- a new ledger, on a bare connection (no SQLAlchemy) ----------------------------------------------------


def schema_of(ledger: Path) -> dict[str, object]:
    """What makes a ledger file's schema: its tables and indexes as SQLite keeps them, the pragmas a new file
    is given, the Alembic stamp, and the file's mode."""
    with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        # by name: create_all makes a table's indexes in no fixed order (a set), which changes nothing else
        master = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
        pragmas = {p: db.execute(f"PRAGMA {p}").fetchone()[0] for p in PRAGMAS}
        stamp = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return {"master": master, "pragmas": pragmas, "stamp": stamp, "mode": oct(ledger.stat().st_mode & 0o777)}


PRAGMAS = ("page_size", "journal_mode", "user_version", "application_id", "auto_vacuum", "encoding")


def test_a_bare_new_ledger_is_the_one_sqlalchemy_makes(tmp_path: Path) -> None:
    """uploader.ledger.create_bare writes the schema as text of its own (NEW_LEDGER_SCHEMA): it must stay the
    schema `create_all` of the models and Alembic's stamp make, table for table, index for index, character for
    character. If the models change, print NEW_LEDGER_SCHEMA anew from a ledger Ledger.open made."""
    from uploader.ledger import create_bare

    made = tmp_path / "sqlalchemy.db"
    Ledger.open(made).close()
    bare = create_bare(tmp_path / "bare.db")
    assert bare is not None
    bare.close()
    assert schema_of(tmp_path / "bare.db") == schema_of(made)
    assert schema_of(made)["mode"] == "0o600" and schema_of(made)["pragmas"]["journal_mode"] == "wal"


def test_create_bare_leaves_a_ledger_another_process_made_first(tmp_path: Path) -> None:
    from uploader.ledger import create_bare

    ledger = tmp_path / "l.db"
    led = Ledger.open(ledger)
    led.close()
    before = schema_of(ledger)
    assert create_bare(ledger) is None
    assert schema_of(ledger) == before


def comparable(ledger: Path) -> dict[str, object]:
    """A ledger's schema and contents but the times it was written."""
    with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        manifests = db.execute(
            "SELECT id, path, size, sha256, options_hash, row_count, changed FROM manifests"
        ).fetchall()
    return {**schema_of(ledger), "jobs": jobs_but_times(ledger), "manifests": manifests}


def jobs_but_times(ledger: Path) -> list[tuple]:
    with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(jobs)") if r[1] not in ("created_at", "updated_at")]
        return db.execute(f"SELECT {', '.join(columns)} FROM jobs ORDER BY id").fetchall()


def test_a_first_load_without_sqlalchemy_makes_the_ledger_the_usual_path_makes(
    spy: Spy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big manifest into a ledger file that does not exist yet goes from start to end on a bare connection;
    the file it leaves is the one Ledger.open and the usual load leave: schema, pragmas, stamp, mode, the
    manifest's row, every job's every column (times aside)."""
    case = build(IMAGE_HEADER, image_rows(40))
    manifest = case.write(tmp_path)
    assert cli_load(manifest, tmp_path / "bare.db").exit_code == 0
    assert spy.took_clean_parallel_path()
    with one_process(monkeypatch):
        assert cli_load(manifest, tmp_path / "usual.db").exit_code == 0
    assert comparable(tmp_path / "bare.db") == comparable(tmp_path / "usual.db")
    with closing(sqlite3.connect(tmp_path / "bare.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    reload = cli_load(manifest, tmp_path / "bare.db")  # a ledger like any other afterwards
    assert reload.exit_code == 0 and "already loaded" in reload.stdout, reload.output


LOAD_AND_SAY = """
import sys
from uploader.cli import main
sys.argv = ["uploader", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = ("sqlalchemy", "alembic", "httpx", "aiohttp")
print("imported:", *sorted(m for m in heavy if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def test_a_big_first_load_into_a_new_ledger_imports_no_sqlalchemy(big_manifest: Path, tmp_path: Path) -> None:
    """Importing SQLAlchemy costs the loader a quarter of a second of CPU while its slice processes need both
    cores: a big manifest's first load into a new ledger file does without it. A manifest whose payloads may
    hold signed URLs still has them counted (that reads the ledger through SQLAlchemy)."""
    ledger = tmp_path / "l.db"
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_SAY, "load", str(big_manifest), *LOAD_OPTS, "--ledger", str(ledger)],
        capture_output=True,
        text=True,
        env=subprocess_env(tmp_path),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"{BIG_ROWS} rows: {BIG_ROWS} new" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "imported:", done.stderr
    assert Ledger.open(ledger).counts()["pending"] == BIG_ROWS


def test_a_failed_write_of_a_bare_load_leaves_no_ledger(
    spy: Spy, tmp_path: Path, scratch_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite fails under the bare load (a full disk, an I/O error): the command says so in one line, exits 1,
    and the ledger file it created is gone with its companions."""
    import uploader.load.bulk as bulk

    def failing(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(bulk, "load_bare", failing)
    manifest = build(IMAGE_HEADER, image_rows(40)).write(tmp_path)
    ledger = tmp_path / "ledger.db"
    result = cli_load(manifest, ledger)
    assert result.exit_code == 1, result.output
    assert "ledger error: disk I/O error" in result.stderr and "Traceback" not in result.output
    assert ledger_files(ledger) == []
    assert scratch_dirs(scratch_root) == []


def test_a_bare_first_load_of_signed_urls_still_counts_them(spy: Spy, tmp_path: Path) -> None:
    """Payloads that may hold signed URLs: the bare load says so, and the command then reads them from the new
    ledger (through SQLAlchemy) to tell how many expire too soon, as after any load."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    rows = image_rows(40)
    for i in (3, 30):
        rows[i][1] = (  # type: ignore[index]
            f"https://b.s3.amazonaws.com/{i}.jpg?X-Amz-Date={stamp}&X-Amz-Expires=3600&X-Amz-Signature=abc"
        )
    manifest = build(IMAGE_HEADER, rows).write(tmp_path)
    result = cli_load(manifest, tmp_path / "ledger.db", (*LOAD_OPTS, "--min-url-validity", "2h"))
    assert result.exit_code == 0, result.output
    assert spy.took_clean_parallel_path()
    assert "signed URLs: 2 in pending rows; 2 expire before" in result.stdout, result.stdout


@pytest.mark.parametrize("after", ["setup", "schema"])
def test_create_bare_stopped_before_its_schema_is_in_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: str
) -> None:
    """Found by tests/test_adversary_slices.py (a Ctrl-C just as the load created the file left a file without
    tables). A Ctrl-C while the new file is set up, or a failure while its schema is written (a full disk, here
    a statement SQLite refuses): the file is removed, with its -wal and -shm, and the next command starts a
    ledger there as if nothing had happened."""
    import uploader.ledger.bare as bare

    ledger = tmp_path / "l.db"
    if after == "setup":
        real = bare.setup_connection

        def setup(raw: sqlite3.Connection) -> None:
            real(raw)
            raise KeyboardInterrupt

        monkeypatch.setattr(bare, "setup_connection", setup)
        stop: type[BaseException] = KeyboardInterrupt
    else:
        monkeypatch.setattr(bare, "NEW_LEDGER_SCHEMA", (*bare.NEW_LEDGER_SCHEMA[:3], "CREATE TABLE ("))
        stop = sqlite3.OperationalError
    with pytest.raises(stop):
        bare.create_bare(ledger)
    assert ledger_files(ledger) == []
    monkeypatch.undo()
    made = bare.create_bare(ledger)
    assert made is not None
    made.close()
