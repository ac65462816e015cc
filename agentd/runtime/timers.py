"""Periodic and background work: a :class:`Ticker` that ticks only while there is work, and
:class:`Failures`, which keeps a background task alive while the database fails.

A node has a few timers (the outbox's retry scan, credit's chain repair, maintenance). Each
running every interval forever costs every node a wake-up per interval even when idle — at a
thousand simulated nodes that is most of the event loop. A ticker sleeps parked until
``wake()`` says there is work, then calls ``tick()`` every ``interval`` seconds for as long as
``tick()`` returns True (work remains) — or, when it returns a number of seconds, after that
long (never sooner than ``interval``): a timer that knows when its next work is due.

A failure of the database (disk full, I/O error, its file deleted: ``store.is_failure``) is
ours, not a bug, and must cost neither the node nor its background work: a tick that meets
one is tried again after a backoff (``RETRY_S`` doubling up to ``RETRY_MAX_S``, so a lasting
failure never spins), logged once per streak. Any other exception is a bug and still
propagates (and stops the node, as before): swallowing it would hide it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from store import is_failure

log = logging.getLogger("agentd.runtime")
T = TypeVar("T")
RETRY_S = 1.0  # the first wait before work that met a failing database is tried again
RETRY_MAX_S = 60.0  # the longest, while it keeps failing


class Failures:
    """One background task's streak of database failures. The writer (or a read) has
    counted each already (``db_errors`` in getinfo); this logs the first of a streak at
    error level, naming the task, and when the task works again."""

    def __init__(self, task: str, *, meanwhile: str | None = None) -> None:
        """``task``: what a person reads in the log (what is not being done);
        ``meanwhile``: what happens until it works, when not the backoff's retries."""
        self.task = task
        self.meanwhile = meanwhile or f"trying again, at most every {RETRY_MAX_S:g} s"
        self.streak = 0

    def survive(self, exc: BaseException) -> float | None:
        """The seconds to wait before trying again after ``exc``, a failure of the database;
        None when ``exc`` is not one (a bug: the caller re-raises it)."""
        if not is_failure(exc):
            return None
        self.streak += 1
        if self.streak == 1:
            log.error("%s failed: the database failed (%s); %s; logged once until it "
                      "works (getinfo: last_db_error)", self.task, exc, self.meanwhile)
        return min(RETRY_MAX_S, RETRY_S * 2 ** min(self.streak - 1, 16))

    def recovered(self) -> None:
        """The task's work went through: a streak of failures, if any, is over."""
        if self.streak:
            log.warning("%s works again, after %d database failures", self.task, self.streak)
            self.streak = 0

    async def retry(self, work: Callable[[], Awaitable[T]]) -> T:
        """``work()``'s result, tried again after a backoff for as long as the database
        fails (for a loop whose next step needs this one done)."""
        while True:
            try:
                result = await work()
            except Exception as exc:
                wait = self.survive(exc)
                if wait is None:
                    raise
                await trio.sleep(wait)
                continue
            self.recovered()
            return result


class Ticker:
    def __init__(self, interval: float, tick: Callable[[], Awaitable[bool | float]], *,
                 armed: bool = True, immediately: bool = False, task: str | None = None
                 ) -> None:
        """``armed``: there may be work at start; ``immediately``: tick once before the
        first interval (at start); ``task``: what the log calls it (default: the tick's
        name)."""
        self.interval = interval
        self.tick = tick
        self.immediately = immediately
        self.failures = Failures(task or getattr(tick, "__qualname__", "a timer"))
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
        """Tick; the delay before the next tick (if ``_work`` stays set). A tick that met a
        failing database is due again after the backoff, whether or not woken meanwhile."""
        self._work = trio.Event()  # a wake() from here on is seen after this tick
        try:
            again = await self.tick()
        except Exception as exc:
            retry = self.failures.survive(exc)
            if retry is None:
                raise
            self._work.set()
            return retry
        self.failures.recovered()
        if again is False:
            return self.interval
        self._work.set()
        return self.interval if again is True else max(self.interval, again)


__all__ = ["Failures", "Ticker"]
