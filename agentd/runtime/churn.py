"""How often one peer's channels opening and closing are worth a line, and a write.

A peer we know gets a line at ``info`` when its channel opens and when it closes, and its
``last_seen`` stored; a known peer reconnecting in a loop made 6,178 connections in 10 s:
200 KB of log a second and a store each time. Past ``LINES`` of its channel events in a
``WINDOW_S``, the rest of that window are logged at ``debug`` (the line that passes the mark
says so), and ``last_seen`` is stored at most once a ``STORE_S``.
"""

from __future__ import annotations

from collections import OrderedDict

LINES = 20  # channel events of one peer logged at info in a window
WINDOW_S = 60.0
STORE_S = 1.0  # the least time between two stores of a peer's last_seen
TRACKED = 4096  # peers whose window is kept (the oldest forgotten: a full window again)


class Churn:
    def __init__(self) -> None:
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()  # start, events
        self._stored: OrderedDict[str, float] = OrderedDict()  # when last_seen was stored

    def event(self, agent: str, now: float) -> int:
        """The count of ``agent``'s channel events in the window ``now`` (monotonic seconds)
        falls in, this one included: logged at info up to ``LINES``."""
        start, count = self._windows.pop(agent, (now, 0))
        if now - start >= WINDOW_S:
            start, count = now, 0
        self._windows[agent] = (start, count + 1)
        while len(self._windows) > TRACKED:
            self._windows.popitem(last=False)
        return count + 1

    def store_due(self, agent: str, now: float) -> bool:
        """Whether ``agent``'s last_seen is to be stored now (and noted as stored)."""
        last = self._stored.pop(agent, None)
        due = last is None or now - last >= STORE_S
        self._stored[agent] = now if due else last
        while len(self._stored) > TRACKED:
            self._stored.popitem(last=False)
        return due


__all__ = ["LINES", "Churn"]
