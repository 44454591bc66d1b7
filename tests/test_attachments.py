"""URL preflight: the checker (api.attachments) against the sandbox's attachment files over loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import sqlite3
import urllib.request

import pytest
from click.testing import CliRunner

from tests.scripted_server import Handler, Peer, run, serve
from uploader.api import HostPacer, UrlCheck, attachments, check_urls, judge
from uploader.cli.commands import cli
from uploader.ledger import UrlVerdict
from uploader.sandbox import Sandbox, SandboxConfig
from uploader.send import row_problem
from uploader.storage import locate


@pytest.fixture(scope="module")
def box():
    with Sandbox(SandboxConfig(seed=1)) as sb:
        yield sb


def check(urls: list[str], **kw) -> dict[str, UrlCheck]:
    async def go() -> dict[str, UrlCheck]:
        return {c.url: c async for c in check_urls(urls, **kw)}

    return asyncio.run(go())


def file_url(box: Sandbox, name: str, query: str = "") -> str:
    return f"{box.base_url}/_sandbox/files/{name}" + (f"?{query}" if query else "")


@pytest.mark.parametrize(
    ("status", "ctype", "length", "verdict"),
    [
        (200, "image/jpeg", 100, "ok"),
        (206, "video/mp4; codecs=avc1", 5, "ok"),
        (200, "application/octet-stream", None, "ok"),
        (200, None, 10, "ok"),
        (200, "text/html; charset=utf-8", 100, "not_media"),
        (200, "application/json", 2, "not_media"),
        (200, "image/png", 0, "empty"),
        (416, "image/png", None, "empty"),  # bytes=0-0 unsatisfiable: only an empty file
        (416, "image/png", 0, "empty"),  # Content-Range: bytes */0
        (416, "image/png", 500, "http_error"),  # refuses the first byte of a file it says is 500 bytes
        (404, "text/html", 10, "http_error"),
        (403, "application/xml", 10, "http_error"),
        (500, None, None, "http_error"),
        (203, "image/jpeg", 10, "ok"),  # a proxy's transformed copy is still the file
        (204, None, None, "empty"),  # no content: nothing to open
        (205, "image/jpeg", None, "empty"),
        (201, "image/jpeg", 10, "http_error"),  # other 2xx carry no file
        (202, None, None, "http_error"),
        (200, "application/vnd.api+json", 40, "not_media"),  # structured syntax suffixes: an API's answer
        (200, "application/problem+xml; charset=utf-8", 40, "not_media"),
        (200, "application/soap+xml", 40, "not_media"),
        (200, "application/x-yaml", 40, "not_media"),
        (200, "image/svg+xml", 40, "ok"),  # an image with a structured suffix
        (200, "application/dicom", 40, "ok"),  # not a document: may be what is labeled
        (200, "binary/octet-stream", 40, "ok"),
        (429, "text/plain", 9, "unavailable"),  # "not now": nothing said of the file
        (503, "text/html", 10, "unavailable"),
        (408, None, None, "unavailable"),
    ],
)
def test_judge(status: int, ctype: str | None, length: int | None, verdict: str) -> None:
    assert judge(status, ctype, length)[0] == verdict


def test_host_pacer_spaces_requests_per_host() -> None:
    pacer = HostPacer(rate=10)
    assert [pacer.delay("a", 100.0) for _ in range(3)] == pytest.approx([0.0, 0.1, 0.2])
    assert pacer.delay("b", 100.0) == 0.0  # another host has its own slots
    assert pacer.delay("a", 101.0) == 0.0  # slots in the past are not owed


def test_verdicts_against_the_sandbox(box: Sandbox) -> None:
    cases = {
        file_url(box, "ok.jpg"): ("ok", 206),
        file_url(box, "frame.mp4", "size=5000"): ("ok", 206),
        file_url(box, "gone.jpg", "status=404"): ("http_error", 404),
        file_url(box, "private.jpg", "status=403"): ("http_error", 403),
        file_url(box, "page.html"): ("not_media", 206),
        file_url(box, "photo.jpg", "type=text/html"): ("not_media", 206),
        file_url(box, "empty.png", "size=0"): ("empty", 416),
        file_url(box, "nohead.jpg", "head=405&size=777"): ("ok", 206),  # HEAD refused: never asked
        file_url(box, "moved.jpg", "redirect=3"): ("ok", 206),
        file_url(box, "loop.jpg", "redirect=9"): ("unreachable", None),
    }
    got = check(list(cases), max_redirects=5)
    assert {url: (c.verdict, c.status) for url, c in got.items()} == cases
    assert got[file_url(box, "nohead.jpg", "head=405&size=777")].length == 777  # the Content-Range total
    assert got[file_url(box, "frame.mp4", "size=5000")].length == 5000
    assert got[file_url(box, "empty.png", "size=0")].length == 0  # 416, Content-Range: bytes */0
    assert "more than 5 redirects" in got[file_url(box, "loop.jpg", "redirect=9")].detail
    assert got[file_url(box, "ok.jpg")].content_type == "image/jpeg"


def test_a_presigned_get_url_refusing_head_is_checked_by_its_one_byte_get_alone(box: Sandbox) -> None:
    before = box.stats()["file_requests"]
    url = file_url(box, "s3.jpg", "head=403&size=4096")
    assert check([url])[url][:3] == (url, "ok", "image/jpeg")
    after = box.stats()["file_requests"]
    assert after.get("HEAD", 0) - before.get("HEAD", 0) == 0
    assert after.get("GET", 0) - before.get("GET", 0) == 1


def test_unreachable_host_and_timeout(box: Sandbox) -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = f"http://127.0.0.1:{port}/x.jpg"
    slow = file_url(box, "slow.jpg", "slow=3000")
    got = check([refused, slow], timeout=0.5)
    assert got[refused].verdict == "unreachable"
    assert got[refused].detail == f"cannot connect to 127.0.0.1:{port} (connection refused)"
    assert got[slow].verdict == "unavailable"  # a fact of the moment: never stored, checked again next time
    assert got[slow].detail == "timed out (checked again by the next preflight)"


def test_many_urls_with_bounded_concurrency(box: Sandbox) -> None:
    urls = [file_url(box, f"img{i}.png") for i in range(300)]
    got = check(iter(urls), concurrency=8, per_host_rate=10_000)
    assert len(got) == 300 and {c.verdict for c in got.values()} == {"ok"}


def test_sandbox_serves_ranges_and_magic_bytes(box: Sandbox) -> None:
    req = urllib.request.Request(file_url(box, "a.png", "size=100"), headers={"Range": "bytes=0-7"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 206 and r.headers["Content-Range"] == "bytes 0-7/100"
        assert r.read() == b"\x89PNG\r\n\x1a\n"


def test_sandbox_answers_fs_0007_for_an_attachment_it_cannot_open() -> None:
    with Sandbox(SandboxConfig(check_attachments=True)) as sb:

        def post(ref: str, url: str) -> dict:
            body = json.dumps({"reference_id": ref, "work_flow_id": "wf", "data": {"image_url": url}}).encode()
            req = urllib.request.Request(
                f"{sb.base_url}/v1/projects/p/jobs",
                data=body,
                method="POST",
                headers={"x-api-key": sb.api_key, "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req) as r:
                    return json.load(r)
            except urllib.error.HTTPError as e:
                return json.load(e)

        assert post("r1", file_url(sb, "ok.jpg"))["success"] is True
        bad = post("r2", file_url(sb, "gone.jpg", "status=404"))
        assert bad["success"] is False and bad["error"]["code"] == "FS_0007"
        assert "gone.jpg" in bad["error"]["message"]
        assert post("r3", "https://example.com/elsewhere.jpg")["success"] is True  # only its own files are judged
        assert sb.stats()["jobs_created"] == 2


# --- one ranged GET per URL decides; "not now" is asked again, and never stored -------------------------------

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("status", "retry_after", "attempt", "pause"),
    [
        (429, "1", 0, 1.0),
        (503, "2.5", 1, 2.5),
        (429, "Thu, 01 Jan 2026 00:00:03 GMT", 0, 3.0),  # an HTTP date
        (503, None, 0, 1.0),  # no Retry-After: 1 s, then 2 s
        (503, None, 1, 2.0),
        (502, "soon", 0, 1.0),  # unreadable: the backoff
        (429, "1", 2, None),  # the retries spent
        (429, "3600", 0, None),  # longer than is waited for: unavailable at once
        (404, "1", 0, None),  # not transient
        (200, None, 0, None),
    ],
)
def test_retry_delay(status: int, retry_after: str | None, attempt: int, pause: float | None) -> None:
    assert attachments.retry_delay(status, retry_after, attempt, NOW) == pause


def test_host_pacer_holds_a_host_that_asked_for_a_pause() -> None:
    pacer = HostPacer(rate=10)
    pacer.hold("a", 2.0, 100.0)
    assert pacer.delay("a", 100.0) == pytest.approx(2.0)
    assert pacer.delay("b", 100.0) == 0.0
    pacer.hold("a", 0.5, 100.0)  # a shorter pause does not shorten the longer one
    assert pacer.delay("a", 100.0) == pytest.approx(2.1)


def test_a_get_refused_after_a_fine_head_is_an_http_error(box: Sandbox) -> None:
    url = file_url(box, "head-only.jpg", "status=403&head=200")  # HEAD 200 image/jpeg, GET 403
    got = check([url])[url]
    assert (got.verdict, got.status, got.detail) == ("http_error", 403, "HTTP 403")


def test_every_url_costs_one_ranged_get_and_no_head(box: Sandbox) -> None:
    fine, gone = file_url(box, "fine.jpg", "size=300"), file_url(box, "gone2.jpg", "status=404")
    empty, page = file_url(box, "empty2.png", "size=0"), file_url(box, "page2.html")
    before = box.stats()["file_requests"]
    got = check([fine, gone, empty, page])
    after = box.stats()["file_requests"]
    assert (got[fine].verdict, got[fine].status, got[fine].length) == ("ok", 206, 300)
    assert [got[u].verdict for u in (gone, empty, page)] == ["http_error", "empty", "not_media"]
    assert (after.get("HEAD", 0) - before.get("HEAD", 0), after["GET"] - before.get("GET", 0)) == (0, 4)


@pytest.mark.parametrize(
    ("length", "drained"),
    [("1", True), ("0", True), ("16384", True), ("16385", False), ("1073741824", False), ("", False), ("1e3", False)],
)
def test_drains_reads_only_a_small_body_of_stated_size(length: str, drained: bool) -> None:
    assert attachments.drains({"Content-Length": length} if length else {}) is drained
    assert attachments.drains({"Content-Length": "1", "Transfer-Encoding": "chunked"}) is False


def _serving(*answers: bytes, gap: float = 0.0) -> Handler:
    """A scripted host answering each request on a connection with the next of `answers` (head and body
    written `gap` seconds apart when the answer has a body), cycling."""

    async def handler(peer: Peer) -> None:
        i = 0
        async for _ in peer.requests():
            head, sep, body = answers[i % len(answers)].partition(b"\r\n\r\n")
            await peer.send(head + sep, *([body] if body else []), gap=gap)
            i += 1

    return handler


def test_the_one_byte_answer_is_read_and_its_connection_reused() -> None:
    """Ten URLs of one host, one at a time, the byte arriving after the headers: one connection for all."""
    partial = b"HTTP/1.1 206 Partial Content\r\nContent-Type: image/jpeg\r\nContent-Range: bytes 0-0/5000\r\n"
    partial += b"Content-Length: 1\r\n\r\n\xff"

    async def main() -> tuple[list[UrlCheck], int, list[bytes]]:
        async with serve(_serving(partial, gap=0.02)) as server:
            urls = [server.url(f"/{i}.jpg") for i in range(10)]
            got = [c async for c in check_urls(urls, concurrency=1, per_host_rate=10_000)]
        return got, server.connections, [request for _, request in server.requests]

    got, connections, requests = run(main())
    assert {(c.verdict, c.status, c.length) for c in got} == {("ok", 206, 5000)} and len(got) == 10
    assert connections == 1
    assert len(requests) == 10 and all(r.startswith(b"GET /") and b"Range: bytes=0-0\r\n" in r for r in requests)


def test_a_whole_file_sent_despite_the_range_is_judged_unread_and_its_connection_closed() -> None:
    """A server that ignores the range and starts sending 64 MiB: ok from the headers, its length the
    Content-Length, the body left unread (the connection closed, a new one for the next URL)."""

    async def handler(peer: Peer) -> None:
        async for _ in peer.requests():
            head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % (64 << 20)
            await peer.send(head, b"\x89PNG" + b"\0" * 65536)
            await peer.until_closed()  # never sends the rest

    async def main() -> tuple[list[UrlCheck], int]:
        async with serve(handler) as server:
            urls = [server.url("/a.png"), server.url("/b.png")]
            got = [c async for c in check_urls(urls, concurrency=1, timeout=2.0)]
        return got, server.connections

    got, connections = run(main())
    assert [(c.verdict, c.status, c.length) for c in got] == [("ok", 200, 64 << 20)] * 2
    assert connections == 2


def test_a_host_that_keeps_saying_not_now_is_unavailable_after_bounded_retries(box: Sandbox, monkeypatch) -> None:
    monkeypatch.setattr(attachments, "_BACKOFF", 0.01)
    url = file_url(box, "busy.jpg", "status=503")
    before = box.stats()["file_requests"]
    got = check([url])[url]
    after = box.stats()["file_requests"]
    assert (got.verdict, got.status) == ("unavailable", 503) and "next preflight" in got.detail
    assert after["GET"] - before.get("GET", 0) == 3  # asked, then asked again twice
    assert after.get("HEAD", 0) == before.get("HEAD", 0)


def test_a_row_held_back_by_a_busy_host_is_checked_again_by_the_next_preflight(box: Sandbox, tmp_path, monkeypatch):
    monkeypatch.setattr(attachments, "_BACKOFF", 0.01)
    ledger, manifest = tmp_path / "l.db", tmp_path / "m.csv"
    busy, gone = file_url(box, "busy2.jpg", "status=503"), file_url(box, "gone3.jpg", "status=404")
    manifest.write_text(f"reference_id,image_url\nbusy,{busy}\ngone,{gone}\n")
    load = ["--project-id", "p", "--work-flow-id", "w", "--ledger", str(ledger)]
    first = CliRunner().invoke(cli, ["check", str(manifest), *load], catch_exceptions=False)
    assert first.exit_code == 3 and "not now" in first.output
    with sqlite3.connect(ledger) as db:
        rows = dict(db.execute("SELECT reference_id, error_code FROM jobs WHERE status = 'blocked'"))
        stored = [v for (v,) in db.execute("SELECT verdict FROM urls")]
    assert rows == {"busy": "url_unavailable", "gone": "url_http_error"}
    assert stored == ["http_error"]  # the 503 is no verdict on the file
    before = box.stats()["file_requests"]["GET"]
    again = CliRunner().invoke(cli, ["check", "--ledger", str(ledger), "--json"], catch_exceptions=False)
    report = json.loads(again.output)
    assert (report["released"], report["rows"], report["checked"]) == (1, 1, 1)  # the 404 row stays blocked
    assert box.stats()["file_requests"]["GET"] - before == 3


def test_a_host_that_times_out_holds_its_row_back_for_now_not_for_good(box: Sandbox, tmp_path) -> None:
    ledger, manifest = tmp_path / "l.db", tmp_path / "m.csv"
    manifest.write_text(f"reference_id,image_url\nslow,{file_url(box, 'slow4.jpg', 'slow=3000')}\n")
    args = ["--check-timeout", "0.5", "--ledger", str(ledger)]
    first = CliRunner().invoke(
        cli, ["check", str(manifest), "--project-id", "p", "--work-flow-id", "w", *args], catch_exceptions=False
    )
    assert first.exit_code == 3 and "timed out" in first.output
    with sqlite3.connect(ledger) as db:
        assert db.execute("SELECT status, error_code FROM jobs").fetchall() == [("blocked", "url_unavailable")]
        assert db.execute("SELECT count(*) FROM urls").fetchone() == (0,)  # no verdict on the file is kept
    again = CliRunner().invoke(cli, ["check", *args, "--json"], catch_exceptions=False)
    report = json.loads(again.output)
    assert (report["released"], report["checked"]) == (1, 1)


def test_a_lasting_problem_of_a_row_comes_before_a_busy_host() -> None:
    def verdict(url: str, name: str) -> UrlVerdict:
        return UrlVerdict(url, name, f"{name} detail", None, None, None, NOW)

    verdicts = {"a": verdict("a", "unavailable"), "b": verdict("b", "http_error"), "c": verdict("c", "ok")}
    assert row_problem(["a", "b"], verdicts, NOW) == ("url_http_error", "b: http_error detail")
    assert row_problem(["a", "c"], verdicts, NOW) == ("url_unavailable", "a: unavailable detail")


# --- storage URLs name their object percent-decoded ------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("s3://photos/what%3F.jpg", "what?.jpg"),  # '?' and '#' are written escaped (manifest: storage_url_problem)
        ("gs://photos/hash%23tag.jpg", "hash#tag.jpg"),
        ("s3://photos/cats/tom%201.jpg", "cats/tom 1.jpg"),
        ("s3://photos/a+b.jpg", "a+b.jpg"),  # '+' is a plus, not a space
        ("s3://photos/100%25.jpg", "100%.jpg"),  # a '%' in the key is written %25
        ("s3://photos/100%.jpg", "100%.jpg"),  # a '%' that starts no escape is itself
        ("gs://photos/p/%C3%BC.jpg", "p/ü.jpg"),
        ("s3://photos/%FF.jpg", None),  # escapes that are not UTF-8 name no object
    ],
)
def test_a_storage_key_is_percent_decoded(url: str, key: str | None) -> None:
    location = locate(url)
    assert (location.key if location else None) == key
