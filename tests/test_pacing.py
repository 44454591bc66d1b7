"""The run-wide pause and in-the-air window (uploader.pacing), with the clock under the test's control."""

from __future__ import annotations

import asyncio
import random

import pytest

from uploader import pacing
from uploader.pacing import Pacer


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
    for i in range(12):
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
