"""[metrics] listen serves the counters, outbox depth and latency histograms, scraped here."""

from __future__ import annotations

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from agentd.errors import UserError
from agentd.runtime.node import Node
from protocol.keys import SigningKey
from tests.netfixture import node_config


async def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return head.split("\r\n")[0], body


async def test_a_scrape_shows_counters_gauges_and_latencies(tmp_path):
    metrics = {"metrics": {"listen": "127.0.0.1:0"}}
    a = Node(node_config(tmp_path, "a", sections=metrics), SigningKey.generate())
    b = Node(node_config(tmp_path, "b"), SigningKey.generate())
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        assert b.metrics_port is None  # not configured: nothing listens
        a.learn_peer(b.agent_id, b.listen_address, "b")
        await a.rpc.call("peers.ping", {"agent": b.agent_id, "count": 3})
        status, body = await scrape(a.metrics_port)
        assert status == "HTTP/1.1 200 OK"
        families = {f.name: f for f in text_string_to_metric_families(body)}
        value = {f: families[f].samples[0].value for f in families if families[f].samples}
        assert value["agentd_frames_out"] >= 3 and value["agentd_messages_processed"] >= 3
        assert value["agentd_outbox_depth"] == a.pump.depth
        assert value["agentd_peers_connected"] == 1
        rpc = {(s.name, s.labels.get("method"), s.labels.get("le")): s.value
               for s in families["agentd_rpc_seconds"].samples}
        assert rpc[("agentd_rpc_seconds_count", "peers.ping", None)] == 1
        assert rpc[("agentd_rpc_seconds_bucket", "peers.ping", "+Inf")] == 1
        messages = {(s.name, s.labels.get("target")): s.value
                    for s in families["agentd_message_seconds"].samples}
        assert messages[("agentd_message_seconds_count", "node")] >= 3  # the pongs
        assert (await scrape(a.metrics_port, "/"))[0] == "HTTP/1.1 404 Not Found"
        nursery.cancel_scope.cancel()


def test_metrics_listen_is_checked(tmp_path):
    with pytest.raises(UserError, match=r"metrics\.listen is not HOST:PORT"):
        node_config(tmp_path, "a", sections={"metrics": {"listen": "nowhere"}})
    with pytest.raises(UserError, match=r"unknown key metrics\.port"):
        node_config(tmp_path, "a", sections={"metrics": {"listen": "127.0.0.1:0", "port": 1}})
