"""Where the ledger is: `--ledger`, else UPLOADER_LEDGER, else `uploader.db` here. Kept apart from db.py
so that `uploader load` can know it before SQLAlchemy is imported (see runner.prepare_load)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_LEDGER", "ledger_url", "new_ledger_file"]

DEFAULT_LEDGER = "uploader.db"


def ledger_url(ledger: str | os.PathLike[str] | None) -> str:
    """Turn `--ledger` / UPLOADER_LEDGER (a file path or a SQLAlchemy URL) into a URL."""
    value = str(ledger) if ledger else os.environ.get("UPLOADER_LEDGER") or DEFAULT_LEDGER
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().absolute()}"


def new_ledger_file(ledger: str | os.PathLike[str] | None) -> Path | None:
    """The ledger's SQLite file if it does not exist yet: the command that creates it may remove it again,
    and nobody else can be using it."""
    url = ledger_url(ledger)
    if not url.startswith("sqlite:///") or "?" in url:
        return None
    path = Path(url[len("sqlite:///"):])
    return None if path.exists() or str(path) in ("", ":memory:") else path
