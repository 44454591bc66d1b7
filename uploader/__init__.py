"""uploader: send a manifest of labeling jobs to GT Studio (Playment), crash-safe and resumable.

The package is a library first; `uploader.cli` is a thin click layer over it.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
