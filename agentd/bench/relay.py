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
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from agentd.bench import table, write_json
from agentd.init import init_node
from agentd.rpc import RpcError

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


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _make_nodes(workdir: Path) -> tuple[dict, dict]:
    """Two node dirs (``dest`` asks, ``source`` serves), peers of each other; the source lets
    anyone read ``node:*`` and ``user:*``."""
    nodes = {}
    for name in ("dest", "source"):
        port = _free_port()
        nodes[name] = {**init_node(workdir / name, name, f"127.0.0.1:{port}", "agentd"),
                       "name": name, "port": port}
    for name, info in nodes.items():
        other = nodes["source" if name == "dest" else "dest"]
        config = Path(info["config"])
        text = config.read_text().replace('level = "info"', 'level = "warning"')
        text += (f'\n[[peers]]\nname = "{other["name"]}"\nagent = "{other["agent"]}"\n'
                 f'address = "127.0.0.1:{other["port"]}"\n')
        if name == "source":
            text += ('\n[[relay.access]]\nprincipal = "*"\nresource = "node:*"\n'
                     '\n[[relay.access]]\nprincipal = "*"\nresource = "user:*"\n')
        config.write_text(text)
    return nodes["dest"], nodes["source"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wait_for_socket(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the node for {path.parent} did not start")
        await trio.sleep(0.05)


async def run(quick: bool, workdir: Path) -> dict:
    sequential_n, concurrent_n, concurrency = (200, 1000, 32) if quick else (1000, 5000, 32)
    dest, source = _make_nodes(workdir)
    processes = [subprocess.Popen([sys.executable, "-m", "agentd", "run", "-c", info["config"]])
                 for info in (dest, source)]
    try:
        sockets = [Path(info["config"]).parent / "data" / "agentd.sock" for info in (dest, source)]
        for path, process in zip(sockets, processes, strict=True):
            await _wait_for_socket(path, process)
        source_client = await Client.open(sockets[1])
        await source_client.call("users.add", {"cuid": "bench"})
        address = f"127.0.0.1:{source['port']}/agentd/{VIEW}"
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
        for process in processes:
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=10)
    pending = statuses.get("PENDING_ACK", 0) + statuses.get("PENDING", 0)
    return {
        "sequential_n": sequential_n, "concurrent_n": concurrent_n, "concurrency": concurrency,
        "seq_p50_ms": _percentile(sequential, 0.50) * 1000,
        "seq_p99_ms": _percentile(sequential, 0.99) * 1000,
        "seq_qps": sequential_n / seq_elapsed,
        "concurrent_qps": concurrent_n / conc_elapsed,
        "concurrent_p50_ms": _percentile(concurrent, 0.50) * 1000,
        "concurrent_p99_ms": _percentile(concurrent, 0.99) * 1000,
        "unfinished": pending,
        "failed": statuses.get("ERROR", 0),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="agentd bench relay", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument("--json", metavar="FILE", help="write the figures as a flat JSON map")
    options = parser.parse_args(argv)
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
    return 0 if figures["unfinished"] == 0 and figures["failed"] == 0 else 1
