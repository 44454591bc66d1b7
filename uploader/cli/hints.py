"""Follow-up commands the CLI suggests (`uploader export …`, `retry …`, `reconcile …`), written so that they
act on the same ledger (and API) as the command that printed them: its `--ledger` and `--base-url`, when
given on the command line, are repeated, shell-quoted. Values from the environment are not repeated (the
environment still applies), and a password in a ledger URL is never printed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import click
from click.core import ParameterSource

__all__ = ["NO_REPEAT", "Repeat", "repeat_from_context"]


@dataclass(frozen=True)
class Repeat:
    """The options of the current command that a follow-up command must repeat."""

    ledger: str | None = None
    base_url: str | None = None

    def command(self, words: str, *, api: bool = False) -> str:
        """`uploader WORDS --ledger L` (and `--base-url U` when `api`: the follow-up talks to the API)."""
        parts = [f"uploader {words}"]
        if self.ledger:
            parts.append(f"--ledger {shlex.quote(hide_password(self.ledger))}")
        if api and self.base_url:
            parts.append(f"--base-url {shlex.quote(self.base_url)}")
        return " ".join(parts)


#: Nothing to repeat: the plain commands.
NO_REPEAT = Repeat()


def hide_password(ledger: str) -> str:
    """`--ledger` as a printed command may repeat it: a path unchanged, a URL without its passwords."""
    if "://" not in ledger:
        return ledger
    from uploader.ledger import shown_ledger

    return shown_ledger(ledger)


def repeat_from_context(ctx: click.Context | None = None) -> Repeat:
    """The current command's --ledger and --base-url, each only when given on the command line."""
    ctx = ctx or click.get_current_context(silent=True)
    if ctx is None:
        return Repeat()

    def given(name: str) -> str | None:
        value = ctx.params.get(name)
        if not value or ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            return None
        return str(value)

    return Repeat(ledger=given("ledger"), base_url=given("base_url"))
