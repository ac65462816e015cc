"""A dense net of real nodes whose ``[lift] auto_clear`` all start at once: the measure of how
much concurrent clearing wastes on void circles, and the invariants it must keep.

``dense_clearing(tmp_path, seed)`` starts a clearing house (the referee) and ``NODES`` nodes
with ``USERS`` users each, opens ``DEGREE`` tallies from every user to random others (across
nodes and within one), has one partner of each tally pay the other a random amount (a random
orientation of a dense graph: many debt cycles), and only then turns ``auto_clear`` on for
every node in the same instant (as after a common restart: the worst alignment). It waits
until no debt cycle is left and no lift is pending, then checks the invariants: every
clearing lift ended the same on every node, each node's chits of it all good or all void,
every tally at opposite balances with agreed chains, every user's net position as it was,
and no debt cycle left. It returns the counts: clearing lifts ``good``, ``void`` and
``raced`` (void because a hop refused its promise for room a concurrent lift took), and
``cleared`` (mCHIP of debt gone).

Measure: ``PYTHONPATH=. python -m tests.clearing_net [RUNS [NODES [USERS]]]`` prints the
counts of seeds 0 to RUNS - 1 (default 3 runs of 6 nodes of 3 users).
"""

from __future__ import annotations

import collections
import random
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from agentd.runtime.node import Node
from tests.netfixture import network, wait_for
from tests.test_credit_service import agreed, chain_of, rpc

NODES = 6
USERS = 3  # on each node
DEGREE = 3  # tallies each user opens with random others
LIMIT = 10**9
RACED = " refused: OVER_LIMIT: "  # as agentd.sim.lifts reads a lift that lost a race
SETTLE_S = 120.0  # a liveness bound, not a measure: clearing must end well before


async def _open(a: Node, a_cuid: str, b: Node, b_cuid: str) -> str:
    """A tally between two users, open on both sides (each step waited for)."""
    invited = await rpc(a, "tally.invite", cuid=a_cuid, limit=LIMIT)
    await rpc(b, "tally.request", cuid=b_cuid, ticket=invited["ticket"])
    tally = invited["tally"]
    await rpc(a, "tally.offer", cuid=a_cuid, tally=tally)
    await rpc(b, "tally.wait", cuid=b_cuid, tally=tally, state="P.offer", timeout_s=60)
    await rpc(b, "tally.accept", cuid=b_cuid, tally=tally)
    for node, cuid in ((a, a_cuid), (b, b_cuid)):
        shown = await rpc(node, "tally.wait", cuid=cuid, tally=tally, state="open",
                          timeout_s=60)
        assert shown["state"] == "open", shown
    return tally


def debts(where: dict[str, Node], tallies: dict[str, tuple[str, str]]) -> dict[str, set[str]]:
    """Who owes whom, from the balances as the first partner of each tally holds them:
    ``owes[a]`` holds b when a owes b."""
    owes: dict[str, set[str]] = collections.defaultdict(set)
    for tally, (a, b) in tallies.items():
        owed_to_a = chain_of(where[a], a, tally)[3]
        if owed_to_a > 0:
            owes[b].add(a)
        elif owed_to_a < 0:
            owes[a].add(b)
    return owes


def net_positions(where: dict[str, Node], tallies: dict[str, tuple[str, str]]
                  ) -> dict[str, int]:
    """What each user is owed in all, less what it owes, from both holders' balances."""
    nets: collections.Counter[str] = collections.Counter()
    for tally, pair in tallies.items():
        for cuid in pair:
            nets[cuid] += chain_of(where[cuid], cuid, tally)[3]
    return dict(nets)


def has_cycle(owes: dict[str, set[str]]) -> bool:
    """Whether the debts go round in a circle somewhere (depth first, three colours)."""
    state: dict[str, int] = {}

    def visit(user: str) -> bool:
        state[user] = 1
        for other in owes.get(user, ()):
            if state.get(other) == 1 or (other not in state and visit(other)):
                return True
        state[user] = 2
        return False

    return any(user not in state and visit(user) for user in list(owes))


def start_auto_clear(node: Node, nursery: trio.Nursery, interval_s: float) -> None:
    """Turn ``[lift] auto_clear`` on in a running node, as its start would with it set."""
    node.config = replace(node.config, lift=replace(node.config.lift, auto_clear=True,
                                                    interval_s=interval_s, minimum=1))
    nursery.start_soon(node.credit.lifts.follow_up.auto_clear)


async def dense_clearing(tmp_path: Path, seed: int, *, nodes: int = NODES,
                         users_each: int = USERS, interval_s: float = 1.0) -> dict[str, Any]:
    rng = random.Random(seed)
    async with network(tmp_path, n=nodes + 1, clearinghouse=0) as net:
        where: dict[str, Node] = {}
        for i, node in enumerate(net.nodes[1:]):
            for u in range(users_each):
                cuid = f"u{i}{u}"
                await rpc(node, "users.add", cuid=cuid)
                where[cuid] = node
        users = sorted(where)
        pairs: set[tuple[str, str]] = set()
        for a in users:
            for b in rng.sample([other for other in users if other != a], DEGREE):
                if (b, a) not in pairs:
                    pairs.add((a, b))
        tallies: dict[str, tuple[str, str]] = {}

        async def open_one(a: str, b: str) -> None:
            tallies[await _open(where[a], a, where[b], b)] = (a, b)

        async with trio.open_nursery() as nursery:
            for a, b in sorted(pairs):
                nursery.start_soon(open_one, a, b)
        for tally, (a, b) in sorted(tallies.items()):
            payer = a if rng.random() < 0.5 else b
            await rpc(where[payer], "chit.pay", cuid=payer, tally=tally,
                      units=rng.randint(1, 20) * 100)
        await wait_for(lambda: all(agreed(where[a], a, where[b], b, tally,
                                          chain_of(where[a], a, tally)[0])
                                   and chain_of(where[a], a, tally)[3] != 0
                                   for tally, (a, b) in tallies.items()), timeout=60)
        before, nets = debts(where, tallies), net_positions(where, tallies)
        debt_before = sum(abs(chain_of(where[a], a, t)[3]) for t, (a, _) in tallies.items())

        async def quiet() -> bool:
            if has_cycle(debts(where, tallies)):
                return False
            for node in net.nodes:
                if any(lift["state"] == "pend" for lift in await rpc(node, "lift.list")):
                    return False
            return all(agreed(where[a], a, where[b], b, t, chain_of(where[a], a, t)[0])
                       for t, (a, b) in tallies.items())

        began = trio.current_time()
        async with trio.open_nursery() as clearing:
            for node in net.nodes[1:]:
                start_auto_clear(node, clearing, interval_s)
            with trio.fail_after(SETTLE_S):
                while not await quiet():
                    await trio.sleep(0.2)
            clearing.cancel_scope.cancel()  # no new round while we count
        took_s = round(trio.current_time() - began, 1)
        counts = await _counts(net.nodes[1:])
        assert net_positions(where, tallies) == nets  # circles move nobody's net position
        debt_after = sum(abs(chain_of(where[a], a, t)[3]) for t, (a, _) in tallies.items())
        counts.update(users=len(users), tallies=len(tallies), cycles_before=has_cycle(before),
                      debt_before=debt_before, debt_after=debt_after, took_s=took_s)
        return counts


async def _counts(nodes: list[Node]) -> dict[str, Any]:
    """Clearing lifts by how they ended, after checking each ended the same everywhere and
    each node's chits of it agree with it."""
    states: dict[str, set[str]] = collections.defaultdict(set)
    raced: set[str] = set()
    units: dict[str, int] = {}
    for node in nodes:
        for lift in await rpc(node, "lift.list"):
            assert lift["kind"] == "circular", lift
            states[lift["lift"]].add(lift["state"])
            units[lift["lift"]] = lift["units"] * (len(lift["path"]) - 1)
            if RACED in (lift["error"] or ""):
                raced.add(lift["lift"])
            for chit in lift["chits"]:
                assert chit["state"][2:] == lift["state"], (lift, chit)
    assert all(len(seen) == 1 for seen in states.values()), states
    ended = collections.Counter(next(iter(seen)) for seen in states.values())
    return {"good": ended["good"], "void": ended["void"], "pend": ended["pend"],
            "raced": len(raced),
            "cleared": sum(units[lift] for lift, seen in states.items() if seen == {"good"})}


async def _measure(runs: int, nodes: int, users_each: int) -> None:
    for seed in range(runs):
        with tempfile.TemporaryDirectory(prefix="agentd-clearing-") as tmp:
            print(seed, await dense_clearing(Path(tmp), seed, nodes=nodes,
                                             users_each=users_each), flush=True)


if __name__ == "__main__":
    given = [3, NODES, USERS]
    given[:len(sys.argv) - 1] = map(int, sys.argv[1:])
    trio.run(_measure, *given)
