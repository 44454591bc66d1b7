"""A job API on loopback for tests/test_adversary_sync_results.py whose every answer after creation a test scripts:
each job's platform status and result bytes, the batch listing's pages, the GET job answer. It records every
result body it served (job_id, sha256), so a test can compare the ledger with what the server actually sent.

Plain `http.server` in a thread: one request per thread, store access under a lock.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.misbehaving_api import JsonHandler, Served

BATCH = "7a3e9d10-1c2b-4d5e-8f90-a1b2c3d4e5f6"

#: (the api, the store's [(reference_id, job_id)], page token) -> the listing page's `data`.
Pages = Callable[["SyncApi", list[tuple[str, str]], str], dict[str, Any]]
#: (the api, job_id, reference_id) -> GET job's `data`.
JobAnswer = Callable[["SyncApi", str, str], dict[str, Any]]


def all_on_one_page(api: SyncApi, jobs: list[tuple[str, str]], token: str) -> dict[str, Any]:
    listed = [{"id": job, "reference_id": ref, "status": api.status[job]} for ref, job in jobs]
    return {"id": BATCH, "jobs": listed, "next_page_token": ""}


def honest_job(api: SyncApi, job_id: str, reference_id: str) -> dict[str, Any]:
    status = api.status[job_id]
    final = status in ("completed", "rejected", "failed")
    return {
        "job_id": job_id,
        "reference_id": reference_id,
        "batch_id": BATCH,
        "status": status,
        "result": f"{api.base_url}/results/{job_id}" if final else None,
    }


class SyncApi(Served):
    """`with SyncApi(KEY) as api:` serves at `api.base_url`. POST creates jobs (`api.jobs` {reference_id: job_id},
    status `completed`, result `{"job_id": …, "version": 1}`). `api.status[job_id]`, `api.result[job_id]`
    (bytes), `api.pages` and `api.job` script what sync sees; `api.result_delay` slows each download (seconds),
    `api.result_status` and `api.result_headers` shape its answer.
    `api.served` lists (job_id, sha256) of every result body sent whole; `api.keys` the x-api-key of each
    download request."""

    def __init__(self, key: str, pages: Pages = all_on_one_page, job: JobAnswer = honest_job) -> None:
        self.key = key
        self.pages = pages
        self.job = job
        self.jobs: dict[str, str] = {}
        self.status: dict[str, str] = {}
        self.result: dict[str, bytes] = {}
        self.result_delay = 0.0
        self.result_headers: dict[str, str] = {}  #: extra headers of every result answer
        self.result_status = 200  #: the HTTP status of every result answer
        self.served: list[tuple[str, str]] = []
        self.keys: list[str | None] = []
        self.requests = {"create": 0, "list": 0, "get": 0, "result": 0}
        self.lock = threading.Lock()
        self._serve(self._handler())

    def ref_of(self, job_id: str) -> str:
        return next(ref for ref, job in self.jobs.items() if job == job_id)

    def served_sha(self, job_id: str) -> set[str]:
        """The sha256 of every body served as `job_id`'s result."""
        with self.lock:
            return {sha for job, sha in self.served if job == job_id}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                if not self._authorised(api.key):
                    return
                if not self.path.endswith("/jobs"):
                    return self._data({"batch_id": BATCH})
                ref = str(body.get("reference_id"))
                with api.lock:
                    if ref in api.jobs:
                        return self._refuse(400, "FS_0001", "reference_id used")
                    api.requests["create"] += 1
                    job = str(uuid.uuid4())
                    api.jobs[ref] = job
                    api.status[job] = "completed"
                    api.result[job] = json.dumps({"job_id": job, "reference_id": ref, "version": 1}).encode()
                self._data({"job_id": job, "reference_id": ref, "work_flow_id": "wf"})

            def do_GET(self) -> None:  # noqa: N802
                path, _, query = self.path.partition("?")
                if path.startswith("/results/"):
                    return self._result(path.rsplit("/", 1)[1])
                if not self._authorised(api.key):
                    return
                if path.endswith(f"/batch/{BATCH}"):
                    token = query.partition("page_token=")[2]
                    with api.lock:
                        api.requests["list"] += 1
                        jobs = list(api.jobs.items())
                    return self._data(api.pages(api, jobs, token))
                job_id = path.rsplit("/", 1)[1]
                with api.lock:
                    known = {job: ref for ref, job in api.jobs.items()}
                if "/jobs/" in path and job_id in known:
                    with api.lock:
                        api.requests["get"] += 1
                    return self._data(api.job(api, job_id, known[job_id]))
                self._refuse(404, "FS_0006", "no such job")

            def _result(self, job_id: str) -> None:
                with api.lock:
                    api.requests["result"] += 1
                    api.keys.append(self.headers.get("x-api-key"))
                    raw = api.result.get(job_id)
                if api.result_delay:
                    time.sleep(api.result_delay)
                if raw is None:
                    return self._reply(404, b"{}")
                headers = {"Content-Type": "application/json", "Content-Length": str(len(raw)), **api.result_headers}
                self._send(api.result_status, headers.items(), raw)
                with api.lock:
                    api.served.append((job_id, hashlib.sha256(raw).hexdigest()))

        return Handler
