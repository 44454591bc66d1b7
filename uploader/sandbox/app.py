"""The sandbox's HTTP face: one lean aiohttp low-level handler routing to SandboxState.

No router, no middlewares, no access log: the sandbox must never be the bottleneck of a benchmark.
Order of events for a faultable request (job creation, or every API request with `faults_on_all`):
decide faults → latency → refusal (429 / 500 / 502, nothing stored) → auth and project checks → the
operation → after-effect (drop the connection, or delay the reply). Refusals come before authentication
because they model the gateway in front of the API.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from uploader.sandbox.config import SandboxConfig
from uploader.sandbox.faults import FaultInjector
from uploader.sandbox.files import PREFIX as FILES_PREFIX
from uploader.sandbox.files import answer as file_answer
from uploader.sandbox.files import parse_spec
from uploader.sandbox.journal import Journal
from uploader.sandbox.lifecycle import RESULTS_PREFIX
from uploader.sandbox.state import ApiFailure, SandboxState, decode_body
from uploader.sandbox.stats import Stats

__all__ = ["HTML_502", "SandboxApp"]

HTML_502 = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
_JSON = {"Content-Type": "application/json"}
_HTML = {"Content-Type": "text/html"}
#: Envelope statuses the older server answered with HTTP 200 (401 became a bare, empty 401).
_LEGACY_AS_200 = frozenset({400, 403, 404, 413, 500})

# Route names (the operation is looked up by name; anything else is a 404 resource_error).
CREATE_JOB, CREATE_BATCH, GET_JOB, LIST_BATCH = "create_job", "create_batch", "get_job", "list_batch"


def _new_id() -> str:
    return str(uuid.uuid4())


def _route(method: str, path: str) -> tuple[str, str, str] | None:
    """(route, project_id, resource id) for an API path, or None for an unknown path."""
    parts = path.split("/")
    if len(parts) < 5 or parts[1] != "v1" or parts[2] != "projects" or not parts[3]:
        return None
    project_id = parts[3]
    if len(parts) == 5:
        if method == "POST" and parts[4] == "jobs":
            return CREATE_JOB, project_id, ""
        if method == "POST" and parts[4] == "batch":
            return CREATE_BATCH, project_id, ""
    elif len(parts) == 6 and parts[5] and method == "GET":
        if parts[4] == "jobs":
            return GET_JOB, project_id, parts[5]
        if parts[4] == "batch":
            return LIST_BATCH, project_id, parts[5]
    return None


class SandboxApp:
    """State, counters and faults behind one request handler; everything runs on one event loop."""

    def __init__(self, config: SandboxConfig, state: SandboxState, journal: Journal) -> None:
        self.config = config
        self.state = state
        self.journal = journal
        self.stats = Stats()
        self.faults = FaultInjector(config)
        self.new_id: Callable[[], str] = _new_id
        self.clock: Callable[[], float] = time.time
        state.lifecycle = config.lifecycle()

    def reconfigure(self, config: SandboxConfig) -> None:
        self.config = config
        self.faults.reconfigure(config)
        self.state.lifecycle = config.lifecycle()

    # -- responses ------------------------------------------------------------------------------
    def _json(self, status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
        if self.config.legacy and document.get("success") is False:
            if status == 401:
                return web.Response(status=401)
            if status in _LEGACY_AS_200:
                status = 200
        return web.Response(body=json.dumps(document).encode(), status=status, headers=headers or _JSON)

    def _failure(self, failure: ApiFailure) -> web.Response:
        return self._json(failure.status, failure.envelope())

    def _refusal(self, kind: str) -> web.Response:
        self.stats.faults[kind] += 1
        if kind == "html":
            return web.Response(body=HTML_502, status=502, headers=_HTML)
        if kind == "rate_limited":
            headers = {**_JSON, "Retry-After": str(max(1, int(self.config.retry_after_s)))}
            failure = ApiFailure("rate_limited", "rate limit exceeded, retry later", status=429)
            return self._json(429, failure.envelope(), headers)
        return self._failure(ApiFailure("FS_0000", "internal server error, retry later", status=500))

    # -- the handler ----------------------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith(FILES_PREFIX):
            return await self._file(request, path)
        if path.startswith(RESULTS_PREFIX):
            return await self._result(request, path)
        if path.startswith("/_sandbox/jobs/") and request.method == "DELETE":
            return self._delete_job(path.removeprefix("/_sandbox/jobs/"))
        if path.startswith("/_sandbox/"):
            return self._introspect(request.method, path)
        response, after = await self._api(request, path)
        if after == "drop":
            # The request was processed (the job, if any, is stored) but the client never hears.
            self.stats.faults["drop"] += 1
            self.stats.response(None)
            if request.transport is not None:
                request.transport.abort()
            return response  # writing to the aborted transport fails quietly inside aiohttp
        self.stats.response(response.status)
        if after == "slow":
            self.stats.faults["slow"] += 1
            await asyncio.sleep(self.config.slow_ms / 1000)
        return response

    async def _api(self, request: web.BaseRequest, path: str) -> tuple[web.Response, str | None]:
        """The reply to an API request and the after-effect ("drop", "slow" or None) still to apply."""
        route = _route(request.method, path)
        if route is None:
            return self._failure(ApiFailure("resource_error", "resource not found", status=404)), None
        name, project_id, resource_id = route
        body: dict[str, Any] | None = None
        if request.method == "POST":
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self._failure(ApiFailure("GE_0001", "invalid parameter: body too large", status=413)), None
            body = decode_body(raw)
        if name == CREATE_JOB and body is not None:
            reference_id = body.get("reference_id")
            if isinstance(reference_id, str) and reference_id:
                self.stats.per_reference[project_id, reference_id] += 1
        if name != CREATE_JOB and not self.config.faults_on_all:
            return self._operate(request, name, project_id, resource_id, body), None
        decision = self.faults.decide()
        if decision.delay_s > 0:
            await asyncio.sleep(decision.delay_s)
        if decision.refuse is not None:
            return self._refusal(decision.refuse), None
        return self._operate(request, name, project_id, resource_id, body), decision.after

    def _operate(
        self, request: web.BaseRequest, name: str, project_id: str, resource_id: str, body: dict[str, Any] | None
    ) -> web.Response:
        """Authenticate, then run the operation; synchronous, so it is atomic on the event loop."""
        try:
            self._authorize(request.headers.get("x-api-key"), project_id)
            if name == CREATE_JOB:
                data, record = self.state.create_job(
                    project_id, body, self.new_id, self.config.check_attachments, self.clock()
                )
                self.journal.append(record)
                self.stats.jobs_created += 1
            elif name == CREATE_BATCH:
                data, record = self.state.create_batch(project_id, body, self.new_id)
                self.journal.append(record)
                self.stats.batches_created += 1
            elif name == GET_JOB:
                data = self.state.get_job(project_id, resource_id, self.clock(), f"{request.scheme}://{request.host}")
            else:
                token = request.query.get("page_token", "")
                data = self.state.list_batch(project_id, resource_id, token, self.config.page_size, self.clock())
        except ApiFailure as failure:
            if failure.code == "FS_0001":
                self.stats.fs_0001_refusals += 1
            return self._failure(failure)
        return self._json(200, {"data": data, "success": True})

    def _authorize(self, key: str | None, project_id: str) -> None:
        config = self.config
        if key != config.api_key:
            raise ApiFailure("auth-failure", "API key incorrect", status=401)
        if project_id in config.forbidden_projects:
            raise ApiFailure("unauthorized", "the key has no access to this project", status=403)
        if config.projects is not None and project_id not in config.projects:
            raise ApiFailure("resource_error", "project not found", status=404)

    async def _result(self, request: web.BaseRequest, path: str) -> web.Response:
        """A completed job's annotation (keyless, like a signed URL); counted in `result_requests`. Faults apply
        with `faults_on_all`; `result_failure` answers a 403 or an HTML page instead."""
        self.stats.result_requests += 1
        if self.config.faults_on_all:
            decision = self.faults.decide()
            if decision.delay_s > 0:
                await asyncio.sleep(decision.delay_s)
            if decision.refuse is not None:
                return self._refusal(decision.refuse)
        if self.config.result_failure == "403":
            return web.Response(
                status=403, text="<Error><Code>AccessDenied</Code></Error>", content_type="application/xml"
            )
        if self.config.result_failure == "html":
            return web.Response(status=200, body=b"<html><body>Please sign in</body></html>", headers=_HTML)
        project_id, _, job_id = path[len(RESULTS_PREFIX) :].partition("/")
        try:
            document = self.state.result(project_id, job_id, self.clock())
        except ApiFailure as failure:
            return web.Response(body=json.dumps(failure.envelope()).encode(), status=404, headers=_JSON)
        return web.Response(body=json.dumps(document).encode(), status=200, headers=_JSON)

    async def _file(self, request: web.BaseRequest, path: str) -> web.Response:
        """An attachment (sandbox/files.py): keyless, counted in `file_requests`, not in the API's stats."""
        self.stats.file_requests[request.method] += 1
        spec = parse_spec(path, request.query_string)
        if spec is None or request.method not in ("GET", "HEAD"):
            return web.Response(status=404 if spec is None else 405, text="no such file", content_type="text/plain")
        if spec.slow_ms:
            await asyncio.sleep(spec.slow_ms / 1000)
        status, headers, body = file_answer(
            spec, request.method, path, request.query_string, request.headers.get("Range")
        )
        return web.Response(status=status, headers=headers, body=body)

    def _delete_job(self, job_id: str) -> web.Response:
        """DELETE /_sandbox/jobs/:job_id: the job is gone, as if deleted at the platform (neither listed nor
        readable; its reference_id free again). Keyless, never counted in the stats; journaled."""
        record = self.state.delete_job(job_id)
        if record is None:
            failure = ApiFailure("FS_0006", "job not found", status=404)
            return web.Response(body=json.dumps(failure.envelope()).encode(), status=404, headers=_JSON)
        self.journal.append(record)
        return web.Response(body=json.dumps({"deleted": job_id}).encode(), status=200, headers=_JSON)

    def _introspect(self, method: str, path: str) -> web.Response:
        """/_sandbox/* : reliable, keyless, never counted in the stats."""
        if method == "GET" and path == "/_sandbox/stats":
            document: dict[str, Any] = self.stats.snapshot(self.state)
        elif method == "GET" and path == "/_sandbox/jobs":
            document = {"jobs": self.state.job_records()}
        elif method == "GET" and path == "/_sandbox/health":
            document = {"ok": True}
        else:
            failure = ApiFailure("resource_error", "resource not found", status=404)
            return web.Response(body=json.dumps(failure.envelope()).encode(), status=404, headers=_JSON)
        return web.Response(body=json.dumps(document).encode(), status=200, headers=_JSON)
