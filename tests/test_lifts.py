"""Routes and lifts between real nodes (loopback, Noise, SQLite), refereed by a clearing house:
discovery, linear and circular lifts end to end, capacity held by pending lift chits, the
views, and the refusals that must change nothing."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from agentd.rpc import RpcError
from agentd.runtime.context import NotYet
from agentd.runtime.node import Node
from tests.netfixture import network, wait_for
from tests.test_credit_service import (
    agreed,
    open_tally,
    refused,
    rpc,
)

LIMIT = 1_000_000


def balance(node: Node, cuid: str, tally: str) -> int:
    return node.db.read_one("SELECT balance FROM tallies WHERE uuid = ? AND cuid = ?",
                            (tally, cuid))[0]


def chain_length(node: Node, cuid: str, tally: str) -> int:
    return node.db.read_one("SELECT chain_length FROM tallies WHERE uuid = ? AND cuid = ?",
                            (tally, cuid))[0]


def reserved(node: Node, cuid: str, tally: str) -> tuple[int, int]:
    return tuple(node.db.read_one(
        "SELECT lift_in, lift_out FROM tallies WHERE uuid = ? AND cuid = ?", (tally, cuid)))


def who(node: Node, cuid: str) -> str:
    return f"{cuid}:{node.agent_id}"


async def line(net, *, limit: int = LIMIT) -> dict[str, Any]:
    """ann@n1 — bob@n2 — cat@n3 — dan@n4, the clearing house n0 referees."""
    nodes = net.nodes
    users = {"ann": nodes[1], "bob": nodes[2], "cat": nodes[3], "dan": nodes[4]}
    for cuid, node in users.items():
        await rpc(node, "users.add", cuid=cuid)
    tallies = {}
    for (a, b) in (("ann", "bob"), ("bob", "cat"), ("cat", "dan")):
        tallies[a + b] = await open_tally(users[a], a, users[b], b, limit=limit)
    return {"users": users, "tallies": tallies}


async def settled_everywhere(nodes: list[Node], lift: str, state: str) -> None:
    async def all_settled() -> bool:
        for node in nodes:
            shown = await rpc(node, "lift.show", lift=lift)
            if shown["state"] != state:
                return False
        return True

    with trio.fail_after(20):
        while not await all_settled():
            await trio.sleep(0.05)


async def test_a_linear_lift_pays_across_three_hops_all_good(tmp_path):
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        u, tl = world["users"], world["tallies"]
        ann, dan = u["ann"], u["dan"]
        routes = await rpc(ann, "route.find", cuid="ann", find=who(dan, "dan"), units=700)
        assert [[hop["cuid"] for hop in r["path"]] for r in routes] == [
            ["ann", "bob", "cat", "dan"]]
        assert routes[0]["capacity"] >= 700
        started = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=700,
                            memo="rent")
        assert started["state"] == "pend"
        assert [hop["cuid"] for hop in started["path"]] == ["ann", "bob", "cat", "dan"]
        done = await rpc(ann, "lift.wait", lift=started["lift"], timeout_s=20)
        assert done["state"] == "good", done
        await settled_everywhere(list(u.values()), started["lift"], "good")
        for node in u.values():  # waiting on a decided lift leaves nothing behind
            assert (await rpc(node, "lift.wait", lift=started["lift"]))["state"] == "good"
            assert started["lift"] not in node.dispatcher.services["lift"]._settled
        # ann paid 700, dan got 700, bob and cat passed it on: each tally moved 700.
        for tally, (payer, payee) in {tl["annbob"]: ("ann", "bob"), tl["bobcat"]: ("bob", "cat"),
                                      tl["catdan"]: ("cat", "dan")}.items():
            await wait_for(lambda t=tally, a=payer, b=payee: agreed(u[a], a, u[b], b, t, 1))
            assert balance(u[payee], payee, tally) == 700
            assert balance(u[payer], payer, tally) == -700
            assert reserved(u[payer], payer, tally) == (0, 0)
            assert reserved(u[payee], payee, tally) == (0, 0)
        chits = await rpc(u["bob"], "chit.list", cuid="bob", tally=tl["bobcat"])
        assert [(ch["type"], ch["state"], ch["units"]) for ch in chits] == [
            ("lift", "L.good", 700)]
        house = net.nodes[0]
        shown = await rpc(house, "lift.show", lift=started["lift"])
        assert shown["state"] == "good" and shown["decision"]["referee"] == house.agent_id
        assert (shown["payor"], shown["error"], shown["chits"]) == (None, None, [])
        assert await rpc(house, "lift.list") == [shown]  # the lifts it referees, too
        assert (await rpc(ann, "lift.show", lift=started["lift"]))["payor"] == "ann"
        # the decision is evidence at the clearing house, readable by every node on the path,
        # in the referee's namespace
        pid = f"{house.agent_id}/{started['lift']}"
        await wait_for(lambda: house.db.read_one(
            "SELECT count(*) FROM receipts WHERE pid = ?", (pid,))[0] == 1)
        logged = await rpc(dan, "ch.query", pid=pid)
        assert [entry["header"]["kind"] for entry in logged["entries"]] == ["lift.decision"]


async def test_route_messages_are_ephemeral_no_row_and_still_acked(tmp_path):
    """A route search commits nothing: no route message gets an inbox row on the node that
    handles it or an outbox row on the node that sends it, and every one is still delivered
    and acked (from memory)."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        u = world["users"]
        nodes = list(u.values())
        handled: list[bytes] = []
        for node in nodes:
            routes = node.credit.routes
            assert routes.ephemeral and node.credit.lifts.ephemeral is False

            def record(tx, envelope, handle=routes.handle):
                handled.append(envelope.id)
                handle(tx, envelope)

            routes.handle = record
        found = await rpc(u["ann"], "route.find", cuid="ann", find=who(u["dan"], "dan"),
                          units=700)
        assert [hop["cuid"] for hop in found[0]["path"]] == ["ann", "bob", "cat", "dan"]
        # queries ann->bob->cat, answers from bob and cat (none) and cat (good) to ann
        assert len(handled) >= 4
        await wait_for(lambda: all(node.pump.depth == 0 for node in nodes))
        for node in nodes:
            for table in ("inbox", "outbox"):
                rows = {row[0] for row in node.db.read(f"SELECT id FROM {table}")}
                assert not rows & set(handled), f"route message rows in {table}"
            assert node.db.read("SELECT id FROM outbox WHERE target = 'route'") == []


async def triangle(net) -> tuple[dict[str, Node], str, str, str]:
    """ann@n1, bob@n2, cat@n3 in a triangle of tallies where bob owes ann 500, cat owes bob
    300 and ann owes cat 400: the cycle ann->bob->cat->ann can clear 300."""
    nodes = net.nodes
    users = {"ann": nodes[1], "bob": nodes[2], "cat": nodes[3]}
    for cuid, node in users.items():
        await rpc(node, "users.add", cuid=cuid)
    ab = await open_tally(users["ann"], "ann", users["bob"], "bob")
    bc = await open_tally(users["bob"], "bob", users["cat"], "cat")
    ca = await open_tally(users["cat"], "cat", users["ann"], "ann")
    await rpc(users["bob"], "chit.pay", cuid="bob", tally=ab, units=500)
    await rpc(users["cat"], "chit.pay", cuid="cat", tally=bc, units=300)
    await rpc(users["ann"], "chit.pay", cuid="ann", tally=ca, units=400)
    await wait_for(lambda: balance(users["ann"], "ann", ab) == 500
                   and balance(users["bob"], "bob", bc) == 300
                   and balance(users["cat"], "cat", ca) == 400)
    return users, ab, bc, ca


def cleared_300(users: dict[str, Node], ab: str, bc: str, ca: str) -> bool:
    return (balance(users["ann"], "ann", ab) == 200 and balance(users["bob"], "bob", ab) == -200
            and balance(users["bob"], "bob", bc) == 0 and balance(users["cat"], "cat", bc) == 0
            and balance(users["cat"], "cat", ca) == 100
            and balance(users["ann"], "ann", ca) == -100)


async def test_a_circular_lift_clears_a_debt_cycle(tmp_path):
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        users, ab, bc, ca = await triangle(net)
        cleared = await rpc(users["ann"], "lift.clear", cuid="ann")
        assert cleared["units"] == 300
        assert [hop["cuid"] for hop in cleared["path"]] == ["ann", "bob", "cat", "ann"]
        done = await rpc(users["ann"], "lift.wait", lift=cleared["lift"], timeout_s=20)
        assert done["state"] == "good", done
        await settled_everywhere(list(users.values()), cleared["lift"], "good")
        await wait_for(lambda: cleared_300(users, ab, bc, ca))
        # No more cycle through ann: bob<->cat is clear.
        none = await refused(users["ann"], "lift.clear", cuid="ann")
        assert none.reason == "NO_CYCLE" and "mCHIP" not in none.message  # no amount asked
        five = await refused(users["ann"], "lift.clear", cuid="ann", units=5)
        assert (five.reason, five.message) == (none.reason, none.message)  # none at all
        # a user the node does not have is refused before anything is asked of anyone
        sent = users["cat"].counters.messages_processed
        for method, extra in (("lift.pay", {"find": who(users["cat"], "cat"), "units": 5}),
                              ("lift.clear", {})):
            error = await refused(users["ann"], method, cuid="nobody", **extra)
            assert error.reason == "UNKNOWN_USER", error
        assert users["cat"].counters.messages_processed == sent



async def test_a_payment_into_room_a_lift_freed_waits_for_a_partner_still_pending(tmp_path):
    """p owes q the whole limit; q pays p 4,000 by a lift, whose decision reaches p first.
    p pays q 4,000 back into the room it sees: q, still holding the lift chit pending, takes
    that chit once its own decision comes, not refuses it as over its limit."""
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        _, pn, qn = net.nodes
        await rpc(pn, "users.add", cuid="p")
        await rpc(qn, "users.add", cuid="q")
        tally = await open_tally(pn, "p", qn, "q", limit=10_000)
        await rpc(pn, "chit.pay", cuid="p", tally=tally, units=10_000)
        await wait_for(lambda: balance(qn, "q", tally) == 10_000)
        lifts = qn.dispatcher.services["lift"]
        handle, held = lifts.handle, []

        def holding_decisions(tx, envelope):  # q's decision is late: its sender resends it
            if envelope.action == "decision" and not held:
                raise NotYet("the test holds q's decision")
            return handle(tx, envelope)

        lifts.handle = holding_decisions
        started = await rpc(qn, "lift.pay", cuid="q", find=who(pn, "p"), units=4_000)
        await wait_for(lambda: tuple(pn.db.read_one("SELECT state FROM lifts WHERE lift = ?",
                                                    (started["lift"],)) or ()) == ("good",))
        assert reserved(qn, "q", tally) == (0, 4_000)  # still pending at q
        deferred = qn.counters.deferred
        paid = await rpc(pn, "chit.pay", cuid="p", tally=tally, units=4_000)
        await wait_for(lambda: qn.counters.deferred > deferred + 1)  # the chit, and the decision
        assert pn.db.read_one("SELECT count(*) FROM outbox WHERE state = 'failed'")[0] == 0
        held.append(True)
        await wait_for(lambda: agreed(pn, "p", qn, "q", tally, 3), timeout=30)
        assert balance(qn, "q", tally) == 10_000
        chits = {row["chit"]: row for row in await rpc(pn, "chit.list", cuid="p", tally=tally)}
        assert chits[paid["chit"]]["state"] == "L.good" and chits[paid["chit"]]["error"] is None
        assert (await rpc(pn, "tally.show", cuid="p", tally=tally)).get("error") is None
        assert pn.db.read_one("SELECT count(*) FROM outbox WHERE state = 'failed'")[0] == 0


async def test_pending_lift_chits_hold_capacity_until_decided(tmp_path):
    """A lift the referee cannot decide yet (it is down) holds its capacity: a payment that
    would use it is OVER_LIMIT, a second lift finds no route; once the referee is back past
    the deadline, the lift is void everywhere and the capacity is free again."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net, limit=1000)
        u, tl = world["users"], world["tallies"]
        ann, dan = u["ann"], u["dan"]
        await net.stop(0)  # the referee
        started = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=800,
                            life_s=2)
        await wait_for(lambda: reserved(dan, "dan", tl["catdan"]) == (800, 0))
        assert reserved(ann, "ann", tl["annbob"]) == (0, 800)
        shown = await rpc(ann, "tally.show", cuid="ann", tally=tl["annbob"])
        assert shown["reserved"] == {"in": 0, "out": 800}
        assert shown["capacity"] == {"pay": 200, "receive": 1000}
        pending = await rpc(dan, "chit.list", cuid="dan", tally=tl["catdan"])
        assert [(ch["type"], ch["state"], ch["lift"]) for ch in pending] == [
            ("lift", "A.lift", started["lift"])]
        error = await refused(ann, "chit.pay", cuid="ann", tally=tl["annbob"], units=300)
        assert error.reason == "OVER_LIMIT"
        await rpc(ann, "chit.pay", cuid="ann", tally=tl["annbob"], units=200)  # fits
        assert await rpc(ann, "route.find", cuid="ann", find=who(dan, "dan"), units=100) == []
        await trio.sleep(2.2)  # past the lift's deadline (the referee is down: nothing moves)
        for node in (ann, u["bob"], dan):  # each node still pending asks the referee
            await wait_for(lambda node=node: node.db.read_one(
                "SELECT query_tries FROM lifts WHERE lift = ?", (started["lift"],))[0] >= 1)
        await net.restart(0)
        await settled_everywhere(list(u.values()), started["lift"], "void")
        shown = await rpc(ann, "lift.show", lift=started["lift"])
        assert shown["error"].startswith("the referee voided it: its deadline passed before the "
                                         "terminus's commit reached it (a node on the path, "
                                         "or the referee, down or slow")
        for payer, payee, tally in (("ann", "bob", tl["annbob"]), ("bob", "cat", tl["bobcat"]),
                                    ("cat", "dan", tl["catdan"])):
            assert reserved(u[payer], payer, tally) == (0, 0)
            assert reserved(u[payee], payee, tally) == (0, 0)
        assert balance(dan, "dan", tl["catdan"]) == 0
        chits = await rpc(dan, "chit.list", cuid="dan", tally=tl["catdan"])
        assert [(ch["type"], ch["state"]) for ch in chits] == [("lift", "A.void")]
        assert chain_length(dan, "dan", tl["catdan"]) == 0  # void lift chits never chain



async def test_many_lifts_in_flight_over_shared_tallies_never_oversubscribe(tmp_path):
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        users = {"ann": net.nodes[1], "bob": net.nodes[2], "cat": net.nodes[3]}
        for cuid, node in users.items():
            await rpc(node, "users.add", cuid=cuid)
        ab = await open_tally(users["ann"], "ann", users["bob"], "bob", limit=1000)
        bc = await open_tally(users["bob"], "bob", users["cat"], "cat", limit=1000)
        started: list[str] = []

        async def pay() -> None:
            try:
                lift = await rpc(users["ann"], "lift.pay", cuid="ann",
                                 find=who(users["cat"], "cat"), units=150)
            except RpcError as exc:
                assert exc.reason in ("NO_ROUTE", "OVER_LIMIT"), exc
                return
            started.append(lift["lift"])

        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(pay)
        states = [(await rpc(users["ann"], "lift.wait", lift=lift, timeout_s=20))["state"]
                  for lift in started]
        assert "pend" not in states
        good = states.count("good")
        assert 1 <= good <= 6  # 6 x 150 = 900 fits a limit of 1000; 7 would not
        for lift in started:
            await settled_everywhere(list(users.values()), lift,
                                     (await rpc(users["ann"], "lift.show", lift=lift))["state"])
        await wait_for(lambda: balance(users["cat"], "cat", bc) == 150 * good
                       and balance(users["bob"], "bob", ab) == 150 * good
                       and balance(users["bob"], "bob", bc) == -150 * good)
        for node, cuid, tally in ((users["ann"], "ann", ab), (users["bob"], "bob", ab),
                                  (users["bob"], "bob", bc), (users["cat"], "cat", bc)):
            assert reserved(node, cuid, tally) == (0, 0)
        listed = await rpc(users["ann"], "lift.list", cuid="ann")
        assert sorted(lift["lift"] for lift in listed) == sorted(started)
        assert await rpc(users["ann"], "lift.list", cuid="ann", limit=3) == listed[:3]
        assert await rpc(users["ann"], "lift.list", limit=len(started) + 5) == listed


async def test_the_lift_view_serves_record_state_and_decision(tmp_path):
    relay = {"relay": {"access": [{"principal": "*", "resource": "lift:*"}]}}
    async with network(tmp_path, n=4, clearinghouse=0, sections=relay) as net:
        users = {"ann": net.nodes[1], "bob": net.nodes[2], "cat": net.nodes[3]}
        for cuid, node in users.items():
            await rpc(node, "users.add", cuid=cuid)
        await open_tally(users["ann"], "ann", users["bob"], "bob")
        await open_tally(users["bob"], "bob", users["cat"], "cat")
        lift = (await rpc(users["ann"], "lift.pay", cuid="ann", find=who(users["cat"], "cat"),
                          units=42))["lift"]
        await settled_everywhere(list(users.values()), lift, "good")
        bob = users["bob"]
        asked = await rpc(users["cat"], "relay.query",
                          address=f"{bob.agent_id}/agentd/lift:{lift}")
        done = await rpc(users["cat"], "relay.wait", request_id=asked["request_id"])
        assert done["status"] == "COMPLETED", done
        view = done["view"]["payload"]
        assert view["lift"] == lift and view["state"] == "good"
        assert view["record"]["units"] == 42 and view["decision"]["state"] == "good"
        assert view["equivocation"] is None
        assert sorted(chit["state"] for chit in view["chits"]) == ["A.good", "L.good"]
        # named as lift.show names them (the view said uuid and issuer for chit and by)
        assert view["chits"] == (await rpc(bob, "lift.show", lift=lift))["chits"]



async def test_auto_clear_clears_debt_cycles_on_its_own(tmp_path):
    auto = {"lift": {"auto_clear": True, "interval_s": 1, "minimum": 100}}
    async with network(tmp_path, n=4, clearinghouse=0, sections=auto) as net:
        users, ab, bc, ca = await triangle(net)
        await wait_for(lambda: cleared_300(users, ab, bc, ca), timeout=20)
        lifts = await rpc(users["bob"], "lift.list")
        assert {lift["kind"] for lift in lifts} == {"circular"}
        assert any(lift["state"] == "good" for lift in lifts)
        # Every user of the triangle is owed at least the minimum, so each node's clearing may
        # start on the same cycle in the same second; on a loaded machine two can both find it
        # before either holds it, and the one a hop cannot take is cancelled: void, moving
        # nothing (the balances above moved by 300 once). None is left pending.
        for lift in lifts:
            if lift["state"] != "good":
                decided = await rpc(users["bob"], "lift.wait", lift=lift["lift"], timeout_s=20)
                assert decided["state"] == "void" and "cancelled" in decided["error"], decided
        assert cleared_300(users, ab, bc, ca)


async def test_a_lift_looks_near_first_then_as_far_as_the_depth(tmp_path):
    """eve is four hops from ann. On a line the near round (three hops) follows the chain
    past its depth and finds her in one query. Once bob also trades with fay, bob is a fork
    the near round stops at, so the lift's search looks again to the full depth (the round
    stopped short of two queries only: thin) and the lift is good. A payee within three hops
    is found by the near round alone: one query, which goes no further than the partner of a
    last hop. A round that reached everything reachable is the last."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        u, dan = world["users"], world["users"]["dan"]
        await rpc(dan, "users.add", cuid="eve")
        await open_tally(dan, "dan", dan, "eve", limit=LIMIT)
        queries: list[str] = []
        arrivals: list[str] = []  # the user each query message reached
        asks: list[str] = []  # the payee each ask for last hops went to
        amounts: list[int] = []  # the units each query searched for
        for node in u.values():
            routes = node.credit.routes

            def record(tx, envelope, handle=routes.handle):
                if envelope.action == "ask":
                    asks.append(envelope.to.cuid)
                if envelope.action == "query":
                    arrivals.append(envelope.to.cuid)
                    if envelope.object["query"] not in queries:
                        queries.append(envelope.object["query"])
                        amounts.append(envelope.object["units"])
                handle(tx, envelope)

            routes.handle = record

        async def pay_eve() -> None:
            far = await rpc(u["ann"], "lift.pay", cuid="ann", find=who(dan, "eve"), units=500)
            assert [hop["cuid"] for hop in far["path"]] == ["ann", "bob", "cat", "dan", "eve"]
            assert (await rpc(u["ann"], "lift.wait", lift=far["lift"], timeout_s=20))["state"] \
                == "good"

        await pay_eve()
        assert len(queries) == 1 and arrivals == ["bob", "cat"]  # cat's partner dan is a last hop
        assert asks == ["eve"]
        queries.clear()
        arrivals.clear()
        asks.clear()
        direct = await rpc(u["ann"], "lift.pay", cuid="ann", find=who(u["bob"], "bob"), units=500)
        assert [hop["cuid"] for hop in direct["path"]] == ["ann", "bob"]
        assert (queries, asks) == ([], [])  # bob is ann's partner: no search, nobody asked
        assert (await rpc(u["ann"], "lift.wait", lift=direct["lift"], timeout_s=20))["state"] \
            == "good"
        await rpc(u["cat"], "users.add", cuid="fay")
        await open_tally(u["bob"], "bob", u["cat"], "fay", limit=LIMIT)
        u["ann"].credit.routes.known._known.clear()  # the rounds, not the route the last lift took
        queries.clear()
        arrivals.clear()
        await pay_eve()
        assert len(queries) == 2  # near (stopped at bob, a fork), then full depth
        queries.clear()
        arrivals.clear()
        u["ann"].credit.routes.known._known.clear()
        near = await rpc(u["ann"], "lift.pay", cuid="ann", find=who(dan, "dan"), units=500)
        assert len(near["path"]) == 4 and len(queries) == 1
        # dan's node named cat as a last hop: bob, cat's partner, answered without asking cat
        assert arrivals == ["bob"]
        assert (await rpc(u["ann"], "lift.wait", lift=near["lift"], timeout_s=20))["state"] \
            == "good"
        # yan and xia trade only with each other: the near round reaches all there is (its
        # frontier is 0), so no deeper round is tried
        await rpc(u["bob"], "users.add", cuid="yan")
        await rpc(u["cat"], "users.add", cuid="xia")
        await open_tally(u["bob"], "yan", u["cat"], "xia", limit=LIMIT)
        queries.clear()
        amounts.clear()
        with pytest.raises(RpcError) as caught:
            await rpc(u["bob"], "lift.pay", cuid="yan", find=who(dan, "eve"), units=500)
        # one round, then one search for any room at all (units 1) to say what would fit
        assert caught.value.reason == "NO_ROUTE" and amounts == [500, 1]
        assert "no path of tallies with room to pay reaches that user" in caught.value.message



async def test_a_chain_block_that_comes_before_our_decision_waits_for_it(tmp_path):
    """The foil holder applied the lift's decision first and sent the lift chit's block; the
    stock holder, whose decision is still on its way, leaves that ``upd`` unacked (deferred)
    instead of refusing it, and takes it when it comes again: no refusal, no tally error."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        u, annbob = world["users"], world["tallies"]["annbob"]
        ann, bob = u["ann"], u["bob"]  # ann holds annbob's stock side, bob its foil side
        lifts, chits = ann.dispatcher.services["lift"], ann.dispatcher.services["chit"]
        decide, chain = lifts.handle, chits.handle
        released, early = trio.Event(), []

        def late_decision(tx, envelope):  # ann's decision is held back until released
            if envelope.action == "decision" and not released.is_set():
                raise NotYet("the test holds ann's decision back")
            return decide(tx, envelope)

        def watched(tx, envelope):
            try:
                return chain(tx, envelope)
            except NotYet:
                early.append(envelope.object.get("cmd"))
                raise

        lifts.handle, chits.handle = late_decision, watched
        try:
            before = bob.counters.rejected_by_peer
            started = await rpc(ann, "lift.pay", cuid="ann", find=who(u["cat"], "cat"),
                                units=300)
            # bob's block came first: deferred (and, on a loaded machine, perhaps sent again
            # before this looks: each time deferred, never refused)
            await wait_for(lambda: early and set(early) == {"upd"})
            assert ann.counters.deferred >= 1
            released.set()
            await settled_everywhere([ann, bob, u["cat"]], started["lift"], "good")
            await wait_for(lambda: agreed(ann, "ann", bob, "bob", annbob, 1), timeout=20)
        finally:
            lifts.handle, chits.handle = decide, chain
        assert bob.counters.rejected_by_peer == before
        assert bob.db.read_one("SELECT error FROM tallies WHERE uuid = ? AND cuid = 'bob'",
                               (annbob,))[0] is None


async def test_a_foils_lift_chits_reach_the_stock_without_the_repair(tmp_path, monkeypatch):
    """The foil sends its lift chits' blocks itself, shortly after the decision (one ``upd``
    for the lifts decided meanwhile): with every node's periodic chain repair silenced, the
    chains still agree after two lifts."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        u, tl = world["users"], world["tallies"]
        for node in u.values():
            async def silent() -> int:
                return 0
            monkeypatch.setattr(node.credit.repair, "resync", silent)
        for _ in range(2):
            started = await rpc(u["ann"], "lift.pay", cuid="ann", find=who(u["dan"], "dan"),
                                units=100)
            assert (await rpc(u["ann"], "lift.wait", lift=started["lift"],
                              timeout_s=20))["state"] == "good"
        for tally, (a, b) in {tl["annbob"]: ("ann", "bob"), tl["bobcat"]: ("bob", "cat"),
                              tl["catdan"]: ("cat", "dan")}.items():
            await wait_for(lambda t=tally, a=a, b=b: agreed(u[a], a, u[b], b, t, 2))


async def test_nodes_the_referee_does_not_know_ask_it_and_learn_the_decision_at_once(tmp_path):
    """The referee pushes a decision only to nodes it knows or that are connected to it: one
    that takes part while no channel joins it to the referee asks it at once, which opens
    the channel the decision comes back on. So a lift is good everywhere in moments, not
    at its deadline (60 s here), and the referee never dials an address the record names."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        u, house = world["users"], net.nodes[0]
        ann, dan = u["ann"], u["dan"]
        strangers = {node.agent_id for node in u.values()}
        dialled: list[tuple[str, str | None]] = []
        connect = house.peers.connect

        async def recording(agent: str, address: str | None):
            dialled.append((agent, address))
            return await connect(agent, address)

        await wait_for(lambda: all(node.pump.depth == 0 for node in net.nodes))  # all said
        for agent in strangers:  # the referee forgets them, and every channel closes
            house._peer_addresses.pop(agent, None)
        for channels in list(house.peers.channels.values()):
            for channel in channels:
                channel.close("test")
        await wait_for(lambda: not any(house.connected(agent) for agent in strangers))
        house.peers.connect = recording
        paid = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=40,
                         life_s=60)
        with trio.fail_after(15):
            await settled_everywhere(list(u.values()), paid["lift"], "good")
        # pushed on the channels they opened: never an address to dial
        assert [address for agent, address in dialled if agent in strangers] == [
            None] * sum(agent in strangers for agent, _ in dialled)
