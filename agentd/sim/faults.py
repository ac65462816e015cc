"""Faults on demand: ``[[faults]]`` in a scenario, run beside the traffic, healed after it.

Each fault starts ``at_s`` seconds into the traffic (and again every ``every_s``, while the
traffic runs) and lasts ``for_s`` (a crash: ``down_s``):

- ``cut``: close ``rate`` random live connections a second, like a flaky network;
- ``partition``: split the nodes into ``groups`` (default: a random half each side); no
  connection crosses the split until it heals;
- ``crash``: kill ``count`` random nodes (or the ``nodes`` named) and restart them from their
  databases ``down_s`` later — in one process, the node is cancelled abruptly and a new one
  started on its key, port and database; with ``--processes``, SIGKILL and ``agentd run``.

When the traffic is done every fault heals (crashed nodes restart, partitions lift) and the
invariants are checked on the healed network. The report lists each fault as it happened.
"""

from __future__ import annotations

import random
from typing import Any

import trio

from agentd.sim.report import Report
from agentd.sim.scenario import Scenario

PROCESS_FAULTS = frozenset({"crash"})  # what --processes can do (no hook into a process's dials)


async def run_faults(backend: Any, scenario: Scenario, rng: random.Random, report: Report,
                     healing: Healing) -> None:
    """Every fault of the scenario on its schedule, until cancelled (the traffic is done);
    ``heal_all`` then undoes what is still in force."""
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for fault in scenario.faults:
            nursery.start_soon(_schedule, backend, scenario, fault, rng, report, healing,
                               started)


async def _schedule(backend: Any, scenario: Scenario, fault: dict, rng: random.Random,
                    report: Report, healing: Healing, started: float) -> None:
    at = fault.get("at_s", 0.0)
    while True:
        await trio.sleep_until(started + at)
        await _one(backend, scenario, fault, rng, report, healing, started)
        if "every_s" not in fault:
            return
        at += fault["every_s"]


class Healing:
    """What is in force now, so the end of the traffic can undo it."""

    def __init__(self) -> None:
        self.crashed: set[str] = set()
        self.partitioned = False


async def _one(backend: Any, scenario: Scenario, fault: dict, rng: random.Random,
               report: Report, healing: Healing, started: float) -> None:
    kind = fault["kind"]
    lasting = fault.get("down_s" if kind == "crash" else "for_s", 1.0)
    event = {"kind": kind, "at_s": round(trio.current_time() - started, 2), "for_s": lasting,
             "what": ""}
    report.faults.append(event)  # listed even when the end of the traffic cuts it short
    if kind == "cut":
        cuts = 0
        end = trio.current_time() + lasting
        while trio.current_time() < end:
            if await backend.cut(rng):
                cuts += 1
                event["what"] = f"{cuts} connections closed"
            await trio.sleep(1 / fault.get("rate", 1.0))
    elif kind == "partition":
        groups = fault.get("groups") or _halves(scenario, rng)
        event["what"] = " | ".join(",".join(g[:4]) + ("..." if len(g) > 4 else "")
                                   for g in groups)
        await backend.partition(groups)
        healing.partitioned = True
        await trio.sleep(lasting)
        await backend.heal()
        healing.partitioned = False
    else:
        up = [name for name in scenario.nodes if name not in healing.crashed]
        names = [name for name in fault.get("nodes") or rng.sample(
            up, min(fault.get("count", 1), len(up))) if name not in healing.crashed]
        event["what"] = ", ".join(names)
        healing.crashed.update(names)
        with trio.CancelScope(shield=True):  # a node is either up or wholly down
            for name in names:
                await backend.crash(name)
        await trio.sleep(lasting)
        for name in names:
            await backend.restart(name)
            healing.crashed.discard(name)


def _halves(scenario: Scenario, rng: random.Random) -> list[list[str]]:
    shuffled = list(scenario.all_nodes)
    rng.shuffle(shuffled)
    half = len(shuffled) // 2
    return [sorted(shuffled[:half]), sorted(shuffled[half:])]


async def heal_all(backend: Any, report: Report, healing: Healing) -> None:
    """Undo every fault still in force (the traffic ended during it)."""
    if healing.partitioned:
        await backend.heal()
        healing.partitioned = False
    for name in sorted(healing.crashed):
        await backend.restart(name)
    healing.crashed.clear()


__all__ = ["PROCESS_FAULTS", "Healing", "heal_all", "run_faults"]
