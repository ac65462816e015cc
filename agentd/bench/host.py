"""What the host itself costs, measured beside a benchmark's figures so that runs on
different machines can be compared (the same code's ``bench lifts`` figures have differed
by more than 2x between two 2-core VMs).

- ``host_fsync_us``: a 4 KiB write and an ``fsync`` of a file in the benchmark's directory
  (what a durable commit waits for), the median of ``rounds``;
- ``host_thread_rtt_us``: a value passed to another thread and back through two queues
  (what handing a job to a node's writer thread and hearing it committed costs), the median.
  On an idle host that is a wake of another core; with every core busy the other thread
  runs on the same one and it reads several times lower (7 against 45-80 µs on one VM);
- ``host_python_mops``: millions of steps a second of a plain Python loop (the interpreter's
  own speed, which most of a message's CPU is).
"""

from __future__ import annotations

import os
import queue
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path


def _median_us(rounds: int, step: Callable[[], object]) -> float:
    """The median time of ``step``, in microseconds, over ``rounds`` calls."""
    took = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        took.append(time.perf_counter() - started)
    return statistics.median(took) * 1e6


def fsync_us(directory: Path, rounds: int = 100) -> float:
    path = directory / "host-fsync.bin"
    block = b"\0" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return _median_us(rounds, lambda: (os.write(fd, block), os.fsync(fd)))
    finally:
        os.close(fd)
        path.unlink()


def thread_rtt_us(rounds: int = 2000) -> float:
    there: queue.SimpleQueue = queue.SimpleQueue()
    back: queue.SimpleQueue = queue.SimpleQueue()

    def echo() -> None:
        while (item := there.get()) is not None:
            back.put(item)

    thread = threading.Thread(target=echo, name="bench-echo")
    thread.start()
    try:
        return _median_us(rounds, lambda: (there.put(1), back.get()))
    finally:
        there.put(None)
        thread.join()


def python_mops(steps: int = 2_000_000) -> float:
    started = time.perf_counter()
    total = 0
    for i in range(steps):
        total += i
    return steps / (time.perf_counter() - started) / 1e6


def measure(directory: Path) -> dict[str, float]:
    return {"host_fsync_us": fsync_us(directory), "host_thread_rtt_us": thread_rtt_us(),
            "host_python_mops": python_mops()}


def line(figures: dict[str, float]) -> tuple[str, str]:
    """The table row that shows the host's figures."""
    return ("this host", f"fsync {figures['host_fsync_us']:,.0f} µs, thread round trip "
                         f"{figures['host_thread_rtt_us']:,.0f} µs, Python "
                         f"{figures['host_python_mops']:.1f} M loop steps/s")
