"""A hostile tally partner in route searches (real nodes, loopback, Noise, SQLite): what it
sends back can mislead nobody into a wrong lift, nor take the payor's search over, and what
it sends through us costs bounded memory."""

from __future__ import annotations

import uuid

from agentd.runtime import outbox as pump_module
from agentd.runtime.node import Node
from protocol.keys import ChipAddress, SigningKey
from protocol.messages import Send
from tests.netfixture import network, wait_for
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


async def test_a_partners_query_flood_toward_partners_that_are_away_is_held_by_its_bytes(
        tmp_path, monkeypatch):
    """mal floods vic with route queries whose paths are as long, in hops and host names, as
    vic passes on (~4 KB each); vic's other partners are away, so what vic forwards to them
    waits. Past ``HOLD_BYTES`` for one peer a route message is not queued (it had only a
    count, 4,096: 16 MB of such queries for each partner away)."""
    monkeypatch.setattr(pump_module, "HOLD_BYTES", 64_000)
    async with network(tmp_path, n=4) as net:
        mal, vic, *away = net.nodes
        for node, cuid in ((mal, "mal"), (vic, "vic"), (away[0], "ann"), (away[1], "bob")):
            await rpc(node, "users.add", cuid=cuid)
        tally = await open_tally(vic, "vic", mal, "mal", limit=LIMIT)
        await open_tally(vic, "vic", away[0], "ann", limit=LIMIT)
        await open_tally(vic, "vic", away[1], "bob", limit=LIMIT)
        for index in (2, 3):
            await net.stop(index)
        host = ".".join(["h" * 63] * 4)  # the longest host name an address may carry
        made_up = [{"cuid": "c" * 64, "agent": SigningKey.generate().agent_id, "host": host,
                    "port": 9, "tally": str(uuid.uuid4()), "capacity": LIMIT}
                   for _ in range(7)]  # vic passes on a query of 8 hops (then 2 to go)
        last = {"cuid": "mal", "agent": mal.agent_id, "tally": tally, "capacity": LIMIT}
        find = {"cuid": "zed", "agent": SigningKey.generate().agent_id}

        def queries(tx) -> None:
            for _ in range(100):
                send(mal, tx, {"cuid": "vic", "agent": vic.agent_id}, "query", {
                    "query": str(uuid.uuid4()), "kind": "linear", "find": find, "units": 1,
                    "path": [*made_up, last], "depth": 10, "deadline": tx.now_ms + 30_000,
                    "salt": bytes(16), "last": []})

        for _ in range(3):
            mal.transact_ephemeral(queries)
        await wait_for(lambda: mal.pump.depth == 0, timeout=20)  # vic took every one
        for node in away:
            held = [item.size for item in vic.pump.live.values() if item.peer == node.agent_id]
            assert held and sum(held) <= 64_000 + max(held)  # the budget, and one past it
        assert vic.counters.outbox_dropped > 0


async def test_a_partner_that_makes_up_a_route_voids_one_lift_to_that_payee(tmp_path):
    """mal answers every query at once (a lift takes its first route) with a route to eve
    over a tally it does not have. ann's first lift to eve takes it and ends void; mal is a
    suspect for eve then, so the next lifts wait for a route without it and go the honest
    way, good; a route.find lists the made-up route last."""
    async with network(tmp_path, n=7, clearinghouse=0) as net:
        users = await mal_and_an_honest_route(net)
        mal, eve, ann = users["mal"], users["eve"], users["ann"]
        end = {"cuid": "eve", "agent": eve.agent_id, "tally": None, "capacity": None}
        made_up = {"cuid": "mal", "agent": mal.agent_id,
                   "tally": "00000000-0000-4000-8000-00000000aaaa", "capacity": LIMIT}

        def answer(tx, envelope):
            if envelope.action == "query":
                obj = envelope.object
                path = [obj["path"][0], made_up, end]
                send(mal, tx, obj["path"][-1], "good", {
                    "query": obj["query"], "path": path, "goods": 1, "frontier": 0,
                    "capacity": min(hop["capacity"] for hop in path[:-1])})

        hostile(mal, answer)
        ends = []
        for _ in range(3):
            started = await rpc(ann, "lift.pay", cuid="ann", find=who(eve, "eve"), units=500)
            done = await rpc(ann, "lift.wait", lift=started["lift"], timeout_s=20)
            ends.append((done["state"], [hop["cuid"] for hop in started["path"]][1]))
        assert ends == [("void", "mal"), ("good", "bob"), ("good", "bob")]
        found = await rpc(ann, "route.find", cuid="ann", find=who(eve, "eve"), units=500)
        assert [route["path"][1]["cuid"] for route in found] == ["bob", "mal"]


async def test_a_search_through_a_partner_shows_its_hops_room_to_two_digits(tmp_path):
    """bob can pay cat 1,234 mCHIP more: ann's search through bob shows bob's hop as 1,200
    (a route for 1 mCHIP, say), not 1,234, yet a payment of all 1,234 finds its route, and
    one of 1,235 none: whether a route carries some units is the one thing a search must
    tell, so amounts asked one after another (a binary search) still find the room; bob's
    own route.find sees 1,234."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        ann, bob, cat = net.nodes[1:4]
        for node, cuid in ((ann, "ann"), (bob, "bob"), (cat, "cat")):
            await rpc(node, "users.add", cuid=cuid)
        await open_tally(ann, "ann", bob, "bob", limit=10_000)
        await open_tally(bob, "bob", cat, "cat", limit=1234)

        async def routes(units: int) -> list[dict]:
            return await rpc(ann, "route.find", cuid="ann", find=who(cat, "cat"), units=units)

        low, high = 1, 10_000  # routes(low) finds one, routes(high) does not
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if await routes(middle) else (low, middle)
        assert low == 1234
        assert [hop["capacity"] for hop in (await routes(1))[0]["hops"]] == [10_000, 1200]
        assert [hop["capacity"] for hop in (await routes(1234))[0]["hops"]] == [10_000, 1234]
        own = await rpc(bob, "route.find", cuid="bob", find=who(cat, "cat"), units=1234)
        assert [found["capacity"] for found in own] == [1234]
