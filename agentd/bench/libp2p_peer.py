"""py-libp2p on agentd's small-message workload, for ``agentd bench transport``.

Two libp2p hosts on 127.0.0.1 (TCP, Noise, yamux) — what a Python user would pick instead
of agentd's channel. The same 200-byte msgpack envelopes with the same 4-byte framing go
over one stream; the receiver parses every one. Importing this module needs the project's
``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import os
import time

import multiaddr
import trio
from libp2p import (
    NOISE_PROTOCOL_ID,
    NoiseTransport,
    create_new_ed25519_key_pair,
    create_new_x25519_key_pair,
    create_yamux_muxer_option,
    new_host,
)
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo

from protocol.codec import pack
from protocol.envelope import parse_frame
from protocol.frames import FrameDecoder, encode_frame
from protocol.keys import SigningKey

PROTOCOL = TProtocol("/agentd-bench/1.0.0")


def _host():
    key_pair = create_new_ed25519_key_pair()
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    return new_host(key_pair=key_pair, sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
                    muxer_opt=create_yamux_muxer_option())


async def small_message_rate(count: int) -> float:
    sender_key, receiver_key = SigningKey.generate(), SigningKey.generate()
    envelope = {"v": 1, "id": b"", "target": "node", "action": "note",
                "object": {"pad": b"x" * 40}, "try": 1, "last": 0,
                "to": {"agent": receiver_key.agent_id}, "from": {"agent": sender_key.agent_id}}
    frames = []
    for _ in range(count):
        envelope["id"] = os.urandom(16)
        frames.append(encode_frame(pack(envelope)))
    done = trio.Event()

    async def handler(stream) -> None:
        decoder, received = FrameDecoder(), 0
        while received < count:
            data = await stream.read(65536)
            if not data:
                break
            for body in decoder.feed(data):
                parse_frame(body)
                received += 1
        done.set()

    sender, receiver = _host(), _host()
    receiver.set_stream_handler(PROTOCOL, handler)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with receiver.run(listen_addrs=listen), sender.run(listen_addrs=listen):
        await sender.connect(PeerInfo(receiver.get_id(), receiver.get_addrs()))
        stream = await sender.new_stream(receiver.get_id(), [PROTOCOL])
        started = time.perf_counter()
        for frame in frames:
            await stream.write(frame)
        await done.wait()
        elapsed = time.perf_counter() - started
        await stream.close()
    return count / elapsed
