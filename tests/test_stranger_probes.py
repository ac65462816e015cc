"""What a stranger (or a partner) learns of the tallies a node's users hold by the answers to
its messages: nothing. A message about a tally from anyone but its partner is refused as one
about a tally nobody holds here, in the same words (real nodes: loopback, Noise, SQLite)."""

from __future__ import annotations

import uuid

from protocol import lift as lf
from protocol import tally as t
from protocol import tally_fields as tf
from protocol.keys import ChipAddress
from protocol.tally_sign import core_digest
from tests.netfixture import network
from tests.test_credit_service import (
    chain_of,
    chit_by,
    one_user_each,
    open_tally,
    rebuilt,
    refusal_of,
    send_raw,
    state,
    user_key,
    users,
)
from tests.test_restore import line_of_three
from tests.test_restore_hostile import decided_by


async def answers(sender, to, cuid, make, real: str, sender_cuid: str) -> tuple[str, str]:
    """The refusals of the message ``make(tally)`` for the tally ``real`` and for a uuid
    nobody holds, each with its uuid written ``T``."""
    made_up = str(uuid.uuid4())
    said = []
    for tally in (real, made_up):
        target, action, obj = make(tally)
        sent = await send_raw(sender, to, cuid, target, action, obj, sender_cuid)
        said.append((await refusal_of(sender, sent)).replace(tally, "T"))
    return said[0], said[1]


async def test_a_stranger_cannot_tell_a_tally_that_exists_from_one_that_does_not(tmp_path):
    """mallory (on a third node) names alice's tally with bob in each message that takes a
    tally uuid, and then a uuid nobody holds: the answers were NOT_PARTY for the one and
    UNKNOWN_TALLY for the other, so anyone could test which uuids alice holds. Both are now
    UNKNOWN_TALLY, word for word, and nothing of alice's tally changes."""
    async with network(tmp_path, n=3) as net:
        a, b, m = await one_user_each(net, "alice", "bob", "mallory")
        tally = await open_tally(a, "alice", b, "bob")
        before = chain_of(a, "alice", tally), state(a, "alice", tally)
        mallory = user_key(m, "mallory")
        ours = rebuilt(a, "alice", tally).local.tally
        mallory_cert = tf.make_cert(m.own_address("mallory"), "mallory", mallory.public, 1)

        def offer(tally_uuid: str) -> tuple[str, str, dict]:
            """An offer of alice's tally (or of one like it) with mallory as the foil."""
            hijack = {**ours, "uuid": tally_uuid, "version": 2,
                      t.FOIL: {"cert": mallory_cert, "terms": {"limit": 9}}}
            digest = core_digest(hijack)
            hijack["sign"] = {"hash": digest, t.STOCK: None, t.FOIL: mallory.sign(digest)}
            return "tally", "offer", hijack

        def promise(tally_uuid: str) -> tuple[str, str, dict]:
            """mallory's lift paying alice over the tally."""
            record = lf.make_record(
                lift_uuid=str(uuid.uuid4()), kind="linear", units=5, path=[
                    {"cuid": "mallory", "agent": m.agent_id, "tally": tally_uuid},
                    {"cuid": "alice", "agent": a.agent_id, "tally": None}],
                referee=ChipAddress(agent=m.agent_id), date_ms=m.clock.now_ms(),
                life_ms=60_000, memo="", key=mallory)
            return "lift", "promise", {"record": record, "hop": 0}

        for make in (
            lambda x: ("chit", "good", chit_by(mallory, x, t.FOIL, 5)),
            lambda x: ("chit", "pend", {**chit_by(mallory, x, t.FOIL, 5), "sign": None}),
            lambda x: ("chit", "void", {"tally": x, "uuid": str(uuid.uuid4())}),
            lambda x: ("chit", "chain", {"cmd": "req", "tally": x, "index": 1}),
            lambda x: ("tally", "close", {"uuid": x}),
            offer,
            promise,
        ):
            held, unheld = await answers(m, a, "alice", make, tally, "mallory")
            assert held == unheld, (held, unheld)
            assert held.split(":")[0] in ("UNKNOWN_TALLY", "NOT_REQUESTED"), held
        # the same offer to carol, alice's neighbour on her node: it was UUID_TAKEN
        await users(a, "carol")
        carol = tf.make_cert(a.own_address("carol"), "carol", user_key(a, "carol").public, 1)
        ours = {**ours, t.STOCK: {**ours[t.STOCK], "cert": carol}}
        held, unheld = await answers(m, a, "carol", offer, tally, "mallory")
        assert held == unheld and held.startswith("NOT_REQUESTED"), (held, unheld)
        assert (chain_of(a, "alice", tally), state(a, "alice", tally)) == before
        assert a.db.read_one("SELECT count(*) FROM lifts")[0] == 0
        assert len(a.db.read("SELECT 1 FROM tallies")) == 1


async def test_a_partner_cannot_tell_the_tallies_its_partner_holds_with_others(tmp_path):
    """bob, alice's partner, promises a lift onward from alice over alice's tally with cat,
    naming another user (mallory) as the next hop, and then over a uuid nobody holds: the
    first was NOT_PARTY (the tally is alice's, with someone else), the second UNKNOWN_TALLY.
    Both are UNKNOWN_TALLY now, word for word, and alice holds nothing of either lift."""
    async with network(tmp_path, n=3) as net:
        a, b, c = await one_user_each(net, "alice", "bob", "cat")
        bob_alice = await open_tally(b, "bob", a, "alice")
        alice_cat = await open_tally(a, "alice", c, "cat")
        bob = user_key(b, "bob")

        def promise(tally_uuid: str) -> tuple[str, str, dict]:
            record = lf.make_record(
                lift_uuid=str(uuid.uuid4()), kind="linear", units=5, path=[
                    {"cuid": "bob", "agent": b.agent_id, "tally": bob_alice},
                    {"cuid": "alice", "agent": a.agent_id, "tally": tally_uuid},
                    {"cuid": "mallory", "agent": c.agent_id, "tally": None}],
                referee=ChipAddress(agent=b.agent_id), date_ms=b.clock.now_ms(),
                life_ms=60_000, memo="", key=bob)
            return "lift", "promise", {"record": record, "hop": 0}

        held, unheld = await answers(b, a, "alice", promise, alice_cat, "bob")
        assert held == unheld and held.startswith("UNKNOWN_TALLY"), (held, unheld)
        assert a.db.read_one("SELECT count(*) FROM lifts")[0] == 0
        assert a.db.read_one("SELECT count(*) FROM chits WHERE type = 'lift'")[0] == 0


async def test_a_partner_showing_a_decision_cannot_tell_the_tallies_its_partner_holds(
        tmp_path):
    """ann's node makes up lifts from ann through bob to a user of its own, zed, the first
    over bob's tally with cat, then over a uuid nobody holds, has the clearing house decide
    each good on its commit (it is the terminus) and shows bob's node the decision, as a
    partner shows a node restored from a backup a lift it lost. The first was refused
    NOT_PARTY (bob holds that tally, with cat), the second UNKNOWN_TALLY; both are
    UNKNOWN_TALLY now, word for word, and bob takes neither."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        world = await line_of_three(net)
        u, tl, house = world["users"], world["tallies"], net.nodes[0]
        ann, bob = u["ann"], u["bob"]
        said = []
        for onward in (tl["bobcat"], str(uuid.uuid4())):
            record = lf.make_record(
                lift_uuid=str(uuid.uuid4()), kind="linear", units=5, path=[
                    {"cuid": "ann", "agent": ann.agent_id, "tally": tl["annbob"]},
                    {"cuid": "bob", "agent": bob.agent_id, "tally": onward},
                    {"cuid": "zed", "agent": ann.agent_id, "tally": None}],
                referee=ChipAddress(agent=house.agent_id), date_ms=ann.clock.now_ms(),
                life_ms=60_000, memo="", key=user_key(ann, "ann"))
            decision = await decided_by(house, ann, record)
            assert decision["state"] == lf.GOOD
            shown = await send_raw(ann, bob, "bob", "lift", "decision",
                                   {"record": record, "decision": decision}, "ann")
            said.append((await refusal_of(ann, shown)).replace(onward, "T").replace(
                record["lift"], "L"))
        assert said[0] == said[1] and said[0].startswith("UNKNOWN_TALLY"), said
        assert bob.db.read_one("SELECT count(*) FROM lifts")[0] == 0
