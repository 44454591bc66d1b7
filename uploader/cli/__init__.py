"""The `uploader` command: click commands, options and output over the library (packages' public names
only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from uploader._lazy import lazy_exports

if TYPE_CHECKING:
    from uploader.cli.commands import cli as cli
    from uploader.cli.commands import main as main
    from uploader.cli.program import entry as entry

#: Public name → its module, imported on first use (PEP 562): importing the package imports none of them.
_EXPORTS = {
    "cli": "uploader.cli.commands",
    "main": "uploader.cli.commands",
    "entry": "uploader.cli.program",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
