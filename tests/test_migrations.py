"""Migrations on both engines: from empty to head, no drift from the models, one head, newer ledgers refused."""

from __future__ import annotations

import threading
import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from uploader.errors import LedgerTooNewError
from uploader.ledger.engine import ledger_url, migrate, open_engine, script_location
from uploader.ledger.models import METADATA


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", script_location())
    return cfg


def test_single_head():
    assert len(ScriptDirectory.from_config(_config()).get_heads()) == 1


def test_upgrade_from_empty_has_no_drift(db_url):
    engine = open_engine(db_url)
    try:
        migrate(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), METADATA)
            assert diff == []
            assert set(inspect(conn).get_table_names()) == {"alembic_version", *METADATA.tables}
        migrate(engine)  # a second open is a no-op
    finally:
        engine.dispose()


def test_newer_ledger_is_refused(db_url):
    engine = open_engine(db_url)
    try:
        migrate(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00dfeed'")
        with pytest.raises(LedgerTooNewError, match="newer uploader"):
            migrate(engine)
    finally:
        engine.dispose()


def test_ledger_url_forms(tmp_path, monkeypatch):
    monkeypatch.delenv("UPLOADER_LEDGER", raising=False)
    assert ledger_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert ledger_url(tmp_path / "x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    monkeypatch.setenv("UPLOADER_LEDGER", str(tmp_path / "env.db"))
    assert ledger_url(None).endswith("env.db")


@pytest.mark.slow
def test_runs_opening_a_new_ledger_at_once_migrate_it_once(db_url):
    """Several `uploader run` processes started together on an empty ledger: one migrates, the rest wait
    and find it done (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock)."""
    engines = [open_engine(db_url) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(engines))

    def open_one(engine) -> None:  # type: ignore[no-untyped-def]
        try:
            start.wait()
            migrate(engine)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(daemon=True, target=open_one, args=(e,)) for e in engines]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        with engines[0].connect() as conn:
            heads = ScriptDirectory.from_config(_config()).get_heads()
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == heads
    finally:
        for e in engines:
            e.dispose()


def test_schema_head_is_alembics_head():
    from uploader.ledger.engine import SCHEMA_HEAD

    assert ScriptDirectory.from_config(_config()).get_heads() == [SCHEMA_HEAD]


def _sqlite_schema(path) -> dict:
    """Every table's columns, indexes (with their columns) and foreign keys, as SQLite reports them."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(path)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        schema = {}
        for t in tables:
            indexes = {
                i[1]: (i[2], i[3], i[4], db.execute(f"PRAGMA index_info('{i[1]}')").fetchall())
                for i in db.execute(f"PRAGMA index_list('{t}')")
            }
            schema[t] = (
                db.execute(f"PRAGMA table_info('{t}')").fetchall(),
                indexes,
                db.execute(f"PRAGMA foreign_key_list('{t}')").fetchall(),
            )
        schema["version"] = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return schema


def test_new_sqlite_ledger_is_the_migrated_schema(tmp_path):
    """A new SQLite file gets the models' schema at once (no Alembic run): column for column, index for
    index, the same as replaying every migration, and stamped with the head so later migrations apply."""
    from uploader.ledger.ledger import Ledger

    fresh = Ledger.open(tmp_path / "fresh.db")
    fresh.close()
    migrated = open_engine(ledger_url(tmp_path / "migrated.db"))
    try:
        migrate(migrated)
    finally:
        migrated.dispose()
    assert _sqlite_schema(tmp_path / "fresh.db") == _sqlite_schema(tmp_path / "migrated.db")
    engine = open_engine(ledger_url(tmp_path / "fresh.db"))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), METADATA)
            assert diff == []
        migrate(engine)  # Alembic agrees it is at the head: nothing to do
    finally:
        engine.dispose()


def test_new_ledger_opened_by_many_at_once(tmp_path):
    """Several processes' worth of opens of one new file at once: one creates the schema, the others find it
    (or migrate an empty file that another has not filled yet); every one ends at the head."""
    from uploader.ledger.ledger import Ledger

    path, errors, ledgers = tmp_path / "race.db", [], []

    def open_it() -> None:
        try:
            ledgers.append(Ledger.open(path))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for led in ledgers:
        led.close()
    from uploader.ledger.engine import SCHEMA_HEAD

    assert errors == [] and len(ledgers) == 6
    assert _sqlite_schema(path)["version"] == [(SCHEMA_HEAD,)]
