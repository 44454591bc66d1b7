"""A manifest file's SHA-256: how a rerun recognises a manifest it has loaded already.

A command about to load a manifest calls `prefetch_sha256` first, so the file is hashed in a thread (file reads
and hashlib release the GIL) while the command imports its libraries and opens the ledger. `file_sha256`
takes that digest only when the file's identity (device, inode, size, modification time) was the same
before and after the thread read it and still is; otherwise it hashes the file again. No SQLAlchemy imported
here: the command calls `prefetch_sha256` before SQLAlchemy is imported.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from uploader.manifest import FileIdentity, check_unchanged, file_identity

if TYPE_CHECKING:
    from uploader.load.source import ManifestLike

__all__ = ["Digest", "file_sha256", "manifest_digest", "prefetch_sha256"]

#: A manifest file as a load records it: its path, size and SHA-256 (hex).
Digest = tuple[Path, int, str]


class _Prefetch:
    """One file being hashed in a daemon thread (a command that fails first just exits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digest: str | None = None
        self.identity: FileIdentity | None = None
        self.thread = threading.Thread(target=self._hash, name="manifest-sha256", daemon=True)
        self.thread.start()

    def _hash(self) -> None:
        try:
            before = file_identity(self.path)
            digest = _sha256(self.path)
            if file_identity(self.path) == before:
                self.digest, self.identity = digest, before
        except OSError:
            pass  # file_sha256 hashes again and reports the error where it belongs

    def result(self, identity: FileIdentity) -> str | None:
        """The digest, if the thread hashed the file that now has `identity`."""
        self.thread.join()
        return self.digest if self.identity == identity else None


_slot: _Prefetch | None = None


def prefetch_sha256(path: str | Path) -> None:
    """Start hashing `path` in the background for the `file_sha256` that follows."""
    global _slot
    _slot = _Prefetch(Path(path))


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of the file's bytes: the prefetched digest when it is of this very file unchanged."""
    global _slot
    taken, _slot = _slot, None
    if taken is not None:  # joined in any case: nothing is left hashing when the load forks its readers
        digest = taken.result(file_identity(Path(path)))
        if digest is not None:
            return digest
    return _sha256(Path(path))


def manifest_digest(manifest: ManifestLike) -> Digest:
    """The manifest's path, size and SHA-256, of the file as its reading began (ManifestError if it was
    written to since: uploader.manifest.check_unchanged)."""
    path = Path(manifest.path)
    sha = file_sha256(path)
    check_unchanged(path, manifest.identity)
    return path, manifest.identity[2], sha


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
