"""Manifest → ledger, all or nothing: the merge, the empty-ledger fast path, the forked slice readers.

`prepare_load` forks the slice readers before SQLAlchemy is imported: importing this package imports
none of its modules (each name below is imported on first use).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uploader.load.merge import LoadReport, ManifestLike, load_manifest
    from uploader.load.prepare import PreparedLoad, load, prepare_load
    from uploader.load.slices import Production

#: Public name → its module, imported on first use (PEP 562): importing the package imports none of them.
_EXPORTS = {
    "PreparedLoad": "uploader.load.prepare",
    "load": "uploader.load.prepare",
    "prepare_load": "uploader.load.prepare",
    "LoadReport": "uploader.load.merge",
    "ManifestLike": "uploader.load.merge",
    "load_manifest": "uploader.load.merge",
    "Production": "uploader.load.slices",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
