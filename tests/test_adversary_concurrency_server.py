"""A truthful job API on loopback for tests/test_adversary_concurrency.py: one job per reference_id per project
(a second creation is refused with FS_0001, as API.md says), batches created on request and listed page by page,
GET job answering the job's batch_id. It counts every creation per reference_id, so a test can assert that no
job was ever created twice, and it can hold creations in the air: a creation is stored first, then its answer
waits until the test opens the gate (a request that reached the API whose answer has not come back yet).

Plain `http.server` in a thread (as tests/misbehaving_api.py's): one request per thread, the store under one lock.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.misbehaving_api import JsonHandler, Served, envelope, refusal

#: The project's "Default batch": where a job sent without a batch_id goes.
DEFAULT_BATCH = "0d3c5e7a-1b2f-4c6d-8e9f-a0b1c2d3e4f5"


class TruthApi(Served):
    """`with TruthApi(KEY) as api:` serves at `api.base_url`.

    `api.store` is {(project, reference_id): {job_id, batch_id, data}}; `api.created` counts jobs created per
    reference_id (must never exceed 1), `api.posts` the job POSTs per reference_id. `api.hold()` makes every
    later creation wait, after the store has decided, until `api.release()` (`api.waiting` counts the answers
    held back); `delay` slows every creation's answer by so many seconds."""

    def __init__(self, key: str, *, delay: float = 0.0, page_size: int = 50, fail_first: bool = False) -> None:
        self.key, self.delay, self.page_size = key, delay, page_size
        #: answer each reference_id's creation with a server failure (HTTP 500, FS_0000) after storing the job
        self.fail_first = fail_first
        #: reference_ids refused with FS_0007 (attachment not accessible; nothing created) while listed here
        self.refuse: set[str] = set()
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.created: Counter[str] = Counter()
        self.posts: Counter[str] = Counter()
        self.batches: dict[tuple[str, str], str] = {}  #: (project, name) -> batch_id
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = 0  #: creations decided and stored whose answers are held back now
        self.held_total = 0  #: creations ever held back
        self._serve(self._handler())

    # -- control -----------------------------------------------------------------------------------------

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def job_ids(self, project: str) -> dict[str, str]:
        with self.lock:
            return {ref: j["job_id"] for (p, ref), j in self.store.items() if p == project}

    def data_of(self, project: str) -> dict[str, Any]:
        with self.lock:
            return {ref: j["data"] for (p, ref), j in self.store.items() if p == project}

    def twice(self) -> dict[str, int]:
        """reference_ids created more than once (must stay empty)."""
        with self.lock:
            return {ref: n for ref, n in self.created.items() if n > 1}

    def put(self, project: str, ref: str, data: dict[str, Any], batch_id: str) -> str:
        """A job created by someone else (the UI, another ledger)."""
        with self.lock:
            job = str(uuid.uuid4())
            self.store[(project, ref)] = {"job_id": job, "batch_id": batch_id, "data": data}
            self.created[ref] += 1
            return job

    # -- the API -----------------------------------------------------------------------------------------

    def _create(self, project: str, body: dict[str, Any]) -> tuple[int, bytes]:
        ref = body.get("reference_id")
        if not isinstance(ref, str) or not ref:
            return 400, refusal("FS_0002", "reference_id missing")
        with self.lock:
            self.posts[ref] += 1
            if ref in self.refuse:
                return 400, refusal("FS_0007", "attachment not accessible")
            if (project, ref) in self.store:
                return 400, refusal("FS_0001", "reference_id already used")
            job = str(uuid.uuid4())
            batch = body.get("batch_id") or DEFAULT_BATCH
            self.store[(project, ref)] = {"job_id": job, "batch_id": batch, "data": body.get("data")}
            self.created[ref] += 1
        if self.fail_first:
            return 500, refusal("FS_0000", "internal error")
        return 200, envelope({"job_id": job, "reference_id": ref, "work_flow_id": body.get("work_flow_id")})

    def _hold_answer(self) -> None:
        if self.gate.is_set():
            return
        with self.lock:
            self.waiting += 1
            self.held_total += 1
        try:
            self.gate.wait(60)
        finally:
            with self.lock:
                self.waiting -= 1

    def _new_batch(self, project: str, body: dict[str, Any]) -> tuple[int, bytes]:
        name = str(body.get("name"))
        with self.lock:
            if (project, name) in self.batches:
                return 400, refusal("BATCH_CREATION", "batch name already exists")
            batch = self.batches[(project, name)] = str(uuid.uuid4())
        return 200, envelope({"batch_id": batch})

    def _page(self, project: str, batch: str, token: str) -> bytes:
        with self.lock:
            jobs = [
                {"id": j["job_id"], "reference_id": ref, "status": "created"}
                for (p, ref), j in self.store.items()
                if p == project and j["batch_id"] == batch
            ]
        start = int(token or 0)
        end = start + self.page_size
        more = str(end) if end < len(jobs) else ""
        return envelope({"id": batch, "project_id": project, "jobs": jobs[start:end], "next_page_token": more})

    def _job(self, project: str, job_id: str) -> tuple[int, bytes]:
        with self.lock:
            for (p, ref), j in self.store.items():
                if p == project and j["job_id"] == job_id:
                    data = {"job_id": job_id, "reference_id": ref, "batch_id": j["batch_id"], "status": "created"}
                    return 200, envelope({"project_id": project, **data})
        return 400, refusal("FS_0006", "job unit not found")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(JsonHandler):
            def _reply(self, status: int, raw: bytes, headers: dict[str, str] | None = None) -> None:
                if status >= 500:  # retry later, not at once: the row waits pending (its job already stored)
                    headers = {"Retry-After": "30", **(headers or {})}
                super()._reply(status, raw, headers)

            def do_POST(self) -> None:  # noqa: N802
                raw = self._raw_body()
                if not self._authorised(api.key):
                    return
                parts = self.path.split("?")[0].strip("/").split("/")  # v1 projects P jobs|batch
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    return self._refuse(400, "GE_0001", "malformed JSON")
                if len(parts) == 4 and parts[3] == "jobs":
                    status, answer = api._create(parts[2], body)
                    api._hold_answer()
                    if api.delay:
                        time.sleep(api.delay)
                    return self._reply(status, answer)
                if len(parts) == 4 and parts[3] == "batch":
                    return self._reply(*api._new_batch(parts[2], body))
                self._refuse(400, "resource_error", "no such resource")

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorised(api.key):
                    return
                path, _, query = self.path.partition("?")
                parts = path.strip("/").split("/")
                if len(parts) == 5 and parts[3] == "batch":
                    token = query.partition("page_token=")[2]
                    return self._reply(200, api._page(parts[2], parts[4], token))
                if len(parts) == 5 and parts[3] == "jobs":
                    return self._reply(*api._job(parts[2], parts[4]))
                self._refuse(400, "resource_error", "no such resource")

        return Handler
