"""``agentd bench sim``: the shape of configs/sims/scale-1000.toml at 100, 300 and 1,000 nodes.

Each size is one ``agentd sim`` run in its own process (so its peak RSS is its own): N nodes
on a random graph of 5N tallies, 20N payments, every credit invariant checked. Reported per
size: ``nodes_<N>_wall_s`` (the whole run: start-up, tallies, traffic, settling, checks),
``nodes_<N>_rss_mb`` (peak resident memory), ``nodes_<N>_payments_s`` (payments per second
of traffic), ``nodes_<N>_tallies_s`` (seconds to open every tally) and
``nodes_<N>_duplicates`` (messages received again and ignored); and ``growth``, wall per node
at the largest size ÷ wall per node at the smallest (1.0 is linear; goal <= 1.5).
``--quick`` runs 20 and 60 nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agentd.bench import parser as bench_parser
from agentd.bench import table, verdict, write_json

SIZES = (100, 300, 1000)
QUICK_SIZES = (20, 60)
LINKS_PER_NODE = 5
PAYMENTS_PER_NODE = 20


def scenario(nodes: int) -> str:
    return (f'[sim]\nname = "bench {nodes}"\nseed = {nodes}\nconcurrency = 64\n'
            f'[nodes]\ncount = {nodes}\n[topology]\nkind = "random"\n'
            f'links = {LINKS_PER_NODE * nodes}\n[[traffic]]\nkind = "payments"\n'
            f'count = {PAYMENTS_PER_NODE * nodes}\nunits = 1000\n')


def measure(nodes: int, workdir: Path, extra: list[str]) -> dict[str, float]:
    path, report = workdir / f"bench-{nodes}.toml", workdir / f"bench-{nodes}.json"
    path.write_text(scenario(nodes))
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "agentd", "sim", str(path), "--json",
                                str(report), *extra], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"agentd bench sim: the {nodes}-node run failed (exit "
                         f"{process.returncode}); run `agentd sim {path}` to see why")
    counts = json.loads(report.read_text())["counts"]
    return {f"nodes_{nodes}_wall_s": wall,
            # with --workers the sim sums its workers' peaks and its own; else its own
            f"nodes_{nodes}_rss_mb": counts.get("peak_rss_mb", usage.ru_maxrss / 1024),
            f"nodes_{nodes}_payments_s": counts["payments"] / (counts["traffic_ms"] / 1000),
            f"nodes_{nodes}_tallies_s": counts["tallies_ms"] / 1000,
            f"nodes_{nodes}_duplicates": counts["duplicates_ignored"]}


def command_parser() -> argparse.ArgumentParser:
    """``agentd bench sim``'s options, which the completion script offers too."""
    parser = bench_parser("agentd bench sim", __doc__)  # --json, --no-goals, as every one
    parser.add_argument("--quick", action="store_true", help="20 and 60 nodes only")
    parser.add_argument("--durable", action="store_true",
                        help="pass --durable to agentd sim (a writer thread per node, FULL)")
    return parser


def main(argv: list[str]) -> int:
    options = command_parser().parse_args(argv)
    sizes = QUICK_SIZES if options.quick else SIZES
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="agentd-bench-sim-") as tmp:
        for nodes in sizes:
            figures.update(measure(nodes, Path(tmp), ["--durable"] if options.durable else []))
            print(f"  {nodes} nodes: {figures[f'nodes_{nodes}_wall_s']:.1f} s", flush=True)
    small, large = sizes[0], sizes[-1]
    figures["growth"] = (figures[f"nodes_{large}_wall_s"] / large) / (
        figures[f"nodes_{small}_wall_s"] / small)
    print("agentd bench sim" + (" --quick" if options.quick else ""))
    rows = []
    for nodes in sizes:
        rows += [(f"{nodes} nodes: wall (start, tallies, payments, checks)",
                  f"{figures[f'nodes_{nodes}_wall_s']:>8.1f} s"),
                 (f"{nodes} nodes: of which opening {LINKS_PER_NODE * nodes} tallies",
                  f"{figures[f'nodes_{nodes}_tallies_s']:>8.1f} s"),
                 (f"{nodes} nodes: peak RSS", f"{figures[f'nodes_{nodes}_rss_mb']:>8.0f} MiB"),
                 (f"{nodes} nodes: payments/s",
                  f"{figures[f'nodes_{nodes}_payments_s']:>8.0f}"),
                 (f"{nodes} nodes: duplicates ignored",
                  f"{figures[f'nodes_{nodes}_duplicates']:>8.0f}")]
    rows.append((f"growth (wall per node, {large} vs {small})",
                 f"{figures['growth']:>8.2f} (goal <= 1.5)"))
    print(table(rows))
    write_json(options.json, figures)
    return verdict([(f"growth {figures['growth']:.2f} (goal <= 1.5)", figures["growth"] <= 1.5)],
                   options.no_goals)
