"""The decision tables of uploader.api.policy, one row per rule."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from uploader.api import policy
from uploader.api.policy import (
    ApiResult,
    Decision,
    Verdict,
    backoff_delay,
    classify,
    job_id_text,
    job_is_gone,
    may_have_created,
    next_delay,
    retry_after_seconds,
    too_many_protocol_errors,
)

S, E, P, R, T, F, X = (
    Verdict.SUCCEEDED,
    Verdict.EXISTS,
    Verdict.PERMANENT,
    Verdict.RETRYABLE,
    Verdict.THROTTLED,
    Verdict.FATAL,
    Verdict.PROTOCOL,
)


def ok(data: dict | None = None, status: int = 200) -> ApiResult:
    return ApiResult(status, True, data, None, None, None, None)


def err(code: str | None, status: int = 400, message: str | None = "msg") -> ApiResult:
    return ApiResult(status, False, None, code, message, [], None)


def raw(status: int | None, code: str | None, retry_after: str | None = None) -> ApiResult:
    """No envelope: a transport failure (status None) or a body that isn't the API's JSON."""
    return ApiResult(status, None, None, code, "snippet", None, retry_after)


TABLE = [
    # success
    ("success with job_id", ok({"job_id": "j1"}), S, None),
    ("success 201 with job_id", ok({"job_id": "j1"}, status=201), S, None),
    ("success with an integer job_id", ok({"job_id": 17}), S, None),
    # a success that breaks the contract: the job may exist; the row is uncertain, a listing decides
    ("success without job_id", ok({"reference_id": "r"}), X, "bad_job_id"),
    ("success with empty job_id", ok({"job_id": ""}), X, "bad_job_id"),
    ("success with blank job_id", ok({"job_id": "  "}), X, "bad_job_id"),
    ("success with null job_id", ok({"job_id": None}), X, "bad_job_id"),
    ("success without data", ok(None), X, "bad_job_id"),
    ("job_id an object", ok({"job_id": {"id": "j1"}}), X, "bad_job_id"),
    ("job_id true", ok({"job_id": True}), X, "bad_job_id"),
    ("job_id false", ok({"job_id": False}), X, "bad_job_id"),
    ("job_id a list", ok({"job_id": ["j1"]}), X, "bad_job_id"),
    ("job_id a float", ok({"job_id": 1.5}), X, "bad_job_id"),
    ("job_id longer than 64", ok({"job_id": "j" * 65}), X, "bad_job_id"),
    # FS_0001: the job exists, whatever the status
    ("FS_0001 at 400", err("FS_0001"), E, "FS_0001"),
    ("FS_0001 legacy 200", err("FS_0001", 200), E, "FS_0001"),
    ("FS_0001 wins over 500", err("FS_0001", 500), E, "FS_0001"),
    ("FS_0001 wins over 503", err("FS_0001", 503), E, "FS_0001"),
    # permanent codes, current (400) and legacy (200)
    *[(f"{c} at 400", err(c), P, c) for c in sorted(policy.PERMANENT_CODES)],
    *[(f"{c} legacy 200", err(c, 200), P, c) for c in sorted(policy.PERMANENT_CODES)],
    ("FS_0003 at 500: the code decides", err("FS_0003", 500), P, "FS_0003"),
    ("unknown code at 400", err("XX_9999"), P, "XX_9999"),
    ("unknown code at 404", err("XX_9999", 404), P, "XX_9999"),
    ("unknown code at 422", err("XX_9999", 422), P, "XX_9999"),
    ("unknown code legacy 200", err("XX_9999", 200), P, "XX_9999"),
    ("BATCH_CREATION is a row problem", err("BATCH_CREATION"), P, "BATCH_CREATION"),
    ("no code at 400", err(None), P, "http_400"),
    ("no code legacy 200", err(None, 200), P, "http_200"),
    # retryable codes and statuses
    *[(f"{c} at 400", err(c), R, c) for c in sorted(policy.RETRYABLE_CODES)],
    *[(f"{c} legacy 200", err(c, 200), R, c) for c in sorted(policy.RETRYABLE_CODES)],
    ("FS_0000 at 500", err("FS_0000", 500), R, "FS_0000"),
    ("unknown code at 500", err("XX_9999", 500), R, "XX_9999"),
    ("unknown code at 503", err("XX_9999", 503), R, "XX_9999"),
    ("unknown code at 408", err("XX_9999", 408), R, "XX_9999"),
    ("no code at 502", err(None, 502), R, "http_502"),
    ("HTML 502 from a proxy", raw(502, "http_502"), R, "http_502"),
    ("HTML 503", raw(503, "http_503"), R, "http_503"),
    ("HTML 504", raw(504, "http_504"), R, "http_504"),
    ("empty 500", raw(500, "http_500"), R, "http_500"),
    ("408 without envelope", raw(408, "http_408"), R, "http_408"),
    ("200 body not JSON", raw(200, "not_json"), R, "not_json"),
    ("200 body too large", raw(200, "body_too_large"), R, "body_too_large"),
    ("400 body too large", raw(400, "body_too_large"), R, "body_too_large"),
    ("timeout", raw(None, "timeout"), R, "timeout"),
    ("connect error", raw(None, "connect_error"), R, "connect_error"),
    ("connection closed before the answer", raw(None, "connection_closed"), R, "connection_closed"),
    ("invalid HTTP from the server", raw(None, "protocol_error"), R, "protocol_error"),
    ("other transport error", raw(None, "transport_error"), R, "transport_error"),
    ("no response, no code", raw(None, None), R, "transport_error"),
    # throttled: 429 whatever the body, before any code
    ("429 empty", raw(429, "http_429"), T, "http_429"),
    ("429 no code at all", raw(429, None), T, "http_429"),
    ("429 with an envelope", err("rate_limited", 429), T, "rate_limited"),
    ("429 with FS_0003", err("FS_0003", 429), T, "FS_0003"),
    ("429 with FS_0001", err("FS_0001", 429), T, "FS_0001"),
    # fatal: 401/403 by status before codes; key/project codes at any status
    ("401 empty body", raw(401, "http_401"), F, "http_401"),
    ("401 no code", raw(401, None), F, "http_401"),
    ("401 with FS_0003", err("FS_0003", 401), F, "FS_0003"),
    ("401 even with success", ok({"job_id": "j"}, status=401), F, "http_401"),
    ("403 empty", raw(403, "http_403"), F, "http_403"),
    ("403 unauthorized", err("unauthorized", 403), F, "unauthorized"),
    *[(f"{c} at 400", err(c), F, c) for c in sorted(policy.FATAL_CODES)],
    *[(f"{c} legacy 200", err(c, 200), F, c) for c in sorted(policy.FATAL_CODES)],
    ("resource_error at 404", err("resource_error", 404), F, "resource_error"),
    ("untrusted certificate", raw(None, "tls_error"), F, "tls_error"),
    # no envelope at a status that says we're not talking to the API
    ("HTML 404: wrong base URL", raw(404, "http_404"), F, "http_404"),
    ("405 without envelope", raw(405, "http_405"), F, "http_405"),
    ("301 redirect", raw(301, "http_301"), F, "http_301"),
    ("307 redirect", raw(307, "http_307"), F, "http_307"),
    ("308 redirect", raw(308, "http_308"), F, "http_308"),
    ("302 with a failure envelope: still the redirect", err("XX_9999", 302), F, "XX_9999"),
    ("303 with a success envelope", ok({"job_id": "j"}, status=303), F, "http_303"),
    # no envelope, other 4xx: this row
    ("413 from a proxy", raw(413, "http_413"), P, "http_413"),
    ("400 HTML", raw(400, "http_400"), P, "http_400"),
]


@pytest.mark.parametrize(("result", "verdict", "code"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_classify(result: ApiResult, verdict: Verdict, code: str | None) -> None:
    decision = classify(result)
    assert decision.verdict is verdict
    assert decision.code == code


@pytest.mark.parametrize(
    ("data", "verdict", "code"),
    [
        ({"job_id": "j1", "reference_id": "r1"}, S, None),
        ({"job_id": "j1"}, S, None),  # no reference_id in the answer: nothing to compare
        ({"job_id": "j1", "reference_id": None}, S, None),
        ({"job_id": "j1", "reference_id": "r2"}, X, "mismatched_answer"),
        ({"job_id": "j1", "reference_id": ""}, X, "mismatched_answer"),
        ({"job_id": "j1", "reference_id": "R1"}, X, "mismatched_answer"),
        ({"job_id": "j1", "reference_id": {"id": "r1"}}, X, "mismatched_answer"),
        ({"job_id": "j1", "reference_id": True}, X, "mismatched_answer"),
        ({"job_id": {"id": 1}, "reference_id": "r1"}, X, "bad_job_id"),  # the job_id is checked first
    ],
)
def test_classify_checks_the_answer_against_the_reference_id_sent(
    data: dict, verdict: Verdict, code: str | None
) -> None:
    result = classify(ok(data), reference_id="r1")
    assert (result.verdict, result.code) == (verdict, code)


@pytest.mark.parametrize(("answered", "sent", "verdict"), [(7, "7", S), ("7", "7", S), (7, "07", X), (7.0, "7", X)])
def test_classify_compares_reference_ids_as_text(answered: object, sent: str, verdict: Verdict) -> None:
    assert classify(ok({"job_id": "j", "reference_id": answered}), reference_id=sent).verdict is verdict


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("j1", "j1"),
        (17, "17"),
        (0, "0"),
        ("", None),
        ("   ", None),
        (None, None),
        (True, None),
        (False, None),
        (1.0, None),
        ({"id": "j"}, None),
        (["j"], None),
        ("x" * 64, "x" * 64),
        ("x" * 65, None),
        (10**70, None),
    ],
)
def test_job_id_text(value: object, text: str | None) -> None:
    assert job_id_text(value) == text


MAY_HAVE_CREATED = [
    # the job may exist: the attempt's payload hash is kept
    ("success", ok({"job_id": "j"}), True),
    ("malformed success", ok({"job_id": True}), True),
    ("success without data", ok(None), True),
    ("timeout", raw(None, "timeout"), True),
    ("connection closed", raw(None, "connection_closed"), True),
    ("invalid HTTP", raw(None, "protocol_error"), True),
    ("other transport error", raw(None, "transport_error"), True),
    ("no response, no code", raw(None, None), True),
    ("200 not JSON", raw(200, "not_json"), True),
    ("200 body too large", raw(200, "body_too_large"), True),
    ("HTML 502", raw(502, "http_502"), True),
    ("empty 500", raw(500, "http_500"), True),
    ("408 without envelope", raw(408, "http_408"), True),
    ("FS_0000 at 500 (a server failure envelope)", err("FS_0000", 500), True),
    ("FS_0008 at 503", err("FS_0008", 503), True),
    ("api_error at 500", err("api_error", 500), True),
    ("FS_0000 at 400 (current docs' status)", err("FS_0000"), True),
    ("legacy 200 api_error", err("api_error", 200), True),
    ("unknown code at 502", err("gateway_down", 502), True),
    ("envelope without a code at 500", err(None, 500), True),
    ("429 with a success body", ok({"job_id": "j"}, status=429), True),
    ("401 with a success body", ok({"job_id": "j"}, status=401), True),
    # certainly nothing created
    ("API error envelope", err("FS_0003"), False),
    ("FS_0001", err("FS_0001"), False),
    ("FS_0001 at 500 (the code decides)", err("FS_0001", 500), False),
    ("FS_0007 at 503", err("FS_0007", 503), False),
    ("legacy 200 error", err("FS_0003", 200), False),
    ("unknown code at 400", err("something", 400), False),
    ("429", raw(429, "http_429"), False),
    ("429 with an envelope", err("rate_limited", 429), False),
    ("429 with a server-failure envelope", err("FS_0008", 429), False),
    ("401", raw(401, "http_401"), False),
    ("403", err("unauthorized", 403), False),
    ("401 with api_error", err("api_error", 401), False),
    ("connect error", raw(None, "connect_error"), False),
    ("untrusted certificate", raw(None, "tls_error"), False),
    ("413 from a proxy", raw(413, "http_413"), False),
    ("400 body too large", raw(400, "body_too_large"), False),
    ("404 HTML", raw(404, "http_404"), False),
    ("301 redirect", raw(301, "http_301"), False),
]


@pytest.mark.parametrize(("result", "created"), [r[1:] for r in MAY_HAVE_CREATED], ids=[r[0] for r in MAY_HAVE_CREATED])
def test_may_have_created(result: ApiResult, created: bool) -> None:
    assert may_have_created(result) is created


@pytest.mark.parametrize(("errors", "stop"), [(0, False), (1, False), (9, False), (10, True), (500, True)])
def test_too_many_protocol_errors(errors: int, stop: bool) -> None:
    assert too_many_protocol_errors(errors) is stop


def test_classify_keeps_the_message() -> None:
    assert classify(err("FS_0003", message="Invalid data passed")) == Decision(P, "FS_0003", "Invalid data passed")
    assert classify(raw(502, "http_502")).message == "snippet"


@pytest.mark.parametrize(
    ("result", "expect", "verdict"),
    [
        (ok({"batch_id": "b"}), "batch_id", S),
        (ok({"job_id": "j"}), "batch_id", R),
        (ok({"batch_id": "b"}), "job_id", X),
        (ok(None), None, S),
        (ok({"jobs": [], "next_page_token": ""}), None, S),
    ],
)
def test_classify_expect(result: ApiResult, expect: str | None, verdict: Verdict) -> None:
    assert classify(result, expect=expect).verdict is verdict


def test_code_sets_are_disjoint() -> None:
    sets = [policy.EXISTS_CODES, policy.PERMANENT_CODES, policy.RETRYABLE_CODES, policy.FATAL_CODES]
    assert sum(len(s) for s in sets) == len(frozenset().union(*sets))


NOW = datetime(2025, 11, 29, 16, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("0", 0.0),
        ("7", 7.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("nan", None),
        ("inf", None),
        ("1e999", None),
        ("soon", None),
        ("Mon, 32 Foo 2025 99:99:99 GMT", None),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), 0.0),
        ("Sat, 29 Nov 2025 16:02:00 GMT", 120.0),
        ("Sat, 29 Nov 2025 16:02:00 +0100", 0.0),  # an hour ago in UTC
        ("Sat, 29 Nov 2025 16:02:00", 120.0),  # no zone: taken as UTC
    ],
)
def test_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, NOW) == seconds


def test_retry_after_seconds_naive_now_is_utc() -> None:
    assert retry_after_seconds("Sat, 29 Nov 2025 16:00:10 GMT", NOW.replace(tzinfo=None)) == 10.0


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(-1, 0.5), (0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (7, 32.0), (8, 60.0), (9, 60.0), (10_000, 60.0)],
)
def test_backoff_delay_bounds(attempt: int, ceiling: float) -> None:
    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, rng) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter: the whole window is used, not only its top.
    assert min(delays) < ceiling * 0.05
    assert max(delays) > ceiling * 0.95


def test_backoff_delay_is_seeded() -> None:
    a = [backoff_delay(5, random.Random(42)) for _ in range(3)]
    b = [backoff_delay(5, random.Random(42)) for _ in range(3)]
    assert a == b
    assert backoff_delay(5, random.Random(42)) != backoff_delay(5, random.Random(43))


def test_backoff_delay_base_and_cap() -> None:
    rng = random.Random(1)
    assert all(backoff_delay(3, rng, base=0.1, cap=60) <= 0.4 for _ in range(500))
    assert all(backoff_delay(30, rng, base=1.0, cap=5.0) <= 5.0 for _ in range(500))
    assert backoff_delay(3, rng, base=0.0) == 0.0


RETRY = Decision(R, "FS_0000", None)
THROTTLE = Decision(T, "http_429", None)


@pytest.mark.parametrize(
    ("decision", "attempt", "hint", "low", "high"),
    [
        (RETRY, 1, None, 0.0, 0.5),
        (RETRY, 4, None, 0.0, 4.0),
        (RETRY, 4, 10.0, 10.0, 10.0),  # the server's hint is a floor
        (RETRY, 20, 10.0, 10.0, 60.0),  # backoff may exceed a small hint
        (RETRY, 1, 0.0, 0.0, 0.5),
        (RETRY, 1, 10_000.0, 300.0, 300.0),  # absurd hints are clamped (MAX_RETRY_AFTER)
        (THROTTLE, 1, 5.0, 5.0, 5.5),  # the hint is a floor added to the backoff
        (THROTTLE, 9, 5.0, 5.0, 65.0),  # 429s in a row: the backoff grows on top of the hint
        (THROTTLE, 3, None, 0.0, 2.0),  # no hint: backoff
        (THROTTLE, 1, -4.0, 0.0, 0.5),
        (THROTTLE, 1, 0.0, 0.0, 0.5),  # Retry-After: 0 is never faster than the backoff
        (THROTTLE, 1, 86_400.0, 300.0, 300.5),  # a day is cut to MAX_RETRY_AFTER
        (R, 1, 3.0, 3.0, 3.0),  # a bare Verdict is accepted
    ],
)
def test_next_delay(decision: Decision | Verdict, attempt: int, hint: float | None, low: float, high: float) -> None:
    rng = random.Random(7)
    for _ in range(200):
        assert low <= next_delay(decision, attempt, hint, rng) <= high


@pytest.mark.parametrize("verdict", [S, E, P, F, X])
def test_next_delay_refuses_verdicts_without_a_delay(verdict: Verdict) -> None:
    with pytest.raises(ValueError):
        next_delay(Decision(verdict, None, None), 1, None, random.Random(0))


def test_all_is_complete() -> None:
    defined = {n for n, v in vars(policy).items()
               if not n.startswith("_") and getattr(v, "__module__", "") == policy.__name__}  # fmt: skip
    assert defined <= set(policy.__all__)
    assert all(hasattr(policy, n) for n in policy.__all__)


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 0.0, 0.5), (2, 0.0, 1.0), (4, 0.0, 4.0), (30, 0.0, 60.0)],
)
def test_throttled_backoff_grows_with_the_429s_in_a_row_whatever_the_hint(
    attempt: int, low: float, high: float
) -> None:
    """Retry-After: 0 and a date in the past (0 s) give the plain backoff; its mean grows with the rounds."""
    rng = random.Random(3)
    delays = [next_delay(THROTTLE, attempt, 0.0, rng) for _ in range(400)]
    assert low <= min(delays) and max(delays) <= high
    assert sum(delays) / len(delays) > high / 4  # not collapsed to 0


@pytest.mark.parametrize(
    ("hint", "cap", "capped", "delay_at_most"),
    [
        (None, 300.0, False, 0.5),
        (299.0, 300.0, False, 299.5),
        (300.0, 300.0, False, 300.5),
        (301.0, 300.0, True, 300.5),
        (86_400.0, 600.0, True, 600.5),
        (5.0, 0.0, True, 0.5),
    ],
)
def test_max_retry_after(hint: float | None, cap: float, capped: bool, delay_at_most: float) -> None:
    assert policy.retry_after_capped(hint, cap) is capped
    assert next_delay(THROTTLE, 1, hint, random.Random(1), max_retry_after=cap) <= delay_at_most


@pytest.mark.parametrize(
    ("code", "project_answers", "gone"),
    [
        ("FS_0006", False, True),  # job unit not found: the job's own not found
        ("FS_0006", True, True),
        ("resource_error", True, True),  # the project answers other reads: the job is what is missing
        ("PR_0001", True, True),
        ("resource_error", False, False),  # nothing says the project is there: it may be what is gone
        ("PR_0001", False, False),
        ("unauthorized", True, False),  # the key's access, not the job
        ("FS_0000", True, False),
        (None, True, False),
    ],
)
def test_job_is_gone(code: str | None, project_answers: bool, gone: bool) -> None:
    assert job_is_gone(code, project_answers) is gone


@pytest.mark.parametrize(
    ("value", "date", "expected"),
    [
        ("Tue, 01 Dec 2026 11:00:03 GMT", "Tue, 01 Dec 2026 11:00:00 GMT", "3"),  # the server's own 3 s
        ("Tue, 01 Dec 2026 11:00:00 GMT", "Tue, 01 Dec 2026 11:00:09 GMT", "0"),  # already past: no wait
        ("Tue, 01 Dec 2026 11:00:03 GMT", None, "Tue, 01 Dec 2026 11:00:03 GMT"),  # no Date: the client's clock
        ("7", "Tue, 01 Dec 2026 11:00:00 GMT", "7"),  # delta-seconds: as it is
        ("Tue, 01 Dec 2026 11:00:03 GMT", "yesterday", "Tue, 01 Dec 2026 11:00:03 GMT"),  # a Date that does not parse
    ],
)
def test_a_retry_after_date_is_measured_against_the_answers_own_date(value: str, date: str | None, expected: str):
    from uploader.api.policy import retry_after_by_date

    assert retry_after_by_date(value, date) == expected
