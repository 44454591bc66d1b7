"""A damaged ledger, or a file that is no ledger at all, is refused with one clear message (issue 10, item 13).

Every command that opens a ledger used to die with SQLAlchemy's DatabaseError traceback and its "Background
on this error" link. Now: one line naming the file, that it is not a usable uploader ledger with SQLite's
reason, and what to do; exit 1; and the file left byte for byte as it was, with no -wal/-shm behind. Real
`python -m uploader` processes, all started at once, over every command × every kind of damage.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from sqlalchemy import create_engine

from uploader.errors import LedgerError
from uploader.ledger.ledger import Ledger
from uploader.load import load
from uploader.manifest.reader import ManifestOptions

pytestmark = pytest.mark.slow

LOAD = ["--project-id", "p", "--work-flow-id", "w"]
COMMANDS: dict[str, list[str]] = {
    "status": ["status", "--json"],
    "export": ["export", "-o", "{dir}/out.parquet"],
    "retry": ["retry", "--all"],
    "load": ["load", "{manifest}", *LOAD],
    "run": ["run", "{manifest}", *LOAD, "--sandbox", "--quiet"],
    "run-resume": ["run", "--sandbox", "--quiet"],
    "reconcile": ["reconcile", "--sandbox"],
}
#: damage -> what the message must say
DAMAGES = {
    "truncated": "is not a usable uploader ledger: database disk image is malformed",
    "garbled-pages": "is not a usable uploader ledger: database disk image is malformed",
    "csv": "is not a usable uploader ledger: file is not a database",
    "random": "is not a usable uploader ledger: file is not a database",
    "zeros": "is not a usable uploader ledger: file is not a database",
    "other-db": "is a database but not an uploader ledger (it has the tables customers, orders)",
}


class Outcome(NamedTuple):
    code: int
    stdout: str
    stderr: str
    ledger: Path
    before: bytes
    files_before: set[str]
    files_after: set[str]


def make_damaged(kind: str, folder: Path, healthy: bytes) -> Path:
    folder.mkdir(parents=True)
    path = folder / ("ledger.csv" if kind == "csv" else "ledger.db")
    if kind == "truncated":
        path.write_bytes(healthy[: len(healthy) // 2])
    elif kind == "garbled-pages":  # header and schema intact: found only when the rows are read
        half = len(healthy) // 2
        path.write_bytes(healthy[:half] + random.Random(1).randbytes(len(healthy) - half))
    elif kind == "csv":
        path.write_text("reference_id,image_url\na,https://cdn.example.com/a.jpg\n")
    elif kind == "random":
        path.write_bytes(random.Random(2).randbytes(len(healthy)))
    elif kind == "zeros":
        path.write_bytes(bytes(len(healthy)))
    else:  # someone else's SQLite database, in rollback-journal mode (WAL would be a change to its header)
        db = sqlite3.connect(path)
        db.executescript(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);"
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER);"
            "INSERT INTO customers (name) VALUES ('ada');"
        )
        db.close()
    return path


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Outcome]:
    root = tmp_path_factory.mktemp("damaged")
    manifest = root / "m.csv"
    manifest.write_text(
        "reference_id,image_url\n" + "".join(f"r{i},https://cdn.example.com/{i}.jpg\n" for i in range(3000))
    )
    healthy_path = root / "healthy.db"
    led = Ledger.open(healthy_path)
    load(led, manifest, ManifestOptions(project_id="p", work_flow_id="w"))
    led.close()
    healthy = healthy_path.read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    procs = {}
    for kind in DAMAGES:
        for name, args in COMMANDS.items():
            folder = root / kind / name
            ledger = make_damaged(kind, folder, healthy)
            argv = [a.format(dir=folder, manifest=manifest) for a in args]
            before, files = ledger.read_bytes(), {p.name for p in folder.iterdir()}
            proc = subprocess.Popen(
                [sys.executable, "-m", "uploader", *argv, "--ledger", str(ledger)],
                env=env,
                cwd=folder,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            procs[kind, name] = (proc, ledger, before, files)
            time.sleep(0.02)
    out = {}
    for key, (proc, ledger, before, files) in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        out[key] = Outcome(
            proc.returncode,
            stdout.decode("utf-8", "replace"),
            stderr.decode("utf-8", "replace"),
            ledger,
            before,
            files,
            {p.name for p in ledger.parent.iterdir()},
        )
    return out


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_ledger_is_one_clear_error(damage: str, command: str, outcomes) -> None:
    outcome = outcomes[damage, command]
    everything = outcome.stdout + outcome.stderr
    assert "Traceback" not in everything and "sqlalche.me" not in everything
    if damage == "garbled-pages" and outcome.code == 0:
        # Opening is a quick look, not a full integrity check: a command that never reads a damaged page
        # (`retry` with no failed row, `load` of a manifest already loaded) has nothing to report.
        assert command in ("retry", "load"), everything
        return
    assert outcome.code == 1, everything
    if "--json" in COMMANDS[command]:  # the error as a JSON object, on stderr and on stdout
        document = json.loads(outcome.stderr.splitlines()[-1])
        assert json.loads(outcome.stdout) == document and document["exit"] == 1
        last = f"error: {document['error']}"
    else:
        assert outcome.stdout == "" or "already loaded" in outcome.stdout  # `run M` may have got past its load
        last = outcome.stderr.splitlines()[-1]  # `--sandbox` prints the emulator's address first
    assert last.startswith(f"error: {outcome.ledger} "), outcome.stderr
    assert DAMAGES[damage] in last, last
    if damage in ("truncated", "garbled-pages"):
        assert "Restore it from a backup" in last and '".recover"' in last
    elif damage != "other-db":
        assert "names your ledger file" in last and "backup" in last
    else:
        assert "Pass --ledger with the ledger's file" in last
    assert outcome.ledger.read_bytes() == outcome.before
    assert outcome.files_after == outcome.files_before  # no -wal, -shm or export left behind


def test_a_database_with_clashing_tables_is_not_migrated_into(db_url: str) -> None:
    """SQLite: any table that is not ours; PostgreSQL (a database may be shared): a `jobs` table that is not
    ours. Refused before anything is created in it."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE jobs (id INTEGER PRIMARY KEY, owner TEXT)")
    with pytest.raises(LedgerError, match=r"is a database but not an uploader ledger \(it has the tables jobs\)"):
        Ledger.open(db_url, create=False)
    with engine.connect() as conn:
        tables = set(conn.dialect.get_table_names(conn))
    engine.dispose()
    assert tables == {"jobs"}
