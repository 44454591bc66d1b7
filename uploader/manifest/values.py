"""Single values of a manifest: the checks of one cell (reference ids, URLs, project/workflow ids), strict JSON
in and compact JSON out, and the text tests the fast path uses on a whole column at once.

Apart from the readers (`formats`) and the row logic (`reader`) because both lean on it and it
leans on nothing but the standard library: every function here is pure and takes plain values.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Sequence
from decimal import Decimal
from json.encoder import c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring as enc  # C: json.dumps of one str, without the overhead
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from uploader.manifest.signed import SignedUrlError, url_expiry

__all__ = [
    "AZURE_BLOB_HOST",
    "HOST",
    "INTEGER",
    "LONE_SURROGATE",
    "MAX_ID_LENGTH",
    "MAX_URL_LENGTH",
    "PATH_UNSAFE",
    "UUID",
    "Errors",
    "azure_url_problem",
    "bad_unicode",
    "cell_value",
    "dumps",
    "dumps_extra",
    "enc",
    "escaped",
    "extra_json",
    "id_problem",
    "job_body",
    "json_error",
    "json_kind",
    "loads_strict",
    "may_be_signed",
    "needs_no_escape",
    "plain",
    "reference_id_problem",
    "show",
    "signature_problem",
    "storage_url_problem",
    "unencodable",
    "url_problem",
]

Errors = list[tuple[str | None, str]]  # (API field or None, message) found in one row
#: The ledger's project_id / work_flow_id columns hold this many characters (PostgreSQL enforces it).
MAX_ID_LENGTH = 255
_UNSAFE_ID = "must not contain '/', '?', '#', whitespace or control characters (it goes into the URL path)"
#: Longest image_url / frame src accepted. 8 KiB is the request-line limit of common web servers and CDNs
#: (nginx's 8k header buffers, Apache's LimitRequestLine 8190, CloudFront's 8192-byte URL): GT Studio could
#: not fetch a longer URL from most hosts, while signed URLs with session tokens stay under ~2 KiB. Without a
#: cap, a 10 MB cell would be stored in the ledger and sent in every request for its row.
MAX_URL_LENGTH = 8192
#: What signing adds to a storage URL's percent-encoded key at most, about (an S3 link with an STS session
#: token: ~1,500 characters of query; Google V4 ~600; an Azure SAS ~150).
SIGNATURE_ROOM = 2048
LONE_SURROGATE = "contains an invalid Unicode escape (a lone surrogate such as \\ud800)"


# --- JSON in -----------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: JSON leaves a repeated name's meaning open (one line naming two
    reference_ids would be loaded as either)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        keys = [key for key, _ in pairs]
        twice = next(key for i, key in enumerate(keys) if key in keys[:i])
        raise ValueError(f"the key {twice!r} is given twice in one object")
    return obj


def _exact_float(text: str) -> float:
    """A JSON number with a fraction or exponent, as the float that is sent; ValueError when that float is not
    the number written (more digits than a double holds, or an underflow to 0), as the API would get another
    value without a word. 1e400 parses to inf, which the encoder refuses."""
    value = float(text)
    if math.isfinite(value) and Decimal(repr(value)) != Decimal(text):
        raise ValueError(f"the number {text} cannot be sent exactly: JSON numbers are doubles here ({value!r})")
    return value


_decode_strict = json.JSONDecoder(
    parse_constant=_reject_constant, object_pairs_hook=_unique_keys, parse_float=_exact_float
).decode


def loads_strict(text: str) -> Any:
    """json.loads that refuses NaN/Infinity, which the API (and JSON) cannot take, and a key given twice in
    one object (one decoder, built once); raises ValueError (not RecursionError) for JSON nested too deeply."""
    try:
        return _decode_strict(text)
    except RecursionError:
        raise ValueError("it is nested too deeply (more than ~900 levels)") from None


def json_error(e: ValueError) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON at character {e.pos + 1}: {e.msg}"
    return f"invalid JSON: {e}"


# --- checks and JSON out ---------------------------------------------------------------------------

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
PATH_UNSAFE = re.compile("[/?#\\s\x00-\x1f\x7f-\x9f]")  # project_id / work_flow_id go into a URL path
INTEGER = re.compile(r"-?[0-9]+")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SPACE = re.compile(r"\s")
_CTRL = bytes(range(32)) + b"\x7f"
_CTRL_QB = _CTRL + b'"\\'
_ESC = bytes(range(32)) + b'"\\'
HOST = re.compile(r"https?://[A-Za-z0-9][A-Za-z0-9.-]*(?:[/?#]|\Z)")  # a start that is surely valid
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
if c_make_encoder is not None:  # json.dumps builds this C encoder anew on every call; build it once
    _c_encode = c_make_encoder(None, _encoder.default, enc, None, ":", ",", False, False, False)

    def dumps(obj: Any) -> str:
        """json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False), without the per-call
        setup. ValueError for NaN/±Infinity (JSON has no such numbers: 1e400 parses to inf), RecursionError
        for nesting deeper than the interpreter's stack."""
        return "".join(_c_encode(obj, 0))
else:  # pragma: no cover - CPython always has the C accelerator

    def dumps(obj: Any) -> str:
        return _encoder.encode(obj)


_extra_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True)
if c_make_encoder is not None:
    _c_encode_extra = c_make_encoder(None, _extra_encoder.default, enc, None, ":", ",", False, False, True)

    def dumps_extra(obj: Any) -> str:
        """An extra column's value (or a row's extras) as the ledger keeps it: as `dumps`, but a NaN or
        infinite double is written as Python's json writes it (`NaN`, `Infinity`), which its json.loads reads
        back as that double. Only for `jobs.extra`, never sent: an export then gives a Parquet double column
        back as doubles."""
        return "".join(_c_encode_extra(obj, 0))
else:  # pragma: no cover - CPython always has the C accelerator

    def dumps_extra(obj: Any) -> str:
        return _extra_encoder.encode(obj)


def show(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def json_kind(value: Any) -> str:
    names = {list: "an array", dict: "an object", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def reference_id_problem(ref: str) -> str | None:
    """Why `ref` cannot be a reference_id, or None."""
    if not ref.strip():
        return "reference_id is empty"
    if len(ref) > 255:
        return f"reference_id is {len(ref)} characters long; the limit is 255"
    if _CONTROL.search(ref):
        return "reference_id contains control characters"
    return None


def url_problem(url: str, sign: bool = False) -> str | None:
    """Why GT Studio could not fetch `url`, as a phrase to follow the field's name; None if it can. With
    `sign` (`--sign`), an s3:// or gs:// storage URL is accepted too: uploader signs it at send time."""
    if len(url) > MAX_URL_LENGTH:
        return f"is {len(url)} characters long; at most {MAX_URL_LENGTH} are allowed (longer URLs cannot be fetched)"
    if sign and AZURE_BLOB_HOST in url.lower():
        return signature_problem(url) or azure_url_problem(url)
    if HOST.match(url) and url.isprintable() and " " not in url:
        return signature_problem(url)  # the common case, without urlsplit
    if not url:
        return "is empty"
    if _SPACE.search(url):
        return f"contains whitespace: {show(url)}"
    if _CONTROL.search(url):
        return "contains control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        return f"is not a valid URL ({e}): {show(url)}"
    scheme = parts.scheme.lower()
    if scheme in ("s3", "gs"):
        if sign:
            return storage_url_problem(url)
        return (
            f"is {'an' if scheme == 's3' else 'a'} {scheme}:// URL, which GT Studio cannot fetch; pass --sign "
            "to have uploader sign it at send time, or use a signed or public https URL"
        )
    if scheme not in ("http", "https"):
        slashes = "//" if url[len(scheme) + 1 :].startswith("//") else ""
        return f"must be an http:// or https:// URL, not {scheme + ':' + slashes if scheme else show(url)}"
    if not parts.hostname:
        return f"has no host: {show(url)}"
    return signature_problem(url)


def storage_url_problem(url: str) -> str | None:
    """Why an s3://BUCKET/KEY or gs://BUCKET/OBJECT URL names no object that could be signed, or None."""
    parts = urlsplit(url)
    if not parts.netloc:
        return f"has no bucket: {show(url)}"
    if not parts.path.lstrip("/"):
        return f"has no object key after the bucket: {show(url)}"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return f"has '?' or '#', which a storage URL cannot carry (percent-encode them in the key): {show(url)}"
    return _key_problem(parts.path[1:], url)


#: The host of an Azure Blob Storage account (uploader.storage.locations): with --sign, its URLs without a SAS
#: are signed at send time.
AZURE_BLOB_HOST = ".blob.core.windows.net"


def azure_url_problem(url: str) -> str | None:
    """With --sign: why an Azure blob URL without a SAS (which uploader signs) names no blob it could sign, or
    None (also for a URL that is not an Azure blob URL, or carries a SAS already)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None  # url_problem says why
    host = (parts.hostname or "").lower()
    if parts.scheme.lower() != "https" or not host.endswith(AZURE_BLOB_HOST):
        return None
    if any(name.lower() == "sig" for name, _ in parse_qsl(parts.query, keep_blank_values=True)):
        return None  # signed already: sent as it is
    if parts.query or parts.fragment:
        return (
            "has a query or a fragment (a ?snapshot= or ?versionid= names another version of the blob), which "
            f"--sign cannot keep: sign it yourself (a SAS), or name the blob without it: {show(url)}"
        )
    container, _, blob = parts.path[1:].partition("/")
    if not container or not blob:
        return f"names no blob (https://ACCOUNT{AZURE_BLOB_HOST}/CONTAINER/BLOB): {show(url)}"
    return _key_problem(blob, url)


def _key_problem(raw_key: str, url: str) -> str | None:
    """Why a storage URL's key (as written in its path) names no object a signed link could open, or None."""
    try:
        key = unquote(raw_key, errors="strict")
    except UnicodeDecodeError:
        return f"has percent-escapes that are not UTF-8 in its key, so it names no object: {show(url)}"
    if any(segment in (".", "..") for segment in key.split("/")):
        return (
            "has a '.' or '..' segment in its key, which HTTP clients remove from a URL's path (the signed link "
            f"would name another object): {show(url)}"
        )
    signed = len(url) - len(raw_key) + len(quote(key, safe="/-_.~")) + SIGNATURE_ROOM
    if signed > MAX_URL_LENGTH:
        return (
            f"has a key whose signed URL would be about {signed} characters (the key percent-encoded, and about "
            f"{SIGNATURE_ROOM} for the signature); at most {MAX_URL_LENGTH} can be fetched: {show(url)}"
        )
    return None


#: Fields whose presence makes a query string a signature (manifest.signed says which scheme each is).
_SIGNED_MARKERS = ("signature=", "sig=", "x-amz-credential=", "x-goog-credential=")


def may_be_signed(text: str) -> bool:
    """Whether `text` (a URL, or many joined) may hold a signed URL's query (then each URL is checked)."""
    if "?" not in text:
        return False
    lowered = text.lower()
    return any(marker in lowered for marker in _SIGNED_MARKERS)


def signature_problem(url: str) -> str | None:
    """Why a signed URL's expiry cannot be read, or None (also for a URL that is not signed)."""
    if not may_be_signed(url):
        return None
    try:
        url_expiry(url)
    except SignedUrlError as e:
        return f"is a signed URL that cannot be checked: {e}"
    return None


def cell_value(value: Any) -> Any:
    """An extra column's value as the ledger keeps it (`dumps_extra`, never sent): text, numbers (NaN and
    infinities too), booleans, null, lists and objects as they are, so an export gives back the manifest's
    types; what has no JSON form (a Parquet timestamp or decimal, and lists or objects holding one) as its text."""
    if value is None or type(value) in (str, int, bool, float):
        return value
    if isinstance(value, dict | list):
        try:
            dumps_extra(value)
            return value
        except (ValueError, TypeError):
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
        except RecursionError:
            return "(nested too deeply to show)"
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


def extra_json(value: Any) -> str:
    """One extra cell as JSON text (the fast path's piece of the extras object)."""
    return dumps_extra(cell_value(value))


def bad_unicode(text: str) -> bool:
    """A lone surrogate (from a JSON '\\ud800' escape) can be neither sent nor stored."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def plain(blob: str) -> bool | None:
    """For the fast path, of a chunk's values joined: True = printable and nothing to JSON-escape; False =
    printable but needs escaping; None = has control characters (the per-row checks will explain)."""
    if blob.isascii():
        b = blob.encode("ascii")
        if len(b.translate(None, _CTRL_QB)) == len(b):
            return True
        return False if len(b.translate(None, _CTRL)) == len(b) else None
    if not blob.isprintable():
        return None
    return '"' not in blob and "\\" not in blob


def escaped(values: Sequence[str]) -> list[str]:
    """JSON-escaped text of printable values, without quotes, in one C call (DEL cannot occur in them)."""
    return enc("\x7f".join(values))[1:-1].split("\x7f")


def needs_no_escape(blob: str) -> bool:
    if blob.isascii():
        b = blob.encode("ascii")
        return len(b.translate(None, _ESC)) == len(b)
    return '"' not in blob and "\\" not in blob and blob.isprintable()


def id_problem(value: str) -> str | None:
    """Why a project_id / work_flow_id cannot be used, or None."""
    if PATH_UNSAFE.search(value):
        return _UNSAFE_ID
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters long; at most {MAX_ID_LENGTH} are allowed"
    return None


def job_body(ref: str, wf: str, batch: str | None, data: Any, pw: str | None) -> str:
    """The exact compact JSON body of one job."""
    obj: dict[str, Any] = {"reference_id": ref, "work_flow_id": wf}
    if batch:
        obj["batch_id"] = batch
    obj["data"] = data
    if pw:
        obj["priority_weight"] = int(pw)
    return dumps(obj)


def unencodable(values: dict[str, Any]) -> Errors:
    """Which JSON values cannot be sent: NaN/±Infinity (a JSON number like 1e400 reads as infinity; Parquet
    doubles can be NaN) and Parquet timestamps, decimals or binary inside a struct/list have no JSON form, and
    nesting deeper than the interpreter's stack cannot be written."""
    errs: Errors = []
    for api, value in values.items():
        try:
            dumps(value)
        except ValueError:
            errs.append((api, f"{api} contains NaN or an infinite number (e.g. 1e400), which JSON cannot carry"))
        except TypeError as e:
            kind = str(e).removeprefix("Object of type ").split(" ")[0]
            errs.append((api, f"{api} contains a {kind} value, which JSON cannot carry; store it as text"))
        except RecursionError:
            errs.append((api, f"{api} is nested too deeply to send"))
    return errs or [(None, "the job cannot be written as JSON")]
