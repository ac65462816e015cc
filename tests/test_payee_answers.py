"""What ``lift.pay`` and ``route.find`` say when no route will do, between real nodes: that
the payee's node hosts no such user (``UNKNOWN_PAYEE``, as soon as that node says so), or the
most a route found can carry, or that no path with any room reaches the payee."""

from __future__ import annotations

import socket

import trio

from agentd.runtime.context import Reject
from agentd.services.credit import payee_asks, routes
from agentd.services.credit.routes import DEPTH
from protocol.keys import SigningKey
from tests.netfixture import network
from tests.test_credit_service import open_tally, refused, rpc
from tests.test_lifts import line, who

# how NO_ROUTE ends when the payee's node could not be asked (no address known for it)
UNASKED = ("; that user may not exist at all: its node was not asked whether it hosts it, as "
           "no address is known for that node (give find as cuid:agent@host:port, or add that "
           "node with peers.add, and it is asked: UNKNOWN_PAYEE if it hosts no such user)")


def queries_seen(nodes) -> list[int]:
    """The units of every route query any of ``nodes`` receives from now on."""
    seen: list[int] = []
    for node in nodes:
        service = node.credit.routes

        def record(tx, envelope, handle=service.handle):
            if envelope.action == "query":
                seen.append(envelope.object["units"])
            handle(tx, envelope)

        service.handle = record
    return seen


async def test_a_payee_its_node_does_not_host_is_named_as_soon_as_that_node_says_so(
        tmp_path, monkeypatch):
    """The payee's node refuses the payor's ask for last hops (``UNKNOWN_USER``): lift.pay
    ends there, before any query floods the network (it waited out the ask's timer, then
    searched, and said NO_ROUTE), and route.find, which asks beside its search, ends its
    search as that refusal comes, even while a node on the way leaves the search unfinished."""
    monkeypatch.setattr(payee_asks, "ASK_S", 600.0)  # only the refusal can end the wait
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        ann, dan = world["users"]["ann"], world["users"]["dan"]
        seen = queries_seen(world["users"].values())
        nobody = f"zed:{dan.agent_id}"
        with trio.fail_after(60):
            paid = await refused(ann, "lift.pay", cuid="ann", find=nobody, units=5)
        assert (paid.code, paid.reason) == (-32011, "UNKNOWN_PAYEE")
        assert paid.message == (f"node {dan.agent_id} has no user 'zed' (its "
                                "users.list shows the users it hosts)")
        assert seen == []  # nothing searched for a user nobody hosts
        assert await rpc(ann, "lift.list") == []

        found = await refused(ann, "route.find", cuid="ann", find=nobody, units=5)
        assert found.reason == "UNKNOWN_PAYEE" and "has no user 'zed'" in found.message
        await rpc(ann, "users.add", cuid="amy")  # no tally: her search is over at once,
        lonely = await refused(ann, "route.find", cuid="amy", find=nobody, units=5)
        assert lonely.reason == "UNKNOWN_PAYEE"  # and she still hears why
        for method in ("lift.pay", "route.find"):  # a payee said to be on our own node
            ours = await refused(ann, method, cuid="ann", find=f"zed:{ann.agent_id}", units=5)
            assert ours.reason == "UNKNOWN_PAYEE" and ann.agent_id in ours.message

        await net.stop(3)  # cat's node: bob's part of any search never ends
        with trio.fail_after(20):  # well within the search's own 30 s
            cut = await refused(ann, "route.find", cuid="ann", find=nobody, units=5,
                                timeout_s=30)
        assert cut.reason == "UNKNOWN_PAYEE"
        assert await rpc(ann, "route.find", cuid="ann", find=who(dan, "dan"), units=5,
                         timeout_s=1) == []  # a payee that exists: no route, no error


async def test_no_route_says_the_most_a_route_found_can_carry(tmp_path):
    """ann — bob — cat — dan with the middle tally's limit 600: a payment of 700 has no
    route, and NO_ROUTE says 600 would fit (the route's own capacity, which route.find shows
    for 600); a payee no tally with room leads to is told so, and one whose node no address
    is known for says that node could not be asked."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        nodes = net.nodes
        users = {"ann": nodes[1], "bob": nodes[2], "cat": nodes[3], "dan": nodes[4]}
        for cuid, node in users.items():
            await rpc(node, "users.add", cuid=cuid)
        await open_tally(users["ann"], "ann", users["bob"], "bob", limit=1000)
        await open_tally(users["bob"], "bob", users["cat"], "cat", limit=600)
        await open_tally(users["cat"], "cat", users["dan"], "dan", limit=1000)
        ann, dan = users["ann"], users["dan"]
        seen = queries_seen(users.values())
        error = await refused(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=700)
        assert error.reason == "NO_ROUTE"
        assert error.message == (
            f"NO_ROUTE: no route from ann to dan:{dan.agent_id} can carry 700 mCHIP "
            "now: the most a route found can carry is 600 mCHIP (a search reaches each user "
            "once, by its first way in, so a route with more room may go unseen: route.find "
            "units=N looks for one that carries N)")
        assert 1 in seen  # a second search, for any room at all, found it
        assert await rpc(ann, "lift.list") == []
        shown = await rpc(ann, "route.find", cuid="ann", find=who(dan, "dan"), units=600)
        assert [route["capacity"] for route in shown] == [600]

        await rpc(dan, "users.add", cuid="eve")  # on dan's node, with no tally at all
        alone = await refused(ann, "lift.pay", cuid="ann", find=who(dan, "eve"), units=5)
        assert alone.message.endswith(
            f"can carry 5 mCHIP now: no path of tallies with room to pay reaches that user "
            f"within {DEPTH} hops (room: what a payee's limit leaves on an open tally; a "
            "closing one carries only payments toward a zero balance)")
        stranger = f"zed:{SigningKey.generate().agent_id}"  # a node nobody here knows
        unasked = await refused(ann, "lift.pay", cuid="ann", find=stranger, units=5)
        assert unasked.reason == "NO_ROUTE" and unasked.message.endswith(UNASKED)
        # ... and at an address where nothing answers: that node could not be asked either
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{probe.getsockname()[1]}"
        silent = await refused(ann, "lift.pay", cuid="ann", find=f"{stranger}@{dead}", units=5)
        assert silent.reason == "NO_ROUTE" and silent.message.endswith(
            f"within {DEPTH} hops (room: what a payee's limit leaves on an open tally; a "
            "closing one carries only payments toward a zero balance); that user may not exist "
            "at all: its node has not answered a "
            f"dial of this node at {dead}, so it may not have been asked whether it hosts it "
            "(is the node running, and is that its address?)"), silent.message
        # ... and at the address of a node with another key: said so, not "is it running?"
        # (the same agent as above: a user who corrects the address is not told of the last)
        wrong = await refused(ann, "lift.pay", cuid="ann",
                              find=f"{stranger}@{dan.listen_address}", units=5)
        assert wrong.reason == "NO_ROUTE" and wrong.message.endswith(
            f"has not answered a dial of this node at {dan.listen_address}, so it may not have "
            f"been asked whether it hosts it (a node answers there, with another key than "
            f"{stranger.split(':')[1]}: is that address, or that agent id, mistyped?)"), (
            wrong.message)


async def test_a_search_cut_short_says_so_and_looks_no_further(tmp_path, monkeypatch):
    """With cat's and dan's nodes down, the payee's node does not answer the ask and bob's
    part of the search never ends: at the lift's search budget NO_ROUTE says the search was
    cut short, and no second search follows (it would be cut short too)."""
    monkeypatch.setattr(routes, "LIFT_SEARCH_S", 1.0)
    monkeypatch.setattr(payee_asks, "ASK_S", 0.1)
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        ann, bob, dan = (world["users"][cuid] for cuid in ("ann", "bob", "dan"))
        await net.stop(3)
        await net.stop(4)
        seen = queries_seen([bob])
        error = await refused(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=5)
        assert error.reason == "NO_ROUTE" and error.message.endswith(
            "can carry 5 mCHIP now: none was found within 1 s, and the search was cut short "
            "there (a busy network): try again")
        assert seen == [5]  # the round's query, and no search for what would fit


async def test_an_ask_refused_for_another_reason_ends_the_wait_for_last_hops(tmp_path,
                                                                            monkeypatch):
    """A payee's node that refuses the ask for any other reason (here: one that does not
    take asks) costs the payment its last hops, not the ask's wait: it searches at once."""
    monkeypatch.setattr(payee_asks, "ASK_S", 600.0)
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        ann, dan = world["users"]["ann"], world["users"]["dan"]
        service = dan.credit.routes

        def no_asks(tx, envelope, handle=service.handle):
            if envelope.action == "ask":
                raise Reject("UNKNOWN_ACTION", "route has no action 'ask'")
            handle(tx, envelope)

        service.handle = no_asks
        with trio.fail_after(60):
            started = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=5)
        assert [hop["cuid"] for hop in started["path"]] == ["ann", "bob", "cat", "dan"]


async def test_a_payee_whose_node_we_cannot_ask_is_found_through_tallies(tmp_path):
    """ann's node knows no address for dan's node: a payment to a user dan's node does not
    host says that node could not be asked and what to give so it can; one to ``dan:AGENT``
    finds dan through the tallies and is good, and teaches ann's node where dan's node
    listens, so the next payment to a user it does not host is ``UNKNOWN_PAYEE``."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        ann, dan = world["users"]["ann"], world["users"]["dan"]
        del ann._peer_addresses[dan.agent_id]  # introduced by the test network only
        nobody = f"zed:{dan.agent_id}"
        unasked = await refused(ann, "lift.pay", cuid="ann", find=nobody, units=5)
        assert unasked.reason == "NO_ROUTE" and unasked.message.endswith(UNASKED)
        started = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=5)
        assert [hop["cuid"] for hop in started["path"]] == ["ann", "bob", "cat", "dan"]
        assert (await rpc(ann, "lift.wait", lift=started["lift"], timeout_s=20))[
            "state"] == "good"
        assert ann.address_of(dan.agent_id) == dan.listen_address
        again = await refused(ann, "lift.pay", cuid="ann", find=nobody, units=5)
        assert again.reason == "UNKNOWN_PAYEE" and "has no user 'zed'" in again.message
