"""The only module that speaks HTTP: builds requests, reads envelopes, turns every outcome into an ApiResult.

httpx is the HTTP API (its Request/Response/transport interface): an injected transport (httpx.MockTransport in
tests) gets httpx Requests. With the default transport the bytes move through `wire` (HTTP/1.1 on the event
loop's own transports, headers built once), because httpx's default transport, and aiohttp's session too,
cost several times more CPU per request than the exchange itself. `_Pool` is the one place that choice lives.
Both paths end in `_answer` (a download's in `_take_result`), so an answer means the same whichever carried
it.

Nothing here raises for HTTP or network trouble: a timeout, a refused connection, a proxy's HTML page or a
1 GB body each come back as an `ApiResult` with a code `policy.classify` understands (body.py reads
and decodes the bytes). The API key is sent as a header and never appears in a result's text (code, message,
errors), an exception message or a repr (a server echoing it back gets it redacted); the data of an answer
(job ids, page tokens) is kept exactly as received.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import os
import random
import re
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import lru_cache, partial
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

from uploader import __version__
from uploader.api.body import (
    CODE_MAX_CHARS,
    SNIPPET_CHARS,
    one_line,
    parse_envelope,
    printable,
    read_limited,
    too_large,
    truncate,
)
from uploader.api.endpoint import USER_INFO, check_api_key, check_base_url
from uploader.api.policy import (
    EXISTS_CODES,
    FATAL_CODES,
    MAX_RETRY_AFTER,
    PERMANENT_CODES,
    RETRYABLE_CODES,
    ApiResult,
    Found,
    PageTrail,
    Verdict,
    classify,
    job_id_text,
    job_read_problem,
    listing_problem,
    next_delay,
    result_verdict,
    retry_after_by_date,
    retry_after_seconds,
)
from uploader.api.warm import tls_context
from uploader.api.wire import Wire, WireError, proxies_from_env, proxy_problem
from uploader.errors import ApiUnreachableError, FatalApiError, UsageError

__all__ = ["ApiClient", "new_tls_context", "url_host", "without_signed_queries"]

#: One record per request other than a job creation (uploader.send logs those, with the row they were for).
log = logging.getLogger("uploader.api")

#: Seconds an idle pooled connection is kept: below common server idle timeouts (uvicorn 5 s), so we
#: rarely write a request into a connection the server is closing.
_KEEPALIVE_SECONDS = 4.0
#: The largest GET job answer read: it may hold the job's result inline, far beyond other answers' size.
JOB_ANSWER_MAX_BYTES = 16 << 20
#: How many times a read (GET job, a page of a batch listing) is tried before ApiUnreachableError.
READ_ATTEMPTS = 8
_REDACTED = b"[redacted]"
#: A success answer holding a key this long is refused (`ApiClient._echoes_key`); shorter ones could be part of
#: any id by chance.
KEY_ECHO_MIN_CHARS = 8
#: A response's headers as raw (name, value) pairs, the form both httpx and aiohttp expose.
_RawHeaders = Sequence[tuple[bytes, bytes]]
#: What one exchange brings back: status, raw headers, body (None when larger than max_body_bytes).
_Exchange = tuple[int, _RawHeaders, bytes | None]
#: One encoded character, as servers and proxies quote a header they refuse: an HTML character reference
#: (named, decimal or hex; `;` optional, as browsers read it), a percent-escape (either case of hex; also
#: `%uXXXX`), a backslash escape (JSON's and Python's `\uXXXX`, `\UXXXXXXXX`, `\xXX`, an escaped punctuation
#: mark: `\/`, `\"`, a regex's `\+`). `_redacted` looks for the key in the text they decode to too.
_ESCAPE = re.compile(
    r"&(?:#[0-9]{1,10}|#[xX][0-9a-fA-F]{1,8}|[A-Za-z][A-Za-z0-9]{0,31});?"
    r"|%[0-9A-Fa-f]{2}|%[uU][0-9A-Fa-f]{4}"
    r"|\\(?:u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|x[0-9A-Fa-f]{2}|[!-/:-@\[-`{-~])"
)
#: How many times `_redacted` decodes a text: a key encoded twice (`%253C`, `&amp;lt;`) or three times.
_DECODE_DEPTH = 3
#: `+` read as a space wherever the key is looked for: a form's encoding of a space, and a plus itself.
_PLUS_AS_SPACE = str.maketrans("+", " ")
#: The error codes the policy knows: constants, never redacted (see `_call`).
_KNOWN_CODES = EXISTS_CODES | FATAL_CODES | PERMANENT_CODES | RETRYABLE_CODES

_MESSAGES = {
    "timeout": "no answer in time",
    "connect_error": "cannot connect to the API",
    "connection_closed": "the server closed the connection before answering",
    "protocol_error": "the server's answer is not valid HTTP",
    "tls_error": "TLS failed (certificate not trusted, or not an https server)",
    "transport_error": "the request failed",
}


def new_tls_context() -> ssl.SSLContext:
    """The client's TLS context: certifi's CA certificates, or SSL_CERT_FILE / SSL_CERT_DIR's."""
    return httpx.create_ssl_context()


class _Pool:
    """The default transport: kept-alive connections (`wire`), at most `concurrency` requests at once, with the
    client's TLS context (the warm-up's, when a command made one), through the proxies the environment names."""

    def __init__(self, concurrency: int, connect_timeout: float) -> None:
        self._ssl = tls_context() or new_tls_context()
        proxies = proxies_from_env(os.environ)
        self.wire = Wire(concurrency, self._ssl, connect_timeout, keepalive=_KEEPALIVE_SECONDS, proxies=proxies)

    async def aclose(self) -> None:
        await self.wire.aclose()


class ApiClient:
    """One HTTP pool per run, talking to one API base URL with one key.

    Use as `async with ApiClient(...) as client:`. `transport` is injectable (httpx.MockTransport in unit
    tests); it is closed with the client. `timeout` bounds each phase (connect, pool, write, read) and,
    unless `total_timeout` says otherwise, the whole exchange too: a server dripping one byte at a time
    never trips a read timeout, and the user's --timeout means "abandon a request after this long".
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        concurrency: int = 64,
        timeout: float = 30.0,
        max_body_bytes: int = 1 << 20,
        transport: httpx.AsyncBaseTransport | None = None,
        total_timeout: float | None = None,
    ) -> None:
        check_api_key(api_key)
        if concurrency < 1 or timeout <= 0 or max_body_bytes < 1:
            raise UsageError("concurrency, timeout and max_body_bytes must be positive")
        self._base_url = check_base_url(base_url, allow_http=True)
        self._concurrency = concurrency
        self._timeout = float(timeout)
        self._total_timeout = float(total_timeout) if total_timeout is not None else self._timeout
        self._max_body = max_body_bytes
        self._key_bytes = api_key.encode("ascii")
        self._key_forms = _whole_key_forms(api_key)
        if transport is None:
            unusable = proxy_problem(self._base_url, proxies_from_env(os.environ))
            if unusable is not None:
                raise UsageError(f"{unusable}; set the variable to an http:// proxy, or unset it")
        self._pool = _Pool(concurrency, self._timeout) if transport is None else None
        #: Beside the key, what no text may hold: the proxies' credentials (a proxy may echo them back).
        self._secrets = [] if self._pool is None else self._pool.wire.proxies.secrets
        self._transport = transport
        # Built once: every request reuses them (httpx copies headers and extensions into each Request).
        plain = {
            "user-agent": f"uploader/{__version__}",
            "x-api-key": api_key,
            "content-type": "application/json",
            "accept": "application/json",
            "accept-encoding": "identity",  # small bodies; and no decompression bomb to bound
        }
        self._headers = httpx.Headers(plain)
        self._header_lines = _header_lines(plain)
        self._extensions = {"timeout": httpx.Timeout(self._timeout).as_dict()}
        # A call's deadline (`_call`) already bounds each read when it is no longer than `timeout`: a read
        # timer, rearmed on every chunk received, would only cost CPU.
        self._read_timer = self._timeout if self._total_timeout > self._timeout else None
        self._job_urls: dict[str, str] = {}
        download = {"user-agent": f"uploader/{__version__}", "accept": "application/json"}
        self._download_headers = httpx.Headers(download)
        # A result file may come compressed (storage serves what it stored): inflated as it arrives, and
        # counted inflated against max_bytes.
        self._download_lines = _header_lines({**download, "accept-encoding": "gzip, deflate"})

    def __repr__(self) -> str:
        return f"<ApiClient {self._base_url} concurrency={self._concurrency}>"

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pool (or an injected transport)."""
        if self._transport is not None:
            await self._transport.aclose()
        if self._pool is not None:
            await self._pool.aclose()

    # -- endpoints -------------------------------------------------------------------------------------

    async def create_job(self, project_id: str, body: str | bytes) -> ApiResult:
        """POST one job; `body` is the exact JSON text from the ledger and is sent byte-for-byte."""
        url = self._job_urls.get(project_id)
        if url is None:
            url = self._job_urls[project_id] = f"{self._base_url}/v1/projects/{_seg(project_id)}/jobs"
        return await self._call("POST", url, body.encode() if isinstance(body, str) else body)

    async def create_batch(self, project_id: str, name: str, description: str = "") -> ApiResult:
        """POST a new batch; its id is `data["batch_id"]`."""
        body = json.dumps({"name": name, "description": description}).encode()
        url = f"{self._base_url}/v1/projects/{_seg(project_id)}/batch"
        return await self._call("POST", url, body, about={"endpoint": "create_batch", "project_id": project_id})

    async def get_job(self, project_id: str, job_id: str) -> ApiResult:
        """GET one job (status, batch_id, result). Its answer may carry the result inline (annotations of a long
        video), so it is read up to JOB_ANSWER_MAX_BYTES, beyond the limit of other answers."""
        url = f"{self._base_url}/v1/projects/{_seg(project_id)}/jobs/{_seg(job_id)}"
        about = {"endpoint": "get_job", "project_id": project_id, "job_id": job_id}
        return await self._call("GET", url, limit=max(self._max_body, JOB_ANSWER_MAX_BYTES), about=about)

    async def list_batch_page(self, project_id: str, batch_id: str, page_token: str = "") -> ApiResult:
        """GET one page of a batch's jobs; `data["next_page_token"]` is "" on the last page."""
        url = f"{self._base_url}/v1/projects/{_seg(project_id)}/batch/{_seg(batch_id)}"
        if page_token:
            url += f"?page_token={quote(page_token, safe='')}"
        about = {"endpoint": "list_batch", "project_id": project_id, "batch_id": batch_id}
        return await self._call("GET", url, about=about)

    async def download(self, url: str, sink: BinaryIO, *, max_bytes: int) -> ApiResult:
        """GET a result URL once, streaming its body into `sink` (rewound and truncated first) and hashing it;
        a success's data is {"sha256", "size"}. The key is never sent (a result URL is the platform's storage,
        often another host), and a redirect is never followed. Answers to retry (timeouts, 408, 429, 5xx) keep
        their status; any other failure (403, an HTML page, too large) is a refusal with no status, so
        `classify` says PERMANENT, never FATAL. With the default transport the GET goes over the wire directly, as
        the API's requests do. Never raises for I/O trouble."""
        sink.seek(0)
        sink.truncate()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._total_timeout * 4):
                if self._pool is not None:
                    result = await self._download_direct(self._pool.wire, url, sink, max_bytes)
                else:
                    result = await self._download_httpx(url, sink, max_bytes)
        except (TimeoutError, WireError, httpx.HTTPError, OSError) + _extra_errors() as exc:
            result = self._failure(exc)
        # never the URL: a signed one carries its credentials in the query
        _log_request("GET", {"endpoint": "download", "host": url_host(url)}, result, time.perf_counter() - started)
        return result

    async def _download_direct(self, wire: Wire, url: str, sink: BinaryIO, max_bytes: int) -> ApiResult:
        """One download over the default transport (decoded as httpx would: gzip counted once inflated)."""
        async with wire.exchange("GET", url, self._download_lines, None, self._timeout) as answer:
            return await _take_result(answer.status, answer.headers, answer.chunks(), sink, max_bytes)

    async def _download_httpx(self, url: str, sink: BinaryIO, max_bytes: int) -> ApiResult:
        """One download through an httpx transport (an injected one, e.g. httpx.MockTransport)."""
        assert self._transport is not None
        request = httpx.Request("GET", url, headers=self._download_headers, extensions=self._extensions)
        response = await self._transport.handle_async_request(request)
        try:
            return await _take_result(
                response.status_code, response.headers.raw, response.aiter_bytes(), sink, max_bytes
            )
        finally:
            await _close_quietly(response)

    # -- reads, retried ----------------------------------------------------------------------------------

    async def batch_of_job(
        self,
        project_id: str,
        job_id: str,
        *,
        max_attempts: int = READ_ATTEMPTS,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        max_retry_after: float = MAX_RETRY_AFTER,
    ) -> str:
        """The batch_id of one job (how the default batch's id is learnt: the API names it nowhere else).
        Retried and raising as `read` does."""
        data = await self.read(
            partial(self.get_job, project_id, job_id),
            f"job {job_id} of project {project_id}",
            expect="batch_id",
            max_attempts=max_attempts,
            rng=rng,
            sleep=sleep,
            max_retry_after=max_retry_after,
        )
        problem = job_read_problem(data, job_id)
        batch_id = data["batch_id"]
        if problem is not None or isinstance(batch_id, bool) or not isinstance(batch_id, (str, int)):
            what = problem or "a batch_id that is not text"
            raise ApiUnreachableError(f"the API answered the read of job {job_id} of project {project_id} with {what}")
        return str(batch_id)

    async def find_job_ids(
        self,
        project_id: str,
        batch_id: str,
        reference_ids: Collection[str],
        *,
        max_attempts: int = READ_ATTEMPTS,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        max_retry_after: float = MAX_RETRY_AFTER,
    ) -> Found:
        """{reference_id: job_id} for the wanted reference_ids found in the batch (FS_0001 recovery).

        Pages through the batch until the last page or until every wanted id is found; each page is one
        `read` (retried, raising FatalApiError or ApiUnreachableError as it says). Ids not in the batch
        are simply absent, and so are entries whose job id is not a non-empty string or integer
        (policy.job_id_text), and ids the listing names with two jobs, or whose job it names for another id
        (`Found.ambiguous`). A listing that loops (policy.PageTrail) ends the search with what was found,
        marked incomplete (`Found.complete`): an id it did not show may still have a job.
        """
        wanted = {str(r) for r in reference_ids}
        found = Found(wanted)
        rng = rng or random.Random()
        where = f"batch {batch_id} of project {project_id}"
        trail = PageTrail()
        token: str | None = ""
        while token is not None and wanted and len(found) + len(found.ambiguous) < len(wanted):
            data = await self.read(
                partial(self.list_batch_page, project_id, batch_id, token),
                where,
                expect=None,
                max_attempts=max_attempts,
                rng=rng,
                sleep=sleep,
                max_retry_after=max_retry_after,
            )
            problem = listing_problem(data, project_id, batch_id)
            if problem is not None:
                raise ApiUnreachableError(f"the API answered the listing of {where} with {problem}")
            jobs = data.get("jobs")
            for job in jobs if isinstance(jobs, list) else ():
                if not isinstance(job, dict):
                    continue
                ref = job.get("reference_id")
                job_id = job_id_text(job.get("id")) or job_id_text(job.get("job_id"))  # str/int only, never "True"
                if isinstance(ref, (str, int)) and not isinstance(ref, bool) and job_id:
                    found.note(str(ref), job_id)  # a reference_id or job named twice: neither kept
            token = trail.next(data)
        found.settle()
        found.complete, found.problem = trail.complete, trail.problem
        return found

    async def read(
        self,
        request: Callable[[], Awaitable[ApiResult]],
        what: str,
        *,
        expect: str | None,
        max_attempts: int = READ_ATTEMPTS,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        max_retry_after: float = MAX_RETRY_AFTER,
    ) -> dict[str, Any]:
        """The data of a successful answer to `request` (a GET: safe to repeat), `what` naming it in errors.

        The one retry loop of the API's reads: a RETRYABLE or THROTTLED (429) answer is tried again after
        `next_delay` (backoff, Retry-After cut to `max_retry_after`), through `sleep` (a run passes its own,
        which a stop ends), up to `max_attempts` tries. Raises FatalApiError when the key, project or base
        URL is refused, ApiUnreachableError when no answer came in `max_attempts` tries or the answer was
        refused for good. `expect`: the field a success must carry (policy.classify).
        """
        rng = rng or random.Random()
        detail = ""
        for attempt in range(1, max(1, max_attempts) + 1):
            result = await request()
            decision = classify(result, expect=expect)
            if decision.verdict is Verdict.SUCCEEDED:
                return result.data or {}
            detail = " ".join(str(x) for x in (decision.code or result.http_status, decision.message) if x)
            if decision.verdict is Verdict.FATAL:
                raise FatalApiError(f"the API refused reading {what}: {detail}", decision.code, result.http_status)
            if decision.verdict not in (Verdict.RETRYABLE, Verdict.THROTTLED):
                raise ApiUnreachableError(f"cannot read {what}: {detail}", decision.code)
            if attempt < max_attempts:
                hint = retry_after_seconds(result.retry_after, datetime.now(UTC))
                await sleep(next_delay(decision, attempt, hint, rng, max_retry_after=max_retry_after))
        raise ApiUnreachableError(f"cannot read {what} after {max_attempts} attempts: {detail}")

    # -- one exchange ----------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        url: str,
        content: bytes | None = None,
        limit: int | None = None,
        about: dict[str, str] | None = None,
    ) -> ApiResult:
        """Send one request and read at most `limit` (default max_body_bytes) bytes of the answer; never raises
        for I/O trouble. With `about` (what the request is: endpoint and ids), logs it (`_log_request`)."""
        if about is None:
            return await self._exchange(method, url, content, limit)
        started = time.perf_counter()
        result = await self._exchange(method, url, content, limit)
        _log_request(method, about, result, time.perf_counter() - started)
        return result

    async def _exchange(self, method: str, url: str, content: bytes | None, limit: int | None) -> ApiResult:
        """One request and its answer, as _call."""
        limit = self._max_body if limit is None else limit
        headers: _RawHeaders
        deadline = asyncio.timeout(self._total_timeout)
        try:
            async with deadline:
                if self._pool is not None:
                    wire = self._pool.wire
                    async with wire.exchange(method, url, self._header_lines, content, self._read_timer) as answer:
                        raw = await answer.read(limit)
                    status, headers = answer.status, answer.headers
                else:
                    status, headers, raw = await self._exchange_httpx(method, url, content, limit)
        except (TimeoutError, WireError, httpx.HTTPError, OSError) + _extra_errors() as exc:
            return self._failure(exc, deadline.expired())
        return self._answer(status, headers, raw, limit)

    async def _exchange_httpx(self, method: str, url: str, content: bytes | None, limit: int) -> _Exchange:
        """One exchange through an httpx transport (an injected one, e.g. httpx.MockTransport)."""
        assert self._transport is not None
        request = httpx.Request(method, url, headers=self._headers, content=content, extensions=self._extensions)
        response = await self._transport.handle_async_request(request)
        try:
            raw = await _read_body(response, limit)
        finally:
            await _close_quietly(response)
        return response.status_code, response.headers.raw, raw

    def _answer(self, status: int, headers: _RawHeaders, raw: bytes | None, limit: int) -> ApiResult:
        """What an answer says, whichever path carried it: the envelope read, the key redacted from its text."""
        retry_after = _raw_header(headers, b"retry-after")
        if retry_after is not None:
            retry_after = retry_after_by_date(retry_after, _raw_header(headers, b"date"))
            retry_after = self._redact(retry_after)[:100]  # redacted, then cut: no part of the key left
        if 300 <= status < 400:  # a redirect (never followed): its Location names where the base URL points
            location = _raw_header(headers, b"location")
            return replace(
                parse_envelope(status, b"", retry_after),
                location=None if location is None else self._redact(location)[:2000],
            )
        if raw is None:
            return too_large(status, limit, retry_after)
        result = parse_envelope(status, raw, retry_after)
        if result.success is True:
            if self._echoes_key(raw, result.data):  # its ids or words would be recorded: no answer at all
                message = f"HTTP {status}, not an API answer: it holds the API key"
                return ApiResult(status, None, None, "not_json", message, None, retry_after)
            return result  # data the program works with (job ids, page tokens, keys): never altered
        if result.success is None and self._key_bytes in raw:  # the message quotes a snippet of the body
            result = parse_envelope(status, raw.replace(self._key_bytes, _REDACTED), retry_after)
        # What is printed and stored as text: an echo may be JSON-escaped (`\/`), so the decoded text is
        # scrubbed. `data` is left alone (never shown or stored), and so is a code policy.classify knows: it
        # is a constant, not a secret, and the verdict depends on it (a key `_` made FS_0001 unknown).
        code = result.code if result.code in _KNOWN_CODES else self._scrub(result.code)
        code = code if code is None else truncate(code, CODE_MAX_CHARS)  # cut once the key is out: no key part
        return replace(result, code=code, message=self._scrub(result.message), errors=self._scrub(result.errors))

    def _failure(self, exc: BaseException, deadline_expired: bool = False) -> ApiResult:
        """An ApiResult for an exchange that produced no usable answer; the text is redacted and short."""
        if deadline_expired:
            message = f"no complete answer within {self._total_timeout:g}s"
            return ApiResult(None, None, None, "timeout", message, None, None)
        exc = _decisive(exc)
        code = _transport_code(exc)
        words = _connect_words(exc) if code == "connect_error" else None
        if words is not None:
            return ApiResult(None, None, None, code, self._redact(words), None, None)
        text = self._redact(one_line(printable(str(exc))))
        message = _MESSAGES[code]
        if code == "timeout":
            message += f" (timeout {self._timeout:g}s)"
        name = "" if isinstance(exc, WireError) else f": {type(exc).__name__}"
        message = truncate(f"{message}{name}" + (f": {text}" if text else ""), SNIPPET_CHARS)
        return ApiResult(None, None, None, code, message, None, None)

    def _scrub(self, value: Any) -> Any:
        """The key removed from every string inside a decoded JSON value. Only for text that is printed or
        stored (error codes, messages, details): with a short key, scrubbing the data the program works with
        broke it (`work_flow_id` -> `wor[redacted]_flow_id`, page tokens, job ids)."""
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, list):
            return [self._scrub(v) for v in value]
        if isinstance(value, dict):
            return {self._scrub(k): self._scrub(v) for k, v in value.items()}
        return value

    def _echoes_key(self, raw: bytes, data: Any) -> bool:
        """Whether a success answer holds the API key. A real answer never does, and its job ids, batch ids
        and status words are recorded. The bytes first, with the key whole, percent-encoded or HTML-escaped
        (`_whole_key_forms`: none for a key of letters, digits and `-_.~`), then, if JSON may have escaped it
        (`\\/`, `\\u…`), the decoded text. A key shorter than KEY_ECHO_MIN_CHARS could be part of any id by
        chance: not looked for (the text that is printed or stored is still redacted of it)."""
        if len(self._key_bytes) < KEY_ECHO_MIN_CHARS:
            return False
        if self._key_bytes in raw:
            return True
        for form in self._key_forms:  # a loop, not any(): no generator on every success answer
            if form in raw:
                return True
        return b"\\" in raw and _holds_text(data, self._key_bytes.decode("ascii"))

    def _redact(self, text: str) -> str:
        """`text` without the key nor the proxies' credentials (`_redacted`), nor the query of a presigned
        URL the API quotes (`without_signed_queries`): for text printed or stored."""
        text = without_signed_queries(_redacted(text, self._key_bytes.decode("ascii")))
        for secret in self._secrets:
            text = _redacted(text, secret)
        return text


def _log_request(method: str, about: dict[str, str], result: ApiResult, seconds: float) -> None:
    """One record on the `uploader.api` logger: DEBUG for a success, INFO otherwise, as uploader.send logs a
    job creation (the CLI's -v shows the second, -vv both, --log-file writes both as JSON lines). `about`
    names the endpoint and its ids; never the key, a body or a URL's query."""
    ok = result.success is True and result.http_status is not None and 200 <= result.http_status < 300
    level = logging.DEBUG if ok else logging.INFO
    if not log.isEnabledFor(level):
        return
    outcome = classify(result, expect=None).verdict.value
    ids = " ".join(f"{k} {v}" for k, v in about.items() if k != "endpoint")
    log.log(
        level,
        "%s %s%s: HTTP %s %s (%.0f ms)",
        method,
        about["endpoint"],
        f" ({ids})" if ids else "",
        result.http_status,
        result.code or outcome,
        seconds * 1000,
        extra={
            "event": "request",
            "method": method,
            **about,
            "http_status": result.http_status,
            "code": result.code,
            "latency_ms": round(seconds * 1000, 1),
            "outcome": outcome,
        },
    )


def url_host(url: str) -> str:
    """The host (and port) of a URL, for a log line: what follows `scheme://` and any user info (read as
    endpoint.USER_INFO reads it: a password may hold a raw `/`) up to the path, query or fragment. Never
    raises (urlsplit refuses a malformed IPv6 host)."""
    rest = url.partition("://")[2]
    info = USER_INFO.match(rest)
    return _AUTHORITY_END.split(rest[info.end() :] if info else rest, maxsplit=1)[0]


_AUTHORITY_END = re.compile(r"[/?#]")


#: A URL and its query, as text quotes it (up to a quote, a space, an angle bracket or a fragment).
_URL_QUERY = re.compile(r"(\bhttps?://[^\s\"'<>?#]+)\?([^\s\"'<>#]*)", re.IGNORECASE)
#: A query parameter that makes a URL a credential: S3 SigV4 and its STS session token, Google V4 and V2, an
#: Azure SAS (`sig`), CloudFront (`Signature`). After `&`, or `;` (`&amp;` in HTML), or at the start.
_CREDENTIAL_PARAM = re.compile(
    r"(?:^|[&;])(?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential|"
    r"googleaccessid|signature|sig)=",
    re.IGNORECASE,
)


def without_signed_queries(text: str) -> str:
    """`text` with the query of every presigned URL in it cut off (`?[signed query removed]`): a platform's
    error message may quote the URL it was sent, which `--sign` made a bearer link (and, with STS, carrying
    the session token); stored in the ledger or exported it would hand both out."""
    if "?" not in text:
        return text

    def cut(m: re.Match[str]) -> str:
        return f"{m.group(1)}?[signed query removed]" if _CREDENTIAL_PARAM.search(m.group(2)) else m.group(0)

    return _URL_QUERY.sub(cut, text)


def _redacted(text: str, key: str) -> str:
    """`text` without the key, nor any run of KEY_ECHO_MIN_CHARS or more of its characters, written raw or
    encoded: text cut short by someone else (a transport quoting the first bytes of a bad header line, a
    server's own snippet) may hold the part of a key before the cut, and a server or proxy may quote it
    HTML-escaped, percent-encoded or backslash-escaped, all of it or character by character (`_decoded`)."""
    text = text.replace(key, _REDACTED.decode())
    width = min(KEY_ECHO_MIN_CHARS, len(key))
    if width == 0 or len(text) < width:
        return text
    parts = _key_parts(key, width)
    found = _runs(text, None, parts, width)
    layer, spans = text, [(i, i + 1) for i in range(len(text))]
    for _ in range(_DECODE_DEPTH):  # a form encoded twice (`%253C`, `&amp;lt;`) is decoded twice
        decoded = _decoded(layer)
        if decoded is None:
            break
        layer, inner = decoded
        spans = [(spans[start][0], spans[end - 1][1]) for start, end in inner]
        found += _runs(layer, spans, parts, width)
    if not found:
        return text
    hidden = bytearray(len(text))
    for start, end in found:
        hidden[start:end] = b"\x01" * (end - start)
    out: list[str] = []
    for i, c in enumerate(text):
        if not hidden[i]:
            out.append(c)
        elif i == 0 or not hidden[i - 1]:
            out.append(_REDACTED.decode())
    return "".join(out)


def _whole_key_forms(key: str) -> tuple[bytes, ...]:
    """The key percent-encoded (either case of hex) and HTML-escaped, as a success answer might echo it, each
    only when it differs from the key itself."""
    quoted = quote(key, safe="")
    forms = {quoted, re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quoted), html.escape(key)}
    forms.add(html.escape(key).replace("&#x27;", "&#39;"))
    return tuple(sorted(form.encode("ascii") for form in forms - {key}))


@lru_cache(maxsize=64)
def _key_parts(key: str, width: int) -> frozenset[str]:
    """Every `width`-character run of the key as `_runs` compares it: `+` read as a space (a form's encoding
    of one), as is and as the Latin-1 reading of its UTF-8 bytes (`%C3%BC` is decoded byte by byte)."""
    forms = {form.translate(_PLUS_AS_SPACE) for form in (key, key.encode("utf-8").decode("latin-1"))}
    return frozenset(form[i : i + width] for form in forms for i in range(len(form) - width + 1))


def _runs(text: str, spans: list[tuple[int, int]] | None, parts: frozenset[str], width: int) -> list[tuple[int, int]]:
    """The spans of the original text that each run of `text` found in `parts` comes from; `spans` maps each
    character of `text` to the span it was decoded from (None: `text` is the original)."""
    text = text.translate(_PLUS_AS_SPACE)
    found = []
    for i in range(len(text) - width + 1):
        if text[i : i + width] in parts:
            found.append((i, i + width) if spans is None else (spans[i][0], spans[i + width - 1][1]))
    return found


def _decoded(text: str) -> tuple[str, list[tuple[int, int]]] | None:
    """`text` with each escape `_ESCAPE` finds replaced by what it stands for, and for each character the
    span of `text` it comes from; None when that changes nothing."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    done = 0
    for match in _ESCAPE.finditer(text):
        start, end = match.span()
        out += text[done:start]
        spans += [(i, i + 1) for i in range(done, start)]
        chars = _unescaped(match.group())
        out += chars
        spans += [(start, end)] * len(chars)
        done = end
    if done == 0:
        return None
    out += text[done:]
    spans += [(i, i + 1) for i in range(done, len(text))]
    decoded = "".join(out)
    return None if decoded == text else (decoded, spans)


def _unescaped(escape: str) -> str:
    """What one escape `_ESCAPE` found stands for (a percent-escape: its byte, read as Latin-1)."""
    if escape[0] == "&":
        return html.unescape(escape)
    if escape[1] in "uU":
        code = int(escape[2:], 16)
        return chr(code) if code <= sys.maxunicode else "\ufffd"
    if escape[0] == "%" or escape[1] == "x":
        return chr(int(escape[-2:], 16))
    return escape[1]


def _holds_text(value: Any, text: str) -> bool:
    """Whether `text` is part of a string (key or value) anywhere inside a decoded JSON value."""
    if isinstance(value, str):
        return text in value
    if isinstance(value, list):
        return any(_holds_text(v, text) for v in value)
    if isinstance(value, dict):
        return any(text in k or _holds_text(v, text) for k, v in value.items())
    return False


def _header_lines(headers: dict[str, str]) -> bytes:
    """Header lines as sent, each ending in CRLF (Host and Content-Length are the wire's)."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1")


async def _read_limited(headers: _RawHeaders, chunks: AsyncIterator[bytes], limit: int) -> bytes | None:
    """The body, or None once it exceeds `limit` bytes (read no further: a hostile 1 GB answer)."""
    length = _raw_header(headers, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return None
    return await read_limited(chunks, limit)


async def _read_body(response: httpx.Response, limit: int) -> bytes | None:
    """An httpx answer's body, or None once it exceeds `limit` bytes."""
    encoding = _header(response, b"content-encoding")
    # We ask for identity; a server that compresses anyway is decoded (and still counted) by httpx. (An
    # async client's response stream is always an AsyncByteStream: the check only narrows the type.)
    stream = response.stream
    if encoding in (None, "identity") and isinstance(stream, httpx.AsyncByteStream):
        chunks = stream.__aiter__()
    else:
        chunks = response.aiter_bytes()
    return await _read_limited(response.headers.raw, chunks, limit)


async def _take_result(
    status: int, headers: _RawHeaders, chunks: AsyncIterator[bytes], sink: BinaryIO, max_bytes: int
) -> ApiResult:
    """A download's answer read into `sink` and hashed, whichever path carried it; a success's data is
    {"sha256", "size"}. Reads no further than `max_bytes`, nor past a first byte that is not JSON."""
    if status == 408 or status == 429 or status >= 500:
        return ApiResult(
            status, None, None, f"http_{status}", f"HTTP {status}", None, _raw_header(headers, b"retry-after")
        )
    digest = hashlib.sha256()
    size = 0
    first = b""
    async for chunk in chunks:
        if not first:  # judged by its first byte that is not white space, in whichever chunk it comes
            first = chunk.lstrip()[:1]
            problem = None if not first else result_verdict(status, _raw_header(headers, b"content-type"), first)
            if problem is not None:
                return _refused("bad_result", f"{problem}: not a result")
        size += len(chunk)
        if size > max_bytes:
            return _refused("body_too_large", f"the result is larger than {max_bytes} bytes")
        digest.update(chunk)
        sink.write(chunk)
    if not first:
        return _refused("bad_result", result_verdict(status, None, b" ") or "empty")
    sink.flush()
    if _ends_at_close(headers) and not _whole_json(sink):  # most likely a cut connection, as under a length: retried
        message = "the result ends before its JSON does (no length: the connection closed early)"
        return ApiResult(None, None, None, "connection_closed", message, None, None)
    return ApiResult(status, True, {"sha256": digest.hexdigest(), "size": size}, None, None, None, None)


def _ends_at_close(headers: _RawHeaders) -> bool:
    """Whether a body's end is only the connection's (no Content-Length, not chunked): a connection lost midway
    then looks like the end, and nothing but the body itself can tell."""
    coding = _raw_header(headers, b"transfer-encoding") or ""
    return _raw_header(headers, b"content-length") is None and "chunked" not in coding.lower()


def _whole_json(sink: BinaryIO) -> bool:
    """Whether `sink` holds one whole JSON document (a strict prefix of a JSON object or array never is one)."""
    sink.seek(0)
    try:
        json.load(sink)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
    finally:
        sink.seek(0, os.SEEK_END)
    return True


def _refused(code: str, message: str) -> ApiResult:
    """A download failure to record, not retry: no status, so `classify` calls it PERMANENT."""
    return ApiResult(None, False, None, code, message, None, None)


def _aiohttp() -> Any:
    """aiohttp, when something imported it (an injected httpx-aiohttp transport raises its errors); else None.
    The client itself never imports it: the default transport is `wire`."""
    return sys.modules.get("aiohttp")


def _extra_errors() -> tuple[type[BaseException], ...]:
    """The exceptions of an injected transport's library the client also turns into results (aiohttp's)."""
    aiohttp = _aiohttp()
    return () if aiohttp is None else (aiohttp.ClientError,)


def _connect_words(exc: BaseException) -> str | None:
    """What failed, in the user's words: "cannot connect to 127.0.0.1:9 (connection refused)" (aiohttp's own
    text names `ssl:default` even for a plain-http URL, and "Connect call failed" says nothing of why)."""
    if isinstance(exc, WireError):
        return str(exc)
    aiohttp = _aiohttp()
    if aiohttp is None or not isinstance(exc, aiohttp.ClientConnectorError):
        return None
    where = f"{exc.host}:{exc.port}"
    os_error = exc.os_error
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot connect to {where} (host name not found: {os_error.strerror or os_error})"
    why = os.strerror(os_error.errno) if os_error.errno else (os_error.strerror or str(os_error))
    return f"cannot connect to {where} ({why[:1].lower() + why[1:]})"


def _decisive(exc: BaseException) -> BaseException:
    """The exception that says what happened.

    httpx-aiohttp maps aiohttp errors coarsely (a ServerDisconnectedError, even a refused connection,
    surfaces as httpx.ConnectTimeout), so the aiohttp exception it chains as __cause__ decides.
    """
    aiohttp = _aiohttp()
    if aiohttp is None:
        return exc
    cause: BaseException | None = exc
    for _ in range(4):
        if cause is None:
            break
        if isinstance(cause, aiohttp.ClientError):
            found: BaseException = cause
            return found
        cause = cause.__cause__
    return exc


def _transport_code(exc: BaseException) -> str:
    """The synthetic code for a failed exchange (give it `_decisive(exc)`)."""
    if isinstance(exc, WireError):
        return exc.code
    aiohttp = _aiohttp()
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        return _aiohttp_code(exc)
    return _httpx_code(exc)


def _aiohttp_code(exc: Any) -> str:
    """The synthetic code for an aiohttp error (of an injected httpx-aiohttp transport)."""
    aiohttp = _aiohttp()
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls_error"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_error"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return "connection_closed"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "protocol_error"
    return "transport_error"


def _httpx_code(exc: BaseException) -> str:
    """The synthetic code for an httpx or OS-level error (anything but aiohttp's)."""
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "tls_error" if isinstance(exc.__cause__ or exc.__context__, ssl.SSLError) else "connect_error"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError)):
        return "connection_closed"
    if isinstance(exc, (httpx.ProtocolError, httpx.DecodingError)):
        return "protocol_error"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls_error"
    if isinstance(exc, ConnectionRefusedError):
        return "connect_error"
    if isinstance(exc, ConnectionError):
        return "connection_closed"
    return "transport_error"


def _header(response: httpx.Response, name: bytes) -> str | None:
    """One httpx response header by lower-case name."""
    return _raw_header(response.headers.raw, name)


def _raw_header(headers: _RawHeaders, name: bytes) -> str | None:
    """One header by lower-case name, scanning the raw (name, value) pairs (cheaper than a mapping's get)."""
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _close_quietly(response: httpx.Response) -> None:
    """Release the connection (closing it when the body was not read to the end); the answer is already in."""
    try:
        await response.aclose()
    except (httpx.HTTPError, OSError) + _extra_errors():
        pass


def _seg(value: str) -> str:
    """One URL path segment: ids are quoted so none can add a path ('../') or a query."""
    return quote(str(value), safe="")
