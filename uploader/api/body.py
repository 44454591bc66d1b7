"""What an answer's bytes say: read within a size limit, decoded as the API's envelope, quoted short.

The exchange itself (requests, transport, failures, key redaction) is client.py's. Nothing here knows
httpx, aiohttp or the API key, and nothing raises for a hostile body: one too large, not JSON or an HTML
error page each become an `ApiResult` with a code `policy.classify` understands.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from uploader.api.policy import ApiResult

__all__ = [
    "CODE_MAX_CHARS",
    "SNIPPET_CHARS",
    "one_line",
    "parse_envelope",
    "printable",
    "read_limited",
    "too_large",
    "truncate",
]

#: Longest body snippet quoted in a message, and longest message built from one.
SNIPPET_CHARS = 200
#: Longest error code recorded (the ledger's column; the API's codes are a few characters).
CODE_MAX_CHARS = 64
_TAG = re.compile(r"<[^>]*>")
#: C0 and C1 controls, lone surrogates (no UTF-8), line and paragraph separators, and the bidirectional
#: marks, embeddings, overrides and isolates that reorder what a terminal shows (Trojan Source).
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]+")
_SPACES = re.compile(r"\s+")


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes | None:
    """All the chunks joined, or None once they exceed `limit` bytes (read no further: a hostile 1 GB answer)."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
    finally:
        if size > limit and hasattr(chunks, "aclose"):
            await chunks.aclose()  # stop the generator now, not at garbage collection
    return parts[0] if len(parts) == 1 else b"".join(parts)


def too_large(status: int, limit: int, retry_after: str | None) -> ApiResult:
    """The result for an answer `read_limited` refused (or whose Content-Length already exceeds `limit`)."""
    message = f"HTTP {status}: the answer is larger than {limit} bytes; not read"
    return ApiResult(status, None, None, "body_too_large", message, None, retry_after)


class _KeyTwice(ValueError):
    """A JSON object gives one key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refused when it gives a key twice: `{"job_id": "a", "job_id": "b"}` says two
    things, and json.loads would silently keep the last."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _KeyTwice
    return obj


#: json.loads with a hook builds a decoder per call; one serves every answer (the same decoding as json.loads).
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def parse_envelope(status: int, raw: bytes, retry_after: str | None) -> ApiResult:
    """Read the API's envelope; anything else (a body giving a key twice included: which of its values is the
    API's word?) becomes `not_json` / `http_<status>` with a body snippet."""
    twice = False
    try:
        body = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass")) if raw else None
    except _KeyTwice:
        body, twice = None, True
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        body = None
    if isinstance(body, dict) and isinstance(success := body.get("success"), bool):
        data = body.get("data")
        data = data if isinstance(data, dict) else None
        if success:
            return ApiResult(status, True, data, None, None, None, retry_after)
        error = body.get("error")
        code = message = errors = None
        if isinstance(error, dict):
            code = None if error.get("code") is None else printable(str(error["code"]))
            message = None if error.get("message") is None else printable(str(error["message"]))
            errors = _printable_all(error["errors"]) if isinstance(error.get("errors"), list) else None
        elif isinstance(error, str):
            message = printable(error)
        return ApiResult(status, False, data, code, message, errors, retry_after)
    code = "not_json" if 200 <= status < 300 else f"http_{status}"
    snippet = _snippet(raw)
    message = f"HTTP {status}, not an API answer" + (" (a key given twice)" if twice else "")
    message += f": {snippet}" if snippet else " (empty body)"
    return ApiResult(status, None, None, code, truncate(message, SNIPPET_CHARS), None, retry_after)


def _snippet(raw: bytes) -> str:
    """A short, printable, tag-free excerpt of a body for a message."""
    text = raw[:4096].decode("utf-8", "replace")
    text = _UNPRINTABLE.sub(" ", _TAG.sub(" ", text))
    return truncate(one_line(text), SNIPPET_CHARS)


def printable(text: str) -> str:
    """`text` with each control character (a NUL, an escape sequence's ESC, a newline, a bidirectional override)
    or lone surrogate made a space: the API's words are recorded (PostgreSQL cannot store a NUL, nor any ledger
    a surrogate) and shown on one line (no escape reaches a terminal, nothing reorders what it shows)."""
    return _UNPRINTABLE.sub(" ", text) if _UNPRINTABLE.search(text) else text


def _printable_all(value: Any) -> Any:
    """`printable` applied to every string inside a decoded JSON value (the details of a refusal, recorded)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [_printable_all(v) for v in value]
    if isinstance(value, dict):
        return {printable(k): _printable_all(v) for k, v in value.items()}
    return value


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) made one space, and stripped."""
    return _SPACES.sub(" ", text).strip()


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
