"""``agentd bench lifts`` runs end to end on a small ring of ``agentd run`` processes and
reports every figure, the CPU it cost included (no figure is asserted against a goal here:
speed belongs to the benchmark, not to tests)."""

from __future__ import annotations

import subprocess
import sys
import time

import trio

from agentd.bench import lifts as bench_lifts
from agentd.localnodes import cpu_seconds


def test_a_small_ring_reports_every_figure_and_what_the_lifts_cost(tmp_path) -> None:
    figures = trio.run(bench_lifts.measure, 6, 3, 12, 4, 4, tmp_path)
    assert figures["unfinished"] == 0 and figures["void"] == 0 and figures["lifts"] == 19
    assert figures["hop5_p50_ms"] > 0 and figures["lifts_s"] > 0 and figures["clear_s"] > 0
    # a lift costs every node on its path some CPU, more than a millisecond in all
    assert figures["hop5_cpu_ms"] > 1 and figures["lifts_cpu_ms"] > 1
    assert figures["cpu_bound_lifts_s"] > 0
    # a lift is at least a promise a hop, its commit and a decision to each node on its path
    # (on a ring of six the "5-hop" payee is the payor's other partner: one hop)
    assert figures["hop5_messages"] >= 4 and figures["lifts_messages"] >= 4
    # what the host costs, beside the figures, to compare runs on different machines
    assert figures["host_fsync_us"] > 0 and figures["host_thread_rtt_us"] > 0
    assert figures["host_python_mops"] > 0


def test_cpu_seconds_reads_what_each_process_spent() -> None:
    busy = subprocess.Popen([sys.executable, "-c",
                             "import time\nend = time.process_time() + 0.3\n"
                             "while time.process_time() < end: pass\ninput()"],
                            stdin=subprocess.PIPE)
    try:
        spent = cpu_seconds([busy])
        for _ in range(200):  # until it has spun its 0.3 s (10 s at most)
            if spent is not None and spent[0] >= 0.3:
                break
            time.sleep(0.05)
            spent = cpu_seconds([busy])
        assert spent is not None and 0.3 <= spent[0] < 5
    finally:
        busy.communicate(b"\n", timeout=10)
    assert cpu_seconds([busy]) is None  # it is gone: nothing to read


def test_cpu_seconds_reads_a_process_to_the_microsecond_not_in_clock_ticks() -> None:
    """hop5_cpu_ms once read 0.0: /proc counts each process's CPU in 10 ms clock ticks, and a
    short phase (3 lifts in the test above: 22 ms over 7 processes, 0.3 to 8.6 ms each) can
    leave every process short of its next tick. A process that burns a few ms at a time,
    waiting on its stdin between bursts, reads what its own CPU clock says each time."""
    burner = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\n"
                               "for line in sys.stdin:\n"
                               "    end = time.process_time() + 0.0037\n"
                               "    while time.process_time() < end: pass\n"
                               "    print(time.process_time(), flush=True)\n"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(5):
            burner.stdin.write("\n")
            burner.stdin.flush()
            own = float(burner.stdout.readline())  # it waits for the next line: CPU stays put
            spent = cpu_seconds([burner])
            assert spent is not None and own <= spent[0] < own + 0.001, (own, spent)
    finally:
        burner.stdin.close()
        burner.wait(timeout=10)
