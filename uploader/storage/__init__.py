"""Storage URLs signed by uploader at send time: s3://, gs:// and Azure blob URLs made into fresh HTTPS links.

`locate` tells a storage URL from any other (pure); `PayloadSigner` is the run's hook that swaps each storage
URL of a job's body for a signed one just before it is sent; `signer_for` builds one provider's signer from
the user's credentials, with that provider's own library (an optional extra: [s3], [gcs], [azure]), each
imported in one module here. Signing is a local computation: no request is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from uploader._lazy import lazy_exports

if TYPE_CHECKING:
    from uploader.storage.locations import MAX_TTL as MAX_TTL
    from uploader.storage.locations import PROVIDER_MARKERS as PROVIDER_MARKERS
    from uploader.storage.locations import StorageLocation as StorageLocation
    from uploader.storage.locations import locate as locate
    from uploader.storage.locations import may_hold_storage_url as may_hold_storage_url
    from uploader.storage.locations import storage_provider as storage_provider
    from uploader.storage.signing import DEFAULT_TTL as DEFAULT_TTL
    from uploader.storage.signing import PayloadSigner as PayloadSigner
    from uploader.storage.signing import StorageError as StorageError
    from uploader.storage.signing import UrlSigner as UrlSigner
    from uploader.storage.signing import sign_payload as sign_payload
    from uploader.storage.signing import signer_for as signer_for

#: Public name → its module, imported on first use (PEP 562): importing the package imports none of them.
_EXPORTS = {
    "MAX_TTL": "uploader.storage.locations",
    "PROVIDER_MARKERS": "uploader.storage.locations",
    "StorageLocation": "uploader.storage.locations",
    "locate": "uploader.storage.locations",
    "may_hold_storage_url": "uploader.storage.locations",
    "storage_provider": "uploader.storage.locations",
    "DEFAULT_TTL": "uploader.storage.signing",
    "PayloadSigner": "uploader.storage.signing",
    "StorageError": "uploader.storage.signing",
    "UrlSigner": "uploader.storage.signing",
    "sign_payload": "uploader.storage.signing",
    "signer_for": "uploader.storage.signing",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
