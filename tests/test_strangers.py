"""Issue 12, item 1: strangers neither fill our outbox nor steer our dialler.

A rogue peer (fresh key, valid handshake) floods pings it never acks and claims a "listen"
address that is really a bait listener; more rogues each send one ping and leave. The node
answers on the channels they opened, never dials the claimed address, does not store them,
and lets replies nobody takes expire out of the outbox.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import trio

from agentd.runtime import dispatch
from agentd.runtime.outbox import EPHEMERAL_QUEUE, WINDOW
from agentd.runtime.stranger_replies import STRANGER_QUEUE
from agentd.runtime.strangers import Strangers
from protocol.codec import pack
from protocol.envelope import Ack, Envelope
from protocol.expiry import EXPIRY_MS
from protocol.keys import SigningKey
from tests.clihelpers import init, running
from tests.netfixture import network, wait_for
from tests.rogue import Rogue, getinfo, rpc, wait_until


class Bait:
    """A TCP listener that counts the connections a node opens to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def test_replies_to_strangers_never_dial_their_claimed_address(tmp_path: Path) -> None:
    info = init(tmp_path, "n1")
    bait = Bait()
    claimed = f"127.0.0.1:{bait.port}"
    pings = 200

    async def attack() -> list:
        flood = await Rogue.join(info["port"], info["agent"], listen=claimed)
        await flood.send_frames([pack(flood.envelope(info["agent"],
                                                     listen=("127.0.0.1", bait.port)))
                                 for _ in range(pings)])
        pongs: list = []
        with trio.fail_after(20):
            while len(pongs) < pings:  # replies come back on the channel it opened
                frames = await flood.receive()
                assert frames, "the node closed the flooding channel"
                pongs += [f for f in frames if isinstance(f, Envelope) and f.action == "pong"]
        for _ in range(30):  # one ping each, then gone before the pong can be sent back
            rogue = await Rogue.join(info["port"], info["agent"], listen=claimed)
            await rogue.send_frames([pack(rogue.envelope(info["agent"],
                                                         listen=("127.0.0.1", bait.port)))])
            await rogue.aclose()
        await flood.aclose()
        return pongs

    with running({"n1": info}) as processes:
        pongs = trio.run(attack)
        assert len(pongs) >= pings
        config = info["config"]
        wait_until(lambda: (c := getinfo(config)["counters"])["messages_processed"] >= pings + 30
                   and c["no_route"] > 0, "the pongs of the departed strangers to be tried")
        assert bait.accepted == 0  # the claimed address was never dialled
        assert rpc(config, "peers.list") == []  # strangers are not stored as peers
        counters = getinfo(config)["counters"]
        assert counters["strangers"] == 31
        assert processes["n1"].poll() is None
    bait.sock.close()


async def test_replies_nobody_takes_expire_out_of_the_outbox(tmp_path, monkeypatch):
    monkeypatch.setitem(EXPIRY_MS, ("node", "pong"), 500)
    async with network(tmp_path, n=1) as net:
        node = net.nodes[0]
        rogue = await Rogue.join(node.port, node.agent_id, listen="127.0.0.1:9")
        await rogue.send_frames([pack(rogue.envelope(node.agent_id)) for _ in range(100)])
        await wait_for(lambda: node.counters.messages_processed == 100)
        await rogue.aclose()  # it never acks: its pongs wait for a channel that never comes
        await wait_for(lambda: node.pump.depth == 0, timeout=20)
        assert node.counters.outbox_expired == 100
        await wait_for(lambda: node.db.read_one("SELECT count(*) FROM outbox")[0] == 0)


async def test_a_stranger_that_never_acks_holds_a_bounded_queue_of_replies(tmp_path):
    async with network(tmp_path, n=1) as net:
        node = net.nodes[0]
        rogue = await Rogue.join(node.port, node.agent_id)
        pings = WINDOW + STRANGER_QUEUE + 300
        await rogue.send_frames([pack(rogue.envelope(node.agent_id)) for _ in range(pings)])
        await wait_for(lambda: node.counters.messages_processed == pings, timeout=30)
        # at most a window of pongs is out unacked and STRANGER_QUEUE wait: the rest (and
        # any unacked pong that comes back for a retry) are dropped, rows included
        counters = node.counters
        await wait_for(lambda: node.pump.depth + counters.outbox_dropped == pings
                       and node.pump.depth <= WINDOW + STRANGER_QUEUE)
        assert counters.outbox_dropped >= 300
        await wait_for(lambda: node.db.read_one("SELECT count(*) FROM outbox")[0]
                       == node.pump.depth)
        await rogue.aclose()


async def test_strangers_are_remembered_in_a_bounded_table(tmp_path):
    async with network(tmp_path, n=1) as net:
        node = net.nodes[0]
        node.strangers = Strangers(limit=5)
        for _ in range(12):
            rogue = await Rogue.join(node.port, node.agent_id, listen="127.0.0.1:9")
            await rogue.send_frames([pack(rogue.envelope(node.agent_id))])
            acks: list = []
            while not acks:
                acks = [f for f in await rogue.receive() if isinstance(f, Ack)]
            await rogue.aclose()
        assert len(node.strangers) == 5 and node.strangers.evicted == 7
        assert node.db.read_one("SELECT count(*) FROM peers")[0] == 0
        assert node.address_of(rogue.agent) is None


async def test_a_stranger_the_node_comes_to_know_leaves_the_strangers_table(tmp_path):
    """A stranger whose tally opens (or a user adds) is a known peer: getinfo counted it
    among the strangers still, and peers.list showed it learned."""
    async with network(tmp_path, n=1) as net:
        node = net.nodes[0]
        rogue = await Rogue.join(node.port, node.agent_id, listen="127.0.0.1:9")
        await rogue.send_frames([pack(rogue.envelope(node.agent_id))])
        await wait_for(lambda: node.counters.messages_processed == 1)
        assert rogue.agent in node.strangers
        node.learn_peer(rogue.agent, "127.0.0.1:9")  # what a tally opening does
        assert rogue.agent not in node.strangers and node.is_known(rogue.agent)
        assert (await node.rpc.call("getinfo", {}))["counters"]["strangers"] == 0
        await rogue.aclose()


async def test_route_messages_for_a_peer_far_behind_are_not_queued(tmp_path):
    """A peer that already has ``EPHEMERAL_QUEUE`` messages waiting (unreachable, or slow)
    gets no more route messages: a partner flooding searches through us cannot make us hold
    their fan-out. Durable messages still queue: nothing we committed is dropped."""
    async with network(tmp_path, n=1) as net:
        node = net.nodes[0]
        away = SigningKey.generate().agent_id  # no address: every message waits

        def envelope(target: str) -> dict:
            return {"v": 1, "id": os.urandom(16), "target": target, "action": "query",
                    "object": {}, "to": {"agent": away}, "from": {"agent": node.agent_id}}

        for _ in range(EPHEMERAL_QUEUE + 5):
            item = envelope("route")
            node.pump.add(item["id"], away, None, item, 0, durable=False)
        durable = envelope("chit")
        node.pump.add(durable["id"], away, None, durable, 0)
        queue = node.pump._queues[away]
        assert len(queue) == EPHEMERAL_QUEUE + 1 and queue[-1].id == durable["id"]
        assert node.counters.outbox_dropped == 5
        assert node.pump.depth == EPHEMERAL_QUEUE + 1


async def test_a_stranger_answered_once_leaves_no_sender_behind(tmp_path, monkeypatch):
    """Each peer we send to has a sender task (and a queue, a window, a round trip): once it
    has had nothing to send or await for a while, all of it goes, so strangers that ping once
    and leave do not each keep a task for the life of the node; a known peer's round trip
    stays."""
    from agentd.runtime import outbox as pump

    monkeypatch.setattr(pump, "SENDER_IDLE_S", 0.3)
    async with network(tmp_path, n=2) as net:
        node, friend = net.nodes
        await node.rpc.call("peers.ping", {"agent": friend.agent_id})
        for _ in range(20):
            rogue = await Rogue.join(node.port, node.agent_id)
            await rogue.send_frames([pack(rogue.envelope(node.agent_id))])
            pongs: list = []
            while not pongs:
                pongs = [f for f in await rogue.receive() if isinstance(f, Envelope)]
            await rogue.send_frames([pack({"v": 1, "ack": pong.id}) for pong in pongs])
            await wait_for(lambda: not node.pump.live)
            await rogue.aclose()
        await wait_for(lambda: not node.pump._queues, timeout=5)
        assert not node.pump._unacked and not node.pump._wake
        assert set(node.pump.round_trips) <= {friend.agent_id}
        assert sum(task.name.endswith("_sender") for task in _tasks()) == 0
        await node.rpc.call("peers.ping", {"agent": friend.agent_id})  # a new sender starts


def _tasks() -> list:
    """Every task of this Trio run."""
    found, todo = [], [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        found.append(task)
        todo += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return found


async def test_strangers_frames_are_decoded_only_within_one_budget(tmp_path, monkeypatch):
    """Eight strangers each send frames of ~300,000 empty lists (a frame decodes into ~70
    times its size in Python objects): a frame is decoded only once its bytes fit the
    budget of strangers' frames in hand (max_frame, over all of them), every one is
    answered, and the budget is whole again afterwards."""
    async with network(tmp_path, n=1) as net:
        node = net.nodes[0]
        budget = node.decoding
        seen: list[tuple[int, int]] = []  # (frame size, budget in use) as each is decoded
        parse = dispatch.parse_frame

        def parse_and_note(body: bytes):
            seen.append((len(body), budget.used))
            return parse(body)

        monkeypatch.setattr(dispatch, "parse_frame", parse_and_note)
        rogues = [await Rogue.join(node.port, node.agent_id) for _ in range(8)]
        bombs = [[pack(rogue.envelope(node.agent_id, "ping", {"x": [[]] * 300_000}))
                  for _ in range(2)] for rogue in rogues]
        async with trio.open_nursery() as nursery:
            for rogue, two in zip(rogues, bombs, strict=True):
                nursery.start_soon(rogue.send_frames, two)
        counters = node.counters
        await wait_for(lambda: counters.messages_processed == 16, timeout=60)
        assert len(seen) == 16
        assert all(size <= used <= budget.limit for size, used in seen)
        assert max(used for _, used in seen) > len(bombs[0][0])  # two at once where they fit
        await wait_for(lambda: budget.used == 0)
        for rogue in rogues:
            await rogue.aclose()
