"""The manifest's SHA-256, hashed ahead in a thread (uploader.load.digest): the prefetched digest is used only
for the very file unchanged; any change in between means the file is hashed again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from uploader.load import digest
from uploader.load.digest import file_sha256, prefetch_sha256


def _prefetched(path: Path) -> None:
    """Prefetch `path` and wait for the thread to finish, so that a change after it is a change after."""
    prefetch_sha256(path)
    assert digest._slot is not None
    digest._slot.thread.join()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_prefetched_digest_is_the_files(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b"reference_id,image_url\n" + b"r,https://x.test/a.jpg\n" * 100_000)
    prefetch_sha256(path)
    assert file_sha256(path) == _sha(path)
    assert file_sha256(path) == _sha(path)  # nothing prefetched: hashed directly


def test_a_file_changed_after_the_prefetch_is_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b"reference_id,image_url\nr,https://x.test/a.jpg\n")
    _prefetched(path)
    with open(path, "ab") as f:
        f.write(b"s,https://x.test/b.jpg\n")
    assert file_sha256(path) == _sha(path)


def test_a_file_replaced_by_another_is_hashed_again(tmp_path: Path) -> None:
    """Same size, same modification time, another inode (an editor's save-by-rename)."""
    path, other = tmp_path / "m.csv", tmp_path / "n.csv"
    path.write_bytes(b"reference_id,image_url\nr,https://x.test/a.jpg\n")
    other.write_bytes(b"reference_id,image_url\nr,https://x.test/b.jpg\n")
    st = os.stat(path)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    _prefetched(path)
    os.replace(other, path)
    assert file_sha256(path) == _sha(path)


def test_a_prefetch_of_another_file_is_not_taken(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_bytes(b"x\n1\n")
    b.write_bytes(b"x\n2\n")
    _prefetched(a)
    assert file_sha256(b) == _sha(b)


def test_a_missing_file_raises_as_without_prefetch(tmp_path: Path) -> None:
    path = tmp_path / "gone.csv"
    prefetch_sha256(path)
    with pytest.raises(FileNotFoundError):
        file_sha256(path)
