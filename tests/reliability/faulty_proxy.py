"""A misbehaving gateway on loopback in front of the sandbox, for faults the sandbox cannot script exactly.

Every request is forwarded to the sandbox unchanged, except those a rule takes: a rule names a method and a
path pattern and is a list of actions used up one per matching request (then requests pass through):

  ("answer", status, body, headers)  answer this without forwarding (nothing reaches the API);
  ("timeout", seconds)               say nothing for `seconds` (longer than the client's timeout), forward nothing;
  ("lose",)                          forward it (the API acts on it), then drop the connection unanswered;
  ("late", seconds)                  forward it (the API acts on it), then hold the answer back for `seconds`;
  ("hold", seconds)                  hold the request back for `seconds`, then forward it;
  ("pass",)                          forward it.

`seen` counts the requests each rule matched.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Action = tuple[Any, ...]

BATCH_POST = ("POST", r"^/v1/projects/[^/]+/batch$")
BATCH_LIST = ("GET", r"^/v1/projects/[^/]+/batch/[^/]+")


class FaultyProxy:
    """`with FaultyProxy(box.base_url, {BATCH_POST: [("answer", 429, ...)]}) as proxy: proxy.base_url`."""

    def __init__(self, upstream: str, rules: dict[tuple[str, str], list[Action]]) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rules = {(m, re.compile(p)): list(actions) for (m, p), actions in rules.items()}
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                action = proxy._take(self.command, self.path)
                if action[0] == "answer":
                    _, status, payload, headers = action
                    self._reply(status, payload, headers)
                    return
                if action[0] == "timeout":
                    time.sleep(action[1])
                    self.close_connection = True
                    return
                if action[0] == "hold":
                    time.sleep(action[1])
                status, payload, headers = proxy._forward(self.command, self.path, body, dict(self.headers))
                if action[0] == "lose":
                    self.close_connection = True  # the API acted on it; the client never hears
                    return
                if action[0] == "late":
                    time.sleep(action[1])
                self._reply(status, payload, headers)

            def _reply(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    self.close_connection = True

            do_GET = do_POST = _serve

        server_class = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 256})  # 64 connect at once
        self.server = server_class(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _take(self, method: str, path: str) -> Action:
        with self.lock:
            for (m, pattern), actions in self.rules.items():
                if m == method and pattern.search(path.split("?")[0]):
                    self.seen[f"{m} {pattern.pattern}"] += 1
                    return actions.pop(0) if actions else ("pass",)
        return ("pass",)

    def _forward(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            keep = {k: v for k, v in headers.items() if k.lower() in ("x-api-key", "content-type", "accept")}
            conn.request(method, path, body=body or None, headers=keep)
            response = conn.getresponse()
            payload = response.read()
            out = {k: v for k, v in response.getheaders() if k.lower() in ("content-type", "retry-after")}
            return response.status, payload, out
        finally:
            conn.close()

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def envelope_error(code: str, message: str) -> bytes:
    import json

    return json.dumps({"error": {"code": code, "message": message, "errors": []}, "success": False}).encode()
