"""Whether a run meets a systematic error: its first rows all refused with the same permanent code.

A wrong --batch-id, --work-flow-id or a manifest column the API refuses fails every row the same way; at 100k
rows that is 100k failing requests and a summary that only says `GE_0001 × 100000`. So the run looks at the
first answer of each of its first rows (SYSTEMATIC_ROWS, or every row it has to send if fewer): when all are
the same permanent code it stops, quoting the API's message, and leaves the other rows pending. One answer
of another kind (a success, another code, a retryable error) and the run never stops this way. Throttles,
outages and fatal answers say nothing about the rows: they are not counted. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from uploader.api import Decision, Verdict

__all__ = ["SYSTEMATIC_ROWS", "FirstAnswers", "systematic_message"]

#: How many rows' first answers decide that an error is systematic.
SYSTEMATIC_ROWS = 20


@dataclass
class FirstAnswers:
    """The first answer of each of a run's first `needed` rows; `add` says when they prove a systematic error."""

    needed: int
    seen: set[int] = field(default_factory=set)
    code: str | None = None
    message: str | None = None
    example: str | None = None
    settled: bool = False  #: decided either way: nothing more to watch

    def add(self, row: int, reference_id: str, decision: Decision, answered: bool) -> bool:
        """Count one answer about row `row`; True once (when) the first rows all met the same permanent code.
        `answered`: the API itself answered (an HTTP status), not a transport failure."""
        if self.settled or row in self.seen or self.needed < 2:
            return False
        if not answered or decision.verdict in (Verdict.THROTTLED, Verdict.FATAL):
            return False
        self.seen.add(row)
        if decision.verdict is not Verdict.PERMANENT or (self.code is not None and decision.code != self.code):
            self.settled = True
            return False
        if self.code is None:
            self.code, self.message, self.example = decision.code, decision.message, reference_id
        if len(self.seen) >= self.needed:
            self.settled = True
            return True
        return False


def systematic_message(answers: FirstAnswers) -> str:
    """What the user is told when the run stops on a systematic error."""
    code = answers.code or "an error"
    said = f": {answers.message}" if answers.message else ""
    return (
        f"the first {len(answers.seen)} rows sent were all refused with {code}{said} (e.g. reference_id "
        f"{answers.example!r}). This looks like a mistake that every row shares (e.g. --batch-id, --work-flow-id, "
        "--project-id or a manifest column), so the run stopped: the rows not sent stay pending. Fix the cause and "
        "run the command again: a refused row whose manifest values changed is sent again; if none changed (the "
        f"API was wrong), `uploader retry --error-code {code}` puts the refused rows back first."
    )
