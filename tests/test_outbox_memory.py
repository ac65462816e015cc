"""A peer that is away, or slower than our users, costs rows, not memory: the pump holds at
most ``HOLD`` durable messages for it (and ``WINDOW`` in flight) and reads the rest back from
the outbox in commit order, after a restart too."""

from __future__ import annotations

import trio

from agentd.runtime import outbox as pump_module
from agentd.runtime.node import Node
from agentd.services.ping import PingService
from protocol import expiry
from protocol.keys import ChipAddress, parse_hostport
from protocol.messages import Send
from tests.netfixture import network, wait_for

HOLD, WINDOW = 16, 8


def to(node: Node) -> ChipAddress:
    host, port = parse_hostport(node.listen_address)
    return ChipAddress(agent=node.agent_id, host=host, port=port)


def notes(sender: Node, to: Node, count: int, pad: int = 0) -> list[bytes]:
    """``count`` one-way messages to ``to``'s agent (with ``pad`` bytes of text each), in one
    transaction (run it with ``transact``)."""
    host, port = parse_hostport(to.listen_address)
    address = ChipAddress(agent=to.agent_id, host=host, port=port)
    return lambda tx: [tx.send(Send(address, "node", "note", {"n": n, "pad": "x" * pad}))
                       for n in range(count)]


def received(node: Node, ids: list[bytes]) -> set[bytes]:
    """Which of ``ids`` the node took."""
    return {row[0] for row in node.db.read("SELECT id FROM inbox")} & set(ids)


async def test_a_peer_away_costs_rows_not_memory_and_gets_everything_in_order(
        tmp_path, monkeypatch):
    monkeypatch.setattr(pump_module, "HOLD", HOLD)
    monkeypatch.setattr(pump_module, "WINDOW", WINDOW)
    taken: list[int] = []  # the notes' numbers, in the order the receiver commits them
    handle = PingService.handle

    def recording(service, tx, envelope):
        handle(service, tx, envelope)
        if envelope.action == "note":
            tx.after_commit(lambda: taken.append(envelope.object["n"]))

    monkeypatch.setattr(PingService, "handle", recording)
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await net.stop(1)  # b is away
        ids = await a.transact(notes(a, b, 100))
        assert len(a.pump.live) == HOLD and a.pump.depth == 100  # the rest wait in their rows
        a = await net.restart(0)  # a restart reads the first HOLD rows, not the table
        await wait_for(lambda: len(a.pump.live) == HOLD)
        assert a.pump.depth == 100

        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, len(a.pump.live))
                await trio.sleep(0.002)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            b = await net.restart(1)
            await wait_for(lambda: a.pump.depth == 0, timeout=20)
            nursery.cancel_scope.cancel()
        assert most <= HOLD + WINDOW
        assert received(b, ids) == set(ids)
        assert taken == list(range(100))  # every one, once, in the order they were committed
        assert b.counters.duplicates == 0
        assert not a.pump._spilled  # caught up: new messages are held again
        more = await a.transact(notes(a, b, 5))
        await wait_for(lambda: received(b, more) == set(more))
        await wait_for(lambda: a.pump.depth == 0)
        await wait_for(lambda: a.db.read_one("SELECT count(*) FROM outbox")[0] == 0)


async def test_big_messages_are_held_by_their_bytes(tmp_path, monkeypatch):
    """The same bound in bytes: messages of ~2 KB against ``HOLD_BYTES`` of 8 KB."""
    monkeypatch.setattr(pump_module, "HOLD_BYTES", 8_000)
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await net.stop(1)
        ids = await a.transact(notes(a, b, 40, pad=2_000))
        assert 4 <= len(a.pump.live) <= 5 and a.pump.depth == 40  # 8 KB, and the one past it
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, sum(item.size for item in a.pump.live.values()))
                await trio.sleep(0.002)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            b = await net.restart(1)
            await wait_for(lambda: received(b, ids) == set(ids), timeout=20)
            nursery.cancel_scope.cancel()
        assert most <= 8_000 + 2_200  # never more than the budget and one message
        await wait_for(lambda: a.pump.depth == 0 and not a.pump._held)


async def test_messages_waiting_in_their_rows_still_expire(tmp_path, monkeypatch):
    """A partner away keeps 20 notes (which never expire) waiting, 16 in memory, and behind
    them 10 pings that expire in half a second: they go from their rows on time, unread."""
    monkeypatch.setattr(pump_module, "HOLD", HOLD)
    monkeypatch.setattr(pump_module, "ROW_SWEEP_S", 0.2)
    monkeypatch.setitem(expiry.EXPIRY_MS, ("node", "ping"), 500)
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await net.stop(1)
        kept = await a.transact(notes(a, b, 20))
        pings = await a.transact(
            lambda tx: [tx.send(Send(to(b), "node", "ping", {"seq": n})) for n in range(10)])
        assert a.pump.depth == 30 and len(a.pump.live) == HOLD
        await wait_for(lambda: a.counters.outbox_expired == 10, timeout=5)
        assert a.pump.depth == 20
        assert a.db.read_one("SELECT count(*) FROM outbox WHERE action = 'ping'")[0] == 0
        b = await net.restart(1)
        await wait_for(lambda: received(b, kept) == set(kept), timeout=20)
        assert received(b, pings) == set()
        await wait_for(lambda: a.pump.depth == 0)
