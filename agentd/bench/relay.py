"""``agentd bench relay``: relay view round trips between two ``agentd run`` processes.

A round trip is what a client does: ``relay.query`` on its own node (the destination), then
``relay.wait`` until the view is COMPLETED — Query through the outbox and Noise to the source,
admission, driver read (``user:bench:balance``), notarization, Ack and ViewPayload back,
verification, commit. Clients talk JSON-RPC over the Unix control socket, one persistent
connection each. Measured: sequential latency (p50, p99) and 32-way concurrent throughput;
``unfinished`` counts requests still pending when their wait gave up, ``failed`` those that
ended in ERROR.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from agentd.bench import parser as bench_parser
from agentd.bench import percentile, table, verdict, write_json
from agentd.localnodes import (
    LocalNode,
    free_ports,
    peer_section,
    spawn,
    stop,
    wait_ready,
    write_node,
)
from agentd.rpc import RpcError
from protocol.keys import SigningKey

VIEW = "user:bench:balance"
WAIT_S = 30


class Client:
    """A JSON-RPC client that keeps its Unix-socket connection open between calls."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.ids = itertools.count(1)

    @classmethod
    async def open(cls, path: Path) -> Client:
        return cls(await trio.open_unix_socket(str(path)))

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        request = {"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params}
        await self.stream.send_all(json.dumps(request).encode() + b"\n")
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise RuntimeError(f"the node closed the control socket during {method}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        response = json.loads(line)
        if "error" in response:
            error = response["error"]
            raise RpcError(error["code"], error["message"])
        return response["result"]

    async def round_trip(self, address: str) -> tuple[float, str]:
        """One query and its wait: (seconds, final status)."""
        started = time.perf_counter()
        request = await self.call("relay.query", {"address": address})
        state = await self.call("relay.wait", {"request_id": request["request_id"],
                                               "timeout_s": WAIT_S})
        return time.perf_counter() - started, state["status"]


def _make_nodes(workdir: Path) -> tuple[LocalNode, LocalNode]:
    """Two node dirs (``dest`` asks, ``source`` serves), peers of each other; the source lets
    anyone read ``node:*`` and ``user:*``."""
    dest_port, source_port = free_ports(2)
    dest_key, source_key = SigningKey.generate(), SigningKey.generate()
    dest = LocalNode("dest", workdir / "dest", dest_key, dest_port)
    source = LocalNode("source", workdir / "source", source_key, source_port)
    access = ('[[relay.access]]\nprincipal = "*"\nresource = "node:*"\n'
              '[[relay.access]]\nprincipal = "*"\nresource = "user:*"\n')
    return (write_node(dest.directory, "dest", dest_port, key=dest_key,
                       sections=peer_section(source)),
            write_node(source.directory, "source", source_port, key=source_key,
                       sections=peer_section(dest) + access))


async def run(quick: bool, workdir: Path) -> dict:
    sequential_n, concurrent_n, concurrency = (200, 1000, 32) if quick else (1000, 5000, 32)
    dest, source = _make_nodes(workdir)
    processes = [spawn(dest), spawn(source)]
    try:
        await trio.to_thread.run_sync(wait_ready, [dest, source], processes)
        sockets = [dest.socket, source.socket]
        source_client = await Client.open(sockets[1])
        await source_client.call("users.add", {"cuid": "bench"})
        address = f"{source.address}/agentd/{VIEW}"
        statuses: dict[str, int] = {}

        client = await Client.open(sockets[0])
        for _ in range(50):  # warm-up: the Noise channel, caches
            await client.round_trip(address)
        sequential = []
        for _ in range(sequential_n):
            elapsed, status = await client.round_trip(address)
            sequential.append(elapsed)
            statuses[status] = statuses.get(status, 0) + 1
        seq_elapsed = sum(sequential)

        remaining = iter(range(concurrent_n))
        concurrent: list[float] = []

        async def worker() -> None:
            own = await Client.open(sockets[0])
            for _ in remaining:
                elapsed, status = await own.round_trip(address)
                concurrent.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        conc_elapsed = time.perf_counter() - started
        await client.call("stop", {})
        await source_client.call("stop", {})
    finally:
        stop(processes)
    pending = statuses.get("PENDING_ACK", 0) + statuses.get("PENDING", 0)
    return {
        "sequential_n": sequential_n, "concurrent_n": concurrent_n, "concurrency": concurrency,
        "seq_p50_ms": percentile(sequential, 0.50) * 1000,
        "seq_p99_ms": percentile(sequential, 0.99) * 1000,
        "seq_qps": sequential_n / seq_elapsed,
        "concurrent_qps": concurrent_n / conc_elapsed,
        "concurrent_p50_ms": percentile(concurrent, 0.50) * 1000,
        "concurrent_p99_ms": percentile(concurrent, 0.99) * 1000,
        "unfinished": pending,
        "failed": statuses.get("ERROR", 0),
    }


def command_parser() -> argparse.ArgumentParser:
    """``agentd bench relay``'s options, which the completion script offers too."""
    parser = bench_parser("agentd bench relay", __doc__)
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    return parser


def main(argv: list[str]) -> int:
    options = command_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agentd-bench-relay-") as tmp:
        figures = trio.run(run, options.quick, Path(tmp))
    print(f"relay round trips (relay.query + relay.wait), view {VIEW}, two agentd processes")
    print(table([
        (f"sequential p50 ({figures['sequential_n']})",
         f"{figures['seq_p50_ms']:>8.2f} ms  (goal <= 5)"),
        ("sequential p99", f"{figures['seq_p99_ms']:>8.2f} ms  (goal <= 25)"),
        ("sequential rate", f"{figures['seq_qps']:>8.0f} queries/s"),
        (f"{figures['concurrency']}-way concurrent ({figures['concurrent_n']})",
         f"{figures['concurrent_qps']:>8.0f} queries/s  (goal >= 200)"),
        ("concurrent p50 / p99", f"{figures['concurrent_p50_ms']:>8.2f} / "
                                 f"{figures['concurrent_p99_ms']:.2f} ms"),
        ("unfinished / failed", f"{figures['unfinished']:>8} / {figures['failed']}  (goal 0)"),
    ]))
    write_json(options.json, figures)
    goals = verdict([
        (f"sequential p50 {figures['seq_p50_ms']:.2f} ms (goal <= 5)", figures["seq_p50_ms"] <= 5),
        (f"sequential p99 {figures['seq_p99_ms']:.2f} ms (goal <= 25)",
         figures["seq_p99_ms"] <= 25),
        (f"concurrent {figures['concurrent_qps']:.0f} queries/s (goal >= 200)",
         figures["concurrent_qps"] >= 200),
    ], options.no_goals)
    # unfinished or failed queries are wrong answers, not slow ones: --no-goals does not excuse
    return 1 if figures["unfinished"] or figures["failed"] else goals
