"""Shared fixtures: real SQLite ledgers in temporary folders."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest


@dataclass(frozen=True)
class FakeStagedJob:
    line: int
    project_id: str
    reference_id: str
    work_flow_id: str
    batch_id: str | None
    body: str
    extra: str | None = None


class FakeManifest:
    """Stands in for uploader.manifest.Manifest at the ledger's edge (the loader's unit tests)."""

    def __init__(self, path: Path, rows: list[tuple[str, str]], project: str = "p1", extra: dict | None = None):
        self.path = path
        self.unit = "line"
        self.problems: list = []
        self.problem_count = 0
        self.rows = rows
        self.project = project
        self.extra = extra

    def chunks(self, size: int = 5000) -> Iterator[list[FakeStagedJob]]:
        out = []
        for i, (ref, url) in enumerate(self.rows):
            body = json.dumps({"reference_id": ref, "work_flow_id": "wf", "data": {"image_url": url}})
            extra = json.dumps(self.extra) if self.extra else None
            out.append(FakeStagedJob(i + 2, self.project, ref, "wf", None, body, extra))
            if len(out) >= size:
                yield out
                out = []
        if out:
            yield out


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(ledger_path: Path):
    from uploader.ledger import Ledger

    led = Ledger.open(ledger_path)
    yield led
    led.close()


def fake_manifest(tmp_path: Path, rows: list[tuple[str, str]], name: str = "m.csv", **kw) -> FakeManifest:
    path = tmp_path / name
    path.write_text("\n".join(f"{r},{u}" for r, u in rows))  # content only feeds the sha256
    return FakeManifest(path, rows, **kw)
