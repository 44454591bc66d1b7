"""A hostile job API on loopback for tests/test_adversary_report_status.py: it creates jobs correctly (one job per
reference_id, FS_0001 for a second one, its batch listed page by page, GET job), but answers the reference_ids a
test scripts with what a test chooses: refusals whose code, message and details hold hostile text (HTML, ANSI
escapes, bidi overrides, the API key in its encoded forms), 429s, lost answers. Listings and job reads give each
job the platform status a test sets, and may name extra jobs (made elsewhere) for `adopt`.

Every request is counted with the status it was answered with, so a test can hold the CLI's logs and counts
against what the server saw. Plain `http.server` in a thread (tests/misbehaving_api.py's `JsonHandler`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.misbehaving_api import JsonHandler, Served, envelope

#: The batch every job goes to, and that a batch creation answers.
BATCH = "0b7e4c2a-91d3-4f5e-8a6b-2c3d4e5f6a7b"


@dataclass(frozen=True)
class Answer:
    """One scripted answer to a job creation: HTTP status, body (bytes as sent, or a JSON document), headers.
    `create`: the job is created first (a success answered wrongly, or an answer lost after the creation)."""

    status: int
    body: bytes | dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    create: bool = False


def refusal(code: str, message: str, errors: list[Any] | None = None, status: int = 400) -> Answer:
    """The API's error envelope with this code, message and `errors` details."""
    error: dict[str, Any] = {"code": code, "message": message}
    if errors is not None:
        error["errors"] = errors
    return Answer(status, {"success": False, "error": error})


THROTTLED = Answer(
    429, {"success": False, "error": {"code": "rate_limited", "message": "slow down"}}, {"Retry-After": "0"}
)


class HostileApi(Served):
    """`with HostileApi(KEY, script) as api:` serves at `api.base_url`. `script` maps a reference_id to the
    answers its creations get, in order (the last one repeats); other reference_ids are created. `platform`
    {reference_id: status word} is what listings and job reads say (default `created`); `elsewhere` lists
    extra jobs (reference_id, job_id, status) in the batch, made by someone else. `requests` counts every
    request as (method, kind, answered status); `answered` the job creations' statuses per reference_id;
    `delay` holds each job creation's answer back that many seconds."""

    def __init__(self, key: str, script: dict[str, list[Answer | None]] | None = None) -> None:
        self.key = key
        self.script = {ref: list(answers) for ref, answers in (script or {}).items()}
        self.jobs: dict[str, str] = {}  #: reference_id -> job_id of the jobs created
        self.platform: dict[str, str] = {}
        self.elsewhere: list[tuple[str, str, str]] = []
        self.requests: list[tuple[str, str, int]] = []
        self.answered: dict[str, list[int]] = {}
        self.delay = 0.0  #: seconds each job creation waits before its answer
        self.lock = threading.Lock()
        self._serve(self._handler())

    def count(self, method: str | None = None, kind: str | None = None, status: int | None = None) -> int:
        with self.lock:
            return sum(
                1
                for m, k, s in self.requests
                if (method is None or m == method) and (kind is None or k == kind) and (status is None or s == status)
            )

    def _create(self, raw: bytes) -> Answer:
        body = json.loads(raw or b"{}")
        ref = str(body.get("reference_id"))
        with self.lock:
            answers = self.script.get(ref)
            scripted = (answers.pop(0) if len(answers) > 1 else answers[0]) if answers else None
            if scripted is not None:
                answer = scripted
                if answer.create and ref not in self.jobs:
                    self.jobs[ref] = str(uuid.uuid4())
            elif ref in self.jobs:
                answer = refusal("FS_0001", "reference_id already used")
            else:
                self.jobs[ref] = job = str(uuid.uuid4())
                answer = Answer(200, {"success": True, "data": {"job_id": job, "reference_id": ref}})
            self.answered.setdefault(ref, []).append(answer.status)
        return answer

    def _listed(self) -> list[dict[str, Any]]:
        with self.lock:
            mine = [
                {"id": job, "reference_id": ref, "status": self.platform.get(ref, "created")}
                for ref, job in self.jobs.items()
            ]
            return mine + [{"id": j, "reference_id": r, "status": s} for r, j, s in self.elsewhere]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(JsonHandler):
            def _note(self, kind: str, status: int) -> None:
                with api.lock:
                    api.requests.append((self.command, kind, status))

            def _answer(self, kind: str, answer: Answer) -> None:
                self._note(kind, answer.status)
                raw = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
                self._reply(answer.status, raw, answer.headers)

            def do_POST(self) -> None:  # noqa: N802
                raw = self._raw_body()
                if self.headers.get("x-api-key") != api.key:
                    return self._answer("auth", refusal("auth-failure", "bad key", status=401))
                if self.path.split("?")[0].endswith("/jobs"):
                    if api.delay:
                        time.sleep(api.delay)
                    return self._answer("create", api._create(raw))
                self._answer("batch", Answer(200, envelope({"batch_id": BATCH})))

            def do_GET(self) -> None:  # noqa: N802
                if self.headers.get("x-api-key") != api.key:
                    return self._answer("auth", refusal("auth-failure", "bad key", status=401))
                parts = self.path.split("?")[0].strip("/").split("/")  # v1 projects P batch B | v1 projects P jobs J
                project = parts[2] if len(parts) > 2 else ""
                if len(parts) == 5 and parts[3] == "batch":
                    page = {"id": parts[4], "project_id": project, "jobs": api._listed(), "next_page_token": ""}
                    return self._answer("list", Answer(200, envelope(page)))
                if len(parts) == 5 and parts[3] == "jobs":
                    found = [j for j in api._listed() if j["id"] == parts[4]]
                    if found:
                        job = {
                            "project_id": project,
                            "job_id": found[0]["id"],
                            "reference_id": found[0]["reference_id"],
                            "batch_id": BATCH,
                            "status": found[0]["status"],
                        }
                        return self._answer("job", Answer(200, envelope(job)))
                self._answer("job", refusal("FS_0006", "job unit not found"))

        return Handler
