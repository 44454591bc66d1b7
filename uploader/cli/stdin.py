"""`-` as the manifest of `load` and `run`: standard input, spooled to a temporary file first (the parallel
reader cuts a file into slices and seeks in it; a pipe cannot); so is a pipe or FIFO given by its path. Its
format is --format, else its extension, else sniffed from its first bytes (Parquet's magic, a JSON object, a
header with tabs and no commas, else CSV). The ledger and every message name it "<stdin>" (a pipe: its
path), not the temporary file, which is removed when the command ends.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from uploader._leftovers import owned_prefix, sweep
from uploader.errors import ManifestError, UploaderError

__all__ = ["STDIN_LABEL", "read_once", "sniff_format", "spooled_manifest"]

#: How the ledger and messages name a manifest read from standard input.
STDIN_LABEL = "<stdin>"
#: Bytes read to sniff the format.
_SNIFF_BYTES = 64 * 1024


def sniff_format(head: bytes) -> str:
    """The manifest format of a file starting with `head`: parquet, jsonl, tsv or csv."""
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"{"):
        return "jsonl"
    header = text.split(b"\n", 1)[0].split(b"\r", 1)[0]  # a file's lines may end with CR alone
    if b"\t" in header and b"," not in header:
        return "tsv"
    return "csv"


#: Errors of writing the spool that are the temporary folder's: no room, no right.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES)


#: The spool folder of standard input (uploader._leftovers: a killed command's is removed by the next).
_SPOOL_PREFIX = "uploader-stdin-"


@contextmanager
def spooled_manifest(manifest: Path | None, fmt: str | None) -> Iterator[tuple[Path | None, str | None]]:
    """(the path to read, its label): `manifest` itself and None, or for `-` standard input copied to a
    temporary file named by its format (so that the format is found as for any file), and STDIN_LABEL.
    A manifest error about the temporary file is given back about "<stdin>"."""
    if manifest is None or (str(manifest) != "-" and not read_once(manifest)):
        yield manifest, None
        return
    stdin = str(manifest) == "-"
    label = STDIN_LABEL if stdin else str(manifest)
    if fmt is None and not stdin:
        from uploader.manifest import EXTENSIONS

        fmt = EXTENSIONS.get(manifest.suffix.lower())
    sweep(Path(tempfile.gettempdir()), _SPOOL_PREFIX)  # what a killed command left (no clean-up ran)
    try:
        folder = Path(tempfile.mkdtemp(prefix=owned_prefix(_SPOOL_PREFIX)))
    except OSError as exc:
        raise UploaderError(
            f"cannot copy {label} to the temporary folder {tempfile.gettempdir()}: {exc.strerror}"
        ) from None
    try:
        spool = folder / "stdin.part"
        try:
            with open(spool, "wb") as out:
                if stdin:
                    shutil.copyfileobj(sys.stdin.buffer, out, 1024 * 1024)
                else:
                    with open(manifest, "rb") as pipe:
                        shutil.copyfileobj(pipe, out, 1024 * 1024)
        except OSError as exc:
            if exc.errno not in _NO_ROOM and exc.filename != str(spool):
                raise  # reading the pipe failed: not the folder's fault
            raise UploaderError(
                f"cannot copy {label} to the temporary folder {folder.parent}: {exc.strerror}; free space there, "
                "or set TMPDIR to a roomier folder"
            ) from None
        with open(spool, "rb") as f:
            head = f.read(_SNIFF_BYTES)
        named = folder / f"stdin.{fmt or sniff_format(head)}"
        spool.rename(named)
        try:
            yield named, label
        except ManifestError as exc:
            raise _relabeled(exc, str(named), label) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_once(path: Path) -> bool:
    """Whether `path` can be read only once: a pipe (`<(…)`, a named FIFO) or a character device, which the
    loader's several passes would find empty (or wait on for ever), so it is spooled as stdin is."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # the loader says what is wrong with it
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _relabeled(exc: ManifestError, path: str, label: str) -> ManifestError:
    """`exc` with the temporary file's path replaced by `label` in its problems."""
    problems = [dataclasses.replace(p, file=label) if p.file == path else p for p in exc.problems]
    return ManifestError(problems, exc.total)
