"""``agentd.bench.host``: what the host itself costs, shown beside a benchmark's figures. Each
figure is measured, not assumed: a slower operation reads slower (no speed is asserted)."""

from __future__ import annotations

import os
from pathlib import Path

from agentd.bench import host


def test_fsync_is_timed_on_a_file_in_the_directory_and_removed(tmp_path: Path,
                                                               monkeypatch) -> None:
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    assert host.fsync_us(tmp_path, rounds=5) > 0
    assert len(synced) == 5 and list(tmp_path.iterdir()) == []


def test_a_slower_thread_round_trip_reads_slower(monkeypatch) -> None:
    quick = host.thread_rtt_us(rounds=50)
    real_get = host.queue.SimpleQueue.get

    class Slow(host.queue.SimpleQueue):
        def get(self, *args, **kwargs):
            item = real_get(self, *args, **kwargs)
            host.time.sleep(0.002)
            return item

    monkeypatch.setattr(host.queue, "SimpleQueue", Slow)
    assert host.thread_rtt_us(rounds=20) > max(quick, 2000)


def test_the_row_shows_every_figure() -> None:
    name, text = host.line({"host_fsync_us": 210.4, "host_thread_rtt_us": 48.6,
                            "host_python_mops": 29.04})
    assert name == "this host"
    assert text == "fsync 210 µs, thread round trip 49 µs, Python 29.0 M loop steps/s"
