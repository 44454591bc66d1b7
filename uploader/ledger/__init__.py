"""Durable job state: engine, schema and models, claims and leases, results, state transitions, status
and export rows, and the load's SQL (uploader.ledger.loading, uploader.ledger.staging). Knows no manifest,
no load pipeline and no API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from uploader._lazy import lazy_exports

if TYPE_CHECKING:
    from uploader.ledger.activity import ACTIVITY_COUNTERS as ACTIVITY_COUNTERS
    from uploader.ledger.activity import record_activity as record_activity
    from uploader.ledger.address import parse_url as parse_url
    from uploader.ledger.address import shown_ledger as shown_ledger
    from uploader.ledger.address import shown_url as shown_url
    from uploader.ledger.bare import create_bare as create_bare
    from uploader.ledger.bare import sqlite_bulk_mode as sqlite_bulk_mode
    from uploader.ledger.bare import sqlite_file as sqlite_file
    from uploader.ledger.bare import translate_sqlite_errors as translate_sqlite_errors
    from uploader.ledger.engine import LedgerLocked as LedgerLocked
    from uploader.ledger.engine import LedgerNotUpgraded as LedgerNotUpgraded
    from uploader.ledger.engine import LockWait as LockWait
    from uploader.ledger.engine import background_checkpoints as background_checkpoints
    from uploader.ledger.engine import read_tx as read_tx
    from uploader.ledger.engine import set_lock_wait as set_lock_wait
    from uploader.ledger.engine import translate_errors as translate_errors
    from uploader.ledger.engine import write_tx as write_tx
    from uploader.ledger.forget import ForgetCounts as ForgetCounts
    from uploader.ledger.forget import Selection as Selection
    from uploader.ledger.forget import count_forget as count_forget
    from uploader.ledger.forget import forget_rows as forget_rows
    from uploader.ledger.forget import manifest_paths as manifest_paths
    from uploader.ledger.forget import project_counts as project_counts
    from uploader.ledger.ledger import CLAIM_LOG_ENV as CLAIM_LOG_ENV
    from uploader.ledger.ledger import BatchSlot as BatchSlot
    from uploader.ledger.ledger import Claim as Claim
    from uploader.ledger.ledger import Ledger as Ledger
    from uploader.ledger.ledger import Resolution as Resolution
    from uploader.ledger.ledger import Result as Result
    from uploader.ledger.ledger import pid_alive as pid_alive
    from uploader.ledger.loading import ALREADY_LOADED as ALREADY_LOADED
    from uploader.ledger.loading import JOB_COLUMNS as JOB_COLUMNS
    from uploader.ledger.loading import JOBS_ANY as JOBS_ANY
    from uploader.ledger.loading import LOCK_JOBS as LOCK_JOBS
    from uploader.ledger.loading import MANIFEST_SET_ROWS as MANIFEST_SET_ROWS
    from uploader.ledger.loading import MERGE_CHANGED as MERGE_CHANGED
    from uploader.ledger.loading import MERGE_COUNTS as MERGE_COUNTS
    from uploader.ledger.loading import MERGE_EXTRA as MERGE_EXTRA
    from uploader.ledger.loading import MERGE_NEW as MERGE_NEW
    from uploader.ledger.loading import PLAN_COUNTS as PLAN_COUNTS
    from uploader.ledger.loading import PLAN_SENDABLE as PLAN_SENDABLE
    from uploader.ledger.loading import RECORD_MANIFEST as RECORD_MANIFEST
    from uploader.ledger.loading import insert_new as insert_new
    from uploader.ledger.loading import manifest_path_text as manifest_path_text
    from uploader.ledger.loading import manifest_row as manifest_row
    from uploader.ledger.loading import merge_examples as merge_examples
    from uploader.ledger.locate import DEFAULT_LEDGER as DEFAULT_LEDGER
    from uploader.ledger.locate import ledger_url as ledger_url
    from uploader.ledger.locate import new_ledger_file as new_ledger_file
    from uploader.ledger.locate import overwrites_ledger as overwrites_ledger
    from uploader.ledger.preflight import BlockedRow as BlockedRow
    from uploader.ledger.preflight import UrlVerdict as UrlVerdict
    from uploader.ledger.preflight import block_rows as block_rows
    from uploader.ledger.preflight import blocked_rows as blocked_rows
    from uploader.ledger.preflight import expiring_rows as expiring_rows
    from uploader.ledger.preflight import never_checked as never_checked
    from uploader.ledger.preflight import pending_bodies_holding as pending_bodies_holding
    from uploader.ledger.preflight import pending_containing as pending_containing
    from uploader.ledger.preflight import pending_payloads as pending_payloads
    from uploader.ledger.preflight import pending_signed_payloads as pending_signed_payloads
    from uploader.ledger.preflight import record_verdicts as record_verdicts
    from uploader.ledger.preflight import release_blocked as release_blocked
    from uploader.ledger.preflight import store_preflight as store_preflight
    from uploader.ledger.preflight import url_hash as url_hash
    from uploader.ledger.preflight import url_verdict_counts as url_verdict_counts
    from uploader.ledger.preflight import verdicts_since as verdicts_since
    from uploader.ledger.queries import EXPORT_COLUMNS as EXPORT_COLUMNS
    from uploader.ledger.queries import StatusReport as StatusReport
    from uploader.ledger.report import ReportData as ReportData
    from uploader.ledger.report import bucket_seconds as bucket_seconds
    from uploader.ledger.report import report_data as report_data
    from uploader.ledger.staging import BEGIN as BEGIN
    from uploader.ledger.staging import BEGIN_IMMEDIATE as BEGIN_IMMEDIATE
    from uploader.ledger.staging import COMMIT as COMMIT
    from uploader.ledger.staging import ROLLBACK as ROLLBACK
    from uploader.ledger.staging import SCRATCH_ROW as SCRATCH_ROW
    from uploader.ledger.staging import SCRATCH_ROW_NO_EXTRA as SCRATCH_ROW_NO_EXTRA
    from uploader.ledger.staging import SCRATCH_ROW_OWN as SCRATCH_ROW_OWN
    from uploader.ledger.staging import SCRATCH_SETUP as SCRATCH_SETUP
    from uploader.ledger.staging import STAGING_ANALYZE as STAGING_ANALYZE
    from uploader.ledger.staging import STAGING_ANY as STAGING_ANY
    from uploader.ledger.staging import STAGING_CLEAR as STAGING_CLEAR
    from uploader.ledger.staging import STAGING_COPY as STAGING_COPY
    from uploader.ledger.staging import STAGING_DROP as STAGING_DROP
    from uploader.ledger.staging import STAGING_DUPLICATE_COUNT as STAGING_DUPLICATE_COUNT
    from uploader.ledger.staging import STAGING_INDEX as STAGING_INDEX
    from uploader.ledger.staging import STAGING_TABLE as STAGING_TABLE
    from uploader.ledger.staging import StagingRow as StagingRow
    from uploader.ledger.staging import attach_slice as attach_slice
    from uploader.ledger.staging import detach_slice as detach_slice
    from uploader.ledger.staging import many_rows as many_rows
    from uploader.ledger.staging import staging_duplicates as staging_duplicates
    from uploader.ledger.staging import staging_from_slice as staging_from_slice
    from uploader.ledger.staging import staging_insert as staging_insert
    from uploader.ledger.states import Status as Status
    from uploader.ledger.states import utcnow as utcnow
    from uploader.ledger.tracking import ADOPTED as ADOPTED
    from uploader.ledger.tracking import GONE_CODE as GONE_CODE
    from uploader.ledger.tracking import RESULT_STATUSES as RESULT_STATUSES
    from uploader.ledger.tracking import Adoption as Adoption
    from uploader.ledger.tracking import FetchedResult as FetchedResult
    from uploader.ledger.tracking import ListedPage as ListedPage
    from uploader.ledger.tracking import TrackedRow as TrackedRow
    from uploader.ledger.tracking import adopt_jobs as adopt_jobs
    from uploader.ledger.tracking import keep_result as keep_result
    from uploader.ledger.tracking import record_gone as record_gone
    from uploader.ledger.tracking import record_listed as record_listed
    from uploader.ledger.tracking import record_results as record_results
    from uploader.ledger.tracking import record_statuses as record_statuses
    from uploader.ledger.tracking import result_files as result_files
    from uploader.ledger.tracking import results_due as results_due
    from uploader.ledger.tracking import results_to_record as results_to_record
    from uploader.ledger.tracking import small_page_cache as small_page_cache
    from uploader.ledger.tracking import sync_batches as sync_batches
    from uploader.ledger.tracking import sync_counts as sync_counts
    from uploader.ledger.tracking import tracked_rows as tracked_rows
    from uploader.ledger.transitions import Settlement as Settlement
    from uploader.ledger.transitions import settle_found as settle_found
    from uploader.ledger.transitions import settle_missing as settle_missing

#: Public name → its module, imported on first use (PEP 562): importing the package imports none of them.
_EXPORTS = {
    "ACTIVITY_COUNTERS": "uploader.ledger.activity",
    "record_activity": "uploader.ledger.activity",
    "parse_url": "uploader.ledger.address",
    "shown_ledger": "uploader.ledger.address",
    "shown_url": "uploader.ledger.address",
    "CLAIM_LOG_ENV": "uploader.ledger.ledger",
    "BatchSlot": "uploader.ledger.ledger",
    "Claim": "uploader.ledger.ledger",
    "Ledger": "uploader.ledger.ledger",
    "Resolution": "uploader.ledger.ledger",
    "Result": "uploader.ledger.ledger",
    "pid_alive": "uploader.ledger.ledger",
    "EXPORT_COLUMNS": "uploader.ledger.queries",
    "StatusReport": "uploader.ledger.queries",
    "ReportData": "uploader.ledger.report",
    "report_data": "uploader.ledger.report",
    "bucket_seconds": "uploader.ledger.report",
    "Status": "uploader.ledger.states",
    "utcnow": "uploader.ledger.states",
    "DEFAULT_LEDGER": "uploader.ledger.locate",
    "ledger_url": "uploader.ledger.locate",
    "new_ledger_file": "uploader.ledger.locate",
    "overwrites_ledger": "uploader.ledger.locate",
    "LedgerLocked": "uploader.ledger.engine",
    "LedgerNotUpgraded": "uploader.ledger.engine",
    "LockWait": "uploader.ledger.engine",
    "read_tx": "uploader.ledger.engine",
    "set_lock_wait": "uploader.ledger.engine",
    "background_checkpoints": "uploader.ledger.engine",
    "create_bare": "uploader.ledger.bare",
    "sqlite_bulk_mode": "uploader.ledger.bare",
    "sqlite_file": "uploader.ledger.bare",
    "translate_sqlite_errors": "uploader.ledger.bare",
    "translate_errors": "uploader.ledger.engine",
    "write_tx": "uploader.ledger.engine",
    "ALREADY_LOADED": "uploader.ledger.loading",
    "JOBS_ANY": "uploader.ledger.loading",
    "JOB_COLUMNS": "uploader.ledger.loading",
    "LOCK_JOBS": "uploader.ledger.loading",
    "RECORD_MANIFEST": "uploader.ledger.loading",
    "MANIFEST_SET_ROWS": "uploader.ledger.loading",
    "MERGE_COUNTS": "uploader.ledger.loading",
    "MERGE_NEW": "uploader.ledger.loading",
    "MERGE_CHANGED": "uploader.ledger.loading",
    "MERGE_EXTRA": "uploader.ledger.loading",
    "PLAN_COUNTS": "uploader.ledger.loading",
    "PLAN_SENDABLE": "uploader.ledger.loading",
    "insert_new": "uploader.ledger.loading",
    "manifest_row": "uploader.ledger.loading",
    "manifest_path_text": "uploader.ledger.loading",
    "merge_examples": "uploader.ledger.loading",
    "BEGIN": "uploader.ledger.staging",
    "BEGIN_IMMEDIATE": "uploader.ledger.staging",
    "COMMIT": "uploader.ledger.staging",
    "ROLLBACK": "uploader.ledger.staging",
    "SCRATCH_ROW": "uploader.ledger.staging",
    "SCRATCH_ROW_NO_EXTRA": "uploader.ledger.staging",
    "SCRATCH_ROW_OWN": "uploader.ledger.staging",
    "SCRATCH_SETUP": "uploader.ledger.staging",
    "STAGING_ANALYZE": "uploader.ledger.staging",
    "STAGING_ANY": "uploader.ledger.staging",
    "STAGING_CLEAR": "uploader.ledger.staging",
    "STAGING_COPY": "uploader.ledger.staging",
    "STAGING_TABLE": "uploader.ledger.staging",
    "STAGING_DROP": "uploader.ledger.staging",
    "STAGING_DUPLICATE_COUNT": "uploader.ledger.staging",
    "STAGING_INDEX": "uploader.ledger.staging",
    "StagingRow": "uploader.ledger.staging",
    "attach_slice": "uploader.ledger.staging",
    "detach_slice": "uploader.ledger.staging",
    "many_rows": "uploader.ledger.staging",
    "staging_duplicates": "uploader.ledger.staging",
    "staging_from_slice": "uploader.ledger.staging",
    "staging_insert": "uploader.ledger.staging",
    "ForgetCounts": "uploader.ledger.forget",
    "Selection": "uploader.ledger.forget",
    "count_forget": "uploader.ledger.forget",
    "forget_rows": "uploader.ledger.forget",
    "manifest_paths": "uploader.ledger.forget",
    "project_counts": "uploader.ledger.forget",
    "Settlement": "uploader.ledger.transitions",
    "settle_found": "uploader.ledger.transitions",
    "settle_missing": "uploader.ledger.transitions",
    "BlockedRow": "uploader.ledger.preflight",
    "UrlVerdict": "uploader.ledger.preflight",
    "block_rows": "uploader.ledger.preflight",
    "blocked_rows": "uploader.ledger.preflight",
    "never_checked": "uploader.ledger.preflight",
    "expiring_rows": "uploader.ledger.preflight",
    "pending_bodies_holding": "uploader.ledger.preflight",
    "pending_containing": "uploader.ledger.preflight",
    "pending_payloads": "uploader.ledger.preflight",
    "pending_signed_payloads": "uploader.ledger.preflight",
    "record_verdicts": "uploader.ledger.preflight",
    "release_blocked": "uploader.ledger.preflight",
    "store_preflight": "uploader.ledger.preflight",
    "url_hash": "uploader.ledger.preflight",
    "ADOPTED": "uploader.ledger.tracking",
    "Adoption": "uploader.ledger.tracking",
    "adopt_jobs": "uploader.ledger.tracking",
    "RESULT_STATUSES": "uploader.ledger.tracking",
    "TrackedRow": "uploader.ledger.tracking",
    "FetchedResult": "uploader.ledger.tracking",
    "ListedPage": "uploader.ledger.tracking",
    "GONE_CODE": "uploader.ledger.tracking",
    "record_gone": "uploader.ledger.tracking",
    "record_listed": "uploader.ledger.tracking",
    "keep_result": "uploader.ledger.tracking",
    "record_results": "uploader.ledger.tracking",
    "results_to_record": "uploader.ledger.tracking",
    "record_statuses": "uploader.ledger.tracking",
    "result_files": "uploader.ledger.tracking",
    "results_due": "uploader.ledger.tracking",
    "small_page_cache": "uploader.ledger.tracking",
    "sync_batches": "uploader.ledger.tracking",
    "sync_counts": "uploader.ledger.tracking",
    "tracked_rows": "uploader.ledger.tracking",
    "url_verdict_counts": "uploader.ledger.preflight",
    "verdicts_since": "uploader.ledger.preflight",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
