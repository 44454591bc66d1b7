"""Loopback servers for tests/test_adversary_attachments.py: an attachment host that lies in the ways real ones
do (204, HEAD ok but GET refused, 429 bursts, a HEAD with Content-Length 0, redirect chains and loops, slow and
huge bodies), and a job API that quotes the caller's key back in an encoded form (HTML-escaped, URL-quoted)."""

from __future__ import annotations

import html
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any

from misbehaving_api import Served

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60


class AttachmentHost(Served):
    """`with AttachmentHost() as host:` serves `host.url(name)`; `host.log` is every (method, path)."""

    def __init__(self, redirect_to: str = "") -> None:
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.redirect_to = redirect_to
        self._serve(self._handler())

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(
                self,
                status: int,
                ctype: str | None = "image/jpeg",
                body: bytes = JPEG,
                headers: tuple[tuple[str, str], ...] = (),
                length: int | None = None,
            ) -> None:
                self.send_response(status)
                if ctype:
                    self.send_header("Content-Type", ctype)
                for name, value in headers:
                    self.send_header(name, value)
                if status not in (204, 304):
                    self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                if self.command != "HEAD" and status not in (204, 304):
                    self.wfile.write(body)

            def _redirect(self, location: str) -> None:
                self._reply(302, None, b"", (("Location", location),))

            def _any(self) -> None:  # noqa: C901, PLR0911, PLR0912 - one branch per misbehaviour
                path = self.path.split("?", 1)[0]
                head = self.command == "HEAD"
                with host.lock:
                    host.log.append((self.command, path))
                    seen = host.counts[path] = host.counts.get(path, 0) + 1
                if path == "/ok.jpg":
                    return self._reply(200)
                if path == "/no-content.jpg":  # 204 to HEAD and GET: there is no file to open
                    return self._reply(204, None)
                if path == "/head-only.jpg":  # a HEAD-signed link, a GET-blocking CDN rule: annotators get 403
                    return self._reply(200) if head else self._reply(403, "application/xml", b"<Error/>")
                if path == "/throttled.jpg":  # a CDN's burst limit: the first request is told to come back in 1 s
                    if seen == 1:
                        return self._reply(429, "text/plain", b"slow down", (("Retry-After", "1"),))
                    return self._reply(200)
                if path == "/head-zero.jpg":  # a framework that answers HEAD without computing the body
                    return self._reply(200, "image/jpeg", b"", length=0) if head else self._reply(200)
                if path.startswith("/chain/"):  # /chain/N.jpg: N redirects, then the file
                    n = int(path.split("/")[2].split(".")[0])
                    return self._redirect(f"/chain/{n - 1}.jpg") if n > 0 else self._reply(200)
                if path == "/loop.jpg":
                    return self._redirect("/loop.jpg")
                if path == "/elsewhere.jpg":  # to another origin (another port)
                    return self._redirect(host.redirect_to)
                if path == "/file-scheme.jpg":
                    return self._redirect("file:///etc/passwd")
                if path == "/huge.jpg":  # HEAD refused; the GET ignores the range and streams 1 GiB slowly
                    if head:
                        return self._reply(405, "text/plain", b"no HEAD")
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(1 << 30))
                    self.end_headers()
                    try:
                        for _ in range(200):
                            self.wfile.write(b"\xff" * 1024)
                            self.wfile.flush()
                            time.sleep(0.05)
                    except OSError:
                        pass
                    return None
                if path == "/slow.jpg":  # the headers come after 5 s
                    time.sleep(5)
                    return self._reply(200)
                return self._reply(404, "text/plain", b"no such file")

            do_HEAD = do_GET = _any

        return Handler


class KeyQuotingApi(Served):
    """A job API that refuses every job and quotes the caller's x-api-key back: `mode` "html" (a proxy's 502
    page, HTML-escaped), "urlquoted" (an error message naming the request URL, percent-encoded) or "json"
    (verbatim inside a JSON error)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._serve(self._handler())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0) or 0))
                key = self.headers.get("x-api-key", "")
                if api.mode == "html":
                    status, ctype = 502, "text/html"
                    body = (
                        "<html><body><h1>502 Bad Gateway</h1><p>upstream refused the header "
                        f"x-api-key: {html.escape(key)}</p></body></html>"
                    ).encode()
                else:
                    shown = urllib.parse.quote(key, safe="") if api.mode == "urlquoted" else key
                    status, ctype = 400, "application/json"
                    error = {"code": "GE_0001", "message": f"bad request https://api.example/x?api_key={shown}"}
                    body = json.dumps({"success": False, "error": error}).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any

        return Handler
