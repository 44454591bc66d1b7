"""Migrations: from empty to head, no drift from the models, one head, newer ledgers refused."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.config import Config

from uploader.db import ledger_url, migrate, open_engine, script_location
from uploader.errors import LedgerTooNewError
from uploader.models import Base


def test_single_head():
    cfg = Config()
    cfg.set_main_option("script_location", script_location())
    assert len(ScriptDirectory.from_config(cfg).get_heads()) == 1


def test_upgrade_from_empty_has_no_drift(tmp_path):
    engine = open_engine(ledger_url(tmp_path / "l.db"))
    migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    migrate(engine)  # a second open is a no-op


def test_newer_ledger_is_refused(tmp_path):
    engine = open_engine(ledger_url(tmp_path / "l.db"))
    migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00dfeed'")
    with pytest.raises(LedgerTooNewError, match="newer uploader"):
        migrate(engine)


def test_ledger_url_forms(tmp_path, monkeypatch):
    monkeypatch.delenv("UPLOADER_LEDGER", raising=False)
    assert ledger_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert ledger_url(tmp_path / "x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    monkeypatch.setenv("UPLOADER_LEDGER", str(tmp_path / "env.db"))
    assert ledger_url(None).endswith("env.db")
