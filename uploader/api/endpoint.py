"""The API's base URL checked before anything is sent: https, or http only to loopback (the sandbox).

Kept apart from client.py so that commands which may send nothing (a rerun over a finished ledger) check
their endpoint without importing the HTTP libraries.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from uploader.errors import UsageError

__all__ = ["DEFAULT_BASE_URL", "USER_INFO", "check_api_key", "check_base_url", "masked_url"]

#: Where the API is unless told otherwise (`--base-url`, PLAYMENT_BASE_URL, `uploader.upload(base_url=...)`).
DEFAULT_BASE_URL = "https://api.playment.io"
#: What stands for a URL's user info, query or fragment in a message: any of them may hold a key.
MASK = "***"
#: A URL's scheme and `//`.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: A URL's user info, from just after `scheme://`: a name, then a password up to the LAST `@` (SQLAlchemy and
#: curl read a password with a raw `/`, `?` or `#` in it; masking too much beats showing part of it).
USER_INFO = re.compile(r"(?P<user>[^:/?#@]*)(?::.*)?@", re.DOTALL)
#: A URL's parts (RFC 3986, appendix B): matches any text, so even a URL urlsplit refuses can be masked.
_URL_PARTS = re.compile(
    r"(?P<scheme>[^:/?#]+:)?(?://(?P<authority>[^/?#]*))?(?P<path>[^?#]*)(?P<query>\?[^#]*)?(?P<fragment>#.*)?",
    re.DOTALL,
)


#: What an API key may hold: it goes in a header, as printable ASCII without spaces.
_KEY_OK = re.compile(r"[\x21-\x7e]+")


def check_api_key(key: str) -> str:
    """`key`, if it can be sent as the x-api-key header; else UsageError (which never quotes it)."""
    if not key or not _KEY_OK.fullmatch(key):
        raise UsageError("the API key is empty or has characters that cannot be sent in a header")
    return key


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
        raise UsageError(f"invalid base URL {masked_url(text)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UsageError(f"the base URL must start with https:// (got {masked_url(text)!r})")
    host = (parts.hostname or "").lower()
    if not host:
        raise UsageError(f"the base URL has no host: {masked_url(text)!r}")
    if parts.username is not None or parts.password is not None:
        raise UsageError("the base URL must not contain credentials; the API key goes in --api-key")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise UsageError(f"the base URL must not have a query or fragment (?… or #…): {masked_url(text)!r}")
    if scheme == "http" and not allow_http and not _is_loopback(host):
        raise UsageError(
            f"refusing plain http to {host}: the API key would travel unencrypted; use https, or --allow-http"
        )
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def masked_url(url: str) -> str:
    """`url` as it may be shown: its user info, query and fragment each replaced by MASK (`?***`), as a
    key or password may be in any of them; scheme, host, port and path as given. Without `scheme://`, the
    text is read as curl reads it, from the host on (`user:password@proxy:3128`)."""
    scheme = _SCHEME.match(url)
    start = 0 if scheme is None else scheme.end()
    info = USER_INFO.match(url, start)
    if info is not None:  # the user info is cut first: its password may hold what ends a URL's parts
        rest = _masked_parts(url[:start] + url[info.end() :])
        return f"{rest[:start]}{MASK}@{rest[start:]}"
    return _masked_parts(url)


def _masked_parts(url: str) -> str:
    """`masked_url` of a URL whose user info, if any, holds no `/`, `?` or `#`."""
    bare = _SCHEME.match(url) is None
    match = _URL_PARTS.fullmatch("//" + url if bare else url)
    assert match is not None  # every part is optional: any text matches
    scheme, authority, path, query, fragment = match.group("scheme", "authority", "path", "query", "fragment")
    out = scheme or ""
    if authority is not None:
        _user, at, host = authority.rpartition("@")
        out += "//" + (f"{MASK}@" if at else "") + host
    out += path
    if query is not None:
        out += f"?{MASK}" if len(query) > 1 else query
    if fragment is not None:
        out += f"#{MASK}" if len(fragment) > 1 else fragment
    return out[2:] if bare else out


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
