"""Adversarial tests of the attachment preflight (`uploader check`, `run --preflight`), of signing at send time
(`--sign`), of secrets in what uploader writes, and of the config files.

Each test states the guarantee it attacks. The ones that fail show a product bug (see each docstring); the
others pin a guarantee that held under attack. Servers: tests/test_adversary_attachments_server.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import os
import sqlite3
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sigv4_verifier import ACCESS_KEY, REGION, SECRET_KEY, SigV4Verifier
from test_adversary_attachments_server import JPEG, AttachmentHost, KeyQuotingApi

from uploader.api import UrlCheck, check_urls, judge
from uploader.cli.commands import cli
from uploader.sandbox import Sandbox
from uploader.storage import PayloadSigner

LOAD = ["--project-id", "proj", "--work-flow-id", "wf"]


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("reference_id,image_url\n" + "".join(f"{r},{u}\n" for r, u in rows))
    return path


def statuses(ledger: Path) -> dict[str, tuple[str, str | None, str | None]]:
    with sqlite3.connect(ledger) as db:
        return {
            r: (s, c, m)
            for r, s, c, m in db.execute("SELECT reference_id, status, error_code, error_message FROM jobs")
        }


def check(urls: list[str], **kw) -> dict[str, UrlCheck]:
    async def go() -> dict[str, UrlCheck]:
        return {c.url: c async for c in check_urls(urls, **kw)}

    return asyncio.run(go())


def check_cli(tmp_path: Path, rows: list[tuple[str, str]], *extra: str):
    """`uploader check` of a manifest of `rows`: (result, {reference_id: (status, code, message)})."""
    ledger = tmp_path / "l.db"
    manifest = write_manifest(tmp_path / "m.csv", rows)
    result = invoke("check", str(manifest), *LOAD, "--ledger", str(ledger), "--check-timeout", "3", *extra)
    return result, statuses(ledger)


@pytest.fixture
def host():
    with AttachmentHost() as other, AttachmentHost(redirect_to="") as h:
        h.redirect_to = other.url("ok.jpg")
        yield h


# --- preflight: rows that would be sent with an attachment annotators cannot open ----------------------------


def test_a_204_no_content_answer_is_not_an_openable_attachment(host, tmp_path):
    """BUG: an attachment URL answering `204 No Content` (to HEAD and GET alike) is judged `ok`, so the row is
    sent with a link that has no file behind it. api/attachments.py `judge` treats every status below 300 as
    a file (`status >= 300` is the only test before the content type), and `_length` reads no length from a
    204. Fix: only 200/203/206 are a file; 204/205 (and other 2xx) → `empty` (or http_error)."""
    result, rows = check_cli(tmp_path, [("good", host.url("ok.jpg")), ("nothing", host.url("no-content.jpg"))])
    assert rows["good"][0] == "pending"
    assert rows["nothing"][0] == "blocked", (rows, result.output)
    assert result.exit_code == 3


@pytest.mark.parametrize("ctype", ["application/vnd.api+json", "application/hal+json", "application/ld+json"])
def test_json_api_error_types_are_not_media(ctype):
    """BUG: `judge` calls `application/json` and `application/problem+json` not_media, but any other JSON
    type (`+json` structured suffix, RFC 6839: JSON:API errors, HAL, JSON-LD) passes as a file: an API's
    error answer served at an image URL is sent as the job's image. api/attachments.py NOT_MEDIA_TYPES is an
    exact-match list. Fix: treat `application/*+json` and `application/*+xml` (but not `image/svg+xml`) as
    not_media."""
    assert judge(200, ctype, 40)[0] == "not_media"
    assert judge(200, "image/svg+xml", 40)[0] == "ok"  # a real image with a structured suffix stays ok


def test_a_url_whose_get_is_refused_is_not_ok_because_its_head_is(host, tmp_path):
    """BUG (design gap): the preflight asks only HEAD when HEAD answers 2xx; a URL whose HEAD is 200
    image/jpeg but whose GET is 403 (a link presigned for `head_object` instead of `get_object`, a CDN rule
    that blocks GET) is judged ok and the job is sent with it (the row goes `succeeded`), though annotators,
    who GET, cannot open it. api/attachments.py `_check`: the one-byte GET is asked only when HEAD is refused
    (`_HEAD_REFUSED`). Fix: decide on the one-byte GET (`Range: bytes=0-0`), what annotators do, or confirm a
    HEAD's ok with it."""
    ledger = tmp_path / "l.db"
    manifest = write_manifest(tmp_path / "m.csv", [("a", host.url("head-only.jpg")), ("b", host.url("ok.jpg"))])
    with Sandbox() as box:
        result = invoke(
            "run", str(manifest), *LOAD, "--ledger", str(ledger), "--base-url", box.base_url,
            "--api-key", box.api_key, "--preflight", "--check-timeout", "3",
        )  # fmt: skip
        sent = {job["reference_id"] for job in box.jobs()}
    assert httpx.get(host.url("head-only.jpg")).status_code == 403  # what an annotator's browser gets
    assert "b" in sent
    assert "a" not in sent, f"sent with an attachment whose GET is 403: {statuses(ledger)['a']} {result.output}"
    assert statuses(ledger)["a"][0] == "blocked"


# --- preflight: rows blocked that are fine ---------------------------------------------------------------


def test_exactly_five_redirects_are_followed_as_documented(host):
    """BUG: README: "redirects followed up to 5"; a URL behind exactly 5 redirects is judged `unreachable`
    with "more than 5 redirects" (and its row blocked). api/attachments.py `_check` passes
    `max_redirects=5` to aiohttp, whose TooManyRedirects fires when the redirect count *reaches* the limit,
    so only 4 are followed. Fix: pass `max_redirects + 1` to aiohttp (or raise the documented number)."""
    got = check([host.url("chain/4.jpg"), host.url("chain/5.jpg"), host.url("chain/6.jpg")], timeout=3)
    assert got[host.url("chain/4.jpg")].verdict == "ok"
    assert got[host.url("chain/6.jpg")].verdict == "unreachable"  # 6 is more than 5: refused, rightly
    five = got[host.url("chain/5.jpg")]
    assert (five.verdict, five.detail) == ("ok", "image/jpeg"), five


def test_a_429_from_the_attachment_host_does_not_block_the_row_for_good(host, tmp_path):
    """BUG: a CDN answering one burst request `429 Too Many Requests` (Retry-After: 1) gets the row blocked
    as `url_http_error: HTTP 429`, and the verdict is stored until `retry --blocked`: a fine file is held back
    by the checker's own burst (50 checks/s per host by default). api/attachments.py `_check`/`judge`: a
    429 (and 502/503/504) is a final verdict, never asked again. Fix: retry a 429/503 after its Retry-After
    (bounded), or call it `unreachable` without storing it as a verdict."""
    result, rows = check_cli(tmp_path, [("fine", host.url("throttled.jpg"))])
    assert httpx.get(host.url("throttled.jpg")).status_code == 200  # the file is there
    assert rows["fine"][0] == "pending", (rows, result.output)


def test_a_head_saying_content_length_zero_is_confirmed_before_the_row_is_blocked(host, tmp_path):
    """BUG: a server that answers HEAD with `Content-Length: 0` (frameworks that do not render the body for a
    HEAD; RFC 9110 §9.3.2 lets a HEAD omit or misstate what a GET would send) gets a fine image blocked as
    `url_empty`, though GET serves the bytes. api/attachments.py `judge(..., length=0)` decides on the HEAD
    alone. Fix: when the HEAD says 0 bytes, ask the one-byte GET (its 416 or Content-Range total is the
    file's real size) before calling it empty."""
    assert httpx.get(host.url("head-zero.jpg")).content == JPEG
    result, rows = check_cli(tmp_path, [("fine", host.url("head-zero.jpg"))])
    assert rows["fine"][0] == "pending", (rows, result.output)


# --- preflight guarantees that held ----------------------------------------------------------------------


def test_redirect_loops_and_non_http_redirects_block_and_cross_origin_redirects_are_followed(host, tmp_path):
    """Pinned: a redirect loop and a redirect to file:// are `unreachable` (blocked, with the reason); a
    redirect to another origin that serves the file is ok."""
    result, rows = check_cli(
        tmp_path,
        [
            ("loop", host.url("loop.jpg")),
            ("file", host.url("file-scheme.jpg")),
            ("moved", host.url("elsewhere.jpg")),
            ("missing", host.url("missing.jpg")),
        ],
    )
    assert result.exit_code == 3, result.output
    assert rows["loop"][:2] == ("blocked", "url_unreachable") and "redirects" in (rows["loop"][2] or "")
    assert rows["file"][:2] == ("blocked", "url_unreachable")
    assert rows["missing"][:2] == ("blocked", "url_http_error") and "HTTP 404" in (rows["missing"][2] or "")
    assert rows["moved"][0] == "pending"


@pytest.mark.slow
def test_huge_and_slow_answers_are_bounded(host):
    """Pinned: a GET fallback that ignores the range and streams 1 GiB slowly is judged from its headers (the
    body is not read), and a server that holds its headers back 5 s is `unavailable` (for now) after --check-timeout."""
    started = time.monotonic()
    got = check([host.url("huge.jpg"), host.url("slow.jpg")], timeout=1.0)
    elapsed = time.monotonic() - started
    assert got[host.url("huge.jpg")].verdict == "ok" and got[host.url("huge.jpg")].length == 1 << 30
    assert got[host.url("slow.jpg")].verdict == "unavailable"  # not stored: the next preflight asks again
    assert got[host.url("slow.jpg")].detail.startswith("timed out")
    assert elapsed < 3.0, elapsed


# --- signing (--sign) against the strict SigV4 verifier ---------------------------------------------------

OBJECTS = {
    ("photos", "cats/tom 1.jpg"): JPEG,
    ("photos", "what?.jpg"): JPEG,
    ("photos", "hash#tag.jpg"): JPEG,
    ("photos", "a~b.jpg"): JPEG,
    ("photos", "p/ü+ß.jpg"): JPEG,
    ("photos", "q'!()*$@:;=&.jpg"): JPEG,
}


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """The verifier as the S3 endpoint, with the test credentials (and a session token full of `+/=`)."""
    with SigV4Verifier(dict(OBJECTS)) as verifier:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SECURITY_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzE+ab/cd==xy+/=")
        monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", verifier.endpoint)
        yield verifier


def test_odd_s3_keys_sign_to_urls_the_strict_verifier_accepts(s3, tmp_path):
    """Pinned: `~`, non-ASCII with `+`, and RFC 3986 sub-delims in a key, with a session token holding `+/=`,
    sign to URLs that the independent SigV4 verifier accepts, through the preflight's own HTTP client
    (aiohttp/yarl re-quoting did not break them) and httpx alike; the secret key is in no URL."""
    keys = ["a~b.jpg", "p/ü+ß.jpg", "q'!()*$@:;=&.jpg"]
    result, rows = check_cli(tmp_path, [(f"k{i}", f"s3://photos/{k}") for i, k in enumerate(keys)], "--sign")
    assert result.exit_code == 0, result.output
    assert {s for s, _, _ in rows.values()} == {"pending"}
    # HEAD is refused (the method is part of a presigned GET's signature); the one-byte GET must verify.
    gets = [(status, why) for method, _, status, why in s3.log if method == "GET"]
    assert gets == [(200, None)] * len(keys), s3.log
    signer = PayloadSigner(dt.timedelta(days=30))  # capped at 7 days
    for key in keys:
        url = signer.sign_url(f"s3://photos/{key}")
        assert "X-Amz-Expires=604800" in url and SECRET_KEY not in urllib.parse.unquote(url)
        assert (httpx.get(url).status_code, httpx.get(url).content) == (200, JPEG)


@pytest.mark.parametrize(
    ("storage_url", "key"),
    [
        ("s3://photos/cats/tom%201.jpg", "cats/tom 1.jpg"),
        ("s3://photos/what%3F.jpg", "what?.jpg"),
        ("s3://photos/hash%23tag.jpg", "hash#tag.jpg"),
    ],
)
def test_a_percent_encoded_s3_key_signs_the_object_it_names(s3, tmp_path, storage_url, key):
    """BUG: a key with a space, `?` or `#` cannot be signed. The manifest refuses them raw and says so:
    "has '?' or '#', which a storage URL cannot carry (percent-encode them in the key)" (manifest/values.py
    `storage_url_problem`; whitespace is refused too), but `storage.locations.locate` keeps an s3:// (and
    gs://) key percent-encoded (`key = parts.path[1:]`, locations.py:52, while the Azure branch unquotes), so
    `what%3F.jpg` is signed as the key `what%3F.jpg` (boto3 sends `what%253F.jpg`): the object is not found
    (404), `check --sign` blocks a fine row, and `run --sign` without --preflight sends a dead link. Fix:
    `unquote(parts.path[1:])` for s3/gs in `locate` (and say so in the README)."""
    url = PayloadSigner(dt.timedelta(hours=1)).sign_url(storage_url)
    answer = httpx.get(url)
    assert s3.log[-1][3] is None  # the signature itself is accepted: the wrong object is what fails
    assert (answer.status_code, answer.content) == (200, OBJECTS[("photos", key)]), (url, answer.status_code)
    result, rows = check_cli(tmp_path, [("r", storage_url)], "--sign")
    assert rows["r"][0] == "pending", (rows, result.output)


# --- secrets ---------------------------------------------------------------------------------------------


def _run_against(api_url: str, key: str, folder: Path):
    manifest = write_manifest(folder / "m.csv", [(f"r{i}", f"https://cdn.example.com/{i}.jpg") for i in range(3)])
    return invoke(
        "run", str(manifest), *LOAD, "--ledger", str(folder / "l.db"), "--base-url", api_url,
        "--api-key", key, "--max-attempts", "1", "--default-batch", "--log-file", str(folder / "log.jsonl"),
    )  # fmt: skip


def _files_holding(folder: Path, needle: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and needle.encode() in p.read_bytes())


def test_a_key_echoed_html_escaped_is_not_stored(tmp_path):
    """BUG: a proxy's 502 page quoting the request's x-api-key HTML-escaped (`&lt;` `&amp;` `&quot;` …) lands
    in the ledger's error_message: the key, in a form any browser or `html.unescape` turns back. Redaction
    (api/client.py `_redact`/`_redacted`) looks only for the key's raw characters (and raw 8-character runs),
    and with `<&>"'` every few characters no raw run of 8 survives the escaping. Fix: redact the key's
    encoded forms too (HTML-escaped, percent-encoded in either case, JSON `\\u` escapes) — or store no body
    snippet of a non-JSON answer that holds any 8-character run of an encoded form of the key."""
    key = "k<&>\"'K<&>\"'k<&>\"'Z"
    with KeyQuotingApi("html") as api:
        result = _run_against(api.base_url, key, tmp_path)
    escaped = html.escape(key)
    assert result.exit_code in (1, 3), result.output
    assert escaped not in result.output and key not in result.output
    assert _files_holding(tmp_path, escaped) == [] and _files_holding(tmp_path, key) == []


def test_a_key_echoed_url_quoted_is_neither_printed_nor_stored(tmp_path):
    """BUG: an error message naming the request URL with the key percent-encoded
    (`api_key=ab%2Fcd%2Bef…`) is printed on stderr ("the first 3 rows sent were all refused with GE_0001: …")
    and stored in the ledger: tests/test_secrets.py counts the URL-quoted form as a leak, but the client
    only redacts raw text (api/client.py `_redacted`); a base64-style key (`/`, `+`, `=` every few
    characters) keeps no raw 8-character run once quoted. Fix: redact `quote(key, safe="")` (upper- and
    lower-case hex) alongside the key."""
    key = "ab/cd+ef=gh/ij+kl=mn"
    with KeyQuotingApi("urlquoted") as api:
        result = _run_against(api.base_url, key, tmp_path)
    quoted = urllib.parse.quote(key, safe="")
    assert result.exit_code == 1, result.output
    assert quoted not in result.output, result.output
    assert _files_holding(tmp_path, quoted) == []


def test_a_key_with_regex_and_html_characters_echoed_verbatim_is_redacted(tmp_path):
    """Pinned: a key made of regex metacharacters echoed verbatim in a JSON error is in no output nor file,
    and the report's HTML holds neither it nor its HTML-escaped form."""
    key = r".*+?[x](y){2}|^$\d<b>&"
    with KeyQuotingApi("json") as api:
        result = _run_against(api.base_url, key, tmp_path)
    assert result.exit_code == 1, result.output
    report = invoke("report", "--ledger", str(tmp_path / "l.db"), "-o", str(tmp_path / "r.html"))
    assert report.exit_code in (0, 3), report.output
    show = invoke("show", "r0", "--ledger", str(tmp_path / "l.db"))
    for text in (key, html.escape(key), json.dumps(key)[1:-1]):
        assert text not in result.output and text not in report.output and text not in show.output
        assert _files_holding(tmp_path, text) == []
    assert "[redacted]" in show.output or "[redacted]" in result.output


def test_a_key_in_the_base_url_is_not_printed(tmp_path):
    """BUG: `--base-url 'https://api.example.com/v1?api_key=KEY'` is refused (rightly), but the refusal
    quotes the whole URL, key included, on stderr — api/endpoint.py:42 `must not have a query or fragment:
    {text!r}` — and `uploader config` prints the base URL verbatim (`base_url  https://…?api_key=KEY  flag`),
    though it shows the API key itself only as "set". Fix: say the query is not allowed without echoing it
    (or redact the key / the query's values), and mask a base URL's query in `uploader config`."""
    key = "SeCrEtKeY-31337"
    url = f"https://api.example.com/v1?api_key={key}"
    ledger = tmp_path / "l.db"
    write_manifest(tmp_path / "m.csv", [("a", "https://cdn.example.com/a.jpg")])
    assert invoke("load", str(tmp_path / "m.csv"), *LOAD, "--ledger", str(ledger)).exit_code == 0
    result = invoke("run", "--ledger", str(ledger), "--api-key", key, "--base-url", url)
    assert result.exit_code == 2 and "query" in result.output
    assert key not in result.output, result.output
    shown = invoke("config", "run", "--api-key", key, "--base-url", url)
    assert shown.exit_code == 0
    assert key not in shown.output, shown.output


# --- config files ----------------------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """An empty working folder and user config folder; no UPLOADER_/PLAYMENT_ variable."""
    for name in list(os.environ):
        if name.startswith(("UPLOADER_", "PLAYMENT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    user = tmp_path / "xdg" / "uploader" / "config.toml"
    user.parent.mkdir(parents=True)
    return work, user


def settings(*args: str, env: dict[str, str] | None = None) -> dict:
    result = invoke("config", *args, "--json", env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["settings"]


def test_the_project_file_beats_the_user_file_even_from_a_command_table(folders):
    """BUG: precedence is "./uploader.toml profile > user config", but a setting in the user file's command
    table (`[default.run] timeout = 5`) beats the same setting at the project file's profile level
    (`[default] timeout = 10`): `run` uses 5, from the user file. cli/config.py `read_profile` merges the
    files per scope and `Profile.defaults_for` lets the command scope override the shared scope whatever
    file each came from. Fix: resolve each key across scopes within a file first, then let the project file
    win over the user file (or rank (file, scope) pairs with the file first)."""
    work, user = folders
    user.write_text("[default.run]\ntimeout = 5\n")
    (work / "uploader.toml").write_text("[default]\ntimeout = 10\n")
    got = settings("run")["timeout"]
    assert got == {"value": 10.0, "source": "uploader.toml:default"}, got


def test_flags_beat_env_beats_project_beats_user_for_one_key(folders):
    """Pinned: for a key set in all four places the order is flag > env > ./uploader.toml > user config."""
    work, user = folders
    user.write_text('[default]\nledger = "user.db"\n')
    (work / "uploader.toml").write_text('[default]\nledger = "project.db"\n')
    assert settings("status")["ledger"] == {"value": "project.db", "source": "uploader.toml:default"}
    env = {"UPLOADER_LEDGER": "env.db"}
    assert settings("status", env=env)["ledger"] == {"value": "env.db", "source": "env UPLOADER_LEDGER"}
    assert settings("status", "--ledger", "flag.db", env=env)["ledger"] == {"value": "flag.db", "source": "flag"}
    (work / "uploader.toml").unlink()
    assert settings("status")["ledger"] == {"value": "user.db", "source": f"{user}:default"}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[default]\nledger = "a', "uploader.toml:2:"),  # unterminated string, no final newline
        ("[default]\nledger = ", "uploader.toml:2:"),  # a value missing at the very end
        ("[default]\nledger = [1,", "uploader.toml:2:"),
        ("[default", "uploader.toml:1:"),
    ],
)
def test_a_toml_error_at_the_end_of_the_file_still_names_line_and_column(folders, text, where):
    """BUG: a config file whose error is at its very end (the common "forgot to close it" mistake, and any
    file without a final newline) is reported as `uploader.toml: Unterminated string (at the end)`: no
    line:column, although every other TOML error gets `file:line:column`. cli/config.py `_toml_location`
    turns tomllib's "(at end of document)" into "(at the end)" instead of computing where the end is. Fix:
    the end's line is `text.count("\\n") + 1` and its column `len(last line) + 1`."""
    work, _ = folders
    (work / "uploader.toml").write_text(text)
    result = invoke("status")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {where}"), result.stderr


def test_a_bad_user_config_file_is_one_line_naming_it(folders):
    """Pinned: bad TOML in the user's config file (not only ./uploader.toml) is one line, its full path, line
    and column, exit 1, no traceback."""
    _, user = folders
    user.write_text('[default]\nledger = "x.db"\nledger = "y.db"\n')
    result = invoke("status")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {user}:3:") and result.stderr.count("\n") == 1, result.stderr
