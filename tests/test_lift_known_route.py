"""A lift to a payee a lift of the same user reached before: the route it took is checked
again with a directed query, one message a hop, and the search floods only when that route
cannot carry the lift any more (real nodes, loopback, Noise, SQLite)."""

from __future__ import annotations

from typing import Any

from agentd.runtime.node import Node
from tests.netfixture import network
from tests.test_credit_service import open_tally, rpc
from tests.test_lifts import LIMIT, who


def watch_queries(nodes: dict[str, Node]) -> dict[str, list]:
    """Every route query handled, by query id, with the users it reached; every ask."""
    seen: dict[str, list] = {"queries": [], "arrivals": [], "asks": []}
    for node in set(nodes.values()):
        routes = node.credit.routes

        def record(tx, envelope, handle=routes.handle):
            if envelope.action == "ask":
                seen["asks"].append(envelope.to.cuid)
            if envelope.action == "query":
                seen["arrivals"].append(envelope.to.cuid)
                if envelope.object["query"] not in seen["queries"]:
                    seen["queries"].append(envelope.object["query"])
            handle(tx, envelope)

        routes.handle = record
    return seen


async def pay(ann: Node, eve: Node, units: int) -> dict[str, Any]:
    started = await rpc(ann, "lift.pay", cuid="ann", find=who(eve, "eve"), units=units)
    done = await rpc(ann, "lift.wait", lift=started["lift"], timeout_s=20)
    assert done["state"] == "good", done
    return started


async def test_the_route_a_lift_took_is_checked_again_one_message_a_hop(tmp_path):
    """A diamond with a tail: ann pays eve through bob or cat, then dan. The first lift
    floods (both middles hear a query, eve's node is asked for her last hops); the next goes
    straight along the route the first took, one query through one middle, no ask. Once that
    middle's hop to dan cannot carry the payment, the directed query finds nothing, the
    search floods again and the lift goes through the other middle: nothing void."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        users = {"ann": net.nodes[1], "bob": net.nodes[2], "cat": net.nodes[3],
                 "dan": net.nodes[4]}
        for cuid, node in users.items():
            await rpc(node, "users.add", cuid=cuid)
        await rpc(users["dan"], "users.add", cuid="eve")
        users["eve"] = users["dan"]
        for a, b in (("ann", "bob"), ("ann", "cat"), ("bob", "dan"), ("cat", "dan"),
                     ("dan", "eve")):
            await open_tally(users[a], a, users[b], b, limit=LIMIT)
        ann, eve = users["ann"], users["eve"]
        seen = watch_queries(users)

        first = await pay(ann, eve, 500)
        middle = first["path"][1]["cuid"]
        other = ({"bob", "cat"} - {middle}).pop()
        assert set(seen["arrivals"]) == {"bob", "cat"} and seen["asks"] == ["eve"]

        for key in seen:
            seen[key].clear()
        second = await pay(ann, eve, 500)
        assert [hop["cuid"] for hop in second["path"]] == ["ann", middle, "dan", "eve"]
        assert len(seen["queries"]) == 1 and seen["arrivals"] == [middle, "dan"]
        assert seen["asks"] == []  # a directed query needs no last hops

        # the middle's hop into dan is all but used up: the route known cannot carry 500
        tallies = await rpc(users[middle], "tally.list", cuid=middle)
        into_dan = next(row["tally"] for row in tallies if row["partner"].startswith("dan:"))
        await rpc(users[middle], "chit.pay", cuid=middle, tally=into_dan,
                  units=LIMIT - 1_000 - 100)
        for key in seen:
            seen[key].clear()
        third = await pay(ann, eve, 500)
        assert [hop["cuid"] for hop in third["path"]] == ["ann", other, "dan", "eve"]
        assert len(seen["queries"]) == 2  # the directed query found nothing, then the flood
        assert seen["arrivals"][0] == middle and other in seen["arrivals"]
        void = [lift for lift in await rpc(ann, "lift.list", cuid="ann")
                if lift["state"] != "good"]
        assert void == []
