"""Attachment preflight: check the image and frame URLs of every pending row before anything is sent, and
block the rows whose attachments annotators could not open (`uploader check`, `uploader run --preflight`).

A page of pending rows at a time (memory flat in the ledger's size): the page's distinct URLs without a
fresh stored verdict are checked (api.check_urls), their verdicts stored, and each row with a bad URL — or a
signed URL expiring before `now + min_url_validity` — moves pending → blocked with the URL and the reason.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from uploader.api import attachment_urls, check_urls
from uploader.ledger import (
    UrlVerdict,
    block_rows,
    pending_payloads,
    record_verdicts,
    utcnow,
    verdicts_since,
)
from uploader.manifest import SignedUrlError, url_expiry

if TYPE_CHECKING:
    from uploader.ledger import Ledger

__all__ = ["PreflightOptions", "PreflightReport", "check_attachments", "row_problem"]

#: Verdicts stored per URL in one transaction.
_RECORD_GROUP = 500
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
    checked now, rows blocked (or that would be, without blocking), and the first few of them."""

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


def row_problem(urls: list[str], verdicts: dict[str, UrlVerdict], not_before: dt.datetime
                ) -> tuple[str, str] | None:
    """(error code, message) of the first URL of a row that would not open, or None when all would.
    `not_before`: a signed URL must still be valid then. Pure."""
    for url in urls:
        try:
            expiry = url_expiry(url)
        except SignedUrlError as e:
            return "url_signature", f"{url}: {e}"
        if expiry is not None and expiry.expires < not_before.replace(tzinfo=dt.UTC):
            return "url_expires_soon", f"{url}: signed URL expires at {expiry.expires:%Y-%m-%d %H:%M} UTC"
        verdict = verdicts.get(url)
        if verdict is not None and verdict.verdict != "ok":
            return f"url_{verdict.verdict}", f"{url}: {verdict.detail}"
    return None


async def check_attachments(ledger: Ledger, options: PreflightOptions | None = None,
                    on_progress: Callable[[int, int], None] | None = None) -> PreflightReport:
    """Check the attachments of every pending row; `on_progress(rows_done, urls_checked)` after each page."""
    options = options or PreflightOptions()
    report = PreflightReport()
    now = utcnow()
    since = now - options.recheck_after if options.recheck_after is not None else None
    not_before = now + options.min_url_validity
    for page in pending_payloads(ledger.engine):
        row_urls = [(row_id, ref, attachment_urls(json.loads(payload))) for row_id, ref, payload in page]
        distinct = list(dict.fromkeys(u for _, _, urls in row_urls for u in urls))
        known = verdicts_since(ledger.engine, distinct, since)
        report.known += len(known)
        fresh: list[UrlVerdict] = []
        todo = [u for u in distinct if u not in known]
        stored_as = {options.sign_url(u): u for u in todo} if options.sign_url is not None else {}
        async for c in check_urls(list(stored_as) if stored_as else todo, concurrency=options.concurrency,
                                  per_host_rate=options.per_host_rate, timeout=options.timeout,
                                  max_redirects=options.max_redirects):
            url = stored_as.get(c.url, c.url)
            fresh.append(UrlVerdict(url, c.verdict, c.detail, c.status, c.content_type, c.length, utcnow()))
            known[url] = fresh[-1]
            report.verdicts[c.verdict] += 1
            if len(fresh) >= _RECORD_GROUP:
                record_verdicts(ledger.engine, fresh)
                report.checked += len(fresh)
                fresh = []
        record_verdicts(ledger.engine, fresh)
        report.checked += len(fresh)
        blocks = []
        for row_id, ref, urls in row_urls:
            report.rows += 1
            report.url_uses += len(urls)
            _note_expiry(report, urls)
            problem = row_problem(urls, known, not_before)
            if problem is not None:
                report.bad_rows += 1
                if problem[0] == "url_expires_soon":
                    report.expiring += 1
                if len(report.examples) < _EXAMPLES:
                    report.examples.append((ref, problem[1]))
                blocks.append((row_id, *problem))
        if options.block:
            report.blocked += block_rows(ledger.engine, blocks)
        if on_progress is not None:
            on_progress(report.rows, report.checked)
    return report


def _note_expiry(report: PreflightReport, urls: list[str]) -> None:
    for url in urls:
        try:
            expiry = url_expiry(url)
        except SignedUrlError:
            continue
        if expiry is not None and (report.earliest_expiry is None or expiry.expires < report.earliest_expiry):
            report.earliest_expiry = expiry.expires
