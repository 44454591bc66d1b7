"""When the next request may go: the run-wide pause and the window of requests in the air.

A run starts slowly: the window begins at one request (`slow_start`) and grows by one per answer that is
not a 429, so it doubles per round trip up to the concurrency. A wrong key or a wrong --batch-id then costs a
few requests, not a full window of them. An API slow to answer is no sign of a wrong key: while no answer
comes, the window still doubles every SLOW_START_PATIENCE seconds.

Two signals slow a whole run down, not one row:

- a 429 (THROTTLED): every sender pauses for the Retry-After, and the window of requests allowed in the air
  is halved (once per throttle round), then regrown by ~10% (at least one request) per second without a
  429. The pause alone is not enough: when it ends every sender fires at once, and against a limit of N/s
  all but the first burst meet another 429 and another pause; the narrowed window spaces the senders out
  (figures: benchmarks/README.md).
- no connection at all (policy.OUTAGE_CODES): the API is down or restarting. Every sender pauses with
  exponential backoff (capped at 10 s) and the attempt is not counted; once the API has been unreachable
  for longer than `outage_seconds` (30 s at most if it never answered this run: more likely a wrong base
  URL than a restart) the caller stops the run.

A 429's Retry-After is a floor added to a backoff that grows with the throttle rounds in a row
(`throttle_delay`), so `Retry-After: 0` cannot make the run hammer the API. Every wait here ends at once
when the run stops (`wake`).

`--rate R` is `RateLimiter`: at most R requests in any one-second window (R < 1: one every 1/R s), exact
arithmetic on a log of send times, with the clock passed in (tests/test_pacing.py drives it by hand).

Pure asyncio and arithmetic: no I/O, one event loop, no locks needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Callable

from uploader.api import MAX_RETRY_AFTER, Verdict, backoff_delay, next_delay

__all__ = ["Pacer", "RateLimiter"]

#: Longest single pause while the API is unreachable: a returning API is noticed within this.
MAX_OUTAGE_PAUSE = 10.0
#: Outage limit when the API never answered this run.
FIRST_CONTACT_LIMIT = 30.0
#: In slow start, the window doubles after this long without an answer (seconds).
SLOW_START_PATIENCE = 1.0


class Pacer:
    """The run-wide pause and the in-the-air window, shared by all senders of one run."""

    def __init__(
        self,
        concurrency: int,
        rng: random.Random,
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 60.0,
        outage_seconds: float = 300.0,
        max_retry_after: float = MAX_RETRY_AFTER,
        slow_start: bool = False,
        patience: float = SLOW_START_PATIENCE,
    ) -> None:
        self.concurrency = concurrency
        self.rng = rng
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.outage_seconds = outage_seconds
        self.pause_until = 0.0
        self.window = 1.0 if slow_start else float(concurrency)
        self.slow_start = slow_start and concurrency > 1  #: growing by one per answer until the first 429
        self.patience = patience
        self.grew_at = time.monotonic()  #: the window's last growth in slow start
        self.grows_from = 0.0  #: the window regrows from this moment (the end of the last throttle pause)
        self.in_air = 0
        self._freed = asyncio.Event()
        self.answered_once = False
        self.outage_since: float | None = None
        self.outage_rounds = 0
        self.max_retry_after = max_retry_after
        self.throttle_rounds = 0  #: rounds of 429s in a row (reset by any other answer)
        self._alarm = asyncio.Event()  #: set by `wake` (the run stops): every wait here ends

    async def acquire(self, stopping: Callable[[], bool]) -> bool:
        """Wait out the pause and for room in the window; False (no slot taken) if the run is stopping."""
        while True:
            # A pause may be extended while we sleep (another 429, the API still down): wait it out in full.
            while (wait := self.pause_until - time.monotonic()) > 0 and not stopping():
                await self.sleep(wait)
            if stopping():
                return False
            if self.in_air < int(self.window):
                self.in_air += 1
                return True
            self._freed.clear()
            if not self.slow_start:
                await self._freed.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self.grew_at + self.patience - time.monotonic())):
                    await self._freed.wait()
            if self.slow_start and time.monotonic() - self.grew_at >= self.patience:
                self._grow(min(float(self.concurrency), self.window * 2))  # no answer yet: slow, not refused

    async def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`; returns early once `wake` was called (the run is stopping)."""
        if self._alarm.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._alarm.wait()

    def wake(self) -> None:
        """The run stops: end every wait (pauses, room in the window, the rate) now, and from now on."""
        self._alarm.set()
        self._freed.set()

    def release(self) -> int:
        """Free a slot; returns how many requests were in the air with this one."""
        flying = self.in_air
        self.in_air -= 1
        self._freed.set()
        return flying

    def answered(self, throttled: bool, grow: bool = True) -> None:
        """The API answered: any outage is over; a narrowed window regrows unless this was a 429.
        In slow start every answer that is not a 429 (and `grow`: not one that stops the run) widens the
        window by one; the first 429 ends slow start."""
        self.answered_once = True
        self.outage_since, self.outage_rounds = None, 0
        if not throttled:
            self.throttle_rounds = 0
        if throttled:
            self.slow_start = False
        if throttled or not grow or self.window >= self.concurrency:
            return
        if self.slow_start:
            self._grow(min(float(self.concurrency), self.window + 1))
            return
        now = time.monotonic()
        if now > self.grows_from:
            step = (now - self.grows_from) * max(1.0, self.window / 10)
            self.window = min(float(self.concurrency), self.window + step)
            self.grows_from = now

    def _grow(self, window: float) -> None:
        """Slow start: widen the window (slow start ends at the concurrency) and let the waiting senders see it."""
        self.window = window
        self.grew_at = time.monotonic()
        self.slow_start = window < self.concurrency
        self._freed.set()

    def throttle_delay(self, retry_after: float | None) -> float:
        """A 429's delay: its Retry-After (capped) plus a backoff growing with the rounds of 429s in a row.

        A new round begins when a 429 arrives after the last pause ended; the senders of one burst share a
        round. With `Retry-After: 0` the run still backs off 0.5, 1, 2, 4… s (jittered) while the 429s last.
        """
        if time.monotonic() >= self.pause_until:
            self.throttle_rounds += 1
        return next_delay(
            Verdict.THROTTLED,
            self.throttle_rounds,
            retry_after,
            self.rng,
            base=self.backoff_base,
            cap=self.backoff_cap,
            max_retry_after=self.max_retry_after,
        )

    def throttled(self, delay: float, flying: int) -> None:
        """A 429: pause everyone for `delay`; the first 429 of a round halves the window."""
        now = time.monotonic()
        self.slow_start = False
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


#: Added to the rate limiter's window: what the server sees is our send times plus a delivery delay that
#: varies (a new connection's handshake delays a run's first requests by milliseconds, even on loopback), so
#: an exact window on our clock could show R+1 requests within one second on the server's.
RATE_MARGIN = 0.05


class RateLimiter:
    """At most `rate` requests in any one-second window; below 1/s, one request every 1/rate seconds.

    A sliding log of the last `n` send times: a request may go when fewer than `n` were sent in the last
    `period` seconds (rate ≥ 1: n = ⌊rate⌋ in 1 s — a whole number of requests fits in a window; rate < 1:
    n = 1 in 1/rate s), the period lengthened by `margin` (RATE_MARGIN) for delivery jitter. No burst
    beyond the window (a token bucket such as aiolimiter's lets 2R through in its first second). Pure
    arithmetic: the caller passes `now` (time.monotonic) and sleeps for the delay itself.
    """

    def __init__(self, rate: float, margin: float = RATE_MARGIN) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number, not {rate!r}")
        self.rate = rate
        self.n = max(1, math.floor(rate)) if rate >= 1 else 1
        self.period = (1.0 if rate >= 1 else 1.0 / rate) + margin
        self.sent: deque[float] = deque()

    def delay(self, now: float) -> float:
        """Seconds until a request may go (0: now). Does not reserve: call `take` when sending."""
        while self.sent and self.sent[0] <= now - self.period:
            self.sent.popleft()
        if len(self.sent) < self.n:
            return 0.0
        return self.sent[0] + self.period - now

    def take(self, now: float) -> None:
        """Record a request sent at `now` (after `delay(now)` returned 0)."""
        self.sent.append(now)
