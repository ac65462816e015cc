"""What a dishonest tally partner can make a node take by the paths that bring back what a
node restored from a backup lost (real nodes: loopback, Noise, SQLite; a real clearing house
as the honest referee every node trusts)."""

from __future__ import annotations

import uuid

from agentd.runtime.node import Node
from agentd.services.credit.lift_decisions import SIGNED, vouchers
from protocol import lift as lf
from protocol.keys import ChipAddress, SigningKey
from store import lifts
from tests.netfixture import network, wait_for
from tests.test_credit_service import (
    chain_of,
    open_tally,
    processed,
    refusal_of,
    rpc,
    send_raw,
    user_key,
)
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
        decision = await decided_by(house, ann, record)  # ann: the terminus
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


async def test_a_lift_taken_back_fits_the_tallies_as_a_promise_must(tmp_path):
    """The partner that pays into a node vouches for what the node pays out, not for the
    limits: ann's node makes up a circle of 50,000 from ann through bob and cat back to ann
    (the payor and so the terminus: the clearing house decides it good on its commit), on
    tallies whose limits are 1,000, each hop in the direction that grows a debt (a clearing
    moves only the other way). Taken, bob would hold ann owing him 50,000, fifty times what
    he lets her owe, and bob would owe cat as much; shown to cat by bob, cat would take it
    too. bob's node checks each hop as a promise is checked, and refuses it (OVER_LIMIT,
    naming the tally), taking nothing."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        house, ann, bob, cat = net.nodes
        for node, cuid in ((ann, "ann"), (bob, "bob"), (cat, "cat")):
            await rpc(node, "users.add", cuid=cuid)
        tl = {"annbob": await open_tally(ann, "ann", bob, "bob", limit=1000),
              "bobcat": await open_tally(bob, "bob", cat, "cat", limit=1000),
              "catann": await open_tally(cat, "cat", ann, "ann", limit=1000)}
        record = lf.make_record(
            lift_uuid=str(uuid.uuid4()), kind="circular", units=50_000, path=[
                {"cuid": "ann", "agent": ann.agent_id, "tally": tl["annbob"]},
                {"cuid": "bob", "agent": bob.agent_id, "tally": tl["bobcat"]},
                {"cuid": "cat", "agent": cat.agent_id, "tally": tl["catann"]},
                {"cuid": "ann", "agent": ann.agent_id, "tally": None}],
            referee=ChipAddress(agent=house.agent_id), date_ms=ann.clock.now_ms(),
            life_ms=60_000, memo="", key=user_key(ann, "ann"))
        decision = await decided_by(house, ann, record)

        told = await send_raw(ann, bob, "bob", "lift", "decision",
                              {"record": record, "decision": decision}, "ann")
        assert await refusal_of(ann, told) == (
            f"OVER_LIMIT: lift {record['lift']}, taken back: tally {tl['annbob']} can carry "
            "0 more in this circular direction (0 reserved by pending lift chits), not 50000")
        assert bob.db.read_one("SELECT count(*) FROM lifts")[0] == 0
        for tally in (tl["annbob"], tl["bobcat"]):
            assert chain_of(bob, "bob", tally)[3] == 0


async def decided_by(house: Node, terminus: Node, record: dict) -> dict:
    """The clearing house's decision on ``record``, committed by its terminus's node."""
    await terminus.transact(lambda tx: tx.send(lf.commit(record)))

    def kept() -> dict | None:
        return house.db.reading(lambda conn: lifts.decision(conn, record["lift"], record))

    await wait_for(lambda: kept() is not None)
    return kept()


async def test_a_partner_away_holds_one_probe_per_tally_however_often_the_node_starts(
        tmp_path):
    """Each start sends every tally partner on another node a probe, which waits in the
    outbox while the partner is away (or does not ack: tally and chit messages never
    expire). Four starts of alice's node while bob's is down leave one probe per tally
    waiting, not four, and once bob's node is back each is delivered and answered."""
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await rpc(a, "users.add", cuid="alice")
        await rpc(b, "users.add", cuid="bob")
        tallies = [await open_tally(a, "alice", b, "bob") for _ in range(3)]
        await net.stop(1)

        def waiting(node: Node) -> int:
            return node.db.read_one("SELECT count(*) FROM outbox WHERE peer = ? AND"
                                    " state = 'pending'", (b.agent_id,))[0]

        def probes(node: Node) -> set[bytes]:
            return {row[0] for row in node.db.read("SELECT chain_probe FROM tallies")}

        sent = probes(a)
        for _ in range(4):
            a = await net.restart(0)
            await wait_for(lambda a=a, sent=sent: not probes(a) & sent)  # this start's
            sent = probes(a)
            assert waiting(a) == len(tallies)
        await a.credit.repair.probe()  # once more in one run: nothing accumulates either
        assert waiting(a) == len(tallies)
        b = await net.restart(1)
        await wait_for(lambda: waiting(a) == 0)


def test_what_vouches_for_a_lift_taken_back():
    """``vouchers``: the payments out of a run of our node's users rest on the node that
    pays into that run, or on our payor's signature; never on a node we pay. A path that
    enters our node twice has a voucher for each run."""
    def path(*agents: str) -> list[dict[str, str]]:
        return [{"agent": agent} for agent in agents]

    assert vouchers(path("A", "us", "C"), "us") == {0: "A", 1: "A"}
    assert vouchers(path("us", "B", "C"), "us") == {0: SIGNED}  # our payor's signature
    assert vouchers(path("A", "B", "us"), "us") == {1: "B"}  # we pay nobody
    assert vouchers(path("A", "us", "us", "D"), "us") == {0: "A", 1: "A", 2: "A"}
    assert vouchers(path("A", "us", "C", "us", "E"), "us") == {0: "A", 1: "A", 2: "C", 3: "C"}
    assert vouchers(path("us", "B", "us", "D"), "us") == {0: SIGNED, 1: "B", 2: "B"}
    assert vouchers(path("us", "B", "C", "us"), "us") == {0: SIGNED, 2: "C"}  # a circle
