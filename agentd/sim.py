"""``agentd sim SCENARIO``: a scripted multi-node simulation with invariants and a report.

A scenario (TOML) names the nodes, the topology (explicit edges, a ring, or random with a
seed), the traffic and the invariants. Every node is a real agentd node — loopback TCP,
Noise, its own SQLite file — either all in this one Trio process (the default) or one
``agentd run`` process each (``--processes``); traffic is driven through each node's RPC
methods either way. The run prints progress, checks the invariants once traffic has
drained, prints a report and exits 1 if any invariant failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import statistics
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from agentd.config import parse_config
from agentd.errors import UserError
from agentd.localnodes import (
    LocalNode,
    free_ports,
    peer_section,
    spawn,
    stop,
    wait_ready,
    write_node,
)
from agentd.rpc import RpcError, call
from agentd.runtime.node import Node
from protocol.keys import SigningKey

TOPOLOGIES = ("ring", "random", "explicit", "full")
TRAFFIC = ("ping", "payments", "invoices", "relay", "evidence")
CREDIT_TRAFFIC = frozenset({"payments", "invoices"})  # kinds that need a tally on every link
INVARIANTS = ("all_delivered", "outbox_drained", "exactly_once", "chains_agree",
              "balances_zero_sum", "receipts_verify")
HOUSE = "clearinghouse"  # the name of the scenario's clearing-house node, when it has one
EVIDENCE_BATCH = 50  # entries per ch.log_many call of evidence traffic
RELAY_VIEWS = ("node:info", "user:{cuid}:balance")  # what relay traffic reads (the latter
# only once every node has its user, i.e. with credit traffic)
RELAY_ACCESS = {"principal": "*", "resource": "*"}  # every sim node lets every other read
PAYMENT_LIMIT = 10**9  # milliCHIPs each side of a simulated tally may owe: no refusals
SETTLE_TIMEOUT = 60.0  # s for every chain to be confirmed on both sides after the traffic


@dataclass
class Scenario:
    name: str
    nodes: list[str]
    edges: list[tuple[str, str]]
    traffic: list[dict[str, Any]]
    invariants: list[str]
    seed: int
    concurrency: int = 16
    house: str | None = None  # the clearing-house node every other node logs to

    @property
    def all_nodes(self) -> list[str]:
        return [*self.nodes, *([self.house] if self.house else [])]


@dataclass
class Report:
    counts: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)


def load_scenario(path: Path) -> Scenario:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UserError(f"{path}: scenario file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from exc

    def bad(key: str, why: str) -> UserError:
        return UserError(f"{path}: {key} {why}")

    unknown = set(raw) - {"sim", "nodes", "topology", "traffic", "invariants"}
    if unknown:
        raise bad(sorted(unknown)[0], "is not a scenario section")
    sim = raw.get("sim", {})
    seed = sim.get("seed", 1)
    if not isinstance(seed, int):
        raise bad("sim.seed", "must be an integer")
    nodes_section = raw.get("nodes", {})
    if "names" in nodes_section:
        names = nodes_section["names"]
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise bad("nodes.names", "must be a non-empty list of text")
    else:
        count = nodes_section.get("count")
        if not isinstance(count, int) or not 1 <= count <= 200:
            raise bad("nodes.count", "must be an integer from 1 to 200 (or give nodes.names)")
        names = [f"n{i}" for i in range(count)]
    if len(set(names)) != len(names):
        raise bad("nodes.names", "has duplicates")
    with_house = nodes_section.get("clearinghouse", False)
    if not isinstance(with_house, bool):
        raise bad("nodes.clearinghouse", "must be true or false")
    if with_house and HOUSE in names:
        raise bad("nodes.names", f"cannot hold {HOUSE!r}: that is the clearing house's name")
    rng = random.Random(seed)
    edges = _topology(raw.get("topology", {"kind": "full"}), names, rng, bad)
    traffic = raw.get("traffic", [])
    if not isinstance(traffic, list):
        raise bad("traffic", "must be an array of tables ([[traffic]])")
    for i, item in enumerate(traffic):
        if item.get("kind") not in TRAFFIC:
            raise bad(f"traffic[{i}].kind", f"must be one of {', '.join(TRAFFIC)}")
        if not isinstance(item.get("count", 1), int) or item.get("count", 1) < 1:
            raise bad(f"traffic[{i}].count", "must be a positive integer")
        if not isinstance(item.get("units", 1), int) or item.get("units", 1) < 1:
            raise bad(f"traffic[{i}].units", "must be a positive integer")
        if not isinstance(item.get("confidential", False), bool):
            raise bad(f"traffic[{i}].confidential", "must be true or false")
    kinds = {item.get("kind") for item in traffic}
    paying = bool(kinds & CREDIT_TRAFFIC)  # exactly_once counts pings; credit checks need tallies
    if "evidence" in kinds and not with_house:
        raise bad("traffic", "has evidence, which needs a clearing house: set "
                  "[nodes] clearinghouse = true")
    default = ["all_delivered", "outbox_drained",
               *(["chains_agree", "balances_zero_sum"] if paying
                 else [] if with_house or "relay" in kinds else ["exactly_once"]),
               *(["receipts_verify"] if with_house else [])]
    invariants = raw.get("invariants", {"check": default}).get("check", [])
    for name in invariants:
        if name not in INVARIANTS:
            raise bad("invariants.check", f"has unknown invariant {name!r} "
                      f"(known: {', '.join(INVARIANTS)})")
    if "exactly_once" in invariants and (paying or with_house or "relay" in kinds):
        raise bad("invariants.check", "exactly_once counts ping messages, so it cannot be "
                  "checked with credit or relay traffic or a clearing house (check "
                  "chains_agree or receipts_verify instead)")
    if "receipts_verify" in invariants and not with_house:
        raise bad("invariants.check", "has receipts_verify, which needs a clearing house: "
                  "set [nodes] clearinghouse = true")
    return Scenario(sim.get("name", path.stem), names, edges, traffic, invariants, seed,
                    sim.get("concurrency", 16), HOUSE if with_house else None)


def _topology(spec: dict, names: list[str], rng: random.Random, bad) -> list[tuple[str, str]]:
    kind = spec.get("kind", "full")
    if kind not in TOPOLOGIES:
        raise bad("topology.kind", f"must be one of {', '.join(TOPOLOGIES)}")
    if kind == "full":
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    if kind == "ring":
        if len(names) < 2:
            return []
        return [(names[i], names[(i + 1) % len(names)]) for i in range(len(names))
                if len(names) > 2 or i == 0]
    if kind == "random":
        degree = spec.get("degree", 3)
        if not isinstance(degree, int) or degree < 1:
            raise bad("topology.degree", "must be a positive integer")
        edges = {(names[i], names[(i + 1) % len(names)]) for i in range(len(names) - 1)}
        for a in names:  # a connected backbone, then random extra links
            for b in rng.sample(names, min(degree, len(names))):
                if a != b and (b, a) not in edges:
                    edges.add((a, b))
        return sorted(edges)
    edges = []
    for i, edge in enumerate(spec.get("edges", [])):
        if not (isinstance(edge, list) and len(edge) == 2 and set(edge) <= set(names)):
            raise bad(f"topology.edges[{i}]", "must be a pair of node names")
        edges.append((edge[0], edge[1]))
    return edges


# -- running nodes: in this process, or one OS process each --------------------------------


def _neighbours(names: list[str], edges: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {name: [] for name in names}
    for a, b in edges:
        out[a].append(b)
        out[b].append(a)
    return out


class InProcess:
    """All nodes in this Trio process: real sockets, Noise and SQLite, no subprocesses."""

    def __init__(self, nursery: trio.Nursery, workdir: Path) -> None:
        self.nursery = nursery
        self.workdir = workdir
        self.nodes: dict[str, Node] = {}

    async def start(self, names: list[str], edges: list[tuple[str, str]],
                    house: str | None = None) -> dict[str, str]:
        logging_to: dict[str, Any] = {}
        if house is not None:
            node = await self._start(house, {"roles": ["clearinghouse"]}, {})
            logging_to = {"clearinghouse": {"agent": node.agent_id,
                                            "address": node.listen_address}}
        for name in names:
            await self._start(name, {}, {**logging_to, "relay": {"access": [RELAY_ACCESS]}})
        for name, others in _neighbours(names, edges).items():
            for other in others:
                peer = self.nodes[other]
                self.nodes[name].learn_peer(peer.agent_id, peer.listen_address, other)
        return {name: node.agent_id for name, node in self.nodes.items()}

    async def _start(self, name: str, node_keys: dict[str, Any], sections: dict[str, Any]
                     ) -> Node:
        config = parse_config({"node": {"name": name, "data_dir": str(self.workdir / name),
                                        "listen": "127.0.0.1:0", **node_keys}, **sections},
                              self.workdir / f"{name}.toml")
        node = Node(config, SigningKey.generate())
        await self.nursery.start(node.run)
        self.nodes[name] = node
        return node

    async def call(self, name: str, method: str, params: dict) -> Any:
        return await self.nodes[name].rpc.call(method, params)

    async def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


class Processes:
    """One ``agentd run`` OS process per node, peered by config, driven by its socket."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.sockets: dict[str, Path] = {}

    async def start(self, names: list[str], edges: list[tuple[str, str]],
                    house: str | None = None) -> dict[str, str]:
        everyone = [*names, *([house] if house else [])]
        planned = {name: LocalNode(name, self.workdir / name, SigningKey.generate(), port)
                   for name, port in zip(everyone, free_ports(len(everyone)), strict=True)}
        logging_to = "" if house is None else (
            f'[clearinghouse]\nagent = "{planned[house].key.agent_id}"\n'
            f'address = "{planned[house].address}"\n')
        nodes = []
        if house is not None:
            nodes.append(write_node(planned[house].directory, house, planned[house].port,
                                    key=planned[house].key,
                                    node_keys='roles = ["clearinghouse"]'))
        access = (f'[[relay.access]]\nprincipal = "{RELAY_ACCESS["principal"]}"\n'
                  f'resource = "{RELAY_ACCESS["resource"]}"\n')
        for name, others in _neighbours(names, edges).items():
            node = planned[name]
            peers = "".join(peer_section(planned[other]) for other in others)
            nodes.append(write_node(node.directory, name, node.port, key=node.key,
                                    sections=logging_to + access + peers))
        self.procs = {node.name: spawn(node) for node in nodes}
        self.sockets = {node.name: node.socket for node in nodes}
        try:
            await trio.to_thread.run_sync(wait_ready, nodes, list(self.procs.values()))
        except RuntimeError as exc:
            raise UserError(str(exc)) from exc
        return {name: node.key.agent_id for name, node in planned.items()}

    async def call(self, name: str, method: str, params: dict) -> Any:
        return await trio.to_thread.run_sync(partial(call, self.sockets[name], method, params, 60))

    async def stop(self) -> None:
        for name in self.procs:
            with contextlib.suppress(RpcError, UserError, OSError):
                await self.call(name, "stop", {})
        await trio.to_thread.run_sync(stop, list(self.procs.values()))


# -- traffic, invariants, report ------------------------------------------------------------


def _either_way(rng: random.Random, links: list[tuple[str, str]]
                ) -> tuple[str, str, tuple[str, str]]:
    """A random link, and a random direction along it: (from, to, the link)."""
    link = rng.choice(links)
    return (*link, link) if rng.random() < 0.5 else (link[1], link[0], link)


async def _run_calls(scenario: Scenario, label: str, calls: list[tuple],
                     call: Callable[..., Awaitable[None]], *, weight: int = 1) -> None:
    """``call(*args)`` for each ``args`` of ``calls``, ``[sim] concurrency`` at once, with
    progress printed each tenth of the way (each call counting ``weight``, or the length of
    its last argument when ``weight`` is 0)."""
    total = sum(weight or len(args[-1]) for args in calls)
    limit = trio.Semaphore(scenario.concurrency)
    done = 0

    async def one(args: tuple) -> None:
        nonlocal done
        async with limit:
            await call(*args)
        before, done = done, done + (weight or len(args[-1]))
        if done * 10 // max(total, 1) > before * 10 // max(total, 1):
            print(f"  {label} {done}/{total}", flush=True)

    async with trio.open_nursery() as nursery:
        for args in calls:
            nursery.start_soon(one, args)


async def _ping_traffic(backend, scenario: Scenario, agents: dict[str, str], item: dict,
                        rng: random.Random, report: Report) -> None:
    count = item.get("count", 1)
    if not scenario.edges:
        report.failures.append("ping traffic needs at least one edge")
        return
    pairs = [_either_way(rng, scenario.edges)[:2] for _ in range(count)]

    async def one(a: str, b: str) -> None:
        try:
            result = await backend.call(a, "peers.ping", {"agent": agents[b]})
            report.latencies_ms.extend(result["rtt_ms"])
        except RpcError as exc:
            report.failures.append(f"ping {a} -> {b}: {exc.message}")

    await _run_calls(scenario, "pings", pairs, one)
    report.counts["pings"] = report.counts.get("pings", 0) + count


async def _open_tallies(backend, scenario: Scenario) -> dict[tuple[str, str], str]:
    """One user per node (named after it) and an open tally along every edge: the first
    node of the edge invites, the second requests, offers are made and accepted."""
    for name in scenario.nodes:
        await backend.call(name, "users.add", {"cuid": name})

    async def state(name: str, tally: str) -> str | None:
        held = await backend.call(name, "tally.list", {"cuid": name})
        return next((t["state"] for t in held if t["tally"] == tally), None)

    async def negotiate(a: str, b: str, tallies: dict) -> None:
        invited = await backend.call(a, "tally.invite", {"cuid": a, "limit": PAYMENT_LIMIT})
        tally = invited["tally"]
        await backend.call(b, "tally.request", {"cuid": b, "ticket": invited["ticket"]})
        await backend.call(a, "tally.offer", {"cuid": a, "tally": tally})
        while await state(b, tally) != "P.offer":
            await trio.sleep(0.02)
        await backend.call(b, "tally.accept", {"cuid": b, "tally": tally})
        while await state(a, tally) != "open" or await state(b, tally) != "open":
            await trio.sleep(0.02)
        tallies[(a, b)] = tally

    tallies: dict[tuple[str, str], str] = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for a, b in scenario.edges:
                nursery.start_soon(negotiate, a, b, tallies)
    return tallies


async def _payment_traffic(backend, scenario: Scenario, tallies: dict[tuple[str, str], str],
                           item: dict, rng: random.Random, report: Report) -> None:
    """``count`` payments of 1 to ``units`` milliCHIPs, each across a random tally in a
    random direction, ``concurrency`` of them in flight at once."""
    count, units = item.get("count", 1), item.get("units", 1000)
    if not tallies:
        report.failures.append("payments traffic needs at least one edge")
        return
    edges = sorted(tallies)
    payments = []
    for _ in range(count):
        payer, _, link = _either_way(rng, edges)
        payments.append((payer, tallies[link], rng.randint(1, units)))

    async def one(payer: str, tally: str, amount: int) -> None:
        try:
            await backend.call(payer, "chit.pay", {"cuid": payer, "tally": tally,
                                                   "units": amount})
        except RpcError as exc:
            report.failures.append(f"payment by {payer} on {tally}: {exc.message}")

    await _run_calls(scenario, "payments", payments, one)
    report.counts["payments"] = report.counts.get("payments", 0) + count


async def _invoice_traffic(backend, scenario: Scenario, tallies: dict[tuple[str, str], str],
                           item: dict, rng: random.Random, report: Report) -> None:
    """``count`` invoices of 1 to ``units`` milliCHIPs, each across a random tally in a
    random direction: the payee invoices, the payer accepts as soon as the invoice reaches
    it; ``concurrency`` at once."""
    count, units = item.get("count", 1), item.get("units", 1000)
    if not tallies:
        report.failures.append("invoices traffic needs at least one edge")
        return
    edges = sorted(tallies)
    invoices = []
    for _ in range(count):
        payee, payer, link = _either_way(rng, edges)
        invoices.append((payee, payer, tallies[link], rng.randint(1, units)))

    async def one(payee: str, payer: str, tally: str, amount: int) -> None:
        try:
            chit = (await backend.call(payee, "chit.invoice", {
                "cuid": payee, "tally": tally, "units": amount}))["chit"]
            with trio.fail_after(SETTLE_TIMEOUT):
                while True:
                    try:
                        await backend.call(payer, "chit.accept", {"cuid": payer, "chit": chit})
                        break
                    except RpcError as exc:
                        if exc.reason != "UNKNOWN_CHIT":  # not there yet: wait for it
                            raise
                        await trio.sleep(0.02)
        except RpcError as exc:
            report.failures.append(f"invoice by {payee} on {tally}: {exc.message}")
        except trio.TooSlowError:
            report.failures.append(f"invoice by {payee} on {tally} never reached {payer}")

    await _run_calls(scenario, "invoices", invoices, one)
    report.counts["invoices"] = report.counts.get("invoices", 0) + count


async def _relay_traffic(backend, scenario: Scenario, agents: dict[str, str], item: dict,
                         rng: random.Random, report: Report, users: bool) -> None:
    """``count`` relay queries, each by a random end of a random link for a view of the other
    end's ledger (``node:info``, or with ``users`` also a user's balance), waited for until
    COMPLETED; ``confidential = true`` has every view encrypted to its requestor."""
    count, confidential = item.get("count", 1), item.get("confidential", False)
    if not scenario.edges:
        report.failures.append("relay traffic needs at least one edge")
        return
    views = RELAY_VIEWS if users else RELAY_VIEWS[:1]
    queries = []
    for _ in range(count):
        asker, source, _ = _either_way(rng, scenario.edges)
        queries.append((asker, source, rng.choice(views).format(cuid=source)))

    async def one(asker: str, source: str, view: str) -> None:
        address = f"{agents[source]}/agentd/{view}"
        try:
            asked = await backend.call(asker, "relay.query", {
                "address": address, "confidential": confidential})
            state = await backend.call(asker, "relay.wait", {
                "request_id": asked["request_id"], "timeout_s": SETTLE_TIMEOUT})
            if state["status"] != "COMPLETED":
                report.failures.append(f"relay {asker} <- {address}: {state['status']}"
                                       f" {state.get('error') or ''}".rstrip())
            elif state["view"]["confidential"] != confidential:
                report.failures.append(f"relay {asker} <- {address}: the view came back"
                                       f" {'in clear' if confidential else 'encrypted'}")
        except RpcError as exc:
            report.failures.append(f"relay {asker} <- {address}: {exc.message}")

    await _run_calls(scenario, "relay queries", queries, one)
    report.counts["relay_queries"] = report.counts.get("relay_queries", 0) + count


async def _evidence_traffic(backend, scenario: Scenario, agents: dict[str, str], item: dict,
                            rng: random.Random, report: Report) -> None:
    """``count`` entries logged at the clearing house, in ``ch.log_many`` calls of up to
    ``EVIDENCE_BATCH``: one process per link (created by its first node, owned by both), and
    each entry logged by a random end of a random link (a node alone logs to its own)."""
    count = item.get("count", 1)
    links = scenario.edges or [(name, name) for name in scenario.nodes]
    pids = {}
    for a, b in links:
        pid = f"sim-{a}-{b}" if a != b else f"sim-{a}"
        owners = [agents[b]] if a != b else []
        await backend.call(a, "ch.create_process", {"pid": pid, "owners": owners})
        pids[(a, b)] = pid
    by_node: dict[str, list[dict]] = {name: [] for name in scenario.nodes}
    for n in range(count):
        by, _, link = _either_way(rng, links)
        by_node[by].append({"pid": pids[link], "payload": f"evidence {n}"})
    calls = [(name, entries[i:i + EVIDENCE_BATCH]) for name, entries in by_node.items()
             for i in range(0, len(entries), EVIDENCE_BATCH)]

    async def one(name: str, entries: list[dict]) -> None:
        try:
            results = await backend.call(name, "ch.log_many", {"entries": entries})
            report.failures.extend(f"evidence by {name}: {r['error']['message']}"
                                   for r in results if "error" in r)
        except RpcError as exc:
            report.failures.append(f"evidence by {name}: {exc.message}")

    await _run_calls(scenario, "evidence", calls, one, weight=0)
    report.counts["evidence"] = report.counts.get("evidence", 0) + count


async def _receipts_verified(backend, scenario: Scenario, report: Report) -> bool:
    """Once no node waits for a receipt any more, every node's receipts verify offline and
    against the chains re-walked from the clearing house (``receipts.verify chain=true``)."""
    results: dict[str, dict] = {}
    with trio.move_on_after(SETTLE_TIMEOUT):
        while True:
            results = {name: await backend.call(name, "receipts.verify", {"chain": True})
                       for name in scenario.nodes}
            if all(result["pending"] == 0 for result in results.values()):
                break
            await trio.sleep(0.2)
    report.counts["receipts"] = sum(result["checked"] for result in results.values())
    for name, result in results.items():
        report.failures.extend(f"receipt of {name}: {f['fault']}: {f['message']}"
                               for f in result["failures"])
    return bool(results) and all(result["ok"] and result["pending"] == 0
                                 for result in results.values())


async def _settled_chains(backend, scenario: Scenario, tallies: dict[tuple[str, str], str],
                          report: Report) -> dict[str, bool]:
    """Wait for every chain to be confirmed on both sides, then judge the credit invariants:
    both holders of each tally hold the same chain (index and head hash), and every balance
    is matched by its opposite, so the network's balances sum to zero."""
    held: dict[tuple[str, str], dict] = {}
    with trio.move_on_after(SETTLE_TIMEOUT):
        while True:
            held = {}
            for name in scenario.nodes:
                for tally in await backend.call(name, "tally.list", {"cuid": name}):
                    held[(name, tally["tally"])] = tally
            if all(t["chain"]["index"] == t["chain"]["confirmed"] and not t["chain"]["pending"]
                   for t in held.values()):
                break
            await trio.sleep(0.1)
    pairs = [(held.get((a, tally)), held.get((b, tally))) for (a, b), tally in tallies.items()]
    agree = all(x is not None and y is not None and x["chain"] == y["chain"]
                and x["chain"]["index"] == x["chain"]["confirmed"] for x, y in pairs)
    opposite = all(x is not None and y is not None and x["balance"] == -y["balance"]
                   for x, y in pairs)
    total = sum(t["balance"] for t in held.values())
    report.counts["tallies"] = len(tallies)
    report.counts["chits"] = sum(t["chain"]["index"] for t in held.values()) // 2
    report.counts["balance_sum"] = total
    return {"chains_agree": agree, "balances_zero_sum": opposite and total == 0}


async def _check(backend, scenario: Scenario, report: Report,
                 credit: dict[str, bool] | None = None) -> None:
    receipts_ok = await _receipts_verified(backend, scenario, report) if scenario.house \
        else True
    infos: dict[str, dict] = {}
    with trio.move_on_after(20):
        while True:
            infos = {name: await backend.call(name, "getinfo", {})
                     for name in scenario.all_nodes}
            if all(i["counters"]["outbox_depth"] == 0 for i in infos.values()):
                break
            await trio.sleep(0.1)
    pings = report.counts.get("pings", 0)
    processed = sum(i["counters"]["messages_processed"] for i in infos.values())
    results = {
        "all_delivered": not report.failures and len(report.latencies_ms) == pings,
        "outbox_drained": all(i["counters"]["outbox_depth"] == 0 for i in infos.values()),
        "exactly_once": processed == 2 * pings,
        **(credit or {"chains_agree": True, "balances_zero_sum": True}),
        "receipts_verify": receipts_ok,
    }
    report.counts["messages_processed"] = processed
    report.counts["duplicates_ignored"] = sum(i["counters"]["duplicates"] for i in infos.values())
    for name in scenario.invariants:
        report.checks[name] = results[name]


async def run_scenario(scenario: Scenario, processes: bool, workdir: Path) -> Report:
    report = Report()
    rng = random.Random(scenario.seed)
    mode = "one process per node" if processes else "one Trio process"
    house = " and a clearing house" if scenario.house else ""
    print(f"sim {scenario.name!r}: {len(scenario.nodes)} nodes{house}, {len(scenario.edges)}"
          f" links, {mode}", flush=True)
    async with trio.open_nursery() as nursery:
        backend = Processes(workdir) if processes else InProcess(nursery, workdir)
        try:
            started = time.perf_counter()
            agents = await backend.start(scenario.nodes, scenario.edges, scenario.house)
            print(f"  started in {time.perf_counter() - started:.2f} s", flush=True)
            paying = any(item["kind"] in CREDIT_TRAFFIC for item in scenario.traffic)
            tallies = await _open_tallies(backend, scenario) if paying else {}
            started = time.perf_counter()
            for item in scenario.traffic:
                if item["kind"] == "payments":
                    await _payment_traffic(backend, scenario, tallies, item, rng, report)
                elif item["kind"] == "invoices":
                    await _invoice_traffic(backend, scenario, tallies, item, rng, report)
                elif item["kind"] == "relay":
                    await _relay_traffic(backend, scenario, agents, item, rng, report, paying)
                elif item["kind"] == "evidence":
                    await _evidence_traffic(backend, scenario, agents, item, rng, report)
                else:
                    await _ping_traffic(backend, scenario, agents, item, rng, report)
            report.counts["traffic_ms"] = round((time.perf_counter() - started) * 1000)
            credit = await _settled_chains(backend, scenario, tallies, report) if paying else None
            await _check(backend, scenario, report, credit)
        finally:
            await backend.stop()
    return report


def print_report(scenario: Scenario, report: Report) -> None:
    print(f"\nreport for {scenario.name!r}")
    for key, value in report.counts.items():
        print(f"  {key:20} {value}")
    if report.latencies_ms:
        ordered = sorted(report.latencies_ms)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(f"  {'ping p50 / p99':20} {statistics.median(ordered):.2f} / {p99:.2f} ms")
    for failure in report.failures[:10]:
        print(f"  failure: {failure}")
    for name, ok in report.checks.items():
        print(f"  invariant {name:18} {'ok' if ok else 'FAILED'}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="agentd sim", description="Run a scripted multi-node simulation (see configs/sims/),"
        " check its invariants and print a report; exit 1 if one fails.")
    parser.add_argument("scenario", help="scenario TOML file (see configs/sims/)")
    parser.add_argument("--processes", action="store_true",
                        help="run each node as its own 'agentd run' OS process")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data directories")
    options = parser.parse_args(argv)
    scenario = load_scenario(Path(options.scenario))
    workdir = Path(tempfile.mkdtemp(prefix="agentd-sim-"))
    try:
        report = trio.run(run_scenario, scenario, options.processes, workdir)
    finally:
        if options.keep:
            print(f"data kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(scenario, report)
    if options.json:
        Path(options.json).write_text(json.dumps(
            {"counts": report.counts, "checks": report.checks, "failures": report.failures},
            indent=2))
    return 0 if report.checks and all(report.checks.values()) else 1
