"""One way to run periodic work: a :class:`Ticker` that ticks only while there is work.

A node has a few timers (the outbox's retry scan, credit's chain repair, maintenance). Each
running every interval forever costs every node a wake-up per interval even when idle — at a
thousand simulated nodes that is most of the event loop. A ticker sleeps parked until
``wake()`` says there is work, then calls ``tick()`` every ``interval`` seconds for as long as
``tick()`` returns True (work remains) — or, when it returns a number of seconds, after that
long (never sooner than ``interval``): a timer that knows when its next work is due.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio


class Ticker:
    def __init__(self, interval: float, tick: Callable[[], Awaitable[bool | float]], *,
                 armed: bool = True, immediately: bool = False) -> None:
        """``armed``: there may be work at start; ``immediately``: tick once before the
        first interval (at start)."""
        self.interval = interval
        self.tick = tick
        self.immediately = immediately
        self._work = trio.Event()
        if armed:
            self._work.set()

    def wake(self) -> None:
        """There is (new) work: tick within ``interval`` and keep ticking while it lasts."""
        self._work.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        delay = self.interval
        if self.immediately:
            delay = await self._tick()
        while True:
            await self._work.wait()
            await trio.sleep(delay)
            delay = await self._tick()

    async def _tick(self) -> float:
        """Tick; the delay before the next tick (if ``_work`` stays set)."""
        self._work = trio.Event()  # a wake() from here on is seen after this tick
        again = await self.tick()
        if again is False:
            return self.interval
        self._work.set()
        return self.interval if again is True else max(self.interval, again)


__all__ = ["Ticker"]
