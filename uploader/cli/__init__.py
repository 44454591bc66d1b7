"""The `uploader` command: click commands, options and output over the library (packages' public names
only).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uploader.cli.commands import cli, main

#: Public name → its module, imported on first use (PEP 562): importing the package imports none of them.
_EXPORTS = {
    "cli": "uploader.cli.commands",
    "main": "uploader.cli.commands",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
