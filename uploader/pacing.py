"""When the next request may go: the run-wide pause and the window of requests in the air.

Two signals slow a whole run down, not one row:

- a 429 (THROTTLED): every sender pauses for the Retry-After, and the window of requests allowed in the air
  is halved (once per throttle round), then regrown by ~10% (at least one request) per second without a
  429. The pause alone is not enough: when it ends every sender fires at once, and against a limit of N/s
  all but the first burst meet another 429 and another pause (measured: 100 rows under a 100/s limit at
  concurrency 32 took 172 429s and 9.5 s with the pause alone; 33 and 5.3 s with the window).
- no connection at all (policy.OUTAGE_CODES): the API is down or restarting. Every sender pauses with
  exponential backoff (capped at 10 s) and the attempt is not counted; once the API has been unreachable
  for longer than `outage_seconds` (30 s at most if it never answered this run: more likely a wrong base
  URL than a restart) the caller stops the run.

Pure asyncio and arithmetic: no I/O, one event loop, no locks needed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from uploader.policy import backoff_delay

__all__ = ["Pacer"]

#: Longest single pause while the API is unreachable: a returning API is noticed within this.
MAX_OUTAGE_PAUSE = 10.0
#: Outage limit when the API never answered this run.
FIRST_CONTACT_LIMIT = 30.0


class Pacer:
    """The run-wide pause and the in-the-air window, shared by all senders of one run."""

    def __init__(self, concurrency: int, rng: random.Random, *, backoff_base: float = 0.5,
                 backoff_cap: float = 60.0, outage_seconds: float = 300.0) -> None:
        self.concurrency = concurrency
        self.rng = rng
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.outage_seconds = outage_seconds
        self.pause_until = 0.0
        self.window = float(concurrency)
        self.grows_from = 0.0  #: the window regrows from this moment (the end of the last throttle pause)
        self.in_air = 0
        self._freed = asyncio.Event()
        self.answered_once = False
        self.outage_since: float | None = None
        self.outage_rounds = 0

    async def acquire(self, stopping: Callable[[], bool]) -> bool:
        """Wait out the pause and for room in the window; False (no slot taken) if the run is stopping."""
        while True:
            # A pause may be extended while we sleep (another 429, the API still down): wait it out in full.
            while (wait := self.pause_until - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if stopping():
                return False
            if self.in_air < int(self.window):
                self.in_air += 1
                return True
            self._freed.clear()
            await self._freed.wait()

    def release(self) -> int:
        """Free a slot; returns how many requests were in the air with this one."""
        flying = self.in_air
        self.in_air -= 1
        self._freed.set()
        return flying

    def answered(self, throttled: bool) -> None:
        """The API answered: any outage is over; a narrowed window regrows unless this was a 429."""
        self.answered_once = True
        self.outage_since, self.outage_rounds = None, 0
        if throttled or self.window >= self.concurrency:
            return
        now = time.monotonic()
        if now > self.grows_from:
            step = (now - self.grows_from) * max(1.0, self.window / 10)
            self.window = min(float(self.concurrency), self.window + step)
            self.grows_from = now

    def throttled(self, delay: float, flying: int) -> None:
        """A 429: pause everyone for `delay`; the first 429 of a round halves the window."""
        now = time.monotonic()
        if now >= self.grows_from:
            self.window = max(1.0, min(self.window, flying) / 2)
        self.pause_until = max(self.pause_until, now + delay)
        self.grows_from = max(self.grows_from, self.pause_until)

    def unreachable(self) -> tuple[float, float | None]:
        """No connection: pause everyone. Returns (this row's delay, seconds unreachable if past the limit)."""
        now = time.monotonic()
        limit = self.outage_seconds if self.answered_once else min(self.outage_seconds, FIRST_CONTACT_LIMIT)
        if self.outage_since is None:
            self.outage_since = now
        over = now - self.outage_since if now - self.outage_since > limit else None
        if now >= self.pause_until:  # a new round of failures, not the senders that failed together
            self.outage_rounds += 1
        cap = min(MAX_OUTAGE_PAUSE, self.backoff_cap)
        delay = backoff_delay(self.outage_rounds, self.rng, self.backoff_base, cap)
        self.pause_until = max(self.pause_until, now + delay)
        return delay, over
