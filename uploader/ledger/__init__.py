"""Durable job state: engine, schema and models, claims and leases, results, state transitions, status
and export rows. Knows no manifest, no load pipeline and no API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from uploader._lazy import lazy_exports

if TYPE_CHECKING:
    from uploader.ledger.engine import (
        LedgerLocked,
        LockWait,
        read_tx,
        set_lock_wait,
        sqlite_bulk_mode,
        translate_errors,
        write_tx,
    )
    from uploader.ledger.forget import ForgetCounts, Selection, count_forget, forget_rows, project_counts
    from uploader.ledger.ledger import (
        CLAIM_LOG_ENV,
        BatchSlot,
        Claim,
        Ledger,
        Resolution,
        Result,
        pid_alive,
        utcnow,
    )
    from uploader.ledger.locate import DEFAULT_LEDGER, ledger_url, new_ledger_file
    from uploader.ledger.models import Status
    from uploader.ledger.queries import EXPORT_COLUMNS, StatusReport
    from uploader.ledger.transitions import Settlement, settle_found, settle_missing

#: Public name → its module, imported on first use (PEP 562): importing the package imports none of them.
_EXPORTS = {
    "CLAIM_LOG_ENV": "uploader.ledger.ledger",
    "BatchSlot": "uploader.ledger.ledger",
    "Claim": "uploader.ledger.ledger",
    "Ledger": "uploader.ledger.ledger",
    "Resolution": "uploader.ledger.ledger",
    "Result": "uploader.ledger.ledger",
    "pid_alive": "uploader.ledger.ledger",
    "utcnow": "uploader.ledger.ledger",
    "EXPORT_COLUMNS": "uploader.ledger.queries",
    "StatusReport": "uploader.ledger.queries",
    "Status": "uploader.ledger.models",
    "DEFAULT_LEDGER": "uploader.ledger.locate",
    "ledger_url": "uploader.ledger.locate",
    "new_ledger_file": "uploader.ledger.locate",
    "LedgerLocked": "uploader.ledger.engine",
    "LockWait": "uploader.ledger.engine",
    "read_tx": "uploader.ledger.engine",
    "set_lock_wait": "uploader.ledger.engine",
    "sqlite_bulk_mode": "uploader.ledger.engine",
    "translate_errors": "uploader.ledger.engine",
    "write_tx": "uploader.ledger.engine",
    "ForgetCounts": "uploader.ledger.forget",
    "Selection": "uploader.ledger.forget",
    "count_forget": "uploader.ledger.forget",
    "forget_rows": "uploader.ledger.forget",
    "project_counts": "uploader.ledger.forget",
    "Settlement": "uploader.ledger.transitions",
    "settle_found": "uploader.ledger.transitions",
    "settle_missing": "uploader.ledger.transitions",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
