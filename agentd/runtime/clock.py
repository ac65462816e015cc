"""The runtime's only clock reads: wall time in ms (for messages and rows) and monotonic time.

Everything in agentd/ that needs the time asks the node's ``Clock``. Monotonic time is Trio's
(``trio.current_time``), so a test running under ``trio.testing.MockClock`` drives every
timer — ack timeouts, retry scans, sweeps; wall time is read from the OS and may be called
from the database writer thread too. A test that needs another wall clock passes a subclass.
"""

from __future__ import annotations

import time

import trio


class Clock:
    def now_ms(self) -> int:
        """Milliseconds since the epoch: what messages and database rows carry."""
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        """Seconds on Trio's clock (event loop only): what timers and deadlines use."""
        return trio.current_time()
