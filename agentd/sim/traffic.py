"""Simulated traffic: each ``[[traffic]]`` kind is one function of (run, item) in ``KINDS``.

A new kind is a function here, its name in ``KINDS`` (and in ``scenario.TRAFFIC`` with its
keys), and a line in the README's Simulations section.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from agentd.rpc import RpcError
from agentd.sim.progress import progress
from agentd.sim.report import Report
from agentd.sim.scenario import Scenario

EVIDENCE_BATCH = 50  # entries per ch.log_many call of evidence traffic
RELAY_VIEWS = ("node:info", "user:{cuid}:balance")  # what relay traffic reads (the latter
# only once every node has its user, i.e. with credit traffic)
PAYMENT_LIMIT = 10**9  # milliCHIPs each side of a simulated tally may owe: no refusals
SETTLE_TIMEOUT = 60.0  # s for every chain to be confirmed on both sides after the traffic


@dataclass
class Run:
    """What every kind of traffic works with: the nodes, their agents, the tallies opened
    along the links (empty without credit traffic), the seeded randomness and the report."""

    backend: Any
    scenario: Scenario
    agents: dict[str, str]
    tallies: dict[tuple[str, str], str]
    rng: random.Random
    report: Report


def either_way(rng: random.Random, links: list[tuple[str, str]]
                ) -> tuple[str, str, tuple[str, str]]:
    """A random link, and a random direction along it: (from, to, the link)."""
    link = rng.choice(links)
    return (*link, link) if rng.random() < 0.5 else (link[1], link[0], link)


async def run_calls(scenario: Scenario, label: str, calls: list[tuple],
                     call: Callable[..., Awaitable[None]], *, report: Report,
                     weight: int = 1, item: dict | None = None) -> None:
    """``call(*args)`` for each ``args`` of ``calls``, ``[sim] concurrency`` at once (or the
    traffic ``item``'s own ``concurrency``), each call counting ``weight`` (or, when
    ``weight`` is 0, the length of its last argument): shown as progress, and recorded in
    the report (done each second, each call's latency)."""
    total = sum(weight or len(args[-1]) for args in calls)
    at_once = (item or {}).get("concurrency", scenario.concurrency)
    waiting = iter(calls)  # each caller takes the next: a task a call was a million tasks

    async def caller(advance: Callable[[int], None]) -> None:
        for args in waiting:
            started = trio.current_time()
            await call(*args)
            latency_ms = (trio.current_time() - started) * 1000
            amount = weight or len(args[-1])
            report.done(label, amount, latency_ms)
            advance(amount)

    with progress(label, total) as advance:
        async with trio.open_nursery() as nursery:
            for _ in range(min(at_once, len(calls))):
                nursery.start_soon(caller, advance)


async def ping_traffic(run: Run, item: dict) -> None:
    """``count`` pings, each by a random end of a random link to the other end."""
    backend, scenario, agents, rng, report = run.backend, run.scenario, run.agents, run.rng, \
        run.report
    count = item.get("count", 1)
    if not scenario.edges:
        report.failures.append("ping traffic needs at least one edge")
        return
    pairs = [either_way(rng, scenario.edges)[:2] for _ in range(count)]

    async def one(a: str, b: str) -> None:
        try:
            result = await backend.call(a, "peers.ping", {"agent": agents[b]})
            report.latencies_ms.extend(result["rtt_ms"])
        except RpcError as exc:
            report.failures.append(f"ping {a} -> {b}: {exc.message}")

    await run_calls(run.scenario, "pings", pairs, one, report=report, item=item)
    report.counts["pings"] = report.counts.get("pings", 0) + count


async def open_tallies(backend, scenario: Scenario, report: Report
                       ) -> dict[tuple[str, str], str]:
    """One user per node (named after it) and an open tally along every edge: the first
    node of the edge invites, the second requests, offers are made and accepted —
    ``[sim] concurrency`` negotiations at once, each step waited for with ``tally.wait``. A
    negotiation that fails is a failure of the run; its link carries no credit traffic."""
    for name in scenario.nodes:
        await backend.call(name, "users.add", {"cuid": name})

    async def wait(name: str, tally: str, state: str) -> None:
        shown = await backend.call(name, "tally.wait", {
            "cuid": name, "tally": tally, "state": state, "timeout_s": SETTLE_TIMEOUT})
        if shown["state"] != state:
            raise RpcError(0, f"{name}'s tally is {shown['state']}, not {state}, after "
                           f"{SETTLE_TIMEOUT:g} s", "TIMEOUT")

    async def negotiate(a: str, b: str) -> None:
        try:
            invited = await backend.call(a, "tally.invite", {"cuid": a, "limit": PAYMENT_LIMIT})
            tally = invited["tally"]
            await backend.call(b, "tally.request", {"cuid": b, "ticket": invited["ticket"]})
            await backend.call(a, "tally.offer", {"cuid": a, "tally": tally})
            await wait(b, tally, "P.offer")
            await backend.call(b, "tally.accept", {"cuid": b, "tally": tally})
            await wait(a, tally, "open")
            await wait(b, tally, "open")
        except RpcError as exc:
            report.failures.append(f"tally {a} - {b}: {exc.message}")
            return
        tallies[(a, b)] = tally

    tallies: dict[tuple[str, str], str] = {}
    await run_calls(scenario, "tallies", scenario.edges, negotiate, report=report)
    return tallies


async def payment_traffic(run: Run, item: dict) -> None:
    """``count`` payments of 1 to ``units`` milliCHIPs, each across a random tally in a
    random direction, ``concurrency`` of them in flight at once."""
    backend, tallies, rng, report = run.backend, run.tallies, run.rng, run.report
    count, units = item.get("count", 1), item.get("units", 1000)
    if not tallies:
        report.failures.append("payments traffic needs at least one edge")
        return
    edges = sorted(tallies)
    payments = []
    for _ in range(count):
        payer, _, link = either_way(rng, edges)
        payments.append((payer, tallies[link], rng.randint(1, units)))

    async def one(payer: str, tally: str, amount: int) -> None:
        try:
            await backend.call(payer, "chit.pay", {"cuid": payer, "tally": tally,
                                                   "units": amount})
        except RpcError as exc:
            report.failures.append(f"payment by {payer} on {tally}: {exc.message}")

    await run_calls(run.scenario, "payments", payments, one, report=report, item=item)
    report.counts["payments"] = report.counts.get("payments", 0) + count


async def invoice_traffic(run: Run, item: dict) -> None:
    """``count`` invoices of 1 to ``units`` milliCHIPs, each across a random tally in a
    random direction: the payee invoices, the payer accepts as soon as the invoice reaches
    it; ``concurrency`` at once."""
    backend, tallies, rng, report = run.backend, run.tallies, run.rng, run.report
    count, units = item.get("count", 1), item.get("units", 1000)
    if not tallies:
        report.failures.append("invoices traffic needs at least one edge")
        return
    edges = sorted(tallies)
    invoices = []
    for _ in range(count):
        payee, payer, link = either_way(rng, edges)
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

    await run_calls(run.scenario, "invoices", invoices, one, report=report, item=item)
    report.counts["invoices"] = report.counts.get("invoices", 0) + count


async def relay_traffic(run: Run, item: dict) -> None:
    """``count`` relay queries, each by a random end of a random link for a view of the other
    end's ledger (``node:info``, or with ``users`` also a user's balance), waited for until
    COMPLETED; ``confidential = true`` has every view encrypted to its requestor."""
    backend, scenario, agents, rng, report = run.backend, run.scenario, run.agents, run.rng, \
        run.report
    users = bool(run.tallies)
    count, confidential = item.get("count", 1), item.get("confidential", False)
    if not scenario.edges:
        report.failures.append("relay traffic needs at least one edge")
        return
    views = RELAY_VIEWS if users else RELAY_VIEWS[:1]
    queries = []
    for _ in range(count):
        asker, source, _ = either_way(rng, scenario.edges)
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

    await run_calls(run.scenario, "relay queries", queries, one, report=report, item=item)
    report.counts["relay_queries"] = report.counts.get("relay_queries", 0) + count


async def evidence_traffic(run: Run, item: dict) -> None:
    """``count`` entries logged at the clearing house, in ``ch.log_many`` calls of up to
    ``EVIDENCE_BATCH``: one process per link (created by its first node, owned by both), and
    each entry logged by a random end of a random link (a node alone logs to its own)."""
    backend, scenario, agents, rng, report = run.backend, run.scenario, run.agents, run.rng, \
        run.report
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
        by, _, link = either_way(rng, links)
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

    await run_calls(run.scenario, "evidence", calls, one, report=report, weight=0,
                    item=item)
    report.counts["evidence"] = report.counts.get("evidence", 0) + count


KINDS: dict[str, Callable[[Run, dict], Awaitable[None]]] = {
    "ping": ping_traffic,
    "payments": payment_traffic,
    "invoices": invoice_traffic,
    "relay": relay_traffic,
    "evidence": evidence_traffic,
}
