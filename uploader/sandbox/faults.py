"""Which fault, if any, a request meets: decided up front from one seeded random.Random.

Every decision draws exactly three numbers (jitter, refusal, after-effect) whatever the settings, so a
given seed and request order always give the same faults. The clock is injected for the token bucket,
which keeps the whole module free of I/O and testable without sleeping.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from uploader.sandbox.config import SandboxConfig

__all__ = ["Decision", "FaultInjector", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one request.

    `refuse` ("rate_limited", "error" or "html") answers without touching state; `after` ("drop" or
    "slow") happens once the request has been processed (the job, if any, is already stored).
    """

    delay_s: float = 0.0
    refuse: str | None = None
    after: str | None = None


class TokenBucket:
    """Admits `rate` requests per second on average, with bursts of up to `burst`."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def _bucket(config: SandboxConfig, now: float) -> TokenBucket | None:
    if config.rate_limit is None:
        return None
    burst = config.rate_burst if config.rate_burst is not None else max(1.0, config.rate_limit / 10)
    return TokenBucket(config.rate_limit, burst, now)


class FaultInjector:
    """Turns a config into per-request decisions; `reconfigure` switches faults on a running sandbox."""

    def __init__(self, config: SandboxConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.config = config
        self.rng = random.Random(config.seed)
        self.bucket = _bucket(config, clock())

    def reconfigure(self, config: SandboxConfig) -> None:
        """Apply new settings; the random sequence restarts only when the seed changes."""
        old, self.config = self.config, config
        if config.seed != old.seed:
            self.rng = random.Random(config.seed)
        if (config.rate_limit, config.rate_burst) != (old.rate_limit, old.rate_burst):
            self.bucket = _bucket(config, self.clock())

    def decide(self) -> Decision:
        c = self.config
        rng = self.rng
        u_jitter, u_refuse, u_after = rng.random(), rng.random(), rng.random()
        delay_s = (c.latency_ms + u_jitter * c.jitter_ms) / 1000
        refuse: str | None = None
        if self.bucket is not None and not self.bucket.take(self.clock()):
            refuse = "rate_limited"
        elif u_refuse < c.error_rate:
            refuse = "error"
        elif u_refuse < c.error_rate + c.html_error_rate:
            refuse = "html"
        after: str | None = None
        if refuse is None:
            if u_after < c.drop_rate:
                after = "drop"
            elif u_after < c.drop_rate + c.slow_rate:
                after = "slow"
        if delay_s == 0 and refuse is None and after is None:
            return _NO_FAULT
        return Decision(delay_s, refuse, after)


_NO_FAULT = Decision()
