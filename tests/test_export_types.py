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


def test_the_platform_status_time_is_utc_in_every_format(tmp_path: Path) -> None:
    """`platform_status_at` (as `uploader sync` records it: naive UTC) is ISO 8601 with its `Z` in CSV and JSON
    Lines, a UTC timestamp in Parquet, a UTC datetime column in `to_pandas`; empty where no sync saw the job."""
    import csv
    import sqlite3

    import uploader

    manifest = tmp_path / "m.csv"
    manifest.write_text("reference_id,image_url\na,https://cdn.example.com/a.jpg\nb,https://cdn.example.com/b.jpg\n")
    ledger = tmp_path / "l.db"
    invoke("load", str(manifest), "--project-id", "p", "--work-flow-id", "w", "--ledger", str(ledger))
    with sqlite3.connect(ledger) as db:
        db.execute(
            "UPDATE jobs SET status = 'succeeded', job_id = 'j-a', platform_status = 'completed', "
            "platform_status_at = '2026-12-06 05:00:42.513259' WHERE reference_id = 'a'"
        )
    db.close()
    rows = list(csv.DictReader(invoke("export", "--ledger", str(ledger)).splitlines()))
    assert [r["platform_status_at"] for r in rows] == ["2026-12-06T05:00:42.513259Z", ""]
    lines = invoke("export", "--ledger", str(ledger), "--format", "jsonl").splitlines()[:2]
    assert [json.loads(line)["platform_status_at"] for line in lines] == ["2026-12-06T05:00:42.513259Z", None]
    table = pq.read_table(invoke_parquet(ledger, tmp_path / "j.parquet"))
    assert table.schema.field("platform_status_at").type == pa.timestamp("us", tz="UTC")
    when = dt.datetime(2026, 12, 6, 5, 0, 42, 513259, tzinfo=dt.UTC)
    assert table.column("platform_status_at").to_pylist() == [when, None]
    frame = uploader.Ledger.open(str(ledger)).to_pandas()
    assert str(frame["platform_status_at"].dtype) == "datetime64[us, UTC]"
    assert frame["platform_status_at"][0].to_pydatetime() == when and frame["platform_status_at"].isna()[1]


def invoke_parquet(ledger: Path, out: Path) -> Path:
    invoke("export", "--ledger", str(ledger), "--format", "parquet", "-o", str(out))
    return out
