"""Tests of uploader.manifest.reader: formats, shapes, verbatim values, validation with exact locations, streaming."""

from __future__ import annotations

import csv
import io
import json
import random
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from uploader.errors import ManifestError
from uploader.manifest import Span
from uploader.manifest import csv_reader as _manifest_csv
from uploader.manifest import frames as _manifest_frames
from uploader.manifest.reader import Manifest, ManifestOptions, StagedJob

SAMPLES = Path(__file__).resolve().parent.parent / "sample_manifests"
OPTS = ManifestOptions(project_id="proj-1", work_flow_id="wf-1")
BATCH = "6f1c2b7e-3d4a-4c5b-9e8f-0a1b2c3d4e5f"
U = "https://cdn.example.com/a.jpg"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def jsonl(*objects: Any) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects)


def parquet(tmp_path: Path, columns: dict[str, Any], name: str = "m.parquet") -> Path:
    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return path


def load(path: Path, opts: ManifestOptions = OPTS, size: int = 5000) -> tuple[list[StagedJob], Manifest]:
    m = Manifest(path, opts)
    jobs = [job for chunk in m.chunks(size) for job in chunk]
    assert m.problem_count == len(m.problems) or m.problem_count > len(m.problems) == 1000
    return jobs, m


def where(m: Manifest) -> list[tuple[int | None, str | None]]:
    return sorted((p.line, p.column) for p in m.problems)


def one_problem(path: Path, opts: ManifestOptions = OPTS) -> tuple[int | None, str | None, str]:
    jobs, m = load(path, opts)
    assert len(m.problems) == 1, m.problems
    p = m.problems[0]
    return p.line, p.column, p.message


def file_error(path: Path, opts: ManifestOptions = OPTS) -> str:
    with pytest.raises(ManifestError) as info:
        load(path, opts)
    assert all(p.line is None for p in info.value.problems)
    return str(info.value)


# --- formats and shapes ------------------------------------------------------------------------------


def test_image_csv_body_line_and_extra(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "reference_id,image_url,camera\nimg-1,https://cdn.example.com/1.jpg,front\n")
    jobs, m = load(path)
    assert (m.format, m.shape, m.unit, m.extra_columns) == ("csv", "image", "line", ("camera",))
    assert jobs == [
        StagedJob(
            2,
            "proj-1",
            "img-1",
            "wf-1",
            None,
            '{"reference_id":"img-1","work_flow_id":"wf-1","data":{"image_url":"https://cdn.example.com/1.jpg"}}',
            '{"camera":"front"}',
        )
    ]
    assert m.problems == [] and m.problem_count == 0


def image_manifest(tmp_path: Path, fmt: str) -> Path:
    rows = [("a-1", "https://x.example.com/1.jpg", "front"), ("a-2", "https://x.example.com/2.jpg", "rear")]
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        text = "".join(sep.join(r) + "\n" for r in [("reference_id", "image_url", "cam"), *rows])
        return write(tmp_path, f"m.{fmt}", text)
    if fmt == "jsonl":
        return write(tmp_path, "m.jsonl", jsonl(*({"reference_id": r, "image_url": u, "cam": c} for r, u, c in rows)))
    return parquet(
        tmp_path, {"reference_id": [r[0] for r in rows], "image_url": [r[1] for r in rows], "cam": [r[2] for r in rows]}
    )


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_image_every_format(tmp_path: Path, fmt: str) -> None:
    jobs, m = load(image_manifest(tmp_path, fmt))
    assert m.format == fmt and m.shape == "image" and m.extra_columns == ("cam",)
    assert [json.loads(j.body)["data"] for j in jobs] == [
        {"image_url": "https://x.example.com/1.jpg"},
        {"image_url": "https://x.example.com/2.jpg"},
    ]
    assert [j.extra for j in jobs] == ['{"cam":"front"}', '{"cam":"rear"}']
    assert [j.line for j in jobs] == {"parquet": [0, 1], "jsonl": [1, 2]}.get(fmt, [2, 3])  # JSONL has no header
    assert m.unit == ("row" if fmt == "parquet" else "line")


def test_format_option_overrides_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "m.txt", "reference_id\timage_url\nx\thttps://e.com/a\n")
    assert "use --format" in file_error(path)
    jobs, m = load(path, ManifestOptions(project_id="p", work_flow_id="w", format="TSV"))
    assert m.format == "tsv" and len(jobs) == 1
    assert Manifest(write(tmp_path, "M.NDJSON", jsonl({"reference_id": "a", "image_url": U})), OPTS).format == "jsonl"
    assert "unknown format 'xlsx'" in file_error(path, ManifestOptions(format="xlsx"))


VIDEO_WIDE = [
    {"frame_id": "f1", "src": "https://v.example.com/1.jpg"},
    {"frame_id": "f2", "src": "https://v.example.com/2.jpg"},
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl-array", "jsonl-text", "parquet"])
def test_video_wide_every_format(tmp_path: Path, fmt: str) -> None:
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out).writerows([["reference_id", "frames"], ["v1", json.dumps(VIDEO_WIDE)]])
        path = write(tmp_path, "m.csv", out.getvalue())
    elif fmt.startswith("jsonl"):
        frames = VIDEO_WIDE if fmt == "jsonl-array" else json.dumps(VIDEO_WIDE)
        path = write(tmp_path, "m.jsonl", jsonl({"reference_id": "v1", "frames": frames}))
    else:
        path = parquet(
            tmp_path,
            {
                "reference_id": ["v1"],
                "frames": pa.array(
                    [VIDEO_WIDE], pa.list_(pa.struct([("frame_id", pa.string()), ("src", pa.string())]))
                ),
            },
        )
    jobs, m = load(path)
    assert m.shape == "video_wide" and m.problems == []
    assert json.loads(jobs[0].body) == {
        "reference_id": "v1",
        "work_flow_id": "wf-1",
        "data": {"video_data": {"frames": VIDEO_WIDE}},
    }


@pytest.mark.parametrize("fmt", ["csv", "jsonl-object", "jsonl-text", "parquet"])
def test_raw_every_format(tmp_path: Path, fmt: str) -> None:
    data = {"sensor_data": {"frames": [{"frame_id": "1", "x": 1.5, "big": 12345678901234567890}], "sensor_meta": []}}
    text = json.dumps(data)
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out).writerows([["reference_id", "data"], ["s1", text]])
        path = write(tmp_path, "m.csv", out.getvalue())
    elif fmt.startswith("jsonl"):
        value = data if fmt == "jsonl-object" else text
        path = write(tmp_path, "m.jsonl", jsonl({"reference_id": "s1", "data": value}))
    else:
        path = parquet(tmp_path, {"reference_id": ["s1"], "data": [text]})
    jobs, m = load(path)
    assert m.shape == "raw" and m.problems == []
    assert jobs[0].body == (
        '{"reference_id":"s1","work_flow_id":"wf-1","data":' + json.dumps(data, separators=(",", ":")) + "}"
    )


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_video_long_every_format(tmp_path: Path, fmt: str) -> None:
    rows = [
        ("v1", "f1", "https://v.example.com/1"),
        ("v2", "g1", "https://v.example.com/3"),
        ("v1", "f2", "https://v.example.com/2"),
    ]
    header = ("reference_id", "frame_id", "src")
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        path = write(tmp_path, f"m.{fmt}", "".join(sep.join(r) + "\n" for r in [header, *rows]))
    elif fmt == "jsonl":
        path = write(tmp_path, "m.jsonl", jsonl(*(dict(zip(header, r)) for r in rows)))
    else:
        path = parquet(tmp_path, {h: [r[i] for r in rows] for i, h in enumerate(header)})
    jobs, m = load(path)
    assert m.shape == "video_long" and m.problems == []
    first = {"parquet": 0, "jsonl": 1}.get(fmt, 2)
    assert [(j.reference_id, j.line) for j in jobs] == [("v1", first), ("v2", first + 1)]
    assert json.loads(jobs[0].body)["data"] == {
        "video_data": {
            "frames": [
                {"frame_id": "f1", "src": "https://v.example.com/1"},
                {"frame_id": "f2", "src": "https://v.example.com/2"},
            ]
        }
    }


def test_video_long_groups_interleaved_rows_with_frame_index(tmp_path: Path) -> None:
    text = (
        "reference_id,frame_id,src,frame_index,camera\n"
        "v1,c,https://e.com/c,3,x\n"  # 2
        "v2,a,https://e.com/a,0,y\n"  # 3
        "v1,a,https://e.com/a,1,x\n"  # 4  (a video's frames agree on its extras: test_adversary_manifest_fidelity)
        "v1,b,https://e.com/b,2,x\n"
    )  # 5
    jobs, m = load(write(tmp_path, "m.csv", text), size=1)
    assert m.problems == [] and m.extra_columns == ("camera",)
    v1 = next(j for j in jobs if j.reference_id == "v1")
    assert v1.line == 2 and v1.extra == '{"camera":"x"}'
    assert [f["frame_id"] for f in json.loads(v1.body)["data"]["video_data"]["frames"]] == ["a", "b", "c"]


def test_video_long_problems(tmp_path: Path) -> None:
    text = (
        "reference_id,frame_id,src,work_flow_id,frame_index\n"
        "v1,a,https://e.com/a,,1\n"  # 2
        "v1,a,https://e.com/b,,2\n"  # 3  duplicate frame_id a (lines 2 and 3)
        "v2,a,https://e.com/a,,1\n"  # 4
        "v2,b,https://e.com/b,wf-other,2\n"  # 5  work_flow_id disagrees with line 4
        "v3,,https://e.com/a,,1\n"  # 6  empty frame_id
        "v4,a,gs://b/a,,1\n"  # 7
        "v5,a,https://e.com/a,,x\n"  # 8
        "v6,a,https://e.com/a,,1\n"  # 9
        "v6,b,https://e.com/b,,1\n"
    )  # 10 duplicate frame_index
    jobs, m = load(write(tmp_path, "m.csv", text))
    assert jobs == []
    assert where(m) == [
        (3, "frame_id"),
        (5, "work_flow_id"),
        (6, "frame_id"),
        (7, "src"),
        (8, "frame_index"),
        (10, "frame_index"),
    ]
    messages = {p.line: p.message for p in m.problems}
    assert "lines 2 and 3" in messages[3] and "'v1'" in messages[3]
    assert "differs from 'wf-1' on line 4" in messages[5]
    assert "use a signed or public https URL" in messages[7]


def test_video_long_temp_files_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = write(tmp_path, "m.csv", "reference_id,frame_id,src\nv,a,https://e.com/a\n")
    m = Manifest(path, OPTS)
    chunks = m.chunks()
    next(chunks)
    assert any(p.name.startswith("uploader-frames-") for p in tmp_path.iterdir())
    chunks.close()
    assert not any(p.name.startswith("uploader-frames-") for p in tmp_path.iterdir())


def test_video_long_frame_index_beyond_64_bits(tmp_path: Path) -> None:
    """A frame_index is any integer: one past 2**63 sorts after the others (the SQLite frame store raised
    OverflowError)."""
    text = "reference_id,frame_id,src,frame_index\nv1,a,https://e.com/a,99999999999999999999\nv1,b,https://e.com/b,1\n"
    jobs, m = load(write(tmp_path, "m.csv", text))
    assert m.problems == []
    assert [f["frame_id"] for f in json.loads(jobs[0].body)["data"]["video_data"]["frames"]] == ["b", "a"]


def test_video_long_more_rows_than_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frame rows beyond one run are spilled as sorted runs and merged back (in several passes when there are
    more runs than FAN_IN): the same videos, frames in frame_index order, the same problems as one in-memory
    sort, including a duplicate frame_id whose two rows are in different runs."""
    rows = [[f"v{v}", f"f{i}", f"https://e.com/{v}/{i}.jpg", str(i)] for v in range(7) for i in range(9)]
    random.Random(3).shuffle(rows)
    rows.insert(0, ["v3", "f2", "https://e.com/dup.jpg", "20"])  # line 2; its twin is far down the file
    path = write(
        tmp_path, "m.csv", "reference_id,frame_id,src,frame_index\n" + "".join(",".join(r) + "\n" for r in rows)
    )
    in_memory, m = load(path, size=2)
    expected_problems = [(p.line, p.column, p.message) for p in m.problems]
    assert sorted(j.reference_id for j in in_memory) == [f"v{v}" for v in range(7) if v != 3]
    frames = json.loads(in_memory[0].body)["data"]["video_data"]["frames"]
    assert [f["frame_id"] for f in frames] == [f"f{i}" for i in range(9)]
    assert len(expected_problems) == 1 and expected_problems[0][1] == "frame_id"

    monkeypatch.setattr(_manifest_frames, "RUN_ROWS", 4)
    monkeypatch.setattr(_manifest_frames, "BLOCK_ROWS", 3)
    monkeypatch.setattr(_manifest_frames, "FAN_IN", 3)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    m = Manifest(path, OPTS)
    chunks = m.chunks(2)
    jobs = next(chunks)
    runs = sorted(int(f.name.removeprefix("run-")) for f in tmp_path.glob("uploader-frames-*/run-*"))
    assert 2 <= len(runs) <= 3  # merged down to at most FAN_IN runs ...
    assert runs[-1] >= len(rows) // 4  # ... by merges written after the 16 spilled runs
    jobs += [job for chunk in chunks for job in chunk]
    assert jobs == in_memory
    assert [(p.line, p.column, p.message) for p in m.problems] == expected_problems
    assert not list(tmp_path.glob("uploader-frames-*"))


# --- values stay verbatim ----------------------------------------------------------------------------


def test_csv_values_are_verbatim_text(tmp_path: Path) -> None:
    refs = ["001", "NaN", "null", "1e5", "TRUE", " padded ", "-0"]
    text = "reference_id,image_url,note\n" + "".join(f"{r},{U},{r}\n" for r in refs)
    jobs, m = load(write(tmp_path, "m.csv", text))
    assert m.problems == []
    assert [j.reference_id for j in jobs] == refs
    assert [json.loads(j.body)["reference_id"] for j in jobs] == refs
    assert [json.loads(j.extra)["note"] for j in jobs] == refs  # type: ignore[arg-type]


def test_jsonl_value_types(tmp_path: Path) -> None:
    text = jsonl(
        {"reference_id": 7, "image_url": U, "n": 1.5, "flag": True, "nothing": None, "obj": {"a": [1]}},
        {"reference_id": 1.0, "image_url": U},
        {"reference_id": True, "image_url": U},
        {"reference_id": "x", "image_url": ["not", "text"]},
    )
    jobs, m = load(write(tmp_path, "m.jsonl", text))
    assert [j.reference_id for j in jobs] == ["7"]
    assert json.loads(jobs[0].body)["reference_id"] == "7"
    extra = json.loads(jobs[0].extra or "")
    assert extra == {"n": 1.5, "flag": True, "nothing": None, "obj": {"a": [1]}}  # kept as given, for the export
    assert where(m) == [(2, "reference_id"), (3, "reference_id"), (4, "image_url")]
    assert "ambiguous" in m.problems[0].message


def test_parquet_integer_and_null_ids(tmp_path: Path) -> None:
    path = parquet(
        tmp_path,
        {
            "reference_id": pa.array([7, None, 9], pa.int64()),
            "image_url": [U, U, U],
            "n": pa.array([1, 2, None], pa.int32()),
        },
    )
    jobs, m = load(path)
    assert [(j.line, j.reference_id, j.extra) for j in jobs] == [(0, "7", '{"n":1}'), (2, "9", '{"n":null}')]
    assert [(p.line, p.column, p.unit) for p in m.problems] == [(1, "reference_id", "row")]
    assert str(m.problems[0]).endswith(": row 1: column 'reference_id': reference_id is empty")


def test_parquet_float_reference_id_is_refused(tmp_path: Path) -> None:
    message = file_error(parquet(tmp_path, {"reference_id": [1.0], "image_url": [U]}))
    assert "column 'reference_id' has Parquet type double" in message


def test_parquet_dictionary_strings(tmp_path: Path) -> None:
    path = parquet(tmp_path, {"reference_id": pa.array(["a", "b"]).dictionary_encode(), "image_url": [U, U]})
    assert [j.reference_id for j in load(path)[0]] == ["a", "b"]


# --- columns: mapping, overrides, extras -------------------------------------------------------------


def test_column_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", f"id,url,image_url\nx,{U},not-used\n")
    opts = ManifestOptions(project_id="p", work_flow_id="w", columns=(("image_url", "url"), ("reference_id", "id")))
    jobs, m = load(path, opts)
    assert m.shape == "image" and m.extra_columns == ("image_url",)
    assert json.loads(jobs[0].body)["data"] == {"image_url": U} and jobs[0].reference_id == "x"
    bad = write(tmp_path, "b.csv", f"id,url\nx,{U}\n")
    assert "the manifest has no column 'nope'" in file_error(bad, ManifestOptions(columns=(("image_url", "nope"),)))
    assert "unknown API field 'imageurl'" in file_error(bad, ManifestOptions(columns=(("imageurl", "url"),)))
    jobs, m = load(
        bad, ManifestOptions(project_id="p", work_flow_id="w", columns=(("image_url", "url"), ("reference_id", "id")))
    )
    assert len(jobs) == 1 and m.problems == [] and m.extra_columns == ()


def test_mapped_column_problems_name_the_manifest_column(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "reference_id,url\nx,ftp://e.com/a\n")
    opts = ManifestOptions(project_id="p", work_flow_id="w", columns=(("image_url", "url"),))
    line, column, message = one_problem(path, opts)
    assert (line, column) == (2, "url") and message.startswith("image_url must be an http")


def test_overrides_and_body_key_order(tmp_path: Path) -> None:
    text = (
        "reference_id,image_url,project_id,work_flow_id,batch_id,priority_weight,metadata,camera\n"
        f'a,{U},proj-2,wf-2,{BATCH},7,"{{""k"": [1, ""é""]}}",front\n'
        f"b,{U},,,,,,rear\n"
    )
    jobs, m = load(write(tmp_path, "m.csv", text))
    assert m.problems == [] and m.extra_columns == ("camera",)
    a, b = jobs
    assert (a.project_id, a.work_flow_id, a.batch_id) == ("proj-2", "wf-2", BATCH)
    assert a.body == (
        '{"reference_id":"a","work_flow_id":"wf-2","batch_id":"'
        + BATCH
        + '","data":{"image_url":"'
        + U
        + '","metadata":{"k":[1,"é"]}},"priority_weight":7}'
    )
    assert (b.project_id, b.work_flow_id, b.batch_id) == ("proj-1", "wf-1", None)
    assert b.body == '{"reference_id":"b","work_flow_id":"wf-1","data":{"image_url":"' + U + '"}}'
    opts = ManifestOptions(project_id="p", work_flow_id="w", batch_id=BATCH)
    assert json.loads(load(write(tmp_path, "n.csv", f"reference_id,image_url\nc,{U}\n"), opts)[0][0].body) == {
        "reference_id": "c",
        "work_flow_id": "w",
        "batch_id": BATCH,
        "data": {"image_url": U},
    }


def test_no_extra_columns_gives_none(tmp_path: Path) -> None:
    jobs, m = load(write(tmp_path, "m.csv", f"reference_id,image_url\na,{U}\n"))
    assert m.extra_columns == () and jobs[0].extra is None


# --- per-row validation, with exact line and column --------------------------------------------------

ROW_CASES = [
    # (cells for reference_id,image_url,batch_id,priority_weight,project_id,work_flow_id), column, message part
    (("", U, "", "", "", ""), "reference_id", "reference_id is empty"),
    (("   ", U, "", "", "", ""), "reference_id", "reference_id is empty"),
    (("x" * 256, U, "", "", "", ""), "reference_id", "256 characters long; the limit is 255"),
    (("a\tb", U, "", "", "", ""), "reference_id", "control characters"),
    (("a", "", "", "", "", ""), "image_url", "image_url is empty"),
    (("a", "s3://bucket/k.jpg", "", "", "", ""), "image_url", "use a signed or public https URL"),
    (("a", "gs://bucket/k.jpg", "", "", "", ""), "image_url", "use a signed or public https URL"),
    (("a", "ftp://e.com/k.jpg", "", "", "", ""), "image_url", "must be an http:// or https:// URL, not ftp://"),
    (("a", "cdn.example.com/k.jpg", "", "", "", ""), "image_url", "must be an http:// or https:// URL"),
    (("a", "https:///k.jpg", "", "", "", ""), "image_url", "has no host"),
    (("a", "https://e.com/a b.jpg", "", "", "", ""), "image_url", "contains whitespace"),
    (("a", "https://e.com:99999/a", "", "", "", ""), "image_url", "not a valid URL"),
    (("a", U, "not-a-uuid", "", "", ""), "batch_id", "batch_id must be a UUID"),
    (("a", U, "", "5.0", "", ""), "priority_weight", "integer 1-10"),
    (("a", U, "", "11", "", ""), "priority_weight", "integer 1-10"),
    (("a", U, "", "0", "", ""), "priority_weight", "integer 1-10"),
    (("a", U, "", "x", "", ""), "priority_weight", "integer 1-10"),
    (("a", U, "", "", "pro/j", ""), "project_id", "must not contain '/'"),
    (("a", U, "", "", "pro j", ""), "project_id", "whitespace"),
    (("a", U, "", "", "", "w f"), "work_flow_id", "whitespace"),
]


@pytest.mark.parametrize(("cells", "column", "message"), ROW_CASES)
def test_row_rule(tmp_path: Path, cells: tuple[str, ...], column: str, message: str) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["reference_id", "image_url", "batch_id", "priority_weight", "project_id", "work_flow_id"])
    writer.writerow(["ok", U, BATCH, "10", "", ""])
    writer.writerow(cells)
    writer.writerow(["ok2", U, "", "1", "", ""])
    jobs, m = load(write(tmp_path, "m.csv", out.getvalue()))
    assert [j.reference_id for j in jobs] == ["ok", "ok2"]
    assert len(m.problems) == 1 and (m.problems[0].line, m.problems[0].column) == (3, column)
    assert message in m.problems[0].message


def test_priority_weight_text_is_an_integer(tmp_path: Path) -> None:
    jobs, _ = load(write(tmp_path, "m.csv", f"reference_id,image_url,priority_weight\na,{U},5\n"))
    assert json.loads(jobs[0].body)["priority_weight"] == 5


def test_missing_project_and_work_flow(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", f"reference_id,image_url\na,{U}\n")
    message = file_error(path, ManifestOptions())
    assert "no project_id: give --project-id or a project_id column" in message
    assert "no work_flow_id: give --work-flow-id or a work_flow_id column" in message
    path = write(tmp_path, "n.csv", f"reference_id,image_url,project_id,work_flow_id\na,{U},p,w\nb,{U},,w\n")
    jobs, m = load(path, ManifestOptions())
    assert [j.reference_id for j in jobs] == ["a"] and where(m) == [(3, "project_id")]
    assert "give --project-id" in m.problems[0].message
    assert "must not contain" in file_error(path, ManifestOptions(project_id="a/b"))
    assert "is not a UUID" in file_error(path, ManifestOptions(batch_id="nope"))


def test_json_column_problems(tmp_path: Path) -> None:
    rows = [
        ["s1", '{"a": 1'],
        ["s2", "[1, 2]"],
        ["s3", "{}"],
        ["s4", ""],
        ["s5", '{"image_url": "s3://b/k"}'],
        ["s6", '{"x": NaN}'],
        ["s7", '{"ok": true}'],
    ]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([["reference_id", "data"], *rows])
    jobs, m = load(write(tmp_path, "m.csv", out.getvalue()))
    assert [j.reference_id for j in jobs] == ["s7"]
    assert where(m) == [(line, "data") for line in range(2, 8)]
    messages = [p.message for p in sorted(m.problems)]
    assert messages[0] == "data is invalid JSON at character 8: Expecting ',' delimiter"
    assert "must be a JSON object, not an array" in messages[1]
    assert "empty object" in messages[2] and "data is empty" in messages[3]
    assert "data.image_url is an s3:// URL" in messages[4] and "NaN" in messages[5]


def test_metadata_problems(tmp_path: Path) -> None:
    text = f'reference_id,image_url,metadata\na,{U},[1]\nb,{U},{{bad\nc,https://e.com/c,"{{""k"": 1}}"\n'
    jobs, m = load(write(tmp_path, "m.csv", text))
    assert [j.reference_id for j in jobs] == ["c"] and where(m) == [(2, "metadata"), (3, "metadata")]
    raw = write(tmp_path, "r.jsonl", jsonl({"reference_id": "r", "data": {"metadata": {}}, "metadata": {"k": 1}}))
    assert one_problem(raw)[1:] == ("metadata", "metadata is set both in the metadata column and inside data")


def test_video_wide_problems(tmp_path: Path) -> None:
    frames = [
        [],
        [{"src": U}],
        [{"frame_id": "a"}],
        [{"frame_id": "a", "src": U}, {"frame_id": "a", "src": U}],
        [{"frame_id": "a", "src": "s3://b/k"}],
        {"frame_id": "a", "src": U},
        "[oops",
        None,
        [{"frame_id": 3, "src": U}],
    ]
    path = write(tmp_path, "m.jsonl", jsonl(*({"reference_id": f"v{n}", "frames": f} for n, f in enumerate(frames))))
    jobs, m = load(path)
    assert [j.reference_id for j in jobs] == ["v8"]
    assert json.loads(jobs[0].body)["data"]["video_data"]["frames"] == [{"frame_id": "3", "src": U}]
    assert where(m) == [(line, "frames") for line in range(1, 9)]
    messages = [p.message for p in sorted(m.problems)]
    assert "empty list" in messages[0] and "frames[0] has no frame_id" in messages[1]
    assert "frames[0].src is missing" in messages[2] and "frames[1] repeats frame_id 'a' of frames[0]" in messages[3]
    assert "use a signed or public https URL" in messages[4] and "JSON array" in messages[5]
    assert "invalid JSON at character 2" in messages[6] and "frames is empty" in messages[7]


def test_mixed_shapes(tmp_path: Path) -> None:
    text = f'reference_id,image_url,data\na,{U},\nb,,"{{""x"": 1}}"\nc,{U},"{{""x"": 1}}"\nd,,\n'
    jobs, m = load(write(tmp_path, "m.csv", text))
    assert m.shape == "mixed"
    assert [json.loads(j.body)["data"] for j in jobs] == [{"image_url": U}, {"x": 1}]
    assert [(p.line, p.message) for p in sorted(m.problems)] == [
        (4, "row mixes shapes (image_url and data both set)"),
        (5, "row sets none of image_url, data"),
    ]


def test_no_shape_fits(tmp_path: Path) -> None:
    message = file_error(write(tmp_path, "m.csv", f"reference_id,url\na,{U}\n"))
    assert "found columns: reference_id, url" in message
    assert "an image manifest needs reference_id, image_url (missing image_url)" in message
    assert "a long-form video needs reference_id, frame_id, src" in message
    assert "a wide-form video needs reference_id, frames" in message
    assert "a raw manifest needs reference_id, data" in message


def test_all_empty_row_is_skipped(tmp_path: Path) -> None:
    jobs, m = load(write(tmp_path, "m.csv", f"reference_id,image_url\n,\na,{U}\n,\n"))
    assert [j.line for j in jobs] == [3] and m.problems == []


# --- physical lines, encodings, malformed files ------------------------------------------------------


def test_quoted_newlines_keep_physical_line_numbers(tmp_path: Path) -> None:
    text = (
        "reference_id,image_url,note\n"
        f'a,{U},"two\nlines"\n'  # 2-3
        f'b,{U},"three\r\nline\rs"\n'  # 4-6
        "\n"  # 7 blank
        f"c,ftp://x,\n"
    )  # 8
    jobs, m = load(write(tmp_path, "m.csv", text))
    assert [(j.reference_id, j.line) for j in jobs] == [("a", 2), ("b", 4)]
    assert json.loads(jobs[1].extra)["note"] == "three\r\nline\rs"  # type: ignore[arg-type]
    assert where(m) == [(8, "image_url")]


@pytest.mark.parametrize("eol", ["\r\n", "\r", "\n"])
def test_line_endings(tmp_path: Path, eol: str) -> None:
    text = eol.join(["reference_id,image_url", f"a,{U}", "", f"b,{U}", "c,nope", ""])
    jobs, m = load(write(tmp_path, "m.csv", text))
    assert [(j.reference_id, j.line) for j in jobs] == [("a", 2), ("b", 4)]
    assert where(m) == [(5, "image_url")] and jobs[1].body.endswith(f'"{U}"}}}}')


def test_bom_is_stripped(tmp_path: Path) -> None:
    jobs, m = load(write(tmp_path, "m.csv", b"\xef\xbb\xbfreference_id,image_url\na," + U.encode() + b"\n"))
    assert m.columns == ("reference_id", "image_url") and len(jobs) == 1
    jobs, _ = load(write(tmp_path, "m.jsonl", b"\xef\xbb\xbf" + jsonl({"reference_id": "a", "image_url": U}).encode()))
    assert len(jobs) == 1


def test_latin1_bytes_are_a_row_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path, "m.csv", f"reference_id,image_url,camera\na,{U},x\nb,{U},caf\xe9\nc,{U},y\n".encode("latin-1")
    )
    jobs, m = load(path)
    assert [j.reference_id for j in jobs] == ["a", "c"]
    assert [(p.line, p.column) for p in m.problems] == [(3, "camera")]
    assert "not valid UTF-8 (byte 0xE9)" in m.problems[0].message
    good = jsonl({"reference_id": "a", "image_url": U}).encode()
    path = write(tmp_path, "m.jsonl", good + b'{"reference_id": "\xe9"}\n')
    line, column, message = one_problem(path)
    assert (line, column) == (2, None) and "not valid UTF-8 (byte 0xE9 at byte 19)" in message


def test_utf16_is_refused(tmp_path: Path) -> None:
    text = f"reference_id,image_url\na,{U}\n"
    assert "file is UTF-16" in file_error(write(tmp_path, "m.csv", text.encode("utf-16")))
    assert "file is UTF-16" in file_error(write(tmp_path, "m.jsonl", "{}\n".encode("utf-16")))
    assert "NUL byte" in file_error(write(tmp_path, "n.csv", text.encode("utf-16-le")))


def test_undecodable_header_is_a_file_problem(tmp_path: Path) -> None:
    assert "the header is not valid UTF-8" in file_error(write(tmp_path, "m.csv", b"reference_id,image_\xffurl\n"))


def test_nul_byte(tmp_path: Path) -> None:
    line, column, message = one_problem(write(tmp_path, "m.csv", f"reference_id,image_url\na,{U}\nb\x00,{U}\n"))
    assert (line, column) == (3, "reference_id") and "NUL" in message
    path = write(tmp_path, "m.jsonl", jsonl({"reference_id": "a", "image_url": U}) + '{"x": 1}\x00\n')
    line, column, message = one_problem(path)
    assert (line, column) == (2, None) and "NUL" in message


def test_ragged_rows(tmp_path: Path) -> None:
    jobs, m = load(write(tmp_path, "m.csv", f"reference_id,image_url\na,{U},extra\nb\nc,{U}\n"))
    assert [j.reference_id for j in jobs] == ["c"]
    assert [(p.line, p.message) for p in sorted(m.problems)] == [
        (2, "row has 3 fields but the header has 2"),
        (3, "row has 1 fields but the header has 2"),
    ]


def test_malformed_quotes(tmp_path: Path) -> None:
    jobs, m = load(write(tmp_path, "m.csv", f'reference_id,image_url\na,{U}\n"b"x,{U}\nc,{U}\n"d,{U}\n'))
    assert [j.reference_id for j in jobs] == ["a", "c"]
    assert [p.line for p in sorted(m.problems)] == [3, 5]
    assert all("malformed CSV record" in p.message for p in m.problems)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b"\xef\xbb\xbf", "file is empty"),
        (b"\n\n", "file is empty"),
        (b"reference_id,image_url\n", "header but no rows"),
        (b"reference_id,image_url\r\n\r\n", "header but no rows"),
        (b"reference_id,reference_id,image_url\na,b,c\n", "duplicate column names in the header: 'reference_id'"),
        (b"reference_id,,image_url\na,b,c\n", "column 2 of the header has no name"),
    ],
)
def test_file_level_csv_problems(tmp_path: Path, content: bytes, message: str) -> None:
    assert message in file_error(write(tmp_path, "m.csv", content))


def test_file_level_other_problems(tmp_path: Path) -> None:
    assert "cannot read the file" in file_error(tmp_path / "missing.csv")
    (tmp_path / "sub.csv").mkdir()
    assert "is a directory" in file_error(tmp_path / "sub.csv")
    assert "file is empty" in file_error(write(tmp_path, "m.jsonl", b"\n  \n"))
    assert "no line is a non-empty JSON object" in file_error(write(tmp_path, "n.jsonl", b"[1]\n{oops\n"))
    assert "cannot read the Parquet file" in file_error(write(tmp_path, "m.parquet", b"not parquet"))
    empty = parquet(tmp_path, {"reference_id": pa.array([], pa.string()), "image_url": pa.array([], pa.string())})
    assert "no rows" in file_error(empty)


def test_jsonl_line_problems(tmp_path: Path) -> None:
    text = (
        jsonl({"reference_id": "a", "image_url": U})
        + "\n   \n"
        + "[1]\n"
        + '{"reference_id": "b",\n'
        + jsonl({"reference_id": "c\ud800", "image_url": U})
        + '{"reference_id": "d", "image_url": "'
        + U
        + '"}\r'
        + jsonl({"reference_id": "e", "image_url": U})
    )
    jobs, m = load(write(tmp_path, "m.jsonl", text.encode("utf-8", "surrogatepass")))
    assert [(j.reference_id, j.line) for j in jobs] == [("a", 1), ("d", 7), ("e", 8)]
    assert where(m) == [(4, None), (5, None), (6, "reference_id")]


def test_lone_surrogate_escape_in_jsonl_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "m.jsonl", '{"reference_id": "a", "image_url": "' + U + '", "note": "\\ud800"}\n')
    line, column, message = one_problem(path)
    assert line == 1 and "lone surrogate" in message


# --- streaming ---------------------------------------------------------------------------------------


def test_chunks_respect_size_and_problem_cap(tmp_path: Path) -> None:
    rows = "".join(f"r{n},{U if n % 2 else 'bad'}\n" for n in range(2500))
    m = Manifest(write(tmp_path, "m.csv", "reference_id,image_url\n" + rows), OPTS)
    sizes = [len(c) for c in m.chunks(100)]
    assert max(sizes) <= 100 and sum(sizes) == 1250
    assert m.problem_count == 1250 and len(m.problems) == 1000
    list(m.chunks())
    assert m.problem_count == 1250  # a second pass starts afresh


def test_chunk_tuples_match_chunks(tmp_path: Path) -> None:
    m = Manifest(image_manifest(tmp_path, "csv"), OPTS)
    assert [StagedJob(*t) for c in m.chunk_tuples() for t in c] == [j for c in m.chunks() for j in c]


def as_rows(chunk: Any, defaults: tuple[str, str, str | None]) -> list[StagedJob]:
    """JobColumns back to StagedJob rows (`own` None: the load's defaults; `extras` None: no row has one)."""
    n = len(chunk.lines)
    pids, wfs, batches = chunk.own or ([defaults[0]] * n, [defaults[1]] * n, [defaults[2]] * n)
    extras = chunk.extras or [None] * n
    return [StagedJob(*row) for row in zip(chunk.lines, pids, chunk.refs, wfs, batches, chunk.bodies, extras)]


@pytest.mark.parametrize(
    "header, rows, options",
    [
        # the fast path (a plain image manifest), with and without an extra column, with a batch
        ("reference_id,image_url", [f"r{n},https://e.com/{n}.jpg" for n in range(30)], OPTS),
        ("reference_id,image_url,cam", [f"r{n},https://e.com/{n}.jpg,c{n % 3}" for n in range(30)], OPTS),
        (
            "reference_id,image_url,cam",
            [f"r{n},https://e.com/{n}.jpg,c{n % 3}" for n in range(30)],
            ManifestOptions(project_id="p", work_flow_id="w", batch_id="0c5f6c1e-3c1a-4d8e-9a57-1f2e3d4c5b6a"),
        ),
        # row by row: a row's own project_id (others blank take the default), bad rows left out, blank lines
        (
            "reference_id,image_url,project_id",
            [f"r{n},https://e.com/{n}.jpg,{'other' if n % 4 == 0 else ''}" for n in range(30)] + ["", "bad,ftp://x,"],
            OPTS,
        ),
        # row by row, every row the load's own (a quoted field): `own` is None again
        ("reference_id,image_url,note", [f'r{n},https://e.com/{n}.jpg,"a, b"' for n in range(30)], OPTS),
        # a video of frames: never the fast path
        ("reference_id\tframes", [f"v{n}\t{json.dumps(VIDEO_WIDE)}" for n in range(5)], OPTS),
    ],
)
def test_chunk_columns_hold_the_rows_of_chunk_tuples(
    tmp_path: Path, header: str, rows: list[str], options: ManifestOptions
) -> None:
    """Columns, whichever way a chunk was built, are the same jobs as the rows, chunk by chunk; `own` is set
    only where some row's project_id, work_flow_id or batch_id is not the load's."""
    name = "m.tsv" if "\t" in header else "m.csv"
    m = Manifest(write(tmp_path, name, "\n".join([header, *rows]) + "\n"), options)
    defaults = (options.project_id or "", options.work_flow_id or "", options.batch_id or None)
    by_rows = [list(c) for c in m.chunk_tuples(7)]
    problems = m.problem_count
    by_columns = [as_rows(c, defaults) for c in m.chunk_columns(7)]
    assert by_columns == by_rows and by_rows
    assert m.problem_count == problems  # each reading counts afresh, the same
    owned = [c.own is not None for c in m.chunk_columns(7)]
    assert owned == [any((j.project_id, j.work_flow_id, j.batch_id) != defaults for j in c) for c in by_rows]


def test_small_blocks_quotes_spanning_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = []
    for n in range(60):
        note = f'"multi\r\nline {n}, with ""quotes"""' if n % 7 == 0 else f"plain {n}"
        url = "ftp://bad" if n % 11 == 5 else f"https://e.com/{n}.jpg"
        rows.append(f"id-{n},{url},{note}")
    text = "reference_id,image_url,note\r\n" + "\r\n".join(rows) + "\r\n\r\n" + "tail,https://e.com/t.jpg,x"
    path = write(tmp_path, "m.csv", text)
    expected_jobs, expected = load(path)
    for block in (7, 16, 61, 128):
        monkeypatch.setattr(_manifest_csv, "_BLOCK", block)
        jobs, m = load(path, size=4)
        assert jobs == expected_jobs and sorted(m.problems) == sorted(expected.problems)
    starts, line = [], 2
    for n in range(60):
        starts.append(line)
        line += 2 if n % 7 == 0 else 1
    assert [j.line for j in expected_jobs] == [s for n, s in enumerate(starts) if n % 11 != 5] + [line + 1]
    assert [(p.line, p.column) for p in expected.problems] == [
        (starts[n], "image_url") for n in range(60) if n % 11 == 5
    ]


def test_fingerprint() -> None:
    a = ManifestOptions(project_id="p", work_flow_id="w", columns=(("image_url", "u"), ("reference_id", "r")))
    b = ManifestOptions(project_id="p", work_flow_id="w", columns=(("reference_id", "r"), ("image_url", "u")))
    assert a.fingerprint() == b.fingerprint() == a.fingerprint()
    assert len(a.fingerprint()) == 64 and a.fingerprint() != ManifestOptions(project_id="p").fingerprint()
    assert ManifestOptions(format="csv").fingerprint() != ManifestOptions().fingerprint()


# --- samples -----------------------------------------------------------------------------------------


def test_sample_manifests() -> None:
    loaded = {
        name: load(SAMPLES / name)
        for name in (
            "images.csv",
            "images.parquet",
            "images_overrides.csv",
            "video_frames.csv",
            "video.jsonl",
            "sensor.jsonl",
        )
    }
    assert all(m.problems == [] for _, m in loaded.values())
    csv_bodies = [j.body for j in loaded["images.csv"][0]]
    assert csv_bodies == [j.body for j in loaded["images.parquet"][0]] and len(csv_bodies) == 12
    assert [len(json.loads(j.body)["data"]["video_data"]["frames"]) for j in loaded["video_frames.csv"][0]] == [4] * 3
    assert "missing image_url" in file_error(SAMPLES / "broken_missing_column.csv")
    assert where(load(SAMPLES / "broken_bad_rows.csv")[1]) == [
        (3, "image_url"),
        (4, "reference_id"),
        (5, "priority_weight"),
    ]
    assert [p.line for p in load(SAMPLES / "broken_json.jsonl")[1].problems] == [2, 3, 4, 5, 6]


# --- properties --------------------------------------------------------------------------------------

REF = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40).filter(str.strip)
PATH = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), max_size=40)
NOTE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
HOST = st.sampled_from(["https://e.com/", "http://cdn.example.org/", "https://a.b-c.io:8443/", "HTTPS://x.y/"])
ROWS = st.lists(st.tuples(REF, HOST, PATH, NOTE), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ROWS)
def test_roundtrip_csv_and_jsonl(rows: list[tuple[str, str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = io.StringIO(newline="")
        writer = csv.writer(out)
        writer.writerow(["reference_id", "image_url", "note"])
        lines, line = [], 2
        for ref, host, path, note in rows:
            text = io.StringIO(newline="")
            csv.writer(text).writerow([ref, host + path, note])
            out.write(text.getvalue())
            lines.append(line)
            written = text.getvalue()
            line += written.count("\n") + written.count("\r") - written.count("\r\n")
        csv_path = write(Path(tmp), "m.csv", out.getvalue())
        jsonl_path = write(
            Path(tmp), "m.jsonl", jsonl(*({"reference_id": r, "image_url": h + p, "note": n} for r, h, p, n in rows))
        )
        for path, expected_lines in ((csv_path, lines), (jsonl_path, list(range(1, len(rows) + 1)))):
            jobs, m = load(path)
            assert m.problems == []
            assert [j.line for j in jobs] == expected_lines
            assert [json.loads(j.body) for j in jobs] == [
                {"reference_id": r, "work_flow_id": "wf-1", "data": {"image_url": h + p}} for r, h, p, _ in rows
            ]
            assert [json.loads(j.extra) for j in jobs] == [{"note": n} for *_, n in rows]  # type: ignore[arg-type]
            assert all(
                j.body == json.dumps(json.loads(j.body), separators=(",", ":"), ensure_ascii=False) for j in jobs
            )


ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
CELLS = st.lists(
    st.tuples(
        st.one_of(REF, ANY_TEXT),
        st.one_of(HOST.map(lambda h: h + "p.jpg"), ANY_TEXT, st.sampled_from(["s3://b/k", "https://h/a b"])),
        ANY_TEXT,
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=CELLS)
def test_fast_path_agrees_with_row_by_row(rows: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = io.StringIO(newline="")
        csv.writer(out).writerows([["reference_id", "image_url", "note"], *rows])
        path = write(Path(tmp), "m.csv", out.getvalue())
        fast_jobs, fast = load(path)
        slow_manifest = Manifest(path, OPTS)
        slow_manifest._fast = False
        slow_jobs = [j for c in slow_manifest.chunks() for j in c]
        assert fast_jobs == slow_jobs and sorted(fast.problems) == sorted(slow_manifest.problems)


def test_fast_path_is_used_for_plain_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(Manifest, "_build", lambda self, *a: calls.append(a))
    jobs, _ = load(image_manifest(tmp_path, "csv"))
    assert len(jobs) == 2 and calls == []


CSV_CELL = st.text(st.sampled_from(['"', ",", "\r", "\n", "x", "é", " ", "1"]), max_size=6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.lists(CSV_CELL, min_size=1, max_size=4), min_size=1, max_size=12),
    eol=st.sampled_from(["\r\n", "\n", "\r"]),
    block=st.integers(1, 40),
    stray=st.booleans(),
)
def test_block_boundaries_never_change_the_result(rows: list[list[str]], eol: str, block: int, stray: bool) -> None:
    """Tiny read blocks put block ends everywhere (inside quoted fields, between CR and LF): same answer."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator=eol)
    writer.writerow(["reference_id", "image_url", "note"])
    for n, row in enumerate(rows):
        writer.writerow([f"r{n}", "https://e.com/" + "".join(row).replace('"', "").strip(), *row[:1]])
        if stray and n % 3 == 1:
            out.write(f'r{n}b,https://e.com/q,5" screen{eol}')  # a quote inside an unquoted field: csv keeps it
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "m.csv", out.getvalue())
        saved = _manifest_csv._BLOCK
        try:
            big_jobs, big = load(path)
            _manifest_csv._BLOCK = block
            small_jobs, small = load(path, size=3)
        finally:
            _manifest_csv._BLOCK = saved
    assert (small_jobs, sorted(small.problems)) == (big_jobs, sorted(big.problems))


def test_a_stray_quote_before_a_quoted_field_across_a_block_end_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quote inside an unquoted field (csv keeps it) used to make the quote count lie: the reader was cut
    off inside the next quoted field that crossed a block's end, and a good file was refused."""
    lines = ["reference_id,image_url,note", 'r0,https://e.com/0.jpg,5" screen']
    lines += [f"r{n},https://e.com/{n}.jpg,plain" for n in range(1, 30)]
    lines += ['r30,https://e.com/30.jpg,"line one', "line two", 'line three"', "r31,https://e.com/31.jpg,x"]
    path = write(tmp_path, "m.csv", "\n".join(lines) + "\n")
    expected = list(csv.reader(io.StringIO(path.read_text(), newline="")))[1:]
    for block in range(8, 1200, 13):
        monkeypatch.setattr(_manifest_csv, "_BLOCK", block)
        jobs, m = load(path, size=5)
        assert not m.problems, (block, m.problems[:1])
        assert [j.reference_id for j in jobs] == [r[0] for r in expected]
        assert json.loads(jobs[0].extra or "{}") == {"note": '5" screen'}
        assert json.loads(jobs[30].extra or "{}") == {"note": "line one\nline two\nline three"}
        assert jobs[31].line == 35


def test_project_and_workflow_ids_longer_than_the_ledger_column_are_refused(tmp_path):
    from uploader.errors import ManifestError
    from uploader.manifest.reader import Manifest, ManifestOptions

    path = tmp_path / "m.csv"
    path.write_text("reference_id,image_url,work_flow_id\na,https://x.com/a.jpg," + "w" * 256 + "\n")
    m = Manifest(path, ManifestOptions(project_id="p"))
    assert sum(len(c) for c in m.chunks()) == 0
    assert m.problem_count == 1 and "at most 255" in str(m.problems[0]) and m.problems[0].line == 2
    with pytest.raises(ManifestError, match="at most 255"):
        Manifest(path, ManifestOptions(project_id="p" * 300, work_flow_id="w"))


# --- a quote-free CSV block split column by column ------------------------------------------------------


def _csv_chunks(
    path: Path, size: int, delim: str, span: Any = None
) -> list[tuple[list[int], list[list[str]], list[Any], bool]]:
    reader = _manifest_csv.CsvReader(path, delim, span)
    try:
        return [(list(c.lines), [list(r) for r in c.cells()], c.issues, c.clean) for c in reader.chunks(size)]
    finally:
        reader.close()


_CELLS = ["a", "", " ", "x y", "é", "ref-1", "https://h/p.jpg", "\x00", "\udcff", "1.5"]


@st.composite
def _csv_rows(draw: Any) -> tuple[int, list[list[str]]]:
    """A width and rows mostly that wide, now and then one ragged or blank."""
    width = draw(st.integers(1, 4))
    row = st.lists(st.sampled_from(_CELLS), min_size=width, max_size=width)
    odd = st.lists(st.sampled_from(_CELLS), min_size=0, max_size=5)
    rows = draw(st.lists(st.one_of(row, row, row, row, row, odd), min_size=1, max_size=40))
    return width, rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(shape=(2, [["a", "b", "c"], ["d"]]), eol="\n", delim=",", size=5)  # the right number of fields in all
@example(shape=(3, [["a", "b", "c"], ["", "", ""], ["d", "e", "f"]]), eol="\r\n", delim="\t", size=2)
@given(
    shape=_csv_rows(),
    eol=st.sampled_from(["\n", "\r\n"]),
    delim=st.sampled_from([",", "\t"]),
    size=st.integers(2, 9),
)
def test_full_width_blocks_split_by_column_read_as_row_by_row(
    shape: tuple[int, list[list[str]]], eol: str, delim: str, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quote-free block whose every line has the header's width is split in one go, column by column; any
    other block row by row. Either way the same rows, lines, problems and cleanness come out, chunk by chunk:
    ragged and blank lines, NUL bytes and undecodable bytes, one column or four, CSV or TSV, LF or CRLF."""
    width, rows = shape
    header = delim.join(f"c{i}" for i in range(width))
    body = eol.join(delim.join(r) for r in rows) + eol
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.csv"
        path.write_bytes((header + eol + body).encode("utf-8", "surrogateescape"))
        span = Span(len(header + eol), path.stat().st_size, 2, tuple(header.split(delim)))  # as a slice is read
        by_column = _csv_chunks(path, size, delim, span)
        with monkeypatch.context() as patch:
            patch.setattr(_manifest_csv, "_full_width", lambda *args: False)
            by_row = _csv_chunks(path, size, delim, span)
    assert by_column == by_row


def test_a_full_width_block_is_split_by_column(tmp_path: Path) -> None:
    """As a slice process reads (a span: no header to read first), a full-width block comes column by column."""
    head = "reference_id,image_url\n"
    path = tmp_path / "m.csv"
    path.write_text(head + "".join(f"r{i},https://h/{i}.jpg\n" for i in range(12)))
    span = Span(len(head), path.stat().st_size, 2, ("reference_id", "image_url"))
    reader = _manifest_csv.CsvReader(path, ",", span)
    chunks = list(reader.chunks(5))
    reader.close()
    assert chunks[0].cols == [[f"r{i}" for i in range(5)], [f"https://h/{i}.jpg" for i in range(5)]]
    assert [list(c.lines) for c in chunks] == [[2, 3, 4, 5, 6], [7, 8, 9, 10, 11], [12, 13]]
    assert all(c.clean and c.rows == [] and c.cols is not None for c in chunks)
