"""Will the machine hold the scenario? Open files and memory, judged before anything starts.

The figures are estimates from measured runs (README, Simulations): a node in this process
holds about ``FILES_PER_NODE`` descriptors (database connections and their WAL files, its
listener and control socket) and both ends of each link's connection are ours; a node costs
about ``MIB_PER_NODE`` of memory in this process, ``MIB_PER_PROCESS`` as its own process.
"""

from __future__ import annotations

import resource
from pathlib import Path

from agentd.errors import UserError
from agentd.sim.scenario import Scenario

FILES_PER_NODE = 8
FILES_PER_LINK = 2  # in one process, both ends of a connection are ours
FILES_SPARE = 200  # the RPC sockets of the traffic, Python itself
MIB_PER_NODE = 2.5
MIB_PER_PROCESS = 45
MIB_BASE = 150


def files_needed(scenario: Scenario, processes: bool) -> int:
    if processes:  # we only hold the RPC connections the traffic makes
        return FILES_SPARE + scenario.concurrency
    return (FILES_PER_NODE * len(scenario.all_nodes) + FILES_PER_LINK * len(scenario.edges)
            + FILES_SPARE + scenario.concurrency)


def memory_needed_mib(scenario: Scenario, processes: bool) -> float:
    per_node = MIB_PER_PROCESS if processes else MIB_PER_NODE
    return MIB_BASE + per_node * len(scenario.all_nodes)


def available_mib(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """MemAvailable, or None where the system does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def check_capacity(scenario: Scenario, processes: bool) -> None:
    """Refuse a scenario this machine cannot hold, with the figure and how to raise it;
    raise the soft open-file limit up to the hard one when that is all it takes."""
    where = f"{scenario.path}: nodes"
    needed = files_needed(scenario, processes)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise UserError(
            f"{where}: {len(scenario.all_nodes)} nodes and {len(scenario.edges)} links need "
            f"about {needed:,} open files in one process, but this process may open at most "
            f"{hard:,} (the hard limit, `ulimit -Hn`); raise it (as root: `ulimit -Hn "
            f"{needed}`, or nofile in /etc/security/limits.conf), use --processes, or "
            "simulate fewer nodes or links")
    if soft != resource.RLIM_INFINITY and needed > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))
    memory = memory_needed_mib(scenario, processes)
    available = available_mib()
    if available is not None and memory > available:
        raise UserError(
            f"{where}: {len(scenario.all_nodes)} nodes need about {memory:,.0f} MiB of "
            f"memory{' as processes' if processes else ''}, but only {available:,.0f} MiB "
            "is available (MemAvailable in /proc/meminfo); free some memory, "
            f"{'drop --processes' if processes else 'add memory'}, or simulate fewer nodes")
