"""S3 presigned GET URLs (Signature V4) with boto3, the [s3] extra: the one module that imports it.

Credentials, region and endpoint come from boto3's usual places (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for an
S3-compatible store, addressed path-style). boto3 computes the signature locally: no request is made.
"""

from __future__ import annotations

import os

import boto3
from botocore.config import Config

from uploader.storage.locations import StorageLocation
from uploader.storage.signing import StorageError

__all__ = ["S3Signer"]


class S3Signer:
    """Presigned S3 GET URLs. `endpoint_url`: an S3-compatible store (path-style addressing), else AWS."""

    def __init__(self, endpoint_url: str | None = None, region: str | None = None) -> None:
        session = boto3.session.Session()
        if session.get_credentials() is None:
            raise StorageError(
                "cannot sign s3:// URLs: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials)"
            )
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(signature_version="s3v4", s3={"addressing_style": "path" if endpoint else "virtual"})
        self._client = session.client(
            "s3", region_name=region or session.region_name or "us-east-1", endpoint_url=endpoint, config=config
        )

    def sign(self, location: StorageLocation, seconds: int) -> str:
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": location.bucket, "Key": location.key}, ExpiresIn=seconds
        )
        return url
