"""Manifest → ledger, all or nothing: the merge, the empty-ledger fast path, the forked slice readers.

`prepare_load` forks the slice readers before SQLAlchemy is imported: importing this package imports
none of its modules (each name below is imported on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from uploader._lazy import lazy_exports

if TYPE_CHECKING:
    from uploader.load.digest import prefetch_sha256 as prefetch_sha256
    from uploader.load.merge import load_manifest as load_manifest
    from uploader.load.plan import LoadPlan as LoadPlan
    from uploader.load.plan import plan_manifest as plan_manifest
    from uploader.load.prepare import PreparedLoad as PreparedLoad
    from uploader.load.prepare import load as load
    from uploader.load.prepare import prepare_load as prepare_load
    from uploader.load.report import LoadReport as LoadReport
    from uploader.load.slices import Production as Production
    from uploader.load.source import ManifestLike as ManifestLike

#: Public name → its module, imported on first use (PEP 562): importing the package imports none of them.
_EXPORTS = {
    "PreparedLoad": "uploader.load.prepare",
    "load": "uploader.load.prepare",
    "prepare_load": "uploader.load.prepare",
    "LoadReport": "uploader.load.report",
    "ManifestLike": "uploader.load.source",
    "load_manifest": "uploader.load.merge",
    "Production": "uploader.load.slices",
    "LoadPlan": "uploader.load.plan",
    "plan_manifest": "uploader.load.plan",
    "prefetch_sha256": "uploader.load.digest",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
