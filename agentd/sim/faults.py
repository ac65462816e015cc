"""Faults on demand: ``[[faults]]`` in a scenario, run beside the traffic, healed after it.

Each fault starts ``at_s`` seconds into the traffic (and again every ``every_s``, while the
traffic runs) and lasts ``for_s`` (a crash: ``down_s``):

- ``cut``: close ``rate`` random live connections a second, like a flaky network;
- ``partition``: split the nodes into ``groups`` (default: a random half each side); no
  connection crosses the split until it heals;
- ``cut`` and ``partition`` with ``--processes``: the nodes run as ``agentd.sim.node``,
  which closes a channel (``sim.cut``) or refuses to dial across (``sim.partition``) when
  the sim asks;
- ``crash``: kill ``count`` random nodes (or the ``nodes`` named) and restart them from their
  databases ``down_s`` later — in one process, the node is cancelled abruptly and a new one
  started on its key, port and database; with ``--processes``, SIGKILL and ``agentd run``;
- ``delay``: on ``links`` of the topology's links (a fraction, or a count; default all) each
  frame either way waits ``ms`` plus up to ``jitter_ms`` more; a ping across one of them
  measures the round trip (``rtt_ms`` in the report);
- ``loss``: on ``links`` of the links, ``rate`` of the frames either way are dropped; the
  at-least-once delivery resends them. Both act in the nodes' transport
  (:mod:`agentd.runtime.links`); with ``--processes`` the nodes run as ``agentd.sim.node``.

When the traffic is done every fault heals (crashed nodes restart, partitions lift) and the
invariants are checked on the healed network. The report lists each fault as it happened.

What each fault hits (nodes, groups, links, connections cut) is drawn from the scenario's
``seed``: each start of each fault has its own stream, so the same seed hits the same nodes
again and a failing run can be replayed (which connections are live to be cut, and which
frames a loss drops, still depend on timing).
"""

from __future__ import annotations

import random
from typing import Any

import trio

from agentd.rpc import RpcError
from agentd.runtime.links import Rule
from agentd.sim.report import Report
from agentd.sim.scenario import Scenario


async def run_faults(backend: Any, scenario: Scenario, report: Report, healing: Healing
                     ) -> None:
    """Every fault of the scenario on its schedule, until cancelled (the traffic is done);
    ``heal_all`` then undoes what is still in force."""
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index in range(len(scenario.faults)):
            nursery.start_soon(_schedule, backend, scenario, index, report, healing, started)


def _stream(scenario: Scenario, index: int, start: int) -> random.Random:
    """The randomness of the ``start``-th start (from 0) of fault ``index``, from the seed
    alone: the faults run side by side, so with one stream each would draw what the others
    left, in an order the timing decides. Apart from the traffic's (``Random(seed)``), which
    the faults leave as it was."""
    return random.Random(f"agentd.sim.faults {scenario.seed} {index} {start}")


async def _schedule(backend: Any, scenario: Scenario, index: int, report: Report,
                    healing: Healing, started: float) -> None:
    fault = scenario.faults[index]
    at = fault.get("at_s", 0.0)
    starts = 0
    try:
        while True:
            await trio.sleep_until(started + at)
            starts += 1
            await _one(backend, scenario, fault, _stream(scenario, index, starts - 1), report,
                       healing, started)
            if "every_s" not in fault:
                return
            at += fault["every_s"]
    finally:
        if not starts:  # the report says so, rather than leave the fault out
            report.faults.append({"kind": fault["kind"], "at_s": at,
                                  "for_s": fault.get("for_s", 0.0),
                                  "what": "not started: the traffic was over first"})


class Healing:
    """What is in force now, so the end of the traffic can undo it."""

    def __init__(self) -> None:
        self.crashed: set[str] = set()
        self.partitioned = False
        self.shaped: dict[str, list[tuple[str, str]]] = {}  # link fault -> the links it shapes


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
    elif kind in ("delay", "loss"):
        await _shape(backend, scenario, fault, rng, report, healing, event, lasting)
    elif kind == "partition":
        groups = fault.get("groups") or _halves(scenario, rng)
        event["what"] = " | ".join(",".join(g[:4]) + ("..." if len(g) > 4 else "")
                                   for g in groups)
        event["groups"] = [list(group) for group in groups]  # whole, for --json
        await backend.partition(groups)
        healing.partitioned = True
        await trio.sleep(lasting)
        await backend.heal()
        healing.partitioned = False
    else:
        names = _victims(scenario, fault, rng, healing.crashed)
        event["what"], event["nodes"] = ", ".join(names), names
        healing.crashed.update(names)
        for name in names:
            report.crashed[name] = report.crashed.get(name, 0) + 1
        with trio.CancelScope(shield=True):  # a node is either up or wholly down
            for name in names:
                await backend.crash(name)
        await trio.sleep(lasting)
        for name in names:
            await backend.restart(name)
            healing.crashed.discard(name)


async def _shape(backend: Any, scenario: Scenario, fault: dict, rng: random.Random,
                 report: Report, healing: Healing, event: dict, lasting: float) -> None:
    share = fault.get("links", 1.0)
    links = rng.sample(scenario.edges, share if isinstance(share, int)
                       else max(1, round(share * len(scenario.edges))))
    key = f"{fault['kind']}{len(report.faults)}"  # this occurrence, as the nodes know it
    if fault["kind"] == "delay":
        rule = Rule(ms=fault["ms"], jitter_ms=fault.get("jitter_ms", 0))
        jitter = f" + up to {rule.jitter_ms:g}" if rule.jitter_ms else ""
        event["what"] = f"{len(links)} of {len(scenario.edges)} links: {rule.ms:g}{jitter} ms " \
            "each way"
    else:
        rule = Rule(loss=fault["rate"])
        event["what"] = f"{len(links)} of {len(scenario.edges)} links: {rule.loss:.0%} of " \
            "frames dropped"
    event["links"] = [list(link) for link in links]
    healing.shaped[key] = links  # before any is shaped: heal_all undoes a half-done one
    await _set(backend, links, key, rule)
    if fault["kind"] == "delay":
        with trio.CancelScope(shield=True):  # measured even if the traffic ends meanwhile
            await _probe(backend, links[0], report, event)
    await trio.sleep(lasting)
    await _set(backend, links, key, None)
    del healing.shaped[key]


async def _set(backend: Any, links: list[tuple[str, str]], key: str, rule: Rule | None) -> None:
    for a, b in links:
        await backend.shape(a, b, key, rule)
        await backend.shape(b, a, key, rule)


async def _probe(backend: Any, link: tuple[str, str], report: Report, event: dict) -> None:
    """One ping across a delayed link: the round trip it measured goes in the report."""
    a, b = link
    agent = (await backend.call(b, "getinfo", {}))["agent"]
    report.counts["probe_pings"] = report.counts.get("probe_pings", 0) + 1  # processed twice
    try:
        rtt = (await backend.call(a, "peers.ping", {"agent": agent}))["rtt_ms"][0]
    except RpcError as exc:
        event["what"] += f"; ping {a} -> {b}: {exc.message}"
        return
    event["rtt_ms"] = rtt
    event["what"] += f"; ping {a} -> {b} {rtt:.0f} ms"


def _victims(scenario: Scenario, fault: dict, rng: random.Random, down: set[str]) -> list[str]:
    """The nodes a crash kills: those named, or ``count`` drawn from every node, so that the
    draw is the same whichever are down (a node down is skipped, not crashed again)."""
    if fault.get("nodes"):
        return [name for name in fault["nodes"] if name not in down]
    drawn = rng.sample(scenario.nodes, len(scenario.nodes))
    return [name for name in drawn if name not in down][:fault.get("count", 1)]


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
    for key, links in healing.shaped.items():
        await _set(backend, links, key, None)
    healing.shaped.clear()


__all__ = ["Healing", "heal_all", "run_faults"]
