"""Expiry of already-signed storage URLs, read from fields whose values are known."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uploader.manifest import SignedUrlError, may_hold_expiry, url_expiry

# The presigned GET of AWS's Signature V4 documentation ("Authenticating Requests: Using Query Parameters").
AWS_DOC_URL = (
    "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_aws_v4_documentation_example() -> None:
    assert url_expiry(AWS_DOC_URL) == (utc(2013, 5, 25), "aws-v4")


def test_google_v4() -> None:
    url = (
        "https://storage.googleapis.com/example-bucket/cat.jpeg?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        "&X-Goog-Credential=example%40example-project.iam.gserviceaccount.com%2F20181026%2Fus-central1"
        "%2Fstorage%2Fgoog4_request&X-Goog-Date=20181026T181309Z&X-Goog-Expires=900"
        "&X-Goog-SignedHeaders=host&X-Goog-Signature=247a2aa45f169edf4d187d54e7cc46e4731b1e6273242c4f4c39a1d2507a0e58"
    )
    assert url_expiry(url) == (utc(2018, 10, 26, 18, 28, 9), "google-v4")


@pytest.mark.parametrize(
    ("se", "expected"),
    [
        ("2026-12-31", utc(2026, 12, 31)),
        ("2026-12-31T08:30Z", utc(2026, 12, 31, 8, 30)),
        ("2026-12-31T08:30:15Z", utc(2026, 12, 31, 8, 30, 15)),
        ("2026-12-31T08:30:15.1234567Z", utc(2026, 12, 31, 8, 30, 15)),
    ],
)
def test_azure_sas(se: str, expected: datetime) -> None:
    url = (
        f"https://acct.blob.core.windows.net/c/img.png?sv=2022-11-02&ss=b&srt=o&sp=r&se={se.replace(':', '%3A')}"
        "&st=2026-01-01T00%3A00%3A00Z&spr=https&sig=abc%2Bdef%3D"
    )
    assert url_expiry(url) == (expected, "azure-sas")


@pytest.mark.parametrize(
    "url",
    [
        "https://bucket.s3.amazonaws.com/k.jpg?AWSAccessKeyId=AKIA&Expires=1767225600&Signature=abc%3D",
        "https://storage.googleapis.com/b/o.jpg?GoogleAccessId=x%40y&Expires=1767225600&Signature=abc",
        "https://d111111abcdef8.cloudfront.net/i.jpg?Expires=1767225600&Signature=abc&Key-Pair-Id=K2J",
    ],
)
def test_legacy_expires_epoch(url: str) -> None:
    assert url_expiry(url) == (utc(2026, 1, 1), "legacy")


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/a.jpg",
        "https://example.com/a.jpg?expires=tomorrow",  # not signed: no signature field
        "https://example.com/a.jpg?se=2026-01-01",  # an Azure-looking field without sig
        "https://example.com/a.jpg?X-Amz-Date=garbage",  # no signature or credential: not presigned
        "https://example.com/a.jpg?v=1&w=2",
    ],
)
def test_unsigned_urls_have_no_expiry(url: str) -> None:
    assert url_expiry(url) is None


@given(st.text(alphabet="?&=%:/.-_aAbcdeEgGiIlnNrsStxXz0123456789", max_size=60))
def test_may_hold_expiry_is_false_only_for_text_without_one(text: str) -> None:
    """The load's cheap test (uploader.load skips the ledger's scan for signed URLs when it is False for every
    payload) never says no to a URL, or text around one, that url_expiry reads an expiry from."""
    for candidate in (text, f"https://b.s3.amazonaws.com/k?{text}", f'{{"image_url":"{AWS_DOC_URL}?{text}"}}'):
        try:
            expiry = url_expiry(candidate)
        except SignedUrlError:
            expiry = None  # malformed, but signed: must not be ruled out either
            assert may_hold_expiry(candidate)
        if expiry is not None:
            assert may_hold_expiry(candidate)
    assert may_hold_expiry(AWS_DOC_URL) and may_hold_expiry(f'{{"data":{{"image_url":"{AWS_DOC_URL}"}}}}')
    assert not may_hold_expiry("https://example.com/design/sig.jpg")  # no query: nothing to read


def test_field_names_are_case_insensitive() -> None:
    assert url_expiry(AWS_DOC_URL.replace("X-Amz-", "x-amz-")) == (utc(2013, 5, 25), "aws-v4")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (AWS_DOC_URL.replace("X-Amz-Expires=86400", "X-Amz-Expires=soon"), "X-Amz-Expires 'soon' is not a number"),
        (AWS_DOC_URL.replace("X-Amz-Expires=86400", "X-Amz-Expires=-5"), "X-Amz-Expires '-5' is not a number"),
        (AWS_DOC_URL.replace("X-Amz-Expires=86400&", ""), "has no X-Amz-Expires field"),
        (AWS_DOC_URL.replace("20130524T000000Z", "2013-05-24T00:00:00Z"), "not of the form YYYYMMDDTHHMMSSZ"),
        (AWS_DOC_URL.replace("20130524T000000Z", "20130532T000000Z"), "is not a real time"),
        (AWS_DOC_URL.replace("X-Amz-Expires=86400", "X-Amz-Expires=999999999999"), "longer than any signature"),
        ("https://a.blob.core.windows.net/c/b?se=31%2F12%2F2026&sig=x", "se (expiry) '31/12/2026' is not an ISO 8601"),
        ("https://a.blob.core.windows.net/c/b?se=2026-02-30&sig=x", "is not a real time"),
        ("https://b.s3.amazonaws.com/k?Expires=1.5e9&Signature=x", "Expires '1.5e9' is not a number"),
        ("https://b.s3.amazonaws.com/k?Expires=999999999999&Signature=x", "Expires '999999999999' is out of range"),
    ],
)
def test_malformed_signed_urls_are_errors(url: str, message: str) -> None:
    with pytest.raises(SignedUrlError, match=re.escape(message)):
        url_expiry(url)


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(min_value=1, max_value=604800),
    st.sampled_from(["Amz", "Goog"]),
)
def test_v4_expiry_is_signing_time_plus_validity(signed: datetime, seconds: int, vendor: str) -> None:
    signed = signed.replace(microsecond=0, tzinfo=UTC)
    url = (
        f"https://h/o?X-{vendor}-Credential=c&X-{vendor}-Date={signed:%Y%m%dT%H%M%SZ}"
        f"&X-{vendor}-Expires={seconds}&X-{vendor}-Signature=s"
    )
    assert url_expiry(url) == (signed + timedelta(seconds=seconds), "aws-v4" if vendor == "Amz" else "google-v4")


def test_a_malformed_signed_url_in_a_manifest_is_a_load_error(tmp_path) -> None:
    from click.testing import CliRunner

    from uploader.cli.commands import cli

    bad = AWS_DOC_URL.replace("X-Amz-Expires=86400", "X-Amz-Expires=tomorrow")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"reference_id,image_url\nr1,https://e.com/ok.jpg\nr2,{bad}\n")
    ledger = tmp_path / "l.db"
    result = CliRunner().invoke(
        cli, ["load", str(manifest), "--project-id", "p", "--work-flow-id", "w", "--ledger", str(ledger)]
    )
    assert result.exit_code == 1
    assert f"{manifest}:3:" in result.output
    assert (
        "is a signed URL that cannot be checked: signed URL's X-Amz-Expires 'tomorrow' is not a number" in result.output
    )
    assert "Traceback" not in result.output and not ledger.exists()
