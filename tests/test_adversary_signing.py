"""Adversarial tests of `--sign`: the URL the platform receives opens exactly the object the manifest names,
for as long as promised, and nothing else is changed; the ledger, logs and exports never hold a signed URL or
a credential; missing or broken credentials are one error line before anything is sent.

Real components only: the sandbox and tests/loopback_api.py as the API, tests/sigv4_verifier.py as S3 (it
recomputes SigV4 and serves the object at the decoded key), boto3 / google-cloud-storage / azure-storage-blob
signing with dummy credentials (a freshly generated RSA service-account key, a dummy base64 Azure key). The
Google V4 and Azure SAS signatures are checked here with their documented algorithms, over the path an HTTP
client actually requests (httpx's URL normalisation: what the platform's fetcher would send).

A case where the product is wrong is an `xfail(strict=True)` whose reason starts with FINDING.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
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
from sigv4_verifier import SECRET_KEY, SigV4Verifier, use_test_credentials

from uploader.cli.commands import cli
from uploader.manifest import url_expiry
from uploader.manifest.values import url_problem
from uploader.sandbox import Sandbox
from uploader.sandbox.config import SandboxConfig
from uploader.storage import PayloadSigner, StorageError, locate

pytest.importorskip("boto3", reason="the [s3] extra is not installed")

LOAD = ["--project-id", "proj", "--work-flow-id", "wf"]
SESSION_TOKEN = "FQoGZXIvYXdzEXAMPLE-SESSION-TOKEN-do-not-leak-7f3a9c"
AZURE_KEY = base64.b64encode(b"adversary azure key, 32 bytes!!!").decode()
AZURE_ACCOUNT = "acct"

#: Legal object keys that are awkward in a URL (as the object is named, not as written in the manifest).
AWKWARD_KEYS = [
    "a b.jpg",
    "a+b.jpg",
    "100%.jpg",
    "what?.jpg",
    "#1.jpg",
    "caf\u00e9.jpg",  # NFC
    "cafe\u0301.jpg",  # NFD: another object
    "dir//x.jpg",
    "dir/trailing/",
    "a%2Fb.jpg",  # a key that looks percent-encoded
    "%41.jpg",
    "~u/x=1&y=2'\".jpg",
    "semi;colon,comma:@$!*()[]{}|^`<>.jpg",
    "/leading-slash.jpg",
    "back\\slash.jpg",
    "\U0001f600.jpg",
    "k" * 1000 + ".jpg",  # S3 and GCS allow 1024 bytes
]
#: Legal keys with a dot segment: every HTTP client normalises these out of a URL's path (RFC 3986 §5.2.4).
DOT_KEYS = ["a/../b.jpg", "./x.jpg", "x/.", "dir/.."]


def storage_url(provider: str, key: str, bucket: str = "photos") -> str:
    """The storage URL a manifest writes for `key`: the key percent-encoded as a URL path (README)."""
    path = quote(key, safe="/")
    if provider == "s3":
        return f"s3://{bucket}/{path}"
    if provider == "gcs":
        return f"gs://{bucket}/{path}"
    return f"https://{AZURE_ACCOUNT}.blob.core.windows.net/{bucket}/{path}"


def invoke(*args: str, catch: bool = False):
    return CliRunner().invoke(cli, list(args), catch_exceptions=catch)


def requested(url: str) -> tuple[str, str]:
    """(path, query) an HTTP client sends for `url` (httpx normalises the URL as browsers and fetchers do)."""
    u = httpx.URL(url)
    return u.raw_path.decode().partition("?")[0], u.query.decode()


def write_csv(path: Path, rows: list[tuple[str, str]], extra: str = "") -> Path:
    head = "reference_id,image_url" + ("," + extra if extra else "")
    path.write_text(head + "\n" + "".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def db_rows(ledger: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(ledger) as db:
        return list(db.execute(sql))


# --- credentials --------------------------------------------------------------------------------------------


@pytest.fixture
def s3():
    with SigV4Verifier({}) as verifier:
        yield verifier


@pytest.fixture
def aws_env(monkeypatch, tmp_path, s3):
    use_test_credentials(monkeypatch, tmp_path, s3.endpoint)
    return s3


@pytest.fixture(scope="module")
def rsa_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def gcs_env(monkeypatch, tmp_path, rsa_key):
    pytest.importorskip("google.cloud.storage", reason="the [gcs] extra is not installed")
    from cryptography.hazmat.primitives import serialization

    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    key_file = tmp_path / "sa.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "test-project",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "signer@test-project.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    return rsa_key


@pytest.fixture
def azure_env(monkeypatch):
    pytest.importorskip("azure.storage.blob", reason="the [azure] extra is not installed")
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT", raising=False)
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=https;AccountName={AZURE_ACCOUNT};AccountKey={AZURE_KEY}",
    )


# --- independent verifiers of Google V4 and Azure SAS (what the provider's server would do) -----------------


def _canonical_query(query: str, without: str) -> str:
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != without]
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params))


def gcs_object_opened(url: str, public_key) -> tuple[str, str] | None:
    """(bucket, object) a GCS server would serve for `url` as a client requests it, or None when the V4
    signature (GOOG4-RSA-SHA256 over the canonical request of the requested path) does not verify."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    host = urlsplit(url).netloc
    path, query = requested(url)
    fields = dict(parse_qsl(query, keep_blank_values=True))
    canonical = "\n".join(
        [
            "GET",
            quote(unquote(path), safe="/-_.~"),
            _canonical_query(query, "X-Goog-Signature"),
            f"host:{host}\n",
            fields["X-Goog-SignedHeaders"],
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = fields["X-Goog-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        [fields["X-Goog-Algorithm"], fields["X-Goog-Date"], scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    try:
        public_key.verify(
            bytes.fromhex(fields["X-Goog-Signature"]), to_sign.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        return None
    bucket, _, name = unquote(path)[1:].partition("/")
    return bucket, name


def azure_blob_opened(url: str) -> tuple[str, str] | None:
    """(container, blob) an Azure server would serve for `url` as a client requests it, or None when the
    service SAS (HMAC-SHA256 of the documented string-to-sign, canonical resource /blob/ACCOUNT/CONTAINER/BLOB)
    does not verify or does not grant read."""
    path, query = requested(url)
    fields = dict(parse_qsl(query, keep_blank_values=True))
    container, _, blob = unquote(path)[1:].partition("/")
    account = urlsplit(url).hostname.split(".")[0]
    expected = sas_signature(fields, f"/blob/{account}/{container}/{blob}", AZURE_KEY)
    if not hmac.compare_digest(expected, fields.get("sig", "")) or "r" not in fields["sp"]:
        return None
    return container, blob


# --- every awkward key opens exactly its object ---------------------------------------------------------------


def test_s3_awkward_keys_sent_by_a_run_open_exactly_their_objects(aws_env, tmp_path):
    """A CSV manifest of storage URLs for every awkward key (NFC and NFD spellings are distinct objects with
    distinct bytes) goes through load, the ledger and a run against the sandbox; each URL the sandbox received
    is fetched from the SigV4 verifier, which checks the signature and serves the object at the decoded key."""
    s3 = aws_env
    for i, key in enumerate(AWKWARD_KEYS):
        s3.objects[("photos", key)] = b"\xff\xd8" + str(i).encode()
    rows = [(f"r{i}", storage_url("s3", key)) for i, key in enumerate(AWKWARD_KEYS)]
    manifest = write_csv(tmp_path / "m.csv", rows)
    ledger = tmp_path / "l.db"
    with Sandbox() as box:
        result = invoke(
            "run", str(manifest), *LOAD, "--ledger", str(ledger), "--base-url", box.base_url,
            "--api-key", box.api_key, "--sign", "--url-ttl", "1h",
        )  # fmt: skip
        sent = {job["reference_id"]: job["data"]["image_url"] for job in box.jobs()}
    assert result.exit_code == 0, result.output
    assert len(sent) == len(AWKWARD_KEYS)
    for i, key in enumerate(AWKWARD_KEYS):
        answer = httpx.get(sent[f"r{i}"], timeout=10)
        assert (answer.status_code, answer.content) == (200, b"\xff\xd8" + str(i).encode()), (key, sent[f"r{i}"])
    stored = {r: json.loads(b)["data"]["image_url"] for r, b in db_rows(ledger, "SELECT reference_id, body FROM jobs")}
    assert stored == dict(rows)  # the storage URL as written, NFD kept NFD


def test_gcs_awkward_keys_sign_to_the_same_object(gcs_env):
    """Google V4: the signature verifies with the service account's public key over the path a client
    requests, and that path names exactly the object (bucket and name)."""
    signer = PayloadSigner(dt.timedelta(hours=1))
    for key in AWKWARD_KEYS:
        url = signer.sign_url(storage_url("gcs", key))
        assert gcs_object_opened(url, gcs_env.public_key()) == ("photos", key), (key, url)
    # The check can fail: the same signature for another object.
    url = signer.sign_url("gs://photos/a.jpg")
    assert gcs_object_opened(url.replace("/a.jpg?", "/b.jpg?"), gcs_env.public_key()) is None


def test_azure_awkward_keys_sign_to_the_same_blob(azure_env):
    """Azure SAS: the HMAC of the documented string-to-sign verifies with the account key for the blob the
    requested path names, and that blob is the manifest's; read-only (sp=r), one blob (sr=b)."""
    signer = PayloadSigner(dt.timedelta(hours=1))
    for key in AWKWARD_KEYS:
        url = signer.sign_url(storage_url("azure", key))
        fields = dict(parse_qsl(urlsplit(url).query))
        assert (fields["sp"], fields["sr"]) == ("r", "b")
        assert azure_blob_opened(url) == ("photos", key), (key, url)
    url = signer.sign_url(storage_url("azure", "a.jpg"))
    assert azure_blob_opened(url.replace("/a.jpg?", "/b.jpg?")) is None


@pytest.mark.parametrize("provider", ["s3", "gcs", "azure"])
def test_dot_segment_keys_are_refused_or_open_their_object(provider, request, tmp_path):
    """`s3://photos/a/../b.jpg` names the object `a/../b.jpg` (legal in S3, GCS and Azure). uploader loads it
    with --sign, and signs `/photos/a/../b.jpg`; httpx, aiohttp and browsers request `/photos/b.jpg`
    (RFC 3986 remove_dot_segments), so S3 answers 403 SignatureDoesNotMatch (Google and Azure likewise) and the
    platform's annotators get a broken image for a job that was created "successfully". The truth: either the
    load refuses such a key (one line naming file, line, column) or the URL opens the object. A user with
    such keys sees jobs created and images that never load, with no warning from load, plan or run."""
    request.getfixturevalue({"s3": "aws_env", "gcs": "gcs_env", "azure": "azure_env"}[provider])
    if provider == "s3":
        for key in DOT_KEYS:
            request.getfixturevalue("aws_env").objects[("photos", key)] = key.encode()
    signer = PayloadSigner(dt.timedelta(hours=1))
    for key in DOT_KEYS:
        url = storage_url(provider, key)
        if url_problem(url, sign=True) is not None:
            continue  # refused at load: fine
        signed = signer.sign_url(url)
        if provider == "s3":
            answer = httpx.get(signed, timeout=10)
            assert (answer.status_code, answer.content) == (200, key.encode()), (key, signed)
        elif provider == "gcs":
            assert gcs_object_opened(signed, request.getfixturevalue("gcs_env").public_key()) == ("photos", key)
        else:
            assert azure_blob_opened(signed) == ("photos", key), (key, signed)


def test_azure_snapshot_or_version_url_is_not_silently_retargeted(azure_env, tmp_path):
    """`https://acct.blob.core.windows.net/c/img.jpg?snapshot=2024-01-01T00:00:00.0000000Z` names a
    read-only snapshot. `locate` ignores any query without `sig`, `AzureSigner.sign` rebuilds the URL from
    account/container/blob alone: the signed URL opens the *current* img.jpg (sr=b, no sst, no snapshot
    parameter). Annotators label another image than the one the manifest names, silently. The truth: keep
    the snapshot/version (sr=bs / sr=bv with the parameter) or refuse the URL at load."""
    signer = PayloadSigner(dt.timedelta(hours=1))
    for param in ("snapshot", "versionid"):
        url = f"https://{AZURE_ACCOUNT}.blob.core.windows.net/c/img.jpg?{param}=2024-01-01T00:00:00.0000000Z"
        problem = url_problem(url, sign=True)
        if problem is not None:  # refused at load (file, line, column): fine
            assert "snapshot" in problem and "--sign cannot keep" in problem
            with pytest.raises(StorageError, match="cannot sign"):  # a row loaded before: never retargeted
                signer.sign_url(url)
            continue
        signed = signer.sign_url(url)
        fields = {k.lower(): v for k, v in parse_qsl(urlsplit(signed).query)}
        assert param in fields and fields[param] == "2024-01-01T00:00:00.0000000Z", signed


def test_azure_non_utf8_escape_is_not_signed_for_another_blob(azure_env):
    """`locations.locate` decodes an Azure blob path with `unquote` (errors='replace'), while s3:// and gs://
    use `object_key` (strict: no object has a non-UTF-8 key). `https://acct.blob.core.windows.net/c/x%FF.jpg`
    is signed for the blob `x\\ufffd.jpg`: another object than the (impossible) one written."""
    assert locate("s3://c/x%FF.jpg") is None
    location = locate(f"https://{AZURE_ACCOUNT}.blob.core.windows.net/c/x%FF.jpg")
    assert location is None or "\ufffd" not in location.key, location


def test_a_signed_url_respects_the_documented_url_length_limit(azure_env):
    """README: an image_url is at most 8,192 characters, 'the request-line limit of common web servers and
    CDNs, so GT Studio could not fetch a longer one'. Azure allows blob names of 1,024 characters of any
    kind; written as UTF-8 text the storage URL is ~1,080 characters and loads, but the signed URL
    percent-encodes each 4-byte character to 12: the platform receives a URL its own fetcher cannot request,
    and nothing (load, plan, check, run) says so. The truth: refused at load (or when signed) like any other
    over-long URL."""
    from uploader.manifest.values import MAX_URL_LENGTH

    url = f"https://{AZURE_ACCOUNT}.blob.core.windows.net/c/" + "\U0001f600" * 1024
    problem = url_problem(url, sign=True)
    if problem is not None:  # refused at load (file, line, column), and never sent if loaded before
        assert "signed URL would be about" in problem and "8192" in problem
        with pytest.raises(StorageError, match="at most 8192 can be fetched"):
            PayloadSigner(dt.timedelta(hours=1)).sign_url(url)
        return
    signed = PayloadSigner(dt.timedelta(hours=1)).sign_url(url)
    assert azure_blob_opened(signed) == ("c", "\U0001f600" * 1024)  # it does name the blob...
    assert len(signed) <= MAX_URL_LENGTH, len(signed)  # ...in a URL no CDN or fetcher takes


# --- which URLs are signed, which left alone ------------------------------------------------------------------


def test_only_attachment_fields_are_signed_everything_else_is_sent_as_written(aws_env, tmp_path):
    """Raw `data` rows and a wide video: data.image_url and every frame src (the same URL twice) are signed
    and open their object; a caption starting with s3://, a nested `extra.image_url`, metadata, an
    already-presigned https S3 URL, an unsigned https S3 URL and an Azure URL carrying a SAS are sent byte for
    byte as written (README: only image_url and frame src are storage URLs uploader signs)."""
    s3 = aws_env
    s3.objects[("photos", "a.jpg")] = b"A"
    s3.objects[("photos", "f 1.jpg")] = b"F1"
    presigned = (
        "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20990524%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20990524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bb"
    )
    azure_sas = f"https://{AZURE_ACCOUNT}.blob.core.windows.net/c/x.jpg?sv=2022-11-02&se=2099-01-01&sp=r&sig=abc"
    raw = {
        "image_url": "s3://photos/a.jpg",
        "caption": "s3://photos/a.jpg is where this came from",
        "extra": {"image_url": "s3://photos/a.jpg", "list": ["s3://photos/a.jpg", "s3://b/k"]},
    }
    lines = [
        {"reference_id": "raw", "data": raw, "metadata": {"source": "s3://photos/a.jpg"}},
        {"reference_id": "pre", "data": {"image_url": presigned}},
        {"reference_id": "plain", "data": {"image_url": "https://s3.amazonaws.com/photos/a.jpg"}},
        {"reference_id": "sas", "data": {"image_url": azure_sas}},
    ]
    manifest = tmp_path / "raw.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    video = tmp_path / "v.jsonl"
    frames = [{"frame_id": str(i), "src": "s3://photos/f%201.jpg"} for i in range(2)]
    video.write_text(json.dumps({"reference_id": "vid", "frames": frames}) + "\n")
    ledger = tmp_path / "l.db"
    with Sandbox() as box:
        for m in (manifest, video):
            result = invoke(
                "run", str(m), *LOAD, "--ledger", str(ledger), "--base-url", box.base_url,
                "--api-key", box.api_key, "--sign",
            )  # fmt: skip
            assert result.exit_code == 0, result.output
        jobs = {job["reference_id"]: job["data"] for job in box.jobs()}
    data = jobs["raw"]
    assert httpx.get(data["image_url"], timeout=10).content == b"A"
    assert data["caption"] == raw["caption"] and data["extra"] == raw["extra"]
    assert data["metadata"] == {"source": "s3://photos/a.jpg"}
    assert jobs["pre"]["image_url"] == presigned
    assert jobs["plain"]["image_url"] == "https://s3.amazonaws.com/photos/a.jpg"
    assert jobs["sas"]["image_url"] == azure_sas
    srcs = [f["src"] for f in jobs["vid"]["video_data"]["frames"]]
    assert [httpx.get(s, timeout=10).content for s in srcs] == [b"F1", b"F1"]


def test_s3_text_outside_attachments_does_not_block_a_run_without_sign(tmp_path):
    """`send/signing.ready_for_pending` looks for the substring `"s3://` anywhere in a pending row's body
    (ledger.pending_containing with PROVIDER_MARKERS), not in the attachment fields. A row whose image_url is a
    plain https URL and whose metadata records where the original lives (`{"source": "s3://raw/orig.jpg"}`,
    a common practice) is accepted by `load` without --sign, but `run` then stops before sending anything,
    exit 2, claiming the rows were 'loaded with --sign'; with --sign it demands AWS credentials for nothing
    to sign. The truth (README): only image_url and frame src are storage URLs; this row is sent as it is."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps(
            {"reference_id": "r", "image_url": "https://cdn.example/a.jpg", "metadata": {"source": "s3://raw/o.jpg"}}
        )
        + "\n"
    )
    ledger = tmp_path / "l.db"
    with Sandbox() as box:
        loaded = invoke("load", str(manifest), *LOAD, "--ledger", str(ledger))
        assert loaded.exit_code == 0, loaded.output  # the load itself accepts it (true today)
        result = invoke("run", "--ledger", str(ledger), "--base-url", box.base_url, "--api-key", box.api_key)
        created = box.stats()["jobs_created"]
    assert (result.exit_code, created) == (0, 1), result.output


def test_gs_text_outside_attachments_needs_no_google_credentials(aws_env, monkeypatch, tmp_path):
    """Same cause as above (`ready_for_pending` matches `"gs://` anywhere in the body), seen with --sign: a
    raw row whose image_url is s3:// (credentials present) and whose caption is `gs://b/k` stops before
    sending with 'cannot sign gs:// URLs: no credentials', though nothing gs:// would ever be signed (only
    image_url and frame src are). The truth: the row is sent, its s3:// image signed, the caption as written."""
    aws_env.objects[("photos", "a.jpg")] = b"A"
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    manifest = tmp_path / "m.jsonl"
    line = {"reference_id": "r", "data": {"image_url": "s3://photos/a.jpg", "caption": "gs://b/k"}}
    manifest.write_text(json.dumps(line) + "\n")
    with Sandbox() as box:
        result = invoke(
            "run", str(manifest), *LOAD, "--ledger", str(tmp_path / "l.db"), "--base-url", box.base_url,
            "--api-key", box.api_key, "--sign",
        )  # fmt: skip
        created = box.stats()["jobs_created"]
    assert (result.exit_code, created) == (0, 1), result.output


@pytest.mark.parametrize(
    "url",
    [
        "S3://photos/a.jpg",
        "GS://photos/a.jpg",
        f"https://{AZURE_ACCOUNT}.BLOB.core.windows.net/c/a.jpg",
    ],
)
def test_storage_urls_in_other_letter_cases_are_signed(url, aws_env, gcs_env, azure_env, tmp_path):
    """URL schemes and host names are case-insensitive (RFC 3986 §3.1, §3.2.2), and the load's own check
    (`url_problem`) lowercases the scheme, so `S3://photos/a.jpg` loads with --sign. But
    `locations.may_hold_storage_url` (and `sign_payload`'s first test) look for the lower-case markers
    `s3://`, `gs://`, `.blob.core.windows.net/`: the body is sent unchanged, an unsigned storage URL reaches
    the platform (the sandbox refuses it FS_0003; a platform that accepts it makes a job whose image never
    opens). The truth: signed like its lower-case spelling, or refused at load."""
    aws_env.objects[("photos", "a.jpg")] = b"A"
    manifest = write_csv(tmp_path / "m.csv", [("r", url)])
    with LoopbackApi("k") as api:
        result = invoke(
            "run", str(manifest), *LOAD, "--ledger", str(tmp_path / "l.db"), "--base-url", api.base_url,
            "--api-key", "k", "--allow-http", "--sign",
        )  # fmt: skip
        sent = [json.loads(raw)["data"]["image_url"] for raw in api.bodies]
    assert result.exit_code == 0, result.output
    assert len(sent) == 1
    assert sent[0] != url and any(m in sent[0] for m in ("X-Amz-Signature=", "X-Goog-Signature=", "sig=")), sent


# --- the ledger keeps storage URLs; no signed URL or credential is stored, logged or exported ----------------


def test_ledger_hashes_logs_and_export_never_hold_a_signed_url_or_credential(aws_env, monkeypatch, tmp_path):
    """With a session token: the first attempt answers a 500 (a send that may have created the job, so its
    hash goes to sent_hashes), the second succeeds. The ledger's body, body_hash, sent_hashes and
    attempt_hash are the storage URL's; no signed URL, signature, session token or secret is in the ledger
    file, the --log-file, the console output or the export; a reload compares unchanged, with and without
    --sign."""
    s3 = aws_env
    s3.objects[("photos", "a b.jpg")] = b"AB"
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    manifest = write_csv(tmp_path / "m.csv", [("r", "s3://photos/a%20b.jpg")])
    ledger, log, export = tmp_path / "l.db", tmp_path / "log.jsonl", tmp_path / "out.csv"
    fail_once = Answer(500, body=b'{"success":false,"error":{"code":"FS_0000","message":"server failure"}}')
    with LoopbackApi("k", lambda i, t: fail_once if i == 0 else None) as api:
        result = invoke(
            "run", str(manifest), *LOAD, "--ledger", str(ledger), "--base-url", api.base_url, "--api-key", "k",
            "--allow-http", "--sign", "--log-file", str(log), "-vv",
        )  # fmt: skip
        raw_bodies = [raw.decode() for raw in api.bodies]
    assert result.exit_code == 0, result.output
    assert api.answers == [500, 200]
    signed = [json.loads(b)["data"]["image_url"] for b in raw_bodies]
    assert all("X-Amz-Security-Token=" in u for u in signed)  # the token travels in the URL, as it must
    assert [httpx.get(u, timeout=10).content for u in signed] == [b"AB", b"AB"]
    ((body, body_hash, sent_hashes, attempt_hash),) = db_rows(
        ledger, "SELECT body, body_hash, sent_hashes, attempt_hash FROM jobs"
    )
    assert json.loads(body)["data"]["image_url"] == "s3://photos/a%20b.jpg"
    assert body_hash in (sent_hashes or "") and attempt_hash in (None, body_hash)
    for wire in raw_bodies:  # no hash of what went on the wire is kept
        for hasher in (hashlib.sha256, hashlib.md5, hashlib.sha1):
            assert hasher(wire.encode()).hexdigest() not in (sent_hashes or "") + body_hash
    assert invoke("export", "-o", str(export), "--ledger", str(ledger)).exit_code == 0
    outputs = {
        "ledger": ledger.read_bytes().decode("latin-1")
        + "".join(p.read_bytes().decode("latin-1") for p in tmp_path.glob("l.db-*")),
        "log": log.read_text(),
        "console": result.output,
        "export": export.read_text(),
    }
    endpoint_path = s3.endpoint.removeprefix("http://") + "/photos"
    for where, text in outputs.items():
        for secret in (SESSION_TOKEN, SECRET_KEY, "X-Amz-Signature", "X-Amz-Credential", endpoint_path):
            assert secret not in text, (where, secret)
    # The same file again, without --sign: the same load (nothing to do). A copy plus one row, with --sign:
    # merged, the storage-URL row unchanged (its hash is the storage URL's, not a signed body's).
    same = invoke("load", str(manifest), *LOAD, "--ledger", str(ledger))
    assert same.exit_code == 0 and "already loaded with the same options" in same.output, same.output
    copy = tmp_path / "copy.csv"
    copy.write_text(manifest.read_text() + "new,https://cdn.example/n.jpg\n")
    again = invoke("load", str(copy), *LOAD, "--ledger", str(ledger), "--sign")
    assert again.exit_code == 0 and "1 new, 1 unchanged, 0 updated, 0 conflicting" in again.output, again.output


def test_a_refusal_quoting_the_signed_url_does_not_store_its_credentials(aws_env, monkeypatch, tmp_path):
    """The sandbox (as the platform) answers FS_0007 `attachment not accessible: <the URL it got>` for an
    attachment it cannot open. The URL it got is uploader's presigned URL, carrying X-Amz-Security-Token (the
    STS session token) and a signature valid for --url-ttl. `api/client._scrub` removes only the API key from
    stored messages, so the ledger's error_message and `uploader export` (a CSV people mail around) hold the
    session token and a working link to a private object. The truth (the brief/README spirit: the ledger
    keeps storage URLs, never signed ones; session tokens never stored): the stored message names the
    storage URL, or the signed URL without its query."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    ledger, export = tmp_path / "l.db", tmp_path / "out.csv"
    manifest = write_csv(tmp_path / "m.csv", [("r", "s3://_sandbox/files/page.html")])
    with Sandbox(SandboxConfig(check_attachments=True)) as box:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", box.base_url)  # the object is one of the sandbox's own files
        result = invoke(
            "run", str(manifest), *LOAD, "--ledger", str(ledger), "--base-url", box.base_url,
            "--api-key", box.api_key, "--sign",
        )  # fmt: skip
    assert result.exit_code == 3, result.output
    ((code, message),) = db_rows(ledger, "SELECT error_code, error_message FROM jobs")
    assert code == "FS_0007"
    assert invoke("export", "-o", str(export), "--ledger", str(ledger)).exit_code == 0
    shown = invoke("show", "r", "--ledger", str(ledger)).output
    for where, text in (("ledger", message), ("export", export.read_text()), ("show", shown)):
        assert SESSION_TOKEN not in text and "X-Amz-Signature=" not in text, where


# --- expiry: caps, the readers, and a resend hours later -----------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "ttl", "capped"),
    [
        ("s3", dt.timedelta(days=30), dt.timedelta(days=7)),
        ("gcs", dt.timedelta(days=30), dt.timedelta(days=7)),
        ("azure", dt.timedelta(days=400), dt.timedelta(days=365)),
        ("s3", dt.timedelta(seconds=1), dt.timedelta(seconds=1)),
        ("gcs", dt.timedelta(hours=5, seconds=7), dt.timedelta(hours=5, seconds=7)),
        ("azure", dt.timedelta(minutes=90), dt.timedelta(minutes=90)),
    ],
)
def test_ttl_is_capped_and_the_expiry_reader_reads_uploaders_own_urls(provider, ttl, capped, request):
    """--url-ttl above a provider's maximum is capped (S3 and Google V4 7 days, Azure a year: README /
    MAX_TTL); `manifest.signed.url_expiry` reads the URL uploader itself made as expiring at signing + the
    capped ttl (to the second), with the right scheme."""
    request.getfixturevalue({"s3": "aws_env", "gcs": "gcs_env", "azure": "azure_env"}[provider])
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    url = PayloadSigner(ttl).sign_url(storage_url(provider, "dir/a b+c.jpg"))
    after = dt.datetime.now(dt.UTC)
    expiry = url_expiry(url)
    assert expiry is not None
    assert expiry.scheme == {"s3": "aws-v4", "gcs": "google-v4", "azure": "azure-sas"}[provider]
    assert before + capped <= expiry.expires <= after + capped, (url, expiry)
    assert url_problem(url) is None  # and the load would accept the signed form too


def test_a_resend_hours_later_gets_a_fresh_url_never_the_old_one(aws_env, monkeypatch, tmp_path):
    """Run 1 is refused permanently (FS_0004: failed); `retry --all`; run 2 happens "5 hours later" (boto3's
    clock and the verifier's moved). The URL of run 2 is signed at the later time, its own expiry is read
    as later + ttl, it opens the object then, while the URL of run 1 (--url-ttl 2h) has expired: the resend
    never reuses it. The ledger still holds the storage URL."""
    import botocore.auth

    s3 = aws_env
    s3.objects[("photos", "a.jpg")] = b"A"
    manifest = write_csv(tmp_path / "m.csv", [("r", "s3://photos/a.jpg")])
    ledger = tmp_path / "l.db"
    refused = Answer(400, body=b'{"success":false,"error":{"code":"FS_0004","message":"data is empty"}}')
    later = dt.timedelta(hours=5)
    with LoopbackApi("k", lambda i, t: refused if i == 0 else None) as api:
        common = ["--ledger", str(ledger), "--base-url", api.base_url, "--api-key", "k", "--allow-http", "--sign"]
        first = invoke("run", str(manifest), *LOAD, *common, "--url-ttl", "2h")
        assert first.exit_code == 3, first.output
        assert invoke("retry", "--all", "--ledger", str(ledger)).exit_code == 0
        real_now = botocore.auth.get_current_datetime
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: real_now(*a, **k) + later)
        second = invoke("run", *common, "--url-ttl", "2h")
        assert second.exit_code == 0, second.output
        sent = [json.loads(raw)["data"]["image_url"] for raw in api.bodies]
    assert api.answers == [400, 200] and sent[0] != sent[1]
    expiries = [url_expiry(u).expires for u in sent]
    assert expiries[1] - expiries[0] >= later - dt.timedelta(seconds=60)
    s3.clock = lambda: dt.datetime.now(dt.UTC) + later
    assert httpx.get(sent[1], timeout=10).content == b"A"
    assert httpx.get(sent[0], timeout=10).status_code == 403 and s3.log[-1][3] == "expired"
    assert json.loads(db_rows(ledger, "SELECT body FROM jobs")[0][0])["data"]["image_url"] == "s3://photos/a.jpg"


# --- check --sign --------------------------------------------------------------------------------------------


def test_check_sign_with_two_spellings_of_one_object(aws_env, monkeypatch, tmp_path):
    """`preflight.check_attachments` maps each signed URL back to its storage URL in a dict
    (`_signed_form`: storage_url[signed] = url). Two spellings of one key (`a+b.jpg`, `a%2Bb.jpg`; `café`
    written raw or escaped) sign, within the same second, to the identical URL: the second overwrites the
    first, the second verdict finds no mapping, and `in_flight.pop(verdict.url)` raises KeyError: exit 1 with
    a traceback whose last line is the presigned URL (a credential for a week) on stderr, no verdict kept.
    The truth: both rows checked (exit 0), or the same verdict for both."""
    import botocore.auth

    aws_env.objects[("photos", "a+b.jpg")] = b"\xff\xd8ab"
    fixed = dt.datetime(2026, 1, 2, 3, 4, 5)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: fixed)  # the same second
    aws_env.clock = lambda: dt.datetime(2026, 1, 2, 3, 5, tzinfo=dt.UTC)
    manifest = write_csv(tmp_path / "m.csv", [("r1", "s3://photos/a+b.jpg"), ("r2", "s3://photos/a%2Bb.jpg")])
    ledger = tmp_path / "l.db"
    result = invoke("check", str(manifest), *LOAD, "--ledger", str(ledger), "--sign", catch=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 0, result.output
    verdicts = dict(db_rows(ledger, "SELECT url, verdict FROM urls"))
    assert verdicts == {"s3://photos/a+b.jpg": "ok", "s3://photos/a%2Bb.jpg": "ok"}


def test_check_sign_keeps_verdicts_under_storage_urls_for_awkward_keys(aws_env, tmp_path):
    """`check --sign` requests the signed form through aiohttp (whose URL handling re-quotes paths) and
    keeps each verdict under the storage URL: every awkward key checks `ok`, a missing object `http_error`;
    no signed URL is stored in the urls table or the jobs' errors."""
    s3 = aws_env
    keys = [k for k in AWKWARD_KEYS if not k.startswith("k" * 10)]
    for key in keys:
        s3.objects[("photos", key)] = b"\xff\xd8"
    rows = [(f"r{i}", storage_url("s3", key)) for i, key in enumerate(keys)] + [("gone", "s3://photos/gone.jpg")]
    manifest = write_csv(tmp_path / "m.csv", rows)
    ledger = tmp_path / "l.db"
    result = invoke("check", str(manifest), *LOAD, "--ledger", str(ledger), "--sign")
    assert result.exit_code == 3, result.output
    verdicts = dict(db_rows(ledger, "SELECT url, verdict FROM urls"))
    assert verdicts == {url: ("http_error" if ref == "gone" else "ok") for ref, url in rows}
    dump = json.dumps(db_rows(ledger, "SELECT * FROM urls") + db_rows(ledger, "SELECT * FROM jobs"), default=str)
    assert "X-Amz-Signature" not in dump and "X-Amz-Credential" not in dump


# --- missing or broken credentials: one line, before anything is sent, no secret -----------------------------


def _run_sandbox(manifest: Path, ledger: Path, *extra: str):
    with Sandbox() as box:
        result = invoke(
            "run", str(manifest), *LOAD, "--ledger", str(ledger), "--base-url", box.base_url,
            "--api-key", box.api_key, "--sign", *extra, catch=True,
        )  # fmt: skip
        return result, box.stats()["jobs_created"]


def _one_error_line(result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_missing_gcs_and_azure_credentials_are_one_line_before_sending(monkeypatch, tmp_path, rsa_key):
    """No GOOGLE_APPLICATION_CREDENTIALS; a key file whose private key is garbage holding a secret-looking
    string; an authorized-user file (client secret inside); no Azure key: each is one error line naming what
    to set, exit 1, nothing created, and none of the file's secret material printed."""
    pytest.importorskip("google.cloud.storage")
    pytest.importorskip("azure.storage.blob")
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY"):
        monkeypatch.delenv(name, raising=False)
    gs = write_csv(tmp_path / "g.csv", [("r", "gs://photos/a.jpg")])
    az = write_csv(tmp_path / "a.csv", [("r", f"https://{AZURE_ACCOUNT}.blob.core.windows.net/c/a.jpg")])
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "type": "service_account",
                "client_email": "x@y.iam.gserviceaccount.com",
                "token_uri": "https://oauth2.googleapis.com/token",
                "private_key": "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n",
            }
        )
    )
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "TOPSECRETCLIENT"}))
    cases = [(gs, None, "GOOGLE_APPLICATION_CREDENTIALS"), (gs, bad, "service account"), (gs, user, "service")]
    cases.append((az, None, "AZURE_STORAGE_CONNECTION_STRING"))
    for i, (manifest, key_file, says) in enumerate(cases):
        if key_file is None:
            monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        else:
            monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        result, created = _run_sandbox(manifest, tmp_path / f"l{i}.db")
        line = _one_error_line(result)
        assert result.exit_code == 1 and created == 0, result.output
        assert says in line and "TOPSECRET" not in result.output, line


def test_a_malformed_azure_key_stops_the_run_in_one_line_without_the_key(monkeypatch, tmp_path):
    """An account key that is not base64 cannot be noticed before signing (it is only used then): the run
    stops on one line, exit 1, the row pending again, and the key itself is not printed."""
    pytest.importorskip("azure.storage.blob")
    secret = "NotBase64-TOPSECRET-key!!"
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountName={AZURE_ACCOUNT};AccountKey={secret}")
    manifest = write_csv(tmp_path / "a.csv", [("r", f"https://{AZURE_ACCOUNT}.blob.core.windows.net/c/a.jpg")])
    result, created = _run_sandbox(manifest, tmp_path / "l.db")
    _one_error_line(result)
    assert result.exit_code == 1 and created == 0
    assert "TOPSECRET" not in result.output
    assert db_rows(tmp_path / "l.db", "SELECT status, error_message FROM jobs") == [("pending", None)]


@pytest.mark.parametrize(
    "setting",
    [
        {"AWS_SECRET_ACCESS_KEY": None},  # PartialCredentialsError
        {"AWS_PROFILE": "no-such-profile"},  # ProfileNotFound
        {"AWS_DEFAULT_REGION": "us east 1"},  # InvalidRegionError
        {"GOOGLE_APPLICATION_CREDENTIALS": "[]"},  # AttributeError: 'list' object has no attribute 'keys'
    ],
    ids=["partial-aws-keys", "unknown-profile", "bad-region", "gcs-key-file-a-json-list"],
)
def test_broken_credentials_are_one_error_line(setting, aws_env, monkeypatch, tmp_path):
    """`storage/signing.signer_for` turns only ImportError into a StorageError, and `S3Signer.__init__` only
    checks `get_credentials() is None`; botocore raises PartialCredentialsError (AWS_ACCESS_KEY_ID without a
    secret), ProfileNotFound, InvalidRegionError; `GcsSigner` catches only OSError/ValueError. Each escapes as
    an uncaught exception: `uploader run --sign` prints a ~40-line traceback (exit 1) instead of the README's
    'one error line naming what to install or set'. Nothing is sent (true today)."""
    ((name, value),) = setting.items()
    if name == "GOOGLE_APPLICATION_CREDENTIALS":
        pytest.importorskip("google.cloud.storage")
        (tmp_path / "k.json").write_text(value)
        monkeypatch.setenv(name, str(tmp_path / "k.json"))
        manifest = write_csv(tmp_path / "m.csv", [("r", "gs://photos/a.jpg")])
    else:
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
        manifest = write_csv(tmp_path / "m.csv", [("r", "s3://photos/a.jpg")])
    result, created = _run_sandbox(manifest, tmp_path / "l.db")
    assert created == 0
    assert SECRET_KEY not in result.output
    _one_error_line(result)
    assert result.exit_code == 1


def test_the_aws_secret_and_session_token_never_appear_in_a_signing_error(aws_env, monkeypatch, tmp_path):
    """A signing failure mid-run (boto3 refusing) names the storage URL and the credentials, not the secret
    key or the session token."""
    from uploader.storage.s3 import S3Signer

    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)

    def refuse(self, location, seconds):
        raise RuntimeError("signing refused")

    monkeypatch.setattr(S3Signer, "sign", refuse)
    manifest = write_csv(tmp_path / "m.csv", [("r", "s3://photos/a.jpg")])
    result, created = _run_sandbox(manifest, tmp_path / "l.db")
    line = _one_error_line(result)
    assert result.exit_code == 1 and created == 0
    assert "s3://photos/a.jpg" in line
    for secret in (SECRET_KEY, SESSION_TOKEN):
        assert secret not in result.output


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
