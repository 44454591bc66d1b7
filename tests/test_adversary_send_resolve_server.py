"""A job API on loopback for tests/test_adversary_send_resolve.py: a correct job store (one job per
reference_id, FS_0001 for a second one, batches listed page by page) whose creation answers a test scripts
after the store has decided, so an answer can say something other than what the store did: an error envelope
after the job was created, a 429 whose body says success, no answer at all.

Plain `http.server` in a thread (as tests/misbehaving_api.py's): one request per thread, the store under one lock.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.misbehaving_api import JsonHandler, Served
from tests.misbehaving_api import envelope as ok_envelope
from tests.misbehaving_api import refusal as error_envelope

BATCH = "7a0e4c2b-5d1f-4b8e-9c3a-2f6d8e1b4a70"


@dataclass
class Creation:
    """One job POST as the store handled it: the n-th POST for its reference_id (1-based), whether the store
    created a job for it, and that job's id (the existing job's id for a refused twin)."""

    reference_id: str
    nth: int
    created: bool
    job_id: str


#: (the creation) -> (HTTP status, body bytes) to answer, or None to close the connection without answering.
Answer = Callable[[Creation], "tuple[int, bytes] | None"]
#: (the batch's jobs as listed, how many listing pages were read before) -> the jobs in the order this page sees.
Order = Callable[[list[dict[str, Any]], int], list[dict[str, Any]]]


#: A listing refused as a key that may create jobs but not read batches would be.
REFUSED: tuple[int, dict[str, str], bytes] = (
    403,
    {},
    error_envelope("unauthorized", "the key may not read this batch"),
)
#: A listing throttled for a long time.
THROTTLED: tuple[int, dict[str, str], bytes] = (
    429,
    {"Retry-After": "3600"},
    error_envelope("rate_limited", "slow down"),
)


def faithful(c: Creation) -> tuple[int, bytes] | None:
    """What the API answers: the job, or FS_0001 for a twin."""
    if c.created:
        return 200, ok_envelope({"job_id": c.job_id, "reference_id": c.reference_id, "work_flow_id": "wf"})
    return 400, error_envelope("FS_0001", "reference_id already used")


class StoreApi(Served):
    """`with StoreApi(KEY, answer=...) as api:` serves at `api.base_url`. `api.store` is {reference_id: {job_id,
    batch_id, data}}; `api.posts` counts the job POSTs per reference_id, `api.created` the jobs created per
    reference_id (must never exceed 1). Jobs sent without a batch_id go to BATCH."""

    def __init__(self, key: str, answer: Answer = faithful, page_size: int = 100, order: Order | None = None) -> None:
        self.key, self.answer, self.page_size, self.order = key, answer, page_size, order
        self.hidden: set[str] = set()  #: reference_ids whose jobs no listing shows (they exist all the same)
        #: (status, headers, body) every batch listing is answered with instead of the page (None: the page)
        self.listing_reply: tuple[int, dict[str, str], bytes] | None = None
        self.pages_read = 0
        self.store: dict[str, dict[str, Any]] = {}
        self.posts: dict[str, int] = {}
        self.created: dict[str, int] = {}
        self.lock = threading.Lock()
        self._serve(self._handler())

    def put(self, reference_id: str, data: dict[str, Any], batch_id: str = BATCH) -> str:
        """A job created by someone else (the UI, another ledger): returns its job_id."""
        with self.lock:
            job = str(uuid.uuid4())
            self.store[reference_id] = {"job_id": job, "batch_id": batch_id, "data": data}
            self.created[reference_id] = self.created.get(reference_id, 0) + 1
            return job

    def create(self, body: dict[str, Any]) -> Creation:
        ref = str(body.get("reference_id"))
        with self.lock:
            nth = self.posts[ref] = self.posts.get(ref, 0) + 1
            if ref in self.store:
                return Creation(ref, nth, False, self.store[ref]["job_id"])
            job = str(uuid.uuid4())
            self.store[ref] = {"job_id": job, "batch_id": body.get("batch_id") or BATCH, "data": body.get("data")}
            self.created[ref] = self.created.get(ref, 0) + 1
            return Creation(ref, nth, True, job)

    def page(self, batch_id: str, token: str) -> dict[str, Any]:
        with self.lock:
            jobs = [
                {"id": j["job_id"], "reference_id": ref, "status": "created"}
                for ref, j in self.store.items()
                if j["batch_id"] == batch_id and ref not in self.hidden
            ]
            if self.order is not None:
                jobs = self.order(jobs, self.pages_read)
            self.pages_read += 1
        start = int(token or 0)
        end = start + self.page_size
        return {"id": batch_id, "jobs": jobs[start:end], "next_page_token": str(end) if end < len(jobs) else ""}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                if not self._authorised(api.key):
                    return
                if not self.path.endswith("/jobs"):
                    return self._data({"batch_id": BATCH})
                answer = api.answer(api.create(body))
                if answer is None:  # the job is stored (or refused); no answer at all
                    self.close_connection = True
                    return
                self._reply(*answer)

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorised(api.key):
                    return
                path, _, query = self.path.partition("?")
                if "/batch/" in path and api.listing_reply is not None:
                    status, headers, raw = api.listing_reply
                    return self._reply(status, raw, headers)
                if "/batch/" in path:
                    token = query.partition("page_token=")[2]
                    return self._data(api.page(path.rsplit("/", 1)[1], token))
                job_id = path.rsplit("/", 1)[1]
                with api.lock:
                    found = [(ref, j) for ref, j in api.store.items() if j["job_id"] == job_id]
                if "/jobs/" in path and found:
                    ref, j = found[0]
                    data = {"job_id": job_id, "reference_id": ref, "batch_id": j["batch_id"], "status": "created"}
                    return self._data(data)
                self._refuse(400, "FS_0006", "job unit not found")

        return Handler
