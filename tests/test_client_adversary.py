"""ApiClient over its default transport (uploader.api.wire) against scripted, misbehaving HTTP servers.

Each test runs a raw asyncio socket server on 127.0.0.1 in the test's own event loop (tests/scripted_server.py,
as tests/test_wire.py does): its handler reads the requests of one connection and writes the exact bytes of its answers.
What is checked is the client's word on each request, as `policy.classify` and `policy.may_have_created` read it:

- a job is reported created (SUCCEEDED, with a job_id) only when the server's answer to THAT request said so: an
  answer left on a kept-alive connection (sent twice, unsolicited, past a short Content-Length) is never taken
  for the next request's;
- an answer that may have followed the request reaching the server (cut, invalid, timed out, not the API's
  envelope) is never "definitely not created" (`may_have_created` False);
- the API key never appears, whole or in part, in a result's text, its repr, or an exception.

The stale answers the servers plant carry no reference_id on purpose: nothing in the policy could catch them, so
only the transport's framing and reuse rules stand between them and a wrong job_id.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.scripted_server import Handler, Peer, Server, run, serve
from tests.scripted_server import ok as http
from uploader.api.client import KEY_ECHO_MIN_CHARS, ApiClient, _redacted
from uploader.api.policy import ApiResult, Verdict, classify, may_have_created, retry_after_seconds
from uploader.errors import ApiUnreachableError, UsageError

KEY = "sk-adv-3f9c1e7b5d2a4068b1c9e7f3a5d2b4c6"  # 39 characters, none of which the answers use otherwise
KEY_PART = 8  # client.KEY_ECHO_MIN_CHARS: a run of this many key characters is "part of the key"
REF = "ref-1"


# -- answers ------------------------------------------------------------------------------------------------


def job_request(ref: str) -> bytes:
    return json.dumps({"reference_id": ref, "work_flow_id": "wf", "data": {"image_url": "https://x/1.png"}}).encode()


def created(ref: str = REF, job_id: str | None = None) -> bytes:
    """The API's success envelope for the job of `ref`."""
    data = {"job_id": job_id or f"job-{ref}", "reference_id": ref, "work_flow_id": "wf"}
    return json.dumps({"data": data, "success": True}).encode()


#: A success answer naming no reference_id: if it is ever read as another request's answer, the policy cannot tell.
STALE_BODY = b'{"data": {"job_id": "STALE"}, "success": true}'


def until_close(body: bytes, *lines: bytes, status: bytes = b"200 OK", version: bytes = b"1.1") -> bytes:
    """An answer with neither Content-Length nor chunked coding: its body ends with the connection."""
    head = b"HTTP/%s %s\r\n" % (version, status)
    return head + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


def chunked(*parts: bytes, lines: tuple[bytes, ...] = ()) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + b"".join(line + b"\r\n" for line in lines)
    return head + b"\r\n" + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


STALE = http(STALE_BODY)


def ref_of(request: bytes) -> str:
    """The reference_id a job request carries."""
    body = request.split(b"\r\n\r\n", 1)[1]
    return str(json.loads(body)["reference_id"])


def answer_once(raw: bytes) -> Handler:
    """Read one request, write `raw`, close the connection."""

    async def handler(peer: Peer) -> None:
        if await peer.request() is not None:
            await peer.send(raw)

    return handler


#: What connection 0 of then_echo does with its first request.
First = Callable[[Peer, bytes], Awaitable[None]]


def then_echo(first: First) -> Handler:
    """Connection 0 runs `first` on its first request (then answers every later request on it with STALE);
    every other connection answers each request with the job of its reference_id."""

    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            request = await peer.request()
            if request is None:
                return
            await first(peer, request)
            while await peer.request() is not None:
                await peer.send(STALE)  # the answer a reused connection would bring: never to be taken
            return
        while (request := await peer.request()) is not None:
            await peer.send(http(created(ref_of(request))))

    return handler


def client(server: Server, **kwargs: Any) -> ApiClient:
    return ApiClient(server.url(""), KEY, **{"timeout": 2.0, **kwargs})


async def create_all(server: Server, refs: list[str], pause: float = 0.0, **kwargs: Any) -> list[ApiResult]:
    """create_job for each of `refs` in turn on one client, `pause` seconds apart."""
    results = []
    async with client(server, **kwargs) as api:
        for i, ref in enumerate(refs):
            if i and pause:
                await asyncio.sleep(pause)
            results.append(await api.create_job("p1", job_request(ref)))
    return results


def after(
    first: Callable[[Peer, bytes], Awaitable[None]], refs: list[str], **kwargs: Any
) -> tuple[list[ApiResult], int]:
    """The results of create_job for each of `refs` (create_all's `kwargs`) against then_echo(first), and how
    many connections the client opened."""

    async def go() -> tuple[list[ApiResult], int]:
        async with serve(then_echo(first)) as server:
            results = await create_all(server, refs, **kwargs)
        return results, server.connections

    return run(go())


def one(handler: Handler, **kwargs: Any) -> ApiResult:
    """The result of one create_job of REF against `handler`."""

    async def go() -> ApiResult:
        async with serve(handler) as server:
            (result,) = await create_all(server, [REF], **kwargs)
        return result

    return run(go())


# -- what a result may claim ---------------------------------------------------------------------------------


def verdict(result: ApiResult, ref: str = REF) -> Verdict:
    return classify(result, reference_id=ref).verdict


def assert_created(result: ApiResult, ref: str) -> None:
    """The answer to the request of `ref` said its job was created, and the result says exactly that."""
    assert verdict(result, ref) is Verdict.SUCCEEDED, result
    assert result.data is not None and result.data["job_id"] == f"job-{ref}", result


def assert_maybe(result: ApiResult, ref: str = REF, code: str | None = None) -> None:
    """No usable answer after the request was sent: retried, never "definitely not created", no job_id claimed."""
    assert result.success is not True, result
    assert verdict(result, ref) is Verdict.RETRYABLE, result
    assert may_have_created(result), result
    if code is not None:
        assert result.code == code, result


def assert_honest(result: ApiResult, ref: str) -> None:
    """Either the job of `ref` (the server's answer to that request), or a failure that may have created it."""
    if verdict(result, ref) is Verdict.SUCCEEDED:
        assert_created(result, ref)
    else:
        assert_maybe(result, ref)


def key_parts(text: str) -> list[str]:
    """Every run of KEY_PART or more characters of the key found in `text`."""
    return [KEY[i : i + KEY_PART] for i in range(len(KEY) - KEY_PART + 1) if KEY[i : i + KEY_PART] in text]


def assert_key_free(*things: object) -> None:
    for thing in things:
        for text in (str(thing), repr(thing)):
            assert not key_parts(text), text


def texts(result: ApiResult) -> tuple[object, ...]:
    """What of a result is printed, logged or stored as text: everything but the data (kept as answered)."""
    return (result.code, result.message, result.errors, result.retry_after, result.location, replace(result, data=None))


# -- keep-alive reuse -----------------------------------------------------------------------------------------


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def first(peer: Peer, request: bytes) -> None:
        await peer.send(http(created(ref_of(request))))
        peer.writer.close()

    (r1, r2), connections = after(first, ["r1", "r2"], pause=0.05)
    assert_created(r1, "r1")
    assert_created(r2, "r2")
    assert connections == 2


def test_a_close_right_after_the_answer_never_gives_the_next_request_a_false_answer() -> None:
    """No pause: the server's close may or may not have been seen when request 2 goes out."""

    async def first(peer: Peer, request: bytes) -> None:
        await peer.send(http(created(ref_of(request))))
        peer.writer.close()

    (r1, r2, r3), _ = after(first, ["r1", "r2", "r3"])
    assert_created(r1, "r1")
    assert_honest(r2, "r2")
    assert_honest(r3, "r3")


def test_a_close_as_the_second_request_arrives_may_have_created_it() -> None:
    """The server read request 2 (it may have acted on it) and closed without a word: retried, may have created."""

    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.send(http(created(ref_of(request))))
        assert await peer.request() is not None
        peer.writer.transport.abort()  # RST, not even a FIN after the request

    async def go() -> tuple[list[ApiResult], list[tuple[int, bytes]]]:
        async with serve(handler) as server:
            results = await create_all(server, ["r1", "r2"])
        return results, server.requests

    (r1, r2), requests = run(go())
    assert_created(r1, "r1")
    assert [ref_of(r) for _, r in requests] == ["r1", "r2"]  # request 2 did reach the server
    assert_maybe(r2, "r2")
    assert r2.code in ("connection_closed", "transport_error") and r2.http_status is None


def test_a_graceful_close_after_reading_the_second_request_may_have_created_it() -> None:
    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.send(http(created(ref_of(request))))
        assert await peer.request() is not None

    async def go() -> list[ApiResult]:
        async with serve(handler) as server:
            return await create_all(server, ["r1", "r2"])

    r1, r2 = run(go())
    assert_created(r1, "r1")
    assert_maybe(r2, "r2", "connection_closed")


def test_an_answer_sent_twice_in_one_write_is_not_the_next_requests() -> None:
    async def first(peer: Peer, request: bytes) -> None:
        await peer.send(http(created(ref_of(request))) + STALE)

    (r1, r2), connections = after(first, ["r1", "r2"])
    assert_created(r1, "r1")
    assert_created(r2, "r2")
    assert connections == 2


def test_an_answer_sent_twice_apart_is_not_the_next_requests() -> None:
    """The duplicate arrives while the connection is idle: the connection is dropped, not reused."""

    async def first(peer: Peer, request: bytes) -> None:
        await peer.send(http(created(ref_of(request))), STALE, gap=0.03)

    (r1, r2), connections = after(first, ["r1", "r2"], pause=0.15)
    assert_created(r1, "r1")
    assert_created(r2, "r2")
    assert connections == 2


def test_an_unsolicited_error_answer_while_idle_is_not_the_next_requests() -> None:
    """A 429 (or any answer) arriving on an idle connection must not become request 2's verdict either."""

    async def first(peer: Peer, request: bytes) -> None:
        await peer.send(http(created(ref_of(request))))
        await asyncio.sleep(0.03)
        await peer.send(http(b"", b"Retry-After: 30", status=b"429 Too Many Requests"))

    (r1, r2), _ = after(first, ["r1", "r2"], pause=0.15)
    assert_created(r1, "r1")
    assert_created(r2, "r2")


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("connection: close", lambda body: http(body, b"Connection: close")),
        ("Connection: keep-alive, CLOSE", lambda body: http(body, b"Connection: keep-alive, CLOSE")),
        ("http/1.0", lambda body: http(body, version=b"1.0")),
        ("http/1.0 chunked", lambda body: chunked(body).replace(b"HTTP/1.1", b"HTTP/1.0", 1)),
    ],
)
def test_an_answer_that_ends_its_connection_is_not_followed_by_reuse(
    name: str, answer: Callable[[bytes], bytes]
) -> None:
    """The server says (or its HTTP version means) the connection ends, yet keeps it open and would answer the
    next request on it with STALE: the client must open a new one."""

    async def first(peer: Peer, request: bytes) -> None:
        await peer.send(answer(created(ref_of(request))))

    (r1, r2), connections = after(first, ["r1", "r2"])
    assert_created(r1, "r1")
    assert_created(r2, "r2")
    assert connections == 2, name


def test_an_http_1_0_keep_alive_answer_lets_the_connection_carry_the_next_request() -> None:
    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            await peer.send(http(created(ref_of(request)), b"Connection: keep-alive", version=b"1.0"))

    async def go() -> tuple[list[ApiResult], int]:
        async with serve(handler) as server:
            results = await create_all(server, ["r1", "r2", "r3"])
        return results, server.connections

    results, connections = run(go())
    for ref, result in zip(["r1", "r2", "r3"], results, strict=True):
        assert_created(result, ref)
    assert connections == 1


def test_an_http_1_0_answer_ending_with_its_connection_is_read_whole() -> None:
    result = one(answer_once(until_close(created(), version=b"1.0")))
    assert_created(result, REF)


@pytest.mark.parametrize("gap", [0.0, 0.03])
def test_bytes_past_a_short_content_length_are_never_the_next_requests_answer(gap: float) -> None:
    """Content-Length covers request 1's answer; a whole second answer follows it (in the same write, or while
    the connection is idle)."""

    async def first(peer: Peer, request: bytes) -> None:
        await peer.send(http(created(ref_of(request))), STALE, gap=gap)

    (r1, r2), connections = after(first, ["r1", "r2"], pause=0.1)
    assert_created(r1, "r1")
    assert_created(r2, "r2")
    assert connections == 2


def test_a_content_length_shorter_than_the_body_cuts_the_json_and_drops_the_rest() -> None:
    """Content-Length says less than the body: the envelope read is cut (not JSON), and the rest of it, with a
    stale answer behind, is not read as request 2's answer."""
    body = created("r1")
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(body) - 10) + body + STALE

    async def first(peer: Peer, request: bytes) -> None:
        await peer.send(cut)

    (r1, r2), _ = after(first, ["r1", "r2"])
    assert_maybe(r1, "r1", "not_json")
    assert r1.http_status == 200
    assert_created(r2, "r2")


def test_a_stale_answer_left_after_a_body_too_large_is_not_the_next_requests() -> None:
    async def first(peer: Peer, request: bytes) -> None:
        big = b"x" * 5000
        await peer.send(http(big) + STALE)

    (r1, r2), _ = after(first, ["r1", "r2"], max_body_bytes=1000)
    assert_maybe(r1, "r1", "body_too_large")
    assert_created(r2, "r2")


def test_an_interim_answer_after_the_final_one_is_not_the_next_requests() -> None:
    async def first(peer: Peer, request: bytes) -> None:
        await peer.send(http(created(ref_of(request))) + b"HTTP/1.1 100 Continue\r\n\r\n" + STALE)

    (r1, r2), _ = after(first, ["r1", "r2"])
    assert_created(r1, "r1")
    assert_created(r2, "r2")


BEHAVIOURS = 9


async def chaotic(peer: Peer) -> None:
    """Each request's answer is chosen by its reference_id (`ref-<n>`, n % BEHAVIOURS), so the outcome does not
    depend on how the client spreads requests over connections."""
    while (request := await peer.request()) is not None:
        ref = ref_of(request)
        good = created(ref)
        kind = int(ref.split("-")[1]) % BEHAVIOURS
        if kind == 0:
            await peer.send(http(good))
        elif kind == 1:
            await peer.send(http(good, b"Connection: close"))
            return
        elif kind == 2:
            await peer.send(http(good, version=b"1.0"))
            return
        elif kind == 3:
            await peer.send(http(good) + STALE)  # answered, then a stale answer nobody asked for
        elif kind == 4:
            return  # read, never answered: closed
        elif kind == 5:
            await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n" + chunked(good[:9], good[9:]))
        elif kind == 6:
            zipped = gzip.compress(good)
            await peer.send(http(zipped, b"Content-Encoding: gzip"))
        elif kind == 7:
            await peer.send(http(good)[:-7])  # cut inside the body
            return
        else:
            await peer.send(http(good))
            return  # answered, then closed while idle


def test_many_concurrent_requests_over_chaotic_connections_get_only_their_own_answers() -> None:
    refs = [f"ref-{n}" for n in range(36)]

    async def go() -> list[ApiResult]:
        async with serve(chaotic) as server, client(server, concurrency=4) as api:
            return await asyncio.gather(*(api.create_job("p1", job_request(ref)) for ref in refs))

    started = time.monotonic()
    results = run(go())
    assert time.monotonic() - started < 3
    for ref, result in zip(refs, results, strict=True):
        assert_honest(result, ref)
        kind = int(ref.split("-")[1]) % BEHAVIOURS
        if kind in (4, 7):
            assert_maybe(result, ref)


# -- answers cut short ------------------------------------------------------------------------------------------

_FULL = http(created())
_HEAD_END = _FULL.index(b"\r\n\r\n") + 4
_PARTS = (created()[:20], created()[20:])
_CHUNKED = chunked(*_PARTS)
_CHUNKED_HEAD = _CHUNKED.index(b"\r\n\r\n") + 4


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("no answer", b""),
        ("inside the status line", _FULL[:11]),
        ("after the status line", _FULL[: _FULL.index(b"\r\n") + 2]),
        ("inside a header", _FULL[: _FULL.index(b"Content-Length") + 9]),
        ("headers without their blank line", _FULL[: _HEAD_END - 2]),
        ("after the headers", _FULL[:_HEAD_END]),
        ("inside the body", _FULL[:-1]),
        ("content-length larger than sent", http(created()).replace(b"Content-Length: ", b"Content-Length: 9", 1)),
        ("inside a chunk-size line", _CHUNKED[: _CHUNKED_HEAD + 1]),
        ("between chunks", _CHUNKED[: _CHUNKED_HEAD + len(b"14\r\n") + 20 + 2]),
        ("inside a chunk", _CHUNKED[: _CHUNKED_HEAD + len(b"14\r\n") + 5]),
        ("a chunk without its CRLF", _CHUNKED[: _CHUNKED_HEAD + len(b"14\r\n") + 20]),
        ("before the last chunk", _CHUNKED[: -len(b"0\r\n\r\n")]),
        ("inside the trailers", _CHUNKED[:-2]),
        ("after a 100 Continue", b"HTTP/1.1 100 Continue\r\n\r\n"),
        ("a 100 Continue then half a head", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 O"),
    ],
)
def test_an_answer_cut_short_is_retried_and_may_have_created(name: str, raw: bytes) -> None:
    result = one(answer_once(raw))
    assert_maybe(result, REF, "connection_closed")
    assert result.http_status is None, name
    assert_key_free(*texts(result))


@pytest.mark.parametrize("cut", [1, 10, 30])
def test_an_answer_ending_with_its_connection_cut_inside_the_json_is_not_a_success(cut: int) -> None:
    """No length: a lost connection looks like the body's end, and only the JSON can tell it was cut."""
    result = one(answer_once(until_close(created()[:-cut])))
    assert_maybe(result, REF, "not_json")
    assert result.http_status == 200


# -- what an answer says -----------------------------------------------------------------------------------------

_DATE = "Wed, 21 Oct 2037 07:28:00 GMT"
_ZIPPED = gzip.compress(created())


def _envelope(data: object) -> bytes:
    return json.dumps({"data": data, "success": True}).encode()


ANSWERS: list[tuple[str, bytes, Verdict, bool, str | None]] = [
    # name, raw answer, verdict (reference_id REF sent), may_have_created, code
    ("200 not JSON", http(b"<html><body>OK</body></html>"), Verdict.RETRYABLE, True, "not_json"),
    ("200 empty", http(b""), Verdict.RETRYABLE, True, "not_json"),
    ("204", b"HTTP/1.1 204 No Content\r\n\r\n", Verdict.RETRYABLE, True, "not_json"),
    ("200 JSON list", http(b'[{"job_id": "job-ref-1"}]'), Verdict.RETRYABLE, True, "not_json"),
    ("200 JSON not an envelope", http(b'{"job_id": "job-ref-1"}'), Verdict.RETRYABLE, True, "not_json"),
    ("success as a string", http(b'{"success": "true", "data": {"job_id": "j"}}'), Verdict.RETRYABLE, True, None),
    ("success as 1", http(b'{"success": 1, "data": {"job_id": "j"}}'), Verdict.RETRYABLE, True, "not_json"),
    (
        "job_id given twice",
        http(b'{"success": true, "data": {"job_id": "a", "job_id": "b"}}'),
        Verdict.RETRYABLE,
        True,
        "not_json",
    ),
    (
        "success given twice",
        http(b'{"success": false, "success": true, "data": {"job_id": "a"}}'),
        Verdict.RETRYABLE,
        True,
        "not_json",
    ),
    ("envelope then junk", http(created() + b"junk"), Verdict.RETRYABLE, True, "not_json"),
    ("two envelopes", http(created() + created()), Verdict.RETRYABLE, True, "not_json"),
    ("another row's reference_id", http(created("ref-2")), Verdict.PROTOCOL, True, None),
    (
        "reference_id as another number",
        http(_envelope({"job_id": "j", "reference_id": 7})),
        Verdict.PROTOCOL,
        True,
        None,
    ),
    ("success without job_id", http(_envelope({"reference_id": REF})), Verdict.PROTOCOL, True, None),
    ("success with data null", http(b'{"success": true, "data": null}'), Verdict.PROTOCOL, True, None),
    ("success with data a list", http(b'{"success": true, "data": ["job-ref-1"]}'), Verdict.PROTOCOL, True, None),
    ("success without data", http(b'{"success": true}'), Verdict.PROTOCOL, True, None),
    ("job_id null", http(_envelope({"job_id": None})), Verdict.PROTOCOL, True, None),
    ("job_id blank", http(_envelope({"job_id": "  "})), Verdict.PROTOCOL, True, None),
    ("job_id true", http(_envelope({"job_id": True})), Verdict.PROTOCOL, True, None),
    ("job_id an object", http(_envelope({"job_id": {"id": "j"}})), Verdict.PROTOCOL, True, None),
    ("job_id a float", http(_envelope({"job_id": 1.5})), Verdict.PROTOCOL, True, None),
    ("job_id with an escape", http(_envelope({"job_id": "j\x1b[2J"})), Verdict.PROTOCOL, True, None),
    ("job_id too long", http(_envelope({"job_id": "j" * 65})), Verdict.PROTOCOL, True, None),
    (
        "502 HTML",
        http(b"<html><h1>502 Bad Gateway</h1></html>", b"Content-Type: text/html", status=b"502 Bad Gateway"),
        Verdict.RETRYABLE,
        True,
        "http_502",
    ),
    ("503 empty", http(b"", status=b"503 Service Unavailable"), Verdict.RETRYABLE, True, "http_503"),
    (
        "504 until close",
        until_close(b"<html>gateway timeout", status=b"504 Gateway Timeout"),
        Verdict.RETRYABLE,
        True,
        "http_504",
    ),
    ("408", http(b"", status=b"408 Request Timeout"), Verdict.RETRYABLE, True, "http_408"),
    (
        "500 FS_0000",
        http(
            b'{"success": false, "error": {"code": "FS_0000", "message": "later"}}', status=b"500 Internal Server Error"
        ),
        Verdict.RETRYABLE,
        True,
        "FS_0000",
    ),
    (
        "200 FS_0001",
        http(b'{"success": false, "error": {"code": "FS_0001", "message": "used"}}'),
        Verdict.EXISTS,
        False,
        "FS_0001",
    ),
    (
        "400 FS_0003",
        http(
            b'{"success": false, "error": {"code": "FS_0003", "message": "bad", "errors": []}}',
            status=b"400 Bad Request",
        ),
        Verdict.PERMANENT,
        False,
        "FS_0003",
    ),
    ("401 no body", http(b"", status=b"401 Unauthorized"), Verdict.FATAL, False, "http_401"),
    ("403 HTML", http(b"<html>forbidden</html>", status=b"403 Forbidden"), Verdict.FATAL, False, "http_403"),
    ("404 HTML", http(b"<html>not found</html>", status=b"404 Not Found"), Verdict.FATAL, False, "http_404"),
    (
        "413 HTML",
        http(b"<html>too large</html>", status=b"413 Payload Too Large"),
        Verdict.PERMANENT,
        False,
        "http_413",
    ),
    (
        "302",
        http(b"", b"Location: https://elsewhere.example/v1", status=b"302 Found"),
        Verdict.FATAL,
        False,
        "http_302",
    ),
    (
        "429 seconds",
        http(b"", b"Retry-After: 7", status=b"429 Too Many Requests"),
        Verdict.THROTTLED,
        False,
        "http_429",
    ),
    (
        "429 date",
        http(b"busy", f"Retry-After: {_DATE}".encode(), status=b"429 Too Many Requests"),
        Verdict.THROTTLED,
        False,
        "http_429",
    ),
    ("100 then success", b"HTTP/1.1 100 Continue\r\n\r\n" + http(created()), Verdict.SUCCEEDED, True, None),
    (
        "102, 103 with headers, then success",
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        + http(created()),
        Verdict.SUCCEEDED,
        True,
        None,
    ),
    (
        "100 then 503",
        b"HTTP/1.1 100 Continue\r\n\r\n" + http(b"", status=b"503 x"),
        Verdict.RETRYABLE,
        True,
        "http_503",
    ),
    (
        "101",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n" + http(created()),
        Verdict.RETRYABLE,
        True,
        "protocol_error",
    ),
    ("not HTTP", b"SSH-2.0-OpenSSH_9.6\r\n\r\n", Verdict.RETRYABLE, True, "protocol_error"),
    ("HTTP/2 preface", b"HTTP/2 200\r\n\r\n", Verdict.RETRYABLE, True, "protocol_error"),
    ("two Content-Lengths", http(created(), b"Content-Length: 3"), Verdict.RETRYABLE, True, "protocol_error"),
    (
        "Content-Length and chunked",
        chunked(created(), lines=(b"Content-Length: 10",)),
        Verdict.RETRYABLE,
        True,
        "protocol_error",
    ),
    (
        "gzip transfer coding",
        chunked(created(), lines=(b"Transfer-Encoding: gzip",)),
        Verdict.RETRYABLE,
        True,
        "protocol_error",
    ),
    ("a folded header", http(created(), b"X-A: 1", b" folded"), Verdict.RETRYABLE, True, "protocol_error"),
    (
        "a bad chunk size",
        chunked(created()).replace(b"\r\n\r\n", b"\r\n\r\nzz\r\n", 1),
        Verdict.RETRYABLE,
        True,
        "protocol_error",
    ),
    (
        "huge headers",
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * (70 << 10) + b"\r\n" + http(created())[17:],
        Verdict.RETRYABLE,
        True,
        "protocol_error",
    ),
    (
        "huge body by Content-Length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n" + created(),
        Verdict.RETRYABLE,
        True,
        "body_too_large",
    ),
    ("huge chunked body", chunked(*[b" " * 60000] * 20, created()), Verdict.RETRYABLE, True, "body_too_large"),
    (
        "huge body until close",
        until_close(b" " * 1_100_000 + created()),
        Verdict.RETRYABLE,
        True,
        "body_too_large",
    ),
    ("gzip", http(_ZIPPED, b"Content-Encoding: gzip"), Verdict.SUCCEEDED, True, None),
    (
        "gzip chunked",
        chunked(_ZIPPED[:7], _ZIPPED[7:], lines=(b"Content-Encoding: GZIP",)),
        Verdict.SUCCEEDED,
        True,
        None,
    ),
    ("deflate", http(zlib.compress(created()), b"Content-Encoding: deflate"), Verdict.SUCCEEDED, True, None),
    (
        "gzip corrupt",
        http(_ZIPPED[:12] + b"\xff" * 8 + _ZIPPED[20:], b"Content-Encoding: gzip"),
        Verdict.RETRYABLE,
        True,
        "protocol_error",
    ),
    ("gzip cut", http(_ZIPPED[:-6], b"Content-Encoding: gzip"), Verdict.RETRYABLE, True, "protocol_error"),
    (
        "gzip then junk",
        http(_ZIPPED + b"junk", b"Content-Encoding: gzip"),
        Verdict.RETRYABLE,
        True,
        "protocol_error",
    ),
    ("gzip not gzip", http(created(), b"Content-Encoding: gzip"), Verdict.RETRYABLE, True, "protocol_error"),
    (
        "gzip bomb",
        http(gzip.compress(b" " * (8 << 20) + created(), 1), b"Content-Encoding: gzip"),
        Verdict.RETRYABLE,
        True,
        "body_too_large",
    ),
    (
        "br (not decoded)",
        http(b"\x1b\x2a\x00\xf8" + created(), b"Content-Encoding: br"),
        Verdict.RETRYABLE,
        True,
        "not_json",
    ),
    (
        "gzip answer to a 502",
        http(gzip.compress(b"<html>bad gateway</html>"), b"Content-Encoding: gzip", status=b"502 Bad Gateway"),
        Verdict.RETRYABLE,
        True,
        "http_502",
    ),
]


@pytest.mark.parametrize(("name", "raw", "expected", "maybe", "code"), ANSWERS, ids=[a[0] for a in ANSWERS])
def test_what_an_answer_means(name: str, raw: bytes, expected: Verdict, maybe: bool, code: str | None) -> None:
    result = one(answer_once(raw))
    assert verdict(result) is expected, result
    assert may_have_created(result) is maybe, result
    if code is not None:
        assert result.code == code, result
    if expected is Verdict.SUCCEEDED:
        assert_created(result, REF)
    else:
        assert result.success is not True or expected is Verdict.PROTOCOL, result
    assert_key_free(*texts(result))
    if result.message is not None:
        assert len(result.message) <= 200 and "\n" not in result.message


def test_retry_after_is_kept_in_both_forms() -> None:
    seconds = one(answer_once(http(b"", b"Retry-After: 7", status=b"429 Too Many Requests")))
    date = one(answer_once(http(b"", f"Retry-After: {_DATE}".encode(), status=b"429 Too Many Requests")))
    now = datetime(2037, 10, 21, 7, 27, 0, tzinfo=UTC)
    assert seconds.retry_after == "7" and retry_after_seconds(seconds.retry_after, now) == 7.0
    assert date.retry_after == _DATE and retry_after_seconds(date.retry_after, now) == 60.0


def test_the_request_is_sent_as_given_with_the_key() -> None:
    body = job_request(REF) + b"  "

    async def go() -> tuple[ApiResult, bytes]:
        async with serve(answer_once(http(created()))) as server:
            async with client(server) as api:
                result = await api.create_job("p/../1", body)
            return result, server.requests[0][1]

    result, request = run(go())
    assert_created(result, REF)
    head, sent = request.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v1/projects/p%2F..%2F1/jobs HTTP/1.1\r\n")
    assert f"x-api-key: {KEY}".encode() in head.split(b"\r\n")
    assert sent == body


# -- timeouts ------------------------------------------------------------------------------------------------------


async def _silent(peer: Peer) -> None:
    await peer.request()
    await peer.until_closed()


async def _head_then_stall(peer: Peer) -> None:
    await peer.request()
    await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
    await peer.until_closed()


async def _trickle_body(peer: Peer) -> None:
    await peer.request()
    body = created()
    await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
    for byte in body:
        await peer.send(bytes([byte]))
        await asyncio.sleep(0.1)


async def _trickle_head(peer: Peer) -> None:
    await peer.request()
    for byte in http(created()):
        await peer.send(bytes([byte]))
        await asyncio.sleep(0.05)


async def _endless_interim(peer: Peer) -> None:
    await peer.request()
    while True:
        await peer.send(b"HTTP/1.1 102 Processing\r\n\r\n")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("name", "handler", "timeout", "total", "low", "high"),
    [
        ("never answers", _silent, 0.3, None, 0.25, 0.7),
        ("head then stalls", _head_then_stall, 0.3, None, 0.25, 0.7),
        ("trickles the body", _trickle_body, 0.4, None, 0.35, 0.8),
        ("trickles the body, total above timeout", _trickle_body, 0.3, 0.6, 0.55, 0.95),
        ("trickles the head", _trickle_head, 0.4, None, 0.35, 0.8),
        ("endless 102 Processing", _endless_interim, 0.4, None, 0.35, 0.8),
        ("never answers, total above timeout", _silent, 0.3, 0.9, 0.25, 0.7),
    ],
)
def test_a_slow_server_is_abandoned_at_the_deadline(
    name: str, handler: Handler, timeout: float, total: float | None, low: float, high: float
) -> None:
    started = time.monotonic()
    result = one(handler, timeout=timeout, total_timeout=total)
    elapsed = time.monotonic() - started
    assert low < elapsed < high, (name, elapsed)
    assert_maybe(result, REF, "timeout")
    assert result.http_status is None
    assert_key_free(*texts(result))


def test_a_timed_out_connection_is_not_reused() -> None:
    """Request 1 timed out with its answer still coming: that late answer must not become request 2's."""

    async def first(peer: Peer, request: bytes) -> None:
        await asyncio.sleep(0.35)
        await peer.send(http(created(ref_of(request))))

    (r1, r2), connections = after(first, ["r1", "r2"], timeout=0.25)
    assert_maybe(r1, "r1", "timeout")
    assert_created(r2, "r2")
    assert connections == 2


# -- downloads -------------------------------------------------------------------------------------------------


def download(raw: bytes | Handler, max_bytes: int = 1 << 20, **kwargs: Any) -> tuple[ApiResult, bytes, bytes]:
    """(result, what the sink holds, the request as received) of one download answered with `raw`."""
    handler = raw if callable(raw) else answer_once(raw)

    async def go() -> tuple[ApiResult, bytes, bytes]:
        sink = io.BytesIO()
        async with serve(handler) as server:
            async with client(server, **kwargs) as api:
                result = await api.download(server.url("/result.json"), sink, max_bytes=max_bytes)
            request = server.requests[0][1] if server.requests else b""
        return result, sink.getvalue(), request

    return run(go())


_RESULT = b'{"annotations": [{"label": "car", "box": [1, 2, 3, 4]}]}'


def test_a_download_never_sends_the_key_and_hashes_the_inflated_body() -> None:
    result, held, request = download(http(gzip.compress(_RESULT), b"Content-Encoding: gzip"))
    assert result.success is True and held == _RESULT
    assert result.data is not None and result.data["size"] == len(_RESULT)
    assert KEY.encode() not in request and b"x-api-key" not in request.lower()


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("content-length larger than sent", http(_RESULT).replace(b"Content-Length: ", b"Content-Length: 1", 1)),
        ("chunked cut between chunks", chunked(_RESULT[:10], _RESULT[10:])[:-20]),
        ("gzip cut", http(gzip.compress(_RESULT)[:-4], b"Content-Encoding: gzip")),
        ("gzip corrupt", http(b"\x1f\x8b\x08\x00" + b"\x00" * 30, b"Content-Encoding: gzip")),
        ("503", http(b"<html>busy</html>", b"Retry-After: 3", status=b"503 Service Unavailable")),
    ],
)
def test_a_download_cut_or_refused_for_now_is_retried(name: str, raw: bytes) -> None:
    result, _, _ = download(raw)
    assert result.success is not True
    assert classify(result, expect="sha256").verdict is Verdict.RETRYABLE, (name, result)


def test_a_download_ending_with_its_connection_cut_short_is_retried_as_a_cut_with_a_length_is() -> None:
    cut, _, _ = download(until_close(_RESULT[:-5]))
    framed, _, _ = download(http(_RESULT).replace(b"Content-Length: ", b"Content-Length: 1", 1))
    assert classify(framed, expect="sha256").verdict is Verdict.RETRYABLE
    assert classify(cut, expect="sha256").verdict is Verdict.RETRYABLE, cut


@pytest.mark.parametrize(
    "raw",
    [
        chunked(b"\n", _RESULT),
        chunked(b"\r\n  ", b"\n", _RESULT, lines=(b"Content-Type: application/json",)),
    ],
    ids=["newline chunk", "white space chunks"],
)
def test_a_download_starting_with_white_space_alone_is_a_result(raw: bytes) -> None:
    result, held, _ = download(raw)
    assert result.success is True, result
    assert held.strip() == _RESULT


def test_a_trickling_download_is_abandoned() -> None:
    """A download's deadline is four times the total timeout (client.download): a drip cannot hold it longer."""

    async def drip(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{")
        for _ in range(999):
            await peer.send(b" ")
            await asyncio.sleep(0.05)

    started = time.monotonic()
    result, _, _ = download(drip, timeout=0.15)
    elapsed = time.monotonic() - started
    assert 0.55 < elapsed < 1.0, elapsed
    assert result.code == "timeout" and classify(result, expect="sha256").verdict is Verdict.RETRYABLE


# -- the API key -----------------------------------------------------------------------------------------------------

_K = KEY.encode()


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        (
            "error message",
            http(
                b'{"success": false, "error": {"code": "auth-failure", "message": "bad key %s"}}' % _K,
                status=b"401 Unauthorized",
            ),
        ),
        ("unknown error code", http(b'{"success": false, "error": {"code": "%s", "message": "m"}}' % _K)),
        (
            "long unknown error code",
            http(b'{"success": false, "error": {"code": "%s", "message": "m"}}' % (b"c" * 50 + _K)),
        ),
        (
            "error details",
            http(
                b'{"success": false, "error": {"code": "FS_0003", "errors": [{"%s": ["%s"]}]}}' % (_K, _K),
                status=b"400 Bad Request",
            ),
        ),
        (
            "escaped in the message",
            http(b'{"success": false, "error": {"message": "%s"}}' % _K.replace(b"-", b"\\u002d")),
        ),
        ("HTML page", http(b"<html>you sent x-api-key: %s</html>" % _K, status=b"502 Bad Gateway")),
        ("200 not JSON", http(b"key=%s" % _K)),
        ("success data", http(_envelope({"job_id": "j", "reference_id": REF, "echo": KEY}))),
        ("success data escaped", http(_envelope({"job_id": "j", "echo": KEY}).replace(b"-", b"\\u002d"))),
        ("retry-after", http(b"", b"Retry-After: " + _K, status=b"429 Too Many Requests")),
        ("location", http(b"", b"Location: https://x.example/?k=" + _K, status=b"302 Found")),
        ("status line", b"ERR " + _K + b"\r\n\r\n"),
        ("reason phrase", http(created(), status=b"200 " + _K)),
        ("malformed header", b"HTTP/1.1 200 OK\r\nx-api-key : " + _K + b"\r\n\r\n"),
        ("chunk size", chunked(created()).replace(b"\r\n\r\n", b"\r\n\r\n" + _K + b"\r\n", 1)),
        ("too large", http(_K * 40000)),
    ],
)
def test_an_echoed_key_is_nowhere_in_the_result(name: str, raw: bytes) -> None:
    result = one(answer_once(raw))
    assert_key_free(*texts(result))
    if name.startswith("success data"):
        assert result.success is None and result.code == "not_json"  # an answer holding the key is no answer
        assert_maybe(result)


@pytest.mark.parametrize(
    "raw",
    [
        b"ERROR unknown header 'x-api-key: " + _K + b"'\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Echo-Request-Header : x-api-key: " + _K + b"\r\n\r\n",
    ],
    ids=["status line", "header line"],
)
def test_a_key_cut_by_the_wires_quote_is_not_left_in_part(raw: bytes) -> None:
    result = one(answer_once(raw))
    assert result.code == "protocol_error"
    assert not key_parts(result.message or ""), result.message


def test_a_key_cut_by_the_retry_after_limit_is_not_left_in_part() -> None:
    result = one(answer_once(http(b"", b"Retry-After: " + b"9" * 80 + _K, status=b"429 Too Many Requests")))
    assert verdict(result) is Verdict.THROTTLED
    assert not key_parts(result.retry_after or ""), result.retry_after


def test_a_key_cut_by_the_location_limit_is_not_left_in_part() -> None:
    location = b"https://login.example/?next=" + b"a" * (2000 - 28 - 20) + _K
    result = one(answer_once(http(b"", b"Location: " + location, status=b"302 Found")))
    assert verdict(result) is Verdict.FATAL
    assert not key_parts(result.location or ""), result.location


def test_an_echoed_key_is_nowhere_in_a_reads_exception() -> None:
    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            body = b'{"success": false, "error": {"code": "GE_0001", "message": "bad id for key %s"}}' % _K
            await peer.send(http(body, status=b"400 Bad Request"))

    async def go() -> BaseException:
        async with serve(handler) as server, client(server) as api:
            with pytest.raises(ApiUnreachableError) as caught:
                await api.batch_of_job("p1", "j1")
            return caught.value

    error = run(go())
    assert_key_free(error, error.args)


def test_the_client_and_its_refusals_never_show_the_key() -> None:
    api = ApiClient("http://127.0.0.1:9", KEY)
    assert_key_free(api)
    with pytest.raises(UsageError) as caught:
        ApiClient("http://127.0.0.1:9", KEY + " ")
    assert_key_free(caught.value)


def test_a_refused_connection_is_definitely_not_created() -> None:
    """The one failure after which nothing was sent: connect_error, and may_have_created says no."""

    async def go() -> ApiResult:
        listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        listener.close()
        await listener.wait_closed()
        async with ApiClient(f"http://127.0.0.1:{port}", KEY, timeout=1.0) as api:
            return await api.create_job("p1", job_request(REF))

    result = run(go())
    assert result.code == "connect_error" and not may_have_created(result)
    assert verdict(result) is Verdict.RETRYABLE
    assert_key_free(*texts(result))


# -- the redaction itself ----------------------------------------------------------------------------------------------


@given(
    key=st.text(st.sampled_from("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_.~"), min_size=1, max_size=60),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
    cut=st.data(),
)
def test_redacted_leaves_no_run_of_the_key(key: str, before: str, after: str, cut: st.DataObject) -> None:
    """Whatever slice of the key a text holds (the whole key, or a part of KEY_ECHO_MIN_CHARS or more, as a
    cut leaves it), none of it is left; a key shorter than that is removed whole. (Keys drawn without the
    characters of "[redacted]" itself, which would be found in the marker.)"""
    start = cut.draw(st.integers(0, len(key)))
    end = cut.draw(st.integers(start, len(key)))
    text = before + key[start:end] + after + key
    out = _redacted(text, key)
    width = min(KEY_ECHO_MIN_CHARS, len(key))
    assert key not in out
    assert not any(key[i : i + width] in out for i in range(len(key) - width + 1))


def test_redacted_keeps_what_is_not_the_key() -> None:
    key = "sk-adv-3f9c1e7b5d2a4068b1c9e7f3a5d2b4c6"
    assert _redacted("no key here: HTTP 500", key) == "no key here: HTTP 500"
    assert _redacted("sent 'x-api-key: sk-adv-3f9c1e7b5d2a40'", key) == "sent 'x-api-key: [redacted]'"
    assert _redacted("sk-adv- is too short to tell", key) == "sk-adv- is too short to tell"
    assert _redacted("a: abc, b: abc", "abc") == "a: [redacted], b: [redacted]"
