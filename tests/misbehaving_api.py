"""A small job API on loopback that creates jobs correctly but answers them wrongly, for the answers the sandbox
never gives: another request's job_id and reference_id, one job_id for every row, a job_id that is an object
or `true`. It keeps its own job store, so batch listings work (and can be made to misbehave the same way).

Plain `http.server` in a thread: one request per thread, every store access under one lock.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

BATCH = "6f1c1a52-8a5e-4c1b-9d55-0c4d5b3f1e2a"

#: How a creation is answered: given (reference_id, the job's real id, the previous creation's (ref, id)).
ANSWERS = {
    "ok": lambda ref, job, prev: {"job_id": job, "reference_id": ref},
    "swap": lambda ref, job, prev: {"job_id": prev[1], "reference_id": prev[0]},  # a proxy mixing answers up
    "same": lambda ref, job, prev: {"job_id": "JOB-SAME", "reference_id": ref},
    "object": lambda ref, job, prev: {"job_id": {"id": job}, "reference_id": ref},
    "true": lambda ref, job, prev: {"job_id": True, "reference_id": ref},
}


def envelope(data: dict[str, Any]) -> bytes:
    """The API's success envelope, as JSON bytes."""
    return json.dumps({"success": True, "data": data}).encode()


def refusal(code: str, message: str) -> bytes:
    """The API's error envelope, as JSON bytes."""
    return json.dumps({"success": False, "error": {"code": code, "message": message}}).encode()


class JsonHandler(BaseHTTPRequestHandler):
    """The plumbing the small APIs' request handlers share (keep-alive HTTP/1.1, no logging): reading a request's
    body, answering JSON, the x-api-key check. Each API subclasses it with its own routes and misbehaviours."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _raw_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _body(self) -> Any:
        """The request's JSON body (`{}` when there is none)."""
        return json.loads(self._raw_body() or b"{}")

    def _send(self, status: int, headers: Iterable[tuple[str, str]], raw: bytes) -> None:
        """Answer with exactly these headers, in this order, and body."""
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def _reply(self, status: int, raw: bytes, headers: dict[str, str] | None = None) -> None:
        """A JSON answer: `headers` first, then Content-Type and Content-Length."""
        sent = [*(headers or {}).items(), ("Content-Type", "application/json"), ("Content-Length", str(len(raw)))]
        self._send(status, sent, raw)

    def _json(self, status: int, document: dict[str, Any]) -> None:
        self._reply(status, json.dumps(document).encode())

    def _data(self, data: dict[str, Any]) -> None:
        self._reply(200, envelope(data))

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._reply(status, refusal(code, message))

    def _authorised(self, key: str | None) -> bool:
        """Whether the request carries `key` as its x-api-key (None: any will do); if not, answers 401."""
        if key is not None and self.headers.get("x-api-key") != key:
            self._refuse(401, "auth-failure", "bad key")
            return False
        return True

    def _write_and_close(self, raw: bytes) -> None:
        """Send `raw` as it is (status line, headers and body as scripted), then close the connection."""
        self.wfile.write(raw)
        self.wfile.flush()
        self.close_connection = True


class Served:
    """A ThreadingHTTPServer on a free loopback port, in a daemon thread while the `with` block runs: the
    plumbing of the small APIs the tests build (`_serve` with their handler class, in `__init__`)."""

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class MisbehavingApi(Served):
    """`with MisbehavingApi("swap") as api:` serves at `api.base_url`; `api.jobs` is {reference_id: job_id}."""

    def __init__(self, answer: str = "ok", listing: str = "ok", key: str = "") -> None:
        self.answer, self.listing, self.key = answer, listing, key
        self.jobs: dict[str, str] = {}
        self.created: dict[str, int] = {}  #: creations per reference_id (must never exceed 1)
        self.requests = {"create": 0, "exists": 0, "list": 0}
        self.lock = threading.Lock()
        self._prev: tuple[str, str] | None = None
        self._serve(self._handler())

    def create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ref = body.get("reference_id")
        with self.lock:
            if ref in self.jobs:
                self.requests["exists"] += 1
                return 400, {"success": False, "error": {"code": "FS_0001", "message": "reference_id already used"}}
            self.requests["create"] += 1
            job = str(uuid.uuid4())
            self.jobs[ref] = job
            self.created[ref] = self.created.get(ref, 0) + 1
            prev, self._prev = self._prev or (ref, job), (ref, job)
            return 200, {"success": True, "data": ANSWERS[self.answer](ref, job, prev)}

    def page(self) -> dict[str, Any]:
        with self.lock:
            self.requests["list"] += 1
            jobs = [
                {"id": True if self.listing == "true" else job, "reference_id": ref, "status": "created"}
                for ref, job in self.jobs.items()
            ]
        return {"success": True, "data": {"id": BATCH, "jobs": jobs, "next_page_token": ""}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                if not self._authorised(api.key or None):
                    return
                if self.path.endswith("/jobs"):
                    self._json(*api.create(body))
                else:
                    self._data({"batch_id": BATCH})

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorised(api.key or None):
                    return
                if f"/batch/{BATCH}" in self.path:
                    self._json(200, api.page())
                else:
                    self._refuse(404, "resource_error", "no")

        return Handler
