"""A hostile tally partner answering route searches (real nodes, loopback, Noise, SQLite):
what it sends back can mislead nobody into a wrong lift, nor take the payor's search over."""

from __future__ import annotations

from agentd.runtime.node import Node
from protocol.keys import ChipAddress
from protocol.messages import Send
from tests.netfixture import network
from tests.test_credit_service import open_tally, rpc
from tests.test_lifts import LIMIT, who


async def mal_and_an_honest_route(net) -> dict[str, Node]:
    """ann's partners are mal and bob; the payee eve is reached by ann-bob-cat-dan-eve."""
    users = {"ann": net.nodes[1], "mal": net.nodes[2], "bob": net.nodes[3],
             "cat": net.nodes[4], "dan": net.nodes[5], "eve": net.nodes[6]}
    for cuid, node in users.items():
        await rpc(node, "users.add", cuid=cuid)
    for a, b in (("ann", "mal"), ("ann", "bob"), ("bob", "cat"), ("cat", "dan"),
                 ("dan", "eve")):
        await open_tally(users[a], a, users[b], b, limit=LIMIT)
    return users


def hostile(node: Node, answer) -> None:
    """``node`` answers every route query with ``answer(tx, envelope)`` instead."""
    node.credit.routes.handle = answer


def send(node: Node, tx, to: dict, action: str, obj: dict) -> None:
    node.credit.routes.ledger.emit(
        tx, [Send(ChipAddress(agent=to["agent"], cuid=to["cuid"]), "route", action, obj,
                  "mal")])


async def pay_eve(users: dict[str, Node]) -> dict:
    started = await rpc(users["ann"], "lift.pay", cuid="ann", find=who(users["eve"], "eve"),
                        units=500)
    done = await rpc(users["ann"], "lift.wait", lift=started["lift"], timeout_s=20)
    assert done["state"] == "good", done
    return started


async def test_a_partner_cannot_take_over_the_payors_search_with_its_query_id(tmp_path):
    """mal sends ann's query back to ann as a query of its own: the payor's node takes it
    as the repeat it is, not as one to relay (a relay under the payor's own query would take
    every answer from ann's other partners and pass them to mal)."""
    async with network(tmp_path, n=7, clearinghouse=0) as net:
        users = await mal_and_an_honest_route(net)
        mal, answers = users["mal"], []

        def echo(tx, envelope):
            if envelope.action != "query":
                answers.append(envelope.action)
                return
            came_by = envelope.object["path"][-1]
            send(mal, tx, came_by, "query", {**envelope.object, "path": [
                {"cuid": "mal", "agent": mal.agent_id, "tally": came_by["tally"],
                 "capacity": LIMIT}]})

        hostile(mal, echo)
        started = await pay_eve(users)
        assert [hop["cuid"] for hop in started["path"]] == ["ann", "bob", "cat", "dan", "eve"]
        assert "good" not in answers  # nothing of ann's search went to mal


async def test_a_route_the_payor_can_tell_is_not_from_its_query_is_dropped(tmp_path):
    """mal answers at once (a lift takes its first route) with routes to eve that start
    otherwise than the query ann sent it did: over another of ann's tallies, with more room
    on ann's own hop than ann offered, or through mal twice. Each is dropped, so the lift
    goes the honest way, good."""
    async with network(tmp_path, n=7, clearinghouse=0) as net:
        users = await mal_and_an_honest_route(net)
        mal, eve = users["mal"], users["eve"]
        tallies = {row["partner"].split(":")[0]: row["tally"]
                   for row in await rpc(users["ann"], "tally.list", cuid="ann")}
        end = {"cuid": "eve", "agent": eve.agent_id, "tally": None, "capacity": None}
        mal_hop = {"cuid": "mal", "agent": mal.agent_id,
                   "tally": "00000000-0000-4000-8000-00000000aaaa", "capacity": LIMIT}
        lies = [
            lambda first: [{**first, "tally": tallies["bob"]}, mal_hop, end],
            lambda first: [{**first, "capacity": first["capacity"] * 1000}, mal_hop, end],
            lambda first: [first, mal_hop, {**mal_hop, "tally": tallies["bob"]}, end],
        ]
        for lie in lies:
            def answer(tx, envelope, lie=lie):
                if envelope.action == "query":
                    obj = envelope.object
                    path = lie(obj["path"][0])
                    send(mal, tx, obj["path"][-1], "good", {
                        "query": obj["query"], "path": path, "goods": 1, "frontier": 0,
                        "capacity": min(hop["capacity"] for hop in path[:-1])})

            hostile(mal, answer)
            users["ann"].credit.routes.known._known.clear()
            started = await pay_eve(users)
            assert [hop["cuid"] for hop in started["path"]][:2] == ["ann", "bob"]
