"""URL preflight: the checker (api.attachments) against the sandbox's attachment files over loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request

import pytest

from uploader.api import HostPacer, UrlCheck, check_urls, judge
from uploader.sandbox import Sandbox, SandboxConfig


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
        (416, "image/png", None, "empty"),
        (404, "text/html", 10, "http_error"),
        (403, "application/xml", 10, "http_error"),
        (500, None, None, "http_error"),
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
        file_url(box, "ok.jpg"): ("ok", 200),
        file_url(box, "frame.mp4", "size=5000"): ("ok", 200),
        file_url(box, "gone.jpg", "status=404"): ("http_error", 404),
        file_url(box, "private.jpg", "status=403"): ("http_error", 403),
        file_url(box, "page.html"): ("not_media", 200),
        file_url(box, "photo.jpg", "type=text/html"): ("not_media", 200),
        file_url(box, "empty.png", "size=0"): ("empty", 200),
        file_url(box, "nohead.jpg", "head=405&size=777"): ("ok", 206),  # GET Range fallback
        file_url(box, "moved.jpg", "redirect=3"): ("ok", 200),
        file_url(box, "loop.jpg", "redirect=9"): ("unreachable", None),
    }
    got = check(list(cases), max_redirects=5)
    assert {url: (c.verdict, c.status) for url, c in got.items()} == cases
    assert got[file_url(box, "nohead.jpg", "head=405&size=777")].length == 777
    assert "more than 5 redirects" in got[file_url(box, "loop.jpg", "redirect=9")].detail
    assert got[file_url(box, "ok.jpg")].content_type == "image/jpeg"


def test_presigned_get_refusing_head_falls_back_to_a_one_byte_get(box: Sandbox) -> None:
    before = box.stats()["file_requests"]
    url = file_url(box, "s3.jpg", "head=403&size=4096")
    assert check([url])[url][:3] == (url, "ok", "image/jpeg")
    after = box.stats()["file_requests"]
    assert after.get("HEAD", 0) - before.get("HEAD", 0) == 1
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
    assert got[slow].verdict == "unreachable" and got[slow].detail.startswith("timed out")


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
