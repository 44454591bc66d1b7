"""Sizes as a person writes them on the command line: `64Mi`, `1G`, `500k`, or a plain number of bytes."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import click

__all__ = ["ByteSize"]

#: Multipliers of the suffixes ByteSize reads: decimal (k, M, G) and binary (Ki, Mi, Gi), an optional `B`.
_FACTORS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}
_SIZE = re.compile(r"(\d+)\s*(k|m|g|ki|mi|gi)?b?")

if TYPE_CHECKING:  # click 8.5 types ParamType by its value and input; older clicks cannot subscript it
    _ParamType = click.ParamType[int, Any]
else:
    _ParamType = click.ParamType


class ByteSize(_ParamType):
    """A number of bytes, at least 1: `67108864`, `64Mi`, `64MiB`, `500k`, `1G`."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            size = value
        else:
            m = _SIZE.fullmatch(str(value).strip().lower())
            if not m:
                self.fail(f"{value!r} is not a size such as 67108864, 64Mi or 1G", param, ctx)
            size = int(m.group(1)) * _FACTORS[m.group(2) or ""]
        if size < 1:
            self.fail(f"{value!r} is not a size of at least 1 byte", param, ctx)
        return size
