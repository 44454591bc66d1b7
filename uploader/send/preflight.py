"""Attachment preflight: check the image and frame URLs of every pending row before anything is sent, and
block the rows whose attachments annotators could not open (`uploader check`, `uploader run --preflight`).

A page of pending rows at a time (memory flat in the ledger's size): the page's distinct URLs without a
fresh stored verdict are checked (api.check_urls; a storage URL in the signed form a run would send, with
`sign_url`), their verdicts stored, and each row with a bad URL — or a
signed URL expiring before `now + min_url_validity` — moves pending → blocked with the URL and the reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from uploader.api import attachment_urls
from uploader.ledger import (
    UrlVerdict,
    block_rows,
    expiring_rows,
    pending_payloads,
    pending_signed_payloads,
    record_verdicts,
    release_blocked,
    store_preflight,
    utcnow,
    verdicts_since,
)
from uploader.manifest import SignedUrlError, SignedUrls, tally_signed, url_expiry

if TYPE_CHECKING:
    from uploader.ledger import Ledger

__all__ = [
    "TRANSIENT_CODE",
    "TRANSIENT_VERDICT",
    "HostSample",
    "PreflightOptions",
    "PreflightReport",
    "SignedUrls",
    "check_attachments",
    "lasting",
    "row_problem",
    "sample_attachments",
    "signed_urls",
]

#: The verdict of a URL whose host answered "not now" (429, 503: api.check_urls): a fact about the moment,
#: never stored; a row it blocks (error code TRANSIENT_CODE) is pending again at the next preflight, which
#: checks the URL again.
TRANSIENT_VERDICT = "unavailable"
TRANSIENT_CODE = f"url_{TRANSIENT_VERDICT}"
#: Verdicts stored in one transaction at most (a page of pending rows has as many rows).
_RECORD_GROUP = 2000
#: Examples of blocked rows kept for the report.
_EXAMPLES = 5


@dataclass(frozen=True)
class PreflightOptions:
    """How to check: concurrency and per-host rate of the requests, their timeout and redirects; how old
    a stored verdict may be (None: kept until `retry --blocked`); how long a signed URL must stay valid;
    whether bad rows are blocked (False: only counted, as `run --allow-blocked` wants)."""

    concurrency: int = 64
    per_host_rate: float = 50.0
    timeout: float = 10.0
    max_redirects: int = 5
    recheck_after: dt.timedelta | None = None
    min_url_validity: dt.timedelta = dt.timedelta(hours=24)
    block: bool = True
    #: `--sign`: a storage URL's signed form, which is what is checked (its verdict is stored under the
    #: storage URL, which the rows keep); other URLs come back as they are.
    sign_url: Callable[[str], str] | None = None


@dataclass
class PreflightReport:
    """What a preflight did: rows and URLs looked at, checked now or known already, verdicts of the URLs
    checked now, rows blocked (or that would be, without blocking), and the first few of them; rows that an
    earlier preflight held back on a host's "not now" and this one checked again."""

    rows: int = 0
    url_uses: int = 0
    checked: int = 0
    known: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    bad_rows: int = 0
    blocked: int = 0
    expiring: int = 0
    earliest_expiry: dt.datetime | None = None
    examples: list[tuple[str, str]] = field(default_factory=list)  # (reference_id, "url: reason")
    released: int = 0  #: rows blocked by an earlier preflight on an `unavailable` URL, pending again

    @property
    def unavailable(self) -> int:
        """URLs checked now whose host answered "not now" to the end: their rows are held back for now."""
        return self.verdicts[TRANSIENT_VERDICT]


def row_problem(urls: list[str], verdicts: dict[str, UrlVerdict], not_before: dt.datetime) -> tuple[str, str] | None:
    """(error code, message) of the first URL of a row that would not open, or None when all would.
    `not_before`: a signed URL must still be valid then. Pure."""
    return judge_row(urls, verdicts, not_before)[0]


def judge_row(
    urls: list[str], verdicts: dict[str, UrlVerdict], not_before: dt.datetime
) -> tuple[tuple[str, str] | None, dt.datetime | None]:
    """The row's problem as `row_problem` says it, and the earliest expiry among its signed URLs (UTC, or
    None), each URL's expiry read once. A lasting problem comes before a passing one (a URL `unavailable`
    now), which would only have the next preflight block the row again. Pure."""
    limit = not_before.replace(tzinfo=dt.UTC)
    problem: tuple[str, str] | None = None
    passing: tuple[str, str] | None = None
    earliest: dt.datetime | None = None
    for url in urls:
        try:
            expiry = url_expiry(url)
        except SignedUrlError as e:
            problem = problem or ("url_signature", f"{url}: {e}")
            continue
        if expiry is not None:
            earliest = expiry.expires if earliest is None else min(earliest, expiry.expires)
            if problem is None and expiry.expires < limit:
                problem = "url_expires_soon", f"{url}: signed URL expires at {expiry.expires:%Y-%m-%d %H:%M} UTC"
        verdict = verdicts.get(url)
        if verdict is None or verdict.verdict == "ok":
            continue
        found = f"url_{verdict.verdict}", f"{url}: {verdict.detail}"
        if verdict.verdict == TRANSIENT_VERDICT:
            passing = passing or found
        elif problem is None:
            problem = found
    return problem or passing, earliest


def signed_urls(ledger: Ledger, not_before: dt.datetime) -> SignedUrls:
    """The signed attachment URLs of the pending rows and their expiry (`uploader load`, `run`): one scan of
    the pending rows, only those whose text may hold a signature parsed."""
    tally = SignedUrls(not_before)
    for page in pending_signed_payloads(ledger.engine):
        for payload in page:
            tally_signed(tally, attachment_urls(json.loads(payload)))
    return tally


@dataclass(eq=False)
class _Page:
    """A page of pending rows and the verdicts it waits for: finished once it is fed whole and `waiting` is 0."""

    rows: list[tuple[int, str, list[str]]]
    known: dict[str, UrlVerdict]
    waiting: int = 0
    feeding: bool = True


async def check_attachments(
    ledger: Ledger, options: PreflightOptions | None = None, on_progress: Callable[[int, int], None] | None = None
) -> PreflightReport:
    """Check the attachments of every pending row not checked yet (or checked before `recheck_after`), block
    the bad ones; `on_progress(rows_done, urls_checked)` after each page. Rows an earlier preflight held back
    only because a host said "not now" are pending again first, and checked with the others.

    One stream of checks runs over all pages: the next page is read while the last URLs of the previous one
    are still in the air (no pause per page), a URL shared by pages in flight is checked once, and a page's
    rows are settled as soon as its last verdict is in."""
    options = options or PreflightOptions()
    report = PreflightReport()
    now = utcnow()
    since = now - options.recheck_after if options.recheck_after is not None else None
    not_before = now + options.min_url_validity
    engine = ledger.engine
    report.released = release_blocked(engine, TRANSIENT_CODE)
    _block_expiring(ledger, options, report, not_before)
    in_flight: dict[str, list[_Page]] = {}
    #: signed URL in the air -> the storage URLs the rows hold (two spellings of one object, `a+b` and `a%2Bb`,
    #: are signed alike: one answer is the verdict of both)
    storage_url: dict[str, list[str]] = {}
    store = _Store(ledger, options, report, not_before, on_progress)

    def feed() -> Iterator[str]:
        for rows in pending_payloads(engine, since):
            page, distinct, stored = _new_page(ledger, rows, since, store)
            report.known += stored
            for url in distinct:
                if url in page.known:
                    continue
                page.waiting += 1
                waiters = in_flight.get(url)
                if waiters is not None:  # already being checked for an earlier page
                    waiters.append(page)
                    continue
                in_flight[url] = [page]
                yield _signed_form(url, options.sign_url, storage_url)
            page.feeding = False
            if page.waiting == 0:
                store.ready.append(page)

    async for answer in _verdicts(feed(), options, _as_is):
        for url in storage_url.pop(answer.url, None) or [answer.url]:
            pages = in_flight.pop(url, None)
            if pages is None:
                continue  # a second answer for a signed URL whose storage URLs have theirs
            verdict = answer._replace(url=url)
            store.fresh[url] = verdict
            report.verdicts[verdict.verdict] += 1
            _hand_out(verdict, pages, store.ready)
        if store.ready or len(store.fresh) >= _RECORD_GROUP:
            await store.settle()
    await store.close()
    return report


class _Store:
    """The verdicts in hand and the pages ready, stored a group at a time in a thread while the checks go on
    (a SQLite commit or checkpoint waits on the disk; the driver releases the GIL meanwhile). One group is
    stored at a time, in order; a verdict being stored still counts as in hand until its commit is seen."""

    def __init__(
        self,
        ledger: Ledger,
        options: PreflightOptions,
        report: PreflightReport,
        not_before: dt.datetime,
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        self.fresh: dict[str, UrlVerdict] = {}
        self.ready: list[_Page] = []
        self._storing: dict[str, UrlVerdict] = {}
        self._task: asyncio.Future[list[tuple[int, int]]] | None = None
        self._settle_args = (ledger, options, report, not_before)
        self._on_progress = on_progress

    def in_hand(self, url: str) -> UrlVerdict | None:
        """The verdict of `url` checked by this preflight but not yet committed, or None."""
        return self.fresh.get(url) or self._storing.get(url)

    async def settle(self, wait: bool = False) -> None:
        """Start storing what is in hand, unless the previous group is still being stored (with `wait`:
        once it is)."""
        if self._task is not None:
            if not (wait or self._task.done()):
                return
            await self._finish()
        if not self.fresh and not self.ready:
            return
        self._storing, self.fresh = self.fresh, {}
        ready, self.ready = self.ready, []
        ledger, options, report, not_before = self._settle_args
        verdicts = list(self._storing.values())
        self._task = asyncio.ensure_future(
            asyncio.to_thread(_settle, ledger, ready, verdicts, options, report, not_before)
        )

    async def close(self) -> None:
        """Store everything still in hand, and wait for it."""
        await self.settle(wait=True)
        if self._task is not None:
            await self._finish()

    async def _finish(self) -> None:
        assert self._task is not None
        progress = await self._task
        self._task = None
        self._storing = {}
        if self._on_progress is not None:
            for rows, checked in progress:
                self._on_progress(rows, checked)


def _new_page(
    ledger: Ledger, rows: list[tuple[int, str, str]], since: dt.datetime | None, store: _Store
) -> tuple[_Page, list[str], int]:
    """A page of (id, reference_id, payload) rows with the verdicts known of its URLs, its distinct URLs in
    order, and how many verdicts were stored ones (the others: in hand, checked for an earlier page and not
    stored yet)."""
    listed = [(row_id, ref, attachment_urls(json.loads(payload))) for row_id, ref, payload in rows]
    distinct = list(dict.fromkeys(u for _, _, urls in listed for u in urls))
    known = verdicts_since(ledger.engine, distinct, since)
    stored = len(known)
    for url in distinct:
        verdict = None if url in known else store.in_hand(url)
        if verdict is not None:
            known[url] = verdict
    return _Page(listed, known), distinct, stored


async def _verdicts(
    urls: Iterable[str], options: PreflightOptions, stored_as: Callable[[str], str]
) -> AsyncIterator[UrlVerdict]:
    """`check_urls` with the preflight's options; each answer as the verdict to store under `stored_as(url)`
    (the storage URL of a URL signed for the check, else the URL itself)."""
    from uploader.api import check_urls  # aiohttp: imported only when a URL is really checked

    async for c in check_urls(
        urls,
        concurrency=options.concurrency,
        per_host_rate=options.per_host_rate,
        timeout=options.timeout,
        max_redirects=options.max_redirects,
    ):
        yield UrlVerdict(stored_as(c.url), c.verdict, c.detail, c.status, c.content_type, c.length, utcnow())


def _as_is(url: str) -> str:
    return url


def _signed_form(url: str, sign: Callable[[str], str] | None, storage_url: dict[str, list[str]]) -> str:
    """The URL to request for `url`: with --sign its signed form (noted in `storage_url`), else itself."""
    if sign is None:
        return url
    signed = sign(url)
    storage_url.setdefault(signed, []).append(url)
    return signed


def _hand_out(verdict: UrlVerdict, pages: list[_Page], ready: list[_Page]) -> None:
    """Give a URL's verdict to the pages waiting for it; a fed page with no verdict left to wait for is ready."""
    for page in pages:
        page.known[verdict.url] = verdict
        page.waiting -= 1
        if page.waiting == 0 and not page.feeding:
            ready.append(page)


def _settle(
    ledger: Ledger,
    ready: list[_Page],
    fresh: list[UrlVerdict],
    options: PreflightOptions,
    report: PreflightReport,
    not_before: dt.datetime,
) -> list[tuple[int, int]]:
    """The verdicts `fresh` and the rows of the `ready` pages, stored in one transaction (in a thread of
    `_Store`: it touches only the report's row counts, never its verdicts or known). Returns (rows done, URLs
    checked) after each page."""
    report.checked += len(fresh)
    blocks: list[tuple[int, str, str]] = []
    good: list[tuple[int, dt.datetime | None]] = []
    progress = []
    for page in ready:
        _judge_page(page, report, not_before, blocks, good)
        progress.append((report.rows, report.checked))
    kept = lasting(fresh)
    if options.block:
        report.blocked += store_preflight(ledger.engine, kept, blocks, good)
    else:
        store_preflight(ledger.engine, kept)
    return progress


def lasting(verdicts: Iterable[UrlVerdict]) -> list[UrlVerdict]:
    """The verdicts to store: all but the transient ones, which say nothing lasting about a URL (stored, one
    would stand for the URL until `retry --blocked`). Pure."""
    return [v for v in verdicts if v.verdict != TRANSIENT_VERDICT]


def _judge_page(
    page: _Page,
    report: PreflightReport,
    not_before: dt.datetime,
    blocks: list[tuple[int, str, str]],
    good: list[tuple[int, dt.datetime | None]],
) -> None:
    """Sort the page's rows into `blocks` (a bad attachment) and `good` (with their earliest expiry), counted
    in the report."""
    for row_id, ref, urls in page.rows:
        report.rows += 1
        report.url_uses += len(urls)
        problem, expiry = judge_row(urls, page.known, not_before)
        if expiry is not None and (report.earliest_expiry is None or expiry < report.earliest_expiry):
            report.earliest_expiry = expiry
        if problem is None:
            good.append((row_id, expiry.replace(tzinfo=None) if expiry is not None else None))
            continue
        _count_bad(report, ref, *problem)
        blocks.append((row_id, *problem))


def _block_expiring(
    ledger: Ledger, options: PreflightOptions, report: PreflightReport, not_before: dt.datetime
) -> None:
    """Rows checked by an earlier preflight whose signed URL now expires too soon: blocked without a request."""
    expiring = expiring_rows(ledger.engine, not_before)
    blocks = []
    for row_id, ref, expires in expiring:
        message = f"a signed URL expires at {expires:%Y-%m-%d %H:%M} UTC"
        _count_bad(report, ref, "url_expires_soon", message)
        blocks.append((row_id, "url_expires_soon", message))
    if options.block:
        report.blocked += block_rows(ledger.engine, blocks)


def _count_bad(report: PreflightReport, ref: str, code: str, message: str) -> None:
    report.bad_rows += 1
    if code == "url_expires_soon":
        report.expiring += 1
    if len(report.examples) < _EXAMPLES:
        report.examples.append((ref, message))


@dataclass
class HostSample:
    """A host's sampled URLs: how many exist among pending rows, how many were checked, their verdicts."""

    urls: int = 0
    checked: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    example: str | None = None  #: "url: reason" of one bad URL

    @property
    def failure_rate(self) -> float:
        return 1 - self.verdicts["ok"] / self.checked if self.checked else 0.0


async def sample_attachments(
    ledger: Ledger, per_host: int, options: PreflightOptions | None = None, rng: random.Random | None = None
) -> dict[str, HostSample]:
    """Check `per_host` random attachment URLs of each host among the pending rows (reservoir sampling:
    memory is hosts × per_host) and store their verdicts; blocks nothing. For manifests too big to check
    whole: the failure rate per host says whether a full check (or a fix) is needed."""
    options = options or PreflightOptions()
    rng = rng or random.Random()
    hosts: dict[str, HostSample] = {}
    reservoirs: dict[str, list[str]] = {}
    for page in pending_payloads(ledger.engine):
        for _, _, payload in page:
            for url in attachment_urls(json.loads(payload)):
                host = urlsplit(url).netloc.lower()
                sample = hosts.setdefault(host, HostSample())
                reservoir = reservoirs.setdefault(host, [])
                sample.urls += 1
                if len(reservoir) < per_host:
                    reservoir.append(url)
                else:
                    j = rng.randrange(sample.urls)
                    if j < per_host:
                        reservoir[j] = url
    sign = options.sign_url or _as_is
    chosen = {sign(u): u for u in dict.fromkeys(u for reservoir in reservoirs.values() for u in reservoir)}
    verdicts: list[UrlVerdict] = []
    async for verdict in _verdicts(chosen, options, chosen.__getitem__):  # stored under a signed URL's storage URL
        verdicts.append(verdict)
        sample = hosts[urlsplit(verdict.url).netloc.lower()]
        sample.checked += 1
        sample.verdicts[verdict.verdict] += 1
        if verdict.verdict != "ok" and sample.example is None:
            sample.example = f"{verdict.url}: {verdict.detail}"
    kept = lasting(verdicts)
    for i in range(0, len(kept), _RECORD_GROUP):
        record_verdicts(ledger.engine, kept[i : i + _RECORD_GROUP])
    return hosts
