"""A manifest's own columns come back from `export` with the types they were given: a Parquet double, integer
or boolean column is one again in a Parquet export (nulls stay null), and a JSON Lines export gives numbers,
booleans, null and objects as JSON values. CSV, which has only text, writes them as JSON text.

The CLI in-process (click's runner) on real manifest files and a real SQLite ledger.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from uploader.cli.commands import cli
from uploader.export import parquet_types

U = "https://cdn.example.com/{}.jpg"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def export(ledger: Path, out: Path) -> Path:
    invoke("export", "--ledger", str(ledger), "-o", str(out))
    return out


def typed_manifest(path: Path, with_settings_columns: bool) -> Path:
    columns: dict[str, Any] = {
        "reference_id": ["a", "b", "c"],
        "image_url": [U.format(i) for i in range(3)],
        "score": pa.array([1.0, None, 2.5], pa.float64()),
        "n": pa.array([1, None, 3], pa.int32()),
        "flag": pa.array([True, False, None]),
        "tag": pa.array(["x", None, ""]),
        "seen": pa.array([dt.datetime(2026, 1, 2, 3, 4, 5), None, None], pa.timestamp("s")),
        "price": pa.array([decimal.Decimal("1.50"), None, None], pa.decimal128(5, 2)),
        "boxes": pa.array([[1, 2], None, []], pa.list_(pa.int64())),
    }
    if with_settings_columns:  # the row-by-row path (the fast one needs the project and workflow as options)
        columns["project_id"] = ["p"] * 3
        columns["work_flow_id"] = ["w"] * 3
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize("with_settings_columns", [False, True], ids=["fast path", "row by row"])
def test_parquet_extras_keep_their_types_through_a_parquet_export(tmp_path: Path, with_settings_columns) -> None:
    manifest = typed_manifest(tmp_path / "m.parquet", with_settings_columns)
    ledger = tmp_path / "l.db"
    options = [] if with_settings_columns else ["--project-id", "p", "--work-flow-id", "w"]
    invoke("load", str(manifest), "--ledger", str(ledger), *options)
    table = pq.read_table(export(ledger, tmp_path / "out.parquet"))
    types = {f.name: str(f.type) for f in table.schema}
    assert (types["score"], types["n"], types["flag"], types["tag"]) == ("double", "int64", "bool", "string")
    assert types["seen"] == types["price"] == types["boxes"] == "string"  # no JSON type: text
    got = table.select(["score", "n", "flag", "tag", "seen", "price", "boxes"]).to_pylist()
    assert got == [
        {"score": 1.0, "n": 1, "flag": True, "tag": "x"}
        | {"seen": "2026-01-02T03:04:05", "price": "1.50", "boxes": "[1,2]"},
        {"score": None, "n": None, "flag": False, "tag": None, "seen": None, "price": None, "boxes": None},
        {"score": 2.5, "n": 3, "flag": None, "tag": "", "seen": None, "price": None, "boxes": "[]"},
    ]
    lines = [json.loads(line) for line in export(ledger, tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["score"], r["n"], r["flag"], r["tag"], r["boxes"]) for r in lines] == [
        (1.0, 1, True, "x", [1, 2]),
        (None, None, False, None, None),
        (2.5, 3, None, "", []),
    ]
    csv_lines = export(ledger, tmp_path / "out.csv").read_text().splitlines()
    assert csv_lines[1].endswith(',1.0,1,true,x,2026-01-02T03:04:05,1.50,"[1,2]"')
    assert csv_lines[2].endswith(",,,false,,,,")


def test_jsonl_extras_keep_their_types_and_a_mixed_column_is_text(tmp_path: Path) -> None:
    ledger = tmp_path / "l.db"
    first = tmp_path / "one.jsonl"
    rows = [
        {"reference_id": "a", "image_url": U.format(0), "n": 1, "meta": {"k": [1]}, "big": 2**70},
        {"reference_id": "b", "image_url": U.format(1), "n": 2.5, "meta": None, "big": 1},
    ]
    first.write_text("".join(json.dumps(r) + "\n" for r in rows))
    second = tmp_path / "two.csv"
    second.write_text("reference_id,image_url,n\nc,https://cdn.example.com/2.jpg,x\n")
    for manifest in (first, second):
        invoke("load", str(manifest), "--ledger", str(ledger), "--project-id", "p", "--work-flow-id", "w")
    table = pq.read_table(export(ledger, tmp_path / "out.parquet"))
    assert str(table.schema.field("n").type) == "string"  # 1, 2.5 and "x": text
    assert str(table.schema.field("big").type) == "string"  # beyond int64
    assert table.column("n").to_pylist() == ["1", "2.5", "x"]
    assert table.column("meta").to_pylist() == ['{"k":[1]}', None, None]
    assert table.column("big").to_pylist() == [str(2**70), "1", None]
    lines = [json.loads(line) for line in export(ledger, tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["n"], r["meta"], r["big"]) for r in lines] == [(1, {"k": [1]}, 2**70), (2.5, None, 1), ("x", None, None)]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([True, None, False], "bool"),
        ([1, None, -(2**63)], "int64"),
        ([1, 2.5], "float64"),
        ([0.5], "float64"),
        ([1, True], None),  # a boolean is not a number here
        ([2**63], None),  # beyond int64
        (["1", 1], None),
        ([{"a": 1}], None),
        ([None, None], None),
        ([], None),
    ],
)
def test_parquet_types(values: list[Any], expected: str | None) -> None:
    rows = [{"c": v, "other": "x"} for v in values]
    assert parquet_types(rows, ["c"]) == ({"c": expected} if expected else {})
