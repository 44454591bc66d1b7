"""Pure decisions about API answers: what a result means for the row and the run, and how long to wait.

Nothing here does I/O or imports a third-party library, so every rule is a table row in
tests/test_policy.py. `client.py` turns every HTTP exchange (or its failure) into an `ApiResult`; the
run asks `classify` what it means and `next_delay` how long to wait before trying again.
"""

from __future__ import annotations

import math
import random
import re
from array import array
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

__all__ = [
    "EXISTS_CODES",
    "FATAL_CODES",
    "JOB_ID_MAX_CHARS",
    "JOB_NOT_FOUND_CODES",
    "MAX_RETRY_AFTER",
    "NOT_FOUND_CODES",
    "OUTAGE_CODES",
    "PERMANENT_CODES",
    "PROTOCOL_CODES",
    "PROTOCOL_ERROR_LIMIT",
    "RETRYABLE_CODES",
    "STALE_PAGES_LIMIT",
    "TRANSPORT_CODES",
    "ApiResult",
    "Decision",
    "Found",
    "PageTrail",
    "Verdict",
    "backoff_delay",
    "classify",
    "job_id_text",
    "job_is_gone",
    "job_read_problem",
    "listed_jobs",
    "listing_problem",
    "may_have_created",
    "named_twice",
    "next_delay",
    "result_verdict",
    "retry_after_by_date",
    "retry_after_capped",
    "retry_after_seconds",
    "status_text",
    "too_many_protocol_errors",
]


class Verdict(str, Enum):
    """What one API answer means for the row that was sent, and for the run."""

    SUCCEEDED = "succeeded"  #: job created; job_id known
    EXISTS = "exists"  #: FS_0001: the reference_id is already used: look up the job_id
    PERMANENT = "permanent"  #: the row is wrong: fail it, no retry
    RETRYABLE = "retryable"  #: transient: retry after backoff, counts an attempt
    THROTTLED = "throttled"  #: 429: pause the whole run (Retry-After), does NOT use up an attempt
    FATAL = "fatal"  #: key/project problem: stop the whole run; no row failed; attempt not counted
    #: A success answer that breaks the API's contract (job_id missing or not a string/integer, or another
    #: reference_id): the job may exist, but the answer cannot say which: row uncertain, a listing decides.
    PROTOCOL = "protocol"


#: The reference_id is already used in the project: the job exists, its job_id must be looked up.
EXISTS_CODES = frozenset({"FS_0001"})
#: The row itself is wrong; sending it again cannot help.
PERMANENT_CODES = frozenset(
    {"FS_0002", "FS_0003", "FS_0004", "FS_0005", "FS_0006", "FS_0007", "FS_00011", "FS_00012", "GE_0001", "GE_0002"}
)
#: Server-side failures the API itself says to retry later.
RETRYABLE_CODES = frozenset({"FS_0000", "FS_0008", "api_error"})
#: The key or the project is wrong: every row would fail the same way, so the run stops.
FATAL_CODES = frozenset(
    {"auth-failure", "core.webutil.token_auth", "unauthorized", "core.webutil.auther", "resource_error", "PR_0001"}
)
#: A job read refused with one of these: the job does not exist ("job unit not found", as the sandbox says).
JOB_NOT_FOUND_CODES = frozenset({"FS_0006"})
#: The project (or resource) was not found: for a job read in a project that answers other requests, the job.
NOT_FOUND_CODES = frozenset({"resource_error", "PR_0001"})
#: Synthetic codes client.py gives when no usable answer arrived; all transient.
TRANSPORT_CODES = frozenset(
    {"timeout", "connect_error", "connection_closed", "body_too_large", "protocol_error", "transport_error"}
)
#: Transport codes meaning no connection could be opened: the request never reached the API, so the API
#: is down (restarting, network gone), not the row wrong. The run pauses all its senders and does not
#: count the attempt (like a 429), so an outage longer than the backoff cannot fail every row.
OUTAGE_CODES = frozenset({"connect_error"})
#: Default longest wait a Retry-After may impose (seconds; `uploader run --max-retry-after`).
MAX_RETRY_AFTER = 300.0
#: Synthetic transport codes that no retry can fix (a certificate the system does not trust).
_FATAL_TRANSPORT_CODES = frozenset({"tls_error"})
#: Codes of a success answer that does not fit its request (Verdict.PROTOCOL); `duplicate_job_id` is given
#: by the ledger when an answered job_id is already recorded for another row.
PROTOCOL_CODES = frozenset({"bad_job_id", "mismatched_answer", "duplicate_job_id"})
#: This many protocol errors in one run stop it (exit 1): the server is not the API, or is broken.
PROTOCOL_ERROR_LIMIT = 10
#: The longest job_id accepted (the ledger's column; real ones are 36-character UUIDs).
JOB_ID_MAX_CHARS = 64
#: A listing that gives this many pages in a row with no job, or with the jobs of the page before, while still
#: naming a next page, is taken for a loop: it ends there, incomplete (`PageTrail`).
STALE_PAGES_LIMIT = 10
#: A control character (C0, DEL, C1) or a lone surrogate (no UTF-8 for it): never part of an id or a status word.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: The longest reference_id a row can hold (the ledger's column, the manifest's limit).
_REFERENCE_ID_MAX_CHARS = 255
#: Transport codes after which the request certainly never reached the API.
_NOT_SENT_CODES = frozenset({"connect_error", "tls_error"})


@dataclass(frozen=True)
class ApiResult:
    """Everything one API call produced; client.py returns one for every call and never raises instead.

    `code` is the envelope's error.code, or a synthetic code when there was no envelope: `timeout`,
    `connect_error`, `connection_closed`, `protocol_error`, `transport_error`, `tls_error`, `body_too_large`,
    `not_json` (a 2xx whose body is not a JSON envelope) or `http_<status>` (any other status without one).
    No text field (code, message, errors) ever holds the API key; `data` is kept as the server sent it.
    """

    http_status: int | None  #: None when no response arrived
    success: bool | None  #: the envelope's `success`; None if the body wasn't a JSON envelope
    data: dict[str, Any] | None
    code: str | None
    message: str | None
    errors: list[Any] | None  #: error.errors details
    retry_after: str | None  #: raw Retry-After header value
    location: str | None = None  #: a 3xx answer's Location header (key redacted), to name the redirect


@dataclass(frozen=True)
class Decision:
    """The verdict on one result, with the code and message worth recording against the row."""

    verdict: Verdict
    code: str | None
    message: str | None


def job_id_text(value: Any) -> str | None:
    """A job_id as the ledger stores it, or None when `value` is not one: a non-empty string (at most
    JOB_ID_MAX_CHARS, not blank, no control character: a NUL cannot be stored in PostgreSQL, an escape
    sequence would reach the terminal) or an integer (not a bool). Anything else (an object, a list, a float,
    `true`) is not an id, and its Python text (`"{'id': …}"`, `"True"`) must never be recorded as one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        return None
    return text if text.strip() and len(text) <= JOB_ID_MAX_CHARS and not _CONTROL.search(text) else None


def job_read_problem(data: dict[str, Any], job_id: str, reference_id: str | None = None) -> str | None:
    """Why a GET job answer is not the job asked for (None: nothing in it says so): the job_id it names (`job_id`
    or `id`), when it names one, is another or no usable id; the reference_id it names, when it names one and
    `reference_id` is known, is another. Its status or result must then be recorded for no row. The words never
    echo the server's values."""
    for key in ("job_id", "id"):
        if data.get(key) is not None and job_id_text(data[key]) != job_id:
            return f"another job (its {key} is not {job_id!r})"
    answered = data.get("reference_id")
    if reference_id is not None and answered is not None and _as_text(answered) != reference_id:
        return f"another job (its reference_id is not {reference_id!r})"
    return None


def listing_problem(data: dict[str, Any], project_id: str, batch_id: str) -> str | None:
    """Why a batch listing page is not a page of the batch asked for (None: nothing in it says so): the batch
    (`id`, a UUID: any case) or the project it names, when it names one, is another. None of its jobs may then
    be taken for that batch's. The words never echo the server's values."""
    batch = data.get("id")
    if batch is not None and (_as_text(batch) or "").lower() != batch_id.lower():
        return f"a page of another batch (its id is not {batch_id!r})"
    project = data.get("project_id")
    if project is not None and _as_text(project) != project_id:
        return f"a page of another project (its project_id is not {project_id!r})"
    return None


def _as_text(value: Any) -> str | None:
    """A reference_id from an answer, as text (the API may echo `7` for "7"); None if it cannot be one."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def classify(result: ApiResult, expect: str | None = "job_id", reference_id: str | None = None) -> Decision:
    """Decide what an API result means. The rules, first match wins:

    1. HTTP 429, whatever the body → THROTTLED (the API is busy, not the row wrong).
    2. HTTP 401 or 403, whatever the body (the old server answers 401 with no body at all) → FATAL.
       HTTP 3xx, whatever the body → FATAL: uploader does not follow redirects for a POST, and a redirect
       means the base URL is not the API's (http vs https, a missing or extra path); no row is failed.
    3. `success: true` → SUCCEEDED if `data[expect]` is present (expect=None: any success).
       For a job (expect="job_id") the answer must fit the request: `data.job_id` a non-empty string or an
       integer (`job_id_text`), and `data.reference_id`, when present, the `reference_id` sent (as text).
       Otherwise → PROTOCOL `bad_job_id` / `mismatched_answer`: the job may exist, but this answer cannot
       say which it is, so the row becomes uncertain and a batch listing decides.
       Other expectations (a batch's id) without the field, or with one that is no id (`job_id_text`: an
       object, `true`, a float, blank, a control character) → RETRYABLE `bad_success_envelope`.
    4. `success: false` (at any status: the old API answers errors with 200): a known code decides, even
       over the status (a 5xx carrying FS_0001 still means the job exists) —
       FS_0001 → EXISTS; key/project codes → FATAL; FS_0000/FS_0008/api_error → RETRYABLE;
       FS_0002..FS_0007, FS_00011, FS_00012, GE_0001, GE_0002 → PERMANENT.
       An unknown or missing code goes by status: 408 or 5xx → RETRYABLE; anything else (legacy 200, other
       4xx) → PERMANENT.
    5. No envelope: transport trouble (timeout, refused, closed, cut-off body) → RETRYABLE, except an
       untrusted certificate (`tls_error`) → FATAL; then by status: 408 or 5xx (proxy HTML) → RETRYABLE;
       404 or 405 → FATAL (we are not talking to the API: check the base URL; failing every row would
       be wrong); other 4xx (e.g. a proxy's 413) → PERMANENT; 2xx that isn't an envelope → RETRYABLE.
    """
    status = result.http_status
    code = result.code
    message = result.message
    if status == 429:
        return Decision(Verdict.THROTTLED, code or "http_429", message)
    if status in (401, 403):
        return Decision(Verdict.FATAL, code or f"http_{status}", message)
    if status is not None and 300 <= status < 400:  # a redirect, whatever the body: not the API
        return Decision(Verdict.FATAL, code or f"http_{status}", message or f"HTTP {status}: a redirect")
    if result.success is True:
        return _classify_success(result, expect, reference_id)
    if result.success is False:
        return _classify_refusal(result)
    return _classify_no_envelope(result)


def _classify_success(result: ApiResult, expect: str | None, reference_id: str | None) -> Decision:
    """Rule 3 of `classify`: an envelope with `success: true`."""
    if expect == "job_id":
        return _check_job_answer(result.data, reference_id)
    if expect is None or (result.data is not None and job_id_text(result.data.get(expect)) is not None):
        return Decision(Verdict.SUCCEEDED, None, None)  # an id as job_id_text takes one: never `True` or `{…}`
    return Decision(
        Verdict.RETRYABLE, "bad_success_envelope", f"success answer without a usable {expect}: sending it again"
    )


def _classify_refusal(result: ApiResult) -> Decision:
    """Rule 4 of `classify`: an envelope with `success: false`; a known code decides, else the status."""
    status, code, message = result.http_status, result.code, result.message
    if code in EXISTS_CODES:
        return Decision(Verdict.EXISTS, code, message)
    if code in FATAL_CODES:
        return Decision(Verdict.FATAL, code, message)
    if code in RETRYABLE_CODES:
        return Decision(Verdict.RETRYABLE, code, message)
    if code in PERMANENT_CODES:
        return Decision(Verdict.PERMANENT, code, message)
    code = code or (f"http_{status}" if status is not None else None)
    if status is not None and (status == 408 or status >= 500):
        return Decision(Verdict.RETRYABLE, code, message)
    return Decision(Verdict.PERMANENT, code, message)


def _classify_no_envelope(result: ApiResult) -> Decision:
    """Rule 5 of `classify`: no envelope: a transport failure, or a body that isn't the API's JSON."""
    status, code, message = result.http_status, result.code, result.message
    if code in _FATAL_TRANSPORT_CODES:
        return Decision(Verdict.FATAL, code, message)
    if status is None or code in TRANSPORT_CODES:
        return Decision(Verdict.RETRYABLE, code or "transport_error", message)
    code = code or f"http_{status}"
    if status == 408 or status >= 500:
        return Decision(Verdict.RETRYABLE, code, message)
    if status in (404, 405):
        return Decision(Verdict.FATAL, code, message or f"HTTP {status} without an API answer: check the base URL")
    if 400 <= status < 500:
        return Decision(Verdict.PERMANENT, code, message)
    return Decision(Verdict.RETRYABLE, code, message)


def _check_job_answer(data: dict[str, Any] | None, reference_id: str | None) -> Decision:
    """Rule 3 for a job: SUCCEEDED only for an answer that names a usable job_id and no other reference_id.
    The messages describe what was wrong without echoing the server's values (they are stored and shown)."""
    data = data if isinstance(data, dict) else {}
    raw = data.get("job_id")
    if job_id_text(raw) is None:
        return Decision(
            Verdict.PROTOCOL,
            "bad_job_id",
            f"success answer with {_describe_job_id(data)}, not a usable job_id (a non-empty string of "
            f"at most {JOB_ID_MAX_CHARS} printable characters, or an integer): the job may exist; it is looked up "
            "by listing its batch",
        )
    answered = data.get("reference_id")
    if reference_id is not None and answered is not None and _as_text(answered) != reference_id:
        return Decision(
            Verdict.PROTOCOL,
            "mismatched_answer",
            f"success answer naming another reference_id than the one sent ({reference_id!r}): the job "
            "may exist; it is looked up by listing its batch",
        )
    return Decision(Verdict.SUCCEEDED, None, None)


def _describe_job_id(data: dict[str, Any]) -> str:
    """What an unusable job_id was, in a few words (never the value itself)."""
    if "job_id" not in data or data["job_id"] is None:
        return "no job_id"
    value = data["job_id"]
    if isinstance(value, bool):
        return f"job_id {str(value).lower()}"
    if isinstance(value, str):
        if _CONTROL.search(value):
            return "a job_id with a control character"
        return "a blank job_id" if not value.strip() else f"a job_id of {len(value)} characters"
    if isinstance(value, int):
        return f"an integer job_id of {len(str(value))} digits"
    kinds = {dict: "an object", list: "a list", float: "a number with a fraction"}
    return f"job_id {kinds.get(type(value), type(value).__name__)}"


def may_have_created(result: ApiResult) -> bool:
    """Whether the attempt behind `result` may have created the job (its payload hash is then kept).

    Yes: any success answer (well-formed or not, whatever the status: a 429 or 401 saying `success: true`);
    an API error envelope for a server-side failure, which may come after the job was made (a retryable
    code, FS_0000/FS_0008/api_error, or an unknown code at 5xx); no answer after sending (timeout,
    connection closed, invalid HTTP, other transport errors); a 2xx that is not an envelope; a 408/5xx
    without an envelope (a gateway may have forwarded the request). No: a client-error envelope (a known
    code that refuses the request, FS_0001 included, even at 5xx; an unknown code below 500), 429, 401/403,
    a connection never opened (`connect_error`, `tls_error`), any other status without an envelope (3xx,
    4xx: not the API, or refused before it). When in doubt, no: a row wrongly taken for sent would later
    take a job someone else created with its reference_id for its own.
    """
    status = result.http_status
    if result.success is True:
        return True
    if status in (401, 403, 429):
        return False
    if result.success is False:
        return _server_failed(result.code, status)
    if result.code in _NOT_SENT_CODES:
        return False
    if status is None:
        return True
    return 200 <= status < 300 or status == 408 or status >= 500


def _server_failed(code: str | None, status: int | None) -> bool:
    """Whether an error envelope says the server failed (it may have done part of the work) rather than refused
    the request: a retryable server-failure code, or a code no class knows at 5xx."""
    if code in RETRYABLE_CODES:
        return True
    if code in EXISTS_CODES or code in PERMANENT_CODES or code in FATAL_CODES:
        return False
    return status is not None and status >= 500


def too_many_protocol_errors(errors: int) -> bool:
    """Whether a run that met `errors` protocol errors stops (the answers cannot be trusted)."""
    return errors >= PROTOCOL_ERROR_LIMIT


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or an HTTP date), never negative.

    None when absent or unparseable, so the caller falls back to its own backoff. A naive `now` (or date)
    is taken as UTC. Fractional seconds are accepted because some servers send them.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    from email.utils import parsedate_to_datetime  # an HTTP date is rare here; the email package costs start-up

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None instead of raising
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def retry_after_by_date(value: str, date: str | None) -> str:
    """A Retry-After HTTP date as the delta-seconds it means, measured against the answer's own `Date` header
    (the origin's clock made both: RFC 9110 §10.2.3), so that a server whose clock is off by an hour still
    means its "3 seconds"; `value` unchanged when it is delta-seconds already, or either date does not parse."""
    text = value.strip()
    if date is None or not text or text[0].isdigit():
        return value
    from email.utils import parsedate_to_datetime

    try:
        when, sent = parsedate_to_datetime(text), parsedate_to_datetime(date.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return value
    if when is None or sent is None:  # pragma: no cover - older Pythons returned None instead of raising
        return value
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    return f"{max(0.0, (when - sent).total_seconds()):g}"


def backoff_delay(attempt: int, rng: random.Random, base: float = 0.5, cap: float = 60.0) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**(attempt-1))).

    Full jitter spreads 64 senders that failed together over the whole window instead of retrying in step.
    `attempt` is the number of attempts made so far (1 after the first failure); below 1 counts as 1.
    """
    exponent = max(attempt, 1) - 1
    ceiling = cap if exponent >= 64 else min(cap, base * 2.0**exponent)
    return rng.uniform(0.0, max(0.0, ceiling))


def next_delay(
    decision: Decision | Verdict,
    attempt: int,
    retry_after: float | None,
    rng: random.Random,
    *,
    base: float = 0.5,
    cap: float = 60.0,
    max_retry_after: float = MAX_RETRY_AFTER,
) -> float:
    """How long to wait before the next try, in seconds.

    RETRYABLE: max(backoff, Retry-After) — the server's hint is a floor, jitter still spreads the herd.
    THROTTLED: Retry-After + backoff, `attempt` counting the throttles in a row: the hint is a floor added to
    a backoff that grows while the 429s last, so `Retry-After: 0` (or a date in the past) can never make the
    run retry faster than the backoff would, however long the 429s go on.
    `retry_after` is already in seconds (see `retry_after_seconds`); hints beyond `max_retry_after` are
    clamped (`retry_after_capped` says when) so a confused server cannot park the run for a day. Other
    verdicts have no delay: ValueError.
    """
    verdict = decision.verdict if isinstance(decision, Decision) else decision
    hint = None if retry_after is None else min(max(0.0, retry_after), max_retry_after)
    if verdict is Verdict.RETRYABLE:
        delay = backoff_delay(attempt, rng, base, cap)
        return delay if hint is None else max(delay, hint)
    if verdict is Verdict.THROTTLED:
        return (hint or 0.0) + backoff_delay(attempt, rng, base, cap)
    raise ValueError(f"no retry delay for verdict {verdict.value!r}")


def retry_after_capped(retry_after: float | None, max_retry_after: float = MAX_RETRY_AFTER) -> bool:
    """True when a Retry-After hint (seconds) asks for longer than `max_retry_after`: the run waits less."""
    return retry_after is not None and retry_after > max_retry_after


def job_is_gone(code: str | None, project_answers: bool) -> bool:
    """Whether a job read refused with `code` says the job does not exist (deleted at the platform, or never
    created): a job-level not found, or a not found in a project that answers other requests (else the project
    itself, or the key's access to it, may be what is gone)."""
    return code in JOB_NOT_FOUND_CODES or (project_answers and code in NOT_FOUND_CODES)


def status_text(value: Any) -> str:
    """A platform status word as the ledger keeps it (verbatim), or "" when `value` is none: not text, or text
    with a control character (a NUL cannot be stored in PostgreSQL, an escape sequence would reach the
    terminal)."""
    return value if isinstance(value, str) and not _CONTROL.search(value) else ""


def listed_jobs(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(reference_id, job_id, status) of each job of a batch listing page; entries without a usable job id, or
    with a reference_id no row can hold (blank, over 255 characters, a control character), are skipped; a
    missing or unusable status is "" (`status_text`; words are kept verbatim, never judged)."""
    jobs = data.get("jobs")
    found = []
    for job in jobs if isinstance(jobs, list) else ():
        if not isinstance(job, dict):
            continue
        job_id = job_id_text(job.get("id")) or job_id_text(job.get("job_id"))
        ref = _as_text(job.get("reference_id"))
        if job_id and ref and ref.strip() and len(ref) <= _REFERENCE_ID_MAX_CHARS and not _CONTROL.search(ref):
            found.append((ref, job_id, status_text(job.get("status"))))
    return found


def named_twice(jobs: list[tuple[str, str, str]]) -> set[str]:
    """The reference_ids a listing page (`listed_jobs`) contradicts itself about: named with two jobs, or their
    job named for another reference_id too (the API allows neither): no job can be taken for them from it."""
    job_of: dict[str, str] = {}
    ref_of: dict[str, str] = {}
    twice: set[str] = set()
    for ref, job_id, _ in jobs:
        if job_of.setdefault(ref, job_id) != job_id:
            twice.add(ref)
        if (other := ref_of.setdefault(job_id, ref)) != ref:
            twice.update((ref, other))
    return twice


def result_verdict(status: int, content_type: str | None, first_byte: bytes) -> str | None:
    """Why a downloaded result is not one (None: it is JSON). 408, 429 and 5xx are retried by the caller."""
    if not 200 <= status < 300:
        return f"HTTP {status}"
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind and "json" not in kind and kind != "text/plain" and kind != "application/octet-stream":
        return f"not JSON ({kind})"
    if first_byte not in (b"{", b"["):
        return "not JSON"
    return None


class PageTrail:
    """Where one batch listing goes next, and whether it ended complete. `next(data)` gives the next page's token,
    or None when the listing is over: at its last page (no token), or at a loop, which no later page can end —
    a token given before, or STALE_PAGES_LIMIT pages in a row with no job or the jobs of the page before.
    `complete` then says False and `problem` why: a job such a listing did not show may still exist."""

    def __init__(self) -> None:
        self._tokens = {""}
        self._stale = 0
        self._last: Any = None
        self.complete = True
        self.problem: str | None = None

    def next(self, data: dict[str, Any]) -> str | None:
        raw = data.get("next_page_token")
        token = str(raw) if raw else ""
        jobs = data.get("jobs")
        stale = not (isinstance(jobs, list) and jobs) or jobs == self._last
        self._stale, self._last = (self._stale + 1 if stale else 0), jobs
        if not token:
            return None
        if token in self._tokens:
            self.problem = f"it gave the page token {token[:40]!r} a second time"
        elif self._stale >= STALE_PAGES_LIMIT:
            self.problem = f"{STALE_PAGES_LIMIT} pages in a row showed no new job, each naming another page"
        if self.problem is not None:
            self.complete = False
            return None
        self._tokens.add(token)
        return token


class Found(dict[str, str]):
    """{reference_id: job_id} found by listing a batch (`ApiClient.find_job_ids`); `complete` is False when the
    listing ended at a loop (`PageTrail.problem` says why): a reference_id it did not show may have a job.
    `ambiguous`: wanted reference_ids the listing contradicts itself about (named with two jobs, or their job
    named for another reference_id too; the API allows neither): neither found nor missing."""

    complete: bool = True
    problem: str | None = None

    def __init__(self, wanted: set[str] | frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.wanted = wanted
        self.ambiguous: set[str] = set()
        self._named: dict[str, str] = {}  #: job_id -> the reference_id it was first named for (wanted ones)
        self._others = array("q")  #: hash() of each job_id listed earlier for a reference_id not wanted

    def note(self, reference_id: str, job_id: str) -> None:
        """One listed (reference_id, job_id): kept when the reference_id is wanted, unless the listing names
        that reference_id or that job otherwise, elsewhere, before or after (then neither is kept; a job named
        first for a reference_id not wanted is caught by `settle`)."""
        if reference_id not in self.wanted and job_id not in self._named:
            self._others.append(hash(job_id))  # 8 bytes a job, whatever the batch's size
            return
        first = self._named.setdefault(job_id, reference_id)
        twice = {r for r in (first, reference_id) if r in self.wanted} if first != reference_id else set()
        if reference_id in self.wanted and self.setdefault(reference_id, job_id) != job_id:
            twice.add(reference_id)
        self.ambiguous |= twice
        for ref in twice | ({reference_id} & self.ambiguous):
            self.pop(ref, None)

    def settle(self) -> None:
        """After the last page: a kept job the listing named, earlier, for a reference_id not wanted is
        another's as much as this one's: neither found nor missing (a hash collision, 1 in 2**64 a pair, only
        ever makes a row ambiguous, never found)."""
        kept = {hash(job_id): ref for ref, job_id in self.items()}
        clash = {kept[h] for h in self._others if h in kept} if kept else set()
        self.ambiguous |= clash
        for ref in clash:
            del self[ref]
        self._others = array("q")
