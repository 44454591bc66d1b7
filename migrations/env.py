"""Alembic environment: runs in-process on the connection uploader hands over (see uploader/ledger/engine.py)."""

from __future__ import annotations

from alembic import context

from uploader.ledger.models import METADATA

config = context.config
target_metadata = METADATA


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from sqlalchemy import create_engine

        url = config.get_main_option("sqlalchemy.url") or "sqlite:///uploader.db"
        with create_engine(url).connect() as conn:
            _run(conn)
            conn.commit()
        return
    _run(connection)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
