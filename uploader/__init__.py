"""uploader: send a manifest of labeling jobs to GT Studio (Playment), crash-safe and resumable.

The package is a library first; `uploader.cli` is a thin click layer over it. Its packages, each importing
only those below it (README "Architecture"; checked by import-linter): cli | facade › send › load ›
manifest | ledger | api | storage › errors. To load a manifest: `uploader.load.load(ledger, path, options)`
(`uploader.load` is the loading package, so it cannot also be a function here).

One word per concept (CONTRIBUTING.md; older code still has other words for some of them):

- job / row: one line of the ledger (`jobs` table), one reference_id of one project; the API makes a job of it.
- run: one `uploader run` (`run_upload`): claims rows, sends them, records the answers; runs may share a ledger.
- worker: a sending process registered in the ledger (`workers` table: its heartbeat, its leases); each run
  is one, and `uploader status` lists the live ones.
- activity: what a run did in one minute (`activity` table: requests, jobs created, 429s…), written by the
  run from its counters about once per heartbeat; `uploader report` charts it.
- sender: one of a run's concurrent tasks that send requests (`--concurrency` of them).
- slice: a piece of a manifest (lines, or Parquet rows) that a slice process reads and checks during a load.
- slice process: a process a load forks to read slices (`uploader.load.slices`); not a worker.
- resolve: find the job_id of an `uncertain` row by listing its batch (in a run, or by `uploader reconcile`).
- payload: the exact JSON text sent to create a job, kept in the ledger with its hash (`body_hash`).
- storage URL: `s3://`, `gs://` or an Azure blob URL without a SAS, kept in the payload; with `--sign` the run
  sends a signed URL (an HTTPS link valid for `--url-ttl`) made in its place just before each send.
- state / platform status: a row's state is the ledger's (`Status`: pending … succeeded); its platform status
  is the job's status word on GT Studio as `uploader sync` last read it (kept verbatim: `completed`, …).
- result: a final job's annotation, downloaded by `uploader sync --results DIR` (or stored when given inline).
- adopt: record a job created elsewhere (`uploader adopt`); the row's origin is `adopted`.
"""

from __future__ import annotations

from uploader._lazy import lazy_exports

#: The version, defined here only: pyproject.toml reads it ([tool.setuptools.dynamic]).
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
    "run_upload_async": "uploader.send",
    "upload": "uploader.facade",
    "upload_async": "uploader.facade",
    "Sandbox": "uploader.sandbox",
    "SandboxConfig": "uploader.sandbox",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
