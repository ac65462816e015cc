"""A hostile or broken peer costs one connection, never the node, and is counted by reason."""

from __future__ import annotations

import os
import socket
import struct

import pytest
import trio

from agentd.bench.rogue import Rogue
from agentd.runtime.transport import PIPELINE, Hello
from protocol.codec import pack, unpack
from protocol.envelope import Ack, parse_frame
from protocol.frames import FrameDecoder, encode_frame
from protocol.keys import SigningKey, agent_id_to_public, ed25519_public_to_x25519
from protocol.noise import HandshakeReader, NoiseSession, Role
from tests.netfixture import network, wait_for


class RawPeer:
    """A hand-driven client that can break the protocol at any step."""

    def __init__(self, stream: trio.SocketStream, key: SigningKey) -> None:
        self.stream = stream
        self.key = key
        self.session: NoiseSession | None = None
        self.decoder = FrameDecoder()

    @classmethod
    async def connect(cls, node, key: SigningKey | None = None) -> RawPeer:
        stream = await trio.open_tcp_stream("127.0.0.1", node.port)
        return cls(stream, key or SigningKey.generate())

    async def handshake(self, node, *, claim: str | None = None,
                        remote_static: bytes | None = None) -> bytes:
        static = remote_static or ed25519_public_to_x25519(agent_id_to_public(node.agent_id))
        self.session = NoiseSession(Role.INITIATOR, self.key.x25519_private(), static)
        hello = Hello(claim or self.key.agent_id, None, ())
        await self.stream.send_all(self.session.write_handshake(hello.encode()))
        reader = HandshakeReader()
        while True:
            data = await self.stream.receive_some(4096)
            if not data:
                return b""
            message, _ = reader.feed(data)
            if message is not None:
                return self.session.read_handshake(message)

    async def send_plain(self, plaintext: bytes) -> None:
        assert self.session is not None
        await self.stream.send_all(self.session.encrypt(plaintext))

    async def receive_frames(self) -> list:
        assert self.session is not None
        with trio.fail_after(5):
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    return []
                frames = self.decoder.feed(self.session.decrypt(data))
                if frames:
                    return [parse_frame(f) for f in frames]

    async def closed_by_node(self) -> bool:
        with trio.fail_after(5):
            try:
                while await self.stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass
        return True


def envelope(sender: SigningKey, node, **overrides):
    value = {
        "v": 1, "id": os.urandom(16), "target": "node", "action": "ping", "object": {"seq": 1},
        "try": 1, "last": 1, "to": {"agent": node.agent_id}, "from": {"agent": sender.agent_id},
    }
    value.update(overrides)
    return {k: v for k, v in value.items() if v is not None}


async def assert_node_healthy(net) -> None:
    a, b = net.nodes
    result = await a.rpc.call("peers.ping", {"agent": b.agent_id})
    assert len(result["rtt_ms"]) == 1


@pytest.fixture
async def net(tmp_path):
    # defer_accept 0: silent sockets reach the node, whose own handshake limits are tested here
    async with network(tmp_path, n=2, handshake_timeout=0.5, defer_accept=0) as net:
        yield net


async def test_garbage_instead_of_handshake(net):
    node = net.nodes[0]
    peer = await RawPeer.connect(node)
    await peer.stream.send_all(b"\x00\x60" + os.urandom(96))
    assert await peer.closed_by_node()
    await wait_for(lambda: node.counters.rejected["handshake_failed"] == 1)
    await assert_node_healthy(net)


async def test_oversized_handshake_message_is_refused_before_buffering(net):
    node = net.nodes[0]
    peer = await RawPeer.connect(node)
    await peer.stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
    assert await peer.closed_by_node()
    await wait_for(lambda: node.counters.rejected["handshake_garbage"] == 1)
    await assert_node_healthy(net)


async def test_handshake_for_the_wrong_static_key(net):
    node = net.nodes[0]
    peer = await RawPeer.connect(node)
    wrong = SigningKey.generate().x25519_public()
    assert await peer.handshake(node, remote_static=wrong) == b""
    await wait_for(lambda: node.counters.rejected["handshake_failed"] == 1)
    await assert_node_healthy(net)


async def test_hello_naming_another_agent(net):
    node = net.nodes[0]
    peer = await RawPeer.connect(node)
    assert await peer.handshake(node, claim=net.nodes[1].agent_id) == b""
    await wait_for(lambda: node.counters.rejected["hello_mismatch"] == 1)
    await assert_node_healthy(net)


async def test_frame_over_max_frame_is_refused_without_allocating(net):
    node = net.nodes[0]
    peer = await RawPeer.connect(node)
    await peer.handshake(node)
    await peer.send_plain(struct.pack(">I", 2**31) + b"x" * 100)
    assert await peer.closed_by_node()
    await wait_for(lambda: node.counters.rejected["frame_too_large"] == 1)
    await assert_node_healthy(net)


async def test_malformed_msgpack_body(net):
    node = net.nodes[0]
    peer = await RawPeer.connect(node)
    await peer.handshake(node)
    await peer.send_plain(encode_frame(b"\xc1\xc1\xc1"))
    assert await peer.closed_by_node()
    await wait_for(lambda: node.counters.rejected["malformed_frame"] == 1)
    await assert_node_healthy(net)


@pytest.mark.parametrize("overrides, complaint", [
    ({"action": None}, "missing field(s) ['action']"),
    ({"try": "1"}, "field 'try' must be an integer"),
    ({"target": "nope"}, "field 'target' must be one of"),
    ({"to": {"agent": "short"}}, "field 'to'"),
])
async def test_envelope_with_bad_field_gets_error_ack(net, overrides, complaint):
    node = net.nodes[0]
    peer = await RawPeer.connect(node)
    await peer.handshake(node)
    message = envelope(peer.key, node, **overrides)
    await peer.send_plain(encode_frame(pack(message)))
    (ack,) = await peer.receive_frames()
    assert ack.ack == message["id"]
    assert ack.error["code"] == "BAD_ENVELOPE"
    assert complaint in ack.error["message"]
    assert node.counters.rejected["bad_envelope"] == 1
    assert node.db.read("SELECT count(*) FROM inbox")[0][0] == 0
    # the connection is still usable: a good ping on it is processed and acked
    good = envelope(peer.key, node)
    await peer.send_plain(encode_frame(pack(good)))
    frames = await peer.receive_frames()
    assert frames[0].ack == good["id"] and frames[0].error is None


async def test_from_agent_must_match_the_channel(net):
    node, other = net.nodes
    peer = await RawPeer.connect(node)
    await peer.handshake(node)
    message = envelope(peer.key, node, **{"from": {"agent": other.agent_id}})
    await peer.send_plain(encode_frame(pack(message)))
    (ack,) = await peer.receive_frames()
    assert ack.error["code"] == "FROM_MISMATCH"
    assert node.counters.rejected["from_mismatch"] == 1
    assert node.db.read("SELECT count(*) FROM outbox")[0][0] == 0


async def test_duplicate_message_is_acked_and_ignored(net):
    node = net.nodes[0]
    peer = await RawPeer.connect(node)
    await peer.handshake(node)
    message = envelope(peer.key, node, **{"from": {"agent": peer.key.agent_id}})
    for _ in range(3):
        await peer.send_plain(encode_frame(pack(message)))
    acks = []
    while len(acks) < 3:
        acks += [f for f in await peer.receive_frames() if hasattr(f, "ack")]
    assert [a.ack for a in acks] == [message["id"]] * 3
    assert node.counters.duplicates == 2
    assert node.db.read("SELECT count(*) FROM inbox")[0][0] == 1


async def test_peer_that_stalls_mid_handshake_times_out(net):
    node = net.nodes[0]
    peer = await RawPeer.connect(node)
    await peer.stream.send_all(b"\x00\x80" + b"\x00" * 10)  # half a handshake message
    assert await peer.closed_by_node()
    assert node.counters.rejected["handshake_timeout"] == 1
    await assert_node_healthy(net)


async def test_two_hundred_abandoned_connections(net):
    node = net.nodes[0]
    streams = []
    async with trio.open_nursery() as nursery:
        async def open_one():
            streams.append(await trio.open_tcp_stream("127.0.0.1", node.port))
        for _ in range(200):
            nursery.start_soon(open_one)
    assert len(streams) == 200
    await assert_node_healthy(net)  # serving while 200 handshakes are pending
    rejected = node.counters.rejected
    # 16 per address at most: each newer one evicts the oldest; the rest time out
    await wait_for(lambda: rejected["handshake_timeout"] + rejected["handshake_evicted"] == 200,
                   timeout=10)
    for stream in streams:
        await stream.aclose()
    info = await node.rpc.call("getinfo", {})
    assert info["counters"]["rejected"]["handshake_evicted"] >= 200 - 16
    assert info["counters"]["handshakes_in_progress"] == 0
    await assert_node_healthy(net)


def test_unpack_helper_is_strict():
    with pytest.raises(ValueError):
        unpack(b"\x92\x01")


async def test_dialling_a_peer_whose_connect_hangs(net):
    from agentd.runtime.peers import PeerUnreachable

    node = net.nodes[0]
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue so later SYNs go unanswered
            sock = trio.socket.socket()
            with trio.move_on_after(0.2):
                await sock.connect(("127.0.0.1", port))
            fillers.append(sock)
        with trio.fail_after(5):
            with pytest.raises(PeerUnreachable, match="cannot reach"):
                await node.peers.connect(SigningKey.generate().agent_id, f"127.0.0.1:{port}")
    finally:
        for sock in fillers:
            sock.close()
        listener.close()
    await assert_node_healthy(net)


async def test_a_failing_service_job_is_left_unacked_for_a_retry(net, monkeypatch):
    node = net.nodes[0]
    ping = node.dispatcher.services["node"]
    handle = ping.handle

    def broken(tx, envelope):
        raise KeyError("a bug in a service")

    monkeypatch.setattr(ping, "handle", broken)
    peer = await RawPeer.connect(node)
    await peer.handshake(node)
    message = envelope(peer.key, node)
    await peer.send_plain(encode_frame(pack(message)))
    await wait_for(lambda: node.counters.unacked_failures == 1)  # our bug: no error ack
    monkeypatch.setattr(ping, "handle", handle)
    message["try"] = 2
    await peer.send_plain(encode_frame(pack(message)))  # the sender's retry now succeeds
    acks: list[Ack] = []
    while not acks:  # the pong may come first
        acks = [frame for frame in await peer.receive_frames() if isinstance(frame, Ack)]
    assert [(ack.ack, ack.error) for ack in acks] == [(message["id"], None)]
    monkeypatch.undo()
    await assert_node_healthy(net)


async def test_a_bug_in_the_frame_path_closes_only_that_channel(net, monkeypatch):
    node = net.nodes[0]

    def broken(envelope, agent):
        raise RuntimeError("a bug in dispatch")

    monkeypatch.setattr(node.dispatcher, "_check_addressing", broken)
    peer = await RawPeer.connect(node)
    await peer.handshake(node)
    await peer.send_plain(encode_frame(pack(envelope(peer.key, node))))
    assert await peer.closed_by_node()
    await wait_for(lambda: node.counters.rejected["internal_error"] == 1)
    monkeypatch.undo()
    await assert_node_healthy(net)


@pytest.mark.skipif(not hasattr(socket, "TCP_DEFER_ACCEPT"), reason="Linux TCP_DEFER_ACCEPT")
async def test_silent_connections_wait_in_the_kernel(tmp_path):
    """With ``defer_accept`` the node never accepts a socket that has sent nothing: 200 of
    them take no handshake slot and evict nothing, and a peer's handshake passes at once."""
    async with network(tmp_path, n=2, defer_accept=3600) as net:
        node, peer = net.nodes
        streams = [await trio.open_tcp_stream("127.0.0.1", node.port) for _ in range(200)]
        result = await peer.rpc.call("peers.ping", {"agent": node.agent_id})
        assert len(result["rtt_ms"]) == 1  # peer dialled node: an inbound handshake there
        assert not node.peers.channel_for(peer.agent_id).outbound
        info = await node.rpc.call("getinfo", {})
        assert info["counters"]["handshakes_in_progress"] == 0
        assert info["counters"]["rejected"] == {}
        for stream in streams:
            await stream.aclose()


async def test_a_strangers_flood_is_processed_a_few_messages_at_a_time(tmp_path):
    """``stranger_pipeline``: a stranger's channel holds that many messages in processing
    (then stops reading); a peer we know gets the full pipeline. Nothing is lost: the whole
    flood is acked, and the known peer's ping passes meanwhile."""
    async with network(tmp_path, n=2, stranger_pipeline=4) as net:
        node, peer = net.nodes
        rogue = await Rogue.join(node.port, node.agent_id)
        sent = [rogue.envelope(node.agent_id) for _ in range(300)]
        await rogue.send_frames([pack(message) for message in sent])
        result = await peer.rpc.call("peers.ping", {"agent": node.agent_id})
        assert len(result["rtt_ms"]) == 1
        assert node.peers.channel_for(rogue.agent).pipeline == 4
        assert node.peers.channel_for(peer.agent_id).pipeline == PIPELINE
        acked: set[bytes] = set()
        while len(acked) < len(sent):
            acked |= {frame.ack for frame in await rogue.receive() if isinstance(frame, Ack)}
        assert acked == {message["id"] for message in sent}
        await rogue.aclose()

