"""Adversarial tests of the library (`uploader.upload`, `Ledger.to_pandas`), of video manifests end to end, and of
ledgers written by older (and newer) schema revisions.

The API here is tests/test_adversary_library_video_server.py's RecordingApi: it keeps the exact bytes of every
job request, so each test compares what the API received with what the manifest (or DataFrame) says.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import uploader
from tests.conftest import migrate_sqlite
from tests.test_adversary_library_video_server import BATCH, RecordingApi
from uploader.errors import LedgerTooNewError, ManifestError, UploaderError
from uploader.ledger import Ledger
from uploader.manifest import frames as frame_store

KEY = "adv-library-video-secret-key-7f3a"
U = "https://cdn.example.com"


@pytest.fixture
def api():
    with RecordingApi(KEY) as served:
        yield served


def send(manifest: Any, api: RecordingApi, ledger: Any, **kw: Any) -> uploader.RunSummary:
    kw.setdefault("work_flow_id", "wf")
    kw.setdefault("batch_id", BATCH)
    return uploader.upload(manifest, project_id="proj", ledger=ledger, api_key=KEY, base_url=api.base_url, **kw)


def export(ledger: Path) -> pd.DataFrame:
    led = Ledger.open(ledger, create=False)
    try:
        return led.to_pandas()
    finally:
        led.close()


# --- DataFrames: the payload the API receives is the DataFrame's ---------------------------------------------


def test_metadata_dicts_with_different_keys_are_sent_as_given(api, tmp_path):
    """BUG: a DataFrame's `metadata` column of dicts goes through pa.Table.from_pandas, which infers ONE struct
    type for the whole column: every row gets every key of every other row (as null), and an int becomes a
    float when another row holds a float there. Row a's {"k": 1} reaches the API as {"k": 1.0, "z": null}."""
    meta = [{"k": 1}, {"k": 2.5, "z": "q"}]
    df = pd.DataFrame({"reference_id": ["a", "b"], "image_url": [f"{U}/a.jpg", f"{U}/b.jpg"], "metadata": meta})
    summary = send(df, api, tmp_path / "jobs.db")
    assert summary.counts["succeeded"] == 2
    raw_a = next(b for b in api.bodies if b'"reference_id":"a"' in b)
    assert b'"z"' not in raw_a and b"1.0" not in raw_a, raw_a
    assert api.data_of("a")["metadata"] == {"k": 1}
    assert api.data_of("b")["metadata"] == {"k": 2.5, "z": "q"}


def test_raw_data_dicts_are_sent_unchanged(api, tmp_path):
    """BUG (same root cause): a raw manifest's `data` is "sent unchanged" (README), but a DataFrame's `data`
    dicts are unified into one struct: row c, which has no reference_data, is sent `"reference_data": null`."""
    data = [{"image_url": f"{U}/c.jpg"}, {"image_url": f"{U}/d.jpg", "reference_data": {"x": 1}}]
    df = pd.DataFrame({"reference_id": ["c", "d"], "data": data})
    send(df, api, tmp_path / "jobs.db")
    assert api.data_of("c") == data[0]
    assert api.data_of("d") == data[1]


def test_wide_video_frames_from_a_dataframe_are_sent_as_given(api, tmp_path):
    """BUG (same root cause): wide-form `frames` lists of dicts: a frame gains the keys other videos' frames have
    (`"ts": null`)."""
    frames = [
        [{"frame_id": "a", "src": f"{U}/a.jpg"}, {"frame_id": "b", "src": f"{U}/b.jpg"}],
        [{"frame_id": "c", "src": f"{U}/c.jpg", "ts": 1.5}],
    ]
    df = pd.DataFrame({"reference_id": ["v1", "v2"], "frames": frames})
    send(df, api, tmp_path / "jobs.db")
    assert api.data_of("v1") == {"video_data": {"frames": frames[0]}}
    assert api.data_of("v2") == {"video_data": {"frames": frames[1]}}


@pytest.mark.parametrize(
    "meta",
    [[{"k": 1}, {"k": "text"}], [{}, {}]],
    ids=["mixed-types", "empty-dicts"],
)
def test_metadata_arrow_could_not_type_is_sent_as_given(api, tmp_path, meta):
    """Was a BUG: a metadata column Arrow cannot give one struct type (an int and a text under one key; empty
    dicts) escaped as a raw pyarrow exception from facade._arrow_table. Dicts now go as JSON text: sent as
    given."""
    df = pd.DataFrame({"reference_id": ["a", "b"], "image_url": [f"{U}/a.jpg", f"{U}/b.jpg"], "metadata": meta})
    assert send(df, api, tmp_path / "jobs.db").counts["succeeded"] == 2
    assert [api.data_of(ref).get("metadata", {}) for ref in ("a", "b")] == meta


def test_a_dataframe_arrow_cannot_convert_raises_an_uploader_error_naming_the_column(api, tmp_path):
    """BUG: README: "one bad row raises ManifestError naming its position and column". An extra column mixing
    an int and a text escaped as a raw pyarrow exception (not an UploaderError), from facade._arrow_table."""
    column = "tags"
    df = pd.DataFrame({"reference_id": ["a", "b"], "image_url": [f"{U}/a.jpg", f"{U}/b.jpg"], column: [1, "x"]})
    with pytest.raises(UploaderError) as caught:
        send(df, api, tmp_path / "jobs.db")
    assert column in str(caught.value)
    assert not (tmp_path / "jobs.db").exists() and api.bodies == []


def test_a_named_index_that_clashes_with_a_column_is_an_uploader_error(api, tmp_path):
    """BUG (minor): "named index levels become columns" (README): an index named like a column raises pandas'
    bare ValueError "cannot insert reference_id, already exists" from facade._arrow_table's reset_index()."""
    df = pd.DataFrame({"reference_id": ["a"], "image_url": [f"{U}/a.jpg"]}, index=pd.Index(["z"], name="reference_id"))
    with pytest.raises(UploaderError, match="reference_id"):
        send(df, api, tmp_path / "jobs.db")


def test_a_bad_dataframe_with_a_batch_name_creates_nothing(api, tmp_path):
    """BUG: with batch_name=, the batch is created at the API and recorded in a NEW ledger file before the
    DataFrame is validated (runner._run: `_with_named_batch` runs before `load`). The ManifestError then leaves
    an API-side batch and a ledger file this call created behind: not "all or nothing"."""
    df = pd.DataFrame({"reference_id": ["a", "b"], "image_url": [f"{U}/a.jpg", "ftp://nowhere/b.jpg"]})
    ledger = tmp_path / "jobs.db"
    with pytest.raises(ManifestError, match=r"row 1: column 'image_url'"):
        send(df, api, ledger, batch_id=None, batch_name="monday")
    assert not ledger.exists()
    assert api.bodies == []


def test_odd_dtypes_and_index_are_sent_verbatim_and_the_summary_matches_the_api(api, tmp_path):
    """Categorical reference_id, a nullable Int64 priority_weight, datetime/list/int-named extras and an index
    that is not a RangeIndex: each row sent once with the right payload; summary, export and API agree."""
    df = pd.DataFrame(
        {
            "reference_id": pd.Categorical(["r2", "r1", "r3"]),
            "image_url": [f"{U}/2.jpg", f"{U}/1.jpg", f"{U}/3.jpg"],
            "priority_weight": pd.array([3, None, 10], dtype="Int64"),
            "when": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01"]),
            7: [1, 2, 3],
            "tags": [["a"], [], ["b", "c"]],
        },
        index=[30, 10, 20],
    )
    summary = send(df, api, tmp_path / "jobs.db")
    assert summary.counts["succeeded"] == 3 and summary.progress.requests == 3 and summary.fatal is None
    sent = {b["reference_id"]: b for b in api.sent()}
    assert sent["r2"]["priority_weight"] == 3 and "priority_weight" not in sent["r1"]
    assert sent["r3"]["priority_weight"] == 10
    assert {r: b["data"] for r, b in sent.items()} == {r: {"image_url": f"{U}/{r[1]}.jpg"} for r in sent}
    out = export(tmp_path / "jobs.db")
    assert list(out["reference_id"]) == ["r2", "r1", "r3"]
    assert dict(zip(out["reference_id"], out["job_id"])) == {r: api.jobs["proj", r][0] for r in sent}
    assert list(out["tags"]) == [["a"], [], ["b", "c"]]
    assert list(out["when"]) == ["2024-01-01T00:00:00", "2024-02-01T00:00:00", "2024-03-01T00:00:00"]


@pytest.mark.parametrize(
    ("refs", "row"),
    [(["a", None, "c"], 1), (["a", "b", float("nan")], 2), (["a", "b", "a"], 2)],
    ids=["None", "NaN", "duplicate"],
)
def test_missing_or_repeated_reference_ids_name_the_row_and_load_nothing(api, tmp_path, refs, row):
    df = pd.DataFrame({"reference_id": refs, "image_url": [f"{U}/{i}.jpg" for i in range(3)]}, index=[7, 8, 9])
    with pytest.raises(ManifestError) as caught:
        send(df, api, tmp_path / "jobs.db")
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.column) == ("DataFrame", row, "reference_id")
    assert not (tmp_path / "jobs.db").exists() and api.bodies == []


def test_the_api_key_is_in_no_exception(api, tmp_path):
    df = pd.DataFrame({"reference_id": ["a"], "image_url": [f"{U}/a.jpg"]})
    for key in ("wrong-" + KEY, KEY + "\n", KEY + " é"):
        with pytest.raises(UploaderError) as caught:
            uploader.upload(df, project_id="proj", work_flow_id="wf", ledger=tmp_path / "l.db", api_key=key,
                            base_url=api.base_url, batch_id=BATCH)  # fmt: skip
        text = f"{caught.value!s} {caught.value!r} {caught.value.__cause__!r} {caught.value.__context__!r}"
        assert KEY not in text
    assert api.created == {}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_upload_inside_a_running_loop_with_an_open_ledger_used_across_threads(api, tmp_path):
    """In a notebook, upload() runs in a helper thread: an open Ledger the cell made (and read) in the loop's
    thread is used there, and read again afterwards."""
    led = Ledger.open(tmp_path / "jobs.db")
    try:
        assert led.to_pandas().empty
        df = pd.DataFrame(
            {"reference_id": [f"n{i}" for i in range(5)], "image_url": [f"{U}/{i}.jpg" for i in range(5)]}
        )
        summary = send(df, api, led)
        await asyncio.sleep(0)
        assert summary.counts["succeeded"] == 5
        out = led.to_pandas()
        assert dict(zip(out["reference_id"], out["job_id"])) == {r: j for (_, r), (j, _) in api.jobs.items()}
    finally:
        led.close()


# --- video manifests, end to end ---------------------------------------------------------------------------


def frames_of(api: RecordingApi, ref: str) -> list[tuple[str, str]]:
    return [(f["frame_id"], f["src"]) for f in api.data_of(ref)["video_data"]["frames"]]


def test_long_form_dataframe_frames_spread_and_indexed_arrive_in_frame_index_order(api, tmp_path):
    """Frames of two videos interleaved, a nullable Int64 frame_index with gaps and negatives, int frame_ids."""
    df = pd.DataFrame(
        {
            "reference_id": ["L1", "L2", "L1", "L2", "L1", "L2"],
            "frame_id": [30, 2, 10, 1, -5, 7],
            "src": [f"{U}/f{i}.jpg" for i in range(6)],
            "frame_index": pd.array([30, 2, 10, 1, -5, 1000], dtype="Int64"),
        },
        index=list("abcdef"),
    )
    send(df, api, tmp_path / "jobs.db")
    assert frames_of(api, "L1") == [("-5", f"{U}/f4.jpg"), ("10", f"{U}/f2.jpg"), ("30", f"{U}/f0.jpg")]
    assert frames_of(api, "L2") == [("1", f"{U}/f3.jpg"), ("2", f"{U}/f1.jpg"), ("7", f"{U}/f5.jpg")]


def test_a_duplicate_frame_in_a_dataframe_is_named_by_row(api, tmp_path):
    """BUG (minor, unclear message): a DataFrame's problems are located by 0-based row ("DataFrame: row 2"),
    but the duplicate-frame message says "(lines 0 and 2)" (frames.py `_video_ok` always says "lines"): the
    user looks for lines 0 and 2 of a file there is none of, and row 0 is not "line 0" in a CSV either."""
    df = pd.DataFrame(
        {"reference_id": ["v", "w", "v"], "frame_id": ["a", "a", "a"], "src": [f"{U}/{i}" for i in range(3)]}
    )
    with pytest.raises(ManifestError) as caught:
        send(df, api, tmp_path / "jobs.db")
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (2, "frame_id")
    assert "lines" not in problem.message and "rows 0 and 2" in problem.message


def test_long_form_csv_spilled_to_many_runs_sends_each_video_in_file_order(api, tmp_path, monkeypatch):
    """Without frame_index, frame order is row order within the reference_id. 40 videos of 25 frames spread
    round-robin over the file, the frame store forced to spill runs of 7 rows and merge 3 at a time: every
    video's payload is exactly its rows, in file order."""
    monkeypatch.setattr(frame_store, "RUN_ROWS", 7)
    monkeypatch.setattr(frame_store, "BLOCK_ROWS", 3)
    monkeypatch.setattr(frame_store, "FAN_IN", 3)
    lines, expected = ["reference_id,frame_id,src"], {}
    for f in range(25):
        for v in range(40):
            fid, src = f"fr{(f * 7919) % 25:02d}", f"{U}/v{v}/{f}.jpg"  # frame_ids not sorted
            lines.append(f"vid{v:02d},{fid},{src}")
            expected.setdefault(f"vid{v:02d}", []).append((fid, src))
    path = tmp_path / "m.csv"
    path.write_text("\n".join(lines) + "\n")
    summary = send(str(path), api, tmp_path / "jobs.db")
    assert summary.counts["succeeded"] == 40 and len(api.bodies) == 40
    assert {ref: frames_of(api, ref) for ref in expected} == expected


@pytest.mark.slow
def test_a_video_of_sixty_thousand_frames_is_one_job_in_order(api, tmp_path):
    """More frames than one in-memory run (RUN_ROWS): one job, every frame, in frame_index order."""
    n = 60_000
    order = [(i * 40_507) % n for i in range(n)]  # a permutation of 0..n-1 (gcd(40507, 60000) == 1)
    path = tmp_path / "big.csv"
    path.write_text("reference_id,frame_id,src,frame_index\n" + "".join(f"big,f{i},{U}/{i}.jpg,{i}\n" for i in order))
    send(str(path), api, tmp_path / "jobs.db")
    got = frames_of(api, "big")
    assert len(got) == n and got == [(f"f{i}", f"{U}/{i}.jpg") for i in range(n)]


def test_a_video_reloaded_with_other_frames_before_sending_sends_the_last_load(api, tmp_path):
    """Reload semantics: a pending video's frames change between loads: the API receives the last load's frames;
    once sent, a load with other frames changes nothing at the API and the row keeps its job_id."""
    ledger = tmp_path / "jobs.db"
    first = tmp_path / "first.csv"
    first.write_text(f"reference_id,frame_id,src\nv,a,{U}/a\nv,b,{U}/b\nv,c,{U}/c\n")
    second = tmp_path / "second.csv"
    second.write_text(f"reference_id,frame_id,src\nv,c,{U}/c\nv,a,{U}/a2\n")
    led = Ledger.open(ledger)
    try:
        from uploader.load import load
        from uploader.manifest import ManifestOptions

        opts = ManifestOptions(project_id="proj", work_flow_id="wf", batch_id=BATCH)
        load(led, first, opts)
        load(led, second, opts)
    finally:
        led.close()
    send(None, api, ledger)
    assert frames_of(api, "v") == [("c", f"{U}/c"), ("a", f"{U}/a2")]
    job = api.jobs["proj", "v"][0]
    send(str(first), api, ledger)  # a conflicting reload of a sent row: nothing is sent
    assert len(api.bodies) == 1 and api.created == {("proj", "v"): 1}
    out = export(ledger)
    assert list(out["status"]) == ["succeeded"] and list(out["job_id"]) == [job]


# --- migrations ---------------------------------------------------------------------------------------------


def _body(ref: str) -> str:
    doc = {"reference_id": ref, "work_flow_id": "wf", "batch_id": BATCH, "data": {"image_url": f"{U}/{ref}.jpg"}}
    return json.dumps(doc, separators=(",", ":"))


#: (reference_id, status, job_id, attempts, recovered, error_code)
OLD_ROWS = [
    ("r-pend", "pending", None, 0, 0, None),
    ("r-ok", "succeeded", "JOB-OK", 1, 0, None),
    ("r-rec", "succeeded", "JOB-REC", 2, 1, None),
    ("r-fail", "failed", None, 1, 0, "FS_0003"),
    ("r-fly", "in_flight", None, 1, 0, None),  # the old run died with this request in the air
    ("r-unc", "uncertain", None, 3, 0, None),
]


def _fill_old_ledger(path: Path) -> None:
    stamp = "2026-01-01 00:00:00.000000"
    db = sqlite3.connect(path)
    try:
        db.execute(
            "INSERT INTO manifests (id, path, size, sha256, options_hash, row_count, loaded_at) "
            "VALUES (1, 'old.csv', 10, ?, ?, 6, ?)",
            ("a" * 64, "b" * 64, stamp),
        )
        for line, (ref, status, job, attempts, recovered, code) in enumerate(OLD_ROWS, start=2):
            body = _body(ref)
            flying = status == "in_flight"
            db.execute(
                "INSERT INTO jobs (project_id, reference_id, work_flow_id, batch_id, body, body_hash, status, job_id, "
                "recovered, error_code, error_message, http_status, attempts, lease_owner, lease_token, "
                "lease_expires_at, created_at, updated_at, manifest_id, manifest_line) "
                "VALUES ('proj', ?, 'wf', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (
                    ref, BATCH, body, hashlib.sha256(body.encode()).hexdigest(), status, job, recovered, code,
                    "invalid data" if code else None, 400 if code else None, attempts,
                    "dead-owner" if flying else None, 1 if flying else 0, stamp if flying else None,
                    stamp, stamp, line,
                ),
            )  # fmt: skip
        db.commit()
    finally:
        db.close()


@pytest.mark.parametrize("revision", ["0001", "0004"])
def test_a_ledger_from_an_older_revision_keeps_every_row_and_resumes(api, tmp_path, revision):
    path = tmp_path / "old.db"
    migrate_sqlite(path, revision)
    _fill_old_ledger(path)
    api.jobs["proj", "r-fly"] = ("JOB-FLY", json.loads(_body("r-fly")))  # the lost request had created it
    manifest = tmp_path / "again.csv"
    manifest.write_text("reference_id,image_url\n" + "".join(f"{r[0]},{U}/{r[0]}.jpg\n" for r in OLD_ROWS))
    before = export(path)  # opening migrates to the head
    assert list(before["reference_id"]) == [r[0] for r in OLD_ROWS]
    assert list(before["status"]) == [r[1] for r in OLD_ROWS]
    assert before.set_index("reference_id").loc[["r-ok", "r-rec"], "job_id"].tolist() == ["JOB-OK", "JOB-REC"]
    assert before.set_index("reference_id").loc[["r-ok", "r-rec"], "origin"].tolist() == ["created", "recovered"]

    summary = send(str(manifest), api, path)  # the same rows reloaded (unchanged), then the run resumes

    assert sorted(b["reference_id"] for b in api.sent()) == ["r-fly", "r-pend", "r-unc"]
    assert all(n == 1 for n in api.created.values()) and ("proj", "r-fly") not in api.created
    out = export(path).set_index("reference_id")
    assert out.loc["r-fly", "job_id"] == "JOB-FLY" and out.loc["r-fly", "status"] == "succeeded"
    assert out.loc["r-ok", "job_id"] == "JOB-OK" and out.loc["r-rec", "job_id"] == "JOB-REC"
    assert out.loc["r-fail", "status"] == "failed" and out.loc["r-fail", "error_code"] == "FS_0003"
    for ref in ("r-pend", "r-unc"):
        assert out.loc[ref, "job_id"] == api.jobs["proj", ref][0]
    assert summary.counts == {**dict.fromkeys(summary.counts, 0), "succeeded": 5, "failed": 1}


def _newer_ledger(path: Path) -> str:
    led = Ledger.open(path)
    led.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE alembic_version SET version_num = '0042'")
    db.commit()
    db.close()
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("args", [["status"], ["export", "-o", "out.csv"], ["run", "--project-id", "p"]])
def test_a_ledger_from_a_newer_revision_is_refused_by_the_cli_untouched(tmp_path, args):
    path = tmp_path / "new.db"
    digest = _newer_ledger(path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "uploader", *args, "--ledger", str(path)],
        capture_output=True, text=True, cwd=tmp_path, env={**env, "PLAYMENT_API_KEY": KEY}, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "0042" in proc.stderr and "newer uploader" in proc.stderr and "Traceback" not in proc.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.db"]


def test_a_ledger_from_a_newer_revision_is_refused_by_the_library_untouched(api, tmp_path):
    path = tmp_path / "new.db"
    digest = _newer_ledger(path)
    df = pd.DataFrame({"reference_id": ["a"], "image_url": [f"{U}/a.jpg"]})
    with pytest.raises(LedgerTooNewError, match="0042"):
        send(df, api, path)
    with pytest.raises(LedgerTooNewError):
        Ledger.open(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest and api.bodies == []


def test_an_error_from_upload_outside_a_loop_does_not_blame_a_missing_event_loop(api, tmp_path):
    """BUG: facade._blocking calls run_loop() inside `except RuntimeError:` (the probe for a running loop), so
    every exception upload() raises in a plain script has __context__ = RuntimeError('no running event loop'):
    an uncaught one prints that error first, then "During handling of the above exception, another exception
    occurred" — pointing the user at event loops when the key was wrong."""
    import traceback

    df = pd.DataFrame({"reference_id": ["a"], "image_url": [f"{U}/a.jpg"]})
    with pytest.raises(UploaderError) as caught:
        uploader.upload(df, project_id="proj", work_flow_id="wf", ledger=tmp_path / "l.db", api_key="wrong-key",
                        base_url=api.base_url, batch_id=BATCH)  # fmt: skip
    printed = "".join(traceback.format_exception(caught.value))
    assert "refused" in printed
    assert "no running event loop" not in printed and "During handling" not in printed
