"""The GT Studio HTTP API: the client, response envelopes, and the pure policy (classify, backoff).
Knows no ledger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from uploader._lazy import lazy_exports

if TYPE_CHECKING:
    from uploader.api.attachments import HostPacer as HostPacer
    from uploader.api.attachments import UrlCheck as UrlCheck
    from uploader.api.attachments import check_urls as check_urls
    from uploader.api.attachments import judge as judge
    from uploader.api.client import ApiClient as ApiClient
    from uploader.api.endpoint import DEFAULT_BASE_URL as DEFAULT_BASE_URL
    from uploader.api.endpoint import USER_INFO as USER_INFO
    from uploader.api.endpoint import check_api_key as check_api_key
    from uploader.api.endpoint import check_base_url as check_base_url
    from uploader.api.endpoint import masked_url as masked_url
    from uploader.api.loop import loop_factory as loop_factory
    from uploader.api.loop import run_loop as run_loop
    from uploader.api.payload import attachment_urls as attachment_urls
    from uploader.api.policy import EXISTS_CODES as EXISTS_CODES
    from uploader.api.policy import MAX_RETRY_AFTER as MAX_RETRY_AFTER
    from uploader.api.policy import OUTAGE_CODES as OUTAGE_CODES
    from uploader.api.policy import PERMANENT_CODES as PERMANENT_CODES
    from uploader.api.policy import PROTOCOL_ERROR_LIMIT as PROTOCOL_ERROR_LIMIT
    from uploader.api.policy import RETRYABLE_CODES as RETRYABLE_CODES
    from uploader.api.policy import STALE_PAGES_LIMIT as STALE_PAGES_LIMIT
    from uploader.api.policy import ApiResult as ApiResult
    from uploader.api.policy import Decision as Decision
    from uploader.api.policy import Found as Found
    from uploader.api.policy import PageTrail as PageTrail
    from uploader.api.policy import Verdict as Verdict
    from uploader.api.policy import backoff_delay as backoff_delay
    from uploader.api.policy import classify as classify
    from uploader.api.policy import job_id_text as job_id_text
    from uploader.api.policy import job_is_gone as job_is_gone
    from uploader.api.policy import job_read_problem as job_read_problem
    from uploader.api.policy import listed_jobs as listed_jobs
    from uploader.api.policy import listing_problem as listing_problem
    from uploader.api.policy import may_have_created as may_have_created
    from uploader.api.policy import named_twice as named_twice
    from uploader.api.policy import next_delay as next_delay
    from uploader.api.policy import retry_after_capped as retry_after_capped
    from uploader.api.policy import retry_after_seconds as retry_after_seconds
    from uploader.api.policy import status_text as status_text
    from uploader.api.policy import too_many_protocol_errors as too_many_protocol_errors
    from uploader.api.warm import settle_warm_up as settle_warm_up
    from uploader.api.warm import warm_up as warm_up
    from uploader.api.wire import proxies_from_env as proxies_from_env
    from uploader.api.wire import proxy_problem as proxy_problem

#: Public name → its module, imported on first use (PEP 562): importing the package imports none of them.
_EXPORTS = {
    "HostPacer": "uploader.api.attachments",
    "UrlCheck": "uploader.api.attachments",
    "attachment_urls": "uploader.api.payload",
    "check_urls": "uploader.api.attachments",
    "judge": "uploader.api.attachments",
    "ApiClient": "uploader.api.client",
    "check_api_key": "uploader.api.endpoint",
    "check_base_url": "uploader.api.endpoint",
    "masked_url": "uploader.api.endpoint",
    "USER_INFO": "uploader.api.endpoint",
    "loop_factory": "uploader.api.loop",
    "run_loop": "uploader.api.loop",
    "proxies_from_env": "uploader.api.wire",
    "proxy_problem": "uploader.api.wire",
    "DEFAULT_BASE_URL": "uploader.api.endpoint",
    "EXISTS_CODES": "uploader.api.policy",
    "PERMANENT_CODES": "uploader.api.policy",
    "RETRYABLE_CODES": "uploader.api.policy",
    "MAX_RETRY_AFTER": "uploader.api.policy",
    "OUTAGE_CODES": "uploader.api.policy",
    "PROTOCOL_ERROR_LIMIT": "uploader.api.policy",
    "ApiResult": "uploader.api.policy",
    "STALE_PAGES_LIMIT": "uploader.api.policy",
    "Decision": "uploader.api.policy",
    "Found": "uploader.api.policy",
    "PageTrail": "uploader.api.policy",
    "Verdict": "uploader.api.policy",
    "backoff_delay": "uploader.api.policy",
    "classify": "uploader.api.policy",
    "job_id_text": "uploader.api.policy",
    "job_is_gone": "uploader.api.policy",
    "job_read_problem": "uploader.api.policy",
    "listed_jobs": "uploader.api.policy",
    "listing_problem": "uploader.api.policy",
    "may_have_created": "uploader.api.policy",
    "named_twice": "uploader.api.policy",
    "next_delay": "uploader.api.policy",
    "retry_after_capped": "uploader.api.policy",
    "retry_after_seconds": "uploader.api.policy",
    "status_text": "uploader.api.policy",
    "too_many_protocol_errors": "uploader.api.policy",
    "settle_warm_up": "uploader.api.warm",
    "warm_up": "uploader.api.warm",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
