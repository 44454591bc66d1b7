"""The run-wide pause and in-the-air window (uploader.send.pacing), with the clock under the test's control."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from uploader.send import pacing
from uploader.send.pacing import Pacer


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(pacing.time, "monotonic", lambda: now[0])
    return now


def test_first_429_of_a_round_halves_the_window_once(clock):
    p = Pacer(32, random.Random(0))
    p.throttled(1.0, flying=32)
    assert p.window == 16 and p.pause_until == 1001.0
    for _ in range(20):  # the rest of the same burst
        p.throttled(1.0, flying=30)
    assert p.window == 16
    clock[0] = 1001.5
    p.throttled(1.0, flying=4)  # a new round, with few in the air: half of what was really flying
    assert p.window == 2


def test_window_regrows_after_the_pause_not_during_it(clock):
    p = Pacer(10, random.Random(0))
    p.throttled(1.0, flying=10)
    assert p.window == 5
    clock[0] = 1000.5
    p.answered(throttled=False)  # an answer still in the air during the pause
    assert p.window == 5
    clock[0] = 1003.0  # two seconds after the pause: +1 a second
    p.answered(throttled=False)
    assert p.window == 7
    clock[0] = 1100.0
    p.answered(throttled=False)
    assert p.window == 10  # never above the concurrency


def test_outage_pauses_grow_and_the_limit_stops_the_run(clock):
    p = Pacer(8, random.Random(0), outage_seconds=60)
    delays = []
    for _ in range(12):
        delay, over = p.unreachable()
        delays.append(delay)
        assert over is None or clock[0] - 1000 > 30
        clock[0] = p.pause_until
    assert max(delays) <= pacing.MAX_OUTAGE_PAUSE
    # Never answered: 30 s at most. Once it answered, the run's own limit applies.
    clock[0] = 1031.0
    assert p.unreachable()[1] == pytest.approx(31.0)
    p.answered(throttled=False)
    clock[0] = 1040.0
    assert p.unreachable()[1] is None
    clock[0] = 1101.0
    assert p.unreachable()[1] == pytest.approx(61.0)


def test_acquire_waits_for_room_in_the_window():
    async def main() -> list[str]:
        p = Pacer(4, random.Random(0))
        p.window = 1.0
        order: list[str] = []

        async def one(name: str) -> None:
            assert await p.acquire(lambda: False)
            order.append(f"start {name}")
            await asyncio.sleep(0.01)
            order.append(f"end {name}")
            p.release()

        await asyncio.gather(one("a"), one("b"))
        assert not await Pacer(1, random.Random(0)).acquire(lambda: True)  # stopping: no slot
        return order

    assert asyncio.run(main()) == ["start a", "end a", "start b", "end b"]


def _drive(limiter, attempts: int, start: float = 0.0) -> list[float]:
    """Send `attempts` requests as fast as the limiter allows (each waits exactly its delay): send times."""
    now, sent = start, []
    for _ in range(attempts):
        while (wait := limiter.delay(now)) > 0:
            now += wait
        limiter.take(now)
        sent.append(now)
    return sent


@pytest.mark.parametrize(
    ("rate", "n", "first_second", "spacing"),
    [
        (5.0, 30, 5, None),  # aiolimiter let 10 through in the first second
        (1.0, 10, 1, 1.0),
        (2.5, 20, 2, None),  # whole requests: at most 2 in any second
        (0.5, 4, 1, 2.0),  # aiolimiter refused a rate below 1: nothing was sent
        (0.1, 3, 1, 10.0),
        (64.0, 500, 64, None),
    ],
)
def test_rate_limiter_at_most_r_in_any_second(rate: float, n: int, first_second: int, spacing: float | None):
    sent = _drive(pacing.RateLimiter(rate, margin=0.0), n)
    assert len(sent) == n  # it always lets requests go, however slow the rate
    assert sum(t < 1.0 for t in sent) == first_second
    cap = max(1, int(rate)) if rate >= 1 else 1
    period = 1.0 if rate >= 1 else 1 / rate
    for i in range(len(sent) - cap):  # any window of `period` seconds holds at most `cap`
        assert sent[i + cap] - sent[i] >= period - 1e-9
    if spacing is not None:
        assert all(b - a == pytest.approx(spacing) for a, b in zip(sent, sent[1:]))
    # and it is not slower than it must be: the long-run rate is the allowed one
    assert (n - 1) / max(sent[-1], 1e-9) >= min(rate, cap / period) * 0.8 or n <= cap


def test_rate_limiter_forgets_old_sends_and_refuses_nonsense():
    lim = pacing.RateLimiter(2, margin=0.0)
    lim.take(0.0)
    lim.take(0.1)
    assert lim.delay(0.5) == pytest.approx(0.5)
    assert lim.delay(1.0) == 0.0  # the send at 0.0 left the window [0.0, 1.0)
    assert lim.delay(100.0) == 0.0 and not lim.sent
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            pacing.RateLimiter(bad)
    padded = pacing.RateLimiter(5)  # the default margin for delivery jitter: a window a little over 1 s
    assert _drive(padded, 6)[5] == pytest.approx(1.0 + pacing.RATE_MARGIN)


def test_throttle_rounds_grow_while_429s_last_and_reset_on_an_answer(clock):
    p = Pacer(8, random.Random(0))
    delays = []
    for _ in range(6):  # each 429 arrives after the last pause ended: a new round
        d = p.throttle_delay(0.0)  # Retry-After: 0
        p.throttled(d, flying=8)
        delays.append(d)
        clock[0] = p.pause_until
    assert p.throttle_rounds == 6
    assert sum(delays) > 5  # 0.5, 1, 2, 4, 8, 16 s ceilings: no longer ~0 each
    p.throttled(p.throttle_delay(0.0), flying=8)  # round 7 begins
    clock[0] = (clock[0] + p.pause_until) / 2
    p.throttle_delay(0.0)  # another 429 of the same burst (still paused): the same round
    assert p.throttle_rounds == 7
    p.answered(throttled=False)
    assert p.throttle_rounds == 0
    assert 300.0 <= p.throttle_delay(86_400.0) <= 300.5  # a day's hint cut to --max-retry-after


def test_wake_ends_every_wait_at_once():
    async def main() -> float:
        p = Pacer(2, random.Random(0))
        p.pause_until = time.monotonic() + 3600  # a Retry-After of an hour
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, p.wake)
        stopping = [False]
        loop.call_later(0.05, lambda: stopping.__setitem__(0, True))
        t0 = time.monotonic()
        assert not await p.acquire(lambda: stopping[0])
        await p.sleep(3600)  # after wake, sleeps return at once
        return time.monotonic() - t0

    assert asyncio.run(main()) < 5
