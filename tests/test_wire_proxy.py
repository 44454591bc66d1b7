"""uploader.api.wire through an HTTP proxy (Wire's `proxies`), and ApiClient taking its proxies from the environment.

The proxy is a scripted loopback server (tests.scripted_server.serve). For http:// it plays the origin too: it
receives the absolute-form request and answers it. For https:// it answers CONNECT and then terminates the
tunnel itself (StreamWriter.start_tls with a trustme certificate for the target's name), so one server sees
the CONNECT head and, decrypted, the requests sent inside the tunnel. Targets are named by non-loopback names
(api.example.test, ...) because loopback always goes direct; a fake resolver (`lookups`, autouse) maps the
test names to 127.0.0.1, fails any other name at once (no DNS traffic) and records what was resolved: through
a proxy the wire never resolves the target itself.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from tests.scripted_server import Handler, Peer, Server, ok, run, serve
from tests.test_wire import KEY_LINE, SECRET, answering, failure, fetch, ipv6_loopback, refused_port
from uploader.api import client as client_module
from uploader.api.client import ApiClient
from uploader.api.loop import run_loop
from uploader.api.wire import Wire, WireError

TARGET = "api.example.test"
#: Names the fake resolver maps to 127.0.0.1 (none of them loopback by name).
FAKE_HOSTS = {TARGET, "other.example.test", "internal.example", "svc.corp", "plain.example.test"}

USER = "proxy-user-8d1f"
PASSWORD = "p@ss/w%rd:Q9z"  # in the proxy URL percent-encoded: what goes in Basic is the decoded text
PASSWORD_QUOTED = "p%40ss%2Fw%25rd%3AQ9z"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
AUTH_LINE = f"proxy-authorization: Basic {BASIC}\r\n".encode()
#: Text no error may hold: the credentials in any form, and the API key.
SECRETS = (USER, PASSWORD, PASSWORD_QUOTED, BASIC, SECRET)

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


# -- fixtures and helpers ----------------------------------------------------------------------------------


class Certs:
    """A test CA; server contexts for the target's name and for another name; a client context trusting it."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server = self._server(TARGET)
        self.wrong_name = self._server("other.example.test")
        self.proxy = self._server("127.0.0.1")  #: an https:// proxy's, for the address the tests name it by
        self.client = ssl.create_default_context()
        self.ca.configure_trust(self.client)

    def _server(self, name: str) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(name).configure_cert(context)
        return context


@pytest.fixture(scope="module")
def certs() -> Certs:
    return Certs()


@pytest.fixture(autouse=True)
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The host names resolved during the test. FAKE_HOSTS resolve to 127.0.0.1; localhost and IP literals as
    usual; any other name fails at once."""
    real = socket.getaddrinfo
    seen: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        seen.append(name)
        if name in FAKE_HOSTS:
            return real("127.0.0.1", port, *args, **kwargs)
        if name is None or name == "localhost" or _is_ip(name):
            return real(host, port, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return seen


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return False
    return True


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable (any case) in the environment, nor REQUEST_METHOD (urllib ignores HTTP_PROXY under CGI)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)
    return monkeypatch


def proxied(proxies: dict[str, str] | None, tls: ssl.SSLContext | None = None, **kwargs: Any) -> Wire:
    """A Wire with `proxies`; `connect_timeout` 2 s and `concurrency` 1 unless given."""
    concurrency = kwargs.pop("concurrency", 1)
    connect_timeout = kwargs.pop("connect_timeout", 2.0)
    return Wire(concurrency, tls or ssl.create_default_context(), connect_timeout, proxies=proxies, **kwargs)


def proxy_url(server: Server | int, credentials: bool = False, scheme: str = "http") -> str:
    port = server if isinstance(server, int) else server.port
    auth = f"{USER}:{PASSWORD_QUOTED}@" if credentials else ""
    return f"{scheme}://{auth}127.0.0.1:{port}"


def tunnelling(tls: ssl.SSLContext, *answers: bytes, established: tuple[bytes, ...] = (ESTABLISHED,)) -> Handler:
    """A proxy that answers CONNECT with `established` (pieces written apart), then plays the origin inside
    the tunnel: TLS with `tls`, each request answered with the next of `answers`."""

    async def handler(peer: Peer) -> None:
        if await peer.request() is None:
            return
        await peer.send(*established, gap=0.02)
        try:
            await peer.writer.start_tls(tls)
        except (ssl.SSLError, OSError):
            return  # the client refused the certificate: what the TLS tests want
        await answering(*answers)(peer)

    return handler


def refusing(*pieces: bytes) -> Handler:
    """A proxy that reads the CONNECT, writes `pieces` and reads until the client closes."""

    async def handler(peer: Peer) -> None:
        if await peer.request() is None:
            return
        await peer.send(*pieces)
        await peer.until_closed()

    return handler


def closing(*pieces: bytes) -> Handler:
    """A proxy that reads the CONNECT, writes `pieces` and closes the connection."""

    async def handler(peer: Peer) -> None:
        if await peer.request() is not None:
            await peer.send(*pieces)

    return handler


async def trap(peer: Peer) -> None:
    """A proxy that must not be used: it reads until the client closes (the test checks connections == 0)."""
    await peer.until_closed()


async def proxy_failure(wire: Wire, url: str, code: str | tuple[str, ...], timeout: float | None = 2.0) -> WireError:
    """The WireError of a GET of `url` (tests.test_wire.failure's checks: key absent, slot given back), its
    code one of `code`, and no form of the proxy's credentials in its message or repr."""
    codes = (code,) if isinstance(code, str) else code
    with pytest.raises(WireError) as caught:
        await fetch(wire, url, timeout=timeout)
    error = caught.value
    assert error.code in codes, (error.code, str(error))
    error = await failure(wire, _raise(error), error.code)
    for text in (str(error), repr(error)):
        for secret in SECRETS:
            assert secret not in text, text
        assert "proxy-authorization" not in text.lower(), text
    return error


async def _raise(error: WireError) -> None:
    raise error


def tunnelled_url(path: str = "/v1/x", port: int = 8443) -> str:
    return f"https://{TARGET}:{port}{path}"


# -- no proxy ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proxies", [None, {}], ids=["None", "empty"])
def test_without_proxies_connects_directly(proxies: dict[str, str] | None) -> None:
    async def main() -> None:
        async with serve(answering(ok(b"direct"))) as server:
            wire = proxied(proxies)
            assert (await fetch(wire, server.url("/d?q=1")))[2] == b"direct"
            assert server.requests == [
                (0, b"GET /d?q=1 HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n" % server.port + KEY_LINE + b"\r\n")
            ]
            await wire.aclose()

    run(main())


LOOPBACKS = [
    pytest.param("127.0.0.1", "127.0.0.1", id="127.0.0.1"),
    pytest.param("localhost", "127.0.0.1", id="localhost"),
    pytest.param(
        "127.0.0.2",
        "127.0.0.2",
        id="127.0.0.2",
        marks=pytest.mark.skipif(sys.platform != "linux", reason="all of 127/8 is loopback on Linux only"),
    ),
    pytest.param("::1", "::1", id="::1"),
]


@pytest.mark.parametrize(("host", "listen"), LOOPBACKS)
def test_loopback_is_always_direct(host: str, listen: str) -> None:
    """Whatever the mapping says (no "no" entry at all), a loopback host is never sent to the proxy."""
    if listen == "::1" and not ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) on this machine")

    async def main() -> None:
        async with serve(trap) as proxy, serve(answering(ok(b"local")), host=listen) as server:
            wire = proxied({"http": proxy_url(proxy), "https": proxy_url(proxy), "all": proxy_url(proxy)})
            name = f"[{host}]" if ":" in host else host
            assert (await fetch(wire, f"http://{name}:{server.port}/x"))[2] == b"local"
            assert server.requests[0][1].startswith(b"GET /x HTTP/1.1\r\n")
            assert proxy.connections == 0
            await wire.aclose()

    run(main())


@pytest.mark.parametrize(
    ("host", "no", "direct"),
    [
        pytest.param("internal.example", "internal.example,.corp", True, id="listed"),
        pytest.param("svc.corp", "internal.example,.corp", True, id="domain suffix"),
        pytest.param("svc.corp", "internal.example, corp", True, id="bare suffix, spaces"),
        pytest.param("internal.example", "*", True, id="star"),
        pytest.param("plain.example.test", "internal.example,.corp", False, id="not listed"),
        pytest.param("plain.example.test", "", False, id="empty list"),
    ],
)
def test_no_proxy_list(host: str, no: str, direct: bool) -> None:
    """Hosts urllib.request.proxy_bypass_environment bypasses go direct (origin-form to the server itself);
    the others through the proxy (absolute form)."""

    async def main() -> None:
        async with serve(answering(ok(b"proxy"))) as proxy, serve(answering(ok(b"origin"))) as server:
            wire = proxied({"http": proxy_url(proxy), "no": no})
            url = f"http://{host}:{server.port}/n"
            body = (await fetch(wire, url))[2]
            if direct:
                assert body == b"origin"
                assert proxy.connections == 0
                assert server.requests[0][1].startswith(
                    b"GET /n HTTP/1.1\r\nhost: %s:%d\r\n" % (host.encode(), server.port)
                )
            else:
                assert body == b"proxy"
                assert server.connections == 0
                assert proxy.requests[0][1].startswith(b"GET %s HTTP/1.1\r\n" % url.encode())
            await wire.aclose()

    run(main())


def test_scheme_without_a_proxy_goes_direct() -> None:
    """Only an https proxy given: an http URL is sent directly."""

    async def main() -> None:
        async with serve(trap) as proxy, serve(answering(ok(b"origin"))) as server:
            wire = proxied({"https": proxy_url(proxy)})
            assert (await fetch(wire, f"http://plain.example.test:{server.port}/p"))[2] == b"origin"
            assert proxy.connections == 0
            await wire.aclose()

    run(main())


# -- http:// through the proxy: absolute form --------------------------------------------------------------


def test_http_request_in_absolute_form(lookups: list[str]) -> None:
    async def main() -> None:
        async with serve(answering(ok(b'{"ok": 1}'))) as proxy:
            wire = proxied({"http": proxy_url(proxy)})
            url = f"http://{TARGET}:8080/v1/jobs?x=1&y=%C3%A9"
            status, _, data = await fetch(wire, url, method="POST", body=b'{"a": true}')
            assert (status, data) == (200, b'{"ok": 1}')
            start = b"POST http://api.example.test:8080/v1/jobs?x=1&y=%C3%A9 HTTP/1.1\r\n"
            host = b"host: api.example.test:8080\r\n"
            assert proxy.requests == [(0, start + host + KEY_LINE + b'content-length: 11\r\n\r\n{"a": true}')]
            assert TARGET not in lookups  # the proxy resolves it, not the wire
            await wire.aclose()

    run(main())


def test_http_request_with_proxy_credentials() -> None:
    """The credentials percent-decoded, in Basic, right after the host header."""

    async def main() -> None:
        async with serve(answering(ok(b"authed"))) as proxy:
            wire = proxied({"http": proxy_url(proxy, credentials=True)})
            assert (await fetch(wire, f"http://{TARGET}:8080/a"))[2] == b"authed"
            assert proxy.requests == [
                (
                    0,
                    b"GET http://api.example.test:8080/a HTTP/1.1\r\nhost: api.example.test:8080\r\n"
                    + AUTH_LINE
                    + KEY_LINE
                    + b"\r\n",
                )
            ]
            assert base64.b64decode(BASIC) == b"proxy-user-8d1f:p@ss/w%rd:Q9z"
            await wire.aclose()

    run(main())


def test_http_proxy_connection_is_reused() -> None:
    """Two sequential requests to the same origin: one connection to the proxy."""

    async def main() -> None:
        async with serve(answering(ok(b"one"), ok(b"two"))) as proxy:
            wire = proxied({"http": proxy_url(proxy)})
            assert (await fetch(wire, f"http://{TARGET}:8080/1"))[2] == b"one"
            assert (await fetch(wire, f"http://{TARGET}:8080/2"))[2] == b"two"
            assert proxy.connections == 1
            assert [(index, request.split(b"\r\n")[0]) for index, request in proxy.requests] == [
                (0, b"GET http://api.example.test:8080/1 HTTP/1.1"),
                (0, b"GET http://api.example.test:8080/2 HTTP/1.1"),
            ]
            await wire.aclose()

    run(main())


def test_http_proxy_connection_not_reused_after_close() -> None:
    async def main() -> None:
        async with serve(answering(ok(b"bye", b"Connection: close"), ok(b"again"))) as proxy:
            wire = proxied({"http": proxy_url(proxy)})
            assert (await fetch(wire, f"http://{TARGET}:8080/1"))[2] == b"bye"
            assert (await fetch(wire, f"http://{TARGET}:8080/2"))[2] == b"bye"
            assert proxy.connections == 2
            await wire.aclose()

    run(main())


# -- https:// through the proxy: CONNECT -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "authority", "host_header"),
    [
        pytest.param(tunnelled_url("/v1/x?y=1"), b"api.example.test:8443", b"api.example.test:8443", id="port"),
        pytest.param(f"https://{TARGET}/v1/x?y=1", b"api.example.test:443", b"api.example.test", id="default port"),
    ],
)
def test_connect_request_and_tunnelled_request(
    certs: Certs, lookups: list[str], url: str, authority: bytes, host_header: bytes
) -> None:
    async def main() -> None:
        async with serve(tunnelling(certs.server, ok(b"secure"))) as proxy:
            wire = proxied({"https": proxy_url(proxy)}, certs.client)
            assert (await fetch(wire, url))[2] == b"secure"
            assert proxy.requests == [
                (0, b"CONNECT %s HTTP/1.1\r\nhost: %s\r\n\r\n" % (authority, authority)),
                (0, b"GET /v1/x?y=1 HTTP/1.1\r\nhost: %s\r\n" % host_header + KEY_LINE + b"\r\n"),
            ]
            assert TARGET not in lookups
            await wire.aclose()

    run(main())


def test_connect_with_credentials_keeps_them_out_of_the_tunnel(certs: Certs) -> None:
    async def main() -> None:
        async with serve(tunnelling(certs.server, ok(b"created", status=b"201 Created"))) as proxy:
            wire = proxied({"https": proxy_url(proxy, credentials=True)}, certs.client)
            status, _, data = await fetch(wire, tunnelled_url("/v1/jobs"), method="POST", body=b"{}")
            assert (status, data) == (201, b"created")
            (_, connect), (_, inside) = proxy.requests
            assert connect == (
                b"CONNECT api.example.test:8443 HTTP/1.1\r\nhost: api.example.test:8443\r\n" + AUTH_LINE + b"\r\n"
            )
            assert inside == (
                b"POST /v1/jobs HTTP/1.1\r\nhost: api.example.test:8443\r\n" + KEY_LINE + b"content-length: 2\r\n\r\n{}"
            )
            assert b"proxy-authorization" not in inside.lower() and BASIC.encode() not in inside
            assert SECRET.encode() not in connect  # nor the API key to the proxy
            await wire.aclose()

    run(main())


@pytest.mark.parametrize(
    "established",
    [
        pytest.param((b"HTTP/1.0 200 Connection established\r\nProxy-Agent: test\r\n\r\n",), id="1.0 with headers"),
        pytest.param((b"HTTP/1.1 200 Conn", b"ection established\r\n", b"\r\n"), id="in pieces"),
        pytest.param((b"HTTP/1.1 204 No Content\r\n\r\n",), id="other 2xx"),
    ],
)
def test_connect_answers_that_open_the_tunnel(certs: Certs, established: tuple[bytes, ...]) -> None:
    async def main() -> None:
        async with serve(tunnelling(certs.server, ok(b"in"), established=established)) as proxy:
            wire = proxied({"https": proxy_url(proxy)}, certs.client)
            assert (await fetch(wire, tunnelled_url()))[2] == b"in"
            await wire.aclose()

    run(main())


def test_tunnel_is_reused(certs: Certs) -> None:
    """Two sequential requests to the same origin: one connection, one CONNECT."""

    async def main() -> None:
        async with serve(tunnelling(certs.server, ok(b"one"), ok(b"two"))) as proxy:
            wire = proxied({"https": proxy_url(proxy, credentials=True)}, certs.client)
            assert (await fetch(wire, tunnelled_url("/1")))[2] == b"one"
            assert (await fetch(wire, tunnelled_url("/2")))[2] == b"two"
            assert proxy.connections == 1
            assert [(index, request.split(b"\r\n")[0]) for index, request in proxy.requests] == [
                (0, b"CONNECT api.example.test:8443 HTTP/1.1"),
                (0, b"GET /1 HTTP/1.1"),
                (0, b"GET /2 HTTP/1.1"),
            ]
            await wire.aclose()

    run(main())


def test_tunnels_per_origin(certs: Certs) -> None:
    """Another origin (another port) gets a tunnel of its own."""

    async def main() -> None:
        async with serve(tunnelling(certs.server, ok(b"x"))) as proxy:
            wire = proxied({"https": proxy_url(proxy)}, certs.client, concurrency=2)
            assert (await fetch(wire, tunnelled_url("/a", port=8443)))[2] == b"x"
            assert (await fetch(wire, tunnelled_url("/b", port=9443)))[2] == b"x"
            connects = sorted(
                request.split(b"\r\n")[0] for _, request in proxy.requests if request.startswith(b"CONNECT")
            )
            assert connects == [b"CONNECT api.example.test:8443 HTTP/1.1", b"CONNECT api.example.test:9443 HTTP/1.1"]
            assert proxy.connections == 2
            await wire.aclose()

    run(main())


# -- failures ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_proxy_unreachable(scheme: str) -> None:
    async def main() -> None:
        port = refused_port()
        wire = proxied({scheme: proxy_url(port, credentials=True)})
        error = await proxy_failure(wire, f"{scheme}://{TARGET}:8443/x", "connect_error")
        assert f"127.0.0.1:{port}" in str(error)

    run(main())


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        pytest.param(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nforbidden", "403", id="403"),
        pytest.param(
            b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="p"\r\n'
            b"Content-Length: 0\r\n\r\n",
            "407",
            id="407",
        ),
        pytest.param(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n", "502", id="502"),
        pytest.param(
            b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n", "302", id="302"
        ),
    ],
)
def test_connect_refused_by_the_proxy(answer: bytes, status: str) -> None:
    async def main() -> None:
        async with serve(refusing(answer)) as proxy:
            wire = proxied({"https": proxy_url(proxy, credentials=True)})
            error = await proxy_failure(wire, tunnelled_url(), "connect_error")
            assert status in str(error)
            if status == "407":
                assert "auth" in str(error).lower()
            await asyncio.wait_for(proxy.peers[0].eof.wait(), 1)  # the refused connection is closed
            assert proxy.connections == 1 and len(proxy.requests) == 1  # no request after the refusal
            await wire.aclose()

    run(main())


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(closing(), id="closes at once"),
        pytest.param(closing(b"HTTP/1.1 200 Conn"), id="closes inside the head"),
        pytest.param(refusing(b"garbage\r\n\r\n"), id="garbage"),
        pytest.param(refusing(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"), id="not HTTP"),
        pytest.param(refusing(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"), id="malformed header"),
    ],
)
def test_connect_answer_unusable(handler: Handler) -> None:
    async def main() -> None:
        async with serve(handler) as proxy:
            wire = proxied({"https": proxy_url(proxy, credentials=True)})
            await proxy_failure(wire, tunnelled_url(), ("connect_error", "protocol_error"))
            await wire.aclose()

    run(main())


def test_proxy_echoing_the_connect_leaks_nothing() -> None:
    """A proxy that sends the CONNECT (credentials in it) back as its answer: the error quotes none of them."""

    async def main() -> None:
        async def echo(peer: Peer) -> None:
            request = await peer.request()
            if request is not None:
                await peer.send(request)
                await peer.until_closed()

        async with serve(echo) as proxy:
            wire = proxied({"https": proxy_url(proxy, credentials=True)})
            await proxy_failure(wire, tunnelled_url(), ("connect_error", "protocol_error"))
            await wire.aclose()

    run(main())


def test_http_proxy_echoing_the_request_leaks_nothing() -> None:
    """An http proxy that sends the absolute-form request (credentials and key in it) back as its answer."""

    async def main() -> None:
        async def echo(peer: Peer) -> None:
            request = await peer.request()
            if request is not None:
                lines = request.split(b"\r\n")[1:-2]
                await peer.send(b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(lines) + b"\r\nmalformed line\r\n\r\n")
                await peer.until_closed()

        async with serve(echo) as proxy:
            wire = proxied({"http": proxy_url(proxy, credentials=True)})
            await proxy_failure(wire, f"http://{TARGET}:8080/", "protocol_error")
            await wire.aclose()

    run(main())


@pytest.mark.parametrize("tls", ["wrong host name", "untrusted CA"])
def test_tls_failure_through_the_tunnel(certs: Certs, tls: str) -> None:
    async def main() -> None:
        server_tls, client_tls = (
            (certs.wrong_name, certs.client)
            if tls == "wrong host name"
            else (certs.server, ssl.create_default_context())
        )
        async with serve(tunnelling(server_tls, ok(b"never"))) as proxy:
            wire = proxied({"https": proxy_url(proxy, credentials=True)}, client_tls)
            await proxy_failure(wire, tunnelled_url(), "tls_error")
            assert len(proxy.requests) == 1  # the CONNECT only: nothing sent over a failed handshake
            await wire.aclose()

    run(main())


# -- an https:// proxy: TLS with the proxy, the tunnel's TLS inside it ----------------------------------------


def test_https_proxy_tunnels_tls_inside_tls(certs: Certs, lookups: list[str]) -> None:
    """HTTPS_PROXY=https://…: TLS with the proxy (its certificate checked for its own name), the CONNECT and its
    credentials inside that, then TLS with the API inside the tunnel; the proxy sees the CONNECT only in clear
    to itself, and the tunnelled request only because this test's proxy terminates the inner TLS too."""

    async def main() -> None:
        async with serve(tunnelling(certs.server, ok(b"inner")), tls=certs.proxy) as proxy:
            wire = proxied({"https": proxy_url(proxy, credentials=True, scheme="https")}, certs.client)
            assert (await fetch(wire, tunnelled_url("/v1/jobs")))[2] == b"inner"
            (_, connect), (_, inside) = proxy.requests
            assert connect == (
                b"CONNECT api.example.test:8443 HTTP/1.1\r\nhost: api.example.test:8443\r\n" + AUTH_LINE + b"\r\n"
            )
            assert inside == b"GET /v1/jobs HTTP/1.1\r\nhost: api.example.test:8443\r\n" + KEY_LINE + b"\r\n"
            assert TARGET not in lookups
            await wire.aclose()

    run(main())


def test_https_proxy_carries_http_in_absolute_form_over_tls(certs: Certs) -> None:
    async def main() -> None:
        async with serve(answering(ok(b"plain")), tls=certs.proxy) as proxy:
            wire = proxied({"http": proxy_url(proxy, scheme="https")}, certs.client)
            assert (await fetch(wire, f"http://{TARGET}:8080/v1/x"))[2] == b"plain"
            ((_, request),) = proxy.requests
            assert request.startswith(b"GET http://api.example.test:8080/v1/x HTTP/1.1\r\n")
            await wire.aclose()

    run(main())


def test_https_proxy_whose_certificate_is_not_trusted_is_told_and_nothing_is_sent(certs: Certs) -> None:
    """The proxy's certificate names another host: TLS with the proxy fails (tls_error, naming the proxy), before
    the CONNECT or any request, so nothing reached the proxy, let alone the API."""

    async def main() -> None:
        async with serve(trap, tls=certs.wrong_name) as proxy:
            wire = proxied({"https": proxy_url(proxy, credentials=True, scheme="https")}, certs.client)
            error = await proxy_failure(wire, tunnelled_url(), "tls_error")
            assert f"the proxy 127.0.0.1:{proxy.port}" in str(error)
            assert proxy.requests == []
            await wire.aclose()

    run(main())


@pytest.mark.parametrize("url", ["socks5://127.0.0.1:1080", "ftp://127.0.0.1:21"])
def test_a_proxy_url_of_another_scheme_is_not_supported(url: str) -> None:
    async def main() -> None:
        async with serve(trap) as proxy:
            wire = proxied({"https": url})
            error = await proxy_failure(wire, f"https://{TARGET}:8443/", "connect_error")
            assert "not supported" in str(error) and proxy.connections == 0
            await wire.aclose()

    run(main())


@pytest.mark.parametrize("stall", ["no CONNECT answer", "no TLS handshake"])
def test_connect_timeout_bounds_the_setup(stall: str) -> None:
    """A proxy that never answers the CONNECT, or answers it and then never completes the handshake: a timeout
    within connect_timeout, though the exchange itself has no read timeout."""

    async def main() -> None:
        handler = refusing() if stall == "no CONNECT answer" else refusing(ESTABLISHED)
        async with serve(handler) as proxy:
            wire = proxied({"https": proxy_url(proxy, credentials=True)}, connect_timeout=0.2)
            started = time.monotonic()
            await proxy_failure(wire, tunnelled_url(), "timeout", timeout=None)
            assert 0.15 < time.monotonic() - started < 1.0
            await asyncio.wait_for(proxy.peers[0].eof.wait(), 1)  # given up: closed
            await wire.aclose()

    run(main())


def test_failed_setup_frees_the_slot_for_the_next_request(certs: Certs) -> None:
    """concurrency=1: a refused CONNECT, then a tunnel that works (a new connection)."""

    async def main() -> None:
        async def handler(peer: Peer) -> None:
            if peer.index == 0:
                await refusing(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")(peer)
            else:
                await tunnelling(certs.server, ok(b"second"))(peer)

        async with serve(handler) as proxy:
            wire = proxied({"https": proxy_url(proxy)}, certs.client)
            await proxy_failure(wire, tunnelled_url(), "connect_error")
            assert (await asyncio.wait_for(fetch(wire, tunnelled_url()), 1))[2] == b"second"
            assert proxy.connections == 2
            await wire.aclose()

    run(main())


# -- ApiClient: proxies from the environment ---------------------------------------------------------------

KEY = "sk-proxy-test-2b7e4d9a1c6f3e8b"
JOB = json.dumps({"data": {"job_id": "j1", "status": "completed"}, "success": True}).encode()


@pytest.fixture
def client_tls(clean_env: pytest.MonkeyPatch, certs: Certs) -> Iterator[None]:
    """ApiClient's TLS context: the test CA's (no warm-up context)."""
    clean_env.setattr(client_module, "tls_context", lambda: None)
    clean_env.setattr(client_module, "new_tls_context", lambda: certs.client)
    yield


def _client_secrets_absent(result: Any) -> None:
    for text in (str(result), repr(result), result.message or ""):
        for secret in (USER, PASSWORD, PASSWORD_QUOTED, BASIC, KEY):
            assert secret not in text, text


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
def test_api_client_http_proxy_from_environment(clean_env: pytest.MonkeyPatch, variable: str) -> None:
    async def main() -> None:
        async with serve(answering(ok(JOB))) as proxy:
            clean_env.setenv(variable, proxy_url(proxy, credentials=True))
            async with ApiClient(f"http://{TARGET}:8080", KEY, timeout=2.0) as api:
                result = await api.get_job("p1", "j1")
            assert result.success is True, result
            assert result.data == {"job_id": "j1", "status": "completed"}
            (_, request), *_ = proxy.requests
            assert request.startswith(
                b"GET http://api.example.test:8080/v1/projects/p1/jobs/j1 HTTP/1.1\r\nhost: api.example.test:8080\r\n"
                + AUTH_LINE
            )

    run(main())


@pytest.mark.parametrize(
    ("variable", "scheme"), [("HTTPS_PROXY", "http"), ("https_proxy", "http"), ("HTTPS_PROXY", "https")]
)
def test_api_client_https_proxy_from_environment(
    clean_env: pytest.MonkeyPatch, client_tls: None, certs: Certs, variable: str, scheme: str
) -> None:
    """The ApiClient, in the event loop every command runs in (uvloop's where installed), through an http://
    proxy, or an https:// one (TLS inside TLS)."""

    async def main() -> None:
        async with serve(
            tunnelling(certs.server, ok(JOB), ok(JOB)), tls=certs.proxy if scheme == "https" else None
        ) as proxy:
            clean_env.setenv(variable, proxy_url(proxy, credentials=True, scheme=scheme))
            async with ApiClient(f"https://{TARGET}:8443", KEY, timeout=2.0) as api:
                first = await api.get_job("p1", "j1")
                second = await api.get_job("p1", "j1")
            assert first.success is True and second.success is True, (first, second)
            (_, connect), (_, inside), _ = proxy.requests
            assert connect == (
                b"CONNECT api.example.test:8443 HTTP/1.1\r\nhost: api.example.test:8443\r\n" + AUTH_LINE + b"\r\n"
            )
            assert inside.startswith(b"GET /v1/projects/p1/jobs/j1 HTTP/1.1\r\nhost: api.example.test:8443\r\n")
            assert f"x-api-key: {KEY}\r\n".encode() in inside
            assert b"proxy-authorization" not in inside.lower()
            assert proxy.connections == 1  # the tunnel reused

    run_loop(asyncio.wait_for(main(), 5))


def test_api_client_no_proxy_from_environment(clean_env: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with serve(trap) as proxy, serve(answering(ok(JOB))) as server:
            clean_env.setenv("HTTP_PROXY", proxy_url(proxy))
            clean_env.setenv("NO_PROXY", "internal.example,.corp")
            async with ApiClient(f"http://internal.example:{server.port}", KEY, timeout=2.0) as api:
                result = await api.get_job("p1", "j1")
            assert result.success is True, result
            assert proxy.connections == 0
            assert server.requests[0][1].startswith(b"GET /v1/projects/p1/jobs/j1 HTTP/1.1\r\n")

    run(main())


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_api_client_loopback_sandbox_ignores_proxy(clean_env: pytest.MonkeyPatch, host: str) -> None:
    """The loopback sandbox works with HTTP_PROXY (and the others) set: loopback is always direct."""

    async def main() -> None:
        async with serve(trap) as proxy, serve(answering(ok(JOB))) as server:
            for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
                clean_env.setenv(variable, proxy_url(proxy))
            async with ApiClient(f"http://{host}:{server.port}", KEY, timeout=2.0) as api:
                result = await api.get_job("p1", "j1")
            assert result.success is True, result
            assert proxy.connections == 0
            assert server.requests[0][1].startswith(b"GET /v1/projects/p1/jobs/j1 HTTP/1.1\r\n")

    run(main())


def test_api_client_proxy_refusal(clean_env: pytest.MonkeyPatch, client_tls: None) -> None:
    """A 407 to the CONNECT: a connect_error result, neither the credentials nor the key in it."""

    async def main() -> None:
        answer = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
        async with serve(refusing(answer)) as proxy:
            clean_env.setenv("HTTPS_PROXY", proxy_url(proxy, credentials=True))
            async with ApiClient(f"https://{TARGET}:8443", KEY, timeout=2.0) as api:
                result = await api.get_job("p1", "j1")
            assert result.success is not True
            assert result.code == "connect_error", result
            _client_secrets_absent(result)

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 407 x\r\nX-Echo : " + AUTH_LINE + b"\r\n", id="407, bad header line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-Echo : " + AUTH_LINE + b"\r\n", id="200, bad header line"),
    ],
)
def test_api_client_redacts_the_proxy_credentials_a_proxy_echoes(
    answer: bytes, clean_env: pytest.MonkeyPatch, client_tls: None
) -> None:
    """The wire quotes the first bytes of a malformed header line; a proxy echoing its Proxy-Authorization
    there leaves no part of the Basic token (nor the user or password) in the client's result."""

    async def main() -> None:
        async with serve(refusing(answer)) as proxy:
            clean_env.setenv("HTTPS_PROXY", proxy_url(proxy, credentials=True))
            async with ApiClient(f"https://{TARGET}:8443", KEY, timeout=2.0) as api:
                result = await api.get_job("p1", "j1")
            assert result.success is not True and result.code == "connect_error", result
            for text in (result.message or "", repr(result)):
                assert not any(BASIC[i : i + 8] in text for i in range(len(BASIC) - 7)), text
            _client_secrets_absent(result)

    run(main())


def test_api_client_without_proxy_variables_goes_direct(clean_env: pytest.MonkeyPatch) -> None:
    """No variable: the Wire gets an empty mapping and connects directly (here: a name the fake resolver maps)."""

    async def main() -> None:
        async with serve(answering(ok(JOB))) as server:
            async with ApiClient(f"http://plain.example.test:{server.port}", KEY, timeout=2.0) as api:
                result = await api.get_job("p1", "j1")
            assert result.success is True, result
            assert server.requests[0][1].startswith(b"GET /v1/projects/p1/jobs/j1 HTTP/1.1\r\n")

    run(main())


# -- the attachment preflight (uploader.api.attachments) through the same proxies --------------------------------

#: An attachment host's answer to the preflight's one-byte GET: the first byte of a 10-byte JPEG.
PARTIAL_JPEG = (
    b"HTTP/1.1 206 Partial Content\r\nContent-Type: image/jpeg\r\nContent-Range: bytes 0-0/10\r\n"
    b"Content-Length: 1\r\n\r\n\xff"
)


@pytest.mark.parametrize("listen", ["127.0.0.1", "::1"])
def test_preflight_checks_go_through_the_http_proxy(monkeypatch: pytest.MonkeyPatch, listen: str) -> None:
    """`uploader check`'s one request for an http URL, its ranged GET, goes to HTTP_PROXY in absolute form,
    with the proxy's Basic credentials; a proxy at an IPv6 address is reached at it (its URL in brackets)."""
    from uploader.api import check_urls

    if listen == "::1" and not ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) on this machine")
    where = f"[{listen}]" if ":" in listen else listen

    async def proxy(peer: Peer) -> None:
        async for _ in peer.requests():
            await peer.send(PARTIAL_JPEG)

    async def main() -> tuple[dict[str, tuple[str, int | None]], list[bytes]]:
        async with serve(proxy, host=listen) as server:
            monkeypatch.setenv("HTTP_PROXY", f"http://u:p%40ss@{where}:{server.port}")
            checks = {c.url: (c.verdict, c.length) async for c in check_urls(["http://cdn.example.test/a.jpg"])}
        return checks, [request for _, request in server.requests]

    checks, requests = run(main())
    assert checks == {"http://cdn.example.test/a.jpg": ("ok", 10)}
    (get,) = requests
    assert get.startswith(b"GET http://cdn.example.test/a.jpg HTTP/1.1\r\n"), get
    assert b"Range: bytes=0-0\r\n" in get, get
    assert b"Proxy-Authorization: Basic dTpwQHNz\r\n" in get, get


def test_preflight_reports_an_unusable_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from uploader.api import check_urls

    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:secret@proxy.example.test:1080")

    async def main() -> list[tuple[str, str | None]]:
        return [(c.verdict, c.detail) async for c in check_urls(["https://cdn.example.test/a.jpg"])]

    ((verdict, detail),) = run(main())
    assert verdict == "unreachable" and detail is not None and "not supported" in detail, detail
    assert "secret" not in detail and "user" not in detail


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_preflight_checks_of_https_urls_go_through_a_tunnel(
    certs: Certs, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, scheme: str
) -> None:
    """An https attachment URL: a CONNECT with the proxy's credentials, then the ranged GET inside the tunnel,
    TLS checked against the test CA (SSL_CERT_FILE), without the credentials. An https:// proxy: all of it
    inside TLS with the proxy."""
    from uploader.api import check_urls

    ca_file = tmp_path / "ca.pem"
    certs.ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))

    async def main() -> tuple[list[str], list[bytes]]:
        async with serve(
            tunnelling(certs.server, PARTIAL_JPEG), tls=certs.proxy if scheme == "https" else None
        ) as proxy:
            monkeypatch.setenv("HTTPS_PROXY", proxy_url(proxy, credentials=True, scheme=scheme))
            verdicts = [c.verdict async for c in check_urls([f"https://{TARGET}:8443/a.png"])]
        return verdicts, [request for _, request in proxy.requests]

    verdicts, (connect, inside) = run(main())
    assert verdicts == ["ok"]
    assert connect.startswith(b"CONNECT api.example.test:8443 HTTP/1.1\r\n"), connect
    assert f"Basic {BASIC}".encode() in connect
    assert inside.startswith(b"GET /a.png HTTP/1.1\r\n") and b"Range: bytes=0-0\r\n" in inside, inside
    assert BASIC.encode() not in inside and b"proxy-authorization" not in inside.lower()
