"""Secrets and exposure: the API key never lands in any byte uploader produces; files are private; plain http
and non-http(s) manifest URLs are refused.

Broader than tests/test_run.py::test_api_key_never_written: every command (run, retry, reconcile, status,
export in all three formats), the failure paths (wrong key, legacy bare 401, server errors and dropped
connections, retries exhausted), both ways of passing the key (--api-key and PLAYMENT_API_KEY), real
subprocesses (every byte of stdout/stderr) and in-process runs with every logger at DEBUG, and then every
file under the working folder (ledger, -wal, -shm, exports, the sandbox's journal, temp files), the
sandbox's /_sandbox/stats and /_sandbox/jobs, searched for the key in several encodings.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import html
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from uploader.api import ApiClient, ApiResult, masked_url
from uploader.api.client import KEY_ECHO_MIN_CHARS, _redacted, _whole_key_forms
from uploader.cli.commands import cli
from uploader.sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.slow

#: Distinctive, with the characters of a base64 key ('/', '+', '='), which JSON encoders may escape.
KEY = "upl-SECRET-7c1e/Qx+9zK="
WRONG = "upl-WRONGKEY-44d0/Zz+1="
LOAD = ["--project-id", "proj", "--work-flow-id", "wf"]


def variants(secret: str) -> list[bytes]:
    """The secret as it could appear in a file or a stream: raw, JSON-escaped, URL-quoted, base64, hex, and a
    distinctive fragment (a truncated or partly transformed copy)."""
    raw = secret.encode()
    forms = {
        raw,
        secret.replace("/", "\\/").encode(),
        urllib.parse.quote(secret, safe="").encode(),
        base64.b64encode(raw),
        raw.hex().encode(),
        secret.split("/")[0].encode(),
    }
    forms |= {f.decode().encode("utf-16-le") for f in list(forms)}  # in case something writes UTF-16
    return sorted(forms)


def leaks(data: bytes, *secrets: str) -> list[str]:
    return [f"{s!r} as {v!r}" for s in secrets for v in variants(s) if v in data]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_manifests(folder: Path) -> dict[str, Path]:
    images = folder / "images.csv"
    images.write_text(
        "reference_id,image_url,camera\n"
        + "".join(f"img-{i:03d},https://cdn.example.com/{i}.jpg,cam{i % 2}\n" for i in range(40))
    )
    video = folder / "video.csv"  # long form: frames parked in a temp store while loading
    video.write_text(
        "reference_id,frame_id,src\n"
        + "".join(f"vid-{v},f{f},https://cdn.example.com/v{v}/{f}.jpg\n" for v in range(3) for f in range(4))
    )
    raw = folder / "raw.jsonl"
    raw.write_text(
        "".join(
            json.dumps(
                {
                    "reference_id": f"raw-{i}",
                    "data": {"image_url": f"https://cdn.example.com/raw/{i}.jpg", "metadata": {"shift": [i, i + 1]}},
                }
            )
            + "\n"
            for i in range(10)
        )
    )
    more = folder / "more.csv"
    more.write_text(
        "reference_id,image_url\n" + "".join(f"more-{i},https://cdn.example.com/m/{i}.jpg\n" for i in range(5))
    )
    return {"images": images, "video": video, "raw": raw, "more": more}


class Transcript:
    """Everything the commands printed, in one place."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, bytes]] = []

    def add(self, what: str, data: str | bytes) -> None:
        self.parts.append((what, data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape")))

    def leaks(self) -> list[str]:
        return [f"{what}: {leak}" for what, data in self.parts for leak in leaks(data, KEY, WRONG)]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The folder every command works in; temp files (the frame store, export parts) land in it too."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    for name in ("PLAYMENT_API_KEY", "PLAYMENT_BASE_URL", "UPLOADER_LEDGER"):
        monkeypatch.delenv(name, raising=False)
    old_umask = os.umask(0)  # the most permissive umask: privacy must not depend on the user's
    try:
        yield tmp_path
    finally:
        os.umask(old_umask)


def subprocess_run(workdir: Path, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PLAYMENT_", "UPLOADER_"))}
    base.update(HOME=str(workdir), TMPDIR=str(workdir / "tmp"), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "uploader", *args], cwd=workdir, env=base, capture_output=True, timeout=120
    )


def invoke(transcript: Transcript, what: str, args: list[str], env: dict[str, str] | None = None):
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    transcript.add(f"{what} stdout", result.stdout_bytes)
    transcript.add(f"{what} stderr", result.stderr_bytes)
    return result


def test_api_key_is_in_no_byte_produced_and_files_are_private(workdir: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)  # every library logger at DEBUG (uploader itself has no logging)
    files = write_manifests(workdir)
    ledger = workdir / "ledger.db"
    transcript = Transcript()
    config = SandboxConfig(
        api_key=KEY,
        seed=4,
        error_rate=0.15,
        html_error_rate=0.1,
        drop_rate=0.1,
        state_file=workdir / "sandbox-journal.jsonl",
    )
    with Sandbox(config) as box:
        common = ["--ledger", str(ledger), "--base-url", box.base_url, "--quiet"]

        # 1. a real process, key on the command line, faults on: everything ends up created
        done = subprocess_run(
            workdir, ["run", str(files["images"]), *LOAD, *common, "--api-key", KEY, "--timeout", "5"]
        )
        transcript.add("run images stdout", done.stdout)
        transcript.add("run images stderr", done.stderr)
        assert done.returncode == 0, done.stderr
        assert mode(ledger) == 0o600

        # 2. a real process with a wrong key from the environment: stops at once, names neither key
        wrong = subprocess_run(workdir, ["run", str(files["raw"]), *LOAD, *common], env={"PLAYMENT_API_KEY": WRONG})
        transcript.add("wrong key stdout", wrong.stdout)
        transcript.add("wrong key stderr", wrong.stderr)
        assert wrong.returncode == 1 and b"API key" in wrong.stderr

        # 3. in process (DEBUG logs captured), key from the environment, a long-form video manifest
        env = {"PLAYMENT_API_KEY": KEY}
        result = invoke(transcript, "run video", ["run", str(files["video"]), *LOAD, *common, "--json"], env)
        assert result.exit_code == 0, result.output

        # 4. the older server: a wrong key gets a bare 401
        box.configure(legacy=True, error_rate=0.0, html_error_rate=0.0, drop_rate=0.0)
        result = invoke(
            transcript, "legacy wrong key", ["run", str(files["more"]), *LOAD, *common], {"PLAYMENT_API_KEY": WRONG}
        )
        assert result.exit_code == 1 and "API key" in result.stderr

        # 5. every request a server error: retries exhausted, rows failed with the server's messages
        box.configure(legacy=False, error_rate=1.0)
        result = invoke(transcript, "all errors", ["run", *common, "--max-attempts", "2", "--timeout", "2"], env)
        assert result.exit_code == 3, result.output

        # 6. recovery: retry, run, reconcile, status
        box.configure(error_rate=0.0)
        assert invoke(transcript, "retry", ["retry", "--all", "--ledger", str(ledger)]).exit_code == 0
        assert invoke(transcript, "run again", ["run", *common], env).exit_code == 0
        assert invoke(transcript, "reconcile", ["reconcile", *common[:-1]], env).exit_code == 0
        status = invoke(transcript, "status", ["status", "--json", "--ledger", str(ledger)])
        assert json.loads(status.stdout)["counts"]["succeeded"] == 40 + 3 + 10 + 5
        invoke(transcript, "status text", ["status", "--ledger", str(ledger)])

        # 7. exports in every format (files, and CSV on stdout)
        for name in ("out.csv", "out.jsonl", "out.parquet"):
            assert (
                invoke(
                    transcript, f"export {name}", ["export", "--ledger", str(ledger), "-o", str(workdir / name)]
                ).exit_code
                == 0
            )
            assert mode(workdir / name) == 0o600, name
        invoke(transcript, "export stdout", ["export", "--ledger", str(ledger)])

        # the sandbox's own view, over real HTTP
        for path in ("/_sandbox/stats", "/_sandbox/jobs"):
            transcript.add(path, httpx.get(box.base_url + path).content)
        assert box.stats()["requests_by_status"].get("401", 0) >= 2  # both wrong-key paths were exercised
        assert box.stats()["faults"]["drop"] > 0 and box.stats()["faults"]["error"] > 0

    # the ledger and, while any engine still holds it open, its -wal and -shm are private
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{ledger}{suffix}")
        if path.exists():
            assert mode(path) == 0o600, path
    import pyarrow.parquet as pq

    transcript.add("out.parquet as text", json.dumps(pq.read_table(workdir / "out.parquet").to_pylist()))
    transcript.add("log records", caplog.text)
    produced = sorted(p for p in workdir.rglob("*") if p.is_file())
    assert {ledger, workdir / "sandbox-journal.jsonl", workdir / "out.parquet"} <= set(produced)
    for path in produced:
        transcript.add(str(path.relative_to(workdir)), path.read_bytes())
    assert transcript.leaks() == []


# --- a server that echoes the key back --------------------------------------------------------------------


class EchoingApi(BaseHTTPRequestHandler):
    """An API that quotes the caller's key in its error envelope (status and escaping set per server)."""

    status = 400
    code = "GE_0001"
    escape_slash = False

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        key = self.headers.get("x-api-key", "")
        quoted = key.replace("/", "\\/") if self.escape_slash else key  # both are valid JSON for the same text
        # noqa below: with JSON's braces a %-template reads better than a doubled-brace format string
        body = (
            '{"success": false, "error": {"code": "%s", "message": "key %s is not allowed here", '  # noqa: UP031
            '"errors": [{"key": "%s"}]}}' % (self.code, quoted, quoted)
        ).encode()
        self.send_response(self.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def echo_server(**attributes: object) -> ThreadingHTTPServer:
    handler = type("Handler", (EchoingApi,), attributes)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


# A 400 for every row fails them all with the same code: the run stops on that systematic error (exit 1),
# after recording the refusals (where the echoed key must not get in).
ECHO_CASES = [
    pytest.param({"status": 400}, 1, id="400-verbatim"),
    pytest.param({"status": 401, "code": "auth-failure"}, 1, id="401-verbatim"),
    pytest.param({"status": 400, "escape_slash": True}, 1, id="400-json-escaped"),
    pytest.param({"status": 401, "code": "auth-failure", "escape_slash": True}, 1, id="401-json-escaped"),
]


@pytest.mark.parametrize(("server_attrs", "exit_code"), ECHO_CASES)
def test_a_server_echoing_the_key_does_not_get_it_stored(workdir: Path, server_attrs: dict, exit_code: int) -> None:
    files = write_manifests(workdir)
    ledger = workdir / "ledger.db"
    server = echo_server(**server_attrs)
    transcript = Transcript()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = invoke(
            transcript,
            "run",
            [
                "run",
                str(files["raw"]),
                *LOAD,
                "--ledger",
                str(ledger),
                "--base-url",
                url,
                "--api-key",
                KEY,
                "--quiet",
                "--max-attempts",
                "1",
                "--default-batch",
            ],
        )  # the job answers are what gets stored
        assert result.exit_code == exit_code, result.output
        # The run's own batch (the default without --default-batch): its creation meets the same echo first.
        batch = invoke(
            transcript,
            "run",
            [
                "run",
                str(files["raw"]),
                *LOAD,
                "--ledger",
                str(workdir / "b.db"),
                "--base-url",
                url,
                "--api-key",
                KEY,
                "--quiet",
                "--max-attempts",
                "1",
            ],
        )
        assert batch.exit_code == 1 and "is not allowed here" in batch.output, batch.output
    finally:
        server.shutdown()
        server.server_close()
    exported = invoke(transcript, "export", ["export", "--ledger", str(ledger), "--format", "jsonl"])
    assert "is not allowed here" in exported.stdout  # the server's message is kept, the key is not
    for path in sorted(p for p in workdir.rglob("*") if p.is_file()):
        transcript.add(path.name, path.read_bytes())
    assert transcript.leaks() == []


class SuccessEchoingApi(BaseHTTPRequestHandler):
    """An API that answers every request with success, giving the caller's key as the job's id, the batch's
    id and the status word (raw, or JSON-escaped as `\\/` or `\\u…`)."""

    escape = "none"

    def log_message(self, *args: object) -> None:
        pass

    def _key(self) -> str:
        key = self.headers.get("x-api-key", "")
        if self.escape == "slash":
            return key.replace("/", "\\/")
        if self.escape == "unicode":
            return "".join(f"\\u{ord(c):04x}" for c in key)
        return key

    def _answer(self, data: str) -> None:
        body = ('{"success": true, "data": %s}' % data).encode()  # noqa: UP031
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        sent = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        ref = json.dumps(sent.get("reference_id", ""))
        self._answer('{"job_id": "%s", "batch_id": "%s", "reference_id": %s}' % (self._key(), self._key(), ref))  # noqa: UP031

    def do_GET(self) -> None:
        self._answer(
            '{"jobs": [{"id": "%s", "reference_id": "img-000", "status": "%s"}], "batch_id": "%s", '  # noqa: UP031
            '"status": "%s"}' % ((self._key(),) * 4)
        )


@pytest.mark.parametrize("escape", ["none", "slash", "unicode"])
def test_a_success_answer_holding_the_key_is_no_answer(workdir: Path, escape: str) -> None:
    """A server that gives the key back as a job's id (or a batch's, or a status word) in a success answer:
    the ledger would hold the key and `export` would print it. Such an answer is refused as no API answer:
    no row succeeds with it, and the key is in no byte the commands print or write."""
    files = write_manifests(workdir)
    ledger = workdir / "ledger.db"
    handler = type("Handler", (SuccessEchoingApi,), {"escape": escape})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    transcript = Transcript()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for args in ([], ["--default-batch"]):
            invoke(
                transcript,
                "run",
                ["run", str(files["images"]), *LOAD, "--ledger", str(ledger), "--base-url", url, "--api-key", KEY]
                + ["--quiet", "--max-attempts", "2", *args],
            )
        invoke(transcript, "sync", ["sync", "--ledger", str(ledger), "--base-url", url, "--api-key", KEY])
    finally:
        server.shutdown()
        server.server_close()
    exported = invoke(transcript, "export", ["export", "--ledger", str(ledger), "--format", "jsonl"])
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(rows) == 40 and not [r for r in rows if r["status"] == "succeeded" or r["job_id"]]
    for path in sorted(p for p in workdir.rglob("*") if p.is_file()):
        transcript.add(path.name, path.read_bytes())
    assert transcript.leaks() == []


# --- plain http is refused unless loopback or --allow-http ---------------------------------------------------


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (to serve the sandbox on), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "http://example.com:80/",
        "HTTP://EXAMPLE.COM",
        "http://10.0.0.5:8080",
        "http://[2001:db8::1]",
    ],
)
def test_plain_http_to_a_remote_host_is_refused(workdir: Path, url: str) -> None:
    files = write_manifests(workdir)
    ledger = workdir / "ledger.db"
    result = CliRunner().invoke(
        cli, ["run", str(files["images"]), *LOAD, "--ledger", str(ledger), "--base-url", url, "--api-key", KEY]
    )
    assert result.exit_code == 2, result.output
    assert "refusing plain http" in result.stderr and "--allow-http" in result.stderr
    assert KEY not in result.output and not ledger.exists()  # refused before anything was opened or sent
    via_env = CliRunner().invoke(
        cli, ["reconcile", "--ledger", str(ledger)], env={"PLAYMENT_BASE_URL": url, "PLAYMENT_API_KEY": KEY}
    )
    assert via_env.exit_code == 2 and "refusing plain http" in via_env.stderr


@pytest.mark.parametrize(
    "url",
    [
        "ftp://api.example.com",
        "https://user:pw@api.example.com",
        "https://api.example.com/?key=1",
        "api.example.com",
        "https://",
    ],
)
def test_other_unsafe_base_urls_are_refused(workdir: Path, url: str) -> None:
    result = CliRunner().invoke(
        cli, ["reconcile", "--ledger", str(workdir / "l.db"), "--base-url", url, "--api-key", KEY]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") or result.stderr.startswith("error: ")
    assert ":pw@" not in result.stderr  # credentials are not echoed


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1?api_key=SeCrEt-31337",
        "https://api.example.com/v1#SeCrEt-31337",
        "ftp://api.example.com/?api_key=SeCrEt-31337",
        "https://api.example.com:port/?api_key=SeCrEt-31337",
        "https://SeCrEt-31337@api.example.com/",
    ],
)
def test_a_refused_base_url_is_not_quoted_with_its_query_fragment_or_credentials(workdir: Path, url: str) -> None:
    """A base URL's query, fragment and user info may hold a key: the refusal names the URL without them, and
    `uploader config` shows it masked."""
    result = CliRunner().invoke(
        cli, ["reconcile", "--ledger", str(workdir / "l.db"), "--base-url", url, "--api-key", KEY]
    )
    assert result.exit_code == 2, result.output
    assert "SeCrEt-31337" not in result.output, result.output
    shown = CliRunner().invoke(cli, ["config", "run", "--base-url", url])
    assert shown.exit_code == 0 and "SeCrEt-31337" not in shown.output and "api.example.com" in shown.output


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://api.example.com/v1", "https://api.example.com/v1"),
        ("https://api.example.com/v1?api_key=K#frag", "https://api.example.com/v1?***#***"),
        ("https://user:pw@proxy:3128/", "https://***@proxy:3128/"),
        ("user:pw@proxy:3128", "***@proxy:3128"),
        ("https://h:bad/x?k=1", "https://h:bad/x?***"),
        ("https://h/x?", "https://h/x?"),
    ],
)
def test_masked_url(url: str, shown: str) -> None:
    assert masked_url(url) == shown


ENCODED_KEYS = ["k<&>\"'K<&>\"'k<&>\"'Z", "ab/cd+ef=gh/ij+kl=mn", KEY, "sk-plain-3f9c1e7b5d2a40"]


#: HTML5's named references of the punctuation in ENCODED_KEYS.
NAMED = {"<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;", "/": "&sol;", "+": "&plus;"}


def _encodings(key: str) -> dict[str, str]:
    quoted = urllib.parse.quote(key, safe="")
    return {
        "raw": key,
        "html": html.escape(key),
        "html without quotes": html.escape(key, quote=False),
        "html decimal": "".join(f"&#{ord(c)};" for c in key),
        "html hex, no semicolons": "".join(f"&#X{ord(c):x}" for c in key),
        "html named": "".join(NAMED.get(c, c) for c in key),
        "percent upper": quoted,
        "percent lower": re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quoted),
        "percent every character": "".join(f"%{ord(c):02x}" for c in key),
        "form": urllib.parse.quote_plus(key),
        "json \\u": "".join(f"\\u{ord(c):04x}" if not c.isalnum() else c for c in key),
        "json slash": json.dumps(key)[1:-1].replace("/", "\\/"),
        "percent of html": urllib.parse.quote(html.escape(key), safe=""),
        "html of html": html.escape(html.escape(key)),
        "percent twice": urllib.parse.quote(quoted, safe=""),
        "mixed": "".join(
            (html.escape(c), urllib.parse.quote(c, safe=""), f"\\u{ord(c):04X}", c)[i % 4] for i, c in enumerate(key)
        ),
    }


@pytest.mark.parametrize("key", ENCODED_KEYS)
def test_redacted_removes_the_key_in_every_encoding_and_every_run_of_it(key: str) -> None:
    """A server or proxy quoting the key HTML-escaped, percent-encoded, JSON-escaped, twice encoded or a mix
    of these, whole or cut short after KEY_ECHO_MIN_CHARS characters: no run of the key is left once decoded."""
    for name, form in _encodings(key).items():
        for text in (form, form[: len(form) * 2 // 3]):
            out = _redacted(f"refused x-api-key: {text} (HTTP 502)", key)
            decoded = out
            for _ in range(3):
                decoded = html.unescape(urllib.parse.unquote(decoded.replace("\\/", "/")))
                decoded = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), decoded)
            runs = {key[i : i + KEY_ECHO_MIN_CHARS] for i in range(len(key) - KEY_ECHO_MIN_CHARS + 1)}
            assert not [r for r in runs if r in decoded], (name, text, out)
            assert out.startswith("refused x-api-key: ") and out.endswith(" (HTTP 502)"), (name, out)


def test_redacted_keeps_encoded_text_that_is_not_the_key() -> None:
    key = "ab/cd+ef=gh/ij+kl=mn"
    texts = ["a &amp; b &lt;c&gt; 100%20 %2F \\u0041 \\/ &#39;", "&nosuch; %zz \\q"]
    texts.append("https://x/?q=ab%2Fcd%2Be (7 of its characters: too few to tell)")
    for text in texts:
        assert _redacted(text, key) == text


def test_a_success_answer_holding_the_key_encoded_whole_is_no_answer() -> None:
    """A success answer whose data holds the key percent-encoded or HTML-escaped is refused like one holding
    it raw (its ids would be recorded); a key of plain characters adds no look-up."""
    key = "ab/cd+ef=gh/ij+kl=mn"
    forms = _whole_key_forms(key)
    assert urllib.parse.quote(key, safe="").encode() in forms
    assert urllib.parse.quote(key, safe="").lower().encode() in forms
    assert _whole_key_forms("sk-plain-3f9c1e7b5d2a40") == ()

    async def answer(body: bytes) -> ApiResult:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
        async with ApiClient("https://api.example.com", key, transport=transport) as api:
            return await api.create_job("p", b"{}")

    for form in forms:
        body = b'{"success": true, "data": {"job_id": "' + form + b'"}}'
        result = asyncio.run(answer(body))
        assert result.success is None and result.code == "not_json", (form, result)


def test_loopback_http_works_and_allow_http_permits_a_remote_host(workdir: Path) -> None:
    files = write_manifests(workdir)
    with Sandbox(SandboxConfig(api_key=KEY)) as box:
        port = box.base_url.rsplit(":", 1)[1]
        for n, url in enumerate([box.base_url, f"http://localhost:{port}"]):
            ledger = workdir / f"loop{n}.db"
            result = CliRunner().invoke(
                cli,
                [
                    "run",
                    str(files["raw"]),
                    "--project-id",
                    f"proj{n}",
                    "--work-flow-id",
                    "wf",
                    "--ledger",
                    str(ledger),
                    "--base-url",
                    url,
                    "--api-key",
                    KEY,
                    "--quiet",
                ],
            )
            assert result.exit_code == 0, result.output
    # --allow-http lets plain http to a remote host through the check (reconcile with nothing uncertain
    # sends no request, so this needs no network)
    ledger = workdir / "loop0.db"
    for flags, code in (([], 2), (["--allow-http"], 0)):
        result = CliRunner().invoke(
            cli, ["reconcile", "--ledger", str(ledger), "--base-url", "http://example.com", "--api-key", KEY, *flags]
        )
        assert result.exit_code == code, result.output
    # and really talks to a non-loopback address when this machine has one
    address = non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address to serve on")
    with Sandbox(SandboxConfig(api_key=KEY), host=address) as box:
        assert not box.base_url.startswith(("http://127.", "http://localhost"))
        args = [
            "run",
            str(files["images"]),
            *LOAD,
            "--ledger",
            str(workdir / "remote.db"),
            "--base-url",
            box.base_url,
            "--api-key",
            KEY,
            "--quiet",
        ]
        refused = CliRunner().invoke(cli, args)
        assert refused.exit_code == 2 and "refusing plain http" in refused.stderr
        allowed = CliRunner().invoke(cli, [*args, "--allow-http"])
        assert allowed.exit_code == 0, allowed.output
        assert box.stats()["jobs_created"] == 40


# --- manifest URLs: http(s) only ---------------------------------------------------------------------------

BAD_URLS = [
    "ftp://cdn.example.com/a.jpg",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "data:image/png;base64,AAAA",
    "s3://bucket/a.jpg",
    "gs://bucket/a.jpg",
    "mailto:a@example.com",
    "//cdn.example.com/a.jpg",
    "cdn.example.com/a.jpg",
    "vbscript:msgbox(1)",
    "gopher://cdn.example.com/a",
    "ws://cdn.example.com/a",
]


def manifest_with(folder: Path, shape: str, url: str) -> Path:
    good = "https://cdn.example.com/ok.jpg"
    if shape in ("image_url", "frame src"):
        path = folder / "m.csv"
        rows = (
            [["reference_id", "image_url"], ["ok", good], ["bad", url]]
            if shape == "image_url"
            else [["reference_id", "frame_id", "src"], ["v", "f1", good], ["v", "f2", url]]
        )
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    elif shape == "frames[].src":
        path = folder / "m.jsonl"
        frames = [{"frame_id": "f1", "src": good}, {"frame_id": "f2", "src": url}]
        path.write_text(json.dumps({"reference_id": "v", "frames": frames}) + "\n")
    else:
        path = folder / "m.jsonl"
        path.write_text(json.dumps({"reference_id": "r", "data": {"image_url": url}}) + "\n")
    return path


@pytest.mark.parametrize("shape", ["image_url", "frame src", "frames[].src", "data.image_url"])
def test_manifest_urls_must_be_http_or_https(workdir: Path, shape: str) -> None:
    for url in BAD_URLS:
        result = CliRunner().invoke(
            cli, ["load", str(manifest_with(workdir, shape, url)), *LOAD, "--ledger", str(workdir / "l.db")]
        )
        assert result.exit_code == 1, (url, result.output)
        assert "nothing was loaded" in result.stderr and "Traceback" not in result.output
        assert "http:// or https://" in result.stderr or "cannot fetch" in result.stderr, (url, result.stderr)
        assert not (workdir / "l.db").exists()
    for url in ("https://cdn.example.com/a.jpg", "HTTPS://CDN.EXAMPLE.COM/a.jpg", "http://cdn.example.com/a.jpg"):
        result = CliRunner().invoke(
            cli,
            ["load", str(manifest_with(workdir, shape, url)), *LOAD, "--ledger", str(workdir / f"ok-{len(url)}.db")],
        )
        assert result.exit_code == 0, (url, result.output)
