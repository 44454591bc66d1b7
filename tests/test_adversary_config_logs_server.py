"""A small loopback job API for tests/test_adversary_config_logs.py that hands the caller's key back where a
client might print or log it: in a redirect's Location (path and query), in Retry-After and other headers, in an
error body with newlines, line separators and a lone surrogate, and in an HTML error page.

Not a test module of its own (it holds no test); `KeyEchoingApi(mode)` serves at `.base_url`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from tests.misbehaving_api import JsonHandler, Served

#: Each mode: given the key the request carried, (status, headers, body) of the answer to every request.
MODES: dict[str, Callable[[str], tuple[int, list[tuple[str, str]], bytes]]] = {
    "redirect": lambda key: (
        301,
        [("Location", f"https://evil.example.com/v1/{key}/jobs?api_key={key}"), ("Content-Length", "0")],
        b"",
    ),
    "headers": lambda key: (
        503,
        [("Retry-After", key), ("X-Echo", key), ("Content-Type", "application/json")],
        b'{"success": false, "error": {"code": "FS_0000", "message": "try later"}}',
    ),
    "unicode": lambda key: (
        500,
        [("Content-Type", "application/json")],
        json.dumps(
            {
                "success": False,
                "error": {
                    "code": "FS_0000\n\u2028x",
                    "message": f'line1\nline2 \u00e9\u2028 "q" \ud800 key={key}',
                    "errors": [{"key": key, "note": "\u202e\x1b[31mred"}],
                },
            }
        ).encode(),
    ),
    "html": lambda key: (
        502,
        [("Content-Type", "text/html")],
        f"<html><body>bad gateway for key {key}\n\u00e9</body></html>".encode(),
    ),
}


class KeyEchoingApi(Served):
    """Answers every request (POST or GET) as MODES[mode] says; counts them in `.requests`."""

    def __init__(self, mode: str) -> None:
        self.answer = MODES[mode]
        self.requests = 0
        self.lock = threading.Lock()
        self._serve(self._handler())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(JsonHandler):
            def _any(self) -> None:
                if self.command == "POST":
                    self._raw_body()
                with api.lock:
                    api.requests += 1
                status, headers, body = api.answer(self.headers.get("x-api-key", ""))
                if not any(name.lower() == "content-length" for name, _ in headers):
                    headers = [*headers, ("Content-Length", str(len(body)))]
                self._send(status, headers, body)

            def do_POST(self) -> None:  # noqa: N802
                self._any()

            def do_GET(self) -> None:  # noqa: N802
                self._any()

        return Handler
