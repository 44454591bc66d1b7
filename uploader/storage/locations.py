"""Which URLs are storage URLs uploader signs, and what they name (provider, account, bucket, key). Pure."""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "MAX_SIGNED_URL_LENGTH",
    "MAX_TTL",
    "PROVIDER_MARKERS",
    "STORAGE_MARKERS",
    "StorageLocation",
    "is_storage_url",
    "locate",
    "may_hold_storage_url",
    "object_key",
    "signed_already",
    "storage_provider",
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
#: The longest URL the platform's fetcher (and most web servers and CDNs) takes, as uploader.manifest checks a
#: manifest's URLs: a signed URL longer than this would make a job whose attachment cannot be fetched.
MAX_SIGNED_URL_LENGTH = 8192
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
    """Whether `text` (a URL, or a job's whole JSON body) may hold a storage URL (schemes and hosts in any case:
    `S3://` is `s3://`)."""
    lowered = text.lower()
    return any(marker in lowered for marker in STORAGE_MARKERS)


def locate(url: str) -> StorageLocation | None:
    """The object a storage URL names: s3://BUCKET/KEY, gs://BUCKET/OBJECT, or
    https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB without a SAS (a URL with `sig=` is signed already).
    The key (blob name) is percent-decoded, as a URL's path is: `what%3F.jpg` names `what?.jpg` (`object_key`).
    None for any other URL (those are sent as they are), and for a storage URL no signed link could open: a
    query or fragment (an Azure `?snapshot=` names another version), a key that is not UTF-8 or has a `.` or
    `..` segment (`storage_provider` tells those apart from other URLs)."""
    provider = storage_provider(url)
    if provider is None:
        return None
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        return None
    if provider == "azure":
        bucket, _, path = parts.path[1:].partition("/")
        account = (parts.hostname or "").lower()[: -len(_AZURE_HOST)]
    else:
        bucket, path, account = parts.netloc, parts.path[1:], ""
    key = object_key(path)
    if not bucket or not key:
        return None
    return StorageLocation(provider, bucket, key, account)


def signed_already(url: str) -> bool:
    """Whether an Azure blob URL carries a SAS (`sig=`): then it is sent as it is."""
    parts = urlsplit(url)
    return any(name.lower() == "sig" for name, _ in parse_qsl(parts.query, keep_blank_values=True))


def object_key(path: str) -> str:
    """The object key a URL path spells: percent-escapes decoded (`%3F` is `?`, `%25` is `%`), anything else as
    written (`+` is a plus, not a space; a `%` not followed by two hex digits is itself). "" when the escapes
    decode to bytes that are not UTF-8 (S3, GCS and Azure keys are UTF-8 text, so no object has that key), or
    when the key has a `.` or `..` segment (HTTP clients remove those from a URL's path, so a signed link
    would open another object)."""
    try:
        key = unquote(path, errors="strict")
    except UnicodeDecodeError:
        return ""
    return "" if any(segment in (".", "..") for segment in key.split("/")) else key


def storage_provider(url: str) -> str | None:
    """The provider ("s3", "gcs", "azure") of a URL written as a storage URL uploader would sign (s3://, gs://,
    or an Azure blob URL without a SAS), whether or not it names an object; None for any other URL."""
    if not may_hold_storage_url(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme in ("s3", "gs"):
        return "s3" if scheme == "s3" else "gcs"
    azure = scheme == "https" and (parts.hostname or "").lower().endswith(_AZURE_HOST) and not signed_already(url)
    return "azure" if azure else None


def is_storage_url(url: str) -> bool:
    """Whether `url` is written as a storage URL (`storage_provider`): one it cannot locate must not be sent
    unsigned."""
    return storage_provider(url) is not None
