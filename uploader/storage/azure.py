"""Azure Blob Storage SAS URLs (read-only, signed with the account key) with azure-storage-blob, the [azure]
extra: the one module that imports it.

The key comes from AZURE_STORAGE_CONNECTION_STRING (AccountName=...;AccountKey=...) or AZURE_STORAGE_KEY (for
the account the URL names, or AZURE_STORAGE_ACCOUNT's); the SAS is an HMAC computed locally: no request is made.
"""

from __future__ import annotations

import datetime as dt
import os
from urllib.parse import quote

from azure.storage.blob import BlobSasPermissions, generate_blob_sas

from uploader.storage.locations import StorageLocation
from uploader.storage.signing import StorageError

__all__ = ["AzureSigner"]


class AzureSigner:
    """Read-only blob SAS URLs. `account`/`key`: else from the environment (see the module's docstring)."""

    def __init__(self, account: str | None = None, key: str | None = None) -> None:
        if key is None:
            fields = dict(
                part.split("=", 1)
                for part in os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "").split(";")
                if "=" in part
            )
            key = fields.get("AccountKey") or os.environ.get("AZURE_STORAGE_KEY")
            account = account or fields.get("AccountName") or os.environ.get("AZURE_STORAGE_ACCOUNT")
        if not key:
            raise StorageError(
                "cannot sign Azure blob URLs: no account key (set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_KEY)"
            )
        self._account, self._key = account, key

    def sign(self, location: StorageLocation, seconds: int) -> str:
        if self._account and self._account.lower() != location.account:
            raise StorageError(
                f"cannot sign the Azure blob URL of account {location.account!r}: the key is "
                f"for account {self._account!r}"
            )
        expiry = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=seconds)
        sas = generate_blob_sas(
            location.account,
            location.bucket,
            location.key,
            account_key=self._key,
            permission=BlobSasPermissions(read=True),
            expiry=expiry,
        )
        return (
            f"https://{location.account}.blob.core.windows.net/{location.bucket}/{quote(location.key, safe='/~')}?{sas}"
        )
