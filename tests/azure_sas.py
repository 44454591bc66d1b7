"""An Azure service SAS's signature, computed from the documented algorithm (version 2020-12-06 and later):
what the tests check uploader's Azure links against, without Azure."""

from __future__ import annotations

import base64
import hashlib
import hmac


def sas_signature(fields: dict[str, str], resource: str, account_key: str) -> str:
    """The `sig` of a SAS with query `fields` for `resource` (`/blob/ACCOUNT/CONTAINER/BLOB`), signed with the
    base64 `account_key`: the fields in the documented order, one a line."""
    string_to_sign = "\n".join(
        [
            fields.get("sp", ""),
            fields.get("st", ""),
            fields.get("se", ""),
            resource,
            fields.get("si", ""),
            fields.get("sip", ""),
            fields.get("spr", ""),
            fields["sv"],
            fields["sr"],
            fields.get("sst", ""),
            fields.get("ses", ""),
            *(fields.get(f, "") for f in ("rscc", "rscd", "rsce", "rscl", "rsct")),
        ]
    )
    digest = hmac.new(base64.b64decode(account_key), string_to_sign.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()
