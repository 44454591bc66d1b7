"""uploader.api.client: requests as sent, envelopes as read, and every failure turned into an ApiResult.

Unit tests inject httpx.MockTransport; the failure modes that only a real socket shows (timeouts, a
connection dropped before the answer, a refused port, a 1 GB body) run against a tiny aiohttp server of
this file's own on 127.0.0.1, in the test's event loop, through the real httpx-aiohttp transport.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import random
import resource
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

import uploader
from uploader.api import client as client_module
from uploader.api.client import ApiClient
from uploader.api.endpoint import check_base_url
from uploader.api.policy import ApiResult, Verdict, classify
from uploader.api.wire import WireError
from uploader.errors import ApiUnreachableError, FatalApiError, UsageError

KEY = "sk-test-7f3c9a1e5b2d4c6f8a0b"
BASE = "https://api.test"
Handler = Callable[[httpx.Request], httpx.Response]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def mock_client(handler: Handler, **kwargs: Any) -> ApiClient:
    return ApiClient(BASE, KEY, transport=httpx.MockTransport(handler), **kwargs)


def call(handler: Handler, method: str = "create_job", *args: Any, **kwargs: Any) -> Any:
    """Run one ApiClient method against a MockTransport handler."""

    async def go() -> Any:
        async with mock_client(handler) as api:
            return await getattr(api, method)(*args, **kwargs)

    return run(go())


def assert_key_free(*things: object) -> None:
    for thing in things:
        assert KEY not in str(thing), thing
        assert KEY not in repr(thing), thing


def envelope(data: dict[str, Any] | None = None, **error: Any) -> dict[str, Any]:
    if error:
        return {"error": {"code": error.get("code"), "message": error.get("message", "m"), "errors": []},
                "success": False}  # fmt: skip
    return {"data": data or {}, "success": True}


# -- requests as sent ------------------------------------------------------------------------------------


def test_create_job_request() -> None:
    seen: list[httpx.Request] = []
    body = '{"reference_id":"r-1",  "work_flow_id":"w", "data":{"image_url":"https://x/é.jpg"},"z":1.50}'

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=envelope({"job_id": "j-1", "reference_id": "r-1"}))

    result = call(handler, "create_job", "proj-1", body)
    assert result == ApiResult(200, True, {"job_id": "j-1", "reference_id": "r-1"}, None, None, None, None)
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "https://api.test/v1/projects/proj-1/jobs"
    assert request.headers["user-agent"] == f"uploader/{uploader.__version__}"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["content-type"] == "application/json"
    assert request.content == body.encode("utf-8")  # byte-for-byte: no re-serialisation
    assert request.headers["content-length"] == str(len(body.encode("utf-8")))


def test_create_job_accepts_bytes() -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(200, json=envelope({"job_id": "j"}))

    call(handler, "create_job", "p", b'{"a": 1}')
    assert seen == [b'{"a": 1}']


def test_other_endpoints_requests() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=envelope({"batch_id": "b-1"}))

    async def go() -> None:
        async with mock_client(handler) as api:
            await api.create_batch("p", "spring run", "from the uploader")
            await api.get_job("p", "job-9")
            await api.list_batch_page("p", "b-1")
            await api.list_batch_page("p", "b-1", "tok/en+=")

    run(go())
    batch, job, page1, page2 = seen
    assert (batch.method, batch.url.path) == ("POST", "/v1/projects/p/batch")
    assert json.loads(batch.content) == {"name": "spring run", "description": "from the uploader"}
    assert (job.method, str(job.url)) == ("GET", "https://api.test/v1/projects/p/jobs/job-9")
    assert (page1.method, str(page1.url)) == ("GET", "https://api.test/v1/projects/p/batch/b-1")
    assert str(page2.url) == "https://api.test/v1/projects/p/batch/b-1?page_token=tok%2Fen%2B%3D"
    assert page2.url.params["page_token"] == "tok/en+="
    for request in seen:
        assert request.headers["x-api-key"] == KEY
        assert request.headers["user-agent"].startswith("uploader/")


def test_ids_cannot_change_the_path() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, json=envelope({"job_id": "j"}))

    async def go() -> None:
        async with mock_client(handler) as api:
            await api.create_job("../admin", "{}")
            await api.get_job("p", "j?x=1#f")

    run(go())
    assert seen == ["/v1/projects/..%2Fadmin/jobs", "/v1/projects/p/jobs/j%3Fx%3D1%23f"]


def test_base_url_path_prefix_is_kept() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=envelope({"job_id": "j"}))

    async def go() -> None:
        async with ApiClient("http://127.0.0.1:9/api/", KEY, transport=httpx.MockTransport(handler)) as api:
            await api.create_job("p", "{}")

    run(go())
    assert seen == ["http://127.0.0.1:9/api/v1/projects/p/jobs"]


# -- envelopes as read -------------------------------------------------------------------------------------

JOB = {"job_id": "j-1", "reference_id": "r", "work_flow_id": "w"}
INVALID = {
    "error": {
        "code": "FS_0003",
        "message": "Invalid data passed",
        "errors": [{"validation_code": "INVALID_IMAGE_LINK", "meta_data": {"fields": ["image_url"]}}],
    },
    "success": False,
}

PARSE = [
    # id, status, body, headers, expected (success, code, data), expected verdict
    ("success", 200, json.dumps(envelope(JOB)), {}, (True, None, JOB), Verdict.SUCCEEDED),
    ("FS_0003 at 400", 400, json.dumps(INVALID), {}, (False, "FS_0003", None), Verdict.PERMANENT),
    ("legacy 200 error", 200, json.dumps(envelope(code="FS_0001")), {}, (False, "FS_0001", None), Verdict.EXISTS),
    ("401 empty body", 401, "", {}, (None, "http_401", None), Verdict.FATAL),
    ("auth-failure", 400, json.dumps(envelope(code="auth-failure")), {}, (False, "auth-failure", None), Verdict.FATAL),
    (
        "HTML 502",
        502,
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
        {},
        (None, "http_502", None),
        Verdict.RETRYABLE,
    ),
    ("200 not JSON", 200, "OK", {}, (None, "not_json", None), Verdict.RETRYABLE),
    ("200 empty", 200, "", {}, (None, "not_json", None), Verdict.RETRYABLE),
    ("JSON but not an envelope", 200, '{"job_id": "j"}', {}, (None, "not_json", None), Verdict.RETRYABLE),
    ("JSON list", 200, "[1, 2]", {}, (None, "not_json", None), Verdict.RETRYABLE),
    (
        "success as a string",
        200,
        '{"success": "true", "data": {"job_id": "j"}}',
        {},
        (None, "not_json", None),
        Verdict.RETRYABLE,
    ),
    (
        "429 with Retry-After",
        429,
        '{"message": "slow down"}',
        {"Retry-After": "7"},
        (None, "http_429", None),
        Verdict.THROTTLED,
    ),
    ("500 FS_0000", 500, json.dumps(envelope(code="FS_0000")), {}, (False, "FS_0000", None), Verdict.RETRYABLE),
    (
        "error code not a string",
        400,
        '{"success": false, "error": {"code": 42}}',
        {},
        (False, "42", None),
        Verdict.PERMANENT,
    ),
    ("error as a string", 400, '{"success": false, "error": "nope"}', {}, (False, None, None), Verdict.PERMANENT),
    ("data not a dict", 200, '{"success": true, "data": [1]}', {}, (True, None, None), Verdict.PROTOCOL),
    ("invalid UTF-8", 200, b"\xff\xfe{", {}, (None, "not_json", None), Verdict.RETRYABLE),
]


@pytest.mark.parametrize(("status", "body", "headers", "expected", "verdict"), [p[1:] for p in PARSE],
                         ids=[p[0] for p in PARSE])  # fmt: skip
def test_envelope_parsing(
    status: int, body: str | bytes, headers: dict[str, str], expected: tuple[Any, ...], verdict: Verdict
) -> None:
    content = body.encode() if isinstance(body, str) else body
    result = call(lambda request: httpx.Response(status, content=content, headers=headers), "create_job", "p", "{}")
    assert (result.success, result.code, result.data) == expected
    assert result.http_status == status
    assert classify(result).verdict is verdict


def test_error_details_and_retry_after_are_kept() -> None:
    result = call(lambda r: httpx.Response(400, json=INVALID, headers={"Retry-After": "3"}), "create_job", "p", "{}")
    assert result.message == "Invalid data passed"
    assert result.errors == INVALID["error"]["errors"]  # type: ignore[index]
    assert result.retry_after == "3"


def test_non_json_body_gives_a_short_clean_snippet() -> None:
    page = "<html><head><style>x{}</style></head><body>\n<h1>502   Bad\tGateway</h1>\x00\x1b[31m" + "y" * 5000
    result = call(lambda r: httpx.Response(502, text=page), "create_job", "p", "{}")
    assert result.code == "http_502"
    assert result.message.startswith("HTTP 502, not an API answer: x{} 502 Bad Gateway")
    assert len(result.message) <= 200
    assert "<" not in result.message and "\x00" not in result.message and "\x1b" not in result.message


def test_compressed_answer_is_decoded() -> None:
    body = gzip.compress(json.dumps(envelope({"job_id": "j-gz"})).encode())
    result = call(lambda r: httpx.Response(200, content=body, headers={"Content-Encoding": "gzip"}),
                  "create_job", "p", "{}")  # fmt: skip
    assert result.success and result.data == {"job_id": "j-gz"}


def test_declared_large_body_is_not_read() -> None:
    async def go() -> ApiResult:
        stream_read = False

        class Endless(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                nonlocal stream_read
                stream_read = True
                yield b"x"

        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, headers={"Content-Length": str(1 << 30)}, stream=Endless())

        async with mock_client(handler, max_body_bytes=1000) as api:
            result = await api.create_job("p", "{}")
        assert not stream_read
        return result

    assert run(go()).code == "body_too_large"


def test_body_limit_counts_every_chunk() -> None:
    class Chunks(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b"x" * 100

    async def go(limit: int) -> ApiResult:
        async with mock_client(lambda r: httpx.Response(200, stream=Chunks()), max_body_bytes=limit) as api:
            return await api.create_job("p", "{}")

    assert run(go(9_999)).code == "body_too_large"
    assert run(go(10_000)).code == "not_json"  # exactly at the limit is read


# -- transport failures as codes (MockTransport raising what other transports raise) -------------------------


def _raiser(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


def _tls_failure() -> Exception:
    try:
        raise ssl.SSLCertVerificationError(1, "certificate verify failed")
    except ssl.SSLError as cause:
        exc = httpx.ConnectError("TLS")
        exc.__cause__ = cause
        return exc


@pytest.mark.parametrize(
    ("exc", "code", "verdict"),
    [
        (httpx.ConnectTimeout(f"connect timed out x-api-key: {KEY}"), "timeout", Verdict.RETRYABLE),
        (httpx.ReadTimeout("read timed out"), "timeout", Verdict.RETRYABLE),
        (httpx.PoolTimeout("pool"), "timeout", Verdict.RETRYABLE),
        (httpx.ConnectError(f"refused {KEY}"), "connect_error", Verdict.RETRYABLE),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), "connection_closed",
         Verdict.RETRYABLE),
        (httpx.ReadError("reset"), "connection_closed", Verdict.RETRYABLE),
        (httpx.WriteError("broken pipe"), "connection_closed", Verdict.RETRYABLE),
        (httpx.LocalProtocolError("bad"), "protocol_error", Verdict.RETRYABLE),
        (httpx.UnsupportedProtocol("gopher"), "transport_error", Verdict.RETRYABLE),
        (ConnectionResetError(104, "reset"), "connection_closed", Verdict.RETRYABLE),
        (ConnectionRefusedError(111, "refused"), "connect_error", Verdict.RETRYABLE),
        (TimeoutError(), "timeout", Verdict.RETRYABLE),
        (_tls_failure(), "tls_error", Verdict.FATAL),
    ],
)  # fmt: skip
def test_transport_exceptions_become_results(exc: Exception, code: str, verdict: Verdict) -> None:
    result = call(_raiser(exc), "create_job", "p", "{}")
    assert (result.http_status, result.success, result.code) == (None, None, code)
    assert classify(result).verdict is verdict
    assert result.message and len(result.message) <= 200
    assert_key_free(result)


def test_programming_errors_are_not_hidden() -> None:
    with pytest.raises(ZeroDivisionError):
        call(_raiser(ZeroDivisionError()), "create_job", "p", "{}")


# -- find_job_ids ------------------------------------------------------------------------------------------


def page(jobs: list[tuple[str, str]], token: str) -> dict[str, Any]:
    return envelope({"id": "b-1", "jobs": [{"id": j, "reference_id": r, "status": "created"} for r, j in jobs],
                     "next_page_token": token})  # fmt: skip


PAGES = {
    "": page([("r1", "j1"), ("r2", "j2")], "t2"),
    "t2": page([("r3", "j3"), ("r4", "j4")], "t3"),
    "t3": page([("r5", "j5")], ""),
}


class Pager:
    """A MockTransport handler serving PAGES, with scripted failures per request number."""

    def __init__(self, pages: dict[str, dict[str, Any]] = PAGES, failures: dict[int, httpx.Response] | None = None):
        self.pages, self.failures = pages, failures or {}
        self.tokens: list[str] = []
        self.sleeps: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/projects/p/batch/b-1"
        self.tokens.append(request.url.params.get("page_token", ""))
        failure = self.failures.get(len(self.tokens))
        return failure if failure is not None else httpx.Response(200, json=self.pages[self.tokens[-1]])

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def find(self, refs: list[str], **kwargs: Any) -> dict[str, str]:
        async def go() -> dict[str, str]:
            async with mock_client(self) as api:
                return await api.find_job_ids("p", "b-1", refs, sleep=self.sleep, rng=random.Random(0), **kwargs)

        return run(go())


def test_find_job_ids_pages_through_the_batch() -> None:
    pager = Pager()
    assert pager.find(["r1", "r5", "missing"]) == {"r1": "j1", "r5": "j5"}
    assert pager.tokens == ["", "t2", "t3"]
    assert pager.sleeps == []


def test_find_job_ids_stops_once_all_are_found() -> None:
    pager = Pager()
    assert pager.find(["r2", "r1"]) == {"r1": "j1", "r2": "j2"}
    assert pager.tokens == [""]
    pager = Pager()
    assert pager.find(["r3"]) == {"r3": "j3"}
    assert pager.tokens == ["", "t2"]


def test_find_job_ids_nothing_wanted_sends_nothing() -> None:
    pager = Pager()
    assert pager.find([]) == {}
    assert pager.tokens == []


def test_find_job_ids_retries_a_failed_page() -> None:
    html = httpx.Response(500, text="<h1>oops</h1>")
    pager = Pager(failures={2: html, 3: httpx.Response(429, headers={"Retry-After": "4"})})
    assert pager.find(["r5"]) == {"r5": "j5"}
    assert pager.tokens == ["", "t2", "t2", "t2", "t3"]
    assert len(pager.sleeps) == 2
    assert 0 <= pager.sleeps[0] <= 0.5  # backoff after the 500 (attempt 1)
    assert 4.0 <= pager.sleeps[1] <= 5.0  # the 429's Retry-After, plus the backoff of attempt 2


def test_find_job_ids_gives_up_after_max_attempts() -> None:
    down = httpx.Response(503, text="down")
    pager = Pager(failures={n: down for n in range(2, 10)})
    with pytest.raises(ApiUnreachableError) as info:
        pager.find(["r5"], max_attempts=3)
    assert pager.tokens == ["", "t2", "t2", "t2"]
    assert len(pager.sleeps) == 2  # no sleep after the last attempt
    assert "3 attempts" in str(info.value) and "http_503" in str(info.value)


def test_find_job_ids_fatal_raises() -> None:
    refused = httpx.Response(400, json=envelope(code="unauthorized", message=f"key {KEY} may not read p"))
    pager = Pager(failures={2: refused})
    with pytest.raises(FatalApiError) as info:
        pager.find(["r5"])
    assert info.value.code == "unauthorized" and info.value.http_status == 400
    assert pager.sleeps == []
    assert_key_free(info.value, info.value.args)


def test_find_job_ids_401_raises_fatal() -> None:
    with pytest.raises(FatalApiError):
        Pager(failures={1: httpx.Response(401)}).find(["r1"])


def test_find_job_ids_permanent_answer_is_not_retried() -> None:
    pager = Pager(failures={1: httpx.Response(400, json=envelope(code="GE_0001", message="batch_id not a UUID"))})
    with pytest.raises(ApiUnreachableError, match="GE_0001"):
        pager.find(["r1"])
    assert pager.tokens == [""]


def test_batch_of_job_retries_like_a_listing_page() -> None:
    """GET job (how the default batch's id is learnt) goes through the same read loop as a listing page:
    a 429 and a 500 are retried with the same delays, a refused key raises FatalApiError."""
    answers = [
        httpx.Response(429, headers={"Retry-After": "4"}),
        httpx.Response(500, text="<h1>oops</h1>"),
        httpx.Response(200, json=envelope({"id": "j1", "batch_id": "b-9", "status": "created"})),
    ]
    paths: list[str] = []
    sleeps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return answers[len(paths) - 1]

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def go() -> str:
        async with mock_client(handler) as api:
            return await api.batch_of_job("p", "j1", sleep=sleep, rng=random.Random(0))

    assert run(go()) == "b-9"
    assert paths == ["/v1/projects/p/jobs/j1"] * 3
    assert 4.0 <= sleeps[0] <= 4.5 and 0 <= sleeps[1] <= 1.0  # Retry-After + backoff 1; backoff 2
    answers[:] = [httpx.Response(401)]
    paths.clear()
    with pytest.raises(FatalApiError):
        run(go())


def test_find_job_ids_survives_a_page_token_loop() -> None:
    pages = {"": page([("r1", "j1")], "t2"), "t2": page([("r2", "j2")], "t2")}
    pager = Pager(pages)
    assert pager.find(["r1", "r9"]) == {"r1": "j1"}
    assert pager.tokens == ["", "t2"]


def test_find_job_ids_tolerates_odd_pages() -> None:
    pages = {
        "": envelope({"jobs": [None, "x", {"reference_id": "r1"}, {"reference_id": ["r2"], "id": "j"}],
                      "next_page_token": "t2"}),
        "t2": envelope({"jobs": None, "next_page_token": "t3"}),
        "t3": envelope({"jobs": [{"reference_id": "r1", "job_id": "j1"}, {"reference_id": 7, "id": 70}]}),
    }  # fmt: skip
    assert Pager(pages).find(["r1", "7", "r2"]) == {"r1": "j1", "7": "70"}


def test_find_job_ids_takes_only_usable_job_ids() -> None:
    """A listing entry is validated like a creation answer: its id a non-empty string or an integer. An
    object, `true`, a float, a blank or a 65-character id is no id (never recorded as its Python text);
    a reference_id `true` is no reference_id."""
    jobs = [
        {"reference_id": "r1", "id": True},
        {"reference_id": "r2", "id": {"id": "j2"}},
        {"reference_id": "r3", "id": 3.0},
        {"reference_id": "r4", "id": "  "},
        {"reference_id": "r5", "id": "j" * 65},
        {"reference_id": "r6", "id": [1]},
        {"reference_id": True, "id": "jt"},
        {"reference_id": "r7", "id": 7},
        {"reference_id": "r8", "id": None, "job_id": "j8"},
        {"reference_id": "r9", "id": False, "job_id": "j9"},
    ]
    found = Pager({"": envelope({"jobs": jobs, "next_page_token": ""})}).find(
        ["r1", "r2", "r3", "r4", "r5", "r6", "True", "r7", "r8", "r9"]
    )
    assert found == {"r7": "7", "r8": "j8", "r9": "j9"}


# -- construction, the key, base URLs ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "two words", "line\nbreak", "tab\t", "ключ"])
def test_unusable_api_key_is_refused_without_echo(key: str) -> None:
    with pytest.raises(UsageError) as info:
        ApiClient(BASE, key)
    if key:
        assert key not in str(info.value)


def test_repr_hides_the_key() -> None:
    async def go() -> None:
        async with ApiClient(BASE, KEY) as api:
            assert_key_free(api, vars(api).get("_base_url"))
            assert "api.test" in repr(api)

    run(go())


def test_close_closes_the_transport() -> None:
    closed: list[bool] = []

    class Transport(httpx.MockTransport):
        async def aclose(self) -> None:
            closed.append(True)

    async def go() -> None:
        async with ApiClient(BASE, KEY, transport=Transport(lambda r: httpx.Response(200))):
            pass

    run(go())
    assert closed == [True]


@pytest.mark.parametrize(
    ("url", "allow_http", "expected"),
    [
        ("https://api.playment.io", False, "https://api.playment.io"),
        ("https://api.playment.io/", False, "https://api.playment.io"),
        ("  https://api.playment.io//  ", False, "https://api.playment.io"),
        ("HTTPS://API.Playment.IO/prefix/", False, "https://api.playment.io/prefix"),
        ("https://api.playment.io:8443/v", False, "https://api.playment.io:8443/v"),
        ("http://127.0.0.1:8080/", False, "http://127.0.0.1:8080"),
        ("http://127.9.8.7", False, "http://127.9.8.7"),
        ("http://localhost:5000", False, "http://localhost:5000"),
        ("http://LOCALHOST", False, "http://localhost"),
        ("http://[::1]:8080/", False, "http://[::1]:8080"),
        ("http://api.internal:8080", True, "http://api.internal:8080"),
        ("http://10.0.0.5", True, "http://10.0.0.5"),
        ("http://api.playment.io", False, UsageError),
        ("http://10.0.0.5", False, UsageError),
        ("http://0.0.0.0:8080", False, UsageError),
        ("http://localhost.evil.example", False, UsageError),
        ("http://127.0.0.1.nip.io", False, UsageError),
        ("ftp://api.playment.io", True, UsageError),
        ("file:///etc/passwd", True, UsageError),
        ("javascript:alert(1)", True, UsageError),
        ("api.playment.io", False, UsageError),
        ("//api.playment.io", False, UsageError),
        ("", False, UsageError),
        ("https://", False, UsageError),
        ("https://user:secret@api.playment.io", False, UsageError),
        ("https://token@api.playment.io", False, UsageError),
        ("https://api.playment.io/?key=1", False, UsageError),
        ("https://api.playment.io/#frag", False, UsageError),
        ("https://api.playment.io:99999", False, UsageError),
        ("https://api.playment.io:port", False, UsageError),
        ("https://[::1", False, UsageError),
    ],
)
def test_check_base_url(url: str, allow_http: bool, expected: str | type[Exception]) -> None:
    if isinstance(expected, str):
        assert check_base_url(url, allow_http) == expected
    else:
        with pytest.raises(expected):
            check_base_url(url, allow_http)


def test_check_base_url_does_not_echo_credentials() -> None:
    with pytest.raises(UsageError) as info:
        check_base_url("https://user:hunter2@api.playment.io")
    assert "hunter2" not in str(info.value)


def test_all_is_complete() -> None:
    defined = {n for n, v in vars(client_module).items()
               if not n.startswith("_") and getattr(v, "__module__", "") == client_module.__name__}  # fmt: skip
    assert defined == set(client_module.__all__)


# -- a real local server, through the real aiohttp transport ---------------------------------------------------


@asynccontextmanager
async def serve(routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]) -> AsyncIterator[str]:
    """An aiohttp server on 127.0.0.1 (port 0) in this loop; routes map a name to a job-POST handler."""
    app = web.Application()
    for name, handler in routes.items():
        app.router.add_post(f"/{name}/v1/projects/{{project}}/jobs", handler)
        app.router.add_get(f"/{name}/v1/projects/{{project}}/batch/{{batch}}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _stall(request: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.json_response(envelope({"job_id": "late"}))


async def _abort(request: web.Request) -> web.Response:
    await request.read()
    assert request.transport is not None
    request.transport.abort()  # RST: no status line ever
    await asyncio.sleep(0.1)
    return web.Response()


async def _close(request: web.Request) -> web.Response:
    await request.read()
    assert request.transport is not None
    request.transport.close()  # FIN before any answer
    await asyncio.sleep(0.1)
    return web.Response()


async def _drip(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    try:
        for _ in range(600):
            await response.write(b" ")  # one byte every 50 ms: never a read timeout
            await asyncio.sleep(0.05)
    except (ConnectionError, asyncio.CancelledError):
        pass
    return response


async def _html_502(request: web.Request) -> web.Response:
    echoed = request.headers.get("x-api-key", "")
    page = f"<html><head><title>502</title></head><body><h1>502 Bad Gateway</h1><p>key {echoed}</p></body></html>"
    return web.Response(status=502, text=page, content_type="text/html")


async def _echo_key_json(request: web.Request) -> web.Response:
    echoed = request.headers.get("x-api-key", "")
    body = envelope(code="auth-failure", message=f"API key {echoed} is incorrect")
    body["error"]["errors"] = [{"key": echoed}]
    return web.json_response(body, status=400)


async def _empty_401(request: web.Request) -> web.Response:
    return web.Response(status=401)


async def _legacy_exists(request: web.Request) -> web.Response:
    return web.json_response(envelope(code="FS_0001", message="reference_id already exists"), status=200)


@pytest.mark.timeout(30)
def test_real_server_success_and_request_as_sent() -> None:
    seen: list[tuple[dict[str, str], bytes, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read(), request.path))
        return web.json_response(envelope({"job_id": "j-1"}), status=201)

    body = '{"reference_id": "r-1", "data": {"image_url": "https://x/ü.png"}}'

    async def go() -> ApiResult:
        async with serve({"ok": record}) as base, ApiClient(f"{base}/ok", KEY) as api:
            return await api.create_job("p-1", body)

    result = run(go())
    assert result == ApiResult(201, True, {"job_id": "j-1"}, None, None, None, None)
    ((headers, received, path),) = seen
    assert path == "/ok/v1/projects/p-1/jobs"
    assert received == body.encode()
    assert headers["User-Agent"] == f"uploader/{uploader.__version__}"
    assert headers["x-api-key"] == KEY
    assert headers["Content-Type"] == "application/json"


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_real_server_failure_modes_become_results() -> None:
    """Each failure mode through the real transport: its code, how fast, and never the key."""
    routes = {
        "stall": _stall, "abort": _abort, "close": _close, "drip": _drip, "html": _html_502,
        "echo": _echo_key_json, "e401": _empty_401, "legacy": _legacy_exists,
    }  # fmt: skip
    expected = {
        # name: (http_status, code, verdict, most seconds it may take)
        "stall": (None, "timeout", Verdict.RETRYABLE, 2.0),  # timeout 0.5 s
        "abort": (None, "connection_closed", Verdict.RETRYABLE, 1.0),
        "close": (None, "connection_closed", Verdict.RETRYABLE, 1.0),
        "drip": (None, "timeout", Verdict.RETRYABLE, 2.0),  # the whole-exchange deadline, not a read timeout
        "html": (502, "http_502", Verdict.RETRYABLE, 1.0),
        "echo": (400, "auth-failure", Verdict.FATAL, 1.0),
        "e401": (401, "http_401", Verdict.FATAL, 1.0),
        "legacy": (200, "FS_0001", Verdict.EXISTS, 1.0),
    }

    async def go() -> dict[str, tuple[ApiResult, float]]:
        out = {}
        async with serve(routes) as base:
            for name in routes:
                async with ApiClient(f"{base}/{name}", KEY, timeout=0.5) as api:
                    started = time.monotonic()
                    result = await api.create_job("p", '{"reference_id": "r"}')
                    out[name] = (result, time.monotonic() - started)
        return out

    results = run(go())
    for name, (result, seconds) in results.items():
        status, code, verdict, most = expected[name]
        assert (name, result.code) == (name, code), result
        assert result.http_status == status, name
        assert classify(result).verdict is verdict, name
        assert seconds < most, (name, seconds)
        assert seconds >= (0.4 if code == "timeout" else 0.0), (name, seconds)
        assert_key_free(result)
    assert "[redacted]" in results["html"][0].message
    assert "<" not in results["html"][0].message
    assert results["echo"][0].message == "API key [redacted] is incorrect"


@pytest.mark.timeout(30)
def test_real_server_refused_connection() -> None:
    with socket.socket() as sock:  # bound, never listening: the kernel refuses connections to it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

        async def go() -> ApiResult:
            async with ApiClient(f"http://127.0.0.1:{port}", KEY, timeout=2) as api:
                return await api.create_job("p", "{}")

        result = run(go())
    assert (result.http_status, result.code) == (None, "connect_error")
    assert classify(result).verdict is Verdict.RETRYABLE
    assert_key_free(result)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_real_server_huge_body_is_cut_off() -> None:
    """A server streaming 1 GB: the client stops at max_body_bytes, fast, without holding the body."""
    sent = [0]
    chunk = b"x" * (64 * 1024)

    async def gigabyte(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            while sent[0] < 1 << 30:
                await response.write(chunk)
                sent[0] += len(chunk)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    async def declared(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 1 << 30
        await response.prepare(request)
        try:
            await response.write(chunk)
            await asyncio.sleep(5)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    async def go() -> list[tuple[ApiResult, float]]:
        out = []
        async with serve({"gb": gigabyte, "declared": declared}) as base:
            for name in ("gb", "declared"):
                async with ApiClient(f"{base}/{name}", KEY, max_body_bytes=1 << 20, timeout=10) as api:
                    started = time.monotonic()
                    out.append((await api.create_job("p", "{}"), time.monotonic() - started))
        return out

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    (streamed, seconds), (declared_result, declared_seconds) = run(go())
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert (streamed.http_status, streamed.code) == (200, "body_too_large")
    assert (declared_result.http_status, declared_result.code) == (200, "body_too_large")
    assert classify(streamed).verdict is Verdict.RETRYABLE
    assert seconds < 3 and declared_seconds < 3
    assert sent[0] < 64 << 20, sent[0]  # the server was cut off long before 1 GB
    assert grown_mib < 100, grown_mib
    assert_key_free(streamed, declared_result)


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_real_server_compressed_answer_is_decoded_and_counted_decoded() -> None:
    """A server that gzips anyway: the answer is read decoded, and its decoded size is what max_body_bytes
    bounds (a small compressed body may expand past it)."""
    small = gzip.compress(json.dumps(envelope({"job_id": "j-gz"})).encode())
    bomb = gzip.compress(json.dumps({"success": True, "data": {"pad": "x" * 100_000}}).encode())

    def gzipped(body: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            await request.read()
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            return web.Response(body=body, headers=headers)

        return handler

    async def go() -> list[ApiResult]:
        async with serve({"small": gzipped(small), "bomb": gzipped(bomb)}) as base:
            out = []
            for name in ("small", "bomb"):
                async with ApiClient(f"{base}/{name}", KEY, max_body_bytes=10_000) as api:
                    out.append(await api.create_job("p", "{}"))
            return out

    decoded, expanded = run(go())
    assert len(bomb) < 10_000
    assert (decoded.success, decoded.data) == (True, {"job_id": "j-gz"})
    assert (expanded.http_status, expanded.code) == (200, "body_too_large")


def test_real_server_pool_is_sized_to_the_concurrency() -> None:
    active = [0, 0]  # now, most

    async def slow(request: web.Request) -> web.Response:
        active[0] += 1
        active[1] = max(active)
        await asyncio.sleep(0.1)
        active[0] -= 1
        return web.json_response(envelope({"job_id": "j"}))

    async def go() -> list[ApiResult]:
        async with serve({"slow": slow}) as base, ApiClient(f"{base}/slow", KEY, concurrency=3) as api:
            return await asyncio.gather(*(api.create_job("p", "{}") for _ in range(12)))

    assert all(r.success for r in run(go()))
    assert active[1] == 3


@pytest.mark.timeout(30)
def test_real_server_find_job_ids() -> None:
    tokens: list[str] = []

    async def pages(request: web.Request) -> web.Response:
        token = request.query.get("page_token", "")
        tokens.append(token)
        if token == "t2" and tokens.count("t2") == 1:
            return web.Response(status=504, text="<html>gateway timeout</html>", content_type="text/html")
        return web.json_response(PAGES[token])

    async def go() -> dict[str, str]:
        async def no_sleep(seconds: float) -> None:
            pass

        async with serve({"api": pages}) as base, ApiClient(f"{base}/api", KEY) as api:
            return await api.find_job_ids("p", "b-1", ["r4", "r5"], sleep=no_sleep)

    assert run(go()) == {"r4": "j4", "r5": "j5"}
    assert tokens == ["", "t2", "t2", "t3"]


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_real_server_read_timeout_and_whole_exchange_deadline() -> None:
    """A stalled server trips the read timeout; a dripping one only the deadline on the whole exchange."""

    async def go() -> dict[str, tuple[ApiResult, float]]:
        out = {}
        async with serve({"stall": _stall, "drip": _drip}) as base:
            for name in ("stall", "drip"):
                async with ApiClient(f"{base}/{name}", KEY, timeout=0.4, total_timeout=1.2) as api:
                    started = time.monotonic()
                    result = await api.create_job("p", "{}")
                    out[name] = (result, time.monotonic() - started)
        return out

    results = run(go())
    stalled, stalled_seconds = results["stall"]
    dripped, dripped_seconds = results["drip"]
    assert stalled.code == dripped.code == "timeout"
    assert 0.3 < stalled_seconds < 1.0 and "timeout 0.4s" in stalled.message
    assert 1.1 < dripped_seconds < 2.0 and dripped.message == "no complete answer within 1.2s"


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_real_server_what_httpx_aiohttp_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin down what surfaces through httpx-aiohttp (an injected AiohttpTransport), since its mapping is
    coarse, and through the default transport (`wire`: the API's requests and downloads).

    httpx-aiohttp maps every aiohttp ClientConnectionError to httpx.ConnectTimeout (a dropped connection and
    a refused port included) and chains the aiohttp error as __cause__, which is what client.py reads; the
    default transport raises WireError with the code itself. If an upgrade changes this, this test says where
    to look.
    """
    from httpx_aiohttp import AiohttpTransport

    seen: dict[str, tuple[type[BaseException], type[BaseException] | None]] = {}
    direct: dict[str, str] = {}
    downloads: dict[str, str] = {}
    original = client_module._decisive
    current = [""]

    def spy(exc: BaseException) -> BaseException:
        if current[0].startswith("direct-"):
            assert isinstance(exc, WireError)
            direct[current[0].removeprefix("direct-")] = exc.code
        elif current[0].startswith("download-"):
            assert isinstance(exc, WireError)
            downloads[current[0].removeprefix("download-")] = exc.code
        else:
            seen[current[0]] = (type(exc), type(exc.__cause__) if exc.__cause__ else None)
        return original(exc)

    monkeypatch.setattr(client_module, "_decisive", spy)

    async def go(refused_port: int) -> None:
        async with serve({"stall": _stall, "abort": _abort, "close": _close}) as base:
            for name in ("stall", "abort", "close", "refused"):
                url = f"http://127.0.0.1:{refused_port}" if name == "refused" else f"{base}/{name}"
                async with ApiClient(url, KEY, timeout=0.4, total_timeout=5) as api:
                    current[0] = "direct-" + name
                    await api.create_job("p", "{}")
                    current[0] = "download-" + name
                    await api.download(f"{url}/v1/projects/p/batch/b", io.BytesIO(), max_bytes=100)
                async with ApiClient(url, KEY, timeout=0.4, total_timeout=5, transport=AiohttpTransport()) as api:
                    current[0] = name
                    await api.download(f"{url}/v1/projects/p/batch/b", io.BytesIO(), max_bytes=100)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        run(go(sock.getsockname()[1]))

    expected = {
        "stall": "timeout",
        "abort": "connection_closed",
        "close": "connection_closed",
        "refused": "connect_error",
    }
    assert direct == downloads == expected

    assert issubclass(seen["stall"][0], httpx.TimeoutException)
    assert seen["stall"][1] is not None and issubclass(seen["stall"][1], aiohttp.ServerTimeoutError)
    for name in ("abort", "close"):
        assert issubclass(seen[name][0], httpx.TransportError), seen[name]
        assert seen[name][1] is aiohttp.ServerDisconnectedError, seen[name]
    assert issubclass(seen["refused"][0], httpx.TransportError)
    assert seen["refused"][1] is not None and issubclass(seen["refused"][1], aiohttp.ClientConnectorError)


# -- result downloads over real HTTP: the direct aiohttp path beside the httpx path ---------------------------

_RESULT = json.dumps({"annotations": [{"label": "car", "box": [1, 2, 3, 4]}] * 50}).encode()


async def _result_ok(request: web.Request) -> web.Response:
    return web.Response(body=_RESULT, content_type="application/json")


async def _result_gzip(request: web.Request) -> web.Response:
    return web.Response(
        body=gzip.compress(_RESULT), headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )


async def _result_403(request: web.Request) -> web.Response:
    return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>", content_type="application/xml")


async def _result_html(request: web.Request) -> web.Response:
    return web.Response(text="<html><body>Sign in</body></html>", content_type="text/html")


async def _result_big(request: web.Request) -> web.Response:
    return web.Response(body=b"[" + b"0," * 5000 + b"0]", content_type="application/json")


async def _result_503(request: web.Request) -> web.Response:
    return web.Response(status=503, text="busy", headers={"Retry-After": "7"})


async def _result_redirect(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/ok"})


async def _result_truncated(request: web.Request) -> web.StreamResponse:
    """Content-Length promises more than is sent, then the connection closes mid-body."""
    response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "10000"})
    await response.prepare(request)
    await response.write(b'{"annotations": [')
    assert request.transport is not None
    request.transport.close()
    return response


@asynccontextmanager
async def serve_results() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An aiohttp server of result URLs (`/<name>`), and the headers of each GET it answered."""
    seen: list[dict[str, str]] = []
    handlers = {
        "ok": _result_ok,
        "gzip": _result_gzip,
        "403": _result_403,
        "html": _result_html,
        "big": _result_big,
        "503": _result_503,
        "redirect": _result_redirect,
        "truncated": _result_truncated,
    }

    def route(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        async def answer(request: web.Request) -> web.StreamResponse:
            seen.append({"path": request.path, **request.headers})
            return await handler(request)

        return answer

    app = web.Application()
    for name, handler in handlers.items():
        app.router.add_get(f"/{name}", route(handler))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


@pytest.mark.timeout(30)
def test_real_server_downloads_take_the_direct_path_and_answer_as_the_httpx_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the default transport a download goes over the wire directly (never through the httpx interface);
    each edge case (403, an HTML page, too large, 5xx, a redirect, a body cut short, gzip) gives the same
    ApiResult and the same bytes as through the httpx interface (the httpx-aiohttp adapter, injected), the
    words of a body cut short aside."""
    from httpx_aiohttp import AiohttpTransport

    through: list[str] = []
    original = ApiClient._download_httpx

    async def spy(self: ApiClient, url: str, *args: Any) -> ApiResult:
        through.append(url.rsplit("/", 1)[-1])
        return await original(self, url, *args)

    monkeypatch.setattr(ApiClient, "_download_httpx", spy)

    names = ["ok", "gzip", "403", "html", "big", "503", "redirect", "truncated"]

    async def go() -> tuple[dict[str, tuple[ApiResult, bytes]], dict[str, tuple[ApiResult, bytes]], list[Any]]:
        out: dict[str, dict[str, tuple[ApiResult, bytes]]] = {"direct": {}, "httpx": {}}
        async with serve_results() as (base, seen):
            for path in out:
                transport = AiohttpTransport() if path == "httpx" else None
                async with ApiClient(base, KEY, timeout=5, transport=transport) as api:
                    assert (api._pool is None) is (path == "httpx")
                    for name in names:
                        sink = io.BytesIO(b"left over from a try before")
                        result = await api.download(f"{base}/{name}", sink, max_bytes=4000)
                        out[path][name] = (result, sink.getvalue())
            return out["direct"], out["httpx"], seen

    direct, through_httpx, seen = run(go())

    assert through == names  # the injected transport's downloads only
    words = {
        name: (result.message, other.message)
        for name, ((result, _), (other, _)) in zip(names, zip(direct.values(), through_httpx.values()))
    }
    assert "before the whole body arrived" in words["truncated"][0]
    assert {n: (replace(r, message=""), b) for n, (r, b) in direct.items()} == {
        n: (replace(r, message=""), b) for n, (r, b) in through_httpx.items()
    }
    assert all(a == b for name, (a, b) in words.items() if name != "truncated")
    ok, ok_bytes = direct["ok"]
    assert ok.success is True and ok.http_status == 200 and ok_bytes == _RESULT
    assert ok.data == {"sha256": hashlib.sha256(_RESULT).hexdigest(), "size": len(_RESULT)}
    assert direct["gzip"] == direct["ok"]  # decoded; counted and hashed once inflated
    for name in ("403", "html", "redirect"):
        result, _ = direct[name]
        assert (result.http_status, result.success, result.code) == (None, False, "bad_result"), name
        assert classify(result, expect="sha256").verdict is Verdict.PERMANENT
    assert "HTTP 403" in direct["403"][0].message and "not JSON (text/html)" in direct["html"][0].message
    assert "HTTP 302" in direct["redirect"][0].message
    big = direct["big"][0]
    assert (big.code, big.success) == ("body_too_large", False) and "4000 bytes" in big.message
    busy = direct["503"][0]
    assert (busy.http_status, busy.code, busy.retry_after) == (503, "http_503", "7")
    assert classify(busy, expect="sha256").verdict is Verdict.RETRYABLE
    cut = direct["truncated"][0]
    assert (cut.http_status, cut.code) == (None, "connection_closed")
    assert classify(cut, expect="sha256").verdict is Verdict.RETRYABLE
    # The redirect was not followed (one GET per download on each path), and the key is never sent.
    assert [s["path"] for s in seen] == [f"/{n}" for n in names] * 2
    assert all("x-api-key" not in {k.lower() for k in s} for s in seen)


def test_the_warm_up_hands_its_tls_context_to_the_first_client_only() -> None:
    """`run` starts uploader.api.warm before it opens the ledger: the first client takes the context made on
    that thread (CA certificates loaded, verifying); a later client makes its own, from the environment as it
    is then."""
    from uploader.api import warm

    assert warm.tls_context() is None  # nothing warmed up: every client makes its own
    warm.warm_up()
    warm.settle_warm_up()
    assert warm._slot is not None
    made = warm._slot.context
    assert isinstance(made, ssl.SSLContext)
    assert made.verify_mode == ssl.CERT_REQUIRED and made.check_hostname
    assert made.cert_store_stats()["x509_ca"] > 0
    first, second = ApiClient(BASE, KEY), ApiClient(BASE, KEY)
    assert first._pool is not None and second._pool is not None
    assert first._pool._ssl is made and second._pool._ssl is not made
    assert warm.tls_context() is None


# -- one log record per request --------------------------------------------------------------------------


def test_each_request_but_a_job_creation_logs_one_record_with_its_endpoint_and_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """create_batch, get_job, a listing page and a download each log one `uploader.api` record (DEBUG for a
    success, INFO otherwise) naming the endpoint and ids; a job creation logs none here (uploader.send logs it
    with its row). A download's record names the host only: a signed URL's query is a credential."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "store.test":
            return httpx.Response(200, content=b'{"a": 1}')
        if request.url.path.endswith("/batch/b-9"):
            return httpx.Response(503, json={"success": False, "error": {"code": "FS_0000", "message": "busy"}})
        return httpx.Response(200, json={"success": True, "data": {"job_id": "j-1", "batch_id": "b-1"}})

    async def go() -> None:
        async with mock_client(handler) as api:
            await api.create_job("p", '{"reference_id": "r"}')
            await api.create_batch("p", "nightly")
            await api.get_job("p", "j-1")
            await api.list_batch_page("p", "b-9", "tok")
            await api.download("https://store.test/r.json?X-Amz-Signature=SECRETSIG", io.BytesIO(), max_bytes=100)

    with caplog.at_level("DEBUG", logger="uploader"):
        run(go())
    records = [r for r in caplog.records if r.name == "uploader.api"]
    got = [(r.levelname, r.endpoint, r.method, r.http_status, r.outcome) for r in records]  # type: ignore[attr-defined]
    assert got == [
        ("DEBUG", "create_batch", "POST", 200, "succeeded"),
        ("DEBUG", "get_job", "GET", 200, "succeeded"),
        ("INFO", "list_batch", "GET", 503, "retryable"),
        ("DEBUG", "download", "GET", 200, "succeeded"),
    ]
    assert (records[1].job_id, records[2].batch_id, records[2].code) == ("j-1", "b-9", "FS_0000")  # type: ignore[attr-defined]
    assert records[3].host == "store.test"  # type: ignore[attr-defined]
    text = caplog.text + repr([r.__dict__ for r in caplog.records])
    assert "SECRETSIG" not in text and KEY not in text and "tok" not in text
