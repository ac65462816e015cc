"""The runtime's only clock reads: wall time in ms (for messages) and a monotonic clock."""

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
