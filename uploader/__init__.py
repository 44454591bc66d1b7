"""uploader: send a manifest of labeling jobs to GT Studio (Playment), crash-safe and resumable.

The package is a library first; `uploader.cli` is a thin click layer over it. Its packages, each importing
only those below it (README "Architecture"; checked by import-linter): cli › send › load ›
manifest | ledger | api › errors. To load a manifest: `uploader.load.load(ledger, path, options)`
(`uploader.load` is the loading package, so it cannot also be a function here).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: The library API, imported on first use so that `uploader --version` and `load` start fast.
_EXPORTS = {
    "Ledger": "uploader.ledger",
    "ManifestOptions": "uploader.manifest",
    "RunOptions": "uploader.send",
    "RunSummary": "uploader.send",
    "StopFlag": "uploader.send",
    "reconcile": "uploader.send",
    "run_upload": "uploader.send",
    "Sandbox": "uploader.sandbox",
    "SandboxConfig": "uploader.sandbox",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'uploader' has no attribute {name!r}")
