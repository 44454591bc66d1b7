"""The GT Studio HTTP API: the client, response envelopes, and the pure policy (classify, backoff).
Knows no ledger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from uploader._lazy import lazy_exports

if TYPE_CHECKING:
    from uploader.api.client import ApiClient, check_base_url
    from uploader.api.policy import (
        DEFAULT_BASE_URL,
        EXISTS_CODES,
        MAX_RETRY_AFTER,
        OUTAGE_CODES,
        PROTOCOL_ERROR_LIMIT,
        ApiResult,
        Decision,
        Verdict,
        backoff_delay,
        classify,
        job_id_text,
        may_have_created,
        next_delay,
        retry_after_capped,
        retry_after_seconds,
        too_many_protocol_errors,
    )

#: Public name → its module, imported on first use (PEP 562): importing the package imports none of them.
_EXPORTS = {
    "ApiClient": "uploader.api.client",
    "check_base_url": "uploader.api.client",
    "DEFAULT_BASE_URL": "uploader.api.policy",
    "EXISTS_CODES": "uploader.api.policy",
    "MAX_RETRY_AFTER": "uploader.api.policy",
    "OUTAGE_CODES": "uploader.api.policy",
    "PROTOCOL_ERROR_LIMIT": "uploader.api.policy",
    "ApiResult": "uploader.api.policy",
    "Decision": "uploader.api.policy",
    "Verdict": "uploader.api.policy",
    "backoff_delay": "uploader.api.policy",
    "classify": "uploader.api.policy",
    "job_id_text": "uploader.api.policy",
    "may_have_created": "uploader.api.policy",
    "next_delay": "uploader.api.policy",
    "retry_after_capped": "uploader.api.policy",
    "retry_after_seconds": "uploader.api.policy",
    "too_many_protocol_errors": "uploader.api.policy",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
