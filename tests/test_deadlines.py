"""Read deadlines kept by one watchdog: they fire, move with progress, and never turn
someone else's cancellation into a timeout."""

from __future__ import annotations

import asyncio

import pytest

from proxy.egress.deadlines import TICK, Deadlines


async def test_an_armed_deadline_fires_as_a_timeout_within_a_tick() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        with deadlines.deadline(0.1) as deadline:
            deadline.sent()
            await asyncio.sleep(5)
    assert 0.1 <= loop.time() - started < 0.1 + 3 * TICK
    await deadlines.close()


async def test_progress_pushes_the_deadline_back_and_unarmed_ones_never_fire() -> None:
    deadlines = Deadlines()
    with deadlines.deadline(0.15) as deadline:
        for _ in range(6):  # 0.3 s in all, never 0.15 s without progress
            deadline.sent()
            await asyncio.sleep(0.05)
    with deadlines.deadline(0.05):  # never armed: headers not sent yet
        await asyncio.sleep(0.2)
    await deadlines.close()


async def test_another_cancellation_stays_a_cancellation() -> None:
    deadlines = Deadlines()

    async def request() -> None:
        with deadlines.deadline(10) as deadline:
            deadline.sent()
            await asyncio.sleep(5)

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0.01)
    task.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    await deadlines.close()


async def test_the_watchdog_stops_when_nothing_is_in_flight() -> None:
    deadlines = Deadlines()
    with deadlines.deadline(1) as deadline:
        deadline.sent()
    await asyncio.sleep(3 * TICK)
    assert deadlines._watchdog is None


async def test_one_watchdog_serves_requests_that_follow_each_other() -> None:
    deadlines = Deadlines()
    watchdogs = set()
    for _ in range(5):  # each over before the watchdog first runs, the next soon after
        with deadlines.deadline(1) as deadline:
            deadline.sent()
        watchdogs.add(deadlines._watchdog)
        await asyncio.sleep(0)
    assert len(watchdogs) == 1 and None not in watchdogs
    await deadlines.close()
