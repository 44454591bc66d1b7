"""The HTTP stack made ready on a thread while a command imports and opens the rest.

Making the client's TLS context means loading CA certificates, which OpenSSL does without holding the GIL: on a
second core it overlaps the main thread's imports (SQLAlchemy) and ledger work, as does some of importing the
client (httpx) itself. Only standard library imports here:
`warm_up` is called before anything heavy is imported.

The thread must have ended before the process forks (a load's slice readers refuse to fork while another
thread runs): the command calls `settle_warm_up` before its load.
"""

from __future__ import annotations

import ssl
import threading

__all__ = ["settle_warm_up", "tls_context", "warm_up"]


class _Warming:
    """Importing the client and making one TLS context, in a daemon thread (a command that fails first just
    exits)."""

    def __init__(self) -> None:
        self.context: ssl.SSLContext | None = None
        self.thread = threading.Thread(target=self._work, name="uploader-http-warm-up", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            from uploader.api import client

            self.context = client.new_tls_context()
        except Exception:  # noqa: BLE001 - the main thread imports and makes it again, and reports what fails
            self.context = None


_slot: _Warming | None = None


def warm_up() -> None:
    """Start importing the client and making its TLS context in the background (once per process)."""
    global _slot
    if _slot is None:
        _slot = _Warming()


def settle_warm_up() -> None:
    """Wait until the warm-up (if any) has ended: before a fork, and before the client is used."""
    if _slot is not None:
        _slot.thread.join()


def tls_context() -> ssl.SSLContext | None:
    """The context the warm-up made, taken once (a later client makes its own, from the environment as it is
    then); None without a warm-up."""
    global _slot
    taken, _slot = _slot, None
    if taken is None:
        return None
    taken.thread.join()
    return taken.context
