"""Read and validate manifest files (CSV/TSV, JSONL, Parquet; columns, values, video frames): pure.

Imports nothing of uploader but `uploader.errors`, and no SQLAlchemy: the load's slice readers use it in
processes forked before SQLAlchemy is imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uploader.manifest.formats import FORMATS, Span
    from uploader.manifest.reader import Manifest, ManifestOptions, StagedJob

#: Public name → its module, imported on first use (PEP 562): importing the package imports none of them.
_EXPORTS = {
    "Manifest": "uploader.manifest.reader",
    "ManifestOptions": "uploader.manifest.reader",
    "StagedJob": "uploader.manifest.reader",
    "FORMATS": "uploader.manifest.formats",
    "Span": "uploader.manifest.formats",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
