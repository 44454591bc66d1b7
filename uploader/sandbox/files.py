"""Attachments the sandbox serves at `/_sandbox/files/NAME?...`, so URL checks and FS_0007 run offline.

The URL itself says what the file is and how it misbehaves, so a test needs no set-up:
- the name's extension gives the type: .jpg/.jpeg, .png, .webp, .gif (images), .mp4 (video), .html, .json,
  anything else application/octet-stream;
- `size=N` bytes (default 2048; 0 is an empty file), `type=MIME` overrides the type;
- `status=N` answers that status with an HTML error page (403, 404, 500, ...);
- `head=N` answers HEAD with status N (405: HEAD refused), GET still works;
- `redirect=N` redirects (302) N times before the file; `slow=MS` delays the answer.
GET honours `Range: bytes=A-B` (206 with Content-Range, 416 for an empty file). The bytes start with the
type's real magic number, so a client that sniffs content sees what the type says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode

__all__ = ["PREFIX", "FileAnswer", "FileSpec", "answer", "fetchable", "parse_spec"]

PREFIX = "/_sandbox/files/"
_DEFAULT_SIZE = 2048
_MAX_SIZE = 64 * 1024 * 1024
_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "html": "text/html",
    "json": "application/json",
}
_MAGIC = {
    "image/jpeg": b"\xff\xd8\xff\xe0",
    "image/png": b"\x89PNG\r\n\x1a\n",
    "image/gif": b"GIF89a",
    "image/webp": b"RIFF\x00\x00\x00\x00WEBP",
    "video/mp4": b"\x00\x00\x00\x18ftypmp42",
    "text/html": b"<!doctype html><html><body>",
    "application/json": b"{}",
}
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
ERROR_PAGE = b"<html><body><h1>%d</h1><p>The file cannot be served.</p></body></html>"


@dataclass(frozen=True)
class FileSpec:
    """What a `/_sandbox/files/` URL asks for."""

    name: str
    content_type: str
    size: int = _DEFAULT_SIZE
    status: int = 200
    head_status: int | None = None
    redirects: int = 0
    slow_ms: int = 0


class FileAnswer(NamedTuple):
    """A reply to build: status, headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes


def parse_spec(path: str, query: str) -> FileSpec | None:
    """The file a path under PREFIX asks for, or None when the path or a parameter is not understood."""
    if not path.startswith(PREFIX) or len(path) == len(PREFIX):
        return None
    name = path[len(PREFIX) :]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    params = dict(parse_qsl(query))
    try:
        size = int(params.get("size", _DEFAULT_SIZE))
        status = int(params.get("status", 200))
        head = int(params["head"]) if "head" in params else None
        redirects = int(params.get("redirect", 0))
        slow = int(params.get("slow", 0))
    except ValueError:
        return None
    if not (0 <= size <= _MAX_SIZE and 100 <= status <= 599 and 0 <= redirects <= 100 and 0 <= slow <= 600_000):
        return None
    content_type = params.get("type") or _TYPES.get(ext, "application/octet-stream")
    return FileSpec(name, content_type, size, status, head, redirects, slow)


def fetchable(spec: FileSpec) -> bool:
    """Whether a fetcher such as the platform's would get the file (FS_0007 otherwise)."""
    return spec.status < 400 and spec.size > 0 and not spec.content_type.startswith(("text/", "application/json"))


def answer(spec: FileSpec, method: str, path: str, query: str, range_header: str | None) -> FileAnswer:
    """The reply to a HEAD or GET of the file (after the delay, which the caller applies). The body is
    the same for HEAD: the server sends its length, not its bytes."""
    if spec.redirects > 0:
        params = dict(parse_qsl(query))
        params["redirect"] = str(spec.redirects - 1)
        return FileAnswer(302, {"Location": f"{path}?{urlencode(params)}"}, b"")
    status = spec.head_status if method == "HEAD" and spec.head_status is not None else spec.status
    if status != 200:
        return FileAnswer(status, {"Content-Type": "text/html"}, ERROR_PAGE % status)
    content = _content(spec)
    headers = {"Content-Type": spec.content_type, "Accept-Ranges": "bytes"}
    m = _RANGE.fullmatch(range_header.strip()) if range_header else None
    if m is not None and method == "GET":
        first = int(m.group(1))
        last = min(int(m.group(2)) if m.group(2) else spec.size - 1, spec.size - 1)
        if first >= spec.size or first > last:
            return FileAnswer(416, {**headers, "Content-Range": f"bytes */{spec.size}"}, b"")
        part = content[first : last + 1]
        return FileAnswer(206, {**headers, "Content-Range": f"bytes {first}-{last}/{spec.size}"}, part)
    headers["Content-Length"] = str(spec.size)  # aiohttp leaves out a zero length on a HEAD otherwise
    return FileAnswer(200, headers, content)  # aiohttp sends no body to a HEAD


def _content(spec: FileSpec) -> bytes:
    magic = _MAGIC.get(spec.content_type, b"")
    filler = bytes(range(256)) * (spec.size // 256 + 1)
    return (magic + filler)[: spec.size]
