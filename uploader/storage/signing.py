"""Signing at send time: a fresh HTTPS URL for each storage URL of a job's body, just before each send.

The ledger keeps the storage URL (and its payload hash stays the storage URL's); only the body on the wire
carries the signed one, made anew for every send and resend, so a rerun weeks later never sends an expired
link. `PayloadSigner` builds each provider's signer once, on first need (`signer_for`), from the user's
credentials; a missing extra or missing credentials is a `StorageError` naming what to install or set.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from uploader.errors import UploaderError, UsageError
from uploader.storage.locations import (
    MAX_SIGNED_URL_LENGTH,
    MAX_TTL,
    StorageLocation,
    is_storage_url,
    locate,
    may_hold_storage_url,
)

__all__ = ["DEFAULT_TTL", "PayloadSigner", "StorageError", "UrlSigner", "sign_payload", "signer_for"]

#: How long a signed URL stays valid when --url-ttl is not given (each provider's maximum caps it).
DEFAULT_TTL = dt.timedelta(days=7)
_EXTRAS = {"s3": "s3", "gcs": "gcs", "azure": "azure"}
_NAMES = {"s3": "S3", "gcs": "Google Cloud Storage", "azure": "Azure Blob Storage"}


class StorageError(UploaderError):
    """A storage URL cannot be signed: the provider's library or the user's credentials are missing."""


class UrlSigner(Protocol):
    """One provider's signer: a signed HTTPS GET URL for `location`, valid `seconds` from now."""

    def sign(self, location: StorageLocation, seconds: int) -> str: ...


def signer_for(provider: str) -> UrlSigner:
    """The signer of `provider` ("s3", "gcs", "azure"), with the credentials of the environment (each
    provider's usual places). Raises StorageError when its library or the credentials are missing."""
    try:
        if provider == "s3":
            from uploader.storage.s3 import S3Signer

            return S3Signer()
        if provider == "gcs":
            from uploader.storage.gcs import GcsSigner

            return GcsSigner()
        if provider == "azure":
            from uploader.storage.azure import AzureSigner

            return AzureSigner()
    except ImportError as e:
        raise StorageError(
            f"signing {_NAMES[provider]} URLs needs the [{_EXTRAS[provider]}] extra: "
            f"pip install 'gtstudio-uploader[{_EXTRAS[provider]}]' ({e})"
        ) from None
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - the provider library refusing its configuration, named in one line
        raise StorageError(
            f"cannot sign {_NAMES[provider]} URLs with the credentials and settings of this environment "
            f"({type(e).__name__}: {e})"
        ) from None
    raise ValueError(f"unknown storage provider {provider!r}")


def sign_payload(body: str, sign_url: Callable[[str], str]) -> str:
    """`body` (a job's JSON) with `sign_url(url)` in place of its image_url and every frame's src (the
    attachment fields, as api.attachment_urls reads them); the body itself when it holds no storage URL."""
    if not may_hold_storage_url(body):
        return body
    obj = json.loads(body)
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, dict):
        return body
    changed = False

    def swap(holder: dict[str, Any], field: str) -> None:
        nonlocal changed
        value = holder.get(field)
        if isinstance(value, str):
            signed = sign_url(value)
            if signed != value:
                holder[field] = signed
                changed = True

    swap(data, "image_url")
    video = data.get("video_data")
    frames = video.get("frames") if isinstance(video, dict) else None
    if isinstance(frames, list):
        for frame in frames:
            if isinstance(frame, dict):
                swap(frame, "src")
    if not changed:
        return body
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class PayloadSigner:
    """The run's `prepare_payload` hook and the preflight's `sign_url`: storage URLs signed for `ttl` (capped
    at each provider's maximum). `signers` replaces `signer_for` (tests, custom endpoints)."""

    def __init__(self, ttl: dt.timedelta = DEFAULT_TTL, signers: Callable[[str], UrlSigner] | None = None) -> None:
        if ttl.total_seconds() < 1:
            raise UsageError(f"--url-ttl must be at least 1 second, not {ttl}")
        self.ttl = ttl
        self._build = signers or signer_for
        self._signers: dict[str, UrlSigner] = {}

    def ready(self, providers: Iterable[str]) -> None:
        """Build the signers of `providers` now, so a missing extra or credential stops a command before it
        sends anything rather than in the middle of a run."""
        for provider in providers:
            self._signer(provider)

    def seconds(self, provider: str) -> int:
        """The validity of a URL signed now for `provider`: the ttl, capped at the provider's maximum."""
        return int(min(self.ttl, MAX_TTL[provider]).total_seconds())

    def sign_url(self, url: str) -> str:
        """A signed HTTPS URL for a storage URL; any other URL as it is. A StorageError when it cannot be
        signed: an s3:// or gs:// URL naming no object, or the provider's library refusing (credentials)."""
        location = locate(url)
        if location is None:
            if is_storage_url(url):
                raise StorageError(
                    f"cannot sign {url}: not of the form s3://BUCKET/KEY, gs://BUCKET/OBJECT or "
                    "https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB without a query (a key percent-encoded "
                    "as UTF-8, with no '.' or '..' segment)"
                )
            return url
        signer = self._signer(location.provider)
        try:
            signed = signer.sign(location, self.seconds(location.provider))
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - the provider library's own errors (credentials, key), named
            raise StorageError(
                f"cannot sign {url} with your {_NAMES[location.provider]} credentials ({type(e).__name__}: {e})"
            ) from e
        if len(signed) > MAX_SIGNED_URL_LENGTH:
            raise StorageError(
                f"the signed URL of {url} is {len(signed)} characters long; at most {MAX_SIGNED_URL_LENGTH} can be "
                "fetched: shorten the object's key (or give a signed https URL of your own)"
            )
        return signed

    def __call__(self, body: str) -> str:
        """The JSON body to send: its storage URLs signed now."""
        return sign_payload(body, self.sign_url)

    def _signer(self, provider: str) -> UrlSigner:
        signer = self._signers.get(provider)
        if signer is None:
            signer = self._signers[provider] = self._build(provider)
        return signer
