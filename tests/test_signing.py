"""Signing at send time (`--sign`): storage URLs accepted in manifests, kept in the ledger, and replaced on the
wire by fresh signed URLs made just before each send, checked by an independent verifier (tests/sigv4_verifier:
S3 SigV4 recomputed from AWS's documented algorithm; Google V4 and Azure SAS from their documented
canonical forms below)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import sqlite3
import sys
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import httpx
import pytest
from azure_sas import sas_signature
from click.testing import CliRunner
from loopback_api import Answer, LoopbackApi
from sigv4_verifier import SigV4Verifier, use_test_credentials

from uploader.cli.commands import cli
from uploader.manifest import ManifestOptions
from uploader.manifest.values import url_problem
from uploader.sandbox import Sandbox
from uploader.storage import PayloadSigner, StorageError, StorageLocation, locate, sign_payload, signer_for

LOAD = ["--project-id", "proj", "--work-flow-id", "wf"]
OBJECTS = {("photos", "cats/tom+1=é.jpg"): b"\xff\xd8tom", ("photos", "cats/felix.jpg"): b"\xff\xd8felix"}


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_signed(box: Sandbox, manifest: Path, ledger: Path, *extra: str):
    """`uploader run MANIFEST --sign` against the sandbox `box`, with `extra` options."""
    return invoke(
        "run",
        str(manifest),
        *LOAD,
        "--ledger",
        str(ledger),
        "--base-url",
        box.base_url,
        "--api-key",
        box.api_key,
        "--sign",
        *extra,
    )


@pytest.fixture
def s3():
    with SigV4Verifier(dict(OBJECTS)) as verifier:
        yield verifier


@pytest.fixture
def aws_env(monkeypatch, tmp_path, s3):
    """The fixed test credentials, and the verifier as the S3 endpoint; no ~/.aws files of the machine."""
    use_test_credentials(monkeypatch, tmp_path, s3.endpoint)
    return s3


def write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("reference_id,image_url\n" + "".join(f"{r},{u}\n" for r, u in rows))
    return path


def bodies(ledger: Path) -> dict[str, str]:
    with sqlite3.connect(ledger) as db:
        return dict(db.execute("SELECT reference_id, body FROM jobs"))


def fetch(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)


# --- which URLs are storage URLs, and where they go in a body ----------------------------------------------


def test_locate_names_the_object_of_each_kind_of_storage_url():
    assert locate("s3://photos/cats/tom 1.jpg") == StorageLocation("s3", "photos", "cats/tom 1.jpg")
    assert locate("gs://bkt/a/b.png") == StorageLocation("gcs", "bkt", "a/b.png")
    assert locate("https://acct.blob.core.windows.net/c/dir/x%20y.jpg") == StorageLocation(
        "azure", "c", "dir/x y.jpg", "acct"
    )
    # Not storage URLs uploader signs: plain https, an Azure URL that carries a SAS already, no key.
    for url in (
        "https://example.com/a.jpg",
        "https://acct.blob.core.windows.net/c/x.jpg?sv=1&sig=abc",
        "s3://bucket-only",
        "s3://bucket/",
        "gs:///key",
        "https://acct.blob.core.windows.net/c",
    ):
        assert locate(url) is None, url


def test_sign_payload_swaps_image_and_frame_urls_only():
    body = json.dumps(
        {
            "reference_id": "r",
            "data": {
                "video_data": {
                    "frames": [
                        {"frame_id": "1", "src": "s3://b/1.jpg"},
                        {"frame_id": "2", "src": "https://cdn.example/2.jpg"},
                    ]
                },
                "note": "s3://b/not-an-attachment",
            },
        }
    )
    out = json.loads(sign_payload(body, lambda url: "SIGNED:" + url if url.startswith("s3://") else url))
    frames = out["data"]["video_data"]["frames"]
    assert [f["src"] for f in frames] == ["SIGNED:s3://b/1.jpg", "https://cdn.example/2.jpg"]
    assert out["data"]["note"] == "s3://b/not-an-attachment"
    plain = '{"reference_id":"r","data":{"image_url":"https://cdn.example/a.jpg"}}'
    assert sign_payload(plain, lambda url: 1 / 0) is plain  # no storage URL: not even parsed


def test_storage_urls_need_sign_and_a_key():
    assert "pass --sign" in (url_problem("s3://photos/a.jpg") or "")
    assert "pass --sign" in (url_problem("gs://photos/a.jpg") or "")
    assert url_problem("s3://photos/a.jpg", sign=True) is None
    assert "no object key" in (url_problem("s3://photos", sign=True) or "")
    assert "'?' or '#'" in (url_problem("gs://photos/a.jpg?x=1", sign=True) or "")
    # --sign stores the same rows (the storage URL): the load's fingerprint does not change with it.
    assert ManifestOptions(sign=True).fingerprint() == ManifestOptions().fingerprint()


def test_load_refuses_storage_urls_without_sign_and_keeps_them_with_it(tmp_path):
    ledger = tmp_path / "l.db"
    manifest = write_manifest(tmp_path / "m.csv", [("a", "https://cdn.example/a.jpg"), ("b", "s3://photos/b.jpg")])
    refused = invoke("load", str(manifest), *LOAD, "--ledger", str(ledger))
    assert refused.exit_code == 1
    assert "m.csv:3: column 'image_url'" in refused.output and "pass --sign" in refused.output
    assert not ledger.exists()
    loaded = invoke("load", str(manifest), *LOAD, "--ledger", str(ledger), "--sign")
    assert loaded.exit_code == 0, loaded.output
    assert json.loads(bodies(ledger)["b"])["data"]["image_url"] == "s3://photos/b.jpg"
    # Loading the same file again is the same load: --sign is not part of the options' fingerprint.
    again = invoke("load", str(manifest), *LOAD, "--ledger", str(ledger))
    assert again.exit_code == 0 and "already loaded with the same options" in again.output, again.output


def test_video_frames_may_be_storage_urls_with_sign(tmp_path):
    wide = tmp_path / "wide.jsonl"
    wide.write_text(
        json.dumps(
            {
                "reference_id": "v",
                "frames": [
                    {"frame_id": "1", "src": "gs://clips/v/1.jpg"},
                    {"frame_id": "2", "src": "s3://clips/v/2.jpg"},
                ],
            }
        )
        + "\n"
    )
    long = tmp_path / "long.csv"
    long.write_text("reference_id,frame_id,src\nw,1,s3://clips/w/1.jpg\nw,2,s3://clips/w/2.jpg\n")
    for manifest, column in ((wide, "frames"), (long, "src")):
        ledger = tmp_path / f"{manifest.stem}.db"
        refused = invoke("load", str(manifest), *LOAD, "--ledger", str(ledger))
        assert refused.exit_code == 1 and f"column '{column}'" in refused.output, refused.output
        assert "pass --sign" in refused.output
        loaded = invoke("load", str(manifest), *LOAD, "--ledger", str(ledger), "--sign")
        assert loaded.exit_code == 0, loaded.output
        (body,) = bodies(ledger).values()
        srcs = [f["src"] for f in json.loads(body)["data"]["video_data"]["frames"]]
        assert all(src.startswith(("s3://", "gs://")) for src in srcs) and len(srcs) == 2


def test_plan_with_sign_shows_the_storage_url_the_ledger_would_keep(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [("a", "gs://photos/a.jpg")])
    refused = invoke("plan", str(manifest), *LOAD, "--ledger", str(tmp_path / "l.db"))
    assert refused.exit_code == 1 and "pass --sign" in refused.output
    planned = invoke("plan", str(manifest), *LOAD, "--ledger", str(tmp_path / "l.db"), "--sign")
    assert planned.exit_code == 0, planned.output
    assert '"image_url": "gs://photos/a.jpg"' in planned.output and "new 1" in planned.output
    assert not (tmp_path / "l.db").exists()


# --- S3: signed locally, checked by the independent SigV4 verifier ------------------------------------------


def test_s3_signature_is_accepted_and_a_tampered_or_expired_url_refused(aws_env):
    s3 = aws_env
    signer = PayloadSigner(dt.timedelta(hours=1))
    url = signer.sign_url("s3://photos/cats/tom+1=é.jpg")
    assert url.startswith(s3.endpoint + "/photos/cats/tom%2B1%3D%C3%A9.jpg?") and "X-Amz-Signature=" in url
    answer = fetch(url)
    assert (answer.status_code, answer.content) == (200, OBJECTS[("photos", "cats/tom+1=é.jpg")])
    # The verifier can fail: another key under the same signature, a changed expiry, an expired URL.
    assert fetch(url.replace("tom%2B1%3D%C3%A9.jpg", "felix.jpg")).status_code == 403
    assert fetch(url.replace("X-Amz-Expires=3600", "X-Amz-Expires=3601")).status_code == 403
    s3.clock = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    assert fetch(url).status_code == 403
    assert [why for *_, why in s3.log] == [None, "signature does not match", "signature does not match", "expired"]


def test_url_ttl_must_be_a_second_or_more(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [("a", "s3://photos/a.jpg")])
    result = invoke("check", str(manifest), *LOAD, "--ledger", str(tmp_path / "l.db"), "--sign", "--url-ttl", "0")
    assert result.exit_code == 2 and "--url-ttl must be at least 1 second" in result.output
    assert not (tmp_path / "l.db").exists()


def test_url_ttl_is_capped_at_seven_days_for_s3(aws_env):
    url = PayloadSigner(dt.timedelta(days=30)).sign_url("s3://photos/cats/felix.jpg")
    assert dict(parse_qsl(urlsplit(url).query))["X-Amz-Expires"] == str(7 * 86400)
    assert fetch(url).status_code == 200


def test_run_with_sign_sends_signed_urls_and_keeps_storage_urls_in_the_ledger(aws_env, tmp_path):
    s3 = aws_env
    ledger = tmp_path / "l.db"
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            ("tom", "s3://photos/cats/tom+1=é.jpg"),
            ("felix", "s3://photos/cats/felix.jpg"),
            ("web", "https://cdn.example/web.jpg"),
        ],
    )
    with Sandbox() as box:
        result = run_signed(box, manifest, ledger, "--url-ttl", "2d")
        jobs = {j["reference_id"]: j for j in box.jobs()}
    assert result.exit_code == 0, result.output
    sent = {ref: job["data"]["image_url"] for ref, job in jobs.items()}
    assert sent["web"] == "https://cdn.example/web.jpg"  # not a storage URL: sent as it is
    for ref, key in (("tom", "cats/tom+1=é.jpg"), ("felix", "cats/felix.jpg")):
        assert sent[ref].startswith(s3.endpoint + "/photos/") and "X-Amz-Expires=172800" in sent[ref]
        answer = fetch(sent[ref])
        assert (answer.status_code, answer.content) == (200, OBJECTS[("photos", key)])
    stored = {ref: json.loads(body)["data"]["image_url"] for ref, body in bodies(ledger).items()}
    assert stored == {
        "tom": "s3://photos/cats/tom+1=é.jpg",
        "felix": "s3://photos/cats/felix.jpg",
        "web": "https://cdn.example/web.jpg",
    }


def test_run_with_sign_signs_every_frame_of_a_video(aws_env, tmp_path):
    manifest = tmp_path / "v.jsonl"
    manifest.write_text(
        json.dumps(
            {
                "reference_id": "v",
                "frames": [
                    {"frame_id": "1", "src": "s3://photos/cats/tom+1=é.jpg"},
                    {"frame_id": "2", "src": "s3://photos/cats/felix.jpg"},
                    {"frame_id": "3", "src": "https://cdn.example/3.jpg"},
                ],
            }
        )
        + "\n"
    )
    with Sandbox() as box:
        result = run_signed(box, manifest, tmp_path / "l.db")
        (job,) = box.jobs()
    assert result.exit_code == 0, result.output
    srcs = [f["src"] for f in job["data"]["video_data"]["frames"]]
    assert srcs[2] == "https://cdn.example/3.jpg"
    answers = [fetch(src) for src in srcs[:2]]
    assert [(a.status_code, a.content) for a in answers] == [
        (200, OBJECTS[("photos", "cats/tom+1=é.jpg")]),
        (200, OBJECTS[("photos", "cats/felix.jpg")]),
    ]


def test_a_resend_is_signed_again(aws_env, tmp_path):
    ledger = tmp_path / "l.db"
    manifest = write_manifest(tmp_path / "m.csv", [("tom", "s3://photos/cats/tom+1=é.jpg")])
    # The first attempt is throttled (Retry-After 1 s): the row is sent again, at least a second later.
    with LoopbackApi("k", lambda i, t: Answer(429, {"Retry-After": "1"}) if i == 0 else None) as api:
        result = invoke(
            "run",
            str(manifest),
            *LOAD,
            "--ledger",
            str(ledger),
            "--base-url",
            api.base_url,
            "--api-key",
            "k",
            "--allow-http",
            "--sign",
        )
        sent = [json.loads(raw)["data"]["image_url"] for raw in api.bodies]
    assert result.exit_code == 0, result.output
    assert len(sent) == 2 and api.answers == [429, 200]
    dates = [dict(parse_qsl(urlsplit(url).query))["X-Amz-Date"] for url in sent]
    assert dates[0] < dates[1]  # signed anew for the resend
    assert [fetch(url).status_code for url in sent] == [200, 200]
    assert json.loads(bodies(ledger)["tom"])["data"]["image_url"] == "s3://photos/cats/tom+1=é.jpg"


def test_check_with_sign_checks_the_signed_form(aws_env, tmp_path):
    ledger = tmp_path / "l.db"
    manifest = write_manifest(
        tmp_path / "m.csv", [("tom", "s3://photos/cats/tom+1=é.jpg"), ("gone", "s3://photos/cats/gone.jpg")]
    )
    result = invoke("check", str(manifest), *LOAD, "--ledger", str(ledger), "--sign")
    assert result.exit_code == 3, result.output
    with sqlite3.connect(ledger) as db:
        rows = dict(db.execute("SELECT reference_id, status FROM jobs"))
        verdicts = dict(db.execute("SELECT url, verdict FROM urls"))
    assert rows == {"tom": "pending", "gone": "blocked"}
    # Verdicts are kept under the storage URL the rows hold; the requests went to signed URLs.
    assert verdicts == {"s3://photos/cats/tom+1=é.jpg": "ok", "s3://photos/cats/gone.jpg": "http_error"}
    assert all("X-Amz-Signature=" in path for _, path, *_ in aws_env.log)
    assert {(m, status) for m, path, status, _ in aws_env.log if "tom" in path} >= {("GET", 200)}


def test_missing_credentials_stop_the_run_before_anything_is_sent(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup (no network)
    manifest = write_manifest(tmp_path / "m.csv", [("tom", "s3://photos/cats/tom+1=é.jpg")])
    with Sandbox() as box:
        result = run_signed(box, manifest, tmp_path / "l.db")
        created = box.stats()["jobs_created"]
    assert result.exit_code == 1
    assert "no AWS credentials" in result.output and "Traceback" not in result.output
    assert created == 0


def test_a_run_without_sign_refuses_a_ledger_holding_storage_urls(tmp_path):
    ledger = tmp_path / "l.db"
    manifest = write_manifest(
        tmp_path / "m.csv", [("tom", "s3://photos/cats/felix.jpg"), ("web", "https://cdn.example/web.jpg")]
    )
    assert invoke("load", str(manifest), *LOAD, "--ledger", str(ledger), "--sign").exit_code == 0
    with Sandbox() as box:
        result = invoke("run", "--ledger", str(ledger), "--base-url", box.base_url, "--api-key", box.api_key)
        created = box.stats()["jobs_created"]
    assert result.exit_code == 2 and "pass --sign" in result.output, result.output
    assert created == 0  # nothing went out with an s3:// URL in it


def test_pending_containing_finds_unsigned_storage_urls(ledger, tmp_path):
    from conftest import FakeManifest

    from uploader.ledger import pending_containing
    from uploader.load import load_manifest
    from uploader.storage import PROVIDER_MARKERS

    rows = [("a", "s3://b/a.jpg"), ("z", "https://acct.blob.core.windows.net/c/z.jpg?sv=1&sig=x")]
    (tmp_path / "m.csv").write_text("m")
    (tmp_path / "n.csv").write_text("n")
    load_manifest(ledger, FakeManifest(tmp_path / "m.csv", rows), "fp")
    needles = dict(PROVIDER_MARKERS.values())
    assert pending_containing(ledger.engine, needles) == {'"s3://'}  # the Azure URL is signed already
    load_manifest(ledger, FakeManifest(tmp_path / "n.csv", [("y", "https://acct.blob.core.windows.net/c/y.jpg")]), "f2")
    assert pending_containing(ledger.engine, needles) == {'"s3://', ".blob.core.windows.net/"}


def test_a_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if boto3 were not installed
    monkeypatch.delitem(sys.modules, "uploader.storage.s3", raising=False)
    with pytest.raises(StorageError, match=r"pip install 'gtstudio-uploader\[s3\]'"):
        signer_for("s3")


# --- Google V4 and Azure SAS: the documented canonical forms, recomputed here --------------------------------


def _canonical_query(query: str, without: str) -> str:
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != without]
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params))


def test_gcs_v4_signature_verifies_with_the_service_accounts_public_key(monkeypatch, tmp_path):
    pytest.importorskip("google.cloud.storage", reason="the [gcs] extra (google-cloud-storage) is not installed")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    email = "signer@test-project.iam.gserviceaccount.com"
    key_file = tmp_path / "sa.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "test-project",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": email,
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    url = PayloadSigner(dt.timedelta(days=30)).sign_url("gs://bkt/dir/a+c=é.png")
    parts = urlsplit(url)
    fields = dict(parse_qsl(parts.query))
    assert (parts.scheme, parts.netloc) == ("https", "storage.googleapis.com")
    assert unquote(parts.path) == "/bkt/dir/a+c=é.png"
    assert fields["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256" and fields["X-Goog-Expires"] == str(7 * 86400)

    def string_to_sign(path: str, query: str) -> bytes:
        canonical_request = "\n".join(
            [
                "GET",
                quote(unquote(path), safe="/-_.~"),
                _canonical_query(query, "X-Goog-Signature"),
                f"host:{parts.netloc}\n",
                "host",
                "UNSIGNED-PAYLOAD",
            ]
        )
        scope = fields["X-Goog-Credential"].split("/", 1)[1]
        return "\n".join(
            ["GOOG4-RSA-SHA256", fields["X-Goog-Date"], scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
        ).encode()

    assert fields["X-Goog-Credential"].startswith(email + "/")
    signature = bytes.fromhex(fields["X-Goog-Signature"])
    key.public_key().verify(signature, string_to_sign(parts.path, parts.query), padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(InvalidSignature):  # the check can fail: another object under the same signature
        key.public_key().verify(
            signature, string_to_sign("/bkt/dir/other.png", parts.query), padding.PKCS1v15(), hashes.SHA256()
        )


def test_azure_sas_is_the_hmac_of_the_documented_string_to_sign(monkeypatch):
    pytest.importorskip("azure.storage.blob", reason="the [azure] extra (azure-storage-blob) is not installed")
    account_key = base64.b64encode(b"test account key, 32 bytes long!").decode()
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={account_key}"
    )
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    url = PayloadSigner(dt.timedelta(hours=6)).sign_url("https://acct.blob.core.windows.net/media/dir/x%20y.jpg")
    parts = urlsplit(url)
    fields = dict(parse_qsl(parts.query))
    assert (parts.netloc, parts.path) == ("acct.blob.core.windows.net", "/media/dir/x%20y.jpg")
    assert (fields["sp"], fields["sr"]) == ("r", "b")  # read-only, one blob
    expiry = dt.datetime.strptime(fields["se"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert before + dt.timedelta(hours=6) <= expiry <= before + dt.timedelta(hours=6, seconds=5)

    def sas(resource: str) -> str:
        return sas_signature(fields, resource, account_key)

    assert fields["sig"] == sas("/blob/acct/media/dir/x y.jpg")
    assert fields["sig"] != sas("/blob/acct/media/dir/other.jpg")  # the check can fail


def _ledger_rows(ledger: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(ledger) as db:
        return {r: (s, c) for r, s, c in db.execute("SELECT reference_id, status, error_code FROM jobs")}


def test_a_signing_error_in_the_middle_of_a_run_is_one_clear_line(monkeypatch, tmp_path):
    """The key is for account `acct`; one row of the manifest, among others that sign well, is a blob of
    account `other`: the run stops with that error on one line (exit 1, no traceback, not a task failure to
    report), nothing is marked failed, the rows it held are pending again."""
    pytest.importorskip("azure.storage.blob", reason="the [azure] extra (azure-storage-blob) is not installed")
    account_key = base64.b64encode(b"test account key, 32 bytes long!").decode()
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={account_key}"
    )
    rows = [(f"a{i}", f"https://acct.blob.core.windows.net/media/a{i}.jpg") for i in range(6)]
    rows.insert(3, ("x", "https://other.blob.core.windows.net/media/x.jpg"))
    manifest = write_manifest(tmp_path / "m.csv", rows)
    ledger = tmp_path / "l.db"
    with Sandbox() as box:
        result = run_signed(box, manifest, ledger, "--concurrency", "1")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "cannot sign the Azure blob URL of account 'other'" in errors[0] and "pending again" in errors[0]
    assert "Traceback" not in result.output and "report this" not in result.output and "task" not in errors[0]
    states = _ledger_rows(ledger)
    assert states["x"] == ("pending", None)
    assert all(s in ("pending", "succeeded") and c is None for s, c in states.values())  # nothing failed


def test_a_provider_library_error_at_signing_names_the_credentials(aws_env, monkeypatch, tmp_path):
    """boto3 refusing to sign (credentials gone since the run began) is a StorageError naming the
    credentials, not a task failure; an s3:// URL naming no object cannot be signed either."""
    from botocore.exceptions import NoCredentialsError

    from uploader.storage.s3 import S3Signer

    def refuse(self, location, seconds):
        raise NoCredentialsError()

    monkeypatch.setattr(S3Signer, "sign", refuse)
    signer = PayloadSigner()
    with pytest.raises(StorageError, match=r"cannot sign s3://photos/cats/felix.jpg with your S3 credentials"):
        signer.sign_url("s3://photos/cats/felix.jpg")
    with pytest.raises(StorageError, match="not of the form s3://BUCKET/KEY"):
        signer.sign_url("s3://photos")
    assert signer.sign_url("https://cdn.example/a.jpg") == "https://cdn.example/a.jpg"
    manifest = write_manifest(tmp_path / "m.csv", [("felix", "s3://photos/cats/felix.jpg")])
    with Sandbox() as box:
        result = run_signed(box, manifest, tmp_path / "l.db")
        created = box.stats()["jobs_created"]
    assert result.exit_code == 1 and created == 0
    assert "with your S3 credentials (NoCredentialsError" in result.output and "Traceback" not in result.output
    assert _ledger_rows(tmp_path / "l.db")["felix"] == ("pending", None)


def test_upload_signs_like_the_cli(aws_env, tmp_path):
    """`uploader.upload(..., sign=True, url_ttl=...)` accepts storage URLs, sends them signed for the ttl and
    keeps them in the ledger; without sign=True, the same manifest is refused; sign=True with a payload hook
    of one's own is a usage error."""
    import uploader
    from uploader.errors import ManifestError, UsageError
    from uploader.send import RunOptions

    s3 = aws_env
    manifest = write_manifest(tmp_path / "m.csv", [("felix", "s3://photos/cats/felix.jpg")])
    ledger = tmp_path / "l.db"
    with Sandbox() as box:
        common = {"project_id": "proj", "work_flow_id": "wf", "api_key": box.api_key, "base_url": box.base_url}
        with pytest.raises(ManifestError, match="pass --sign"):
            uploader.upload(manifest, ledger=tmp_path / "unsigned.db", **common)
        with pytest.raises(UsageError, match="prepare_payload"):
            uploader.upload(manifest, ledger=ledger, sign=True, run_options=RunOptions(prepare_payload=str), **common)
        summary = uploader.upload(manifest, ledger=ledger, sign=True, url_ttl=dt.timedelta(hours=3), **common)
        (job,) = box.jobs()
    assert summary.counts["succeeded"] == 1
    sent = job["data"]["image_url"]
    assert sent.startswith(s3.endpoint + "/photos/") and "X-Amz-Expires=10800" in sent
    assert fetch(sent).content == OBJECTS[("photos", "cats/felix.jpg")]
    assert json.loads(bodies(ledger)["felix"])["data"]["image_url"] == "s3://photos/cats/felix.jpg"
