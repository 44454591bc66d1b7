"""The CLI's face of signing at send time: `--sign` (accept s3://, gs:// and Azure blob URLs, signed just
before each send) and `--url-ttl` (how long each signed URL stays valid)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from uploader.cli.preflight import Duration

if TYPE_CHECKING:
    from uploader.ledger import Ledger
    from uploader.storage import PayloadSigner

__all__ = ["ready_for_pending", "sign_option", "url_ttl_option"]

F = TypeVar("F", bound=Callable[..., Any])

sign_option = click.option(
    "--sign", is_flag=True,
    help="Accept s3://, gs:// and Azure blob URLs: uploader signs each with your credentials just before every "
         "send (the ledger keeps the storage URL). Needs the [s3], [gcs] or [azure] extra.")
url_ttl_option = click.option(
    "--url-ttl", type=Duration(), default="7d", show_default=True, metavar="DURATION",
    help="With --sign: how long each signed URL stays valid (capped at the provider's maximum: 7d for S3 and GCS).")


def ready_for_pending(led: Ledger, signer: PayloadSigner) -> None:
    """Build `signer`'s provider signers for the pending rows' storage URLs: a missing extra or credential
    stops the command before anything is sent (StorageError, exit 1) rather than in the middle of a run."""
    from uploader.ledger import pending_payloads
    from uploader.storage import providers_in

    found: set[str] = set()
    for page in pending_payloads(led.engine):
        for _, _, payload in page:
            found |= providers_in(payload)
        if len(found) == 3:
            break
    signer.ready(sorted(found))
