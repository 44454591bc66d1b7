"""Ledger → API: the submit loop, pacing, the resolver of uncertain rows, batches, the run summary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from uploader._lazy import lazy_exports

if TYPE_CHECKING:
    from uploader.send.runner import reconcile, run_upload, run_upload_async
    from uploader.send.submit import Progress, RunOptions, RunSummary, StopFlag

#: Public name → its module, imported on first use (PEP 562): importing the package imports none of them.
_EXPORTS = {
    "reconcile": "uploader.send.runner",
    "run_upload": "uploader.send.runner",
    "run_upload_async": "uploader.send.runner",
    "Progress": "uploader.send.submit",
    "RunOptions": "uploader.send.submit",
    "RunSummary": "uploader.send.submit",
    "StopFlag": "uploader.send.submit",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
