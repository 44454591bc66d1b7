"""uploader.api.wire: the strict HTTP/1.1 parser (pure tables), then real exchanges over loopback.

The network tests run a raw asyncio socket server on 127.0.0.1 (port 0) in the test's own event loop: each
test gives it a handler that reads the requests of one connection and writes the exact bytes of its answers,
so framing, reuse and every failure the wire maps to a code (protocol_error, connection_closed, timeout,
connect_error, tls_error) are seen as a misbehaving server would cause them. Every request carries an API key
header; no WireError message may ever hold it.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import socket
import ssl
import sys
import time
import zlib
from collections.abc import Awaitable
from typing import Any

import pytest

from tests.scripted_server import Handler, Peer, ok, run, serve
from uploader.api import wire as wire_module
from uploader.api.wire import MAX_HEAD_BYTES, Wire, WireError, framing, parse_head

Headers = list[tuple[bytes, bytes]]

SECRET = "SECRET-wire-5a7e1c9d3b"
KEY_LINE = f"x-api-key: {SECRET}\r\n".encode()


def new_wire(concurrency: int = 4, connect_timeout: float = 2.0, keepalive: float = 4.0) -> Wire:
    return Wire(concurrency, ssl.create_default_context(), connect_timeout, keepalive)


async def fetch(
    wire: Wire,
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    timeout: float | None = 2.0,
    limit: int = 1 << 20,
) -> tuple[int, Headers, bytes | None]:
    """One exchange as the client makes it (uploader.api.client._call): status, headers, body read to `limit`."""
    async with wire.exchange(method, url, KEY_LINE, body, timeout) as answer:
        data = await answer.read(limit)
    return answer.status, answer.headers, data


async def failure(wire: Wire, attempt: Awaitable[object], code: str) -> WireError:
    """The WireError `attempt` raises: its code checked, the key nowhere in it, the slot given back."""
    with pytest.raises(WireError) as caught:
        await attempt
    error = caught.value
    assert error.code == code, (error.code, str(error))
    for text in (str(error), repr(error)):
        assert SECRET not in text and "x-api-key" not in text.lower(), text
    assert str(error)  # says what happened
    assert not wire.slots().locked(), "the failed exchange kept its slot"
    return error


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"


def chunked(*parts: bytes, trailers: bytes = b"") -> bytes:
    """A chunked body of `parts` (each a chunk), its last chunk and `trailers` (CRLF-ended lines)."""
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n" + trailers + b"\r\n"


def answering(*answers: bytes) -> Handler:
    """A handler that answers each request on a connection with the next of `answers` (the same list on
    every connection), then reads until the client closes."""

    async def handler(peer: Peer) -> None:
        for answer in answers:
            if await peer.request() is None:
                return
            await peer.send(answer)
        await peer.until_closed()

    return handler


def reply_then_close(raw: bytes) -> Handler:
    """A handler that reads one request, writes `raw` and closes the connection."""

    async def handler(peer: Peer) -> None:
        if await peer.request() is not None:
            await peer.send(raw)

    return handler


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- parse_head --------------------------------------------------------------------------------------------

GOOD_HEADS: list[tuple[bytes, tuple[int, int, Headers]]] = [
    (b"HTTP/1.1 200 OK", (1, 200, [])),
    (b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain", (0, 404, [(b"content-type", b"text/plain")])),
    (b"HTTP/1.1 204", (1, 204, [])),  # no reason phrase
    (b"HTTP/1.1 200 ", (1, 200, [])),  # an empty one
    (b"HTTP/1.1 503 Service \tUnavailable \xe9t\xe9", (1, 503, [])),  # tab and obs-text in the reason
    (b"HTTP/1.1 999 Odd", (1, 999, [])),
    # names lower-cased, values as sent (case kept)
    (b"HTTP/1.1 200 OK\r\nX-Request-ID: AbC-1", (1, 200, [(b"x-request-id", b"AbC-1")])),
    # white space around a value dropped, inside it kept; no space after the colon; an empty value
    (b"HTTP/1.1 200 OK\r\nA:   x  y \t", (1, 200, [(b"a", b"x  y")])),
    (b"HTTP/1.1 200 OK\r\nA:v", (1, 200, [(b"a", b"v")])),
    (b"HTTP/1.1 200 OK\r\nA:", (1, 200, [(b"a", b"")])),
    (b"HTTP/1.1 200 OK\r\nA: \t ", (1, 200, [(b"a", b"")])),
    # repeated headers: each kept, in order (not merged)
    (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nSET-COOKIE: c=3",
        (1, 200, [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"set-cookie", b"c=3")]),
    ),
    (b"HTTP/1.1 302 Found\r\nLocation: http://x:1/a?b=c:d", (1, 302, [(b"location", b"http://x:1/a?b=c:d")])),
    (b"HTTP/1.1 200 OK\r\nX!#$%&'*+-.^_`|~9: v", (1, 200, [(b"x!#$%&'*+-.^_`|~9", b"v")])),
    (b"HTTP/1.1 200 OK\r\nX: caf\xc3\xa9\ttab", (1, 200, [(b"x", b"caf\xc3\xa9\ttab")])),  # obs-text, inner tab
    (b"HTTP/1.1 100 Continue", (1, 100, [])),
]


@pytest.mark.parametrize(("head", "expected"), GOOD_HEADS)
def test_parse_head_good(head: bytes, expected: tuple[int, int, Headers]) -> None:
    assert parse_head(head) == expected


BAD_HEADS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\r\nHTTP/1.1 200 OK", id="blank line first"),
    pytest.param(b"HTTP/2 200 OK", id="HTTP/2"),
    pytest.param(b"HTTP/2.0 200 OK", id="HTTP/2.0"),
    pytest.param(b"HTTP/1.2 200 OK", id="HTTP/1.2"),
    pytest.param(b"HTTP/1 200 OK", id="HTTP/1"),
    pytest.param(b"http/1.1 200 OK", id="lower-case name"),
    pytest.param(b"ICY 200 OK", id="ICY"),
    pytest.param(b"HTTP/1.1 abc OK", id="status not numeric"),
    pytest.param(b"HTTP/1.1 20 OK", id="two digits"),
    pytest.param(b"HTTP/1.1 2000 OK", id="four digits"),
    pytest.param(b"HTTP/1.1 099 Low", id="leading zero"),
    pytest.param(b"HTTP/1.1  200 OK", id="two spaces"),
    pytest.param(b"HTTP/1.1 200OK", id="no space before reason"),
    pytest.param(b" HTTP/1.1 200 OK", id="leading space"),
    pytest.param(b"HTTP/1.1 200 O\x00K", id="NUL in reason"),
    pytest.param(b"HTTP/1.1 200 OK\r", id="lone CR in status line"),
    pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 0", id="bare LF line end"),
    pytest.param(b"HTTP/1.1 200 OK\r\nNoColonHere", id="header without colon"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA: b\r\n  folded", id="obs-fold space"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA: b\r\n\tfolded", id="obs-fold tab"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length : 5", id="space before colon"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent Length: 5", id="space in name"),
    pytest.param(b"HTTP/1.1 200 OK\r\n: v", id="empty name"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA(b): v", id="separator in name"),
    pytest.param(b"HTTP/1.1 200 OK\r\ncaf\xc3\xa9: v", id="obs-text in name"),
    pytest.param(b"HTTP/1.1 200 OK\r\n\r\nA: b", id="blank line inside"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA: x\x00y", id="NUL in value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA: x\x01y", id="SOH in value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA: x\x1by", id="ESC in value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA: x\x7fy", id="DEL in value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA: x\ny", id="lone LF in value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA: x\ry", id="lone CR in value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA: x\r", id="CR ending a value"),
]


@pytest.mark.parametrize("head", BAD_HEADS)
def test_parse_head_bad(head: bytes) -> None:
    with pytest.raises(WireError) as caught:
        parse_head(head)
    assert caught.value.code == "protocol_error"


@pytest.mark.parametrize(
    "head",
    [b"X" * 10000, b"HTTP/1.1 200 OK\r\n" + b"Y" * 10000, b"HTTP/1.1 200 OK\r\n" + b"N" * 10000 + b": \x01"],
)
def test_parse_head_error_message_is_short(head: bytes) -> None:
    """A hostile head is quoted only in part (bounded log lines)."""
    with pytest.raises(WireError) as caught:
        parse_head(head)
    assert caught.value.code == "protocol_error"
    assert 10 < len(str(caught.value)) < 200


# -- framing -----------------------------------------------------------------------------------------------

CL = b"content-length"
TE = b"transfer-encoding"
CONN = b"connection"

FRAMINGS: list[Any] = [
    # Content-Length
    pytest.param("GET", 1, 200, [(CL, b"5")], (5, False, True), id="content-length"),
    pytest.param("POST", 1, 201, [(CL, b"0")], (0, False, True), id="content-length 0"),
    pytest.param("GET", 1, 200, [(CL, b" 7 ")], (7, False, True), id="content-length padded"),
    pytest.param("GET", 1, 200, [(CL, b"5"), (CL, b"5")], (5, False, True), id="same length twice"),
    pytest.param("GET", 1, 200, [(CL, b"5, 5")], (5, False, True), id="same length listed"),
    pytest.param("GET", 1, 200, [(CL, b"9" * 18)], (10**18 - 1, False, True), id="18 digits"),
    # chunked
    pytest.param("GET", 1, 200, [(TE, b"chunked")], (None, True, True), id="chunked"),
    pytest.param("GET", 1, 200, [(TE, b"Chunked")], (None, True, True), id="Chunked"),
    pytest.param("GET", 1, 200, [(TE, b" chunked , ")], (None, True, True), id="chunked padded"),
    # no body: HEAD, 1xx, 204, 304 (whatever the framing headers say)
    pytest.param("HEAD", 1, 200, [(CL, b"100")], (0, False, True), id="HEAD"),
    pytest.param("HEAD", 1, 200, [(TE, b"chunked")], (0, False, True), id="HEAD chunked"),
    pytest.param("GET", 1, 204, [(CL, b"5")], (0, False, True), id="204"),
    pytest.param("GET", 1, 304, [(TE, b"chunked")], (0, False, True), id="304"),
    pytest.param("GET", 1, 100, [], (0, False, True), id="100"),
    pytest.param("GET", 1, 103, [(CL, b"9")], (0, False, True), id="103"),
    pytest.param("GET", 1, 204, [(CONN, b"close")], (0, False, False), id="204 close"),
    # reuse: HTTP/1.0 only with keep-alive; never with close
    pytest.param("GET", 0, 200, [(CL, b"5")], (5, False, False), id="1.0"),
    pytest.param("GET", 0, 200, [(CL, b"5"), (CONN, b"keep-alive")], (5, False, True), id="1.0 keep-alive"),
    pytest.param("GET", 0, 200, [(CL, b"5"), (CONN, b"Keep-Alive")], (5, False, True), id="1.0 Keep-Alive"),
    pytest.param("GET", 1, 200, [(CL, b"5"), (CONN, b"close")], (5, False, False), id="close"),
    pytest.param("GET", 1, 200, [(CL, b"5"), (CONN, b"Close")], (5, False, False), id="Close"),
    pytest.param("GET", 1, 200, [(CL, b"5"), (CONN, b"keep-alive, close")], (5, False, False), id="listed close"),
    pytest.param("GET", 1, 200, [(CONN, b"keep-alive"), (CONN, b"close"), (CL, b"5")], (5, False, False), id="2nd"),
    pytest.param("GET", 0, 200, [(CONN, b"keep-alive, close"), (CL, b"5")], (5, False, False), id="1.0 both"),
    pytest.param("GET", 1, 200, [(TE, b"chunked"), (CONN, b"close")], (None, True, False), id="chunked close"),
    # neither: until the connection ends, never reused
    pytest.param("GET", 1, 200, [], (None, False, False), id="until close"),
    pytest.param("GET", 1, 200, [(CONN, b"keep-alive")], (None, False, False), id="until close keep-alive"),
    pytest.param("GET", 0, 200, [(CONN, b"keep-alive")], (None, False, False), id="1.0 until close"),
]


@pytest.mark.parametrize(("method", "minor", "status", "headers", "expected"), FRAMINGS)
def test_framing(
    method: str, minor: int, status: int, headers: Headers, expected: tuple[int | None, bool, bool]
) -> None:
    assert framing(method, minor, status, headers) == expected


BAD_FRAMINGS = [
    pytest.param([(CL, b"5"), (TE, b"chunked")], id="length and chunked"),
    pytest.param([(TE, b"chunked"), (CL, b"5")], id="chunked and length"),
    pytest.param([(CL, b"5"), (CL, b"6")], id="two lengths"),
    pytest.param([(CL, b"5, 6")], id="two lengths listed"),
    pytest.param([(CL, b"-1")], id="negative"),
    pytest.param([(CL, b"+5")], id="plus"),
    pytest.param([(CL, b"5a")], id="trailing letter"),
    pytest.param([(CL, b"0x10")], id="hex"),
    pytest.param([(CL, b"1e3")], id="exponent"),
    pytest.param([(CL, b"")], id="empty"),
    pytest.param([(CL, b"1" * 19)], id="19 digits"),
    pytest.param([(CL, "\uff15".encode())], id="non-ASCII digit"),
    pytest.param([(TE, b"gzip")], id="gzip coding"),
    pytest.param([(TE, b"identity")], id="identity coding"),
    pytest.param([(TE, b"gzip, chunked")], id="gzip then chunked"),
    pytest.param([(TE, b"gzip"), (TE, b"chunked")], id="two TE headers"),
    pytest.param([(TE, b"chunked, chunked")], id="chunked twice"),
    pytest.param([(TE, b"chunked, gzip")], id="chunked not last"),
]


@pytest.mark.parametrize("headers", BAD_FRAMINGS)
@pytest.mark.parametrize("minor", [0, 1])
def test_framing_refused(headers: Headers, minor: int) -> None:
    with pytest.raises(WireError) as caught:
        framing("GET", minor, 200, headers)
    assert caught.value.code == "protocol_error"


# -- target ------------------------------------------------------------------------------------------------

TARGETS = [
    (
        "http://example.com/a/b?x=1&y=2#frag",
        ("http", "example.com", 80),
        b" /a/b?x=1&y=2 HTTP/1.1\r\nhost: example.com\r\n",
    ),
    ("https://Example.COM", ("https", "example.com", 443), b" / HTTP/1.1\r\nhost: example.com\r\n"),
    ("HTTP://h:8080", ("http", "h", 8080), b" / HTTP/1.1\r\nhost: h:8080\r\n"),
    ("https://h:443/x", ("https", "h", 443), b" /x HTTP/1.1\r\nhost: h:443\r\n"),  # an explicit port is sent
    ("http://user:pw@h/p", ("http", "h", 80), b" /p HTTP/1.1\r\nhost: h\r\n"),  # credentials never sent
    ("http://h/p%20q?a=%C3%A9", ("http", "h", 80), b" /p%20q?a=%C3%A9 HTTP/1.1\r\nhost: h\r\n"),
    ("http://[::1]:8080/x", ("http", "::1", 8080), b" /x HTTP/1.1\r\nhost: [::1]:8080\r\n"),
    ("https://[::1]/", ("https", "::1", 443), b" / HTTP/1.1\r\nhost: [::1]\r\n"),
    ("http://[2001:DB8::1]:81/", ("http", "2001:db8::1", 81), b" / HTTP/1.1\r\nhost: [2001:db8::1]:81\r\n"),
]


@pytest.mark.parametrize(("url", "origin", "start"), TARGETS)
def test_target(url: str, origin: tuple[str, str, int], start: bytes) -> None:
    wire = new_wire()
    assert wire.target(url) == (origin, start)
    assert wire.target(url) is wire.target(url)  # remembered


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/x",
        "file:///etc/passwd",
        "h/path",
        "http:///nohost",
        "http://h:99999/",
        "http://h:port/",
        "http://h/a b",
        "http://h/a?b c",
        "http://h/a\x00b",
        "http://a\x00b/",
        "http://a b/",
        "http://h/\ud800",
        "http://a\ud800/",
    ],
)
def test_target_refused(url: str) -> None:
    with pytest.raises(WireError) as caught:
        new_wire().target(url)
    assert caught.value.code == "protocol_error"


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("http://h/r\u00e9sultat.json", b"/r%C3%A9sultat.json"),
        ("http://b\u00fccher.example/", b"host: xn--bcher-kva.example\r\n"),
    ],
)
def test_target_non_ascii_url(url: str, sent: bytes) -> None:
    """A non-ASCII URL is either sent percent-encoded (path) / IDNA-encoded (host) or refused as a WireError."""
    try:
        _, start = new_wire().target(url)
    except WireError as exc:
        assert exc.code == "protocol_error"
    else:
        assert start.isascii() and sent in start


# -- exchanges: requests as sent, answers as framed --------------------------------------------------------


def test_request_bytes_as_sent() -> None:
    """Method, path and query, Host, the caller's header lines, then Content-Length and the body if any."""

    async def main() -> None:
        async with serve(answering(ok(b"1"), ok(b"2"), ok(b"3"))) as server:
            wire = new_wire()
            await fetch(wire, server.url("/v1/x?y=1&z=%2F"))
            await fetch(wire, server.url("/post"), "POST", b'{"a":1}')
            await fetch(wire, server.url("/empty"), "PUT", b"")
            await wire.aclose()
        host = b"host: 127.0.0.1:%d\r\n" % server.port
        assert [request for _, request in server.requests] == [
            b"GET /v1/x?y=1&z=%2F HTTP/1.1\r\n" + host + KEY_LINE + b"\r\n",
            b"POST /post HTTP/1.1\r\n" + host + KEY_LINE + b'content-length: 7\r\n\r\n{"a":1}',
            b"PUT /empty HTTP/1.1\r\n" + host + KEY_LINE + b"content-length: 0\r\n\r\n",
        ]

    run(main())


def test_content_length_body_then_reuse() -> None:
    async def main() -> None:
        first = ok(b'{"data":1}', b"Content-Type: application/json", b"X-Trace: A1")
        async with serve(answering(first, ok(b"second"))) as server:
            wire = new_wire()
            status, headers, body = await fetch(wire, server.url("/a"))
            assert (status, body) == (200, b'{"data":1}')
            assert headers == [(b"content-length", b"10"), (b"content-type", b"application/json"), (b"x-trace", b"A1")]
            assert (await fetch(wire, server.url("/b")))[2] == b"second"
            assert server.connections == 1
            assert [index for index, _ in server.requests] == [0, 0]
            await wire.aclose()

    run(main())


def test_status_and_empty_bodies() -> None:
    """A non-2xx status is an answer (not an error); HEAD, 204 and 304 have no body and keep the connection."""

    async def main() -> None:
        answers = [
            ok(b"missing", status=b"404 Not Found"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",  # to HEAD
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
            ok(b"last"),
        ]
        async with serve(answering(*answers)) as server:
            wire = new_wire()
            assert await fetch(wire, server.url()) == (404, [(b"content-length", b"7")], b"missing")
            assert (await fetch(wire, server.url(), "HEAD"))[::2] == (200, b"")
            assert (await fetch(wire, server.url(), "DELETE"))[::2] == (204, b"")
            assert (await fetch(wire, server.url()))[::2] == (304, b"")
            assert (await fetch(wire, server.url()))[::2] == (200, b"last")
            assert server.connections == 1
            await wire.aclose()

    run(main())


def test_chunked_body_with_trailers_then_reuse() -> None:
    async def main() -> None:
        body = chunked(b"hello ", b"chunked ", b"world", trailers=b"X-Checksum: abc\r\nX-Other: 1\r\n")
        first = CHUNKED_HEAD + b"\r\n" + body.replace(b"6\r\n", b'6;ext=1;q="a"\r\n', 1)
        async with serve(answering(first, ok(b"again"))) as server:
            wire = new_wire()
            assert (await fetch(wire, server.url("/1")))[2] == b"hello chunked world"
            assert (await fetch(wire, server.url("/2")))[2] == b"again"
            assert server.connections == 1
            assert [index for index, _ in server.requests] == [0, 0]
            await wire.aclose()

    run(main())


def test_chunked_body_split_across_reads() -> None:
    """Chunk-size lines, data and CRLFs that arrive in pieces, cut at the awkward places."""

    async def main() -> None:
        data = bytes(range(256)) * 40
        raw = CHUNKED_HEAD + b"\r\n" + chunked(data[:5000], data[5000:5001], data[5001:])
        cuts = [5, len(CHUNKED_HEAD) + 1, len(CHUNKED_HEAD) + 4, len(CHUNKED_HEAD) + 900, len(raw) - 20]
        cuts += [len(raw) - 12, len(raw) - 6, len(raw) - 3, len(raw) - 1]
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]

        async def handler(peer: Peer) -> None:
            async for _ in peer.requests():
                await peer.send(*pieces, gap=0.005)

        async with serve(handler) as server:
            wire = new_wire()
            assert (await fetch(wire, server.url()))[2] == data
            assert (await fetch(wire, server.url()))[2] == data
            assert server.connections == 1
            await wire.aclose()

    run(main())


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"zz\r\nhello\r\n0\r\n\r\n", id="not hex"),
        pytest.param(b"\r\nhello\r\n0\r\n\r\n", id="empty size line"),
        pytest.param(b"-5\r\nhello\r\n0\r\n\r\n", id="negative"),
        pytest.param(b"0x5\r\nhello\r\n0\r\n\r\n", id="0x prefix"),
        pytest.param(b"1" + b"0" * 16 + b"\r\n", id="17 hex digits"),
        pytest.param(b"5\r\nhelloXX0\r\n\r\n", id="no CRLF after data"),
        pytest.param(b"5\r\nhello\n0\r\n\r\n", id="LF after data"),
        pytest.param(b"5;" + b"x" * 9000 + b"\r\nhello\r\n0\r\n\r\n", id="size line too long"),
        pytest.param(b"5;" + b"x" * 9000, id="size line too long, unended"),
        pytest.param(b"0\r\n" + b"X-T: 1\r\n" * 101 + b"\r\n", id="101 trailers"),
    ],
)
def test_bad_chunked_body(body: bytes) -> None:
    async def main() -> None:
        async with serve(answering(CHUNKED_HEAD + b"\r\n" + body)) as server:
            wire = new_wire(concurrency=1)
            await failure(wire, fetch(wire, server.url()), "protocol_error")
            await asyncio.wait_for(server.peers[0].eof.wait(), 1)  # the connection was closed, not kept
            await wire.aclose()

    run(main())


# Bytes a server writes before it closes the connection, and the code the exchange fails with.
CUT_SHORT = [
    pytest.param(b"", "connection_closed", id="nothing"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Le", "connection_closed", id="inside the headers"),
    pytest.param(ok(b"0123456789")[:-6], "connection_closed", id="inside a content-length body"),
    pytest.param(CHUNKED_HEAD + b"\r\n5\r\nhel", "connection_closed", id="inside a chunk"),
    pytest.param(CHUNKED_HEAD + b"\r\n5\r\nhello", "connection_closed", id="before a chunk's CRLF"),
    pytest.param(CHUNKED_HEAD + b"\r\n5\r\nhello\r", "connection_closed", id="inside a chunk's CRLF"),
    pytest.param(CHUNKED_HEAD + b"\r\n5\r\nhello\r\n", "connection_closed", id="before the next size"),
    pytest.param(CHUNKED_HEAD + b"\r\n5\r\nhello\r\n0\r\n", "connection_closed", id="before the trailers end"),
    pytest.param(CHUNKED_HEAD + b"\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n", "connection_closed", id="inside trailers"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n", "connection_closed", id="after an interim answer"),
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "protocol_error", id="101"),
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "protocol_error", id="not HTTP"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
        "protocol_error",
        id="smuggling framing",
    ),
    pytest.param(ok(b"x", b"Content-Length: 2"), "protocol_error", id="two lengths"),
]


@pytest.mark.parametrize(("raw", "code"), CUT_SHORT)
def test_answer_then_close(raw: bytes, code: str) -> None:
    async def main() -> None:
        async with serve(reply_then_close(raw)) as server:
            wire = new_wire(concurrency=1)
            await failure(wire, fetch(wire, server.url()), code)
            await wire.aclose()

    run(main())


def test_until_close_body_is_read_whole_and_not_reused() -> None:
    async def main() -> None:
        data = b"streamed until the end " * 500

        async def handler(peer: Peer) -> None:
            request = await peer.request()
            assert request is not None
            if request.startswith(b"GET /until"):
                await peer.send(b"HTTP/1.1 200 OK\r\n\r\n" + data[:100], data[100:7000], data[7000:], gap=0.01)
            else:
                await peer.send(ok(b"next"))
                await peer.until_closed()

        async with serve(handler) as server:
            wire = new_wire()
            assert (await fetch(wire, server.url("/until")))[2] == data
            assert (await fetch(wire, server.url("/next")))[2] == b"next"
            assert server.connections == 2
            assert [index for index, _ in server.requests] == [0, 1]
            await wire.aclose()

    run(main())


def test_interim_answers_before_the_answer() -> None:
    async def main() -> None:
        interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"

        async def handler(peer: Peer) -> None:
            async for _ in peer.requests():
                await peer.send(interim, ok(b"final", b"X-Final: 1"), gap=0.01)

        async with serve(handler) as server:
            wire = new_wire()
            status, headers, body = await fetch(wire, server.url(), "POST", b"{}")
            assert (status, body) == (200, b"final")
            assert (b"x-final", b"1") in headers and all(name != b"link" for name, _ in headers)
            assert (await fetch(wire, server.url()))[2] == b"final"  # the connection still in step
            assert server.connections == 1
            await wire.aclose()

    run(main())


HEAD_START = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: "


def _head_of(size: int) -> bytes:
    """A status line and headers (Content-Length: 2 among them) of exactly `size` bytes."""
    return HEAD_START + b"a" * (size - len(HEAD_START))


def test_headers_over_the_limit() -> None:
    async def main() -> None:
        async with serve(answering(_head_of(MAX_HEAD_BYTES + 1) + b"\r\n\r\nok")) as server:
            wire = new_wire(concurrency=1)
            await failure(wire, fetch(wire, server.url()), "protocol_error")
        many = b"HTTP/1.1 200 OK\r\n" + b"X-Many: 0123456789abcdef0123456789abcdef\r\n" * 2000  # never ended
        async with serve(answering(many)) as server:
            error = await failure(wire, fetch(wire, server.url()), "protocol_error")
            assert str(MAX_HEAD_BYTES) in str(error)
        async with serve(answering(_head_of(MAX_HEAD_BYTES) + b"\r\n\r\nok")) as server:
            assert await fetch(wire, server.url()) == (
                200,
                [(b"content-length", b"2"), (b"x-pad", b"a" * (MAX_HEAD_BYTES - len(HEAD_START)))],
                b"ok",
            )
        await wire.aclose()

    run(main())


def test_head_of_the_limit_split_before_its_blank_line() -> None:
    async def main() -> None:
        head = _head_of(MAX_HEAD_BYTES)

        async def handler(peer: Peer) -> None:
            await peer.request()
            await peer.send(head + b"\r\n", b"\r\nok", gap=0.05)
            await peer.until_closed()

        async with serve(handler) as server:
            wire = new_wire()
            assert (await fetch(wire, server.url()))[2] == b"ok"
            await wire.aclose()

    run(main())


@pytest.mark.parametrize("extra", [ok(b"stray"), b"\r\n", b"junk"], ids=["answer", "CRLF", "junk"])
def test_an_answer_nobody_asked_for_arrives_with_the_answer(extra: bytes) -> None:
    """Bytes after the body (a second answer, or junk) in the same read: the connection is closed as the
    exchange ends (not kept idle), and the next request opens another."""

    async def main() -> None:
        async def handler(peer: Peer) -> None:
            async for request in peer.requests():
                if request.startswith(b"GET /first"):
                    await peer.send(ok(b"first") + extra)
                else:
                    await peer.send(ok(b"second"))

        async with serve(handler) as server:
            wire = new_wire()
            assert (await fetch(wire, server.url("/first")))[2] == b"first"
            await asyncio.wait_for(server.peers[0].eof.wait(), 1)
            assert (await fetch(wire, server.url("/second")))[2] == b"second"
            assert server.connections == 2
            await wire.aclose()

    run(main())


def test_an_answer_nobody_asked_for_arrives_while_idle() -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            async for request in peer.requests():
                if request.startswith(b"GET /first"):
                    await peer.send(ok(b"first"), ok(b"stray"), gap=0.02)
                else:
                    await peer.send(ok(b"second"))

        async with serve(handler) as server:
            wire = new_wire()
            assert (await fetch(wire, server.url("/first")))[2] == b"first"
            await asyncio.sleep(0.1)
            assert (await fetch(wire, server.url("/second")))[2] == b"second"
            assert server.connections == 2
            await wire.aclose()

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(ok(b"one", b"Connection: close"), id="Connection: close"),
        pytest.param(ok(b"one", b"Connection: keep-alive, Close"), id="close listed"),
        pytest.param(ok(b"one", version=b"1.0"), id="HTTP/1.0"),
    ],
)
def test_answer_that_ends_its_connection_is_not_reused(answer: bytes) -> None:
    """The server keeps the socket open, yet the answer said the connection ends: a new one is opened."""

    async def main() -> None:
        async with serve(answering(answer, answer)) as server:
            wire = new_wire()
            assert (await fetch(wire, server.url()))[2] == b"one"
            assert (await fetch(wire, server.url()))[2] == b"one"
            assert server.connections == 2
            await asyncio.wait_for(server.peers[0].eof.wait(), 1)
            await wire.aclose()

    run(main())


def test_http_1_0_keep_alive_is_reused() -> None:
    async def main() -> None:
        answer = ok(b"one", b"Connection: keep-alive", version=b"1.0")
        async with serve(answering(answer, answer)) as server:
            wire = new_wire()
            await fetch(wire, server.url())
            await fetch(wire, server.url())
            assert server.connections == 1
            await wire.aclose()

    run(main())


@pytest.mark.parametrize(("keepalive", "connections"), [(0.03, 2), (5.0, 1)])
def test_keepalive_expiry(keepalive: float, connections: int) -> None:
    async def main() -> None:
        async with serve(answering(ok(b"1"), ok(b"2"))) as server:
            wire = new_wire(keepalive=keepalive)
            await fetch(wire, server.url())
            await asyncio.sleep(0.1)
            assert (await fetch(wire, server.url()))[2] == (b"1" if connections == 2 else b"2")
            assert server.connections == connections
            if connections == 2:
                await asyncio.wait_for(server.peers[0].eof.wait(), 1)  # the expired one was closed
            await wire.aclose()

    run(main())


def test_server_closes_an_idle_connection() -> None:
    """The next request goes on a new connection, without an error."""

    async def main() -> None:
        async with serve(reply_then_close(ok(b"fine"))) as server:
            wire = new_wire()
            assert (await fetch(wire, server.url()))[2] == b"fine"
            await asyncio.sleep(0.05)
            assert (await fetch(wire, server.url()))[2] == b"fine"
            assert server.connections == 2
            await wire.aclose()

    run(main())


def test_body_not_read_or_error_inside_closes_the_connection() -> None:
    async def main() -> None:
        async with serve(answering(ok(b"one"), ok(b"two"))) as server:
            wire = new_wire(concurrency=1)
            async with wire.exchange("GET", server.url(), KEY_LINE, None, 2.0) as answer:
                assert answer.status == 200  # the body is never read
            with pytest.raises(ZeroDivisionError):
                async with wire.exchange("GET", server.url(), KEY_LINE, None, 2.0) as answer:
                    assert await answer.read(100) == b"one"
                    1 / 0  # noqa: B018
            assert not wire.slots().locked()
            assert (await fetch(wire, server.url()))[2] == b"one"
            assert server.connections == 3
            await asyncio.wait_for(server.peers[1].eof.wait(), 1)
            await wire.aclose()

    run(main())


def test_aclose_closes_idle_connections() -> None:
    async def main() -> None:
        async with serve(answering(ok())) as server:
            wire = new_wire()
            await fetch(wire, server.url())
            assert not server.peers[0].eof.is_set()
            await wire.aclose()
            await asyncio.wait_for(server.peers[0].eof.wait(), 1)

    run(main())


def test_idle_connections_beyond_concurrency_are_closed() -> None:
    """Past `concurrency` open connections, the oldest idle one is closed."""

    async def main() -> None:
        async with serve(answering(ok(b"a"))) as first, serve(answering(ok(b"b"))) as second:
            wire = new_wire(concurrency=1)
            await fetch(wire, first.url())
            await fetch(wire, second.url())
            await asyncio.wait_for(first.peers[0].eof.wait(), 1)
            assert not second.peers[0].eof.is_set()
            await wire.aclose()

    run(main())


def test_at_most_concurrency_exchanges_at_once() -> None:
    async def main() -> None:
        active = 0
        most = 0

        async def handler(peer: Peer) -> None:
            nonlocal active, most
            async for _ in peer.requests():
                active += 1
                most = max(most, active)
                await asyncio.sleep(0.03)
                active -= 1
                await peer.send(ok(b"x"))

        async with serve(handler) as server:
            wire = new_wire(concurrency=2)
            results = await asyncio.gather(*(fetch(wire, server.url()) for _ in range(6)))
            assert [body for _, _, body in results] == [b"x"] * 6
            assert most == 2
            assert server.connections == 2  # both reused
            await wire.aclose()

    run(main())


# -- compressed bodies -------------------------------------------------------------------------------------

TEXT = b"".join(b"line %d of a result file\n" % i for i in range(3000))


@pytest.mark.parametrize(
    ("coding", "compressed"),
    [
        (b"gzip", gzip.compress(TEXT)),
        (b"GZIP", gzip.compress(TEXT)),
        (b"x-gzip", gzip.compress(TEXT)),
        (b"deflate", zlib.compress(TEXT)),  # zlib-wrapped, as RFC 9110 defines it
        (b"gzip", zlib.compress(TEXT)),  # the header is detected either way
    ],
)
@pytest.mark.parametrize("framed", ["length", "chunked"])
def test_compressed_body_inflated(coding: bytes, compressed: bytes, framed: str) -> None:
    async def main() -> None:
        if framed == "length":
            answer = ok(compressed, b"Content-Encoding: " + coding)
        else:
            parts = [compressed[i : i + 1000] for i in range(0, len(compressed), 1000)]
            answer = CHUNKED_HEAD + b"Content-Encoding: " + coding + b"\r\n\r\n" + chunked(*parts)
        async with serve(answering(answer, ok(b"after"))) as server:
            wire = new_wire()
            assert (await fetch(wire, server.url()))[2] == TEXT
            assert (await fetch(wire, server.url()))[2] == b"after"
            assert server.connections == 1
            await wire.aclose()

    run(main())


def test_empty_compressed_body() -> None:
    async def main() -> None:
        async with serve(answering(ok(b"", b"Content-Encoding: gzip"), ok(b"next"))) as server:
            wire = new_wire()
            assert (await fetch(wire, server.url()))[2] == b""
            assert (await fetch(wire, server.url()))[2] == b"next"
            await wire.aclose()

    run(main())


@pytest.mark.parametrize("coding", [b"br", b"identity", b"gzip, br"])
def test_other_codings_passed_as_they_are(coding: bytes) -> None:
    async def main() -> None:
        async with serve(answering(ok(b"\x8b\x00raw", b"Content-Encoding: " + coding))) as server:
            wire = new_wire()
            assert (await fetch(wire, server.url()))[2] == b"\x8b\x00raw"
            await wire.aclose()

    run(main())


def _crc_broken(data: bytes) -> bytes:
    body = bytearray(gzip.compress(data))
    body[-8] ^= 0xFF  # the CRC-32 in the trailer
    return bytes(body)


def _length_broken(data: bytes) -> bytes:
    body = bytearray(gzip.compress(data))
    body[-1] ^= 0xFF  # the ISIZE in the trailer
    return bytes(body)


CORRUPT = [
    pytest.param(b"Content-Encoding: gzip", b"this is not gzip at all", True, id="not gzip"),
    pytest.param(b"Content-Encoding: gzip", b"\x1f\x8b\x08\x00" + b"\xff" * 40, True, id="bad deflate data"),
    pytest.param(b"Content-Encoding: gzip", _crc_broken(TEXT), True, id="bad CRC"),
    pytest.param(b"Content-Encoding: gzip", _length_broken(TEXT), True, id="bad length"),
    pytest.param(b"Content-Encoding: gzip", gzip.compress(TEXT)[:-20], True, id="truncated"),
    pytest.param(b"Content-Encoding: gzip", gzip.compress(TEXT)[:-20], False, id="truncated until close"),
    pytest.param(b"Content-Encoding: gzip", gzip.compress(TEXT)[:10], True, id="header only"),
    pytest.param(b"Content-Encoding: deflate", zlib.compress(TEXT)[:-4], True, id="deflate no adler"),
    pytest.param(b"Content-Encoding: deflate", zlib.compress(TEXT)[2:], True, id="raw deflate"),
]


@pytest.mark.parametrize(("header", "compressed", "length"), CORRUPT)
def test_corrupt_compressed_body(header: bytes, compressed: bytes, length: bool) -> None:
    async def main() -> None:
        if length:
            handler = answering(ok(compressed, header))
        else:
            handler = reply_then_close(b"HTTP/1.1 200 OK\r\n" + header + b"\r\n\r\n" + compressed)
        async with serve(handler) as server:
            wire = new_wire(concurrency=1)
            await failure(wire, fetch(wire, server.url()), "protocol_error")
            if length:  # the connection was closed, not kept
                await asyncio.wait_for(server.peers[0].eof.wait(), 1)
            await wire.aclose()

    run(main())


def test_multi_member_gzip_is_inflated_whole_or_refused() -> None:
    async def main() -> None:
        compressed = gzip.compress(b"first member, ") + gzip.compress(b"second member")
        async with serve(answering(ok(compressed, b"Content-Encoding: gzip"))) as server:
            wire = new_wire()
            try:
                body = (await fetch(wire, server.url()))[2]
            except WireError as exc:
                assert exc.code == "protocol_error"
            else:
                assert body == b"first member, second member"
            await wire.aclose()

    run(main())


@functools.cache
def gzip_bomb() -> bytes:
    return gzip.compress(bytes(16 << 20), 9)


def test_gzip_bomb_is_refused_at_the_limit() -> None:
    """16 MiB of zeros in ~16 KB: read(1 MiB) gives None (the client's body_too_large) without inflating it
    all, and the connection, not read to its end, is not reused."""

    async def main() -> None:
        bomb = gzip_bomb()
        assert len(bomb) < 64 << 10
        async with serve(answering(ok(bomb, b"Content-Encoding: gzip"), ok(b"next"))) as server:
            wire = new_wire(concurrency=1)
            started = time.monotonic()
            assert await fetch(wire, server.url(), limit=1 << 20) == (
                200,
                [(b"content-length", str(len(bomb)).encode()), (b"content-encoding", b"gzip")],
                None,
            )
            assert time.monotonic() - started < 0.5
            assert not wire.slots().locked()
            # not reused: a second connection, whose first answer is the bomb again (reused: b"next")
            assert (await fetch(wire, server.url(), limit=1 << 20))[2] is None
            assert server.connections == 2
            await wire.aclose()

    run(main())


def test_gzip_bomb_streamed_in_bounded_steps() -> None:
    async def main() -> None:
        bomb = gzip_bomb()
        async with serve(answering(ok(bomb, b"Content-Encoding: gzip"))) as server:
            wire = new_wire()
            async with wire.exchange("GET", server.url(), KEY_LINE, None, 2.0) as answer:
                chunks = answer.chunks()
                sizes = [len(await anext(chunks)) for _ in range(12)]
                await chunks.aclose()
                assert not answer.complete
            assert max(sizes) <= wire_module._INFLATE_STEP
            assert sum(sizes) >= 2 << 20
            await wire.aclose()

    run(main())


# -- body size limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(ok(b"x" * 101), id="length"),
        pytest.param(CHUNKED_HEAD + b"\r\n" + chunked(b"x" * 60, b"x" * 41), id="chunked"),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 101, id="until close"),
    ],
)
def test_body_over_the_limit(answer: bytes) -> None:
    async def main() -> None:
        async with serve(answering(answer, ok(b"after"))) as server:
            wire = new_wire(concurrency=1)
            assert (await fetch(wire, server.url(), limit=100))[2] is None
            assert not wire.slots().locked()
            # not reused: a second connection, whose first answer is the same (reused: b"after")
            assert (await fetch(wire, server.url(), limit=100))[2] is None
            assert server.connections == 2
            await wire.aclose()

    run(main())


def test_body_at_the_limit() -> None:
    async def main() -> None:
        async with serve(answering(ok(b"x" * 100), ok(b"y"))) as server:
            wire = new_wire()
            assert (await fetch(wire, server.url(), limit=100))[2] == b"x" * 100
            assert (await fetch(wire, server.url(), limit=100))[2] == b"y"
            assert server.connections == 1
            await wire.aclose()

    run(main())


def test_declared_length_over_the_limit_is_not_waited_for() -> None:
    """A Content-Length past the limit: None at once, though the server sends no body at all."""

    async def main() -> None:
        async with serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")) as server:
            wire = new_wire()
            started = time.monotonic()
            assert (await fetch(wire, server.url(), timeout=None, limit=1 << 20))[2] is None
            assert time.monotonic() - started < 0.5
            await asyncio.wait_for(server.peers[0].eof.wait(), 1)
            await wire.aclose()

    run(main())


# -- streamed bodies (Answer.chunks) -----------------------------------------------------------------------


@pytest.mark.parametrize("framed", ["length", "chunked", "until close"])
def test_chunks_streams_the_body(framed: str) -> None:
    async def main() -> None:
        data = bytes(range(256)) * 64
        parts = [data[i : i + 3000] for i in range(0, len(data), 3000)]
        if framed == "length":
            pieces = [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data), *parts]
        elif framed == "chunked":
            pieces = [CHUNKED_HEAD + b"\r\n", *(chunked(part)[: -len(b"0\r\n\r\n")] for part in parts), b"0\r\n\r\n"]
        else:
            pieces = [b"HTTP/1.1 200 OK\r\n\r\n", *parts]

        async def handler(peer: Peer) -> None:
            if await peer.request() is not None:
                await peer.send(*pieces, gap=0.005)
                if framed != "until close":
                    await peer.until_closed()

        async with serve(handler) as server:
            wire = new_wire()
            got: list[bytes] = []
            async with wire.exchange("GET", server.url(), KEY_LINE, None, 2.0) as answer:
                assert answer.length == (len(data) if framed == "length" else None)
                async for chunk in answer.chunks():
                    assert not answer.complete
                    got.append(chunk)
                assert answer.complete
            assert len(got) > 2
            assert b"".join(got) == data
            await wire.aclose()

    run(main())


def test_chunks_of_a_big_body_read_slowly() -> None:
    """A body past the buffer's high-water mark (reading paused, then resumed) read whole by a slow reader."""

    async def main() -> None:
        data = bytes(range(251)) * ((4 << 20) // 251)
        async with serve(answering(ok(data), ok(b"next"))) as server:
            wire = new_wire()
            size = 0
            digest = zlib.crc32(b"")
            async with wire.exchange("GET", server.url(), KEY_LINE, None, 2.0) as answer:
                await asyncio.sleep(0.05)  # let the buffer fill past the high-water mark
                async for chunk in answer.chunks():
                    size += len(chunk)
                    digest = zlib.crc32(chunk, digest)
                    await asyncio.sleep(0.001)
            assert (size, digest) == (len(data), zlib.crc32(data))
            assert (await fetch(wire, server.url()))[2] == b"next"
            await wire.aclose()

    run(main())


@pytest.mark.parametrize("while_idle", ["stray answer", "server closes"])
def test_paused_connection_is_checked_like_any_idle_one(while_idle: str) -> None:
    async def main() -> None:
        body = b"x" * (wire_module._HIGH_WATER + 1)  # the buffer passes the mark only once the body is whole

        async def handler(peer: Peer) -> None:
            if await peer.request() is None:
                return
            if peer.index == 0:
                await peer.send(ok(body))
                await asyncio.sleep(0.05)
                if while_idle == "stray answer":
                    await peer.send(ok(b"stale"))
                    await peer.until_closed()
                return  # closes the connection
            await peer.send(ok(b"fresh"))
            await peer.until_closed()

        async with serve(handler) as server:
            wire = new_wire()
            async with wire.exchange("GET", server.url(), KEY_LINE, None, 2.0) as answer:
                await asyncio.sleep(0.05)  # the whole body arrives meanwhile
                assert await answer.read(2 << 20) == body
            await asyncio.sleep(0.1)  # the stray answer or the close arrives meanwhile
            assert (await fetch(wire, server.url()))[2] == b"fresh"
            assert server.connections == 2
            await wire.aclose()

    run(main())


# -- timeouts and cancellation -----------------------------------------------------------------------------


def stalling(after: bytes = b"") -> Handler:
    """A handler that writes `after` to each request, then nothing more (reading until the client closes);
    a request for /ok is answered."""

    async def handler(peer: Peer) -> None:
        async for request in peer.requests():
            if request.startswith(b"GET /ok "):
                await peer.send(ok(b"done"))
                continue
            await peer.send(after)
            await peer.until_closed()
            return

    return handler


@pytest.mark.parametrize(
    "after",
    [
        pytest.param(b"", id="no answer"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Le", id="inside the headers"),
        pytest.param(ok(b"0123456789")[:-4], id="inside the body"),
        pytest.param(CHUNKED_HEAD + b"\r\n5\r\nhello\r\n", id="between chunks"),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\nsome", id="until close"),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n", id="after 100 Continue"),
    ],
)
def test_server_stalls_read_timeout(after: bytes) -> None:
    async def main() -> None:
        async with serve(stalling(after)) as server:
            wire = new_wire(concurrency=1)
            started = time.monotonic()
            error = await failure(wire, fetch(wire, server.url(), timeout=0.1), "timeout")
            assert 0.09 < time.monotonic() - started < 1.0
            assert "0.1s" in str(error)
            await asyncio.wait_for(server.peers[0].eof.wait(), 1)  # closed, not kept
            assert (await fetch(wire, server.url("/ok")))[2] == b"done"
            await wire.aclose()

    run(main())


def test_read_timeout_is_per_wait_not_per_answer() -> None:
    """A server that sends a byte every 30 ms takes 0.27 s in all; a 0.12 s read timeout is never reached."""

    async def main() -> None:
        data = b"0123456789"

        async def handler(peer: Peer) -> None:
            async for _ in peer.requests():
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data)
                await peer.send(head, *(data[i : i + 1] for i in range(len(data))), gap=0.03)

        async with serve(handler) as server:
            wire = new_wire()
            started = time.monotonic()
            assert (await fetch(wire, server.url(), timeout=0.12))[2] == data
            assert time.monotonic() - started > 0.2
            await wire.aclose()

    run(main())


def test_deadline_without_read_timer_frees_the_slot() -> None:
    """The client's other way (read_timeout None inside asyncio.timeout): TimeoutError, the slot given back."""

    async def main() -> None:
        async with serve(stalling()) as server:
            wire = new_wire(concurrency=1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await fetch(wire, server.url(), timeout=None)
            assert not wire.slots().locked()
            assert (await asyncio.wait_for(fetch(wire, server.url("/ok")), 1))[2] == b"done"
            await asyncio.wait_for(server.peers[0].eof.wait(), 1)
            await wire.aclose()

    run(main())


def test_cancelled_exchange_frees_its_slot() -> None:
    async def main() -> None:
        async with serve(stalling()) as server:
            wire = new_wire(concurrency=1)
            task = asyncio.create_task(fetch(wire, server.url("/stall"), timeout=None))
            while not server.requests:
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not wire.slots().locked()
            assert (await asyncio.wait_for(fetch(wire, server.url("/ok")), 1))[2] == b"done"
            await asyncio.wait_for(server.peers[0].eof.wait(), 1)  # the cancelled one's connection closed
            assert server.connections == 2
            await wire.aclose()

    run(main())


def test_cancelled_while_waiting_for_a_slot() -> None:
    """A request cancelled before it got a slot takes none away from the others."""

    async def main() -> None:
        release = asyncio.Event()

        async def handler(peer: Peer) -> None:
            async for _ in peer.requests():
                await release.wait()
                await peer.send(ok(b"done"))

        async with serve(handler) as server:
            wire = new_wire(concurrency=1)
            holder = asyncio.create_task(fetch(wire, server.url("/hold")))
            while not server.requests:
                await asyncio.sleep(0.005)
            waiter = asyncio.create_task(fetch(wire, server.url("/wait")))
            await asyncio.sleep(0.02)
            assert not waiter.done()
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            release.set()
            assert (await holder)[2] == b"done"
            assert not wire.slots().locked()
            assert (await asyncio.wait_for(fetch(wire, server.url("/after")), 1))[2] == b"done"
            assert [request.split(b" ")[1] for _, request in server.requests] == [b"/hold", b"/after"]
            await wire.aclose()

    run(main())


# -- connecting --------------------------------------------------------------------------------------------


def test_refused_port() -> None:
    async def main() -> None:
        port = refused_port()
        wire = new_wire(concurrency=1)
        error = await failure(wire, fetch(wire, f"http://127.0.0.1:{port}/x"), "connect_error")
        assert str(error) == f"cannot connect to 127.0.0.1:{port} (connection refused)"

    run(main())


def test_failures_before_the_answer_free_the_slot() -> None:
    """concurrency=1: two failed exchanges (refused, then not HTTP), then one that succeeds."""

    async def main() -> None:
        wire = new_wire(concurrency=1)
        await failure(wire, fetch(wire, f"http://127.0.0.1:{refused_port()}/"), "connect_error")
        await failure(wire, fetch(wire, f"http://127.0.0.1:{refused_port()}/"), "connect_error")
        async with serve(reply_then_close(b"garbage\r\n\r\n")) as bad:
            await failure(wire, fetch(wire, bad.url()), "protocol_error")
        with pytest.raises(WireError):
            await fetch(wire, "ftp://127.0.0.1/")
        assert not wire.slots().locked()
        async with serve(answering(ok(b"good"))) as server:
            assert (await asyncio.wait_for(fetch(wire, server.url()), 1))[2] == b"good"
        await wire.aclose()

    run(main())


@pytest.mark.skipif(sys.platform != "linux", reason="a full accept queue drops new SYNs on Linux")
def test_connect_timeout() -> None:
    async def main() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            fillers = []
            for _ in range(3):  # fill the accept queue: the next connection's SYN goes unanswered
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            await asyncio.sleep(0.05)
            try:
                wire = new_wire(concurrency=1, connect_timeout=0.1)
                started = time.monotonic()
                error = await failure(wire, fetch(wire, f"http://127.0.0.1:{port}/"), "timeout")
                assert time.monotonic() - started < 1.0
                assert str(error) == f"cannot connect to 127.0.0.1:{port} within 0.1s"
            finally:
                for filler in fillers:
                    filler.close()

    run(main())


def test_https_to_a_plain_http_server_is_a_tls_error() -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.reader.read(4096)  # a ClientHello: not HTTP, so a plain server answers 400
            await peer.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await peer.until_closed()

        async with serve(handler) as server:
            wire = new_wire(concurrency=1)
            error = await failure(wire, fetch(wire, server.url(scheme="https")), "tls_error")
            assert f"127.0.0.1:{server.port}" in str(error)
            await wire.aclose()

    run(main())


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
def test_ipv6_literal() -> None:
    async def main() -> None:
        async with serve(answering(ok(b"six")), host="::1") as server:
            wire = new_wire()
            url = server.url("/v6")
            assert url == f"http://[::1]:{server.port}/v6"
            assert wire.target(url) == (
                ("http", "::1", server.port),
                b" /v6 HTTP/1.1\r\nhost: [::1]:%d\r\n" % server.port,
            )
            assert (await fetch(wire, url))[2] == b"six"
            assert server.requests[0][1].startswith(b"GET /v6 HTTP/1.1\r\nhost: [::1]:%d\r\n" % server.port)
            await wire.aclose()

    run(main())


# -- the key -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("echo", ["request as the answer", "request headers in the answer"])
def test_key_never_in_an_error_from_an_echoing_server(echo: str) -> None:
    """A server that sends the request back (the key in it) as a malformed answer: the error quotes none of it."""

    async def main() -> None:
        async def handler(peer: Peer) -> None:
            request = await peer.request()
            assert request is not None and SECRET.encode() in request
            if echo == "request as the answer":
                await peer.send(request)
            else:
                lines = request.split(b"\r\n")[1:-2]
                await peer.send(b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(lines) + b"\r\nmalformed line\r\n\r\n")
            await peer.until_closed()

        async with serve(handler) as server:
            wire = new_wire(concurrency=1)
            await failure(wire, fetch(wire, server.url()), "protocol_error")
            await wire.aclose()

    run(main())


# -- proxies: which, and how they are named (pure) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "direct"),
    [
        ("api.playment.io", 443, "", False),
        ("localhost", 443, "", True),  # loopback: always direct, whatever NO_PROXY says
        ("127.0.0.1", 443, "", True),
        ("127.8.9.10", 80, "", True),
        ("::1", 443, "", True),
        ("db.localhost", 443, "", True),
        ("api.playment.io", 443, "*", True),
        ("api.playment.io", 443, "playment.io", True),
        ("api.playment.io", 443, ".playment.io", True),
        ("api.playment.io", 443, "other.io, playment.io", True),
        ("api.playment.io", 443, "other.io playment.io", True),
        ("api.playment.io", 443, "PLAYMENT.IO", True),
        ("api.playment.io.", 443, "playment.io", True),
        ("notplayment.io", 443, "playment.io", False),  # a domain, not a suffix of letters
        ("api.playment.io", 443, "io.playment", False),
        ("api.playment.io", 443, "api.playment.io:443", True),
        ("api.playment.io", 443, "api.playment.io:8443", False),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("11.1.2.3", 443, "10.0.0.0/8", False),
        ("fd00::5", 443, "fd00::/8", True),
        ("api.playment.io", 443, "10.0.0.0/8", False),  # a network says nothing of a name
        ("10.1.2.3", 443, "not/a-network", False),
        ("api.playment.io", 443, ", ,", False),
    ],
)
def test_bypassed(host: str, port: int, no_proxy: str, direct: bool) -> None:
    assert wire_module.bypassed(host, port, no_proxy) is direct


def test_proxies_from_env_lower_case_wins_and_cgi_drops_http() -> None:
    env = {
        "HTTPS_PROXY": "http://upper:1",
        "https_proxy": "http://lower:2",
        "HTTP_PROXY": "http://h:3",
        "NO_PROXY": "x",
    }
    assert wire_module.proxies_from_env(env) == {"https": "http://lower:2", "http": "http://h:3", "no": "x"}
    assert wire_module.proxies_from_env({**env, "REQUEST_METHOD": "GET"}) == {"https": "http://lower:2", "no": "x"}
    assert wire_module.proxies_from_env({"HTTPS_PROXY": "", "PATH": "/bin"}) == {}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://proxy.corp:3128", wire_module.Proxy("proxy.corp", 3128)),
        ("proxy.corp:3128", wire_module.Proxy("proxy.corp", 3128)),  # no scheme: http, as curl and requests
        ("http://proxy.corp", wire_module.Proxy("proxy.corp", 80)),
        (
            "http://us%40er:p%3Aw%20d@proxy.corp:3128",
            wire_module.Proxy("proxy.corp", 3128, b"proxy-authorization: Basic dXNAZXI6cDp3IGQ=\r\n"),
        ),
        (
            "http://user@proxy.corp:3128",
            wire_module.Proxy("proxy.corp", 3128, b"proxy-authorization: Basic dXNlcjo=\r\n"),
        ),
        ("https://proxy.corp:3129", wire_module.Proxy("proxy.corp", 3129, tls=True)),
        ("https://proxy.corp", wire_module.Proxy("proxy.corp", 443, tls=True)),
    ],
)
def test_proxy_route(url: str, expected: object) -> None:
    assert wire_module.proxy_route("https", "api.playment.io", 443, {"https": url}) == expected


@pytest.mark.parametrize("url", ["socks5://proxy.corp:1080", "ftp://proxy.corp:21", "http://proxy.corp:99999"])
def test_proxy_route_unsupported(url: str) -> None:
    proxy = wire_module.proxy_route("https", "api.playment.io", 443, {"https": url})
    assert proxy is not None and proxy.unsupported


def test_proxy_route_none() -> None:
    assert wire_module.proxy_route("https", "api.playment.io", 443, {"http": "http://p:1"}) is None
    assert wire_module.proxy_route("https", "127.0.0.1", 443, {"https": "http://p:1"}) is None
    assert wire_module.proxy_route("https", "api.playment.io", 443, {"https": "http://p:1", "no": "*"}) is None
