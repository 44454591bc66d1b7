"""Durable job state: engine, schema and models, claims and leases, results, state transitions, status
and export rows. Knows no manifest, no load pipeline and no API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from uploader._lazy import lazy_exports

if TYPE_CHECKING:
    from uploader.ledger.engine import LedgerLocked as LedgerLocked
    from uploader.ledger.engine import LockWait as LockWait
    from uploader.ledger.engine import read_tx as read_tx
    from uploader.ledger.engine import set_lock_wait as set_lock_wait
    from uploader.ledger.engine import sqlite_bulk_mode as sqlite_bulk_mode
    from uploader.ledger.engine import translate_errors as translate_errors
    from uploader.ledger.engine import write_tx as write_tx
    from uploader.ledger.forget import ForgetCounts as ForgetCounts
    from uploader.ledger.forget import Selection as Selection
    from uploader.ledger.forget import count_forget as count_forget
    from uploader.ledger.forget import forget_rows as forget_rows
    from uploader.ledger.forget import project_counts as project_counts
    from uploader.ledger.ledger import CLAIM_LOG_ENV as CLAIM_LOG_ENV
    from uploader.ledger.ledger import BatchSlot as BatchSlot
    from uploader.ledger.ledger import Claim as Claim
    from uploader.ledger.ledger import Ledger as Ledger
    from uploader.ledger.ledger import Resolution as Resolution
    from uploader.ledger.ledger import Result as Result
    from uploader.ledger.ledger import pid_alive as pid_alive
    from uploader.ledger.ledger import utcnow as utcnow
    from uploader.ledger.locate import DEFAULT_LEDGER as DEFAULT_LEDGER
    from uploader.ledger.locate import ledger_url as ledger_url
    from uploader.ledger.locate import new_ledger_file as new_ledger_file
    from uploader.ledger.models import Status as Status
    from uploader.ledger.queries import EXPORT_COLUMNS as EXPORT_COLUMNS
    from uploader.ledger.queries import StatusReport as StatusReport
    from uploader.ledger.transitions import Settlement as Settlement
    from uploader.ledger.transitions import settle_found as settle_found
    from uploader.ledger.transitions import settle_missing as settle_missing

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
