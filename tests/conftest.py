"""Shared fixtures: real ledgers, a SQLite file in a temporary folder and (when a server is given) PostgreSQL.

`db_url` is parametrised over both engines. The PostgreSQL variant needs UPLOADER_TEST_POSTGRES_URL, the URL
of a database whose role may create databases (`.ci/run` sets one up): each test gets a database of its own,
created empty and dropped afterwards. Without the variable the PostgreSQL variant is skipped (under CI=true
it fails instead, so a broken set-up cannot pass as "skipped").
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from uploader.manifest import file_identity


class FakeManifest:
    """Stands in for uploader.manifest.reader.Manifest at the ledger's edge (the loader's unit tests)."""

    def __init__(
        self,
        path: Path,
        rows: list[tuple[str, str]],
        project: str = "p1",
        extra: dict | None = None,
        batch: str | None = None,
    ):
        self.path = path
        self.identity = file_identity(path)  # the file as the reader would have opened it
        self.label = None  # recorded by its path
        self.unit = "line"
        self.splittable = False  # read in one piece: no worker processes (uploader.load.slices)
        self.problems: list = []
        self.problem_count = 0
        self.rows = rows
        self.project = project
        self.extra = extra
        self.batch = batch  #: every row's batch_id (in its payload too, as the reader puts it)

    def chunk_tuples(self, size: int = 5000) -> Iterator[list[tuple]]:
        """Rows as the loader reads them: (line, project_id, reference_id, work_flow_id, batch_id, body, extra)."""
        extra = json.dumps(self.extra) if self.extra else None
        rows = [
            (
                i + 2,
                self.project,
                ref,
                "wf",
                self.batch,
                json.dumps(
                    {"reference_id": ref, "work_flow_id": "wf"}
                    | ({"batch_id": self.batch} if self.batch else {})
                    | {"data": {"image_url": url}}
                ),
                extra,
            )
            for i, (ref, url) in enumerate(self.rows)
        ]
        for start in range(0, len(rows), size):
            yield rows[start : start + size]


POSTGRES_ENV = "UPLOADER_TEST_POSTGRES_URL"
ENGINES = ["sqlite", "postgresql"]

#: Restrict a test that takes `db_url` (or `ledger`) to the SQLite engine: file modes, WAL, file bytes.
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(autouse=True, scope="session")
def _no_user_config(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The user config file of the machine running the tests (uploader.cli.config) applies to none of them,
    nor to the processes they start: the user config folder is an empty one."""
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg-config"))


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, ledger_path: Path) -> Iterator[str]:
    """A URL of an empty ledger: a SQLite file, or a fresh PostgreSQL database dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{ledger_path}"
        return
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{POSTGRES_ENV} not set under CI: .ci/run should have started PostgreSQL")
        pytest.skip(f"{POSTGRES_ENV} not set: PostgreSQL tests skipped")
    yield from _fresh_postgres_database(admin_url)


def _fresh_postgres_database(admin_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"uploader_t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop_database(admin, name)
        admin.dispose()


def _drop_database(admin: Any, name: str, seconds: float = 10.0) -> None:
    """DROP DATABASE … WITH (FORCE), again for up to `seconds` while a server process of another role is in it:
    FORCE may end the test role's own sessions only, and an autovacuum worker (the superuser's) visits a new
    database now and then (seen once in CI: InsufficientPrivilege at a teardown)."""
    from sqlalchemy.exc import ProgrammingError

    deadline = time.monotonic() + seconds
    while True:
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except ProgrammingError as exc:
            if getattr(exc.orig, "sqlstate", None) != "42501" or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def ledger(db_url: str):
    from uploader.ledger.ledger import Ledger

    led = Ledger.open(db_url)
    yield led
    led.close()


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def fake_manifest(tmp_path: Path, rows: list[tuple[str, str]], name: str = "m.csv", **kw) -> FakeManifest:
    path = tmp_path / name
    path.write_text("\n".join(f"{r},{u}" for r, u in rows) + repr(kw))  # content only feeds the sha256
    return FakeManifest(path, rows, **kw)


def migrate_sqlite(path: Path, revision: str, down: bool = False) -> None:
    """Move the SQLite ledger at `path` to an Alembic `revision` (up, or down when asked): older ledgers."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from uploader.ledger.engine import script_location

    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", script_location())
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, revision)
    finally:
        engine.dispose()
