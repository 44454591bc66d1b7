"""The `uploader` program's first step (and `python -m uploader`'s): imports nothing of its own but `signal`."""

from __future__ import annotations

import signal
from typing import NoReturn


def entry() -> NoReturn:
    """The `uploader` program. Ctrl-C and SIGTERM are held while it imports the command line (tens of
    milliseconds), then stop it as they stop any command: a signal there would otherwise kill it without a
    word (SIGTERM) or print a traceback from whichever import it broke into (Ctrl-C)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        from uploader.cli.commands import entry as program
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        raise
    program(held)
