"""A job API on loopback for tests/test_adversary_ledger_commands.py: a correct store of jobs per project (one job
per (project, reference_id), FS_0001 for a second one, batches listed page by page, GET job, DELETE job) whose
batch listings a test may replace, to answer a listing of one batch with another batch's page (of another
project), or with entries in an order it chooses.

Plain `http.server` in a thread (as tests/misbehaving_api.py's): one request per thread, the store under one lock.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.misbehaving_api import JsonHandler, Served, envelope, refusal

#: The batch every job goes to when its creation names none, and that a batch creation answers.
BATCH = "3c9d2e71-6a4b-4f0e-8d15-7b2a9c4e1f60"

#: (project, batch_id, page token, the server) -> the listing page's `data` to answer instead of the store's, or
#: None for the store's own page.
Listing = Callable[[str, str, str, "LedgerApi"], "dict[str, Any] | None"]


class LedgerApi(Served):
    """`with LedgerApi(KEY) as api:` serves at `api.base_url`. `api.store` is {(project, reference_id): {job_id,
    batch_id, data}}; `api.created` counts creations per (project, reference_id) (must never exceed 1);
    `api.posts` the job POSTs and their bodies. `listing` replaces batch listings (see `Listing`)."""

    def __init__(self, key: str, page_size: int = 100, listing: Listing | None = None) -> None:
        self.key, self.page_size, self.listing = key, page_size, listing
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.created: dict[tuple[str, str], int] = {}
        self.posts: list[tuple[str, bytes]] = []  #: (path, raw body) of every job POST
        self.lock = threading.Lock()
        self._serve(self._handler())

    # -- the store --------------------------------------------------------------------------------------

    def put(self, project: str, reference_id: str, data: dict[str, Any], batch_id: str = BATCH) -> str:
        """A job created by someone else (the UI, another ledger): returns its job_id."""
        with self.lock:
            job = str(uuid.uuid4())
            self.store[(project, reference_id)] = {"job_id": job, "batch_id": batch_id, "data": data}
            self.created[(project, reference_id)] = self.created.get((project, reference_id), 0) + 1
            return job

    def job_of(self, project: str, reference_id: str) -> str | None:
        with self.lock:
            job = self.store.get((project, reference_id))
            return None if job is None else str(job["job_id"])

    def store_page(self, project: str, batch_id: str, token: str) -> dict[str, Any]:
        """The store's own listing page of a batch of a project."""
        with self.lock:
            jobs = [
                {"id": j["job_id"], "reference_id": ref, "status": "created"}
                for (p, ref), j in self.store.items()
                if p == project and j["batch_id"] == batch_id
            ]
        start = int(token or 0)
        end = start + self.page_size
        return {
            "id": batch_id,
            "project_id": project,
            "name": f"batch {batch_id}",
            "jobs": jobs[start:end],
            "next_page_token": str(end) if end < len(jobs) else "",
        }

    def _create(self, project: str, raw: bytes) -> tuple[int, bytes]:
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, refusal("GE_0001", "malformed JSON body")
        if not isinstance(body, dict) or not body.get("reference_id"):
            return 400, refusal("FS_0002", "reference_id missing")
        ref = str(body["reference_id"])
        with self.lock:
            if (project, ref) in self.store:
                return 400, refusal("FS_0001", "reference_id already used")
            job = str(uuid.uuid4())
            self.store[(project, ref)] = {
                "job_id": job,
                "batch_id": body.get("batch_id") or BATCH,
                "data": body.get("data"),
            }
            self.created[(project, ref)] = self.created.get((project, ref), 0) + 1
        return 200, envelope({"job_id": job, "reference_id": ref, "work_flow_id": body.get("work_flow_id")})

    # -- HTTP -------------------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self._raw_body()
                if not self._authorised(api.key):
                    return
                parts = self.path.split("?")[0].strip("/").split("/")  # v1 projects P jobs | v1 projects P batch
                if parts[-1] == "jobs":
                    with api.lock:
                        api.posts.append((self.path, raw))
                    return self._reply(*api._create(parts[2], raw))
                self._data({"batch_id": BATCH})

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorised(api.key):
                    return
                path, _, query = self.path.partition("?")
                parts = path.strip("/").split("/")
                project = parts[2] if len(parts) > 2 else ""
                if len(parts) == 5 and parts[3] == "batch":
                    token = query.partition("page_token=")[2]
                    page = api.listing(project, parts[4], token, api) if api.listing is not None else None
                    return self._data(page or api.store_page(project, parts[4], token))
                if len(parts) == 5 and parts[3] == "jobs":
                    with api.lock:
                        found = [
                            (ref, j) for (p, ref), j in api.store.items() if p == project and j["job_id"] == parts[4]
                        ]
                    if found:
                        ref, j = found[0]
                        data = {
                            "project_id": project,
                            "job_id": j["job_id"],
                            "reference_id": ref,
                            "batch_id": j["batch_id"],
                            "status": "created",
                        }
                        return self._data(data)
                self._refuse(400, "FS_0006", "job unit not found")

            def do_DELETE(self) -> None:  # noqa: N802
                job_id = self.path.rstrip("/").rsplit("/", 1)[1]
                with api.lock:
                    for key, j in list(api.store.items()):
                        if j["job_id"] == job_id:
                            del api.store[key]
                self._data({})

        return Handler
