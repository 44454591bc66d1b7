"""`ManifestLike`: what a load reads a manifest through (uploader.manifest.Manifest is one).

The loader, the empty-ledger fast path and the forked slice readers all take this one Protocol; its
members are read-only. Importing this module imports no SQLAlchemy (the slice readers fork before it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from uploader.errors import Problem
    from uploader.manifest import FileIdentity, JobColumns, ManifestOptions, Span, StagedJob

__all__ = ["ManifestLike"]


class ManifestLike(Protocol):
    """A manifest as a load reads it: where it is, how it is read, and its good rows."""

    @property
    def path(self) -> Path: ...

    @property
    def identity(self) -> FileIdentity:
        """The file as it was when its reading began (uploader.manifest.file_identity)."""
        ...

    @property
    def label(self) -> str | None:
        """What the ledger records and reports name it by when not its path (e.g. "<stdin>")."""
        ...

    @property
    def format(self) -> str:
        """csv, tsv, jsonl or parquet."""
        ...

    @property
    def unit(self) -> str:
        """What a problem's position counts: "line" (text formats) or "row" (Parquet)."""
        ...

    @property
    def columns(self) -> tuple[str, ...]:
        """The header, as in the file."""
        ...

    @property
    def options(self) -> ManifestOptions:
        """The load's options; their project_id, work_flow_id and batch_id are its rows' defaults."""
        ...

    @property
    def problems(self) -> Sequence[Problem]:
        """The per-row problems of the last reading (the first ones; `problem_count` counts them all)."""
        ...

    @property
    def problem_count(self) -> int: ...

    @property
    def splittable(self) -> bool:
        """Whether uploader.load.slices may read slices of it in forked processes."""
        ...

    def chunk_tuples(self, size: int = ..., span: Span | None = ...) -> Iterator[Sequence[StagedJob]]:
        """Its good rows, in chunks of at most `size` (with `span`, of that slice only); each reading
        starts `problems` and `problem_count` afresh."""
        ...

    def chunk_columns(self, size: int = ..., span: Span | None = ...) -> Iterator[JobColumns]:
        """As chunk_tuples(), each chunk column by column (what a slice reader writes)."""
        ...
