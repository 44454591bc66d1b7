"""HTTP/1.1 on the event loop's own transports: what the client's requests and result downloads need, no more.

A request is bytes written to a kept-alive connection of its origin; an answer is read by a strict parser:
a status line and header block (at most MAX_HEAD_BYTES), a body framed by Content-Length, chunked coding or
the connection's end, gzip or deflate inflated as it arrives. Anything that is not valid HTTP/1.x is a
WireError with the code the API policy knows (protocol_error), and so is every network failure
(connect_error, tls_error, timeout, connection_closed). A connection is reused only when its answer was read
to the end, the server did not ask to close it, it has been idle less than the keep-alive time, and nothing
arrived on it while idle (HTTP/1.1 ties an answer to its request by order alone: an answer nobody asked for
would be read as the next request's). Through an HTTP proxy where the environment names one (HTTPS_PROXY,
HTTP_PROXY, NO_PROXY, as curl and requests read them): https in a CONNECT tunnel, http in absolute form; never
for a loopback host. An https:// proxy is spoken to over TLS, the tunnel's own TLS inside it. Standard library
only.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import re
import socket
import ssl
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import NamedTuple, cast
from urllib.parse import SplitResult, quote, unquote, urlsplit

__all__ = [
    "MAX_HEAD_BYTES",
    "Answer",
    "Proxies",
    "Proxy",
    "Wire",
    "WireError",
    "bypassed",
    "framing",
    "parse_head",
    "parse_proxy",
    "proxies_from_env",
    "proxy_route",
]

#: The longest status line and header block read; a longer one is not an answer (aiohttp's and h11's bound).
MAX_HEAD_BYTES = 64 << 10
_MAX_LINE_BYTES = 8 << 10  # a chunk-size or trailer line
_MAX_TRAILERS = 100
#: Buffered bytes past which the socket is not read until the reader catches up (a fast server's big body).
_HIGH_WATER = 1 << 20
#: At most this many bytes inflated per step: a small compressed body cannot become a huge buffer at once.
_INFLATE_STEP = 256 << 10

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [^\x00-\x08\x0a-\x1f\x7f]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Control bytes no header line may hold (a lone CR or LF included: lines end in CRLF, split already).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
#: What a request target keeps as it is: every printable ASCII character (its %XX escapes included).
_PRINTABLE = "".join(map(chr, range(0x21, 0x7F)))
#: A host as urlsplit gives it (brackets removed from an IPv6 address): RFC 3986's reg-name or IP literal.
_HOST = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%:-]+")

Headers = list[tuple[bytes, bytes]]
#: An origin: (scheme, host, port).
_Origin = tuple[str, str, int]


class WireError(Exception):
    """An exchange that produced no usable answer; `code` is the client's synthetic error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_head(head: bytes) -> tuple[int, int, Headers]:
    """(HTTP minor version, status, headers with lower-case names) of a status line and header block
    (CRLF-separated, without the blank line); WireError(protocol_error) for anything else."""
    lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise WireError("protocol_error", f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    headers: Headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):  # also a folded line (leading space) or space before ':'
            raise WireError("protocol_error", f"a malformed header line: {line[:60]!r}")
        if _CONTROL.search(value):
            raise WireError("protocol_error", f"a control character in header {name[:40]!r}")
        headers.append((name.lower(), value.strip(b" \t")))
    return int(match[1]), int(match[2]), headers


def framing(method: str, minor: int, status: int, headers: Headers) -> tuple[int | None, bool, bool]:
    """How an answer's body ends and whether its connection may carry another request:
    (Content-Length or None, chunked, reusable). Neither length nor chunked: the body ends when the connection
    does. Conflicting or malformed framing is a WireError(protocol_error): reading it one way when the server
    meant another would hand the rest to the next request."""
    codings: list[bytes] = []
    lengths: set[bytes] = set()
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"transfer-encoding":
            codings += [c.strip(b" \t").lower() for c in value.split(b",") if c.strip(b" \t")]
        elif name == b"content-length":
            lengths.update(v.strip(b" \t") for v in value.split(b","))
        elif name == b"connection":
            tokens.update(t.strip(b" \t").lower() for t in value.split(b","))
    reusable = b"close" not in tokens and (minor == 1 or b"keep-alive" in tokens)
    if status < 200 or status in (204, 304) or method == "HEAD":
        return 0, False, reusable
    if codings:
        if codings != [b"chunked"]:
            raise WireError("protocol_error", f"an unsupported transfer coding: {b', '.join(codings)[:60]!r}")
        if lengths:
            raise WireError("protocol_error", "both Content-Length and chunked transfer coding")
        return None, True, reusable
    if lengths:
        (length, *others) = lengths
        if others or not length.isdigit() or len(length) > 18:
            raise WireError("protocol_error", f"an invalid Content-Length: {b', '.join(sorted(lengths))[:60]!r}")
        return int(length), False, reusable
    return None, False, False


class Proxy(NamedTuple):
    """An HTTP proxy: where it listens, and the Proxy-Authorization header line its URL's credentials make
    (empty without). `unsupported`: why it cannot be used (a URL that is not http:// or https://), else empty.
    `tls`: an https:// proxy, spoken to over TLS (a tunnel's own TLS then runs inside it)."""

    host: str
    port: int
    auth: bytes = b""
    unsupported: str = ""
    tls: bool = False

    @property
    def where(self) -> str:
        return f"the proxy {_authority(self.host, self.port)}"

    @property
    def url(self) -> str:
        """Its URL without credentials (they are in `auth`)."""
        return f"{'https' if self.tls else 'http'}://{_authority(self.host, self.port)}"

    @property
    def authorization(self) -> str:
        """The value of its Proxy-Authorization header ("" without credentials)."""
        return self.auth.decode("ascii").partition(": ")[2].rstrip("\r\n")


def proxies_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """{scheme: proxy URL, "no": the no-proxy list} from `*_proxy` variables, as urllib and curl read them:
    the lower-case name wins over the upper-case one; HTTP_PROXY is ignored under CGI (REQUEST_METHOD set),
    where a client's `Proxy:` header would set it."""
    found: dict[str, str] = {}
    for name, value in environ.items():
        if value and name.lower().endswith("_proxy") and name != name.lower():
            found[name.lower()[:-6]] = value
    for name, value in environ.items():
        if value and name.endswith("_proxy") and name == name.lower():
            found[name[:-6]] = value
    if "REQUEST_METHOD" in environ:
        found.pop("http", None)
    return found


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether `host` is reached directly: a loopback host always (no proxy can reach it), else a NO_PROXY
    entry that is `*`, the host, a domain it is in (`example.com` and `.example.com` both match
    `api.example.com`), the host with its port, or a network (CIDR) its address is in."""
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if host == "localhost" or host.endswith(".localhost") or (address is not None and address.is_loopback):
        return True
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower().strip("[]")
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry and address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name, colon, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if colon and entry_port != str(port):
            continue
        name = name.lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def proxy_route(scheme: str, host: str, port: int, proxies: Mapping[str, str]) -> Proxy | None:
    """The proxy a request to scheme://host:port goes through, or None (directly)."""
    url = proxies.get(scheme)
    if not url or bypassed(host, port, proxies.get("no", "")):
        return None
    return parse_proxy(url, scheme)


def _split_proxy_url(url: str) -> SplitResult:
    return urlsplit(url if "://" in url else f"http://{url}")  # no scheme: http, as curl and requests


def parse_proxy(url: str, scheme: str) -> Proxy:
    """The proxy of a `{scheme}_proxy` variable's URL; one that cannot be used has `unsupported` set."""
    parts = _split_proxy_url(url)
    try:
        proxy_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        proxy_port = 0
    proxy_host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not proxy_host or not proxy_port:
        plain = parts.scheme in ("http", "https")
        why = "a proxy URL without a host" if plain else f"a {parts.scheme}:// proxy URL"
        return Proxy(
            proxy_host,
            proxy_port,
            unsupported=f"{why} is not supported, only http:// or https://HOST[:PORT] (the {scheme}_proxy variable)",
        )
    auth = b""
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = b"proxy-authorization: Basic " + base64.b64encode(credentials) + b"\r\n"
    return Proxy(proxy_host, proxy_port, auth, tls=parts.scheme == "https")


def proxy_problem(url: str, proxies: Mapping[str, str]) -> str | None:
    """Why requests to `url` cannot go through the proxy `proxies` (proxies_from_env) name for it (a socks5://
    URL, one without a host), or None: told before the first request, not retried as an unreachable API."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    proxy = proxy_route(parts.scheme, parts.hostname or "", port, proxies)
    if proxy is None or not proxy.unsupported:
        return None
    return f"cannot connect through {proxy.where}: {proxy.unsupported}"


class Proxies:
    """The proxies of {scheme: proxy URL, "no": NO_PROXY} (proxies_from_env), each URL read once; `route`
    remembers each origin's proxy. Shared by the API's requests (Wire) and the attachments' preflight."""

    def __init__(self, urls: Mapping[str, str] | None = None) -> None:
        urls = dict(urls or {})
        self._no = urls.pop("no", "")
        self._by_scheme = {scheme: parse_proxy(url, scheme) for scheme, url in urls.items() if url}
        self._routes: dict[tuple[str, str, int], Proxy | None] = {}
        # What of the proxies' URLs no message may hold: each user name, password and Basic token (of 4
        # characters or more: redacting a shorter one would garble every message and hide little).
        self.secrets: list[str] = []
        for url in urls.values():
            parts = _split_proxy_url(url)
            if parts.username is not None:
                user, password = unquote(parts.username), unquote(parts.password or "")
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                self.secrets += [s for s in (user, password, parts.password or "", token) if len(s) >= 4]

    def __bool__(self) -> bool:
        return bool(self._by_scheme)

    def route(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy of scheme://host:port (remembered), or None: direct."""
        origin = (scheme, host, port)
        if origin not in self._routes:
            if len(self._routes) >= 4096:
                self._routes.clear()
            proxy = self._by_scheme.get(scheme)
            self._routes[origin] = None if proxy is None or bypassed(host, port, self._no) else proxy
        return self._routes[origin]


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Connection(asyncio.Protocol):
    """One socket: what it received (`buffer`), whether it ended, and one waiter for more."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.ended = False
        self.idle_since = 0.0
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.origin: _Origin = ("", "", 0)
        self.on_lost: Callable[[_Connection], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one, without the class

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _HIGH_WATER and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._wake()
        if self.on_lost is not None:
            self.on_lost(self)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def more(self, timeout: float | None) -> bool:
        """Wait until more bytes arrive (True) or the connection has ended (False); WireError(timeout) when
        nothing comes within `timeout` seconds."""
        if self.ended:
            return False
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        size = len(self.buffer)
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter, timeout)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None
        return len(self.buffer) > size or not self.ended

    def take(self, most: int) -> bytes:
        """At most `most` buffered bytes, removed from the buffer."""
        buffer = self.buffer
        if most >= len(buffer):
            piece = bytes(buffer)
            buffer.clear()
        else:
            piece = bytes(buffer[:most])
            del buffer[:most]
        if self._paused:
            self._drained()
        return piece

    def drop(self, count: int) -> None:
        """Remove `count` bytes from the buffer."""
        del self.buffer[:count]
        if self._paused:
            self._drained()

    def _drained(self) -> None:
        """Read the socket again once the buffer is below the mark: a paused connection would see neither the
        server's close nor bytes nobody asked for, and could be kept for the next request unchecked."""
        if len(self.buffer) <= _HIGH_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(WireError("timeout", f"nothing received for {timeout:g}s"))


async def _head(conn: _Connection, timeout: float | None) -> bytes:
    """The status line and headers (without the blank line that ends them), removed from the buffer."""
    start = 0
    while True:
        end = conn.buffer.find(b"\r\n\r\n", start)
        if end >= 0:
            if end > MAX_HEAD_BYTES:
                break
            head = bytes(conn.buffer[:end])
            conn.drop(end + 4)
            return head
        if len(conn.buffer) > MAX_HEAD_BYTES + 3:  # its blank line could still end within the limit
            break
        start = max(0, len(conn.buffer) - 3)
        if not await conn.more(timeout):
            if conn.buffer:
                raise WireError("connection_closed", "the connection ended inside the answer's headers")
            raise WireError("connection_closed", "the server closed the connection before answering")
    raise WireError("protocol_error", f"the answer's headers are longer than {MAX_HEAD_BYTES} bytes")


async def _line(conn: _Connection, timeout: float | None) -> bytes:
    """One CRLF-ended line of a chunked body (without the CRLF)."""
    while True:
        end = conn.buffer.find(b"\r\n")
        if 0 <= end <= _MAX_LINE_BYTES:
            line = bytes(conn.buffer[:end])
            conn.drop(end + 2)
            return line
        if end > _MAX_LINE_BYTES or len(conn.buffer) > _MAX_LINE_BYTES:
            raise WireError("protocol_error", "a chunked body's line is too long")
        if not await conn.more(timeout):
            raise WireError("connection_closed", "the connection ended inside a chunked body")


async def _exactly(conn: _Connection, size: int, timeout: float | None) -> AsyncIterator[bytes]:
    """`size` bytes of body as they arrive."""
    while size:
        if not conn.buffer and not await conn.more(timeout):
            raise WireError("connection_closed", "the connection ended before the whole body arrived")
        piece = conn.take(size)
        size -= len(piece)
        yield piece


async def _chunked(conn: _Connection, timeout: float | None) -> AsyncIterator[bytes]:
    """The data of a chunked body as it arrives; its trailers are read and dropped."""
    while True:
        size_text = (await _line(conn, timeout)).split(b";", 1)[0].strip(b" \t")
        if not _HEX.fullmatch(size_text):
            raise WireError("protocol_error", f"an invalid chunk size: {size_text[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            for _ in range(_MAX_TRAILERS + 1):
                if not await _line(conn, timeout):
                    return
            raise WireError("protocol_error", "too many trailer lines")
        async for piece in _exactly(conn, size, timeout):
            yield piece
        while len(conn.buffer) < 2:
            if not await conn.more(timeout):
                raise WireError("connection_closed", "the connection ended inside a chunked body")
        if conn.take(2) != b"\r\n":
            raise WireError("protocol_error", "a chunk not followed by CRLF")


async def _to_end(conn: _Connection, timeout: float | None) -> AsyncIterator[bytes]:
    """Everything until the server closes the connection."""
    while True:
        if conn.buffer:
            yield conn.take(len(conn.buffer))
        elif not await conn.more(timeout):
            return


async def _inflated(pieces: AsyncIterator[bytes], wbits: int) -> AsyncIterator[bytes]:
    """A gzip or zlib stream's bytes inflated, at most _INFLATE_STEP at a time. Bytes after the end of a
    stream begin another (gzip allows any number of members); anything else there is a corrupt body."""
    inflater = zlib.decompressobj(wbits)
    try:
        async for piece in pieces:
            while piece:
                if inflater.eof:
                    inflater = zlib.decompressobj(wbits)
                data = inflater.decompress(piece, _INFLATE_STEP)
                if data:
                    yield data
                piece = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        tail = inflater.flush()
    except zlib.error as exc:
        raise WireError("protocol_error", f"the compressed body is corrupt ({exc})") from None
    if tail:
        yield tail
    if not inflater.eof:
        raise WireError("protocol_error", "the compressed body ends early")


#: Content-Encoding → zlib wbits (32 + 15: a gzip or zlib header, detected). Any other coding is passed as is.
_INFLATE_WBITS = {b"gzip": 47, b"x-gzip": 47, b"deflate": 47}


class Answer:
    """One answer: status and headers read; the body read by `read` or `chunks`, once."""

    def __init__(
        self, conn: _Connection, status: int, headers: Headers, length: int | None, chunked: bool, timeout: float | None
    ) -> None:
        self.status = status
        self.headers = headers
        self.length = length
        self.complete = length == 0
        self._conn = conn
        self._chunked = chunked
        self._timeout = timeout
        encoding = _header(headers, b"content-encoding")
        self._encoding = None if encoding is None else _INFLATE_WBITS.get(encoding)

    async def read(self, limit: int) -> bytes | None:
        """The whole (decoded) body, or None once it exceeds `limit` bytes (read no further)."""
        conn = self._conn
        length = self.length
        if self._encoding is None and length is not None:
            if length > limit:
                return None
            if len(conn.buffer) >= length:  # the usual small answer: arrived with its headers
                self.complete = True
                return conn.take(length)
        parts: list[bytes] = []
        size = 0
        chunks = self.chunks()
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                await chunks.aclose()
                return None
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body (decoded) as it arrives; `complete` once its end was read."""
        conn, timeout = self._conn, self._timeout
        if self.complete:
            return
        if self._chunked:
            pieces = _chunked(conn, timeout)
        elif self.length is not None:
            pieces = _exactly(conn, self.length, timeout)
        else:
            pieces = _to_end(conn, timeout)
        if self._encoding is not None:
            pieces = _inflated(pieces, self._encoding)
        async for piece in pieces:
            yield piece
        self.complete = True


def _header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value.lower()
    return None


class Wire:
    """Kept-alive connections per origin, at most `concurrency` exchanges at once; made inside a running loop
    or before one (nothing binds to a loop until the first request). `proxies`: {scheme: proxy URL, "no":
    NO_PROXY} (proxies_from_env); none: every connection is direct."""

    def __init__(
        self,
        concurrency: int,
        tls: ssl.SSLContext,
        connect_timeout: float,
        keepalive: float = 4.0,
        proxies: dict[str, str] | None = None,
    ) -> None:
        self._tls = tls
        self.proxies = Proxies(proxies)
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._targets: dict[str, tuple[_Origin, bytes]] = {}
        self._open: set[_Connection] = set()

    def exchange(
        self, method: str, url: str, headers: bytes, body: bytes | None, read_timeout: float | None
    ) -> _Exchange:
        """`async with wire.exchange(...) as answer:` one request and its answer. `headers` is the block of
        header lines (each ending in CRLF) beside Host and Content-Length. On leaving, the connection is kept
        for the next request when the answer was read to its end and may be, and closed otherwise."""
        return _Exchange(self, method, url, headers, body, read_timeout)

    def target(self, url: str) -> tuple[_Origin, bytes]:
        """(origin, request line start + Host header) of an http(s) URL, remembered (job URLs repeat)."""
        known = self._targets.get(url)
        if known is not None:
            return known
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise WireError("protocol_error", "not an http(s) URL")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise WireError("protocol_error", "an invalid port in the URL") from None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c in path for c in " \r\n\t\0"):
            raise WireError("protocol_error", "a URL with white space or control characters")
        host = parts.hostname
        try:
            path = quote(path, safe=_PRINTABLE)  # non-ASCII as UTF-8 %XX, the way browsers send it
            if not host.isascii():
                host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise WireError("protocol_error", "a URL that cannot be encoded (not valid Unicode or IDNA)") from None
        if not _HOST.fullmatch(host):
            raise WireError("protocol_error", "a host name with characters no host name holds")
        host_header = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            host_header += f":{port}"
        origin = (scheme, host, port)
        proxy = self.route(origin) if scheme == "http" else None
        if proxy is None:
            start = f" {path} HTTP/1.1\r\nhost: {host_header}\r\n".encode("ascii")
        else:  # the absolute form, which tells the proxy where to send it
            start = f" http://{host_header}{path} HTTP/1.1\r\nhost: {host_header}\r\n".encode("ascii") + proxy.auth
        known = origin, start
        if len(self._targets) >= 4096:
            self._targets.clear()
        self._targets[url] = known
        return known

    def route(self, origin: _Origin) -> Proxy | None:
        """The proxy of `origin`, or None: direct."""
        return self.proxies.route(*origin)

    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._concurrency)
        return self._slots

    async def connection(self, origin: _Origin) -> _Connection:
        """An idle connection of `origin` fit to carry a request, or a new one."""
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.ended or conn.buffer or now - conn.idle_since > self._keepalive:
                self.discard(conn)  # closed by the server, expired, or bytes nobody asked for arrived
                continue
            return conn
        return await self._connect(origin)

    async def _connect(self, origin: _Origin) -> _Connection:
        scheme, host, port = origin
        proxy = self.route(origin)
        if proxy is not None and proxy.unsupported:
            raise WireError("connect_error", f"cannot connect through {proxy.where}: {proxy.unsupported}")
        where = _authority(host, port) if proxy is None else proxy.where
        try:
            async with asyncio.timeout(self._connect_timeout):
                if proxy is None:
                    conn = await _dial(host, port, self._tls if scheme == "https" else None, where)
                else:
                    conn = await _dial(proxy.host, proxy.port, self._tls if proxy.tls else None, where)
                    if scheme == "https":
                        try:
                            await _tunnel(conn, proxy, host, port, self._tls)
                        except BaseException:
                            conn.close()
                            raise
        except TimeoutError:
            raise WireError("timeout", f"cannot connect to {where} within {self._connect_timeout:g}s") from None
        conn.origin = origin
        conn.on_lost = self._forget
        self._open.add(conn)
        return conn

    def release(self, conn: _Connection) -> None:
        """Keep `conn` for the next request of its origin (the oldest idle one closed past `concurrency`)."""
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)
        if len(self._open) > self._concurrency:
            oldest = min((c for conns in self._idle.values() for c in conns), key=lambda c: c.idle_since)
            self.discard(oldest)

    def discard(self, conn: _Connection) -> None:
        """Close `conn` and forget it."""
        conn.close()
        self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.origin]

    async def aclose(self) -> None:
        """Close every connection."""
        for conn in list(self._open):
            self.discard(conn)
        self._idle.clear()


async def _dial(host: str, port: int, tls: ssl.SSLContext | None, where: str) -> _Connection:
    """A new connection to host:port (TLS with `tls`); network failures as WireError naming `where`."""
    loop = asyncio.get_running_loop()
    try:
        _, conn = await loop.create_connection(
            _Connection, host, port, ssl=tls, server_hostname=host if tls is not None else None
        )
    except ssl.SSLError as exc:
        raise WireError("tls_error", f"TLS with {where} failed ({exc.reason or exc})") from None
    except socket.gaierror as exc:
        raise WireError("connect_error", f"cannot connect to {where} (host name not found: {exc.strerror})") from None
    except OSError as exc:
        raise WireError("connect_error", f"cannot connect to {where} ({_why(exc)})") from None
    return conn


async def _tunnel(conn: _Connection, proxy: Proxy, host: str, port: int, tls: ssl.SSLContext) -> None:
    """Ask the proxy on `conn` for a tunnel to host:port (CONNECT), then speak TLS with host through it."""
    target = _authority(host, port)
    assert conn.transport is not None
    conn.transport.write(f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n".encode("ascii") + proxy.auth + b"\r\n")
    try:
        while True:
            _, status, _ = parse_head(await _head(conn, None))  # bounded by the connect timeout
            if status >= 200:
                break
    except WireError as exc:  # nothing was sent to the target: a connect_error whatever went wrong
        raise WireError("connect_error", f"{proxy.where}, asked for a tunnel to {target}: {exc}") from None
    if not 200 <= status < 300:
        why = " (proxy authentication required or refused)" if status == 407 else ""
        raise WireError("connect_error", f"{proxy.where} refused a tunnel to {target}: HTTP {status}{why}")
    if conn.buffer or conn.ended:
        raise WireError("connect_error", f"{proxy.where} sent bytes before the tunnel to {target} began")
    loop = asyncio.get_running_loop()
    try:
        transport = await loop.start_tls(conn.transport, conn, tls, server_hostname=host)
    except ssl.SSLError as exc:
        raise WireError("tls_error", f"TLS with {target} through {proxy.where} failed ({exc.reason or exc})") from None
    except OSError as exc:
        raise WireError("connect_error", f"the tunnel to {target} through {proxy.where} failed ({_why(exc)})") from None
    if transport is None:
        raise WireError("tls_error", f"TLS with {target} through {proxy.where} failed (the tunnel closed)")
    conn.transport = transport


def _why(exc: OSError) -> str:
    why = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc) or type(exc).__name__)
    return why[:1].lower() + why[1:]


class _Exchange:
    """The context of one request (`Wire.exchange`)."""

    def __init__(
        self, wire: Wire, method: str, url: str, headers: bytes, body: bytes | None, read_timeout: float | None
    ) -> None:
        self._wire = wire
        self._method = method
        self._url = url
        self._headers = headers
        self._body = body
        self._timeout = read_timeout
        self._conn: _Connection | None = None
        self._answer: Answer | None = None
        self._reusable = False
        self._slot = False

    async def __aenter__(self) -> Answer:
        try:
            return await self._send()
        except BaseException:
            self._end(False)
            raise

    async def _send(self) -> Answer:
        wire = self._wire
        origin, start = wire.target(self._url)
        slots = wire.slots()
        await slots.acquire()
        self._slot = True
        conn = self._conn = await wire.connection(origin)
        body = self._body
        request = self._method.encode("ascii") + start + self._headers
        if body is None:
            request += b"\r\n"
        else:
            request += b"content-length: %d\r\n\r\n" % len(body) + body
        assert conn.transport is not None
        conn.transport.write(request)
        while True:
            minor, status, headers = parse_head(await _head(conn, self._timeout))
            if status >= 200:
                break
            if status == 101:
                raise WireError("protocol_error", "the server switched protocols")
        length, chunked, self._reusable = framing(self._method, minor, status, headers)
        self._answer = Answer(conn, status, headers, length, chunked, self._timeout)
        return self._answer

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        answer = self._answer
        self._end(exc is None and answer is not None and answer.complete and self._reusable)

    def _end(self, reuse: bool) -> None:
        """Give back the slot; keep the connection for the next request (`reuse`, and nothing more arrived on
        it) or close it."""
        conn = self._conn
        if self._slot:
            self._slot = False
            self._wire.slots().release()
        if conn is None:
            return
        self._conn = None
        if reuse and not conn.buffer and not conn.ended:
            self._wire.release(conn)
        else:
            self._wire.discard(conn)
