"""Will annotators be able to open an attachment? A `HEAD` (or a one-byte `GET`) of each image or frame URL.

`check_urls` checks many URLs concurrently with a per-host rate cap, timeouts and bounded redirects, and
yields one `UrlCheck` per URL as the answers come in; memory stays flat in the number of URLs (at most
`concurrency` checks are in flight and the URLs are read lazily). `judge` is the pure decision. Through the
proxies the environment names, as the API's requests (uploader.api.wire.proxy_route).

`HEAD` first; when a server refuses it (400, 403, 405, 501: S3 presigned GET URLs answer 403 to a HEAD,
the method being part of their signature), `GET` with `Range: bytes=0-0`, whose headers decide; its body is
never read beyond what arrived with them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

import aiohttp
import httpx

from uploader.api.client import _transport_code
from uploader.api.wire import Proxies, Proxy, proxies_from_env

__all__ = ["NOT_MEDIA_TYPES", "HostPacer", "UrlCheck", "check_urls", "judge"]

#: Answers to a HEAD after which the URL is asked again with a one-byte GET.
_HEAD_REFUSED = frozenset({400, 403, 405, 501})
#: Content types that are never an image or a video, whatever the URL says (error pages, API answers).
NOT_MEDIA_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/xhtml+xml",
        "application/javascript",
        "application/problem+json",
    }
)
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
    """The verdict on one URL: ok, unreachable, http_error, not_media or empty, and why in words."""

    url: str
    verdict: str
    detail: str
    status: int | None = None
    content_type: str | None = None
    length: int | None = None


def judge(status: int, content_type: str | None, length: int | None) -> tuple[str, str]:
    """(verdict, detail) for the final answer to a HEAD or one-byte GET. `length` is the file's full size
    when the answer says it (Content-Length of a 200, the total of a 206's Content-Range), else None."""
    if status == 416:  # a one-byte range of an empty file
        return "empty", "the file is empty (0 bytes)"
    if status >= 400:
        return "http_error", f"HTTP {status}"
    if status >= 300:
        return "http_error", f"HTTP {status} without a usable Location"
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media.startswith("text/") or media in NOT_MEDIA_TYPES:
        return "not_media", f"Content-Type {media}, not an image or video"
    if length == 0:
        return "empty", "the file is empty (0 bytes)"
    return "ok", media or "no Content-Type"


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
                await results.put(await _check(session, pacer, proxies, url, max_redirects))
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
    try:
        await pacer.wait(host)
        async with session.head(
            url,
            allow_redirects=True,
            max_redirects=max_redirects,
            proxy=proxy,
            proxy_headers=_proxy_headers(authorization),
        ) as response:
            status, headers = response.status, response.headers
        if status in _HEAD_REFUSED:
            await pacer.wait(host)
            async with session.get(
                url,
                headers={"Range": "bytes=0-0"},
                allow_redirects=True,
                max_redirects=max_redirects,
                proxy=proxy,
                proxy_headers=_proxy_headers(authorization),
            ) as response:
                status, headers = response.status, response.headers
                response.close()  # the headers decide: the body is never read
    except aiohttp.TooManyRedirects:
        return UrlCheck(url, "unreachable", f"more than {max_redirects} redirects")
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):
        return UrlCheck(url, "unreachable", "not an http or https URL")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return UrlCheck(url, "unreachable", unreachable_reason(exc))
    content_type = headers.get("Content-Type")
    length = _length(status, headers)
    verdict, detail = judge(status, content_type, length)
    return UrlCheck(url, verdict, detail, status, content_type, length)


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
    """The file's full size: a 206's Content-Range total, else a 200's Content-Length."""
    if status == 206:
        total = headers.get("Content-Range", "").rpartition("/")[2].strip()
        return int(total) if total.isdigit() else None
    raw = headers.get("Content-Length", "")
    return int(raw) if raw.strip().isdigit() else None
