"""The event loop the API's requests run in: uvloop where it is installed, else asyncio's own.

Much of the client's CPU per request is the event loop; uvloop's loop (libuv, in C) does the same work for
less (benchmarks/README.md, "uvloop"). It is a dependency everywhere it builds (not on Windows);
without it the standard loop runs the same code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "run_loop"]

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's `new_event_loop`, or None (asyncio's default) where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` in a new loop of `loop_factory`'s kind."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
