"""Hard crashes: a receiver killed with SIGKILL mid-stream loses nothing it acknowledged and
processes every message exactly once after it restarts."""

from __future__ import annotations

import signal
import sqlite3

from agentd.localnodes import free_ports, spawn, write_node
from protocol.keys import ChipAddress
from protocol.messages import Send
from tests.netfixture import network, wait_for


def processed_ids(directory) -> list[bytes]:
    with sqlite3.connect(directory / "agentd.db") as conn:
        return [row[0] for row in conn.execute("SELECT id FROM inbox")]


async def test_receiver_killed_mid_stream(tmp_path):
    receiver = write_node(tmp_path / "receiver", "receiver", free_ports(1)[0])
    key, port, receiver_dir = receiver.key, receiver.port, receiver.directory
    process = spawn(receiver)
    try:
        async with network(tmp_path, n=1) as net:
            (sender,) = net.nodes
            sender.learn_peer(key.agent_id, f"127.0.0.1:{port}", "receiver")
            to = ChipAddress(agent=key.agent_id, host="127.0.0.1", port=port)
            sent: list[bytes] = []
            for _ in range(20):  # 20 transactions of 100 one-way notes
                sent += await sender.transact(
                    lambda tx: [tx.send(Send(to, "node", "note", {})) for _ in range(100)])
            await wait_for(lambda: (receiver_dir / "agentd.db").exists())
            await wait_for(lambda: sender.pump.depth < 1900, timeout=20)
            process.send_signal(signal.SIGKILL)  # mid-stream, no clean shutdown
            process.wait()
            acked_before_crash = set(sent) - set(sender.pump.live)
            assert acked_before_crash <= set(processed_ids(receiver_dir))
            process = spawn(receiver)
            await wait_for(lambda: sender.pump.depth == 0, timeout=60)
            ids = processed_ids(receiver_dir)
            assert sorted(ids) == sorted(sent)  # every message, exactly once
    finally:
        process.kill()
        process.wait()
