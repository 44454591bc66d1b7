"""Before a run or a check sends anything: the storage URLs of the pending rows can be signed (`--sign`,
`upload(sign=True)`), or, without signing, none is there to be sent as it is."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from uploader.api import attachment_urls
from uploader.errors import UsageError
from uploader.ledger import pending_bodies_holding
from uploader.storage import PROVIDER_MARKERS, storage_provider

if TYPE_CHECKING:
    from uploader.ledger import Ledger
    from uploader.storage import PayloadSigner

__all__ = ["ready_for_pending"]


def ready_for_pending(led: Ledger, signer: PayloadSigner | None, sign_option: str = "--sign") -> None:
    """With a signer, build its provider signers for the storage URLs of the pending rows, so a missing extra
    or credential stops the command (StorageError, exit 1) rather than the middle of a run; without one,
    refuse pending rows holding s3:// or gs:// URLs (loaded with `sign_option`): sent as they are, they would
    make jobs whose attachments cannot open. Only attachment fields count (image_url, a frame's src): an
    `s3://` in a caption or in metadata is sent as text."""
    wanted = PROVIDER_MARKERS if signer is not None else {p: PROVIDER_MARKERS[p] for p in ("s3", "gcs")}
    providers = sorted(p for p, (needle, unless) in wanted.items() if _attached(led, p, needle, unless))
    if signer is not None:
        signer.ready(providers)
    elif providers:
        schemes = " and ".join(f"{'s3' if p == 's3' else 'gs'}://" for p in providers)
        raise UsageError(
            f"pending rows hold {schemes} URLs (loaded with {sign_option}), which GT Studio cannot fetch: "
            f"pass {sign_option} to sign them at send time"
        )


def _attached(led: Ledger, provider: str, needle: str, unless: str | None) -> bool:
    """Whether a pending row has a storage URL of `provider` in an attachment field: the rows whose body holds
    `needle` are read until one does (in the common case the first)."""
    pages = pending_bodies_holding(led.engine, needle, unless)
    try:
        for bodies in pages:
            for body in bodies:
                if any(storage_provider(url) == provider for url in attachment_urls(json.loads(body))):
                    return True
        return False
    finally:
        pages.close()  # ends its read transaction at once
