"""[metrics] listen serves the counters, outbox depth and latency histograms, scraped here."""

from __future__ import annotations

import logging
import sqlite3

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from agentd.errors import UserError
from agentd.runtime import outbox as pump_module
from agentd.runtime.counters import PEER_CODES, Counters
from agentd.runtime.node import Node
from agentd.runtime.ports import bind_ports
from protocol.keys import ChipAddress, SigningKey
from protocol.messages import Send
from tests.netfixture import network, node_config


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
        info = await a.rpc.call("getinfo", {})  # 127.0.0.1:0: where it took a port, shown
        assert (info["metrics"], (await b.rpc.call("getinfo", {}))["metrics"]) == (
            f"127.0.0.1:{a.metrics_port}", None)
        families = {f.name: f for f in text_string_to_metric_families(body)}
        value = {f: families[f].samples[0].value for f in families if families[f].samples}
        assert value["agentd_frames_out"] >= 3 and value["agentd_messages_processed"] >= 3
        assert value["agentd_outbox_depth"] == a.pump.depth
        assert value["agentd_peers_connected"] == 1
        assert value["agentd_evidence_refused"] == 0  # exported, as getinfo's counters
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


async def test_a_scrape_whose_outbox_read_fails_serves_the_rest_and_the_node_runs_on(
        tmp_path, monkeypatch, caplog):
    """b is away and a's queue for it spilled to its rows, so the outbox depth is a database
    read; a's read connection is swapped for a file that is not a database (a real
    SQLITE_NOTADB). Each scrape is still answered, without the depth and with
    ``agentd_scrape_success{figure="outbox_depth"} 0``; the failure is logged once for the
    streak, getinfo still answers (``outbox_depth`` null) and the node runs on; once reads
    work the depth is back."""
    monkeypatch.setattr(pump_module, "HOLD", 8)
    caplog.set_level(logging.WARNING, logger="agentd.runtime")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\xff" * 8192)
    async with network(tmp_path, n=2, sections={"metrics": {"listen": "127.0.0.1:0"}}) as net:
        a, b = net.nodes
        await net.stop(1)
        to = ChipAddress(agent=b.agent_id, host="127.0.0.1", port=b.port)
        await a.transact(lambda tx: [tx.send(Send(to, "node", "ping", {"seq": i}))
                                     for i in range(30)])
        assert a.pump.depth == 30  # 8 in memory, 22 in their rows
        reader, a.db._reader = a.db._reader, sqlite3.connect(garbage, check_same_thread=False)
        try:
            for _ in range(3):
                status, body = await scrape(a.metrics_port)
                assert status == "HTTP/1.1 200 OK"
                families = {f.name: f for f in text_string_to_metric_families(body)}
                assert "agentd_outbox_depth" not in families  # no figure rather than a wrong one
                assert _samples(families, "agentd_scrape_success") == {
                    ("agentd_scrape_success", "outbox_depth"): 0}
                errors = _samples(families, "agentd_db_errors")[("agentd_db_errors_total", None)]
                assert 1 <= errors <= a.db.errors  # this read's failure counted
                assert families["agentd_peers_connected"].samples[0].value == 0
            info = await a.rpc.call("getinfo", {})
            assert info["counters"]["outbox_depth"] is None
            assert "not a database" in info["last_db_error"]
            assert info["counters"]["db_errors"] >= 4  # three scrapes and this call
        finally:
            a.db._reader.close()
            a.db._reader = reader
        status, body = await scrape(a.metrics_port)
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert families["agentd_outbox_depth"].samples[0].value == 30
        assert _samples(families, "agentd_scrape_success") == {
            ("agentd_scrape_success", "outbox_depth"): 1}
        assert (await a.rpc.call("getinfo", {}))["counters"]["outbox_depth"] == 30
    lines = [r.getMessage() for r in caplog.records if "outbox depth" in r.getMessage()]
    assert len(lines) == 2, lines  # the streak's first failure, and that it works again
    assert "not a database" in lines[0] and "works again" in lines[1]


def _samples(families: dict, name: str) -> dict[tuple[str, str | None], float]:
    return {(s.name, s.labels.get("figure")): s.value for s in families[name].samples}


def test_peers_refusal_codes_are_counted_by_code_within_a_bound():
    """getinfo counted the refusals of our messages by peers only in all (rejected_by_peer):
    they are counted by code too, and as a peer picks its codes, past PEER_CODES distinct
    ones the rest count together as "other" rather than each taking memory for good."""
    counters = Counters()
    for code in ("OVER_LIMIT", "OVER_LIMIT", "BAD_STATE"):
        counters.peer_refused(code)
    assert counters.to_map()["peer_refusals"] == {"BAD_STATE": 1, "OVER_LIMIT": 2}
    for i in range(PEER_CODES + 5):
        counters.peer_refused(f"MADE_UP_{i}")
    shown = counters.to_map()
    assert len(shown["peer_refusals"]) == PEER_CODES + 1
    assert shown["peer_refusals"]["other"] == 7 and shown["peer_refusals"]["OVER_LIMIT"] == 2
    assert shown["rejected_by_peer"] == PEER_CODES + 8


async def test_a_busy_metrics_port_stops_the_start_before_any_service_works(tmp_path):
    """With [metrics] listen on a port in use, the node stops with one line, having started
    nothing: its services had begun (a chain repair asked partners for blocks) and died
    mid-send with a traceback in the log."""
    with trio.socket.socket() as held:
        await held.bind(("127.0.0.1", 0))
        held.listen()
        busy = f"127.0.0.1:{held.getsockname()[1]}"
        node = Node(node_config(tmp_path, "a", sections={"metrics": {"listen": busy}}),
                    SigningKey.generate())
        started = []
        node.credit.run = lambda **kwargs: started.append("credit")  # it must not be reached
        with pytest.raises(BaseExceptionGroup) as caught:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
        matched, _ = caught.value.split(UserError)
        assert matched is not None, caught.value
        assert f".toml: metrics.listen {busy}: cannot listen there: address already in use" in str(
            matched.exceptions[0] if not isinstance(matched.exceptions[0], BaseExceptionGroup)
            else matched.exceptions[0].exceptions[0])
        assert started == []


@pytest.mark.parametrize(("metrics", "why"), [
    ("a..b:9100", "not a valid host name"),  # IDNA refuses it: a UnicodeError, not an OSError
    ("nosuchhost.invalid:9100", "no such host"),
])
async def test_a_metrics_host_that_cannot_be_listened_on_is_a_config_error(tmp_path, metrics,
                                                                            why):
    """Named with the file and the key, not a traceback (a..b raised UnicodeError)."""
    config = node_config(tmp_path, "a", sections={"metrics": {"listen": metrics}})
    with pytest.raises(UserError, match=rf"\.toml: metrics\.listen {metrics}: cannot listen "
                       rf"there: {why}"):
        await bind_ports(config, "127.0.0.1", 0)
