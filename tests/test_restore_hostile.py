"""What a dishonest tally partner can make a node take by the paths that bring back what a
node restored from a backup lost (real nodes: loopback, Noise, SQLite; a real clearing house
as the honest referee every node trusts)."""

from __future__ import annotations

import uuid

from agentd.services.credit.lift_decisions import unvouched
from protocol import lift as lf
from protocol.keys import ChipAddress, SigningKey
from store import lifts
from tests.netfixture import network, wait_for
from tests.test_credit_service import chain_of, processed, send_raw
from tests.test_restore import line_of_three


async def test_a_partner_the_node_pays_cannot_have_it_take_back_a_lift_nobody_paid_in(
        tmp_path):
    """ann's node makes up a lift from a user of its own, zed, through cat and bob to ann:
    zed pays cat over a tally nobody holds, cat pays bob over bob-cat, bob pays ann over
    ann-bob. ann is the terminus, so the clearing house (honest, and trusted by every node)
    decides it good on ann's commit, as it decides any record its terminus commits. ann's
    node then shows bob's the decision. Taken, bob would pay ann 5 on ann-bob against 5 that
    cat owes him on bob-cat, which cat's node never takes (it holds no tally with zed: it
    refuses the lift UNKNOWN_TALLY when bob shows it). Only the partner that pays into a
    node on the lift, or the node's own payor's signature, vouches for what it pays out."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        world = await line_of_three(net)
        u, tl, house = world["users"], world["tallies"], net.nodes[0]
        ann, bob, cat = u["ann"], u["bob"], u["cat"]
        record = lf.make_record(
            lift_uuid=str(uuid.uuid4()), kind="linear", units=5, path=[
                {"cuid": "zed", "agent": ann.agent_id, "tally": str(uuid.uuid4())},
                {"cuid": "cat", "agent": cat.agent_id, "tally": tl["bobcat"]},
                {"cuid": "bob", "agent": bob.agent_id, "tally": tl["annbob"]},
                {"cuid": "ann", "agent": ann.agent_id, "tally": None}],
            referee=ChipAddress(agent=house.agent_id), date_ms=ann.clock.now_ms(),
            life_ms=60_000, memo="", key=SigningKey.generate())
        await ann.transact(lambda tx: tx.send(lf.commit(record)))  # ann: the terminus
        await wait_for(lambda: house.db.reading(
            lambda conn: lifts.decision(conn, record["lift"], record)) is not None)
        decision = house.db.reading(lambda conn: lifts.decision(conn, record["lift"], record))
        assert decision["state"] == lf.GOOD  # the honest referee's word, on ann's commit

        told = await send_raw(ann, bob, "bob", "lift", "decision",
                              {"record": record, "decision": decision}, "ann")
        await processed(ann, told)
        assert bob.db.read_one("SELECT count(*) FROM lifts WHERE lift = ?",
                               (record["lift"],))[0] == 0
        assert bob.db.read_one("SELECT count(*) FROM chits WHERE lift = ?",
                               (record["lift"],))[0] == 0
        assert chain_of(bob, "bob", tl["annbob"])[3] == 0
        assert chain_of(bob, "bob", tl["bobcat"])[3] == 0


def test_what_vouches_for_a_lift_taken_back():
    """``unvouched``: the payments out of a run of our node's users rest on the node that
    pays into that run, or on our payor's signature; never on a node we pay."""
    def path(*agents: str) -> list[dict[str, str]]:
        return [{"agent": agent} for agent in agents]

    assert unvouched(path("A", "us", "C"), "us", "A") is None  # the partner paying in
    assert unvouched(path("A", "us", "C"), "us", "C") == 1  # the partner we pay
    assert unvouched(path("us", "B", "C"), "us", "B") is None  # our payor's signature
    assert unvouched(path("A", "B", "us"), "us", "B") is None  # we pay nobody
    assert unvouched(path("A", "us", "us", "D"), "us", "A") is None  # a run of two users
    assert unvouched(path("A", "us", "us", "D"), "us", "D") == 2
    # a path that enters our node twice: one partner vouches for one run, not both
    assert unvouched(path("A", "us", "C", "us", "E"), "us", "A") == 3
    assert unvouched(path("A", "us", "C", "us", "E"), "us", "C") == 1
    assert unvouched(path("us", "B", "us", "D"), "us", "B") is None  # B pays in the 2nd
    assert unvouched(path("us", "B", "C", "us"), "us", "C") is None  # a circle back to us
