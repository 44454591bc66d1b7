"""The `uploader` command: click commands, options and output over the library."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "main":  # imported on use, as the console script's entry point `uploader.cli:main`
        from uploader.cli.commands import main

        return main
    raise AttributeError(f"module 'uploader.cli' has no attribute {name!r}")
