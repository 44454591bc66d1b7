"""Will annotators be able to open an attachment? One `GET` with `Range: bytes=0-0` of each image or frame URL.

`check_urls` checks many URLs concurrently with a per-host rate cap, timeouts and bounded redirects, and
yields one `UrlCheck` per URL as the answers come in; memory stays flat in the number of URLs (at most
`concurrency` checks are in flight and the URLs are read lazily). `judge` is the pure decision. Through the
proxies the environment names, as the API's requests (uploader.api.wire.proxy_route).

One request per URL, the one-byte GET: what annotators' browsers do, so its answer is theirs. No HEAD: a HEAD
that says 200 proves nothing of a GET (a link presigned for `head_object`, a CDN rule that blocks GET), a
HEAD may misstate the length (RFC 9110 §9.3.2), and S3 presigned GET URLs refuse it (the method is part of
their signature). The answer's headers decide: status, size (the 206's Content-Range total, or the
Content-Length of a server that ignores the range), content type. Its body is read only when it is small (the
one byte of a 206, a short error page), which gives the connection back to the pool; a larger one (a server
streaming the whole file) is not read: its connection is closed.

An answer that says "not now" (429, 502, 503, 504, 408) is asked again after its Retry-After (bounded), the
whole host held back meanwhile; one that stays so is `unavailable`, a verdict about the moment, not the file,
as is a host that times out or drops the connection before answering (`for_now`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import itertools
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

import aiohttp
import httpx

from uploader.api.client import _transport_code, log, url_host
from uploader.api.policy import retry_after_seconds
from uploader.api.wire import Proxies, Proxy, proxies_from_env

__all__ = [
    "NOT_MEDIA_SUFFIXES",
    "NOT_MEDIA_TYPES",
    "TRANSIENT_STATUSES",
    "HostPacer",
    "UrlCheck",
    "check_urls",
    "drains",
    "is_document",
    "judge",
    "retry_delay",
]

#: The request's one header beyond the session's: the first byte only, whatever the file's size.
_RANGE = {"Range": "bytes=0-0"}
#: The largest body read to give its connection back to the pool (about the first flight a server sends, an
#: initial congestion window: RFC 6928); a larger one is not read and its connection is closed.
_DRAIN_BYTES = 16 << 10
#: Statuses whose answer carries the file (or, 206, a part of it); any other 2xx has no file behind it.
_FILE_STATUSES = frozenset({200, 203, 206})
#: Answers that say "not now" rather than anything about the file: asked again after a pause.
TRANSIENT_STATUSES = frozenset({408, 429, 502, 503, 504})
#: How many times a transient answer is asked again, the longest Retry-After waited for (a longer one is not
#: waited for: the URL is `unavailable` at once), and the first pause when the answer names none (doubled).
_RETRIES = 2
_MAX_RETRY_WAIT = 10.0
_BACKOFF = 1.0
#: Content types that are never an image or a video, whatever the URL says (error pages, API answers).
NOT_MEDIA_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/ecmascript",
        "application/x-javascript",
        "application/yaml",
        "application/x-yaml",
        "application/x-ndjson",
    }
)
#: Structured syntax suffixes (RFC 6839, RFC 9512) of `application/` types that are documents: an API's
#: answer or error (`application/problem+json`, `vnd.api+json`, `hal+json`, `soap+xml`, `xhtml+xml`). Only
#: under `application/`: `image/svg+xml` is an image.
NOT_MEDIA_SUFFIXES = ("+json", "+xml", "+yaml", "+json-seq")
_USER_AGENT = "gtstudio-uploader-preflight"
# Words for the transport failure codes of `client._transport_code`, as a user would say them.
_REASONS = {
    "connect_error": "cannot connect",
    "tls_error": "TLS handshake failed",
    "timeout": "timed out",
    "connection_closed": "connection closed before an answer",
    "protocol_error": "not a valid HTTP answer",
    "transport_error": "request failed",
}


class UrlCheck(NamedTuple):
    """The verdict on one URL: ok, unreachable, http_error, not_media, empty, or unavailable (the host said
    "not now", timed out or dropped the connection: a verdict about the moment, not the file), and why in
    words."""

    url: str
    verdict: str
    detail: str
    status: int | None = None
    content_type: str | None = None
    length: int | None = None


def judge(status: int, content_type: str | None, length: int | None) -> tuple[str, str]:
    """(verdict, detail) for the final answer to the one-byte GET. `length` is the file's full size when the
    answer says it (Content-Length of a 200, the Content-Range total of a 206 or 416), else None.

    A 416 refuses `bytes=0-0`, which only an empty file cannot satisfy (RFC 9110 §14.1.1): empty, unless its
    Content-Range names a size that is not 0 (a server at odds with itself: an error)."""
    if status == 416:
        if not length:
            return "empty", "the file is empty (0 bytes)"
        return "http_error", f"HTTP 416: the first byte of a {length}-byte file refused"
    if status in TRANSIENT_STATUSES:
        return "unavailable", f"HTTP {status}: the host cannot answer now (checked again by the next preflight)"
    if status >= 400:
        return "http_error", f"HTTP {status}"
    if status >= 300:
        return "http_error", f"HTTP {status} without a usable Location"
    if status in (204, 205):
        return "empty", f"HTTP {status}: no file behind the URL (no content)"
    if status not in _FILE_STATUSES:
        return "http_error", f"HTTP {status}, not a file"
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if is_document(media):
        return "not_media", f"Content-Type {media}, not an image or video"
    if length == 0:
        return "empty", "the file is empty (0 bytes)"
    return "ok", media or "no Content-Type"


def is_document(media: str) -> bool:
    """Whether a media type (lower case, no parameters) names a document, never an image or a video: text,
    JSON, XML, YAML or a script, an error page or an API's answer served at the URL."""
    if media.startswith("text/") or media in NOT_MEDIA_TYPES:
        return True
    top, _, sub = media.partition("/")
    return top == "application" and sub.endswith(NOT_MEDIA_SUFFIXES)


def retry_delay(status: int, retry_after: str | None, attempt: int, now: dt.datetime) -> float | None:
    """Seconds to wait before asking again an answer `status` that came after `attempt` earlier retries, or
    None: the answer is final (not transient, the retries spent, or a Retry-After longer than is waited for)."""
    if status not in TRANSIENT_STATUSES or attempt >= _RETRIES:
        return None
    asked = retry_after_seconds(retry_after, now)
    if asked is None:
        return _BACKOFF * (1 << attempt)
    return asked if asked <= _MAX_RETRY_WAIT else None


class HostPacer:
    """At most `rate` requests per second to each host: a time slot per request, handed out in order."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next: dict[str, float] = {}

    def delay(self, host: str, now: float) -> float:
        """Seconds to wait before the next request to `host`; reserves its slot."""
        slot = max(now, self._next.get(host, now))
        self._next[host] = slot + self._interval
        return slot - now

    def hold(self, host: str, seconds: float, now: float) -> None:
        """No request to `host` before `now + seconds` (it asked for a pause: a 429's Retry-After)."""
        self._next[host] = max(self._next.get(host, now), now + seconds)

    async def wait(self, host: str) -> None:
        pause = self.delay(host, time.monotonic())
        if pause > 0:
            await asyncio.sleep(pause)


async def check_urls(
    urls: Iterable[str],
    *,
    concurrency: int = 64,
    per_host_rate: float = 50.0,
    timeout: float = 10.0,
    max_redirects: int = 5,
) -> AsyncIterator[UrlCheck]:
    """Check every URL (in any order of completion); at most `concurrency` at once.

    aiohttp directly rather than httpx: these requests carry no API semantics, and httpx's models and its
    aiohttp adapter cost more CPU than the check itself (benchmarks/preflight_benchmark.py). `concurrency`
    tasks pull URLs from the one iterator (read lazily) and hand verdicts over a bounded queue."""
    source = iter(urls)
    first = next(source, None)
    if first is None:  # nothing to check: no session (nor its certificates) to set up
        return
    source = itertools.chain((first,), source)
    pacer = HostPacer(per_host_rate)
    proxies = Proxies(proxies_from_env(os.environ))
    results: asyncio.Queue[UrlCheck | None] = asyncio.Queue(maxsize=concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, ssl=_ssl_context())
    session = aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"},
        timeout=aiohttp.ClientTimeout(total=timeout),
    )

    async def worker() -> None:
        try:
            for url in source:
                started = time.perf_counter()
                check = await _check(session, pacer, proxies, url, max_redirects)
                _log_check(check, time.perf_counter() - started)
                await results.put(check)
        finally:
            await results.put(None)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        running = len(tasks)
        while running:
            check = await results.get()
            if check is None:
                running -= 1
            else:
                yield check
        for task in tasks:
            task.result()  # a worker's own failure (e.g. the URL source raised) surfaces here
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()


def _log_check(check: UrlCheck, seconds: float) -> None:
    """One record per URL checked on the `uploader.api` logger (DEBUG when ok, INFO otherwise; --log-file
    writes both): its host, verdict, final HTTP status and time. Never the rest of the URL: a signed URL's
    query is a credential."""
    level = logging.DEBUG if check.verdict == "ok" else logging.INFO
    if not log.isEnabledFor(level):
        return
    host = url_host(check.url)
    log.log(
        level,
        "check %s: %s HTTP %s (%.0f ms)",
        host,
        check.verdict,
        check.status,
        seconds * 1000,
        extra={
            "event": "check",
            "method": "GET",
            "host": host,
            "http_status": check.status,
            "latency_ms": round(seconds * 1000, 1),
            "outcome": check.verdict,
        },
    )


def _ssl_context() -> ssl.SSLContext:
    """Certificate checks as for the API (certifi, or SSL_CERT_FILE / SSL_CERT_DIR)."""
    return httpx.create_ssl_context()


def _proxy_of(url: str, proxies: Proxies) -> Proxy | None:
    """The proxy `url` goes through (as the API's requests: Proxies.route), or None: directly, or a URL aiohttp
    will refuse (it says what is wrong with it)."""
    if not proxies:
        return None
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return None
    return proxies.route(scheme, parts.hostname or "", port)


def _proxy_headers(authorization: str) -> dict[str, str] | None:
    """The proxy's headers of one request (aiohttp adds to them): an Authorization there is moved by aiohttp to
    where it belongs, the CONNECT of an https URL or the request itself (absolute form) of an http one."""
    return {"Authorization": authorization} if authorization else None


class _Answer(NamedTuple):
    """The final answer to one request (after its redirects and transient retries): status and headers."""

    status: int
    headers: Mapping[str, str]


class _Asker(NamedTuple):
    """How to ask one URL: the session, the host's pacer, the proxy (and its Authorization) and the redirects
    followed."""

    session: aiohttp.ClientSession
    pacer: HostPacer
    host: str
    proxy: str | None
    authorization: str
    max_redirects: int

    async def ask(self, url: str) -> _Answer:
        """The one-byte GET of `url`: asked again while the answer is transient (`retry_delay`), the host held
        back meanwhile."""
        attempt = 0
        while True:
            await self.pacer.wait(self.host)
            async with self.session.get(
                url,
                headers=_RANGE,
                allow_redirects=True,
                max_redirects=self.max_redirects + 1,  # aiohttp refuses the redirect that reaches its limit
                proxy=self.proxy,
                proxy_headers=_proxy_headers(self.authorization),
            ) as response:
                answer = _Answer(response.status, response.headers)
                await _let_go(response)
            pause = retry_delay(answer.status, answer.headers.get("Retry-After"), attempt, dt.datetime.now(dt.UTC))
            if pause is None:
                return answer
            self.pacer.hold(self.host, pause, time.monotonic())
            attempt += 1


async def _let_go(response: aiohttp.ClientResponse) -> None:
    """Give the answer's connection back to the pool by reading its body when that is small (`drains`: the one
    byte of a 206), else close it unread: the verdict is in the headers already, and a server that ignores the
    range may be streaming gigabytes. A small body that fails to come only costs its connection."""
    if drains(response.headers):
        try:
            await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError):
            response.close()
    else:
        response.close()


def drains(headers: Mapping[str, str]) -> bool:
    """Whether an answer's body is worth reading to keep its connection: its Content-Length says it is at most
    `_DRAIN_BYTES` (a chunked or unframed body, of no stated size, is not). Pure."""
    if "Transfer-Encoding" in headers:  # chunked: the Content-Length, if any, is not the body's (RFC 9112 §6.3)
        return False
    raw = headers.get("Content-Length", "").strip()
    return raw.isdigit() and raw.isascii() and int(raw) <= _DRAIN_BYTES


async def _check(
    session: aiohttp.ClientSession,
    pacer: HostPacer,
    proxies: Proxies,
    url: str,
    max_redirects: int,
) -> UrlCheck:
    parts = url.split("/", 3)  # scheme://HOST/...
    host = parts[2].lower() if len(parts) >= 3 else url
    via = _proxy_of(url, proxies)
    if via is not None and via.unsupported:
        return UrlCheck(url, "unreachable", f"cannot connect through {via.where}: {via.unsupported}")
    proxy, authorization = (None, "") if via is None else (via.url, via.authorization)
    asker = _Asker(session, pacer, host, proxy, authorization, max_redirects)
    try:
        answer = await asker.ask(url)
    except aiohttp.TooManyRedirects:
        return UrlCheck(url, "unreachable", f"more than {max_redirects} redirects")
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):
        return UrlCheck(url, "unreachable", "not an http or https URL")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        if for_now(exc):
            return UrlCheck(url, "unavailable", f"{unreachable_reason(exc)} (checked again by the next preflight)")
        return UrlCheck(url, "unreachable", unreachable_reason(exc))
    return _judged(url, answer)


def for_now(exc: BaseException) -> bool:
    """Whether a failed check says something of the moment, not of the URL: the host took too long, or closed
    or reset the connection before its answer. A refused connection, an unknown host or a failed handshake
    are lasting. Pure."""
    if isinstance(exc, (TimeoutError, aiohttp.ServerDisconnectedError, ConnectionResetError)):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno == errno.ECONNRESET


def _judged(url: str, answer: _Answer) -> UrlCheck:
    """The UrlCheck of `url` from the final answer to its one-byte GET."""
    content_type = answer.headers.get("Content-Type")
    length = _length(answer.status, answer.headers)
    verdict, detail = judge(answer.status, content_type, length)
    return UrlCheck(url, verdict, detail, answer.status, content_type, length)


def unreachable_reason(exc: BaseException) -> str:
    """Why a URL could not be fetched, in a user's words: "cannot connect to host:port (connection refused)",
    "timed out", "TLS handshake with host failed (...)", not aiohttp's "ssl:default [Connect call failed]"."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, OSError) and os_error.errno and not isinstance(os_error, socket.gaierror):
            why = os.strerror(os_error.errno)  # "Connection refused", not "Connect call failed (...)"
        else:
            why = (os_error.strerror or str(os_error)) if isinstance(os_error, OSError) else str(os_error)
        if isinstance(exc, aiohttp.ClientSSLError):
            return f"TLS handshake with {exc.host} failed ({why})"
        if isinstance(os_error, socket.gaierror):
            return f"cannot resolve host {exc.host} ({why})"
        return f"cannot connect to {exc.host}:{exc.port} ({why.lower()})"
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return "timed out"
    reason = _REASONS.get(_transport_code(exc), "request failed")
    text = str(exc).strip()
    return f"{reason} ({text})" if text else reason


def _length(status: int, headers: Mapping[str, str]) -> int | None:
    """The file's full size: the Content-Range total of a 206 (`bytes 0-0/N`) or 416 (`bytes */N`), else a
    200's (203's) Content-Length; None when the answer does not say it (a chunked body, `bytes 0-0/*`, a
    status that carries no file)."""
    if status in (206, 416):
        total = headers.get("Content-Range", "").rpartition("/")[2].strip()
        return int(total) if total.isdigit() and total.isascii() else None
    if status not in _FILE_STATUSES:
        return None
    raw = headers.get("Content-Length", "").strip()
    return int(raw) if raw.isdigit() and raw.isascii() else None
