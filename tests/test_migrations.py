"""Migrations on both engines: from empty to head, no drift from the models, one head, newer ledgers refused."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import inspect
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.config import Config

from uploader.db import ledger_url, migrate, open_engine, script_location
from uploader.errors import LedgerTooNewError
from uploader.models import Base


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
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            assert diff == []
            assert set(inspect(conn).get_table_names()) == {"alembic_version", *Base.metadata.tables}
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
