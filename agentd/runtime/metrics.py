"""``[metrics] listen``: the node's counters, outbox depth and latencies for Prometheus.

prometheus-client builds the text exposition format from a registry of the node's own (so
nodes sharing a process never mix): a collector that reads :class:`Counters` and the gauges
at scrape time, and two latency histograms the node feeds — RPC calls by method, and incoming
messages by target from arrival to commit. A figure the database fails to read (the outbox
depth of a spilled peer) is left out of that scrape and flagged in ``agentd_scrape_success``:
the scrape is how an operator sees the failure, so it must not fail with it. The HTTP side
is a few lines on ``trio.serve_tcp`` in the node's nursery (prometheus-client's own server
would be a thread nobody can cancel): ``GET /metrics`` answers the exposition, anything else
404; a request head is read up to 8 KiB within 10 s, then the connection closes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from protocol.keys import format_hostport, parse_hostport

if TYPE_CHECKING:
    from agentd.runtime.node import Node

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 10.0
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)
COUNTER_HELP = {
    "frames_in": "frames received", "frames_out": "frames sent",
    "bytes_in": "bytes received on channels", "bytes_out": "bytes sent on channels",
    "handshakes_ok": "Noise handshakes completed", "handshakes_failed": "handshakes failed",
    "messages_processed": "messages processed (committed)",
    "duplicates": "redelivered messages acked and ignored, or refused again",
    "acks_in": "acks received",
    "rejected_by_peer": "our messages a peer refused for good",
    "lift_equivocations": "lifts whose referee signed both good and void, proven here",
    "evidence_refused": "evidence logs the clearing house refused",
}


class Metrics:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        self.registry.register(_NodeCollector(node))
        self.rpc_seconds = Histogram(
            "agentd_rpc_seconds", "RPC call duration by method", ["method"],
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.message_seconds = Histogram(
            "agentd_message_seconds", "incoming message: arrival to commit, by target",
            ["target"], buckets=LATENCY_BUCKETS, registry=self.registry)

    @property
    def address(self) -> str | None:
        """Where ``[metrics] listen`` serves, its port as bound (``HOST:0`` takes any), or
        None when not configured."""
        port, listen = self.node.metrics_port, self.node.config.metrics_listen
        if port is None or listen is None:
            return None
        return format_hostport(parse_hostport(listen)[0], port)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(self, listeners: list[trio.SocketListener], *,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(functools.partial(_answer, self.exposition), listeners)


async def _answer(exposition: Callable[[], bytes], stream: trio.SocketStream) -> None:
    async with stream:
        head = b""
        with trio.move_on_after(REQUEST_TIMEOUT):
            while b"\r\n\r\n" not in head and len(head) < MAX_REQUEST_HEAD:
                try:
                    chunk = await stream.receive_some(MAX_REQUEST_HEAD)
                except trio.BrokenResourceError:
                    return
                if not chunk:
                    break
                head += chunk
        words = head.split(b"\r\n", 1)[0].split()
        if len(words) >= 2 and words[0] == b"GET" and words[1].split(b"?")[0] == b"/metrics":
            status, kind, body = b"200 OK", CONTENT_TYPE_LATEST.encode(), exposition()
        else:
            status, kind, body = b"404 Not Found", b"text/plain", b"try GET /metrics\n"
        try:
            await stream.send_all(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind +
                                  b"\r\nContent-Length: " + str(len(body)).encode() +
                                  b"\r\nConnection: close\r\n\r\n" + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


class _NodeCollector:
    """Reads the node's counters and gauges when scraped; nothing is copied in between."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        node = self.node
        counters = node.counters.to_map()
        for name, text in COUNTER_HELP.items():
            yield CounterMetricFamily(f"agentd_{name}", text, value=counters.get(name, 0))
        rejected = CounterMetricFamily("agentd_rejected", "connections and messages refused, "
                                       "by reason", labels=["reason"])
        for reason, count in counters["rejected"].items():
            rejected.add_metric([reason], count)
        yield rejected
        for name, text in (("refusals", "messages a service refused, by code"),
                           ("peer_refusals", "our messages a peer refused for good, by code")):
            refusals = CounterMetricFamily(f"agentd_{name}", text, labels=["code"])
            for code, count in counters[name].items():
                refusals.add_metric([code], count)
            yield refusals
        running = node.db is not None and node.peers is not None
        depth = node.pump.depth_if_readable() if running else 0
        if depth is not None:  # a failed read is no figure, rather than a wrong one
            yield GaugeMetricFamily("agentd_outbox_depth", "messages waiting to be sent or "
                                    "acked", value=depth)
        read = GaugeMetricFamily("agentd_scrape_success", "1 when the figure was read, 0 "
                                 "when the database failed to read it (it is left out)",
                                 labels=["figure"])
        read.add_metric(["outbox_depth"], depth is not None)
        yield read
        yield GaugeMetricFamily("agentd_peers_connected", "open channels",
                                value=len(node.peers.channels) if running else 0)
        if running:
            yield CounterMetricFamily("agentd_db_commits", "database commits",
                                      value=node.db.commits)
            yield CounterMetricFamily("agentd_db_errors", "failures of the database, on a "
                                      "write or a read", value=node.db.errors)
