"""What a load did (`LoadReport`), apart from the merge that makes it: the load into a new ledger reports it
without importing SQLAlchemy."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LoadReport"]


@dataclass(frozen=True)
class LoadReport:
    """What a load did: the counts `uploader load` prints."""

    manifest: str
    rows: int
    new: int = 0
    unchanged: int = 0
    updated: int = 0
    conflicts: int = 0
    updated_examples: tuple[str, ...] = ()
    conflict_examples: tuple[str, ...] = ()
    already_loaded: bool = False
    seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)
    #: Whether a pending row of the ledger may hold a signed URL after the load. False only when the load
    #: knows that none does (its rows went into an empty ledger and no payload may hold one): then the
    #: caller need not scan the ledger for them. Not part of the printed report.
    signed_possible: bool = True
