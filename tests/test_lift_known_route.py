"""A lift to a payee a lift of the same user reached before: the route it took is checked
again with a directed query, one message a hop, and the search floods only when that route
cannot carry the lift any more (real nodes, loopback, Noise, SQLite)."""

from __future__ import annotations

import dataclasses
from typing import Any

from agentd.runtime.node import Node
from agentd.services.credit import routes as route_service
from protocol.keys import SigningKey
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


async def diamond_users(net) -> dict[str, Node]:
    """ann@n1, bob@n2, cat@n3, and dan and eve on n4; no tallies yet (n0 referees)."""
    users = {"ann": net.nodes[1], "bob": net.nodes[2], "cat": net.nodes[3],
             "dan": net.nodes[4], "eve": net.nodes[4]}
    for cuid, node in users.items():
        await rpc(node, "users.add", cuid=cuid)
    return users


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
        users = await diamond_users(net)
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


async def test_a_route_whose_lift_went_void_is_forgotten(tmp_path):
    """bob's node answers route queries but refuses promises (it takes only lifts another
    referee decides: a legitimate config). ann's route through bob, good before, is checked
    again and passes, and the lift goes void; the next lift does not check that route again
    but floods (both middles hear it, eve's node is asked), as it would have with no route
    known."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        users = await diamond_users(net)
        for a, b in (("ann", "bob"), ("bob", "dan"), ("cat", "dan"), ("dan", "eve")):
            await open_tally(users[a], a, users[b], b, limit=LIMIT)
        ann, bob, eve = users["ann"], users["bob"], users["eve"]

        async def pay_eve() -> tuple[str, str]:
            started = await rpc(ann, "lift.pay", cuid="ann", find=who(eve, "eve"), units=500)
            done = await rpc(ann, "lift.wait", lift=started["lift"], timeout_s=20)
            return started["path"][1]["cuid"], done["state"]

        assert await pay_eve() == ("bob", "good")  # remembered: the only way so far
        await open_tally(ann, "ann", users["cat"], "cat", limit=LIMIT)
        bob.config = dataclasses.replace(bob.config, lift=dataclasses.replace(
            bob.config.lift, referees=(SigningKey.generate().agent_id,)))
        seen = watch_queries(users)
        assert await pay_eve() == ("bob", "void")  # the directed check passes; bob refuses
        assert len(seen["queries"]) == 1 and seen["arrivals"] == ["bob", "dan"]
        for key in seen:
            seen[key].clear()
        await pay_eve()
        assert set(seen["arrivals"]) == {"bob", "cat"} and seen["asks"] == ["eve"]


async def test_lifts_at_once_look_wider_than_what_their_own_route_can_carry(tmp_path):
    """The known route through bob has room for one 500 lift (cat's is wide). Two lifts at
    once: the second does not pile onto bob's route, as its check still shows room there,
    but floods; neither goes void in any of three rounds."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        users = await diamond_users(net)
        narrow = await open_tally(users["bob"], "bob", users["dan"], "dan", limit=10_000)
        for a, b in (("ann", "bob"), ("dan", "eve")):
            await open_tally(users[a], a, users[b], b, limit=LIMIT)
        ann, eve = users["ann"], users["eve"]
        first = await pay(ann, eve, 500)  # the only route yet: bob's, remembered
        assert first["path"][1]["cuid"] == "bob"
        for a, b in (("ann", "cat"), ("cat", "dan")):
            await open_tally(users[a], a, users[b], b, limit=LIMIT)
        # bob's hop to dan keeps room for one 500 lift at a time
        await rpc(users["bob"], "chit.pay", cuid="bob", tally=narrow, units=10_000 - 500 - 900)
        for _ in range(3):
            started = [await rpc(ann, "lift.pay", cuid="ann", find=who(eve, "eve"), units=500)
                       for _ in range(2)]
            ends = [await rpc(ann, "lift.wait", lift=lift["lift"], timeout_s=20)
                    for lift in started]
            assert [end["state"] for end in ends] == ["good", "good"], ends


async def test_one_peers_queries_do_not_push_out_the_relays_of_others(tmp_path):
    """A node remembers each (query, user) it handled, and the relay of each it passed on:
    a partner that floods it with queries of its own evicts its own first (past
    SEEN_PER_PEER), so a search others sent through the node keeps its relay; and all of
    them together stay within SEEN."""
    async with network(tmp_path, n=1) as net:
        routes = net.nodes[0].credit.routes
        flooder, honest = (SigningKey.generate().agent_id for _ in range(2))
        relayed = ("00000000-0000-4000-8000-000000000001", "bob")
        routes._note_seen(relayed, "a relay", honest)
        for n in range(route_service.SEEN + route_service.SEEN_PER_PEER):  # past the bound
            routes._note_seen((str(n), "bob"), None, flooder)
        assert routes._seen[relayed] == ("a relay", honest)
        assert len(routes._seen_by[flooder]) == route_service.SEEN_PER_PEER
        peers = [SigningKey.generate().agent_id for _ in range(20)]
        for n in range(2 * route_service.SEEN):
            routes._note_seen((f"q{n}", "bob"), None, peers[n % 20])
        assert len(routes._seen) == route_service.SEEN
        assert sum(len(keys) for keys in routes._seen_by.values()) == route_service.SEEN
        assert all(routes._seen[key][1] == peer
                   for peer, keys in routes._seen_by.items() for key in keys)
