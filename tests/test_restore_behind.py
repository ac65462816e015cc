"""A node restored from a backup pays on a balance it knows to be stale (real nodes: loopback,
Noise, SQLite). README: Restoring a node from a backup."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from agentd.runtime.answers import AnswersInFlight
from agentd.runtime.context import Reject
from agentd.services.credit import chits as chits_module
from tests.netfixture import network, wait_for
from tests.test_credit_service import (
    agreed,
    chain_of,
    open_tally,
    processed,
    refused,
    rpc,
    send_raw,
)
from tests.test_restore import back_up, pay, restore

LOST = 150  # payments of 1 the restored node lost: more than one answer's 100 blocks


class FirstOnly(AnswersInFlight):
    """A partner's node that writes its first answer of blocks and no other: the restored
    node takes the first 100 blocks it lost, learns it lacks more, and stays behind."""

    def room(self, conn: sqlite3.Connection, key: Any) -> bool:
        if getattr(self, "answered", False):
            return False
        self.answered = True
        return super().room(conn, key)


async def restored_behind(net: Any, tmp_path: Any, restored: str) -> tuple[Any, str, str, int]:
    """A tally of limit 200 (alice: stock) whose ``restored`` side's node is backed up, then
    its user pays LOST of 1, then the node is restored from the copy, and the partner's node
    restarted to answer only its first request for blocks: the restored node takes 100 of
    them back and knows it lacks 50. The restored node, its user, the tally, its index."""
    a, b = net.nodes[:2]
    await rpc(a, "users.add", cuid="alice")
    await rpc(b, "users.add", cuid="bob")
    tally = await open_tally(a, "alice", b, "bob", limit=200)
    index = 0 if restored == "stock" else 1
    cuid = ("alice", "bob")[index]
    await net.stop(index)
    copy = tmp_path / "backup.db"
    back_up(net.nodes[index], copy)
    node = await net.restart(index)
    await pay(node, cuid, tally, [1] * LOST)
    await wait_for(lambda: agreed(net.nodes[0], "alice", net.nodes[1], "bob", tally, LOST))
    await net.stop(1 - index)
    node = await restore(net, index, copy)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(chits_module, "AnswersInFlight", FirstOnly)
        await net.restart(1 - index)
    return node, cuid, tally, index


@pytest.mark.parametrize("restored", ["stock", "foil"])
async def test_a_node_that_knows_its_chain_is_behind_refuses_its_users_payments(
        tmp_path, restored):
    """The restored node's user lost 150 payments of 1 (limit 200) and pays 100 more on the
    balance its node still holds, which knows it lacks 50 of the blocks: that payment was
    good and signed there and over the limit once the lost blocks came back, so the partner
    refused it for good (OVER_LIMIT) and the tally never settled (its repair sent it again,
    refused again: the restored side owing 250, the partner holding 150). It is refused
    (CHAIN_BEHIND, naming the blocks it lacks) and changes nothing; once caught up the node
    refuses it as over the limit itself, and a payment that fits settles."""
    async with network(tmp_path, n=2) as net:
        node, cuid, tally, index = await restored_behind(net, tmp_path, restored)
        partner = net.nodes[1 - index]

        async def shown() -> dict:
            return (await rpc(node, "tally.show", cuid=cuid, tally=tally))["chain"]

        await wait_for(lambda: chain_of(node, cuid, tally)[3] == -100)
        assert (await shown())["missing"] == LOST - 100
        before = node.db.read_one("SELECT count(*) FROM chits")[0]
        error = await refused(node, "chit.pay", cuid=cuid, tally=tally, units=100)
        assert error.reason == "CHAIN_BEHIND"
        assert error.message == (
            f"CHAIN_BEHIND: tally {tally}: this node lacks 50 blocks its partner confirmed "
            "(restored from a backup?), so the balance it holds (-100) may not be the "
            "partner's: its user pays again once it has them (tally.show chain.missing)")
        assert node.db.read_one("SELECT count(*) FROM chits")[0] == before
        assert chain_of(node, cuid, tally)[3] == -100
        invoice = await rpc(partner, "chit.invoice", cuid=("alice", "bob")[1 - index],
                            tally=tally, units=10)
        await wait_for(lambda: node.db.read_one(
            "SELECT count(*) FROM chits WHERE uuid = ?", (invoice["chit"],))[0])
        error = await refused(node, "chit.accept", cuid=cuid, chit=invoice["chit"])
        assert error.reason == "CHAIN_BEHIND"  # paying an invoice is a payment

        partner = await net.restart(1 - index)  # answers every request now
        a, b = net.nodes
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, LOST), timeout=30)
        assert (await shown())["missing"] == 0
        error = await refused(node, "chit.pay", cuid=cuid, tally=tally, units=100)
        assert error.reason == "OVER_LIMIT"
        await rpc(node, "chit.pay", cuid=cuid, tally=tally, units=50)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, LOST + 1))
        assert chain_of(node, cuid, tally)[3] == -200
        for holder, who in ((node, cuid), (partner, ("alice", "bob")[1 - index])):
            assert (await rpc(holder, "tally.show", cuid=who, tally=tally))["error"] is None


async def test_a_partners_refusal_stays_shown_while_the_chain_lacks_blocks(tmp_path,
                                                                          monkeypatch):
    """tally.show hid the partner's refusal of a chain message once the chain held nothing
    unordered and every block it held was confirmed, but a chain that lacks blocks the
    partner confirmed (chain.missing) is not settled: the refusal may be why it does not
    catch up (a CONFLICT, which needs a person, here bob's node refusing every chain message
    of alice's), and it is shown until the chain is settled."""
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await rpc(a, "users.add", cuid="alice")
        await rpc(b, "users.add", cuid="bob")
        tally = await open_tally(a, "alice", b, "bob", limit=10**6)  # alice: stock

        def conflict(*_: Any) -> None:
            raise Reject("CONFLICT", "block 1 contradicts the one this node confirmed")

        monkeypatch.setattr(b.credit.chits, "_on_chain", conflict)
        told = await send_raw(b, a, "alice", "chit", "chain",
                              {"cmd": "req", "index": 4, "tally": tally}, "bob")
        await processed(b, told)  # bob's node says it confirmed 3 blocks alice lacks

        def refused_shown() -> bool:
            row = a.db.read_one("SELECT error FROM tallies WHERE uuid = ?", (tally,))
            return row[0] is not None

        await wait_for(refused_shown)  # alice's request for them, refused
        shown = await rpc(a, "tally.show", cuid="alice", tally=tally)
        assert (shown["chain"]["index"], shown["chain"]["confirmed"],
                shown["chain"]["pending"], shown["chain"]["missing"]) == (0, 0, 0, 3)
        assert shown["error"] == ("chit chain: CONFLICT: block 1 contradicts the one this "
                                  "node confirmed")


async def test_a_lift_over_a_tally_whose_chain_is_behind_is_refused_before_any_promise(
        tmp_path):
    """The restored node's user pays its partner 100 by a lift, over the tally its node knows
    lacks 50 blocks: refused at once (CHAIN_BEHIND, as chit.pay), no lift recorded, no chit
    held; once caught up, a lift that fits is good."""
    async with network(tmp_path, n=3, clearinghouse=2) as net:
        node, cuid, tally, index = await restored_behind(net, tmp_path, "foil")
        partner, payee = net.nodes[1 - index], ("alice", "bob")[1 - index]
        await wait_for(lambda: chain_of(node, cuid, tally)[3] == -100)
        find = f"{payee}:{partner.agent_id}"
        error = await refused(node, "lift.pay", cuid=cuid, find=find, units=10)
        assert error.reason == "CHAIN_BEHIND"
        assert node.db.read_one("SELECT count(*) FROM lifts")[0] == 0
        assert node.db.read_one("SELECT count(*) FROM chits WHERE type = 'lift'")[0] == 0

        await net.restart(1 - index)  # answers every request now
        await wait_for(lambda: chain_of(node, cuid, tally)[3] == -LOST, timeout=30)
        started = await rpc(node, "lift.pay", cuid=cuid, find=find, units=10)
        done = await rpc(node, "lift.wait", lift=started["lift"], timeout_s=20)
        assert done["state"] == "good"
