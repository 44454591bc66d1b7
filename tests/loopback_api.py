"""A small, deliberately misbehaving job API on loopback, for the tests of pacing, throttling and stopping.

Not the project's sandbox: a plain `http.server` in a thread with a job store of its own, whose answers a test
scripts with `behave(index, elapsed) -> Answer | None` (index of the job POST, seconds since the first one;
None: answer as the API does). It records when each
job POST arrived (its own monotonic clock), so a test counts requests in a window from the server's side.
Only what the uploader's run needs: create a job (FS_0001 for a reference_id already used), GET a job,
list a batch's jobs.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.misbehaving_api import Served

DEFAULT_BATCH = "00000000-0000-4000-8000-000000000000"


@dataclass
class Answer:
    """A scripted answer to one job POST (the job is not created)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class LoopbackApi(Served):
    """`with LoopbackApi(key, behave) as api:` serves on 127.0.0.1:<free port>; `api.base_url`."""

    def __init__(
        self,
        key: str,
        behave: Callable[[int, float], Answer | None] | None = None,
        latency: float = 0.0,
        batch_answer: Answer | None = None,
    ) -> None:
        self.key = key
        self.behave = behave or (lambda i, t: None)
        self.latency = latency
        self.lock = threading.Lock()
        self.posts: list[float] = []  #: arrival time of each job POST (time.monotonic)
        self.answers: list[int] = []  #: the status answered to each job POST, in order
        self.bodies: list[bytes] = []  #: the body of each job POST, in order
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}  #: (project, reference_id) -> job
        self.started = time.monotonic()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(
                self, status: int, document: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
            ) -> None:
                body = raw if raw is not None else (json.dumps(document).encode() if document is not None else b"")
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                parts = self.path.strip("/").split("/")
                if self.headers.get("x-api-key") != api.key:
                    return self._send(401)
                if len(parts) == 4 and parts[0] == "v1" and parts[3] == "batch":
                    if batch_answer is not None:  # scripted, like a job POST's `behave`
                        return self._send(batch_answer.status, headers=batch_answer.headers, raw=batch_answer.body)
                    return self._send(200, {"success": True, "data": {"batch_id": str(uuid.uuid4())}})
                if not (len(parts) == 4 and parts[0] == "v1" and parts[3] == "jobs"):
                    return self._send(404, raw=b"<h1>not found</h1>")
                with api.lock:
                    index = len(api.posts)
                    api.posts.append(arrived)
                    api.bodies.append(raw)
                answer = api.behave(index, arrived - api.posts[0])
                if api.latency:
                    time.sleep(api.latency)
                if answer is not None:
                    with api.lock:
                        api.answers.append(answer.status)
                    return self._send(answer.status, headers=answer.headers, raw=answer.body)
                body = json.loads(raw)
                key = (parts[2], body["reference_id"])
                with api.lock:
                    api.answers.append(200)
                    if key in api.jobs:
                        return self._send(
                            400,
                            {
                                "success": False,
                                "error": {"code": "FS_0001", "message": "reference_id already exists", "errors": []},
                            },
                        )
                    job = {
                        "job_id": str(uuid.uuid4()),
                        "reference_id": body["reference_id"],
                        "work_flow_id": body["work_flow_id"],
                        "batch_id": body.get("batch_id") or DEFAULT_BATCH,
                    }
                    api.jobs[key] = job
                self._send(
                    200, {"success": True, "data": {k: job[k] for k in ("job_id", "reference_id", "work_flow_id")}}
                )

            def do_GET(self) -> None:  # noqa: N802
                parts = self.path.split("?")[0].strip("/").split("/")
                if self.headers.get("x-api-key") != api.key:
                    return self._send(401)
                with api.lock:
                    jobs = list(api.jobs.values())
                if len(parts) == 5 and parts[3] == "jobs":
                    for job in jobs:
                        if job["job_id"] == parts[4]:
                            return self._send(200, {"success": True, "data": {**job, "project_id": parts[2]}})
                if len(parts) == 5 and parts[3] == "batch":
                    listed = [
                        {"id": j["job_id"], "reference_id": j["reference_id"]}
                        for j in jobs
                        if j["batch_id"] == parts[4]
                    ]
                    return self._send(200, {"success": True, "data": {"jobs": listed, "next_page_token": ""}})
                self._send(404, raw=b"<h1>not found</h1>")

        self._serve(Handler)

    def created(self) -> int:
        with self.lock:
            return len(self.jobs)

    def arrivals(self) -> list[float]:
        """When each job POST arrived, in seconds after the first."""
        with self.lock:
            return [t - self.posts[0] for t in self.posts]
