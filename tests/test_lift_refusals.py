"""Lifts and routes refuse what they must, and the refusal changes nothing: bad parameters, no
route, a decision not signed by the referee, promises that are tampered with, expired, signed
with a key that is not the payor's or sent by a node off the path, and route messages of the
wrong shape (refused as the message's fault, never left unacked as if we had failed)."""

from __future__ import annotations

import dataclasses
import socket
import uuid

import trio

from agentd.runtime.context import Reject
from agentd.runtime.dispatch import _Heard
from protocol import lift as lf
from protocol.codec import digest, unpack
from protocol.envelope import Envelope
from protocol.keys import ChipAddress, SigningKey
from tests.netfixture import network, wait_for
from tests.test_credit_service import refusal_of, refused, rpc, send_raw, user_key
from tests.test_lifts import line, reserved, settled_everywhere, who


async def test_no_route_and_bad_params_change_nothing(tmp_path):
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net, limit=1000)
        u, tl = world["users"], world["tallies"]
        ann, dan = u["ann"], u["dan"]
        assert await rpc(ann, "route.find", cuid="ann", find=who(dan, "dan"),
                         units=1001) == []
        error = await refused(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=1001)
        assert error.reason == "NO_ROUTE"
        nobody = f"zed:{dan.agent_id}"
        assert (await refused(ann, "lift.pay", cuid="ann", find=nobody, units=5)).reason == \
            "UNKNOWN_PAYEE"
        for params in ({"units": 0}, {"units": -5}, {"units": "5"}, {"find": "no-agent"},
                       {"life_s": 0}):
            call = {"cuid": "ann", "find": who(dan, "dan"), "units": 5, **params}
            assert (await refused(ann, "lift.pay", **call)).reason == "INVALID_PARAMS"
        for find in ("dan", "dan@127.0.0.1:7103", "dan:", "dan:@127.0.0.1:7103"):
            no_agent = await refused(ann, "lift.pay", cuid="ann", find=find, units=5)
            assert f"find {find!r} names no agent: give cuid:agent" in no_agent.message
        # the two slips a user makes with an agent id at hand: it alone, or @ for :
        for method in ("lift.pay", "route.find"):
            alone = await refused(ann, method, cuid="ann", find=dan.agent_id, units=5)
            assert alone.message == (
                f"{method}: find {dan.agent_id!r} is an agent id alone: name the user too, "
                f"as cuid:{dan.agent_id} (the address users.list shows on its node)")
            at = await refused(ann, method, cuid="ann", find=f"dan@{dan.agent_id}", units=5)
            assert at.message == (f"{method}: find 'dan@{dan.agent_id}' has @ where : goes: "
                                  f"cuid:agent (dan:{dan.agent_id}), or cuid:agent@host:port")
        bad_units = await refused(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units="5")
        assert bad_units.message.startswith("lift.pay: units must be an integer")
        assert bad_units.message.endswith('not "5"')  # the call and the value, as JSON
        assert await rpc(ann, "lift.list") == []
        assert reserved(ann, "ann", tl["annbob"]) == (0, 0)
        unknown = str(uuid.uuid4())
        assert (await refused(ann, "lift.show", lift=unknown)).reason == "UNKNOWN_LIFT"
        assert (await refused(ann, "lift.list", cuid="ghost")).reason == "UNKNOWN_USER"
        for limit in (0, -1, 2**63):
            too_few = await refused(ann, "lift.list", limit=limit)
            assert (too_few.reason, too_few.message) == (
                "INVALID_PARAMS",
                f"lift.list: limit must be a number of lifts from 1 to {2**63 - 1}, not {limit}")


async def test_a_wrong_address_in_find_holds_up_nothing_sent_to_a_node_we_know(tmp_path):
    """find with a mistyped port for a payee's node we know as a peer: the payee's node is
    asked where we know it is, so the ask does not make the pump dial the wrong port for
    everything queued to that node (a ping here: it was UNREACHABLE, naming that port)."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        u = (await line(net))["users"]
        ann, dan = u["ann"], u["dan"]
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            dead = probe.getsockname()[1]
        mistyped = f"dan:{dan.agent_id}@127.0.0.1:{dead}"
        # the route shows where dan's node listens, as this node knows it (it showed the
        # address typed)
        [found] = await rpc(ann, "route.find", cuid="ann", units=5, find=mistyped)
        assert (found["path"][-1]["host"], found["path"][-1]["port"]) == ("127.0.0.1", dan.port)
        started = await rpc(ann, "lift.pay", cuid="ann", units=5, find=mistyped)
        assert (await rpc(ann, "peers.ping", agent=dan.agent_id))["rtt_ms"]
        done = await rpc(ann, "lift.wait", lift=started["lift"], timeout_s=20)
        assert done["state"] == "good", done
        # a payee who is our user's partner: the tally says where its node listens
        bob = u["bob"]
        [direct] = await rpc(ann, "route.find", cuid="ann", units=5,
                             find=f"bob:{bob.agent_id}@127.0.0.1:{dead}")
        assert direct["path"][-1]["port"] == bob.port


async def test_a_decision_not_signed_by_the_referee_is_refused(tmp_path):
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        u = world["users"]
        ann, bob, dan = u["ann"], u["bob"], u["dan"]
        await net.stop(0)  # the referee stays silent
        started = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=10,
                            life_s=60)
        lift = started["lift"]
        await wait_for(lambda: dan.db.read_one(
            "SELECT 1 FROM lifts WHERE lift = ?", (lift,)) is not None)
        record = unpack(dan.db.read_one("SELECT record FROM lifts WHERE lift = ?", (lift,))[0])
        decision = {"lift": lift, "state": "good", "date": record["date"],
                    "referee": record["referee"]["agent"], "record": lf.record_digest(record)}
        forged = {**decision, "sign": bob.key.sign(digest(decision))}  # not the referee's key
        message_id = await send_raw(bob, dan, None, "lift", "decision",
                                    {"record": record, "decision": forged}, None)
        assert "BAD_SIGNATURE" in await refusal_of(bob, message_id)
        assert (await rpc(dan, "lift.show", lift=lift))["state"] == "pend"
        assert reserved(dan, "dan", world["tallies"]["catdan"]) == (10, 0)


async def test_bad_promises_are_refused_and_change_nothing(tmp_path):
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        u, tl = world["users"], world["tallies"]
        bob, cat, house = u["bob"], u["cat"], net.nodes[0]
        path = [{"cuid": "bob", "agent": bob.agent_id, "tally": tl["bobcat"]},
                {"cuid": "cat", "agent": cat.agent_id, "tally": None}]

        def record(**changes):
            made = lf.make_record(lift_uuid=changes.pop("lift", str(uuid.uuid4())),
                                  kind="linear", units=changes.pop("units_", 10),
                                  path=changes.pop("path", path),
                                  referee=changes.pop("referee", house.own_address()),
                                  date_ms=changes.pop("date", bob.clock.now_ms()),
                                  life_ms=changes.pop("life", 60_000), memo="",
                                  key=changes.pop("key", user_key(bob, "bob")))
            return {**made, **changes}

        stranger = ChipAddress(agent=SigningKey.generate().agent_id, host="192.0.2.7", port=9)
        wrong_tally = [{**path[0], "tally": tl["annbob"]}, path[1]]
        cases = [
            (record(units=11), "BAD_SIGNATURE"),  # tampered after signing
            (record(date=bob.clock.now_ms() - 120_000, life=1_000), "EXPIRED"),
            # a deadline so far off that pending chits would hold the capacity for years
            (record(life=lf.MAX_LIFE_MS + 60_000), "BAD_FIELD"),
            (record(path=wrong_tally), "UNKNOWN_TALLY"),  # cat is not party to ann-bob
            # well signed, but not with the key of bob's certificate on the bob-cat tally
            (record(key=SigningKey.generate()), "BAD_SIGNATURE"),
            # and naming a referee nobody knows, at an address of the sender's choosing
            (record(key=SigningKey.generate(), referee=stranger), "BAD_SIGNATURE"),
        ]
        for bad, code in cases:
            message_id = await send_raw(bob, cat, "cat", "lift", "promise",
                                        {"record": bad, "hop": 0}, "bob")
            assert code in await refusal_of(bob, message_id), code
        imposter = await send_raw(u["ann"], cat, "cat", "lift", "promise",
                                  {"record": record(), "hop": 0}, "ann")
        assert "NOT_ON_PATH" in await refusal_of(u["ann"], imposter)
        assert await rpc(cat, "lift.list") == []
        assert reserved(cat, "cat", tl["bobcat"]) == (0, 0)
        # a refused promise teaches no referee: not a peer to dial, nor one we know
        assert cat.address_of(stranger.agent) is None and not cat.is_known(stranger.agent)
        await wait_for(lambda: cat.db.read_one("SELECT count(*) FROM peers")[0] > 0)
        assert cat.db.read_one("SELECT 1 FROM peers WHERE agent = ?", (stranger.agent,)) is None
        assert await rpc(cat, "chit.list", cuid="cat", tally=tl["bobcat"]) == []
        # a promise cat takes teaches it where that lift's referee listens (it asks there)
        elsewhere = ChipAddress(agent=SigningKey.generate().agent_id, host="192.0.2.8", port=9)
        first = record(referee=elsewhere)
        taken = await send_raw(bob, cat, "cat", "lift", "promise",
                               {"record": first, "hop": 0}, "bob")
        await wait_for(lambda: taken not in bob.pump.live)  # acked: cat took it
        await wait_for(lambda: cat.address_of(elsewhere.agent) == "192.0.2.8:9")
        # while it waits for its referee, another record with its uuid (the one decision
        # on a lift settles every chit of that uuid here) is refused and holds nothing
        zed = {"cuid": "zed", "agent": SigningKey.generate().agent_id, "tally": str(uuid.uuid4())}
        for hop, twin_path in ((0, path), (1, [zed, *path])):  # cat at the same hop, or not
            other = record(referee=elsewhere, lift=first["lift"], units_=20, path=twin_path,
                           key=SigningKey.generate() if hop else user_key(bob, "bob"))
            twin = await send_raw(bob, cat, "cat", "lift", "promise",
                                  {"record": other, "hop": hop}, "bob")
            assert "CONFLICT" in await refusal_of(bob, twin), hop
        assert reserved(cat, "cat", tl["bobcat"]) == (10, 0)
        assert [chit["units"] for chit in await rpc(cat, "chit.list", cuid="cat",
                                                    tally=tl["bobcat"])] == [10]


async def test_hostile_route_messages_are_refused_never_our_failure(tmp_path):
    """Route objects of the wrong shape, or whose query id is no text (a list cannot key
    anything), are refused as the message's fault: never left unacked as if we had failed.
    So are asks for a circle's last hops (only a payment's payee is asked) and hops that
    answer no ask of ours."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        ann, bob = world["users"]["ann"], world["users"]["bob"]
        before = sum(bob.counters.rejected.values())
        hostile = [("query", {"query": ["x"], "kind": "linear"}), ("query", {"kind": ["x"]}),
                   ("none", {"query": ["x"], "goods": 0}), ("good", {"query": {"a": 1}}),
                   ("ask", {"query": ["x"], "kind": "linear", "units": 1, "salt": b"s" * 16}),
                   ("ask", {"query": str(uuid.uuid4()), "kind": "circular", "units": 1,
                            "salt": b"s" * 16}),
                   ("ask", {"query": str(uuid.uuid4()), "kind": "linear", "units": 1,
                            "salt": ["x"]}),
                   ("hops", {"query": ["x"], "last": []})]
        for action, obj in hostile:
            await send_raw(ann, bob, "bob", "route", action, obj, "ann")
        await wait_for(lambda: sum(bob.counters.rejected.values()) == before + len(hostile))
        assert bob.counters.unacked_failures == 0
        await wait_for(lambda: ann.pump.depth == 0)  # refused for good: nothing left to resend


async def test_a_route_query_that_came_over_no_tally_of_ours_goes_no_further(tmp_path):
    """A stranger (or anyone without a tally with the user it writes to) cannot make a node
    search, or make its partners search, on its behalf: its queries are refused
    (UNKNOWN_TALLY) and nothing is sent on. The partners' own searches still pass."""
    async with network(tmp_path, n=6, clearinghouse=0) as net:
        world = await line(net)
        u = world["users"]
        ann, bob, dan, mallory = u["ann"], u["bob"], u["dan"], net.nodes[5]
        sent: list[tuple[str, str]] = []
        add = bob.pump.add

        def recording(message_id, peer, address, envelope, *args, **kwargs):
            sent.append((envelope.get("target"), envelope.get("action")))
            return add(message_id, peer, address, envelope, *args, **kwargs)

        bob.pump.add = recording
        refused_before = bob.counters.rejected.get("refused", 0)
        for tally in (str(uuid.uuid4()), world["tallies"]["annbob"]):  # made up; not mallory's
            query = {"query": str(uuid.uuid4()), "kind": "linear",
                     "find": {"cuid": "dan", "agent": dan.agent_id}, "units": 1,
                     "path": [{"cuid": "m", "agent": mallory.agent_id, "tally": tally,
                               "capacity": 10**9}],
                     "depth": 10, "deadline": mallory.clock.now_ms() + 30_000,
                     "salt": bytes(16), "last": []}
            await send_raw(mallory, bob, "bob", "route", "query", query, "m")
        await wait_for(lambda: bob.counters.rejected.get("refused", 0) == refused_before + 2)
        await wait_for(lambda: mallory.pump.depth == 0)  # refused for good, not retried
        assert ("route", "query") not in sent and ("route", "good") not in sent
        found = await rpc(ann, "route.find", cuid="ann", find=who(dan, "dan"), units=1)
        assert [hop["cuid"] for hop in found[0]["path"]] == ["ann", "bob", "cat", "dan"]
        assert ("route", "query") in sent  # bob passed ann's query on to cat


async def test_a_refused_query_ends_that_partners_part_of_the_search(tmp_path):
    """A partner that refuses a query (here every one: say, over a tally it no longer holds
    open) has ended its part of the search as a none would: the search is exhausted at once
    instead of waiting out its time budget."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        ann, cat, dan = world["users"]["ann"], world["users"]["cat"], world["users"]["dan"]
        routes = cat.dispatcher.services["route"]
        handle = routes.handle

        def refusing(tx, envelope):
            if envelope.action == "query":
                raise Reject("UNKNOWN_TALLY", "no such open tally here")
            return handle(tx, envelope)

        routes.handle = refusing
        find = ChipAddress.parse(f"dan:{dan.agent_id}")
        with trio.fail_after(10):  # the search's own budget is 20 s
            assert await ann.credit.routes.search("ann", find, 1, "linear", 20.0) == []


async def test_a_made_up_lift_makes_the_referee_dial_nothing_and_hold_nothing_for_it(tmp_path):
    """Anyone can sign a record with a key of their own and commit it as its last node: the
    referee decides it (it cannot know better), but pushes the decision only to nodes it
    knows or that are connected to it. The made-up nodes on the path, at the addresses the
    record gives, are never dialled and leave nothing in the referee's outbox."""
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        house, mallory = net.nodes
        dialled: list[str | None] = []
        connect = house.peers.connect

        async def recording(agent: str, address: str | None):
            dialled.append(address)
            return await connect(agent, address)

        house.peers.connect = recording
        made_up = [SigningKey.generate().agent_id for _ in range(3)]
        path = [{"cuid": "x", "agent": agent, "host": "192.0.2.1", "port": 9000 + i,
                 "tally": str(uuid.uuid4())} for i, agent in enumerate(made_up)]
        path.append({"cuid": "me", "agent": mallory.agent_id, "tally": None})
        record = lf.make_record(lift_uuid=str(uuid.uuid4()), kind="linear", units=5,
                                path=path, referee=house.own_address(),
                                date_ms=mallory.clock.now_ms(), life_ms=60_000, memo="",
                                key=SigningKey.generate())
        await send_raw(mallory, house, None, "lift", "commit", {"record": record}, None)
        await wait_for(lambda: (house.db.read_one(
            "SELECT decision FROM lift_decisions WHERE lift = ?", (record["lift"],)) or [None])[0]
            is not None)
        await wait_for(lambda: house.pump.depth == 0)  # only mallory's own copy went out
        assert not any(address and address.startswith("192.0.2.1") for address in dialled)
        queued = house.db.read("SELECT peer FROM outbox WHERE target = 'lift'")
        assert not {row["peer"] for row in queued} & set(made_up)


async def test_a_participant_asking_again_and_again_gets_one_answer_at_a_time(tmp_path):
    """A referee answers a query (or a commit or cancel again) with the decision it keeps;
    to a participant that never acks, one answer waits at a time (each query made a row of
    its own, kept an hour: 5,000 queries left 69 MB)."""
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        house, mallory = net.nodes
        path = [{"cuid": "a", "agent": SigningKey.generate().agent_id, "tally": str(uuid.uuid4())},
                {"cuid": "me", "agent": mallory.agent_id, "tally": None}]
        record = lf.make_record(lift_uuid=str(uuid.uuid4()), kind="linear", units=5,
                                path=path, referee=house.own_address(),
                                date_ms=mallory.clock.now_ms(), life_ms=60_000, memo="",
                                key=SigningKey.generate())
        await send_raw(mallory, house, None, "lift", "cancel", {"record": record, "reason": "x"},
                       None)
        await wait_for(lambda: house.db.read_one(
            "SELECT 1 FROM lift_decisions WHERE lift = ?", (record["lift"],)) is not None)
        me = mallory.own_address("me")
        await net.stop(1)  # nothing the referee sends mallory is acked now

        def answers() -> int:
            return house.db.read_one("SELECT count(*) FROM outbox WHERE action = 'decision'"
                                     " AND peer = ?", (mallory.agent_id,))[0]

        before = answers()
        for _ in range(20):
            query = Envelope(id=uuid.uuid4().bytes, target="lift", action="query",
                             object={"record": record}, to=house.own_address(), from_=me,
                             last=house.clock.now_ms())
            assert await house.dispatcher._finish(_Heard.of(query), house.dispatcher._start(
                query, mallory.agent_id)) is not None  # taken, each of them
        assert answers() == before + 1


async def test_a_made_up_record_with_a_real_lifts_uuid_settles_nothing_of_it(tmp_path):
    """Anyone who learns a lift's uuid (every hop does) can make up a record that reuses it,
    name itself the terminus and commit it (or cancel it) at the referee. The referee decides
    that record, not the uuid: no participant of the real lift applies the decision, and the
    real lift still gets its own."""
    async with network(tmp_path, n=6, clearinghouse=0) as net:
        world = await line(net)
        u, tl = world["users"], world["tallies"]
        ann, bob, cat, house, mallory = u["ann"], u["bob"], u["cat"], net.nodes[0], net.nodes[5]
        await net.stop(4)  # dan's node: the real lift waits at cat, its promise queued
        started = await rpc(ann, "lift.pay", cuid="ann", find=who(u["dan"], "dan"), units=500,
                            life_s=60)
        lift = started["lift"]
        await wait_for(lambda: cat.db.read_one("SELECT 1 FROM lifts WHERE lift = ?",
                                               (lift,)) is not None)
        path = [{"cuid": "ann", "agent": ann.agent_id, "tally": str(uuid.uuid4())},
                {"cuid": "bob", "agent": bob.agent_id, "tally": str(uuid.uuid4())},
                {"cuid": "cat", "agent": cat.agent_id, "tally": str(uuid.uuid4())},
                {"cuid": "m", "agent": mallory.agent_id, "tally": None}]
        for action in ("commit", "cancel"):
            made_up = lf.make_record(lift_uuid=lift, kind="linear", units=1 + len(action),
                                     path=path, referee=house.own_address(),
                                     date_ms=mallory.clock.now_ms(), life_ms=60_000, memo="",
                                     key=SigningKey.generate())
            extra = {"reason": "no"} if action == "cancel" else {}
            await send_raw(mallory, house, None, "lift", action, {"record": made_up, **extra},
                           None)
        # the referee decided both made-up records and told ann, bob and cat, who refuse both
        await wait_for(lambda: house.db.read_one(
            "SELECT count(*) FROM outbox WHERE action = 'decision' AND state = 'failed' AND"
            " error LIKE 'OTHER_RECORD%'")[0] == 6)
        for node, cuid in ((ann, "ann"), (bob, "bob"), (cat, "cat")):
            assert (await rpc(node, "lift.show", lift=lift))["state"] == "pend", cuid
        assert (reserved(ann, "ann", tl["annbob"]), reserved(cat, "cat", tl["catdan"])) == (
            (0, 500), (0, 500))
        assert house.db.read_one("SELECT count(*) FROM lift_decisions WHERE lift = ?",
                                 (lift,))[0] == 2
        await net.restart(4)  # dan takes the promise and commits the real record
        dan = net.nodes[4]
        await settled_everywhere([ann, bob, cat, dan], lift, "good")
        assert house.db.read_one("SELECT count(*) FROM lift_decisions WHERE lift = ?",
                                 (lift,))[0] == 3


async def test_a_made_up_void_that_reaches_a_hop_first_does_not_turn_the_real_promise_away(
        tmp_path):
    """A node told of a void decision on a lift it never saw remembers it, to refuse that
    lift's promise if it comes late. A void on a record made up with the real lift's uuid,
    pushed ahead of the real promise, must not turn that promise away."""
    async with network(tmp_path, n=6, clearinghouse=0) as net:
        world = await line(net)
        u = world["users"]
        ann, bob, dan, house, mallory = u["ann"], u["bob"], u["dan"], net.nodes[0], net.nodes[5]
        await net.stop(3)  # cat's node: the real promise waits at bob
        started = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=300,
                            life_s=60)
        lift = started["lift"]
        await wait_for(lambda: bob.db.read_one("SELECT 1 FROM lifts WHERE lift = ?",
                                               (lift,)) is not None)
        made_up = lf.make_record(
            lift_uuid=lift, kind="linear", units=1, memo="", referee=house.own_address(),
            path=[{"cuid": "m", "agent": mallory.agent_id, "tally": str(uuid.uuid4())},
                  {"cuid": "dan", "agent": dan.agent_id, "tally": None}],
            date_ms=mallory.clock.now_ms(), life_ms=60_000, key=SigningKey.generate())
        await send_raw(mallory, house, None, "lift", "cancel",
                       {"record": made_up, "reason": "no"}, None)
        heard = dan.credit.lifts.decisions.heard_void
        await wait_for(lambda: any(key[0] == lift for key in heard))  # a void on "this lift"
        assert dan.db.read_one("SELECT 1 FROM lifts WHERE lift = ?", (lift,)) is None
        await net.restart(3)  # cat forwards the real promise to dan, who takes it
        cat = net.nodes[3]
        await settled_everywhere([ann, bob, cat, dan], lift, "good")


async def test_voids_on_lifts_that_never_reached_us_leave_no_rows(tmp_path):
    """Anyone can sign records as their own referee and push void decisions on them. A node
    keeps no row for a lift it holds nothing of: a void on one that names it is remembered in
    memory (bounded) until its deadline, so its late promise is refused; one that does not
    name it, or whose deadline has passed, is not remembered at all."""
    async with network(tmp_path, n=2) as net:
        victim, mallory = net.nodes
        await rpc(victim, "users.add", cuid="vic")
        lifts = victim.credit.lifts
        own = SigningKey.generate()  # mallory's referee key: the agent key of its node
        sent = []
        for n in range(60):
            on_path = n % 3 != 0
            last = {"cuid": "vic", "agent": victim.agent_id} if on_path else {
                "cuid": "z", "agent": SigningKey.generate().agent_id}
            record = lf.make_record(
                lift_uuid=str(uuid.uuid4()), kind="linear", units=1, memo="",
                referee=mallory.own_address(),
                path=[{"cuid": "m", "agent": mallory.agent_id, "tally": str(uuid.uuid4())},
                      {**last, "tally": None}],
                date_ms=mallory.clock.now_ms() - (90_000 if n % 3 == 1 else 0),
                life_ms=60_000, key=own)
            decision, _ = lf.decide(None, "cancel", record, now_ms=mallory.clock.now_ms(),
                                    key=mallory.key, asker=mallory.agent_id)
            sent.append((record, on_path and n % 3 != 1))
            await send_raw(mallory, victim, None, "lift", "decision",
                           {"record": record, "decision": decision}, None)
        await wait_for(lambda: mallory.pump.depth == 0)  # every one taken
        assert victim.db.read_one("SELECT count(*) FROM lifts")[0] == 0
        assert await rpc(victim, "lift.list") == []
        assert {lift for lift, _ in lifts.decisions.heard_void} == {
            record["lift"] for record, kept in sent if kept}


async def test_a_referee_that_never_answered_and_cannot_be_reached_starts_no_lift(tmp_path):
    """ann's node names as referee an agent id mistyped (at the clearing house's address,
    where another key answers): lift.pay and lift.clear are NO_REFEREE, and nothing is held
    (a lift it could never decide would hold every hop's room for ever)."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net, limit=1000)
        u, tl = world["users"], world["tallies"]
        ann, dan, house = u["ann"], u["dan"], net.nodes[0]
        typo = SigningKey.generate().agent_id
        ann.learn_peer(typo, house.listen_address)
        ann.config = dataclasses.replace(ann.config, lift=dataclasses.replace(
            ann.config.lift, referee=typo))
        for method, params in (("lift.pay", {"find": who(dan, "dan"), "units": 5}),
                               ("lift.clear", {})):
            error = await refused(ann, method, cuid="ann", **params)
            assert error.reason == "NO_REFEREE"
            assert f"the lift referee {typo} (at 127.0.0.1:" in error.message
            assert "has never answered this node and cannot be reached now: " in error.message
        assert await rpc(ann, "lift.list") == []
        assert reserved(ann, "ann", tl["annbob"]) == (0, 0)


async def test_a_hop_that_refuses_a_promise_is_named_where_the_lift_shows_it(tmp_path):
    """cat's node takes lifts under another referee alone: bob's promise to cat is refused,
    and bob's node shows the lift's error naming whose node refused ("the next user on the
    path (cat on node …)"), where it said "hop 1" (the tally's index); the lift ends void
    everywhere."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        u = (await line(net))["users"]
        cat = u["cat"]
        cat.config = dataclasses.replace(cat.config, lift=dataclasses.replace(
            cat.config.lift, referees=(SigningKey.generate().agent_id,)))
        started = await rpc(u["ann"], "lift.pay", cuid="ann", find=who(u["dan"], "dan"),
                            units=5)
        await settled_everywhere([u["ann"], u["bob"]], started["lift"], "void")
        shown = await rpc(u["bob"], "lift.show", lift=started["lift"])
        assert shown["error"].startswith(
            f"the next user on the path (cat on node {cat.agent_id[:8]}…) refused: "
            "REFEREE_REFUSED: "), shown["error"]
