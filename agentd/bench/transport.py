"""``agentd bench transport``: what a message costs on each layer, measured in one run.

(a) plain TCP with agentd's 4-byte framing and msgpack envelopes; (b) the same through the
Noise channel; (c) the Noise channel with the whole durable path — outbox rows committed,
sent, committed to the receiver's inbox, acked and deleted — to a receiver running as its
own ``agentd run`` process. Small messages are 200-byte envelopes, large ones 64 KiB. Also
handshakes/s, py-libp2p on the small workload when the ``bench`` extra is installed, and
what the host itself costs (an fsync, a thread round trip, the interpreter's speed:
``agentd.bench.host``), to compare runs on different machines.

(a) and (b) run the same :class:`~agentd.runtime.transport.Channel` code (coalescing send loop,
frame decoder, envelope parsing); only the session differs, so their ratio is the cost of
Noise itself.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import tempfile
import time
from pathlib import Path

import trio

from agentd.bench import host, table, verdict, write_json
from agentd.bench import parser as bench_parser
from agentd.localnodes import (
    free_ports,
    local_config,
    spawn,
    start_node,
    stop,
    wait_ready,
    write_node,
)
from agentd.rpc import call
from agentd.runtime.counters import Counters
from agentd.runtime.transport import Channel, ChannelClosed, Hello, initiate, respond
from protocol.codec import pack
from protocol.envelope import parse_frame
from protocol.keys import ChipAddress, SigningKey
from protocol.messages import Send


class PlainSession:
    """The identity 'cipher': lets (a) run the very same Channel code as (b)."""

    @staticmethod
    def encrypt(data: bytes) -> bytes:
        return data

    @staticmethod
    def decrypt(data: bytes) -> bytes:
        return data

    @staticmethod
    def close() -> None:
        """Nothing is held between calls (a closing Channel frees its session's buffer)."""


def _envelope(sender: SigningKey, receiver: SigningKey, size: int) -> dict:
    body = {"v": 1, "id": os.urandom(16), "target": "node", "action": "note", "object": {},
            "try": 1, "last": int(time.time() * 1000), "to": {"agent": receiver.agent_id},
            "from": {"agent": sender.agent_id}}
    body["object"] = {"pad": b"x" * max(0, size - len(pack(body)) - 8)}
    return body


async def _channel_pair(noise: bool):
    """Two connected channels over loopback TCP, plain or Noise."""
    a_key, b_key = SigningKey.generate(), SigningKey.generate()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    counters = Counters()
    if noise:
        async with trio.open_nursery() as nursery:
            results = {}

            async def do_respond():
                results["b"] = await respond(server, b_key, Hello(b_key.agent_id, None, ()), 10)

            nursery.start_soon(do_respond)
            results["a"] = await initiate(client, a_key, b_key.agent_id,
                                          Hello(a_key.agent_id, None, ()), 10)
        a_session, b_hello = results["a"]
        b_session, a_hello = results["b"]
    else:
        a_session = b_session = PlainSession()
        a_hello, b_hello = Hello(a_key.agent_id, None, ()), Hello(b_key.agent_id, None, ())
    a = Channel(client, a_session, b_hello, outbound=True, max_frame=1 << 20, counters=counters)
    b = Channel(server, b_session, a_hello, outbound=False, max_frame=1 << 20,
                counters=counters)
    return a, b, a_key, b_key


async def stream_rate(noise: bool, size: int, count: int) -> float:
    """Messages/s from one channel to the other, each frame parsed as an envelope."""
    a, b, a_key, b_key = await _channel_pair(noise)
    received = 0
    done = trio.Event()

    async def on_frame(channel, body):
        nonlocal received
        parse_frame(body)
        received += 1
        if received == count:
            done.set()

    async def ignore(channel, body):
        return None

    template = _envelope(a_key, b_key, size)
    bodies = []
    for _ in range(count):
        template["id"] = os.urandom(16)
        bodies.append(pack(template))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run, on_frame, None)
        nursery.start_soon(a.run, ignore, None)
        started = time.perf_counter()
        for body in bodies:
            await a.send_frame(body)
        await done.wait()
        elapsed = time.perf_counter() - started
        a.close()
        b.close()
    return count / elapsed


async def serve_handshakes(nursery: trio.Nursery, key: SigningKey) -> int:
    """A listener in ``nursery`` that answers IK handshakes as ``key`` and hangs up: its
    port. A connection that fails its handshake (another program dialing a port it used
    before, as two test suites on one machine can) fails alone, not the benchmark."""
    hello = Hello(key.agent_id, None, ())

    async def handler(stream: trio.SocketStream) -> None:
        with contextlib.suppress(ChannelClosed):
            await respond(stream, key, hello, 10)
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0,
                                                      host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def handshake_rate(seconds: float) -> float:
    """Full IK handshakes per second: TCP connect, both sides, close."""
    server_key, client_key = SigningKey.generate(), SigningKey.generate()
    hello_client = Hello(client_key.agent_id, None, ())
    async with trio.open_nursery() as nursery:
        port = await serve_handshakes(nursery, server_key)
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await initiate(stream, client_key, server_key.agent_id, hello_client, 10)
            await stream.aclose()
            done += 1
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return done / elapsed


async def durable_rate(count: int, workdir: Path) -> float:
    """Acknowledged messages/s through outbox → Noise → inbox commit → ack → delete."""
    sender_key, (receiver_port, sender_port) = SigningKey.generate(), free_ports(2)
    # the sender is the receiver's configured peer: a stranger's messages wait for the
    # write ration (agentd.runtime.limits), which this would measure instead of the path
    sender_peer = (f'[[peers]]\nname = "sender"\nagent = "{sender_key.agent_id}"\n'
                   f'address = "127.0.0.1:{sender_port}"\n')
    receiver = write_node(workdir / "receiver", "receiver", receiver_port,
                          sections=sender_peer)
    process = spawn(receiver)
    try:
        await trio.to_thread.run_sync(wait_ready, [receiver], [process])
        async with trio.open_nursery() as nursery:
            node = await start_node(nursery, local_config(workdir, "sender", sender_port),
                                    sender_key)
            agent = receiver.key.agent_id
            to = ChipAddress(agent=agent, host="127.0.0.1", port=receiver.port)
            node.learn_peer(agent, receiver.address, "receiver")
            await node.rpc.call("peers.ping", {"agent": agent})  # connect
            started = time.perf_counter()
            batch = 1000
            for first in range(0, count, batch):
                size = min(batch, count - first)

                def work(tx, n=size):
                    for _ in range(n):
                        tx.send(Send(to, "node", "note", {"pad": b"x" * 40}))

                await node.transact(work)
            while node.pump.depth:
                await trio.sleep(0.005)
            elapsed = time.perf_counter() - started
            node.stop()
        info = await trio.to_thread.run_sync(call, receiver.socket, "getinfo", {}, 60)
        if info["counters"]["rationed"]:
            raise RuntimeError("the receiver rationed the sender's messages as a stranger's: "
                               "the figure would measure the ration, not the path")
        return count / elapsed
    finally:
        stop([process])


async def libp2p_rate(count: int) -> float | None:
    """py-libp2p (Noise + yamux) on the small workload, when installed (the bench extra)."""
    try:
        from agentd.bench import libp2p_peer
    except ImportError:
        return None
    return await libp2p_peer.small_message_rate(count)


async def run(quick: bool, workdir: Path) -> dict:
    small_n, large_n = (5_000, 200) if quick else (50_000, 2_000)
    figures: dict[str, float | None] = {**host.measure(workdir)}
    figures["plain_small_msgs_s"] = await stream_rate(False, 200, small_n)
    figures["noise_small_msgs_s"] = await stream_rate(True, 200, small_n)
    large = 64 * 1024
    figures["plain_large_mb_s"] = await stream_rate(False, large, large_n) * large / 1e6
    figures["noise_large_mb_s"] = await stream_rate(True, large, large_n) * large / 1e6
    figures["handshakes_s"] = await handshake_rate(0.5 if quick else 2.0)
    figures["durable_small_msgs_s"] = await durable_rate(2_000 if quick else 20_000, workdir)
    figures["libp2p_small_msgs_s"] = await libp2p_rate(2_000 if quick else 10_000)
    figures["noise_vs_plain_small"] = figures["noise_small_msgs_s"] / figures["plain_small_msgs_s"]
    if figures["libp2p_small_msgs_s"]:
        figures["noise_vs_libp2p_small"] = (figures["noise_small_msgs_s"]
                                            / figures["libp2p_small_msgs_s"])
    return figures


def command_parser() -> argparse.ArgumentParser:
    """``agentd bench transport``'s options, which the completion script offers too."""
    parser = bench_parser("agentd bench transport", __doc__)
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    return parser


def main(argv: list[str]) -> int:
    options = command_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
        figures = trio.run(run, options.quick, Path(tmp))
    rows = [
        ("(a) plain TCP, 200 B", f"{figures['plain_small_msgs_s']:>10,.0f} msgs/s"),
        ("(b) Noise, 200 B", f"{figures['noise_small_msgs_s']:>10,.0f} msgs/s  "
                             f"({figures['noise_vs_plain_small']:.2f}x plain; goal >= 0.6x)"),
        ("(c) Noise + outbox/inbox/ack, durable", f"{figures['durable_small_msgs_s']:>10,.0f}"
                                                  " acked msgs/s  (goal >= 10,000)"),
        ("(a) plain TCP, 64 KiB", f"{figures['plain_large_mb_s']:>10,.1f} MB/s"),
        ("(b) Noise, 64 KiB", f"{figures['noise_large_mb_s']:>10,.1f} MB/s"),
        ("Noise IK handshakes", f"{figures['handshakes_s']:>10,.0f} /s"),
    ]
    if figures["libp2p_small_msgs_s"]:
        rows.append(("py-libp2p Noise+yamux, 200 B",
                     f"{figures['libp2p_small_msgs_s']:>10,.0f} msgs/s  (agentd Noise is "
                     f"{figures['noise_vs_libp2p_small']:.1f}x; goal >= 5x)"))
    else:
        rows.append(("py-libp2p", "not installed (pip install -e '.[bench]')"))
    rows.append(host.line(figures))
    print("agentd bench transport" + (" --quick" if options.quick else ""))
    print(table(rows))
    write_json(options.json, {k: v for k, v in figures.items() if v is not None})
    libp2p = figures.get("noise_vs_libp2p_small")
    return verdict([
        (f"Noise {figures['noise_vs_plain_small']:.2f}x plain (goal >= 0.6x)",
         figures["noise_vs_plain_small"] >= 0.6),
        (f"durable {figures['durable_small_msgs_s']:,.0f} acked msgs/s (goal >= 10,000)",
         figures["durable_small_msgs_s"] >= 10_000),
        *([(f"agentd Noise {libp2p:.1f}x py-libp2p (goal >= 5x)", libp2p >= 5)]
          if figures["libp2p_small_msgs_s"] else []),
    ], options.no_goals)
