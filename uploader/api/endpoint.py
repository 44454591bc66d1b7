"""The API's base URL checked before anything is sent: https, or http only to loopback (the sandbox).

Kept apart from client.py so that commands which may send nothing (a rerun over a finished ledger) check
their endpoint without importing the HTTP libraries.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from uploader.errors import UsageError

__all__ = ["DEFAULT_BASE_URL", "check_base_url"]

#: Where the API is unless told otherwise (`--base-url`, PLAYMENT_BASE_URL, `uploader.upload(base_url=...)`).
DEFAULT_BASE_URL = "https://api.playment.io"


def check_base_url(url: str, allow_http: bool = False) -> str:
    """Validate and normalise the API base URL (no trailing slash); UsageError when it is unsafe or wrong.

    Plain http would send the API key in clear, so it is refused unless the host is loopback (the sandbox)
    or the user said --allow-http. Credentials, queries and fragments are refused: they would leak into
    messages or be silently dropped.
    """
    text = (url or "").strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"invalid base URL {text!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UsageError(f"the base URL must start with https:// (got {text!r})")
    host = (parts.hostname or "").lower()
    if not host:
        raise UsageError(f"the base URL has no host: {text!r}")
    if parts.username is not None or parts.password is not None:
        raise UsageError("the base URL must not contain credentials; the API key goes in --api-key")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise UsageError(f"the base URL must not have a query or fragment: {text!r}")
    if scheme == "http" and not allow_http and not _is_loopback(host):
        raise UsageError(
            f"refusing plain http to {host}: the API key would travel unencrypted; use https, or --allow-http"
        )
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
