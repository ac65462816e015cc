"""A node restored from a backup whose partner stops sending the blocks it lacks, while its
users' payments on the tally are refused ``CHAIN_BEHIND``, gives the claim up after
``ASKS`` repairs (``protocol.chain.give_up``) and settles, but takes its users' payments
again only once the chain grows (real nodes: loopback, Noise, SQLite). README: Restoring a
node from a backup."""

from __future__ import annotations

import pytest

from agentd.services.credit import ledger, repair
from tests.netfixture import network, wait_for
from tests.test_credit_service import agreed, chain_of, refused, rpc
from tests.test_restore_behind import LOST, restored_behind


@pytest.mark.parametrize("restored", ["stock", "foil"])
async def test_a_node_that_gave_up_the_blocks_it_lacks_pays_again_once_its_chain_grows(
        tmp_path, monkeypatch, caplog, restored):
    """The restored node took 100 of the 150 blocks it lost, and its partner's node answers
    no further request: payments are refused CHAIN_BEHIND; after ASKS (2 here) repairs it
    gives up and warns once, and payments are still refused (its balance leaves 50 blocks
    out, and one of 100 would pass the limit of 200 once they count: it took it, and the
    partner refused it for good). Once the partner's node answers again, the chain grows,
    the blocks come back and a payment that fits is taken."""
    monkeypatch.setattr(ledger, "ASKS", 2)
    monkeypatch.setattr(repair, "ASKS", 2)
    monkeypatch.setattr(repair, "RESYNC_QUIET_MS", 50)
    async with network(tmp_path, n=2) as net:
        node, cuid, tally, index = await restored_behind(net, tmp_path, restored)

        def missing() -> int:
            """the restored node's tally.show chain.missing"""
            ahead, length, conf = node.db.read_one(
                "SELECT chain_ahead, chain_length, chain_conf FROM tallies"
                " WHERE uuid = ? AND cuid = ?", (tally, cuid))
            return max(ahead - (length if restored == "stock" else conf), 0)

        await wait_for(lambda: chain_of(node, cuid, tally)[3] == -100)
        if missing():  # not given up yet: refused
            error = await refused(node, "chit.pay", cuid=cuid, tally=tally, units=100)
            assert error.reason == "CHAIN_BEHIND" and "once it has them" in error.message
        def warned() -> list[str]:
            """the give-up's warning (logged once its commit is done: after the row shows)"""
            return [record.getMessage() for record in caplog.records
                    if "sent none when asked 2 times" in record.getMessage()]

        await wait_for(lambda: missing() == 0 and warned(), timeout=30)
        lines = warned()
        assert len(lines) == 1
        assert lines[0].endswith("its users' payments on the tally wait for that block "
                                  "(CHAIN_BEHIND): the balance leaves them out")
        error = await refused(node, "chit.pay", cuid=cuid, tally=tally, units=100)
        assert error.reason == "CHAIN_BEHIND" and "gave up asking" in error.message
        await net.restart(1 - index)  # answers every request now
        await rpc(node, "peers.ping", agent=net.nodes[1 - index].agent_id)
        a, b = net.nodes
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, LOST), timeout=30)
        error = await refused(node, "chit.pay", cuid=cuid, tally=tally, units=100)
        assert error.reason == "OVER_LIMIT"  # the balance counts all 150 again
        await rpc(node, "chit.pay", cuid=cuid, tally=tally, units=50)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, LOST + 1))
