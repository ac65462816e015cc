"""A node restored from a backup of its database catches up with its tally partners (real
nodes: loopback, Noise, SQLite). The backup is taken with the node stopped; after it, both
users pay, more than a chain batch and the window a chain keeps in memory; the node is
stopped, the copy put back and the node started while its partner is down, and its user pays
on what it still knows. Once the partner is back, both hold the identical chain, every chit
either user paid is in it once, and the partner gave up no block it had confirmed."""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from agentd.runtime.answers import AnswersInFlight
from agentd.runtime.node import Node
from agentd.services.credit import chits as chits_module
from protocol import chain as ch
from protocol import lift as lf
from protocol.keys import ChipAddress
from store import lifts
from store.chain_rows import CHAIN_WINDOW
from tests.netfixture import Network, network, wait_for
from tests.test_credit_service import (
    agreed,
    chain_of,
    open_tally,
    processed,
    rebuilt,
    refusal_of,
    rpc,
    send_raw,
    user_key,
    whole_chain,
)
from tests.test_lifts import settled_everywhere, who

GAP = 2 * CHAIN_WINDOW + ch.UPD_BATCH // 2  # blocks made after the backup: 306


def back_up(node: Node, to: Path) -> None:
    """A copy of the stopped node's database, made with SQLite's backup API."""
    source, copy = sqlite3.connect(node.config.db_path), sqlite3.connect(to)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()


def put_back(node: Node, copy: Path) -> None:
    """The copy in place of the stopped node's database (and its write-ahead log)."""
    path = Path(node.config.db_path)
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    shutil.copy(copy, path)


async def restore(net: Network, index: int, copy: Path) -> Node:
    await net.stop(index)
    put_back(net.nodes[index], copy)
    return await net.restart(index)


async def pay(node: Node, cuid: str, tally: str, amounts: list[int]) -> dict[str, int]:
    """Paid, a thousand to a call: {chit: units}."""
    paid = {}
    for first in range(0, len(amounts), 1000):
        done = await rpc(node, "chit.pay_many", cuid=cuid, tally=tally,
                         units=amounts[first:first + 1000])
        paid.update(zip(done["chits"], amounts[first:first + 1000], strict=True))
    return paid


def stored_chits(node: Node, cuid: str, tally: str) -> dict[str, str]:
    return dict(node.db.read("SELECT uuid, state FROM chits WHERE tally = ? AND cuid = ?",
                             (tally, cuid)))


@pytest.mark.parametrize("restored", ["stock", "foil"])
async def test_a_node_restored_from_a_backup_catches_up_with_its_partner(tmp_path, restored):
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await rpc(a, "users.add", cuid="alice")
        await rpc(b, "users.add", cuid="bob")
        tally = await open_tally(a, "alice", b, "bob", limit=10**12)  # alice: stock
        paid = await pay(a, "alice", tally, [1] * 5)
        paid |= await pay(b, "bob", tally, [10] * 5)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 10))
        index = 0 if restored == "stock" else 1
        cuid = ("alice", "bob")[index]
        await net.stop(index)
        copy = tmp_path / "backup.db"
        back_up(net.nodes[index], copy)
        await net.restart(index)
        a, b = net.nodes
        paid |= await pay(a, "alice", tally, [2] * (GAP // 2))
        paid |= await pay(b, "bob", tally, [20] * (GAP - GAP // 2))
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 10 + GAP), timeout=30)
        partner = net.nodes[1 - index]
        partner_cuid = ("alice", "bob")[1 - index]
        confirmed = whole_chain(partner, partner_cuid, tally)

        await net.stop(1 - index)  # the partner is down while the copy goes back
        node = await restore(net, index, copy)
        assert chain_of(node, cuid, tally)[0] == 10
        for _ in range(3):  # on what it still knows, each chit its own message
            paid[(await rpc(node, "chit.pay", cuid=cuid, tally=tally, units=3))["chit"]] = 3
        await net.restart(1 - index)
        a, b = net.nodes
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 13 + GAP), timeout=60)

        stock, foil = whole_chain(a, "alice", tally), whole_chain(b, "bob", tally)
        assert stock == foil
        assert stock[: len(confirmed)] == confirmed  # the partner gave up nothing it held
        assert [chit["uuid"] for chit in stock[len(confirmed):]] == list(paid)[-3:]
        assert {chit["uuid"] for chit in stock} == set(paid)  # each once (agreed: no more)
        owed = sum(units if chit_uuid in _by(b, tally) else -units
                   for chit_uuid, units in paid.items())
        assert chain_of(a, "alice", tally)[3] == owed == -chain_of(b, "bob", tally)[3]
        for node, cuid in ((a, "alice"), (b, "bob")):
            assert node.counters.unacked_failures == 0  # no message failed us on the way
            assert set(stored_chits(node, cuid, tally).values()) <= {"A.good", "L.good"}
            shown = await rpc(node, "tally.show", cuid=cuid, tally=tally)
            assert shown["error"] is None and shown["chain"]["pending"] == 0


async def test_a_restored_stock_asks_again_when_its_request_goes_unanswered(tmp_path,
                                                                            monkeypatch):
    """alice's node (the stock) is restored 5 blocks behind; its probe (an ack of its head)
    tells it bob's conf, and it asks for the blocks. bob's node answers a few such requests
    at a time, and leaves this one unwritten: alice's repair must ask again, which it does
    while it keeps bob's conf as last heard. That was not saved when nothing else in the
    chain changed (the runtime took the message for one that changed nothing), so alice's
    chain looked settled and stayed 5 blocks behind until bob paid again."""
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await rpc(a, "users.add", cuid="alice")
        await rpc(b, "users.add", cuid="bob")
        tally = await open_tally(a, "alice", b, "bob", limit=10**9)
        await pay(b, "bob", tally, [1] * 5)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 5))
        await net.stop(0)
        copy = tmp_path / "alice.db"
        back_up(net.nodes[0], copy)
        await net.restart(0)
        await pay(net.nodes[1], "bob", tally, [1] * 5)
        await wait_for(lambda: agreed(net.nodes[0], "alice", net.nodes[1], "bob", tally, 10))
        await net.stop(1)
        a = await restore(net, 0, copy)
        unwritten: list[Any] = []

        class FirstUnwritten(AnswersInFlight):  # bob's node's: no room for its first answer
            def room(self, conn: sqlite3.Connection, key: Any) -> bool:
                if not unwritten:
                    unwritten.append(key)
                    return False
                return super().room(conn, key)

        monkeypatch.setattr(chits_module, "AnswersInFlight", FirstUnwritten)
        b = await net.restart(1)
        monkeypatch.undo()
        await wait_for(lambda: unwritten)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 10))


async def test_blocks_both_nodes_lost_show_as_missing_until_the_foil_orders_as_many(tmp_path):
    """Both nodes of a tally put back to copies from before three of bob's payments, alice's
    (the stock) told of them first, as the foil's answer to its probe leaves it (its stored
    chain_ahead): nobody holds them. tally.show says three are missing on alice's node, and
    her chain is not settled; the blocks bob orders next take their place, and once he paid
    three more nothing is missing (README: Restoring a node from a backup)."""
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await rpc(a, "users.add", cuid="alice")
        await rpc(b, "users.add", cuid="bob")
        tally = await open_tally(a, "alice", b, "bob", limit=10**6)
        copies = [tmp_path / "alice.db", tmp_path / "bob.db"]
        for index in (0, 1):
            await net.stop(index)
            back_up(net.nodes[index], copies[index])
            await net.restart(index)
        await pay(net.nodes[1], "bob", tally, [10] * 3)
        await wait_for(lambda: agreed(net.nodes[0], "alice", net.nodes[1], "bob", tally, 3))

        def told(node: Node) -> None:
            put_back(node, copies[0])
            db = sqlite3.connect(node.config.db_path)
            try:
                with db:
                    db.execute("UPDATE tallies SET chain_ahead = 3 WHERE uuid = ?", (tally,))
            finally:
                db.close()

        await net.stop(1)
        put_back(net.nodes[1], copies[1])
        a = await net.restart(0, meanwhile=told)
        b = await net.restart(1)
        shown = await rpc(a, "tally.show", cuid="alice", tally=tally)
        assert shown["chain"] == {"index": 0, "hash": shown["chain"]["hash"], "confirmed": 0,
                                  "pending": 0, "missing": 3}
        assert (await rpc(b, "tally.show", cuid="bob", tally=tally))["chain"]["missing"] == 0
        assert not ch.settled(rebuilt(a, "alice", tally).chain)
        await pay(b, "bob", tally, [20] * 2)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 2))
        assert (await rpc(a, "tally.show", cuid="alice", tally=tally))["chain"]["missing"] == 1
        await pay(b, "bob", tally, [30])
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 3))
        for node, cuid in ((a, "alice"), (b, "bob")):
            shown = await rpc(node, "tally.show", cuid=cuid, tally=tally)
            assert (shown["chain"]["missing"], shown["chain"]["pending"]) == (0, 0)
            assert node.counters.unacked_failures == 0


async def test_what_a_partner_says_of_its_confirmed_blocks_is_kept_alone(tmp_path):
    """A chain message that changes nothing but how far the partner says it confirmed (a
    foil's req from its conf + 1, an ack past our head: we lost blocks) is kept, so the
    repair asks for the blocks until they come, as tally.show says; it was answered and
    forgotten (only a change of the chain's blocks, pending chits or conf was stored)."""
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await rpc(a, "users.add", cuid="alice")
        await rpc(b, "users.add", cuid="bob")
        tally = await open_tally(a, "alice", b, "bob", limit=10**6)
        for told, obj in ((3, {"cmd": "req", "index": 4}),
                          (5, {"cmd": "ack", "index": 5, "hash": bytes(32)})):
            sent = await send_raw(b, a, "alice", "chit", "chain", {**obj, "tally": tally}, "bob")
            await processed(b, sent)
            shown = await rpc(a, "tally.show", cuid="alice", tally=tally)
            assert (shown["chain"]["index"], shown["chain"]["missing"]) == (0, told)
            assert rebuilt(a, "alice", tally).chain.ahead == told

def _by(node: Node, tally: str) -> set[str]:
    """The chits bob (the foil) issued."""
    return {row[0] for row in node.db.read(
        "SELECT uuid FROM chits WHERE tally = ? AND issuer = 'foil'", (tally,))}


async def test_a_node_restored_from_a_backup_takes_back_the_lifts_it_lost(tmp_path):
    """bob's node (the foil of ann-bob, the stock of bob-cat) is restored from a backup made
    before two lifts through it: its partners send it each lift's record and decision, and
    it holds the lifts good, both its chits of each, as ann's and cat's nodes do."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        world = await line_of_three(net)
        u, tl = world["users"], world["tallies"]
        await net.stop(2)
        copy = tmp_path / "bob.db"
        back_up(net.nodes[2], copy)
        u["bob"] = await net.restart(2)
        lifts = []
        for units in (700, 300):
            started = await rpc(u["ann"], "lift.pay", cuid="ann", find=who(u["cat"], "cat"),
                                units=units)
            await settled_everywhere(list(u.values()), started["lift"], "good")
            lifts.append(started["lift"])
        await rpc(u["cat"], "chit.pay", cuid="cat", tally=tl["bobcat"], units=40)
        for tally, (x, y) in {tl["annbob"]: ("ann", "bob"), tl["bobcat"]: ("bob", "cat")}.items():
            await wait_for(lambda t=tally, x=x, y=y: agreed(u[x], x, u[y], y, t, len(
                whole_chain(u[x], x, t))) and len(whole_chain(u[x], x, t)) >= 2)
        before = {t: whole_chain(u["ann"] if t == tl["annbob"] else u["cat"],
                                 "ann" if t == tl["annbob"] else "cat", t) for t in tl.values()}

        kept = sqlite3.connect(copy)
        try:  # the copy knows neither lift
            assert kept.execute("SELECT count(*) FROM lifts").fetchone()[0] == 0
        finally:
            kept.close()
        u["bob"] = await restore(net, 2, copy)
        for lift in lifts:  # bob's node holds them once its partners told it
            await wait_for(lambda lift=lift: u["bob"].db.read_one(
                "SELECT count(*) FROM lifts WHERE lift = ? AND state = 'good'", (lift,))[0])
            await settled_everywhere(list(u.values()), lift, "good")
        for tally, (x, y) in {tl["annbob"]: ("ann", "bob"), tl["bobcat"]: ("bob", "cat")}.items():
            await wait_for(lambda t=tally, x=x, y=y: agreed(
                u[x], x, u[y], y, t, len(before[t])), timeout=30)
            assert whole_chain(u["bob"], "bob", tally) == before[tally]
        assert chain_of(u["bob"], "bob", tl["annbob"])[3] == 1000
        assert chain_of(u["bob"], "bob", tl["bobcat"])[3] == -1000 + 40
        for node, cuid in ((u["ann"], "ann"), (u["bob"], "bob"), (u["cat"], "cat")):
            for shown in await rpc(node, "tally.list", cuid=cuid):
                assert shown["error"] is None  # the partners' refusals, overcome
        shown = await rpc(u["bob"], "lift.show", lift=lifts[0])
        assert [(chit["tally"], chit["state"]) for chit in sorted(
            shown["chits"], key=lambda chit: chit["tally"] != tl["annbob"])] == [
            (tl["annbob"], "A.good"), (tl["bobcat"], "L.good")]

        # A good lift ann tells bob of, over a tally bob's node does not hold (one opened
        # after its backup, say): bob would be paid by ann and pay nobody, or the reverse.
        house = net.nodes[0]
        made_up = lf.make_record(
            lift_uuid=str(uuid.uuid4()), kind="linear", units=5, path=[
                {"cuid": "ann", "agent": u["ann"].agent_id, "tally": tl["annbob"]},
                {"cuid": "bob", "agent": u["bob"].agent_id, "tally": str(uuid.uuid4())},
                {"cuid": "cat", "agent": u["cat"].agent_id, "tally": None}],
            referee=ChipAddress(agent=house.agent_id), date_ms=house.clock.now_ms(),
            life_ms=60_000, memo="", key=user_key(u["ann"], "ann"))
        decision, _ = lf.decide(None, "commit", made_up, now_ms=house.clock.now_ms(),
                                key=house.key, asker=u["cat"].agent_id)
        told = await send_raw(u["ann"], u["bob"], "bob", "lift", "decision",
                              {"record": made_up, "decision": decision}, "ann")
        assert (await refusal_of(u["ann"], told)).startswith(
            f"UNKNOWN_TALLY: lift {made_up['lift']} crosses bob on tally ")
        assert u["bob"].db.read_one("SELECT count(*) FROM lifts WHERE lift = ?",
                                    (made_up["lift"],))[0] == 0
        assert chain_of(u["bob"], "bob", tl["annbob"])[3] == 1000


@pytest.mark.parametrize("restored", ["ann", "cat"])
async def test_a_restored_payor_or_payee_takes_back_its_lift(tmp_path, restored):
    """The payor's node (ann's) or the payee's (cat's) restored from a backup made before a
    lift takes it back from its one partner on it: the payee's from the partner that pays
    it, the payor's from the partner it pays, on its own user's signature on the record."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        world = await line_of_three(net)
        u, tl = world["users"], world["tallies"]
        index = net.nodes.index(u[restored])
        await net.stop(index)
        copy = tmp_path / "copy.db"
        back_up(net.nodes[index], copy)
        u[restored] = await net.restart(index)
        started = await rpc(u["ann"], "lift.pay", cuid="ann", find=who(u["cat"], "cat"),
                            units=700)
        await settled_everywhere(list(u.values()), started["lift"], "good")
        tally = tl["annbob"] if restored == "ann" else tl["bobcat"]
        x, y = ("ann", "bob") if restored == "ann" else ("bob", "cat")
        await wait_for(lambda: agreed(u[x], x, u[y], y, tally, 1))
        u[restored] = await restore(net, index, copy)
        await wait_for(lambda: u[restored].db.read_one(
            "SELECT count(*) FROM lifts WHERE lift = ? AND state = 'good'", (started["lift"],)
        )[0], timeout=30)
        await wait_for(lambda: agreed(u[x], x, u[y], y, tally, 1))
        owed = chain_of(u[restored], restored, tally)[3]
        assert owed == (-700 if restored == "ann" else 700)


async def test_a_lift_made_up_under_a_referee_the_node_does_not_trust_is_not_taken(tmp_path):
    """ann's node signs a record of ann paying cat through bob and, as its referee, a good
    decision on it, and shows it to bob's node, which holds nothing of it (restored or not:
    it cannot tell). Taken, bob would pay cat what ann's node says ann paid him; and bob's
    node would show cat's node the decision, and so on back along any path to the payor's
    partner, the one node that can check the payor's signature: an honest intermediary
    would pay out what it never takes in. bob's node takes a lift it lost only under a
    referee it trusts (its clearing house here), so it refuses it, naming the referees it
    takes, and nothing is taken."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        world = await line_of_three(net)
        u, tl = world["users"], world["tallies"]
        ann = u["ann"]
        path = [{"cuid": "ann", "agent": ann.agent_id, "tally": tl["annbob"]},
                {"cuid": "bob", "agent": u["bob"].agent_id, "tally": tl["bobcat"]},
                {"cuid": "cat", "agent": u["cat"].agent_id, "tally": None}]

        def decided_by(referee) -> tuple[dict, dict]:
            """A record of ann's along ``path`` under ``referee``, and its good decision."""
            record = lf.make_record(
                lift_uuid=str(uuid.uuid4()), kind="linear", units=5, path=path,
                referee=ChipAddress(agent=referee.agent_id), date_ms=ann.clock.now_ms(),
                life_ms=60_000, memo="", key=user_key(ann, "ann"))
            decision, _ = lf.decide(None, "commit", record, now_ms=referee.clock.now_ms(),
                                    key=referee.key, asker=u["cat"].agent_id)
            return record, decision

        made_up, decision = decided_by(ann)
        told = await send_raw(ann, u["bob"], "bob", "lift", "decision",
                              {"record": made_up, "decision": decision}, "ann")
        assert await refusal_of(ann, told) == (
            f"REFEREE_REFUSED: lift {made_up['lift']}: a lift this node lost is taken back only"
            f" under a referee it trusts: {net.nodes[0].agent_id} ([lift] referees, else its "
            f"own lift referee and clearing house), not {ann.agent_id}")
        assert u["bob"].db.read_one("SELECT count(*) FROM lifts")[0] == 0
        assert chain_of(u["bob"], "bob", tl["annbob"])[3] == 0
        assert chain_of(u["bob"], "bob", tl["bobcat"])[3] == 0

        # nor under its own clearing house once bob's node holds a proof it equivocated
        house = net.nodes[0]
        await u["bob"].transact(lambda tx: lifts.add_equivocator(
            tx.conn, house.agent_id, "a-lift", {}, tx.now_ms, keep=1024))
        under_house, decision = decided_by(house)
        told = await send_raw(ann, u["bob"], "bob", "lift", "decision",
                              {"record": under_house, "decision": decision}, "ann")
        assert (await refusal_of(ann, told)).startswith(
            f"REFEREE_REFUSED: lift {under_house['lift']}: the lift referee {house.agent_id} "
            "signed both good and void on lift a-lift (it equivocated)")
        assert u["bob"].db.read_one("SELECT count(*) FROM lifts")[0] == 0


async def test_a_lift_taken_back_with_a_proof_keeps_the_proof(tmp_path):
    """A partner that holds a proof that the referee equivocated shows it (``decision`` good,
    ``other`` void) to a node that lost the lift: the node takes the lift back good and holds
    the proof as any node on the lift does (lift.show ``equivocation``, the counter)."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        world = await line_of_three(net)
        u, tl, house = world["users"], world["tallies"], net.nodes[0]
        ann, bob = u["ann"], u["bob"]
        record = lf.make_record(
            lift_uuid=str(uuid.uuid4()), kind="linear", units=5, path=[
                {"cuid": "ann", "agent": ann.agent_id, "tally": tl["annbob"]},
                {"cuid": "bob", "agent": bob.agent_id, "tally": tl["bobcat"]},
                {"cuid": "cat", "agent": u["cat"].agent_id, "tally": None}],
            referee=ChipAddress(agent=house.agent_id), date_ms=ann.clock.now_ms(),
            life_ms=60_000, memo="", key=user_key(ann, "ann"))
        good, void = (lf.decide(None, event, record, now_ms=house.clock.now_ms(),
                                key=house.key, asker=u["cat"].agent_id)[0]
                      for event in ("commit", "cancel"))
        await send_raw(ann, bob, "bob", "lift", "decision",
                       {"record": record, "decision": good, "other": void}, "ann")
        await wait_for(lambda: bob.counters.lift_equivocations == 1)
        shown = await rpc(bob, "lift.show", lift=record["lift"])
        assert (shown["state"], shown["equivocation"]["state"]) == ("good", "void")
        assert sorted(chit["state"] for chit in shown["chits"]) == ["A.good", "L.good"]


async def line_of_three(net: Network) -> dict[str, Any]:
    """ann@n1 — bob@n2 — cat@n3, refereed by the clearing house n0."""
    nodes = net.nodes
    users = {"ann": nodes[1], "bob": nodes[2], "cat": nodes[3]}
    for cuid, node in users.items():
        await rpc(node, "users.add", cuid=cuid)
    tallies = {"annbob": await open_tally(nodes[1], "ann", nodes[2], "bob", limit=10**9),
               "bobcat": await open_tally(nodes[2], "bob", nodes[3], "cat", limit=10**9)}
    return {"users": users, "tallies": tallies}

