"""A job API on loopback that keeps a correct job store but whose answers a test scripts, for the adversarial trust
tests (tests/test_trust_hostile.py): the raw text of a creation's answer (duplicate keys), a batch listing's
pages (paging loops, endless pages), a GET job's answer (another job's), a result download's raw bytes (a body
cut off on a connection that closes).

Plain `http.server` in a thread: one request per thread, every store access under one lock.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.misbehaving_api import JsonHandler, Served, refusal

BATCH = "5b2f0c1e-3d4a-4e6b-8f70-9a1b2c3d4e5f"

#: (reference_id, job_id) -> the raw JSON text of the creation's success answer.
CreateAnswer = Callable[[str, str], bytes]
#: (the store's [(reference_id, job_id)], page token) -> the listing page's `data`.
Pages = Callable[[list[tuple[str, str]], str], dict[str, Any]]
#: (the job asked for, as the store holds it: {job_id, reference_id, ...}, the store) -> GET job's `data`.
JobAnswer = Callable[[dict[str, Any], dict[str, dict[str, Any]]], dict[str, Any]]
#: (method, path, how many requests came before) -> (status, headers, body) to answer without doing anything, or None.
Intercept = Callable[[str, str, int], "tuple[int, dict[str, str], bytes] | None"]


#: How a success answer is cut short (headers after the status line, then the body as sent).
CUTS: dict[str, Callable[[bytes], bytes]] = {
    "status line only": lambda raw: b"",
    "body shorter than Content-Length": lambda raw: b"Content-Length: %d\r\n\r\n%s" % (len(raw) + 50, raw),
    "body longer than Content-Length": lambda raw: b"Content-Length: %d\r\n\r\n%s" % (len(raw) - 5, raw),
    "chunked body cut": lambda raw: b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s" % (len(raw), raw[:-3]),
    "no length, cut": lambda raw: b"Connection: close\r\n\r\n" + raw[:-3],
}


def plain_answer(ref: str, job: str) -> bytes:
    return json.dumps({"success": True, "data": {"job_id": job, "reference_id": ref, "work_flow_id": "wf"}}).encode()


def one_page(jobs: list[tuple[str, str]], token: str) -> dict[str, Any]:
    listed = [{"id": job, "reference_id": ref, "status": "completed"} for ref, job in jobs]
    return {"id": BATCH, "jobs": listed, "next_page_token": ""}


def same_job(job: dict[str, Any], store: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return job


class HostileApi(Served):
    """`with HostileApi(KEY, answer=..., pages=..., job=...) as api:` serves at `api.base_url`; `api.jobs` is
    {reference_id: job_id}, `api.created` the creations per reference_id (must never exceed 1). A job's result
    is at `/results/<job_id>`, served as `result_raw` (raw HTTP bytes, the connection then closed) when set.
    `intercept` answers chosen requests itself; `answer_twice` sends each creation's answer again after so many
    seconds, on the same keep-alive connection."""

    def __init__(
        self,
        key: str,
        answer: CreateAnswer = plain_answer,
        pages: Pages = one_page,
        job: JobAnswer = same_job,
        result_raw: bytes | None = None,
        intercept: Intercept | None = None,
        answer_twice: float | None = None,
        cut: str | None = None,
    ) -> None:
        self.key, self.answer, self.pages, self.job, self.result_raw = key, answer, pages, job, result_raw
        self.intercept = intercept
        self.answer_twice = answer_twice  #: seconds after which each creation's answer is sent again, unasked
        self.cut = cut  #: how a creation's success answer is cut short (CUTS), the connection then closed
        self.seen: list[tuple[str, str, str | None]] = []  #: (method, path, x-api-key) of every request
        self.jobs: dict[str, str] = {}
        self.created: dict[str, int] = {}
        self.requests: dict[str, int] = {"create": 0, "exists": 0, "list": 0, "get": 0, "result": 0}
        self.lock = threading.Lock()
        self._serve(self._handler())

    def store(self) -> dict[str, dict[str, Any]]:
        """{job_id: the job as GET job would answer it}."""
        with self.lock:
            return {
                job: {
                    "job_id": job,
                    "reference_id": ref,
                    "batch_id": BATCH,
                    "status": "completed",
                    "result": f"{self.base_url}/results/{job}",
                }
                for ref, job in self.jobs.items()
            }

    def create(self, body: dict[str, Any]) -> tuple[int, bytes]:
        ref = str(body.get("reference_id"))
        with self.lock:
            if ref in self.jobs:
                self.requests["exists"] += 1
                return 400, refusal("FS_0001", "reference_id already used")
            self.requests["create"] += 1
            job = str(uuid.uuid4())
            self.jobs[ref] = job
            self.created[ref] = self.created.get(ref, 0) + 1
        return 200, self.answer(ref, job)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(JsonHandler):
            def _intercepted(self) -> bool:
                with api.lock:
                    count = len(api.seen)
                    api.seen.append((self.command, self.path, self.headers.get("x-api-key")))
                scripted = api.intercept(self.command, self.path, count) if api.intercept else None
                if scripted is None:
                    return False
                status, headers, raw = scripted
                self._send(status, {"Content-Length": str(len(raw)), **headers}.items(), raw)
                return True

            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                if self._intercepted() or not self._authorised(api.key):
                    return
                if self.path.endswith("/jobs"):
                    answer = api.create(body)
                    if api.cut is not None and answer[0] == 200:
                        return self._cut(answer[1])
                    self._reply(*answer)
                    if api.answer_twice is not None:  # a server answering twice: the second answer nobody asked for
                        self.wfile.flush()
                        time.sleep(api.answer_twice)
                        self._reply(*answer)
                else:
                    self._data({"batch_id": BATCH})

            def do_GET(self) -> None:  # noqa: N802
                if self._intercepted():
                    return
                path, _, query = self.path.partition("?")
                if path.startswith("/results/"):
                    return self._result(path.rsplit("/", 1)[1])
                if not self._authorised(api.key):
                    return
                if path.endswith(f"/batch/{BATCH}"):
                    token = query.partition("page_token=")[2]
                    with api.lock:
                        api.requests["list"] += 1
                        jobs = [(ref, job) for ref, job in api.jobs.items()]
                    return self._data(api.pages(jobs, token))
                job_id = path.rsplit("/", 1)[1]
                store = api.store()
                if "/jobs/" in path and job_id in store:
                    with api.lock:
                        api.requests["get"] += 1
                    return self._data(api.job(store[job_id], store))
                self._refuse(404, "resource_error", "no")

            def _cut(self, raw: bytes) -> None:
                """The job is created; its answer is cut short as `api.cut` says, and the connection closed."""
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                self._write_and_close(head + CUTS[api.cut](raw))

            def _result(self, job_id: str) -> None:
                with api.lock:
                    api.requests["result"] += 1
                if api.result_raw is not None:
                    return self._write_and_close(api.result_raw)
                self._json(200, {"job_id": job_id, "labels": [1, 2, 3]})

        return Handler
