"""Google Cloud Storage V4 signed GET URLs with google-cloud-storage, the [gcs] extra: the one module that
imports it.

Only a service account's private key can sign locally, so the credentials are the key file that
GOOGLE_APPLICATION_CREDENTIALS names (user credentials would need a network call to sign): no request is made.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from google.cloud import storage
from google.oauth2 import service_account

from uploader.storage.locations import StorageLocation
from uploader.storage.signing import StorageError

__all__ = ["GcsSigner"]


class GcsSigner:
    """V4 signed GCS GET URLs with a service account's key (`key_file`, else GOOGLE_APPLICATION_CREDENTIALS)."""

    def __init__(self, key_file: str | None = None) -> None:
        path = key_file or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        if not path:
            raise StorageError(
                "cannot sign gs:// URLs: no credentials (set GOOGLE_APPLICATION_CREDENTIALS to a "
                "service account's JSON key file)"
            )
        try:
            load = service_account.Credentials.from_service_account_file
            self._credentials: Any = load(path)  # type: ignore[no-untyped-call]
        except (OSError, ValueError) as e:
            raise StorageError(
                f"cannot sign gs:// URLs: GOOGLE_APPLICATION_CREDENTIALS {path!r} is not a "
                f"service account key file ({e})"
            ) from None
        # Built with the key and its project: the client makes no request to be built or to sign.
        self._client = storage.Client(project=self._credentials.project_id, credentials=self._credentials)

    def sign(self, location: StorageLocation, seconds: int) -> str:
        blob = self._client.bucket(location.bucket).blob(location.key)
        url: str = blob.generate_signed_url(
            version="v4", expiration=dt.timedelta(seconds=seconds), method="GET", credentials=self._credentials
        )
        return url
