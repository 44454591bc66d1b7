"""A sandbox job's life after creation: its status at a given time, and the annotation it yields.

Pure: the time is passed in and every per-job draw comes from a hash of the job_id, so a job's status
and result are the same on every request and after a restart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

__all__ = ["RESULTS_PREFIX", "Lifecycle", "result_document"]

#: Where the sandbox serves completed jobs' results: `/_sandbox/results/<project_id>/<job_id>`.
RESULTS_PREFIX = "/_sandbox/results/"
_LABELS = ("car", "pedestrian", "truck", "bicycle", "traffic_light", "traffic_sign", "bus", "motorcycle")


def _draws(job_id: str, count: int) -> list[float]:
    """`count` numbers in [0, 1) fixed by the job_id."""
    digest = hashlib.sha256(job_id.encode()).digest()
    return [int.from_bytes(digest[4 * i : 4 * i + 4], "big") / 2**32 for i in range(count)]


@dataclass(frozen=True)
class Lifecycle:
    """How jobs move: `created` → `working_status` → `completed` (or `rejected`, at `reject_rate`) after
    `complete_after_s` ± `jitter_s`; with `complete_after_s` None a job stays `created` forever."""

    complete_after_s: float | None = None
    jitter_s: float = 0.0
    reject_rate: float = 0.0
    working_status: str = "in_progress"

    def due(self, job_id: str, created_at: float) -> float | None:
        """When the job reaches its final status, or None when it never does."""
        if self.complete_after_s is None:
            return None
        spread = (_draws(job_id, 1)[0] * 2 - 1) * self.jitter_s
        return created_at + max(0.0, self.complete_after_s + spread)

    def status(self, job_id: str, created_at: float, now: float) -> str:
        """The job's status at `now`."""
        due = self.due(job_id, created_at)
        if due is None or now < created_at + (due - created_at) / 2:
            return "created"
        if now < due:
            return self.working_status
        return "rejected" if _draws(job_id, 2)[1] < self.reject_rate else "completed"


def result_document(job: dict[str, Any]) -> dict[str, Any]:
    """A completed job's annotation in the shape of a GT Studio image result: a few to a few dozen labeled
    rectangles and polygons with attributes (about 1-10 KB of JSON)."""
    job_id = job["job_id"]
    draws = _draws(job_id, 8)
    count = 2 + int(draws[0] * 30)
    annotations = []
    for i in range(count):
        seed = _draws(f"{job_id}/{i}", 6)
        x, y = round(seed[0] * 1800, 1), round(seed[1] * 1000, 1)
        w, h = round(10 + seed[2] * 200, 1), round(10 + seed[3] * 150, 1)
        shape = "rectangle" if seed[4] < 0.7 else "polygon"
        points = [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]
        annotations.append(
            {
                "_id": f"{job_id[:8]}-{i}",
                "type": shape,
                "label": _LABELS[int(seed[5] * len(_LABELS))],
                "coordinates": points if shape == "polygon" else {"x": x, "y": y, "w": w, "h": h},
                "attributes": {"occluded": seed[2] < 0.2, "truncated": seed[3] < 0.1},
            }
        )
    return {
        "job_id": job_id,
        "reference_id": job["reference_id"],
        "project_id": job["project_id"],
        "work_flow_id": job["work_flow_id"],
        "data": {"image_url": (job.get("data") or {}).get("image_url"), "width": 1920, "height": 1080},
        "annotations": annotations,
    }
