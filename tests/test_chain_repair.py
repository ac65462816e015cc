"""When the chain repair resends at once: only to a partner whose channel opened since its last
look (it may have missed what was sent), not for every chain that became unsettled meanwhile."""

from __future__ import annotations

from agentd.services.credit import ledger as ledger_module
from agentd.services.credit.repair import ChainRepair
from tests.netfixture import network, wait_for
from tests.test_credit_service import open_tally, rpc, users


async def test_a_chain_unsettled_over_a_channel_open_all_along_waits_to_be_still(
        tmp_path, monkeypatch):
    """bob (the foil) pays alice; bob's node acks alice's chain ack without taking it, so his
    chain stays unsettled while nothing waits in his outbox and the channel stays open. The
    repair leaves it until it has been still for a while (here a minute); once the channel
    closes and opens again, it resends at once. Before, a chain that became unsettled between
    two looks counted as if its partner's channel had just opened, and was resent at the next
    look (a second later), whatever its pace."""
    monkeypatch.setattr(ledger_module, "RESYNC_QUIET_MS", 60_000)
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        tally = await open_tally(a, "alice", b, "bob")
        repair = b.credit.repair

        async def silent() -> int:
            return 0

        monkeypatch.setattr(repair, "resync", silent)  # only the test's looks below
        assert await ChainRepair.resync(repair) == 0  # a first look: nothing unsettled
        monkeypatch.setattr(b.credit.chits, "_on_chain", lambda tx, holding, obj: None)
        await rpc(b, "chit.pay", cuid="bob", tally=tally, units=5)

        def unsettled() -> bool:  # and nothing for alice in the outbox, acked rows deleted
            return b.db.read_one("SELECT count(*) FROM outbox")[0] == 0 and b.db.read_one(
                "SELECT chain_conf < chain_length FROM tallies WHERE cuid = 'bob'")[0] == 1

        await wait_for(unsettled)
        assert await ChainRepair.resync(repair) == 0
        for channel in b.peers.channels.get(a.agent_id, []):
            channel.close("test")
        await wait_for(lambda: not b.connected(a.agent_id))
        await rpc(b, "peers.ping", agent=a.agent_id)  # a channel again (its row goes once acked)
        await wait_for(lambda: b.db.read_one("SELECT count(*) FROM outbox")[0] == 0)
        assert b.connected(a.agent_id)
        assert await ChainRepair.resync(repair) == 1
