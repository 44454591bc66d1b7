"""A ledger URL (`--ledger postgresql+psycopg://…`): read as its user means it, shown without its secrets.

A generated password often holds a raw `@`; SQLAlchemy's parser ends the password at the first one and takes
the rest for the host, which then appears, password and all, in the driver's "failed to resolve host" error.
Here the user info runs to the last `@` (the commands uploader.cli.hints prints are shown from it too). A
password may come as the URL's `password` query parameter (libpq reads it there): shown, it is replaced like
the user-info one.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["HIDDEN_PASSWORD", "parse_url", "shown_ledger", "shown_url"]

#: What a password in a ledger URL is printed as.
HIDDEN_PASSWORD = "PASSWORD"
#: Query parameters from which libpq reads a secret.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
#: `user:password@` after `scheme://`, the password up to the last `@` (it may hold `@`, `/`, `?`, `#`).
_USER_INFO = re.compile(r"(?P<user>[^:/?#@]*):(?P<password>.*)@", re.DOTALL)


def parse_url(url: str) -> URL:
    """SQLAlchemy's URL for `url`, a password read up to the last `@`. Raises sqlalchemy's ArgumentError, or
    ValueError for a port that is not a number."""
    parsed = make_url(url)
    scheme, sep, rest = url.partition("://")
    info = _USER_INFO.match(rest) if sep else None
    if info is None or parsed.password is None:
        return parsed
    host_part = make_url(f"{scheme}://{rest[info.end() :]}")
    return host_part.set(username=unquote(info["user"]), password=unquote(info["password"]))


def shown_url(url: URL) -> str:
    """`url` as it may be printed: every password (user info, `password=` query parameters) HIDDEN_PASSWORD."""
    query = {key: HIDDEN_PASSWORD if key.lower() in _SECRET_PARAMETERS else value for key, value in url.query.items()}
    hidden = url.set(password=HIDDEN_PASSWORD if url.password is not None else None, query=query)
    return hidden.render_as_string(hide_password=False)


def shown_ledger(url: str) -> str:
    """A URL string as it may be printed: as given when it holds no password (SQLAlchemy's rendering would
    percent-encode a path), else `shown_url`; one that does not parse as `scheme://PASSWORD` (nothing of it)."""
    try:
        parsed = parse_url(url)
        if parsed.password is None and not _SECRET_PARAMETERS & {key.lower() for key in parsed.query}:
            return url
        return shown_url(parsed)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return f"{url.partition('://')[0]}://{HIDDEN_PASSWORD}"
