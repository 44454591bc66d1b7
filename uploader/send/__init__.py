"""Ledger → API: the submit loop, pacing, the resolver of uncertain rows, batches, the run summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

from uploader._lazy import lazy_exports

if TYPE_CHECKING:
    from uploader.send.preflight import HostSample as HostSample
    from uploader.send.preflight import PreflightOptions as PreflightOptions
    from uploader.send.preflight import PreflightReport as PreflightReport
    from uploader.send.preflight import SignedUrls as SignedUrls
    from uploader.send.preflight import check_attachments as check_attachments
    from uploader.send.preflight import row_problem as row_problem
    from uploader.send.preflight import sample_attachments as sample_attachments
    from uploader.send.preflight import signed_urls as signed_urls
    from uploader.send.runner import reconcile as reconcile
    from uploader.send.runner import run_upload as run_upload
    from uploader.send.runner import run_upload_async as run_upload_async
    from uploader.send.signing import ready_for_pending as ready_for_pending
    from uploader.send.submit import Progress as Progress
    from uploader.send.submit import RunOptions as RunOptions
    from uploader.send.submit import RunSummary as RunSummary
    from uploader.send.submit import StopFlag as StopFlag
    from uploader.send.sync import SyncReport as SyncReport
    from uploader.send.sync import adopt as adopt
    from uploader.send.sync import adopt_async as adopt_async
    from uploader.send.sync import result_file_name as result_file_name
    from uploader.send.sync import sync_async as sync_async
    from uploader.send.sync import sync_ledger as sync_ledger

#: Public name → its module, imported on first use (PEP 562): importing the package imports none of them.
_EXPORTS = {
    "PreflightOptions": "uploader.send.preflight",
    "PreflightReport": "uploader.send.preflight",
    "check_attachments": "uploader.send.preflight",
    "row_problem": "uploader.send.preflight",
    "sample_attachments": "uploader.send.preflight",
    "HostSample": "uploader.send.preflight",
    "SignedUrls": "uploader.send.preflight",
    "signed_urls": "uploader.send.preflight",
    "reconcile": "uploader.send.runner",
    "ready_for_pending": "uploader.send.signing",
    "run_upload": "uploader.send.runner",
    "run_upload_async": "uploader.send.runner",
    "Progress": "uploader.send.submit",
    "RunOptions": "uploader.send.submit",
    "RunSummary": "uploader.send.submit",
    "StopFlag": "uploader.send.submit",
    "SyncReport": "uploader.send.sync",
    "adopt": "uploader.send.sync",
    "adopt_async": "uploader.send.sync",
    "result_file_name": "uploader.send.sync",
    "sync_ledger": "uploader.send.sync",
    "sync_async": "uploader.send.sync",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
