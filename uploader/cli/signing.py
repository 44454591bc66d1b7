"""The CLI's face of signing at send time: `--sign` (accept s3://, gs:// and Azure blob URLs, signed just
before each send) and `--url-ttl` (how long each signed URL stays valid)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from uploader.cli.preflight import Duration
from uploader.errors import UsageError

if TYPE_CHECKING:
    from uploader.ledger import Ledger
    from uploader.storage import PayloadSigner

__all__ = ["ready_for_pending", "sign_option", "url_ttl_option"]

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


def ready_for_pending(led: Ledger, signer: PayloadSigner | None) -> None:
    """Before anything is sent: with --sign, build `signer`'s provider signers for the storage URLs of the
    pending rows, so a missing extra or credential stops the command (StorageError, exit 1) rather than
    the middle of a run; without it, refuse pending rows holding s3:// or gs:// URLs (loaded with --sign):
    sent as they are, they would make jobs whose attachments cannot open."""
    from uploader.ledger import pending_containing
    from uploader.storage import PROVIDER_MARKERS

    wanted = PROVIDER_MARKERS if signer is not None else {p: PROVIDER_MARKERS[p] for p in ("s3", "gcs")}
    found = pending_containing(led.engine, dict(wanted.values()))
    providers = sorted(p for p, (needle, _) in wanted.items() if needle in found)
    if signer is not None:
        signer.ready(providers)
    elif providers:
        schemes = " and ".join(f"{'s3' if p == 's3' else 'gs'}://" for p in providers)
        raise UsageError(
            f"pending rows hold {schemes} URLs (loaded with --sign), which GT Studio cannot fetch: "
            "pass --sign to sign them at send time"
        )
