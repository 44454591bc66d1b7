"""The library entry points of loading: load a manifest into a ledger, or prepare it first.

`prepare_load` forks the slice readers (uploader.load.slices) before SQLAlchemy is imported: so this module
imports nothing at its top that imports SQLAlchemy (tests/test_fork_before_sqlalchemy.py checks it).

Usable from Python:

    from uploader.ledger import Ledger
    from uploader.load import load
    from uploader.manifest import ManifestOptions
    report = load(Ledger.open("uploader.db"), "images.csv", ManifestOptions(project_id="p", work_flow_id="w"))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from uploader.load.slices import Production
from uploader.manifest import Manifest, ManifestOptions

if TYPE_CHECKING:
    from uploader.ledger import Ledger
    from uploader.load.report import LoadReport

__all__ = ["PreparedLoad", "load", "prepare_load"]


def load(ledger: Ledger, path: str | Path, options: ManifestOptions, label: str | None = None) -> LoadReport:
    """Validate a manifest and merge it into the ledger, all or nothing. `label`: the name the ledger and the
    report give the manifest instead of its path (Manifest.label)."""
    from uploader.load.merge import load_manifest  # SQLAlchemy: imported once a ledger is open

    return load_manifest(ledger, Manifest(path, options, label), options.fingerprint())


class PreparedLoad:
    """A manifest whose header is checked, and, for a new ledger, whose rows are already being staged by
    slice processes while the ledger is created. Close it (or use `with`) if it is never loaded."""

    def __init__(self, manifest: Manifest, production: Production | None) -> None:
        self.manifest, self.production = manifest, production
        self._bulk = True  #: whether `load` may take the empty-ledger fast path (not tried yet)

    def load(self, ledger: Ledger) -> LoadReport:
        from uploader.load.merge import load_manifest

        production, self.production = self.production, None
        return load_manifest(ledger, self.manifest, self.manifest.options.fingerprint(), production, self._bulk)

    def load_new(self, ledger: Path) -> LoadReport | None:
        """Load into `ledger`, a SQLite file that does not exist yet, on a bare connection and without importing
        SQLAlchemy (uploader.load.bulk.load_into_new_file), when slice processes stage the manifest (a big one).
        None: nothing loaded; `load` then takes the usual way (the file may hold an empty ledger by then)."""
        import time

        from uploader.load.bulk import NotClean, load_into_new_file
        from uploader.load.report import LoadReport

        if self.production is None:
            return None
        started = time.perf_counter()
        try:
            loaded = load_into_new_file(ledger, self.manifest, self.manifest.options.fingerprint(), self.production)
        except NotClean:  # the usual path need not try the same again
            self._bulk = False
            return None
        if loaded is None:
            return None
        self.close()
        new, signed = loaded
        shown = self.manifest.label or str(self.manifest.path)
        return LoadReport(shown, new, new=new, seconds=time.perf_counter() - started, signed_possible=signed)

    def close(self) -> None:
        if self.production is not None:
            self.production.close()
            self.production = None

    def __enter__(self) -> PreparedLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prepare_load(
    path: str | Path, options: ManifestOptions, *, new_ledger: bool, label: str | None = None
) -> PreparedLoad:
    """Check the manifest's header; if the ledger is a SQLite file that does not exist yet (so it will be
    empty) and the manifest is big, start the slice processes now: they read the file while SQLAlchemy
    loads and the ledger is created and migrated, which takes half a second."""
    manifest = Manifest(path, options, label)
    production = Production.start(manifest) if new_ledger else None
    return PreparedLoad(manifest, production)
