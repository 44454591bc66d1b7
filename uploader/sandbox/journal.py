"""The optional state file: an append-only JSONL journal, one line per created batch or job, or deleted job.

Appending and flushing one line is cheap enough for thousands of jobs a second (no fsync: the file
only has to survive the sandbox process, not the machine). A sandbox killed mid-write leaves a torn last
line; replay skips lines that do not parse, and reopening terminates the torn line first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["Journal", "read_journal"]


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a journal in order; a missing file has none, unreadable lines are skipped."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("kind") in ("job", "batch", "deleted"):
                yield record


class Journal:
    """Appends records to the state file; a Journal without a path records nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            needs_newline = path.exists() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
            self._file = path.open("a", encoding="utf-8")
            if needs_newline:
                self._file.write("\n")
                self._file.flush()

    def append(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1)
