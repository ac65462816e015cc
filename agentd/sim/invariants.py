"""The invariants a simulation checks once its traffic has run, each judged from what the
nodes themselves report (RPC calls), after waiting — with a bound — for them to settle."""

from __future__ import annotations

import trio

from agentd.sim.gather import on_every
from agentd.sim.report import Report
from agentd.sim.scenario import Scenario
from agentd.sim.traffic import SETTLE_TIMEOUT


async def receipts_verified(backend, scenario: Scenario, report: Report) -> bool:
    """Once no node waits for a receipt any more, every node's receipts verify offline and
    against the chains re-walked from the clearing house (``receipts.verify chain=true``)."""
    results: dict[str, dict] = {}
    with trio.move_on_after(SETTLE_TIMEOUT):
        while True:
            results = await on_every(backend, scenario.nodes, "receipts.verify",
                                     {"chain": True})
            if all(result["pending"] == 0 for result in results.values()):
                break
            await trio.sleep(0.2)
    report.counts["receipts"] = sum(result["checked"] for result in results.values())
    for name, result in results.items():
        report.failures.extend(f"receipt of {name}: {f['fault']}: {f['message']}"
                               for f in result["failures"])
    return bool(results) and all(result["ok"] and result["pending"] == 0
                                 for result in results.values())


async def settled_chains(backend, scenario: Scenario, tallies: dict[tuple[str, str], str],
                          report: Report) -> dict[str, bool]:
    """Wait for every chain to be confirmed on both sides, then judge the credit invariants:
    both holders of each tally hold the same chain (index and head hash), and every balance
    is matched by its opposite, so the network's balances sum to zero."""
    held: dict[tuple[str, str], dict] = {}
    with trio.move_on_after(SETTLE_TIMEOUT):
        while True:
            listed = await on_every(backend, scenario.nodes, "tally.list",
                                    lambda name: {"cuid": name})
            held = {(name, tally["tally"]): tally for name, tallies in listed.items()
                    for tally in tallies}
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
    report.balances = [(a, b, held[(a, tally)]["balance"]) for (a, b), tally in tallies.items()
                       if (a, tally) in held]
    report.counts["tallies"] = len(tallies)
    report.counts["chits"] = sum(t["chain"]["index"] for t in held.values()) // 2
    report.counts["balance_sum"] = total
    return {"chains_agree": agree, "balances_zero_sum": opposite and total == 0}


async def check(backend, scenario: Scenario, report: Report,
                 credit: dict[str, bool] | None = None) -> None:
    receipts_ok = await receipts_verified(backend, scenario, report) if scenario.house \
        else True
    infos: dict[str, dict] = {}
    with trio.move_on_after(20):
        while True:
            infos = await on_every(backend, scenario.all_nodes, "getinfo", {})
            if all(i["counters"]["outbox_depth"] == 0 for i in infos.values()):
                break
            await trio.sleep(0.1)
    pings = report.counts.get("pings", 0)
    processed = sum(i["counters"]["messages_processed"] for i in infos.values())
    results = {
        "all_delivered": not report.failures and len(report.latencies_ms) == pings,
        "outbox_drained": all(i["counters"]["outbox_depth"] == 0 for i in infos.values()),
        "exactly_once": processed == 2 * (pings + report.counts.get("probe_pings", 0)),
        "chains_agree": True, "balances_zero_sum": True, "lifts_atomic": True,
        **(credit or {}),
        "receipts_verify": receipts_ok,
    }
    report.counts["messages_processed"] = processed
    report.counts["duplicates_ignored"] = sum(i["counters"]["duplicates"] for i in infos.values())
    # strangers' messages that waited for their write allowance (a clearing house that does
    # not know its clients, above all): a simulation that meets it is slowed, not wrong
    report.counts["rationed"] = sum(i["counters"]["rationed"] for i in infos.values())
    # channels opened (both ends count a handshake): beyond one a link, opened again after
    # a cut, a crash or the idle timeout, or when both ends dialled at once
    report.counts["channels_opened"] = sum(i["counters"]["handshakes_ok"]
                                           for i in infos.values()) // 2
    for name in scenario.invariants:
        report.checks[name] = results[name]
