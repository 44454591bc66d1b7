"""URLs too long to be fetched (issue 10, item 16): an image_url or frame src over MAX_URL_LENGTH is a
manifest problem, reported with file, line and column, exit 1, and nothing is loaded — whether the manifest
is read in this process or, when it is big, by uploader.load.slices's worker processes, and whether the ledger
is new (the empty-ledger bulk path) or already holds jobs (the staging merge).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from uploader.ledger.ledger import Ledger
from uploader.load import load
from uploader.load.slices import MIN_SPLIT_BYTES, Production
from uploader.manifest.reader import Manifest, ManifestOptions
from uploader.manifest.values import MAX_URL_LENGTH

pytestmark = pytest.mark.slow

SAMPLES = Path(__file__).resolve().parent.parent / "sample_manifests"
LOAD_OPTS = ["--project-id", "p", "--work-flow-id", "w"]
MB10 = 10 * 1024 * 1024
HUGE = "https://cdn.example.com/" + "a" * MB10
TOO_LONG = "https://cdn.example.com/" + "b" * (MAX_URL_LENGTH - 23)  # one character over the cap
LONGEST = TOO_LONG[:-1]  # exactly at the cap: accepted


def uploader(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "PLAYMENT_"))}
    return subprocess.run(
        [sys.executable, "-m", "uploader", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def base_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-empty ledger, closed (no WAL)."""
    path = tmp_path_factory.mktemp("base") / "ledger.db"
    led = Ledger.open(path)
    load(led, SAMPLES / "images.csv", ManifestOptions(project_id="p", work_flow_id="w"))
    led.close()
    return path


def small_manifests(folder: Path) -> dict[str, tuple[Path, str, int | None, str]]:
    """name -> (file, column, line (Parquet: row), field named in the message) with one 10 MB URL each."""
    out: dict[str, tuple[Path, str, int | None, str]] = {}
    csv_file = folder / "image.csv"
    csv_file.write_text(f"reference_id,image_url\nok-1,https://cdn.example.com/1.jpg\nbig,{HUGE}\n")
    out["image.csv"] = (csv_file, "image_url", 3, "image_url")
    jsonl = folder / "image.jsonl"
    jsonl.write_text(
        json.dumps({"reference_id": "ok", "image_url": "https://cdn.example.com/1.jpg"})
        + "\n"
        + json.dumps({"reference_id": "big", "image_url": HUGE})
        + "\n"
    )
    out["image.jsonl"] = (jsonl, "image_url", 2, "image_url")
    parquet = folder / "image.parquet"
    pq.write_table(
        pa.table({"reference_id": ["ok", "big"], "image_url": ["https://cdn.example.com/1.jpg", HUGE]}), parquet
    )
    out["image.parquet"] = (parquet, "image_url", 1, "image_url")
    long_form = folder / "video_long.csv"
    long_form.write_text(f"reference_id,frame_id,src\nv1,f1,https://cdn.example.com/v1/1.jpg\nv1,f2,{HUGE}\n")
    out["video_long.csv"] = (long_form, "src", 3, "src")
    wide = folder / "video_wide.jsonl"
    frames = [{"frame_id": "f1", "src": "https://cdn.example.com/1.jpg"}, {"frame_id": "f2", "src": HUGE}]
    wide.write_text(json.dumps({"reference_id": "v1", "frames": frames}) + "\n")
    out["video_wide.jsonl"] = (wide, "frames", 1, "frames[1].src")
    raw = folder / "raw.jsonl"
    raw.write_text(json.dumps({"reference_id": "r1", "data": {"image_url": HUGE}}) + "\n")
    out["raw.jsonl"] = (raw, "data", 1, "data.image_url")
    return out


def assert_refused(
    done: subprocess.CompletedProcess, manifest: Path, line: int | None, column: str, field: str, unit: str = "line"
) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert len(done.stderr) < 10_000  # the URL itself is never printed in full
    where = f"{manifest}:{line}" if unit == "line" else f"{manifest}: row {line}"
    assert f"{where}: column {column!r}: " in done.stderr, done.stderr
    assert f"{field} is " in done.stderr and f"characters long; at most {MAX_URL_LENGTH} are allowed" in done.stderr
    assert "nothing was loaded" in done.stderr


@pytest.mark.parametrize(
    "name", ["image.csv", "image.jsonl", "image.parquet", "video_long.csv", "video_wide.jsonl", "raw.jsonl"]
)
def test_a_10mb_url_is_refused_with_file_line_and_column(name: str, base_ledger: Path, tmp_path: Path) -> None:
    manifest, column, line, field = small_manifests(tmp_path)[name]
    existing = tmp_path / "existing.db"
    shutil.copyfile(base_ledger, existing)
    before = existing.read_bytes()
    done = uploader("load", str(manifest), *LOAD_OPTS, "--ledger", str(existing))
    assert_refused(done, manifest, line, column, field, "row" if name.endswith(".parquet") else "line")
    assert existing.read_bytes() == before
    new = tmp_path / "new.db"  # the empty-ledger path: the file it would create is not left behind
    done = uploader("run", str(manifest), *LOAD_OPTS, "--ledger", str(new), "--sandbox", "--quiet")
    assert_refused(done, manifest, line, column, field, "row" if name.endswith(".parquet") else "line")
    assert not new.exists()


def test_the_cap_is_exact(base_ledger: Path, tmp_path: Path) -> None:
    """MAX_URL_LENGTH characters load; one more is refused (the fast whole-chunk path and the row path agree)."""
    ok = tmp_path / "ok.csv"
    ok.write_text(f"reference_id,image_url\nlongest,{LONGEST}\n")
    ledger = tmp_path / "ledger.db"
    shutil.copyfile(base_ledger, ledger)
    done = uploader("load", str(ok), *LOAD_OPTS, "--ledger", str(ledger))
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text(f"reference_id,image_url\none-over,{TOO_LONG}\n")
    done = uploader("load", str(bad), *LOAD_OPTS, "--ledger", str(ledger))
    assert_refused(done, bad, 2, "image_url", "image_url")
    assert f"is {MAX_URL_LENGTH + 1} characters long" in done.stderr


def big_manifest(path: Path, bad_line: int, url: str) -> Path:
    """A CSV of over MIN_SPLIT_BYTES without quotes (read by worker processes) with one long URL on bad_line."""
    rows = 70_000
    with open(path, "w", encoding="utf-8") as f:
        f.write("reference_id,image_url,note\n")
        for i in range(rows):
            line = i + 2
            f.write(f"r{i},{url if line == bad_line else f'https://cdn.example.com/{i}.jpg'},{'n' * 40}\n")
    assert path.stat().st_size >= MIN_SPLIT_BYTES
    assert Production.suits(Manifest(path, ManifestOptions(project_id="p", work_flow_id="w")))
    return path


@pytest.mark.parametrize("bad_line", [2, 35_001, 70_001], ids=["first", "middle", "last"])
def test_big_manifests_read_by_workers_refuse_a_long_url(bad_line: int, base_ledger: Path, tmp_path: Path) -> None:
    manifest = big_manifest(tmp_path / "big.csv", bad_line, TOO_LONG)
    new = tmp_path / "new.db"  # workers started before the ledger exists, rows straight into jobs
    done = uploader("load", str(manifest), *LOAD_OPTS, "--ledger", str(new))
    assert_refused(done, manifest, bad_line, "image_url", "image_url")
    assert not new.exists()
    existing = tmp_path / "existing.db"  # workers' slices copied into the staging table of the merge
    shutil.copyfile(base_ledger, existing)
    before = existing.read_bytes()
    done = uploader("load", str(manifest), *LOAD_OPTS, "--ledger", str(existing))
    assert_refused(done, manifest, bad_line, "image_url", "image_url")
    assert existing.read_bytes() == before
