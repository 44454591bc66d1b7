"""`-` as the manifest of `load` and `run`: standard input, spooled to a temporary file first (the parallel
reader cuts a file into slices and seeks in it; a pipe cannot). Its format is --format, else sniffed from
its first bytes (Parquet's magic, a JSON object, a header with tabs and no commas, else CSV). The ledger and
every message name it "<stdin>", not the temporary file, which is removed when the command ends.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from uploader.errors import ManifestError

__all__ = ["STDIN_LABEL", "sniff_format", "spooled_manifest"]

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
    header = text.split(b"\n", 1)[0]
    if b"\t" in header and b"," not in header:
        return "tsv"
    return "csv"


@contextmanager
def spooled_manifest(manifest: Path | None, fmt: str | None) -> Iterator[tuple[Path | None, str | None]]:
    """(the path to read, its label): `manifest` itself and None, or for `-` standard input copied to a
    temporary file named by its format (so that the format is found as for any file), and STDIN_LABEL.
    A manifest error about the temporary file is given back about "<stdin>"."""
    if manifest is None or str(manifest) != "-":
        yield manifest, None
        return
    stream = sys.stdin.buffer
    folder = Path(tempfile.mkdtemp(prefix="uploader-stdin-"))
    try:
        spool = folder / "stdin.part"
        with open(spool, "wb") as out:
            shutil.copyfileobj(stream, out, 1024 * 1024)
        with open(spool, "rb") as f:
            head = f.read(_SNIFF_BYTES)
        named = folder / f"stdin.{fmt or sniff_format(head)}"
        spool.rename(named)
        try:
            yield named, STDIN_LABEL
        except ManifestError as exc:
            raise _relabeled(exc, str(named)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _relabeled(exc: ManifestError, path: str) -> ManifestError:
    """`exc` with the temporary file's path replaced by STDIN_LABEL in its problems."""
    problems = [dataclasses.replace(p, file=STDIN_LABEL) if p.file == path else p for p in exc.problems]
    return ManifestError(problems, exc.total)
