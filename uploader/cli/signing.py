"""The CLI's face of signing at send time: `--sign` (accept s3://, gs:// and Azure blob URLs, signed just
before each send) and `--url-ttl` (how long each signed URL stays valid)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from uploader.cli.preflight import Duration

__all__ = ["sign_option", "url_ttl_option"]

F = TypeVar("F", bound=Callable[..., Any])

sign_option = click.option(
    "--sign",
    is_flag=True,
    help="Accept s3://, gs:// and Azure blob URLs: uploader signs each with your credentials just before every "
    "send (the ledger keeps the storage URL). Needs the [s3], [gcs] or [azure] extra.",
)
url_ttl_option = click.option(
    "--url-ttl",
    type=Duration(),
    default="7d",
    show_default=True,
    metavar="DURATION",
    help="With --sign: how long each signed URL stays valid (capped at the provider's maximum: 7d for S3 and GCS).",
)
