"""Lift traffic and its invariant: linear lifts between users of distant nodes, clearing
calls, and ``lifts_atomic`` — every lift ended the same on every node, all or nothing, and
moved exactly what it should."""

from __future__ import annotations

import collections
import time
from typing import Any

import trio

from agentd.rpc import RpcError
from agentd.sim.gather import on_every
from agentd.sim.report import Report
from agentd.sim.scenario import Scenario
from agentd.sim.traffic import SETTLE_TIMEOUT, Run, run_calls

LIFT_WAIT_S = 60.0
# what a node whose promise the next hop refused for room records as the lift's error
# (LiftService.on_rejected): a concurrent lift took that room after the search saw it
RACED = " refused: OVER_LIMIT: "


def _distances(edges: list[tuple[str, str]], start: str) -> dict[str, int]:
    """Links from ``start`` to every node it reaches (breadth first)."""
    around: dict[str, list[str]] = collections.defaultdict(list)
    for a, b in edges:
        around[a].append(b)
        around[b].append(a)
    seen, frontier = {start: 0}, [start]
    while frontier:
        following = []
        for node in frontier:
            for other in around[node]:
                if other not in seen:
                    seen[other] = seen[node] + 1
                    following.append(other)
        frontier = following
    return seen


async def debt(run: Run) -> int:
    """What all users owe one another: the sum of the positive balances, once they have
    settled (no lift pending on any node, and both holders of every tally at opposite
    balances), so the tail of the traffic before is not counted as clearing's doing."""
    backend, nodes = run.backend, run.scenario.nodes
    listed: dict[str, list[dict]] = {}
    with trio.move_on_after(SETTLE_TIMEOUT):  # past it, as it stands: the checks judge it
        while True:
            listed = await on_every(backend, nodes, "tally.list", lambda name: {"cuid": name})
            sums: collections.Counter[str] = collections.Counter()
            for tallies in listed.values():
                for tally in tallies:
                    sums[tally["tally"]] += tally["balance"]
            lifts = await on_every(backend, nodes, "lift.list", {})
            if not any(sums.values()) and all(
                    lift["state"] != "pend" for held in lifts.values() for lift in held):
                break
            await trio.sleep(0.1)
    return sum(max(tally["balance"], 0) for tallies in listed.values() for tally in tallies)


async def _decided(run: Run, name: str, started: dict, began: float, kind: str) -> str:
    """Wait for a lift started by ``name`` to be decided; count it as ``kind`` (``lifts``,
    linear, or ``clear``, circular), a void one also as ``{kind}_raced`` when it lost a
    race (:func:`_raced`), and return its state."""
    done = await run.backend.call(name, "lift.wait", {"lift": started["lift"],
                                                       "timeout_s": LIFT_WAIT_S})
    report = run.report
    key = f"{kind}_{done['state']}"
    report.counts[key] = report.counts.get(key, 0) + 1
    if done["state"] == "void" and await _raced(run, started):
        report.counts[f"{kind}_raced"] = report.counts.get(f"{kind}_raced", 0) + 1
    report.lift_hops.append(len(started["path"]) - 1)
    if done["state"] != "pend":
        report.lift_latencies_ms.append((time.perf_counter() - began) * 1000)
    return done["state"]


async def _raced(run: Run, started: dict) -> bool:
    """Whether a void lift lost a race: a hop refused its promise because a concurrent lift
    had taken the room the search saw, as the node that sent that promise says (``lift.show``
    ``error``). The sim's users are named after their nodes; a node the promise never
    reached does not know the lift."""
    for name in sorted({hop["cuid"] for hop in started["path"]}):
        try:
            shown = await run.backend.call(name, "lift.show", {"lift": started["lift"]})
        except RpcError:
            continue
        if RACED in (shown["error"] or ""):
            return True
    return False


async def lift_traffic(run: Run, item: dict) -> None:
    """``count`` linear lifts of 1 to ``units`` mCHIP, each from a random user to one 2 to
    ``max_hops`` links away (routes are found by the nodes), waited for until decided."""
    scenario, rng, report = run.scenario, run.rng, run.report
    count, units, max_hops = item.get("count", 1), item.get("units", 1000), item.get(
        "max_hops", 5)
    links = sorted(run.tallies)
    pairs = [(a, b) for a in scenario.nodes for b, hops in _distances(links, a).items()
             if 2 <= hops <= max_hops]
    if not pairs:
        report.failures.append(f"lifts traffic: no two users 2 to {max_hops} tallies apart")
        return
    lifts = [(*rng.choice(pairs), rng.randint(1, units)) for _ in range(count)]
    for key in ("lifts_good", "lifts_void", "lifts_raced"):
        report.counts.setdefault(key, 0)
    # a payee's full CHIP address, as a user would give it: the payor's node asks the payee's
    # node for its last hops before it searches
    infos = await on_every(run.backend, sorted({payee for _, payee, _ in lifts}), "getinfo", {})

    async def one(payor: str, payee: str, amount: int) -> None:
        began = time.perf_counter()
        try:
            started = await run.backend.call(payor, "lift.pay", {
                "cuid": payor, "find": f"{payee}:{infos[payee]['address']}", "units": amount})
            await _decided(run, payor, started, began, "lifts")
        except RpcError as exc:
            report.failures.append(f"lift {payor} -> {payee}: {exc.message}")

    await run_calls(scenario, "lifts", lifts, one, report=report, item=item)
    report.counts["lift_pay_calls"] = report.counts.get("lift_pay_calls", 0) + count


async def clearing_traffic(run: Run, item: dict) -> None:
    """``count`` ``lift.clear`` calls from random users, each clearing the first debt cycle
    through its user. ``NO_CYCLE`` (there is none) and ``OVER_LIMIT`` (concurrent clearing
    took the cycle each time it looked) are answers, counted, not failures. Circles count as
    ``clear_good`` and ``clear_void`` (or ``clear_pend``), the void ones that concurrent
    lifts raced for a hop's debt also as ``clear_raced``; only good ones in ``cleared_mchip``."""
    scenario, rng, report = run.scenario, run.rng, run.report
    if report.debt_before is None:
        report.debt_before = await debt(run)
    clearers = [(rng.choice(scenario.nodes),) for _ in range(item.get("count", 1))]
    for key in ("clear_good", "clear_void", "clear_raced", "no_cycle", "clear_contended",
                "cleared_mchip", "cleared_debt_mchip"):
        report.counts.setdefault(key, 0)

    async def one(name: str) -> None:
        began = time.perf_counter()
        try:
            started = await run.backend.call(name, "lift.clear", {"cuid": name})
            if await _decided(run, name, started, began, "clear") == "good":
                units, hops = started["units"], len(started["path"]) - 1
                report.counts["cleared_mchip"] += units  # a void circle cleared nothing
                # every tally of the circle owes ``units`` less: what debt() falls by
                report.counts["cleared_debt_mchip"] += units * hops
        except RpcError as exc:
            if exc.reason in ("NO_CYCLE", "OVER_LIMIT"):  # none, or concurrent ones took it
                report.counts["no_cycle" if exc.reason == "NO_CYCLE" else "clear_contended"] += 1
            else:
                report.failures.append(f"clearing by {name}: {exc.message}")

    await run_calls(scenario, "clearing", clearers, one, report=report, item=item)
    report.counts["clearing_calls"] = report.counts.get("clearing_calls", 0) + len(clearers)


LIFT_KINDS = {"lifts": lift_traffic, "clearing": clearing_traffic}


async def lifts_atomic(backend: Any, scenario: Scenario, report: Report) -> bool:
    """Once no node holds a pending lift: every lift ended the same on every node that took
    part, each node's chits of it are all good or all void, and a good lift moved its payor
    by -units, its payee by +units and everyone else (every user of a circle) by 0."""
    held: dict[str, list[dict]] = {}
    with trio.move_on_after(SETTLE_TIMEOUT):
        while True:
            held = await on_every(backend, scenario.nodes, "lift.list", {})
            if all(lift["state"] != "pend" for lifts in held.values() for lift in lifts):
                break
            await trio.sleep(0.2)
    states: dict[str, set[str]] = collections.defaultdict(set)
    moved: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    records: dict[str, dict] = {}
    ok = True
    for lifts in held.values():
        for lift in lifts:
            states[lift["lift"]].add(lift["state"])
            records[lift["lift"]] = lift
            for chit in lift["chits"]:
                if chit["state"][2:] != lift["state"]:
                    ok = False
                    report.failures.append(f"lift {lift['lift']}: chit {chit['chit']} is "
                                           f"{chit['state']} on a {lift['state']} lift")
                if chit["state"].endswith("good"):
                    sign = 1 if chit["state"].startswith("A.") else -1
                    moved[lift["lift"]][chit["cuid"]] += sign * chit["units"]
    for lift, seen in states.items():
        record = records[lift]
        if len(seen) != 1:
            ok = False
            report.failures.append(f"lift {lift} ended {sorted(seen)} on different nodes")
            continue
        if seen != {"good"}:
            continue
        path, units = record["path"], record["units"]
        want = collections.Counter()
        if record["kind"] == "linear":
            want[path[0]["cuid"]] -= units
            want[path[-1]["cuid"]] += units
        got = {cuid: net for cuid, net in moved[lift].items() if net}
        if got != {cuid: net for cuid, net in want.items() if net}:
            ok = False
            report.failures.append(f"lift {lift} moved {got}, not {dict(want)}")
    report.counts["lifts_checked"] = len(states)  # every lift on any node, circles too
    return ok
