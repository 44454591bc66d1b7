"""Read and validate manifest files (CSV/TSV, JSONL, Parquet; columns, values, video frames): pure.

Imports nothing of uploader but `uploader.errors`, and no SQLAlchemy: the load's slice readers use it in
processes forked before SQLAlchemy is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from uploader._lazy import lazy_exports

if TYPE_CHECKING:
    from uploader.manifest.formats import EXTENSIONS as EXTENSIONS
    from uploader.manifest.formats import FORMATS as FORMATS
    from uploader.manifest.formats import FileIdentity as FileIdentity
    from uploader.manifest.formats import Span as Span
    from uploader.manifest.formats import check_unchanged as check_unchanged
    from uploader.manifest.formats import file_identity as file_identity
    from uploader.manifest.jobs import JobColumns as JobColumns
    from uploader.manifest.jobs import StagedJob as StagedJob
    from uploader.manifest.reader import Manifest as Manifest
    from uploader.manifest.reader import ManifestOptions as ManifestOptions
    from uploader.manifest.signed import SignedUrlError as SignedUrlError
    from uploader.manifest.signed import SignedUrls as SignedUrls
    from uploader.manifest.signed import UrlExpiry as UrlExpiry
    from uploader.manifest.signed import may_hold_expiry as may_hold_expiry
    from uploader.manifest.signed import tally_signed as tally_signed
    from uploader.manifest.signed import url_expiry as url_expiry

#: Public name → its module, imported on first use (PEP 562): importing the package imports none of them.
_EXPORTS = {
    "Manifest": "uploader.manifest.reader",
    "ManifestOptions": "uploader.manifest.reader",
    "StagedJob": "uploader.manifest.jobs",
    "JobColumns": "uploader.manifest.jobs",
    "FORMATS": "uploader.manifest.formats",
    "EXTENSIONS": "uploader.manifest.formats",
    "Span": "uploader.manifest.formats",
    "FileIdentity": "uploader.manifest.formats",
    "check_unchanged": "uploader.manifest.formats",
    "file_identity": "uploader.manifest.formats",
    "SignedUrlError": "uploader.manifest.signed",
    "SignedUrls": "uploader.manifest.signed",
    "tally_signed": "uploader.manifest.signed",
    "UrlExpiry": "uploader.manifest.signed",
    "may_hold_expiry": "uploader.manifest.signed",
    "url_expiry": "uploader.manifest.signed",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
