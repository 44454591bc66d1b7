"""A truth-keeping job API on loopback for tests/test_adversary_library_video.py: it records the exact bytes of
every job request, creates each reference_id once (FS_0001 afterwards), creates batches and lists them.

Not a test module of its own (no tests here): the helper the adversarial library/video tests serve.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.misbehaving_api import JsonHandler, Served

BATCH = "0b7c6a5e-4d3c-4b2a-9f8e-7d6c5b4a3f2e"


class RecordingApi(Served):
    """`with RecordingApi(key) as api:`; `api.bodies` is every job request's raw body, in arrival order;
    `api.jobs` is {(project_id, reference_id): (job_id, parsed body)} of the jobs it created."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.bodies: list[bytes] = []
        self.jobs: dict[tuple[str, str], tuple[str, Any]] = {}
        self.created: dict[tuple[str, str], int] = {}
        self.lock = threading.Lock()
        self._serve(self._handler())

    def sent(self) -> list[dict[str, Any]]:
        """Every job request's body, parsed, in arrival order."""
        with self.lock:
            return [json.loads(b) for b in self.bodies]

    def data_of(self, reference_id: str, project_id: str = "proj") -> Any:
        """The `data` of the job the API created for `reference_id`."""
        with self.lock:
            return self.jobs[project_id, reference_id][1]["data"]

    def _create(self, project: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        body = json.loads(raw)
        ref = body.get("reference_id")
        with self.lock:
            self.bodies.append(raw)
            if (project, ref) in self.jobs:
                return 400, {"success": False, "error": {"code": "FS_0001", "message": "reference_id already used"}}
            job = str(uuid.uuid4())
            self.jobs[project, ref] = (job, body)
            self.created[project, ref] = self.created.get((project, ref), 0) + 1
        return 200, {
            "success": True,
            "data": {"job_id": job, "reference_id": ref, "work_flow_id": body["work_flow_id"]},
        }

    def _listing(self, project: str) -> dict[str, Any]:
        with self.lock:
            jobs = [
                {"id": job, "reference_id": ref, "status": "created"}
                for (pid, ref), (job, _) in self.jobs.items()
                if pid == project
            ]
        return {"success": True, "data": {"id": BATCH, "jobs": jobs, "next_page_token": ""}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self._raw_body()
                if not self._authorised(api.key):
                    return
                parts = self.path.split("?")[0].strip("/").split("/")  # v1 projects P jobs|batch
                if len(parts) == 4 and parts[3] == "jobs":
                    self._json(*api._create(parts[2], raw))  # noqa: SLF001
                else:
                    self._data({"batch_id": BATCH})

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorised(api.key):
                    return
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 5 and parts[3] == "batch":
                    self._json(200, api._listing(parts[2]))  # noqa: SLF001
                else:
                    self._refuse(404, "resource_error", "no")

        return Handler
