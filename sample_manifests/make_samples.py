"""Regenerate the sample manifests in this directory: `python sample_manifests/make_samples.py`.

One script writes them all so the CSV and Parquet image samples always hold the same rows. Output is
deterministic (no randomness, no timestamps), so re-running it changes nothing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
CAMERAS = ("front", "rear", "left", "right")
VIDEOS = "https://example.com/videos"
SCANS = "https://example.com/scans"


def image_rows() -> list[dict[str, str]]:
    return [
        {
            "reference_id": f"img-{n:03d}",
            "image_url": f"https://picsum.photos/seed/img-{n:03d}/640/480",
            "camera": CAMERAS[n % len(CAMERAS)],
        }
        for n in range(1, 13)
    ]


def write_csv(name: str, header: list[str], rows: list[list[str]]) -> None:
    with open(HERE / name, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_jsonl(name: str, objects: list[object]) -> None:
    with open(HERE / name, "w", encoding="utf-8", newline="\n") as f:
        for obj in objects:
            f.write((obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)) + "\n")


def images() -> None:
    rows = image_rows()
    header = list(rows[0])
    write_csv("images.csv", header, [[r[c] for c in header] for r in rows])
    table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in header})
    pq.write_table(table, HERE / "images.parquet")
    write_csv(
        "images_overrides.csv",
        ["project_id", "reference_id", "image_url", "batch_id", "priority_weight", "metadata"],
        [
            [
                "proj-a",
                "ovr-001",
                "https://picsum.photos/seed/ovr-001/640/480",
                "6f1c2b7e-3d4a-4c5b-9e8f-0a1b2c3d4e5f",
                "8",
                '{"weather": "rain"}',
            ],
            ["", "ovr-002", "https://picsum.photos/seed/ovr-002/640/480", "", "", ""],
            ["proj-b", "ovr-003", "https://picsum.photos/seed/ovr-003/640/480", "", "2", '{"weather": "sun"}'],
        ],
    )


def videos() -> None:
    rows = []
    for frame in range(1, 5):  # interleaved: frame 1 of every video, then frame 2, ...
        for video in ("vid-001", "vid-002", "vid-003"):
            rows.append([video, f"frame{frame:03d}", f"{VIDEOS}/{video}/frame{frame:03d}.jpg"])
    write_csv("video_frames.csv", ["reference_id", "frame_id", "src"], rows)
    write_jsonl(
        "video.jsonl",
        [
            {
                "reference_id": video,
                "camera": "dashcam",
                "frames": [
                    {"frame_id": f"frame{n:03d}", "src": f"{VIDEOS}/{video}/frame{n:03d}.jpg"} for n in range(1, 4)
                ],
            }
            for video in ("clip-001", "clip-002", "clip-003")
        ],
    )


def sensor() -> None:
    meta = [
        {"id": "lidar", "name": "lidar", "state": "editable", "modality": "lidar"},
        {
            "id": "cam-front",
            "name": "cam-front",
            "state": "non_editable",
            "modality": "camera",
            "intrinsics": {"cx": 960.0, "cy": 540.0, "fx": 1000.0, "fy": 1000.0},
        },
    ]
    objects = []
    for n in range(1, 4):
        frames = [
            {
                "frame_id": f"{n:03d}-{k}",
                "ego_pose": {"position": {"x": 1.5 * k, "y": 0, "z": 0}, "heading": {"w": 1, "x": 0, "y": 0, "z": 0}},
                "sensors": [
                    {"sensor_id": "lidar", "data_url": f"{SCANS}/{n:03d}/{k}.pcd"},
                    {"sensor_id": "cam-front", "data_url": f"{SCANS}/{n:03d}/{k}.jpg"},
                ],
            }
            for k in range(2)
        ]
        objects.append(
            {"reference_id": f"scan-{n:03d}", "data": {"sensor_data": {"frames": frames, "sensor_meta": meta}}}
        )
    write_jsonl("sensor.jsonl", objects)


def broken() -> None:
    write_csv(
        "broken_missing_column.csv",
        ["reference_id", "url"],
        [["img-001", "https://picsum.photos/seed/img-001/640/480"]],
    )
    write_csv(
        "broken_bad_rows.csv",
        ["reference_id", "image_url", "priority_weight"],
        [
            ["bad-001", "https://picsum.photos/seed/bad-001/640/480", "5"],
            ["bad-002", "s3://my-bucket/images/bad-002.jpg", ""],
            ["", "https://picsum.photos/seed/bad-003/640/480", ""],
            ["bad-004", "https://picsum.photos/seed/bad-004/640/480", "high"],
            ["bad-001", "https://picsum.photos/seed/bad-005/640/480", ""],  # duplicate reference_id: ledger
        ],
    )
    write_jsonl(
        "broken_json.jsonl",
        [
            {"reference_id": "raw-001", "data": {"image_url": "https://picsum.photos/seed/raw-001/640/480"}},
            '{"reference_id": "raw-002", "data": {"image_url": "https://picsum.photos/seed/raw-002/640/480"}',
            '["raw-003", {"image_url": "https://picsum.photos/seed/raw-003/640/480"}]',
            {"reference_id": "raw-004", "data": "not an object"},
            {"reference_id": 4.0, "data": {"image_url": "https://picsum.photos/seed/raw-005/640/480"}},
            {"reference_id": "raw-006", "data": {}},
        ],
    )


if __name__ == "__main__":
    images()
    videos()
    sensor()
    broken()
