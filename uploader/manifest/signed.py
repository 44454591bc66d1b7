"""When an already-signed storage URL stops working: its expiry, read from the query string alone.

Four signing schemes put the expiry in the URL (docs/signed-urls.md lists the fields):
- AWS Signature V4 (S3 presigned): `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`) + `X-Amz-Expires` (seconds);
- Google V4 (GCS signed URLs): `X-Goog-Date` + `X-Goog-Expires`, same forms;
- Azure SAS: `se` (signed expiry, ISO 8601 UTC: a date, or a date and time to the minute or second);
- legacy query-string signing (S3 SigV2, GCS V2, CloudFront): `Expires` (seconds since the epoch).

A URL counts as signed by a scheme only when it also carries that scheme's signature field, so an unrelated
`?expires=` or `?se=` parameter of some web page is never read as an expiry. A signed URL whose expiry
field is malformed raises `SignedUrlError`: a manifest that holds it cannot be checked, so the load refuses it.
Pure: no clock is read here; callers compare the result with their own `now`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

__all__ = ["SignedUrlError", "SignedUrls", "UrlExpiry", "may_hold_expiry", "tally_signed", "url_expiry"]

#: Longest validity any of the schemes allows, with room: an expiry further out than this is a typo.
_MAX_LIFETIME = timedelta(days=366 * 100)
_COMPACT_TIME = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")
_AZURE_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,7})?)?Z)?")
_DIGITS = re.compile(r"\d{1,12}")


class SignedUrlError(ValueError):
    """A signed URL whose expiry field cannot be read (the message names the field and says why)."""


class UrlExpiry(NamedTuple):
    """The moment a signed URL stops working (UTC) and the scheme that said so."""

    expires: datetime
    scheme: str  # "aws-v4", "google-v4", "azure-sas" or "legacy"


def may_hold_expiry(text: str) -> bool:
    """Whether `text` (a URL, or many: a payload, a chunk's payloads joined) may hold a URL that
    `url_expiry` reads an expiry from; False means none does. A query needs a `?`, and every scheme's
    signature field has `sig` or `credential` in its name: one C scan, a second only when there is a `?`."""
    if "?" not in text:
        return False
    lowered = text.lower()
    return "sig" in lowered or "credential" in lowered


def url_expiry(url: str) -> UrlExpiry | None:
    """The expiry of a signed http(s) URL, or None when the URL is not signed by a scheme known here."""
    if not may_hold_expiry(url):
        return None
    query = urlsplit(url).query
    if not query:
        return None
    # Field names compare case-insensitively (S3 accepts x-amz-date); the first occurrence wins, as in S3.
    fields: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        fields.setdefault(name.lower(), value)
    if "x-amz-signature" in fields or "x-amz-credential" in fields:
        return _v4(fields, "x-amz", "aws-v4")
    if "x-goog-signature" in fields or "x-goog-credential" in fields:
        return _v4(fields, "x-goog", "google-v4")
    if "sig" in fields and "se" in fields:
        return UrlExpiry(_azure_time(fields["se"]), "azure-sas")
    if "expires" in fields and ("signature" in fields or "sig" in fields):
        return UrlExpiry(_epoch(fields["expires"]), "legacy")
    return None


def _v4(fields: dict[str, str], prefix: str, scheme: str) -> UrlExpiry:
    """Expiry of an AWS or Google V4 signed URL: its signing time plus its validity in seconds."""
    date_field, expires_field = f"{prefix}-date", f"{prefix}-expires"
    if date_field not in fields:
        raise SignedUrlError(f"signed URL has no {_name(date_field)} field")
    if expires_field not in fields:
        raise SignedUrlError(f"signed URL has no {_name(expires_field)} field")
    raw_date, raw_seconds = fields[date_field], fields[expires_field]
    m = _COMPACT_TIME.fullmatch(raw_date)
    if not m:
        raise SignedUrlError(f"signed URL's {_name(date_field)} {raw_date!r} is not of the form YYYYMMDDTHHMMSSZ")
    signed = _datetime(_name(date_field), raw_date, *(int(g) for g in m.groups()))
    if not _DIGITS.fullmatch(raw_seconds):
        raise SignedUrlError(f"signed URL's {_name(expires_field)} {raw_seconds!r} is not a number of seconds")
    seconds = int(raw_seconds)
    if seconds > _MAX_LIFETIME.total_seconds():
        raise SignedUrlError(f"signed URL's {_name(expires_field)} {raw_seconds} is longer than any signature lasts")
    return UrlExpiry(signed + timedelta(seconds=seconds), scheme)


def _azure_time(raw: str) -> datetime:
    """Azure's `se`: `YYYY-MM-DD`, `YYYY-MM-DDThh:mmZ` or `YYYY-MM-DDThh:mm:ss[.fffffff]Z`, in UTC."""
    m = _AZURE_TIME.fullmatch(raw)
    if not m:
        raise SignedUrlError(
            f"signed URL's se (expiry) {raw!r} is not an ISO 8601 UTC time such as 2026-12-31T23:59:59Z"
        )
    parts = [int(g) if g is not None else 0 for g in m.groups()]
    return _datetime("se (expiry)", raw, *parts)


def _epoch(raw: str) -> datetime:
    """Legacy `Expires`: whole seconds since 1970-01-01 UTC."""
    if not _DIGITS.fullmatch(raw):
        raise SignedUrlError(f"signed URL's Expires {raw!r} is not a number of seconds since 1970")
    try:
        return datetime.fromtimestamp(int(raw), tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise SignedUrlError(f"signed URL's Expires {raw!r} is out of range") from None


def _datetime(field: str, raw: str, year: int, month: int, day: int, hour: int, minute: int, second: int) -> datetime:
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as e:
        raise SignedUrlError(f"signed URL's {field} {raw!r} is not a real time ({e})") from None


def _name(field: str) -> str:
    """The field's usual spelling, for messages (X-Amz-Date, X-Goog-Expires)."""
    return "-".join(part.capitalize() for part in field.split("-"))


@dataclass
class SignedUrls:
    """The signed attachment URLs of the pending rows (each use counted): how many, how many expire before
    `not_before` (then a preflight holds their rows back), and the earliest expiry (UTC)."""

    not_before: datetime
    urls: int = 0
    expiring: int = 0
    earliest: datetime | None = None


def tally_signed(tally: SignedUrls, urls: Iterable[str]) -> None:
    """Count the signed ones among `urls` into `tally`, each URL's expiry read once (a URL whose expiry
    cannot be read is the load's error, not counted here). Pure but for `tally`."""
    limit = tally.not_before.replace(tzinfo=UTC)
    for url in urls:
        try:
            expiry = url_expiry(url)
        except SignedUrlError:
            continue
        if expiry is None:
            continue
        tally.urls += 1
        tally.expiring += expiry.expires < limit
        if tally.earliest is None or expiry.expires < tally.earliest:
            tally.earliest = expiry.expires
