"""Counters the sandbox keeps about its own traffic, so tests can prove what a client really did.

reference_ids are counted per project, as the API's uniqueness rule is. The counters cover the current
run of the server (they are not journaled); figures derived from the jobs themselves (`jobs_total`,
`jobs_created_per_reference_id_max`) include jobs replayed from the state file. Nothing here ever sees
the API key.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from uploader.sandbox.state import SandboxState

__all__ = ["FAULT_KINDS", "Stats"]

#: Every fault the sandbox can inject, as named in the stats.
FAULT_KINDS = ("error", "html", "drop", "rate_limited", "slow")


class Stats:
    """Traffic counters; mutated only on the server's event loop."""

    def __init__(self) -> None:
        self.by_status: Counter[int] = Counter()
        self.requests_total = 0
        self.jobs_created = 0
        self.batches_created = 0
        self.fs_0001_refusals = 0
        self.faults: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self.per_reference: Counter[tuple[str, str]] = Counter()  # (project_id, reference_id) -> job POSTs
        self.file_requests: Counter[str] = Counter()  # method -> requests for /_sandbox/files/ attachments

    def response(self, status: int | None) -> None:
        """Count one API request; `status` None means no reply was sent (a dropped connection)."""
        self.requests_total += 1
        if status is not None:
            self.by_status[status] += 1

    def snapshot(self, state: SandboxState) -> dict[str, Any]:
        """The /_sandbox/stats document. Dropped requests count in requests_total and faults.drop only."""
        per_ref_jobs = Counter((job["project_id"], job["reference_id"]) for job in state.jobs.values())
        resent = {ref for (_, ref), n in self.per_reference.items() if n > 1}
        return {
            "requests_by_status": {str(s): n for s, n in sorted(self.by_status.items())},
            "requests_total": self.requests_total,
            "jobs_created": self.jobs_created,
            "jobs_total": len(state.jobs),
            "batches_created": self.batches_created,
            "fs_0001_refusals": self.fs_0001_refusals,
            "faults": dict(self.faults),
            "max_requests_per_reference_id": max(self.per_reference.values(), default=0),
            "reference_ids_sent_more_than_once": sorted(resent),
            "jobs_created_per_reference_id_max": max(per_ref_jobs.values(), default=0),
            "file_requests": dict(sorted(self.file_requests.items())),
        }
