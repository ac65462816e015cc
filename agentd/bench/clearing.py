"""``agentd bench ch``: signed receipts per second through the whole clearing-house path.

K client nodes and one clearing house run as ``agentd run`` OS processes from generated
configs. This process drives load through each client's control socket (one pid per client)
for a fixed time: C concurrent ``ch.log_many`` calls of N entries each (``--batch``; 1 calls
``ch.log``). A call returns only once the whole path is done: the entries committed to the
client's outbox, sent over Noise, committed to the clearing house's chain with their receipts
signed and the reply queued (one transaction, durable: ``synchronous = FULL``), the reply
committed on the client with every receipt verified and stored. So receipts/s counts receipts
the clients hold, and the clearing house's own count of chain entries is checked against it.
Latency is per call, p50 and p99. A second, shorter phase on the same nodes makes 32
concurrent one-entry ``ch.log`` calls per client, for the latency and rate of single calls.

The baseline, measured in the same run just before and just after the load (the mean of the
two): how many EdDSA JWTs (PyJWT, the claims of one entry) this machine signs per second on
one core with nothing else to do — what signing each receipt on its own would cost. The
clearing house signs one JWS per batch (a Merkle root, see ``protocol.receipts``) and each
client verifies one per batch. The goal is receipts/s >= 0.4x that rate.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import jwt
import trio

from agentd.bench import bounded, percentile, table, verdict, write_json
from agentd.bench import parser as bench_parser
from agentd.bench.rpc_stream import RpcStream
from agentd.localnodes import cpu_seconds, free_ports, spawn, stop, wait_ready, write_node
from protocol import clearing as ch
from protocol import receipts as rc
from protocol.clearing_chain import next_entry
from protocol.evidence import log_object
from protocol.keys import SigningKey
from store import clearing as clearing_store


def signing_rate(seconds: float) -> float:
    """EdDSA JWTs signed per second by one core (PyJWT, an Ed25519 key, the claims one receipt
    per entry would carry): the cost of signing every receipt on its own."""
    key = SigningKey.generate()
    request = ch.parse_log(log_object("bench-0", "x" * 64), max_payload=1 << 20)
    entry = next_entry(None, request, client_id=key.agent_id, now_ms=int(time.time() * 1000))
    claims = {"iss": key.agent_id, "iat": entry["timestamp"] // 1000,
              "version": rc.RECEIPT_VERSION, **rc.entry_claims(entry)}
    kid = rc.thumbprint(key.public)
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(200):
            jwt.encode(claims, key.private_key, algorithm="EdDSA", headers={"kid": kid})
        done += 200
    return done / (time.perf_counter() - started)


class Cluster:
    """The clearing house and K clients as ``agentd run`` processes in ``workdir``."""

    def __init__(self, workdir: Path, clients: int) -> None:
        ports = free_ports(clients + 1)
        house = write_node(workdir / "house", "house", ports[0],
                           node_keys='roles = ["clearinghouse"]')
        section = (f'[clearinghouse]\nagent = "{house.key.agent_id}"\n'
                   f'address = "{house.address}"')
        self.nodes = [house] + [
            write_node(workdir / f"client{i}", f"client{i}", ports[i + 1], sections=section)
            for i in range(clients)
        ]
        self.processes: list[subprocess.Popen] = []

    @property
    def client_sockets(self) -> list[Path]:
        return [node.socket for node in self.nodes[1:]]

    @property
    def house_db(self) -> Path:
        return self.nodes[0].database

    def __enter__(self) -> Cluster:
        self.processes = [spawn(node) for node in self.nodes]
        wait_ready(self.nodes, self.processes)
        return self

    def __exit__(self, *exc_info: object) -> None:
        stop(self.processes)


async def drive(sockets: list[Path], concurrency: int, seconds: float,
                batch: int = 1) -> tuple[int, list[float], float]:
    """``concurrency`` callers per client logging for ``seconds``, ``batch`` entries a call
    (``ch.log`` for one, else ``ch.log_many``): (receipts, latency of each, seconds)."""
    latencies: list[float] = []
    failures: list[str] = []
    for index, path in enumerate(sockets):  # warm up: process created, JWKS fetched
        warm = await RpcStream.open(path)
        reply = await warm.call("ch.log", {"pid": f"bench-{index}", "payload": "warm-up"})
        if "error" in reply:
            raise RuntimeError(f"warm-up failed: {reply['error']}")
        await warm.stream.aclose()
    streams = [(index, await RpcStream.open(path))
               for index, path in enumerate(sockets) for _ in range(concurrency)]

    async def caller(index: int, stream: RpcStream, deadline: float) -> None:
        entry = {"pid": f"bench-{index}", "payload": "evidence " + "x" * 56}
        method, params = (("ch.log", entry) if batch == 1 else
                          ("ch.log_many", {"entries": [entry] * batch}))
        while trio.current_time() < deadline:
            started = time.perf_counter()
            reply = await stream.call(method, params)
            if "error" in reply:
                failures.append(reply["error"]["message"])
                return
            refused = [item["error"] for item in reply["result"] if "error" in item] \
                if batch > 1 else []
            if refused:
                failures.append(refused[0]["message"])
                return
            latencies.extend([time.perf_counter() - started] * batch)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        deadline = trio.current_time() + seconds
        for index, stream in streams:
            nursery.start_soon(caller, index, stream, deadline)
    elapsed = time.perf_counter() - started
    for _, stream in streams:
        await stream.stream.aclose()
    if failures:
        raise RuntimeError(f"{len(failures)} ch.log calls failed, e.g. {failures[0]}")
    return len(latencies), latencies, elapsed


SINGLE_CONCURRENCY = 32  # ch.log calls per client in the one-entry-a-call phase


def run(options: argparse.Namespace, workdir: Path) -> dict[str, float]:
    signing_seconds = 0.5 if options.quick else 1.0
    with Cluster(workdir, options.clients) as cluster:
        # the baseline just before and just after the load (nodes idle), so that a host whose
        # speed drifts during the run moves both figures alike
        sign_before = signing_rate(signing_seconds)
        cpu_before = cpu_seconds(cluster.processes)
        count, latencies, elapsed = trio.run(drive, cluster.client_sockets,
                                             options.concurrency, options.seconds, options.batch)
        cpu_after = cpu_seconds(cluster.processes)
        sign_after = signing_rate(signing_seconds)
        single_count, single_latencies, single_elapsed = trio.run(
            drive, cluster.client_sockets, SINGLE_CONCURRENCY, options.seconds / 2, 1)
        time.sleep(0.2)
        with sqlite3.connect(cluster.house_db) as conn:
            entries = clearing_store.entry_count(conn)
    warm_ups = 2 * options.clients
    if entries < count + single_count + warm_ups:
        raise RuntimeError(f"{count + single_count} receipts returned but only "
                           f"{entries - warm_ups} entries committed by the clearing house")
    receipts_s = count / elapsed
    cpu: dict[str, float] = {}
    if cpu_before is not None and cpu_after is not None:
        used = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
        cpu["house_cpu_ms_per_receipt"] = used[0] * 1000 / count
        cpu["clients_cpu_ms_per_receipt"] = sum(used[1:]) * 1000 / count
    return {
        **cpu,
        "receipts_s": receipts_s,
        "jwt_sign_s": (sign_before + sign_after) / 2,
        "jwt_sign_s_before": sign_before,
        "jwt_sign_s_after": sign_after,
        "ratio": receipts_s / ((sign_before + sign_after) / 2),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "receipts": count,
        "seconds": elapsed,
        "clients": options.clients,
        "concurrency": options.concurrency,
        "batch": options.batch,
        "single_receipts_s": single_count / single_elapsed,
        "single_p50_ms": statistics.median(single_latencies) * 1000,
        "single_p99_ms": percentile(single_latencies, 0.99) * 1000,
    }


def command_parser() -> argparse.ArgumentParser:
    """``agentd bench ch``'s options, which the completion script offers too."""
    parser = bench_parser("agentd bench ch", __doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (3 s of load)")
    parser.add_argument("--clients", type=bounded(int, 1, 64), default=4,
                        help="client nodes (default 4)")
    parser.add_argument("--concurrency", type=bounded(int, 1, 64), default=8,
                        help="concurrent calls per client (default 8; at most the control "
                        "socket's listen backlog, 64)")
    parser.add_argument("--batch", type=bounded(int, 1, 256), default=100, metavar="N",
                        help="entries per call: more than 1 calls ch.log_many, 1 calls ch.log "
                        "(default 100)")
    parser.add_argument("--seconds", type=bounded(float, 1, 3600), default=None,
                        help="seconds of load (default 10, 3 with --quick)")
    return parser


def main(argv: list[str]) -> int:
    options = command_parser().parse_args(argv)
    if options.seconds is None:
        options.seconds = 3.0 if options.quick else 10.0
    with tempfile.TemporaryDirectory(prefix="agentd-bench-ch-") as tmp:
        figures = run(options, Path(tmp))
    print("agentd bench ch" + (" --quick" if options.quick else ""))
    print(table([
        ("receipts committed", f"{figures['receipts_s']:>10,.0f} /s  ({figures['receipts']:,} "
                               f"in {figures['seconds']:.1f} s, {options.clients} clients x "
                               f"{options.concurrency} concurrent calls of {options.batch})"),
        ("EdDSA JWT signing, one core", f"{figures['jwt_sign_s']:>10,.0f} /s  (mean of "
                                        f"{figures['jwt_sign_s_before']:,.0f} before and "
                                        f"{figures['jwt_sign_s_after']:,.0f} after the load)"),
        ("ratio", f"{figures['ratio']:>10.2f}x  (goal >= 0.4x)"),
        ("call latency p50 / p99", f"{figures['p50_ms']:>10.1f} / {figures['p99_ms']:.1f} ms"),
        ("one entry per ch.log call", f"{figures['single_receipts_s']:>10,.0f} /s  (p50 / p99 "
                                      f"{figures['single_p50_ms']:.1f} / "
                                      f"{figures['single_p99_ms']:.1f} ms, "
                                      f"{SINGLE_CONCURRENCY} concurrent calls per client)"),
        *([("CPU per receipt", f"{figures['house_cpu_ms_per_receipt']:>10.2f} ms clearing "
            f"house, {figures['clients_cpu_ms_per_receipt']:.2f} ms clients")]
          if "house_cpu_ms_per_receipt" in figures else []),
    ]))
    write_json(options.json, figures)
    return verdict([(f"{figures['ratio']:.2f}x the JWT signing rate (goal >= 0.4x)",
                     figures["ratio"] >= 0.4)], options.no_goals)
