"""What a run reports: live counters for the progress callback, the final summary, fatal-error messages.

Apart from the submit loop (uploader.send.submit) because these are plain records and one pure function,
with no part in the loop's logic. uploader.send.submit re-exports `Progress` and `RunSummary`; other packages
import them from `uploader.send`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from uploader.api import ApiResult, Decision

__all__ = [
    "ActivityMeter",
    "Progress",
    "RunSummary",
    "activity_counts",
    "fatal_message",
    "progress_span",
    "redirect_message",
]


def progress_span(counts: Mapping[str, int]) -> tuple[int, int]:
    """(total, done_before) of a run's Progress from the ledger's counts per state. Blocked rows are in
    neither: the run never sends them, so its bar must not wait for them. Uncertain rows are still to do: the
    run looks them up, and sends again those a listing does not find. Pure."""
    done = counts["succeeded"] + counts["failed"] + counts["conflict"]
    return sum(counts.values()) - counts.get("blocked", 0), done


@dataclass
class Progress:
    """Live counters of this run, handed to the progress callback."""

    total: int = 0
    done_before: int = 0
    succeeded: int = 0
    failed: int = 0
    retrying: int = 0
    recovered: int = 0
    uncertain: int = 0  #: rows this run left uncertain (sent, no answer; no listing has settled them yet)
    #: Rows an earlier run left uncertain that this run settled (now in succeeded, failed or conflict; or
    #: pending again, to be sent).
    settled_earlier: int = 0
    conflict: int = 0  #: found by a listing, but the job may hold other data than the manifest says
    requeued: int = 0  #: uncertain rows a complete listing did not find: pending again, to be sent again
    protocol_errors: int = 0  #: success answers that did not fit their request (policy.Verdict.PROTOCOL)
    ignored: int = 0
    lost_leases: int = 0  #: claims not sent: another run took their rows over while this one stalled
    throttled: int = 0
    unreachable: int = 0  #: attempts that could not connect at all (not counted against the row)
    requests: int = 0
    started: float = field(default_factory=time.monotonic)
    retry_after_capped: int = 0  #: answers whose Retry-After asked for more than --max-retry-after
    retry_after_longest: float = 0.0  #: the longest such Retry-After (seconds)
    #: One-line notices for the user (a Retry-After cut to the cap, waiting for the ledger's lock, the API
    #: unreachable), in order; the progress display prints each once, as it appears.
    notices: list[str] = field(default_factory=list)
    #: The rows this run failed, by error code: [rows, the API's message, an example reference_id].
    errors: dict[str, list[Any]] = field(default_factory=dict)
    #: Rows of this run waiting to be sent again after a retryable error (not a 429): their count now.
    retrying_now: int = 0
    #: What holds the run up at this moment, in a few words ("API unreachable for 12 s", "throttled (429):
    #: paused 3 s", "1 row waits 12 s to retry (FS_0000)"), or None.
    trouble: str | None = None

    @property
    def done(self) -> int:
        return self.done_before + self.succeeded + self.failed + self.uncertain + self.conflict

    def failed_row(self, code: str | None, message: str | None, reference_id: str) -> None:
        """Count a row this run failed under its code (the first row's message and reference_id kept)."""
        entry = self.errors.setdefault(code or "unknown", [0, message, reference_id])
        entry[0] += 1


def activity_counts(p: Progress) -> dict[str, int]:
    """This run's counters so far under the ledger's activity names (uploader.ledger.ACTIVITY_COUNTERS)."""
    return {
        "requests": p.requests,
        "created": p.succeeded - p.recovered,
        "recovered": p.recovered,
        "failed": p.failed,
        "throttled": p.throttled,
        "retried": p.retrying,
    }


@dataclass
class ActivityMeter:
    """Splits a run's running totals by minute for the ledger's activity table: at each tick, what the
    totals gained since the previous tick counts in the tick's minute, added to what that minute already had
    (a clock stepped back may return to a minute already written), so the minutes add up to the totals."""

    last: dict[str, int] = field(default_factory=dict)  #: the totals at the previous tick
    minutes: dict[dt.datetime, dict[str, int]] = field(default_factory=dict)  #: each minute's counts so far

    def tick(self, now: dt.datetime, totals: dict[str, int]) -> tuple[dt.datetime, dict[str, int]] | None:
        """The minute of `now` (naive UTC) and all its counts, to write; None when nothing changed."""
        gained = {k: v - self.last.get(k, 0) for k, v in totals.items()}
        self.last = dict(totals)
        if not any(gained.values()):
            return None
        minute = now.replace(second=0, microsecond=0)
        counts = self.minutes.setdefault(minute, dict.fromkeys(totals, 0))
        for k, v in gained.items():
            counts[k] = counts.get(k, 0) + v
        return minute, dict(counts)


@dataclass(frozen=True)
class RunSummary:
    """What a finished (or stopped) run did, and what the ledger holds now."""

    #: Rows per state in the whole ledger; empty when a stopped run could not read them (a PostgreSQL
    #: session held a lock on the ledger's jobs table).
    counts: dict[str, int]
    progress: Progress
    error_codes: dict[str, int]
    seconds: float
    interrupted: bool
    fatal: str | None
    #: The ledger's error codes with a message and an example (uploader.ledger's `error_details`).
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def requests_per_second(self) -> float:
        return self.progress.requests / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        p = self.progress
        return {
            "counts": self.counts,
            "this_run": {
                "requests": p.requests,
                "succeeded": p.succeeded,
                "recovered": p.recovered,
                "failed": p.failed,
                "uncertain": p.uncertain,
                "settled_from_earlier_runs": p.settled_earlier,
                "conflict": p.conflict,
                "protocol_errors": p.protocol_errors,
                "retries": p.retrying,
                "throttled": p.throttled,
                "unreachable": p.unreachable,
                "ignored_stale_results": p.ignored,
                "lost_leases_not_sent": p.lost_leases,
                "retry_after_capped": p.retry_after_capped,
                "retry_after_longest_seconds": round(p.retry_after_longest, 1),
            },
            "this_run_errors": [
                {"code": code, "rows": n, "message": message, "reference_id": ref}
                for code, (n, message, ref) in sorted(p.errors.items(), key=lambda kv: -kv[1][0])
            ],
            "top_error_codes": self.error_codes,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "requests_per_second": round(self.requests_per_second, 1),
            "interrupted": self.interrupted,
            "fatal": self.fatal,
            "notices": list(p.notices),
        }


def fatal_message(decision: Decision, result: ApiResult) -> str:
    """The message of a run-fatal API answer: what was refused, and what to fix before running again."""
    status = result.http_status
    if status is not None and 300 <= status < 400:
        return redirect_message(status, result.location)
    code = decision.code or f"HTTP {result.http_status}"
    hints = {
        "auth-failure": "the API key was refused: check --api-key / PLAYMENT_API_KEY",
        "unauthorized": "the API key may not use this project",
        "core.webutil.auther": "the API key may not use this project",
        "http_403": "the API refused the request (HTTP 403): the API key may not use this project",
        "resource_error": "the project was not found: check --project-id (or the manifest's project_id column)",
        "PR_0001": "the project was not found: check --project-id (or the manifest's project_id column)",
    }
    hint = hints.get(decision.code or "", "the API refused the run")
    if result.http_status == 401:
        hint = hints["auth-failure"]
    return f"{hint} ({code}). Nothing was marked failed; fix it and run the same command again."


#: Longest Location quoted in a redirect message.
_LOCATION_CHARS = 120


def redirect_message(status: int, location: str | None) -> str:
    """A 3xx answer to a request: the API answered a redirect, which uploader does not follow for a POST (a
    client that does may drop the body or turn it into a GET), so the base URL must be the API's own.
    The Location is quoted without its query or fragment (they may carry tokens) and shortened."""
    where = ""
    if location:
        text = location.strip().split("#", 1)[0].split("?", 1)[0]
        scheme, sep, rest = text.partition("://")
        if sep and "@" in rest.split("/", 1)[0]:  # credentials in the URL: dropped
            text = f"{scheme}://{rest.split('@', 1)[1]}"
        text = "".join(ch if ch.isprintable() else "?" for ch in text)
        if len(text) > _LOCATION_CHARS:
            text = text[: _LOCATION_CHARS - 1] + "…"
        where = f" to {text}"
    return (
        f"the API answered a redirect (HTTP {status}{where}); uploader does not follow redirects for POST "
        "requests. Check --base-url / PLAYMENT_BASE_URL (e.g. http vs https, a missing or extra path): it must "
        "be the API's own address. Nothing was marked failed; fix it and run the same command again."
    )
