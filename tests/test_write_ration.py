"""What strangers make a node write is rationed (``WriteRation``): each stranger, and all of
them together, get a byte rate with a burst; past it their messages wait, and nothing is lost.
What a message made the node write beyond its frame (a referee's decisions, a batch's entries)
is paid for after it."""

from __future__ import annotations

import os
import sqlite3
import uuid

import pytest
import trio

from agentd.bench.rogue import Rogue
from agentd.runtime.limits import MAX_WAIT, MESSAGE_COST, WriteRation
from protocol import lift as lf
from protocol.codec import pack
from protocol.envelope import Ack
from protocol.keys import SigningKey
from tests.netfixture import network, wait_for
from tests.test_credit_service import agreed, open_tally, rpc


def test_a_burst_passes_then_each_charge_waits_its_cost_at_the_rate():
    ration = WriteRation(rate=1000, burst=3000, all_rate=10**9, all_burst=10**9)
    assert [ration.charge("a", 1000, now=10.0) for _ in range(3)] == [0, 0, 0]
    assert ration.charge("a", 1000, now=10.0) == pytest.approx(1.0)
    assert ration.charge("a", 500, now=10.0) == pytest.approx(1.5)
    # time refills the allowance: 4 s later the 4.5 s charged are 0.5 s ahead, within the burst
    assert ration.charge("a", 1000, now=14.0) == 0
    assert ration.charge("b", 3000, now=14.0) == 0  # another stranger has its own allowance


def test_all_strangers_share_one_allowance():
    ration = WriteRation(rate=1000, burst=3000, all_rate=1000, all_burst=5000)
    assert ration.charge("a", 3000, now=0.0) == 0
    assert ration.charge("b", 2000, now=0.0) == 0
    # c is within its own allowance, but all together are 2 s past theirs
    assert ration.charge("c", 2000, now=0.0) == pytest.approx(2.0)
    assert ration.charge("d", 1000, now=7.0) == 0  # 7 s later it has all refilled


def test_the_agents_tracked_are_bounded_and_full_ones_forgotten():
    ration = WriteRation(rate=1000, burst=1000, all_rate=10**9, all_burst=10**9)
    for i in range(WriteRation.MAX_TRACKED + 500):
        ration.charge(f"agent{i}", 2000, now=0.0)  # each now a second past its burst
    assert len(ration) == WriteRation.MAX_TRACKED
    ration.charge("late", 1, now=100.0)  # everyone else's allowance is full again by now
    assert len(ration) == 1


async def test_a_strangers_flood_is_slowed_to_its_rate_and_nothing_is_lost(tmp_path):
    """A stranger's 100 pings past its burst wait at its rate (the node's channel reads
    nothing meanwhile); every one is still processed and acked. A peer the node knows is
    never rationed."""
    rate, burst = 50 << 10, 16 << 10
    async with network(tmp_path, n=2, stranger_write_rate=rate,
                       stranger_write_burst=burst) as net:
        node, peer = net.nodes
        rogue = await Rogue.join(node.port, node.agent_id)
        bodies = [pack(rogue.envelope(node.agent_id)) for _ in range(100)]
        charged = sum(len(body) + MESSAGE_COST for body in bodies)
        started = trio.current_time()
        await rogue.send_frames(bodies)
        acked: set[bytes] = set()
        while len(acked) < len(bodies):
            acked |= {frame.ack for frame in await rogue.receive() if isinstance(frame, Ack)}
        # the rationing's own arithmetic: it cannot have taken less than this
        assert trio.current_time() - started >= (charged - burst) / rate * 0.99
        assert node.counters.rationed > 0
        assert node.counters.messages_processed >= len(bodies)
        rationed = node.counters.rationed
        result = await peer.rpc.call("peers.ping", {"agent": node.agent_id, "count": 20})
        assert len(result["rtt_ms"]) == 20
        assert node.counters.rationed == rationed
        info = await node.rpc.call("getinfo", {})
        assert info["counters"]["rationed"] == rationed
        await rogue.aclose()


async def test_a_tally_partner_met_by_ticket_is_known_on_both_sides(tmp_path):
    """Two nodes that are not each other's peers open a tally by ticket: from then on each
    knows the other (the inviter from the subject's certificate, also after a restart with
    the peer row gone, as in a database from before), so chits are never rationed; before
    it opens, the subject's messages to the inviter are a stranger's."""
    tiny = {"stranger_write_rate": 1024, "stranger_write_burst": 1024}
    async with network(tmp_path, n=0) as net:
        inviter = await net.start("inviter", SigningKey.generate(), **tiny)
        subject = await net.start("subject", SigningKey.generate(), **tiny)
        net.nodes.extend([inviter, subject])
        assert not inviter.is_known(subject.agent_id)
        await rpc(inviter, "users.add", cuid="ann")
        await rpc(subject, "users.add", cuid="bob")
        tally = await open_tally(inviter, "ann", subject, "bob")
        await wait_for(lambda: inviter.is_known(subject.agent_id))
        assert subject.is_known(inviter.agent_id)
        before = inviter.counters.rationed  # the ticket and the accept came from a stranger
        for _ in range(20):
            await rpc(subject, "chit.pay", cuid="bob", tally=tally, units=10)
        await wait_for(lambda: agreed(inviter, "ann", subject, "bob", tally, 20))
        assert inviter.counters.rationed == before
        assert subject.counters.rationed == 0

        await net.stop(0)
        with sqlite3.connect(inviter.config.db_path) as conn:
            conn.execute("DELETE FROM peers")
        inviter = net.nodes[0] = await net.start("inviter", inviter.key, inviter.port, **tiny)
        assert inviter.is_known(subject.agent_id)
        assert inviter.address_of(subject.agent_id) == subject.listen_address


def test_a_wait_past_max_wait_is_not_booked():
    ration = WriteRation(rate=10**9, burst=10**9, all_rate=1000, all_burst=1000)
    assert ration.charge("a", 1000 + 1000 * int(MAX_WAIT), now=0.0) == pytest.approx(MAX_WAIT)
    assert ration.charge("b", 1000, now=0.0) is None  # 31 s: refused, and nothing charged
    assert ration.charge("b", 1000, now=1.0) == pytest.approx(MAX_WAIT)


async def test_a_message_that_would_wait_past_max_wait_closes_the_strangers_channel(tmp_path):
    """At 1 KiB/s for all strangers, a 40 KB message would wait ~40 s: it is not taken (not
    processed, not acked: its sender may send it again later) and its channel is closed."""
    async with network(tmp_path, n=2, all_strangers_write_rate=1024,
                       all_strangers_write_burst=1024) as net:
        node, peer = net.nodes
        rogue = await Rogue.join(node.port, node.agent_id)
        processed = node.counters.messages_processed
        await rogue.send_frames([pack(rogue.envelope(node.agent_id, obj={"pad": "x" * 40_000}))])
        assert await rogue.closed_by_node()
        await wait_for(lambda: node.counters.rejected["write_ration"] == 1)
        assert node.counters.messages_processed == processed
        result = await peer.rpc.call("peers.ping", {"agent": node.agent_id})
        assert len(result["rtt_ms"]) == 1


async def test_a_strangers_route_asks_are_rationed_too(tmp_path):
    """A route ask writes nothing, but answering one reads the user's tallies: a stranger's
    asks draw on its allowance like any message of its, and each is still answered."""
    rate, burst = 50 << 10, 8 << 10
    async with network(tmp_path, n=1, stranger_write_rate=rate,
                       stranger_write_burst=burst) as net:
        node = net.nodes[0]
        await rpc(node, "users.add", cuid="dan")
        rogue = await Rogue.join(node.port, node.agent_id)
        asks = []
        for _ in range(40):
            ask = rogue.envelope(node.agent_id, "ask", {
                "query": str(uuid.uuid4()), "kind": "linear", "units": 1,
                "salt": os.urandom(16)}, target="route")
            ask["to"]["cuid"], ask["from"]["cuid"] = "dan", "m"
            asks.append(ask)
        await rogue.send_frames([pack(ask) for ask in asks])
        acked: set[bytes] = set()
        answers = 0
        while len(acked) < len(asks) or answers < len(asks):
            for frame in await rogue.receive():
                if isinstance(frame, Ack):
                    acked.add(frame.ack)
                elif frame.action == "hops":
                    answers += 1
        assert acked == {ask["id"] for ask in asks}
        assert node.counters.rationed > 0
        await rogue.aclose()


def test_a_debit_is_waited_for_and_booked_at_most_max_wait_ahead():
    """What a message made us write beyond its charge, known once it ran, is booked after
    it: the next message waits for it, and past ``MAX_WAIT`` is refused, as a charge is."""
    ration = WriteRation(rate=1000, burst=1000, all_rate=10**9, all_burst=10**9)
    assert ration.charge("a", 1000, now=0.0) == 0
    ration.debit("a", 5000, now=0.0)
    assert ration.charge("a", 1000, now=0.0) == pytest.approx(6.0)  # 1 + 5 + 1 s - burst
    ration.debit("a", 10**9, now=0.0)  # a day of it: booked MAX_WAIT ahead, no further
    assert ration.charge("a", 1000, now=0.0) is None
    assert ration.charge("a", 1000, now=2.0) == pytest.approx(MAX_WAIT - 1)


async def stranger_pays_for(node, rogue: Rogue, messages: list[dict]) -> None:
    """``rogue``'s messages are taken at once, within its burst; they made ``node`` write far
    more than that, so the next one, a ping, would wait more than ``MAX_WAIT``: its channel
    is closed and the ping is not taken."""
    await rogue.send_frames([pack(message) for message in messages])
    acked: set[bytes] = set()
    while len(acked) < len(messages):
        acked |= {frame.ack for frame in await rogue.receive() if isinstance(frame, Ack)}
    assert node.counters.rationed == 0
    processed = node.counters.messages_processed
    await rogue.send_frames([pack(rogue.envelope(node.agent_id))])
    assert await rogue.closed_by_node(timeout=5)
    await wait_for(lambda: node.counters.rejected["write_ration"] == 1)
    assert node.counters.messages_processed == processed


async def test_a_stranger_pays_for_the_decisions_its_cancel_makes_a_referee_send(tmp_path):
    """Anyone can cancel a record it made up at a referee, naming on its path nodes the
    referee knows: the referee sends its decision, record and all, to each. Three cancels
    (~5 KB each) naming 31 such nodes made it queue 0.5 MB; the stranger pays for that."""
    async with network(tmp_path, n=1, clearinghouse=0, stranger_write_rate=4096,
                       stranger_write_burst=128 << 10) as net:
        house = net.nodes[0]
        known = [SigningKey.generate().agent_id for _ in range(31)]
        for agent in known:
            house.learn_peer(agent, "127.0.0.1:9")
        rogue = await Rogue.join(house.port, house.agent_id)
        cancels = []
        for _ in range(3):
            path = [{"cuid": "u", "agent": agent, "tally": str(uuid.uuid4())} for agent in known]
            record = lf.make_record(
                lift_uuid=str(uuid.uuid4()), kind="linear", units=1, memo="", life_ms=60_000,
                path=[*path, {"cuid": "me", "agent": rogue.agent, "tally": None}],
                referee=house.own_address(), date_ms=house.clock.now_ms(),
                key=SigningKey.generate())
            cancel = rogue.envelope(house.agent_id, "cancel", {"record": record, "reason": "x"},
                                    target="lift")
            cancel["from"]["cuid"] = "me"
            cancels.append(cancel)
        await stranger_pays_for(house, rogue, cancels)
        assert house.db.read_one("SELECT count(*) FROM outbox WHERE action = 'decision' AND"
                                 " peer != ?", (rogue.agent,))[0] == 3 * 31


async def test_a_stranger_pays_for_each_entry_of_its_batch(tmp_path):
    """A batch of 256 entries to new processes (~32 KB) writes what 256 logs do (~1.4 KB an
    entry: the process, its owner, the entry): it is charged as 256 logs would be."""
    async with network(tmp_path, n=1, clearinghouse=0, stranger_write_rate=4096,
                       stranger_write_burst=128 << 10) as net:
        house = net.nodes[0]
        rogue = await Rogue.join(house.port, house.agent_id)
        entries = [{"pid": str(uuid.uuid4()), "header": {}, "payload_sha256": "0" * 64,
                    "payload_type": "t"} for _ in range(256)]
        batch = rogue.envelope(house.agent_id, "log_batch", {"entries": entries}, target="ch")
        await stranger_pays_for(house, rogue, [batch])
        assert house.db.read_one("SELECT count(*) FROM ch_processes")[0] == 256
