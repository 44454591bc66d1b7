"""Which URLs are storage URLs uploader signs, and what they name (provider, account, bucket, key). Pure."""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "MAX_TTL",
    "PROVIDER_MARKERS",
    "STORAGE_MARKERS",
    "StorageLocation",
    "locate",
    "may_hold_storage_url",
    "object_key",
]

#: Substrings one of which every storage URL holds: the cheap test before a body is parsed.
STORAGE_MARKERS = ("s3://", "gs://", ".blob.core.windows.net/")
_AZURE_HOST = ".blob.core.windows.net"
#: provider -> (text a job body holding one of its storage URLs holds, text that makes the URL signed already):
#: what a ledger query looks for (a cheap test, which may over-count: a row holding a signed Azure URL and an
#: unsigned one is not counted).
PROVIDER_MARKERS: dict[str, tuple[str, str | None]] = {
    "s3": ('"s3://', None),
    "gcs": ('"gs://', None),
    "azure": (_AZURE_HOST + "/", "sig="),
}
#: The longest validity each provider allows a signed URL (S3 SigV4 and Google V4: 7 days). An Azure SAS
#: signed with the account key has no limit; a year keeps a typo'd --url-ttl from making a lasting link.
MAX_TTL = {"s3": dt.timedelta(days=7), "gcs": dt.timedelta(days=7), "azure": dt.timedelta(days=365)}


class StorageLocation(NamedTuple):
    """An object in a provider's storage: provider ("s3", "gcs" or "azure"), bucket (Azure: container),
    key (object or blob name) and, for Azure, the storage account."""

    provider: str
    bucket: str
    key: str
    account: str = ""


def may_hold_storage_url(text: str) -> bool:
    """Whether `text` (a URL, or a job's whole JSON body) may hold a storage URL."""
    return any(marker in text for marker in STORAGE_MARKERS)


def locate(url: str) -> StorageLocation | None:
    """The object a storage URL names: s3://BUCKET/KEY, gs://BUCKET/OBJECT, or
    https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB without a SAS (a URL with `sig=` is signed already).
    The key (blob name) is percent-decoded, as a URL's path is: `what%3F.jpg` names `what?.jpg` (`object_key`).
    None for any other URL (those are sent as they are), and for an s3:// or gs:// key whose escapes are not
    UTF-8 (no object has it)."""
    if not may_hold_storage_url(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme in ("s3", "gs"):
        key = object_key(parts.path[1:])
        if not parts.netloc or not key or parts.query or parts.fragment:
            return None
        return StorageLocation("s3" if scheme == "s3" else "gcs", parts.netloc, key)
    host = (parts.hostname or "").lower()
    if scheme != "https" or not host.endswith(_AZURE_HOST) or parts.fragment:
        return None
    if any(name.lower() == "sig" for name, _ in parse_qsl(parts.query, keep_blank_values=True)):
        return None
    container, _, blob = parts.path[1:].partition("/")
    if not container or not blob:
        return None
    return StorageLocation("azure", container, unquote(blob), host[: -len(_AZURE_HOST)])


def object_key(path: str) -> str:
    """The object key a URL path spells: percent-escapes decoded (`%3F` is `?`, `%25` is `%`), anything else as
    written (`+` is a plus, not a space; a `%` not followed by two hex digits is itself). "" when the escapes
    decode to bytes that are not UTF-8: S3, GCS and Azure keys are UTF-8 text, so no object has that key."""
    try:
        return unquote(path, errors="strict")
    except UnicodeDecodeError:
        return ""
