"""Integration: real nodes on loopback with Noise and SQLite, in one Trio process."""

from __future__ import annotations

import itertools
import sqlite3

import pytest
import trio

from agentd.rpc import RpcError
from agentd.runtime import outgoing
from protocol.keys import ChipAddress
from protocol.messages import Send
from tests.netfixture import dial_failures, network, wait_for


async def test_five_nodes_ping_each_other(tmp_path):
    async with network(tmp_path, n=5) as net:
        for a, b in itertools.permutations(net.nodes, 2):
            result = await a.rpc.call("peers.ping", {"agent": b.agent_id, "count": 2})
            assert len(result["rtt_ms"]) == 2
            assert all(rtt > 0 for rtt in result["rtt_ms"])
        for node in net.nodes:
            await wait_for(lambda node=node: node.pump.depth == 0)  # the last pongs' acks
            info = await node.rpc.call("getinfo", {})
            assert info["counters"]["outbox_depth"] == 0
            assert info["counters"]["messages_processed"] == 16  # 8 pings + 8 pongs
            peers = await node.rpc.call("peers.list", {})
            assert {p["agent"] for p in peers} == {m.agent_id for m in net.nodes} - {node.agent_id}



async def test_a_ping_count_out_of_range_is_refused_quoting_it(tmp_path):
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        for count in (0, 1001, -5):
            with pytest.raises(RpcError) as refused:
                await a.rpc.call("peers.ping", {"agent": b.agent_id, "count": count})
            assert refused.value.message == (
                f"peers.ping: count must be an integer from 1 to 1000, not {count}")
        assert a.counters.messages_processed == b.counters.messages_processed == 0

async def _queue_pings(node, to_node, count: int) -> list[bytes]:
    to = ChipAddress(agent=to_node.agent_id, host="127.0.0.1", port=to_node.port)

    return await node.transact(
        lambda tx: [tx.send(Send(to, "node", "ping", {"seq": i})) for i in range(count)])


def _inbox_ids(node) -> set[bytes]:
    return {row[0] for row in node.db.read("SELECT id FROM inbox")}


async def test_a_peer_whose_address_we_do_not_know_is_pinged_while_it_is_connected(tmp_path):
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        b._peer_addresses.pop(a.agent_id)  # b knows a only by the channel a opens
        with pytest.raises(RpcError, match=r"this node knows no address of it: peers.add"):
            await b.rpc.call("peers.ping", {"agent": a.agent_id})  # no channel yet
        await a.rpc.call("peers.ping", {"agent": b.agent_id})
        assert len((await b.rpc.call("peers.ping", {"agent": a.agent_id}))["rtt_ms"]) == 1


async def test_peer_restarted_mid_traffic_loses_nothing(tmp_path):
    async with network(tmp_path, n=2) as net:
        sender, receiver = net.nodes
        first = await _queue_pings(sender, receiver, 300)
        await wait_for(lambda: len(_inbox_ids(receiver)) > 0)
        receiver = await net.restart(1)  # mid-stream: some acked, some in flight
        second = await _queue_pings(sender, receiver, 300)
        sent = set(first) | set(second)

        def all_delivered():
            """every ping processed by the receiver and every pong by the sender"""
            return sent <= _inbox_ids(receiver) and sender.pump.depth == 0 \
                and receiver.pump.depth == 0 and len(_inbox_ids(sender)) == 600

        await wait_for(all_delivered, timeout=30)
        # exactly once: one inbox row per ping, and one pong queued per ping
        assert len(_inbox_ids(receiver)) == 600
        pongs = sender.db.read("SELECT count(*) FROM inbox")[0][0]
        assert pongs == 600
        # acked rows are deleted together, a moment later
        await wait_for(lambda: sender.db.read("SELECT count(*) FROM outbox")[0][0] == 0)


async def test_outbox_survives_a_peer_that_is_down(tmp_path):
    async with network(tmp_path, n=2) as net:
        sender, receiver = net.nodes
        await net.stop(1)
        failures = dial_failures(sender)
        ids = await _queue_pings(sender, receiver, 20)
        await wait_for(lambda: failures, timeout=10)  # the pump tried, and could not dial
        assert sender.pump.depth == 20
        receiver = await net.restart(1)
        await wait_for(lambda: set(ids) <= _inbox_ids(receiver), timeout=20)
        await wait_for(lambda: sender.pump.depth == 0, timeout=20)


async def test_message_to_own_agent_is_delivered_locally(tmp_path):
    async with network(tmp_path, n=1) as net:
        (node,) = net.nodes
        result = await node.rpc.call("peers.ping", {"agent": node.agent_id})
        assert len(result["rtt_ms"]) == 1
        assert node.counters.messages_processed == 2


async def test_a_bad_ping_says_what_is_wrong_with_it(tmp_path):
    """peers.ping said "agent is not an agent id: 'nonsense'", and of a bad count only the
    range: it now says what an agent id is and where to find one (a bad count:
    test_a_ping_count_out_of_range_is_refused_quoting_it)."""
    async with network(tmp_path, n=1) as net:
        (node,) = net.nodes
        with pytest.raises(RpcError) as bad_agent:
            await node.rpc.call("peers.ping", {"agent": "nonsense"})
        assert bad_agent.value.message == (
            "peers.ping: agent: agent id must be 43 base64url characters: 'nonsense' "
            "(peers.list shows the agent ids this node knows)")


async def test_outbox_is_reloaded_after_restart(tmp_path):
    async with network(tmp_path, n=2) as net:
        sender, receiver = net.nodes
        await net.stop(1)
        ids = await _queue_pings(sender, receiver, 5)
        sender = await net.restart(0)  # the rows are only in the sender's database now
        receiver = await net.restart(1)
        await wait_for(lambda: set(ids) <= _inbox_ids(receiver), timeout=20)


async def test_idle_inbound_channel_is_closed_and_redialled(tmp_path):
    async with network(tmp_path, n=2, idle_timeout=0.3) as net:
        a, b = net.nodes
        await a.rpc.call("peers.ping", {"agent": b.agent_id})
        assert b.peers.connected(a.agent_id)
        await wait_for(lambda: not b.peers.connected(a.agent_id), timeout=5)
        await wait_for(lambda: not a.peers.connected(b.agent_id), timeout=5)
        assert b.counters.rejected["idle"] == 0  # an idle close is orderly, not a rejection
        result = await a.rpc.call("peers.ping", {"agent": b.agent_id})
        assert len(result["rtt_ms"]) == 1
        assert a.counters.handshakes_ok == 2


async def test_a_message_whose_ack_is_lost_is_resent_and_processed_once(tmp_path, monkeypatch):
    monkeypatch.setattr(outgoing, "ACK_TIMEOUT_MIN", 0.2)  # resend soon after silence
    async with network(tmp_path, n=2) as net:
        sender, receiver = net.nodes
        settle = sender.dispatcher._settle
        lost: list[bytes] = []

        async def lose_first_ack(ack, from_agent):  # the ack never reaches the sender
            if not lost:
                lost.append(ack.ack)
                return
            await settle(ack, from_agent)

        monkeypatch.setattr(sender.dispatcher, "_settle", lose_first_ack)
        to = ChipAddress(agent=receiver.agent_id, host="127.0.0.1", port=receiver.port)
        message_id = await sender.transact(lambda tx: tx.send(Send(to, "node", "note", {})))
        await wait_for(lambda: sender.pump.depth == 0, timeout=20)  # acked the second time
        assert lost == [message_id]
        assert receiver.counters.messages_processed == 1  # processed once...
        assert receiver.counters.duplicates >= 1  # ...the resent copy only acked
        assert _inbox_ids(receiver) == {message_id}
        with trio.fail_after(10):  # the acked row is deleted with the next batch of deletes
            while sender.db.read_one("SELECT count(*) FROM outbox")[0]:
                await trio.sleep(0.01)


async def test_a_clean_stop_deletes_the_rows_of_messages_already_acked(tmp_path):
    """Acked rows are deleted a fraction of a second later, several in one commit; a stop in
    that fraction deletes them too, so the next start sends nothing again."""
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await a.rpc.call("peers.ping", {"agent": b.agent_id, "count": 5})
        path = a.config.db_path
        await net.stop(0)  # at once: within the flusher's wait
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


async def test_getinfo_says_when_the_last_database_failure_was(tmp_path, monkeypatch):
    """``last_db_error`` alone cannot tell an operator whether it is news: ``last_db_error_at``
    (ms since the epoch) says when, and both are null while nothing has failed."""
    async with network(tmp_path, n=1) as net:
        node = net.nodes[0]
        await node.rpc.call("users.add", {"cuid": "ann"})  # and the writes queued at start
        info = await node.rpc.call("getinfo", {})
        assert info["last_db_error"] is None and info["last_db_error_at"] is None
        node.config.db_path.unlink()  # a failure of ours: every write from now on fails
        before = node.clock.now_ms()
        with pytest.raises(RpcError, match="was deleted while the node ran"):
            await node.rpc.call("users.add", {"cuid": "bob"})  # -32014 DATABASE
        info = await node.rpc.call("getinfo", {})
        assert "was deleted while the node ran" in info["last_db_error"]
        assert before <= info["last_db_error_at"] <= node.clock.now_ms()
