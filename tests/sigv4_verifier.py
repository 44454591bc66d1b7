"""An independent checker of S3 presigned URLs: a small HTTP server on loopback that recomputes each request's
Signature V4 from AWS's documented algorithm (query-string authentication: canonical request, string to sign,
HMAC-SHA256 key derivation) with the test secret, written from the documentation, not from boto3.

It answers 200 with the object's bytes when the signature matches and the URL has not expired, 403 when not
(and 404 for an object it does not hold, once authenticated). `clock` may be moved to test expiry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from tests.misbehaving_api import Served

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
IMAGE = b"\xff\xd8\xff\xe0" + b"\x00" * 60  # the start of a JPEG: any bytes do
_MAX_EXPIRES = 7 * 24 * 3600  # SigV4 presigned URLs last at most 7 days


def _uri_encode(text: str, slash: bool = True) -> str:
    """AWS's UriEncode: every byte but A-Z a-z 0-9 - _ . ~ percent-encoded (upper-case hex); '/' kept in paths."""
    return quote(text, safe="-_.~" + ("/" if slash else ""))


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def expected_signature(method: str, raw_path: str, raw_query: str, host: str, secret: str = SECRET_KEY) -> str:
    """The signature a presigned request must carry, recomputed from its method, path, query and Host."""
    params = [(k, v) for k, v in parse_qsl(raw_query, keep_blank_values=True) if k != "X-Amz-Signature"]
    fields = dict(params)
    canonical_query = "&".join(f"{_uri_encode(k, False)}={_uri_encode(v, False)}" for k, v in sorted(params))
    signed = fields["X-Amz-SignedHeaders"].split(";")
    headers = {"host": host}
    canonical_headers = "".join(f"{name}:{headers[name].strip()}\n" for name in signed)
    canonical_request = "\n".join(
        [
            method,
            _uri_encode(unquote(raw_path)),
            canonical_query,
            canonical_headers,
            ";".join(signed),
            "UNSIGNED-PAYLOAD",
        ]
    )
    _, date, region, service, terminator = fields["X-Amz-Credential"].split("/")
    scope = f"{date}/{region}/{service}/{terminator}"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", fields["X-Amz-Date"], scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + secret).encode(), date)
    for part in (region, service, terminator):
        key = _hmac(key, part)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def refusal(method: str, url_path: str, host: str, now: dt.datetime) -> str | None:
    """Why a presigned request is refused, or None when it is valid."""
    parts = urlsplit(url_path)
    fields = dict(parse_qsl(parts.query, keep_blank_values=True))
    needed = (
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    )
    if any(name not in fields for name in needed):
        return "not a presigned URL"
    if fields["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
        return "unknown algorithm"
    access, date = fields["X-Amz-Credential"].split("/")[:2]
    if access != ACCESS_KEY:
        return "unknown access key"
    signed_at = dt.datetime.strptime(fields["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    if not fields["X-Amz-Date"].startswith(date):
        return "credential date differs from X-Amz-Date"
    seconds = int(fields["X-Amz-Expires"])
    if seconds > _MAX_EXPIRES:
        return "X-Amz-Expires longer than 7 days"
    if now > signed_at + dt.timedelta(seconds=seconds):
        return "expired"
    want = expected_signature(method, parts.path, parts.query, host)
    if not hmac.compare_digest(want, fields["X-Amz-Signature"]):
        return "signature does not match"
    return None


class SigV4Verifier(Served):
    """`with SigV4Verifier({("bucket", "key"): b"..."}) as s3:` serves path-style S3 GETs at `s3.endpoint`."""

    def __init__(self, objects: dict[tuple[str, str], bytes] | None = None) -> None:
        self.objects = objects if objects is not None else {}
        self.clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, int, str | None]] = []  #: (method, path, status, why refused)
        verifier = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, with_body: bool) -> None:
                why = refusal(self.command, self.path, self.headers.get("Host", ""), verifier.clock())
                bucket, _, key = unquote(urlsplit(self.path).path).lstrip("/").partition("/")
                data = verifier.objects.get((bucket, key))
                status = 403 if why else 404 if data is None else 200
                with verifier.lock:
                    verifier.log.append((self.command, self.path, status, why))
                body = data if status == 200 and data is not None else (why or "no such key").encode()
                self.send_response(status)
                self.send_header("Content-Type", "image/jpeg" if status == 200 else "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(False)

        self._serve(Handler)

    @property
    def endpoint(self) -> str:
        return self.base_url


def use_test_credentials(monkeypatch: Any, tmp_path: Any, endpoint: str) -> None:
    """The fixed test credentials and `endpoint` as the S3 endpoint for boto3, and none of the machine's
    (~/.aws files, a profile, a session token, the instance metadata service)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
