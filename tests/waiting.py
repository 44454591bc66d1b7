"""Wait for a condition with a deadline that fails the test, rather than polling on silently past it."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0, interval: float = 0.02) -> None:
    """Return as soon as `condition()` is true; fail the test naming `what` once `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
