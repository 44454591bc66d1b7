"""A job API on loopback for tests/test_adversary_time.py, whose own clock the test chooses.

It creates jobs as the API does (one job per (project, reference_id), `FS_0001` for a second creation, the batch
listed in one page, GET job), and is the truth of every scenario: `created` counts creations per reference_id
(never above 1 on a correct client: a repeated POST is refused, not created), `posts` every job POST with the
server's monotonic arrival time, so a test can measure the gap between a row's sends.

Time: `clock_offset` seconds are added to this server's wall clock, in its `Date` header and in the HTTP-dates
that scripted answers make (`retry_after_date(seconds)`): a server whose clock is far off. Scripted answers: a
reference_id's first creations may be answered with a scripted status, body and headers (`script`), the job not
created; `on_post(reference_id, n)` runs before each job POST is answered (a test steps a client's clock
there). Plain `http.server` in threads (tests/misbehaving_api.py's `JsonHandler` and `Served`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.misbehaving_api import JsonHandler, Served, envelope, refusal

#: The batch every job goes to (runs pass `--batch-id BATCH`), and what a batch creation answers.
BATCH = "7a0c5e1d-3b2f-4c6d-8e9f-1a2b3c4d5e6f"


@dataclass(frozen=True)
class Scripted:
    """One scripted answer to a job creation (the job is not created): status, JSON body, headers. A header
    value may be a callable, evaluated when the answer is sent (an HTTP-date relative to the server's clock)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str | Callable[[], str]] = field(default_factory=dict)


def throttled(retry_after: str | Callable[[], str] | None) -> Scripted:
    """A 429 with this Retry-After (None: no header)."""
    headers: dict[str, str | Callable[[], str]] = {} if retry_after is None else {"Retry-After": retry_after}
    return Scripted(429, {"success": False, "error": {"code": "rate_limited", "message": "slow down"}}, headers)


def server_failure(retry_after: str | Callable[[], str] | None = None) -> Scripted:
    """A 500 FS_0000 (retryable, job not created), with this Retry-After."""
    headers: dict[str, str | Callable[[], str]] = {} if retry_after is None else {"Retry-After": retry_after}
    return Scripted(500, {"success": False, "error": {"code": "FS_0000", "message": "try later"}}, headers)


class TimeApi(Served):
    """`with TimeApi(KEY) as api:` serves at `api.base_url`. `script` {reference_id: [Scripted, …]}: the first
    creations of that reference_id get those answers in order, later ones are created (or FS_0001)."""

    def __init__(self, key: str, script: dict[str, list[Scripted]] | None = None, clock_offset: float = 0.0) -> None:
        self.key = key
        self.script = {ref: list(answers) for ref, answers in (script or {}).items()}
        self.clock_offset = clock_offset
        self.jobs: dict[tuple[str, str], str] = {}  #: (project, reference_id) -> job_id
        self.created: Counter[str] = Counter()  #: creations per reference_id: the truth of "created twice"
        self.posts: list[tuple[float, str, int]] = []  #: (monotonic arrival, reference_id, answered status)
        self.on_post: Callable[[str, int], None] | None = None
        self.delay = 0.0  #: seconds each job creation waits (after creating) before its answer
        self.lock = threading.Lock()
        self._serve(self._handler())

    def now(self) -> float:
        """This server's wall clock (seconds since 1970)."""
        return time.time() + self.clock_offset

    def retry_after_date(self, seconds: float) -> Callable[[], str]:
        """A Retry-After header value: the HTTP-date `seconds` after this server's clock, when sent."""
        return lambda: formatdate(self.now() + seconds, usegmt=True)

    def arrivals(self, ref: str) -> list[float]:
        with self.lock:
            return [t for t, r, _ in self.posts if r == ref]

    def post_count(self) -> int:
        with self.lock:
            return len(self.posts)

    def _create(self, project: str, raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        body = json.loads(raw or b"{}")
        ref = str(body.get("reference_id"))
        with self.lock:
            n = sum(1 for _, r, _ in self.posts if r == ref) + 1
        if self.on_post is not None:
            self.on_post(ref, n)
        with self.lock:
            answers = self.script.get(ref)
            if answers:
                answer = answers.pop(0)
                headers = {k: (v() if callable(v) else v) for k, v in answer.headers.items()}
                status, doc = answer.status, answer.body
            elif (project, ref) in self.jobs:
                status, doc, headers = 400, json.loads(refusal("FS_0001", "reference_id already used")), {}
            else:
                self.jobs[(project, ref)] = job = str(uuid.uuid4())
                self.created[ref] += 1
                status, doc, headers = 200, {"success": True, "data": {"job_id": job, "reference_id": ref}}, {}
            self.posts.append((time.monotonic(), ref, status))
        return status, doc, headers

    def _listed(self, project: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {"id": j, "reference_id": r, "status": "created"} for (p, r), j in self.jobs.items() if p == project
            ]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(JsonHandler):
            def date_time_string(self, timestamp: float | None = None) -> str:
                return formatdate(api.now() if timestamp is None else timestamp, usegmt=True)

            def do_POST(self) -> None:  # noqa: N802
                raw = self._raw_body()
                if not self._authorised(api.key):
                    return
                parts = self.path.split("?")[0].strip("/").split("/")  # v1 projects P jobs | v1 projects P batch
                if parts[-1] == "jobs":
                    status, doc, headers = api._create(parts[2], raw)
                    if api.delay:
                        time.sleep(api.delay)
                    return self._reply(status, json.dumps(doc).encode(), headers)
                self._data({"batch_id": BATCH})

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorised(api.key):
                    return
                parts = self.path.split("?")[0].strip("/").split("/")
                project = parts[2] if len(parts) > 2 else ""
                if len(parts) == 5 and parts[3] == "batch":
                    page = {"id": parts[4], "project_id": project, "jobs": api._listed(project), "next_page_token": ""}
                    return self._reply(200, envelope(page))
                if len(parts) == 5 and parts[3] == "jobs":
                    for job in api._listed(project):
                        if job["id"] == parts[4]:
                            data = {
                                "project_id": project,
                                "job_id": job["id"],
                                "reference_id": job["reference_id"],
                                "batch_id": BATCH,
                                "status": "created",
                            }
                            return self._reply(200, envelope(data))
                self._refuse(400, "FS_0006", "job unit not found")

        return Handler
