"""``agentd bench transport --quick`` runs end to end and writes its figures (no figure is
asserted against a goal here: speed belongs to the benchmark, not to tests)."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from agentd.bench import transport
from agentd.runtime.transport import Hello, initiate
from protocol.keys import SigningKey
from tests.clihelpers import cli


def test_bench_transport_quick_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "transport.json"
    result = cli("bench", "transport", "--quick", "--json", str(out), "--no-goals")
    assert "(c) Noise + outbox/inbox/ack, durable" in result.stdout
    assert "this host" in result.stdout and "thread round trip" in result.stdout
    figures = json.loads(out.read_text())
    for key in ("plain_small_msgs_s", "noise_small_msgs_s", "plain_large_mb_s",
                "noise_large_mb_s", "handshakes_s", "durable_small_msgs_s", "host_fsync_us",
                "host_thread_rtt_us", "host_python_mops"):
        assert figures[key] > 0, key



async def test_a_handshake_that_fails_costs_the_benchmark_server_nothing() -> None:
    """A connection that is not the benchmark's client fails its handshake alone: the
    server went down with it, and the benchmark with "connection refused" (seen when
    another suite's node dialed a port it had used before)."""
    server, client = SigningKey.generate(), SigningKey.generate()
    async with trio.open_nursery() as nursery:
        port = await transport.serve_handshakes(nursery, server)
        stranger = await trio.open_tcp_stream("127.0.0.1", port)
        await stranger.send_all(b"\x00\x60" + bytes(96))  # a handshake no key can read
        assert await stranger.receive_some(1) == b""  # hung up on
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await initiate(stream, client, server.agent_id, Hello(client.agent_id, None, ()), 10)
        await stream.aclose()
        nursery.cancel_scope.cancel()
