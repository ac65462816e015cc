"""The Ticker: periodic work that costs nothing while there is none."""

from __future__ import annotations

import trio

from agentd.runtime.timers import Ticker


async def test_a_ticker_ticks_while_work_remains_then_parks_until_woken(autojump_clock):
    work = [3]  # ticks of work left
    ticks: list[float] = []

    async def tick() -> bool:
        ticks.append(trio.current_time())
        work[0] -= 1
        return work[0] > 0

    ticker = Ticker(0.5, tick, armed=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(ticker.run)
        await trio.sleep(10)
        assert ticks == []  # not armed: no work, no wake-ups
        ticker.wake()
        await trio.sleep(10)
        assert ticks == [10.5, 11.0, 11.5]  # every interval while work remained, then parked
        work[0] = 1
        ticker.wake()
        await trio.sleep(10)
        assert ticks[3:] == [20.5]
        nursery.cancel_scope.cancel()


async def test_immediately_ticks_at_start(autojump_clock):
    ticks: list[float] = []

    async def tick() -> bool:
        ticks.append(trio.current_time())
        return True

    async with trio.open_nursery() as nursery:
        await nursery.start(Ticker(60, tick, immediately=True).run)
        await trio.sleep(150)
        assert ticks == [0, 60, 120]
        nursery.cancel_scope.cancel()


async def test_a_tick_that_knows_its_next_due_time_sleeps_that_long(autojump_clock):
    ticks: list[float] = []
    delays = [5.0, 0.1, False]  # next due in 5 s; then sooner than the interval; then idle

    async def tick() -> bool | float:
        ticks.append(trio.current_time())
        return delays.pop(0)

    async with trio.open_nursery() as nursery:
        await nursery.start(Ticker(1, tick).run)
        await trio.sleep(60)
        assert ticks == [1, 6, 7]  # never sooner than the interval; parked once idle
        nursery.cancel_scope.cancel()
