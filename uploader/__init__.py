"""uploader: send a manifest of labeling jobs to GT Studio (Playment), crash-safe and resumable.

The package is a library first; `uploader.cli` is a thin click layer over it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: The library API, imported on first use so that `uploader --version` and `load` start fast.
_EXPORTS = {
    "Ledger": "uploader.ledger.ledger",
    "ManifestOptions": "uploader.manifest.reader",
    "RunOptions": "uploader.send.submit",
    "RunSummary": "uploader.send.submit",
    "StopFlag": "uploader.send.submit",
    "load": "uploader.send.runner",
    "reconcile": "uploader.send.runner",
    "run_upload": "uploader.send.runner",
    "Sandbox": "uploader.sandbox",
    "SandboxConfig": "uploader.sandbox",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'uploader' has no attribute {name!r}")
