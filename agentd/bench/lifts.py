"""``agentd bench lifts``: lift latency and throughput on a ring of ``agentd run`` processes.

A clearing house (the referee of every lift) and ``--ring`` nodes (default 10), each an OS
process with one user, with a tally between each user and the next round the ring. Figures:

- ``hop5_p50_ms`` / ``hop5_p99_ms``: a 5-hop linear lift, one at a time, from ``lift.pay``
  until the payor's node has applied the referee's ``good`` (route discovery included);
- ``lifts_s``: ``--lifts`` linear lifts (1 to 5 hops, random payors), ``--in-flight`` (64) at
  once, until all are decided;
- ``clear_s``: circular lifts (``lift.clear`` of 10 mCHIP round the whole ring, from random
  users, 16 at once) per second, once every user owes the previous one;
- ``unfinished`` (lifts still pending at the end) and ``void``;
- ``hop5_cpu_ms`` / ``lifts_cpu_ms``: CPU time over every node process (each one's CPU-time
  clock, to the nanosecond; the getinfo calls between phases left out) per sequential lift
  and per lift in flight, and ``cpu_bound_lifts_s``, what the machine's cores could carry at
  ``lifts_cpu_ms`` a lift: what bounds the figures, measured each run;
- ``hop5_messages`` / ``lifts_messages``: messages processed over every node (``getinfo``
  ``messages_processed``, acks not counted) per sequential lift and per lift in flight (the
  chain and evidence messages a phase's last lifts cause after it ends count in the next);
- ``chits_s``: ``bench chits`` on one tally, measured in the same run, for scale;
- ``host_fsync_us``, ``host_thread_rtt_us``, ``host_python_mops``: what the host itself
  costs (``agentd.bench.host``), measured before the nodes start, to compare runs on
  different machines.
Goals: hop5_p50_ms <= 25, hop5_p99_ms <= 60, lifts_s >= 300, unfinished = 0, void = 0.
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from agentd.bench import bounded, host, table, verdict, write_json
from agentd.bench import parser as bench_parser
from agentd.bench.chits import measure as measure_chits
from agentd.bench.rpc_stream import RpcPool
from agentd.localnodes import (
    LocalNode,
    cpu_seconds,
    free_ports,
    peer_section,
    spawn,
    stop,
    wait_ready,
    write_node,
)
from agentd.rpc import call

LIMIT = 10**9
UNITS = 10
GOALS = {"hop5_p50_ms": ("<=", 25), "hop5_p99_ms": ("<=", 60), "lifts_s": (">=", 300),
         "unfinished": ("<=", 0), "void": ("<=", 0)}


CONNECTIONS: contextvars.ContextVar[RpcPool] = contextvars.ContextVar("connections")


async def rpc(node: LocalNode, method: str, **params: Any) -> Any:
    """A call over one of this run's open connections (``CONNECTIONS``, as the benchmark
    sets): a connection per call, as the CLI makes, would cost the nodes as much as some of
    the calls. Without them (a test that kills nodes), a connection per call."""
    connections = CONNECTIONS.get(None)
    if connections is None:
        return await trio.to_thread.run_sync(
            functools.partial(call, node.socket, method, params, 60))
    with trio.fail_after(90):  # lift.wait's own timeout is at most 60 s
        return await connections.call(node.socket, method, **params)


async def open_tally(a: LocalNode, a_cuid: str, b: LocalNode, b_cuid: str,
                     limit: int = LIMIT) -> str:
    """Invite (a), request (b), offer (a), accept (b), until both holders are open."""
    invited = await rpc(a, "tally.invite", cuid=a_cuid, limit=limit)
    tally = invited["tally"]
    await rpc(b, "tally.request", cuid=b_cuid, ticket=invited["ticket"])
    await rpc(a, "tally.offer", cuid=a_cuid, tally=tally)
    with trio.fail_after(30):
        while (await rpc(b, "tally.show", cuid=b_cuid, tally=tally))["state"] != "P.offer":
            await trio.sleep(0.01)  # requested until the offer comes
        await rpc(b, "tally.accept", cuid=b_cuid, tally=tally)
        for node, cuid in ((a, a_cuid), (b, b_cuid)):
            while (await rpc(node, "tally.show", cuid=cuid, tally=tally))["state"] != "open":
                await trio.sleep(0.01)
    return tally


def ring_nodes(workdir: Path, size: int) -> tuple[LocalNode, list[LocalNode]]:
    """A clearing house and ``size`` nodes that all know one another."""
    ports = free_ports(size + 1)
    house = write_node(workdir / "house", "house", ports[0])
    ring = [write_node(workdir / f"n{i}", f"n{i}", ports[i + 1]) for i in range(size)]
    everyone = [house, *ring]
    for node in everyone:
        peers = "".join(peer_section(other) for other in everyone if other is not node)
        if node is house:
            write_node(node.directory, node.name, node.port, key=node.key,
                       node_keys='roles = ["clearinghouse"]', sections=peers)
        else:
            write_node(node.directory, node.name, node.port, key=node.key, sections=peers + (
                f'[clearinghouse]\nagent = "{house.key.agent_id}"\n'
                f'address = "{house.address}"\n'))
    return house, ring


async def pay_and_wait(payor: LocalNode, cuid: str, payee: str, units: int) -> tuple[str, float]:
    started = time.perf_counter()
    lift = await rpc(payor, "lift.pay", cuid=cuid, find=payee, units=units)
    done = await rpc(payor, "lift.wait", lift=lift["lift"], timeout_s=60)
    return done["state"], time.perf_counter() - started


async def measure(size: int, sequential: int, lifts: int, in_flight: int, clears: int,
                  workdir: Path) -> dict[str, float]:
    on_host = host.measure(workdir)  # before the nodes start: nothing else runs yet
    house, ring = ring_nodes(workdir, size)
    processes = [spawn(node) for node in (house, *ring)]
    rng = random.Random(7)
    connections = RpcPool()
    CONNECTIONS.set(connections)
    try:
        await trio.to_thread.run_sync(wait_ready, [house, *ring], processes)
        users = [f"u{i}" for i in range(size)]
        for node, cuid in zip(ring, users, strict=True):
            await rpc(node, "users.add", cuid=cuid)
        async with trio.open_nursery() as nursery:
            for i in range(size):
                j = (i + 1) % size
                nursery.start_soon(open_tally, ring[i], users[i], ring[j], users[j])

        def address(i: int) -> str:
            return f"{users[i % size]}:{ring[i % size].key.agent_id}"

        await trio.sleep(0.5)  # the tallies' trailing chain and evidence messages go first
        everyone = [house, *ring]

        async def counted() -> tuple[list[float] | None, int, list[float] | None]:
            """The CPU so far, the messages processed so far (getinfo) and the CPU again: the
            getinfo calls cost the nodes ~2.5 ms of CPU a round, a third of a sequential
            lift's, which neither phase is to count."""
            spent = cpu_seconds(processes)
            return spent, await processed(everyone), cpu_seconds(processes)

        latencies, states = [], []
        _, before, cpu_before = await counted()
        for _ in range(sequential):
            state, took = await pay_and_wait(ring[0], users[0], address(5), UNITS)
            states.append(state)
            latencies.append(took * 1000)

        async def one(slot: int) -> None:
            for _ in range(slot, lifts, in_flight):
                i = rng.randrange(size)
                state, _ = await pay_and_wait(ring[i], users[i], address(i + rng.randint(1, 5)),
                                              UNITS)
                states.append(state)

        cpu_sequential, after_sequential, cpu_in_flight = await counted()
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for slot in range(in_flight):
                nursery.start_soon(one, slot)
        lifts_s = lifts / (time.perf_counter() - started)
        cpu_after, after_in_flight, _ = await counted()

        # Debt round the ring: every user owes the previous one, so a cycle can clear, by
        # more than the linear lifts can have moved the other way across any one tally.
        ahead = []
        async with trio.open_nursery() as nursery:
            for i in range(size):
                tally = (await rpc(ring[i], "tally.list", cuid=users[i]))
                ahead.append(next(row["tally"] for row in tally
                                  if row["partner"].startswith(f"{users[(i + 1) % size]}:")))
                nursery.start_soon(functools.partial(
                    rpc, ring[(i + 1) % size], "chit.pay", cuid=users[(i + 1) % size],
                    tally=ahead[i], units=(clears * 2 + lifts + sequential) * UNITS))
        # chit.pay returns once the payer's node has it: a search reads the payee's side too
        with trio.fail_after(60):
            for i, tally in enumerate(ahead):
                j = (i + 1) % size
                while ((await rpc(ring[i], "tally.show", cuid=users[i], tally=tally))["balance"]
                       != -(await rpc(ring[j], "tally.show", cuid=users[j],
                                      tally=tally))["balance"]):
                    await trio.sleep(0.01)
        cleared: list[str] = []

        async def clear(slot: int) -> None:
            for _ in range(slot, clears, 16):
                i = rng.randrange(size)
                lift = await rpc(ring[i], "lift.clear", cuid=users[i], units=UNITS)
                done = await rpc(ring[i], "lift.wait", lift=lift["lift"], timeout_s=60)
                cleared.append(done["state"])

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for slot in range(16):
                nursery.start_soon(clear, slot)
        clear_s = clears / (time.perf_counter() - started)
        states += cleared
        quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
        figures = {"hop5_p50_ms": statistics.median(latencies), "hop5_p99_ms": quantiles[98],
                   "lifts_s": lifts_s, "clear_s": clear_s,
                   "unfinished": states.count("pend"), "void": states.count("void"),
                   "lifts": len(states), **on_host}
        figures["hop5_messages"] = (after_sequential - before) / sequential
        figures["lifts_messages"] = (after_in_flight - after_sequential) / lifts
        if None not in (cpu_before, cpu_sequential, cpu_in_flight, cpu_after):
            figures["hop5_cpu_ms"] = _spent(cpu_before, cpu_sequential) / sequential
            figures["lifts_cpu_ms"] = _spent(cpu_in_flight, cpu_after) / lifts
            figures["cpu_bound_lifts_s"] = (os.cpu_count() or 1) * 1000 / figures["lifts_cpu_ms"]
        return figures
    finally:
        await connections.aclose()
        stop(processes)


async def processed(nodes: list[LocalNode]) -> int:
    """Messages every node has processed so far (``getinfo`` counters; acks not counted),
    once the count holds still for 20 ms: the payor sees a lift good before the referee's
    decision reaches every other node on the path, and a phase's last decisions belong to
    it (counted in the next one, a phase of three one-hop lifts read 3.67 messages a lift
    where each takes at least 4)."""
    total = -1
    for _ in range(100):  # 2 s at most
        last, total = total, 0
        for node in nodes:
            total += (await rpc(node, "getinfo"))["counters"]["messages_processed"]
        if total == last:
            break
        await trio.sleep(0.02)
    return total


def _spent(before: list[float], after: list[float]) -> float:
    """Milliseconds of CPU every process spent between two readings."""
    return (sum(after) - sum(before)) * 1000


def command_parser() -> argparse.ArgumentParser:
    """``agentd bench lifts``'s options, which the completion script offers too."""
    parser = bench_parser("agentd bench lifts", __doc__)
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument("--ring", type=bounded(int, 6, 64), default=10,
                        help="nodes round the ring (default 10; 6 or more: the latency lift "
                        "takes 5 hops)")
    parser.add_argument("--lifts", type=bounded(int, 1, 1_000_000),
                        help="linear lifts in the throughput phase (default 640; 128 with "
                        "--quick)")
    parser.add_argument("--in-flight", type=bounded(int, 1, 1024), default=64,
                        help="lifts at once (default 64)")
    return parser


def main(argv: list[str]) -> int:
    options = command_parser().parse_args(argv)
    sequential = 20 if options.quick else 100
    lifts = options.lifts or (128 if options.quick else 640)
    clears = 32 if options.quick else 160
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
        figures = trio.run(measure, options.ring, sequential, lifts, options.in_flight, clears,
                           Path(tmp))
        chits = trio.run(measure_chits, 2_000 if options.quick else 10_000, 100, 4,
                         Path(tmp) / "chits")
    figures["chits_s"] = chits["chits_s"]
    missed = [key for key, (how, goal) in GOALS.items()
              if not (figures[key] <= goal if how == "<=" else figures[key] >= goal)]
    print("agentd bench lifts" + (" --quick" if options.quick else ""))
    print(table([
        ("ring", f"{options.ring} nodes + a clearing house (referee), one process each"),
        ("5-hop lift, p50 / p99", f"{figures['hop5_p50_ms']:.1f} / "
                                  f"{figures['hop5_p99_ms']:.1f} ms (goal <= 25 / <= 60)"),
        (f"lifts/s, {options.in_flight} in flight", f"{figures['lifts_s']:,.0f} (goal >= 300)"),
        ("circular lifts/s, 16 at once", f"{figures['clear_s']:,.0f}"),
        ("unfinished / void", f"{figures['unfinished']} / {figures['void']} (goal 0 / 0)"),
        ("messages a lift, every node", f"{figures['hop5_messages']:.1f} one at a time, "
                                        f"{figures['lifts_messages']:.1f} at "
                                        f"{options.in_flight} in flight (and as many acks)"),
        *([("CPU a lift, every node", f"{figures['hop5_cpu_ms']:.1f} ms one at a time, "
            f"{figures['lifts_cpu_ms']:.1f} ms at {options.in_flight} in flight: "
            f"{os.cpu_count()} cores carry at most {figures['cpu_bound_lifts_s']:,.0f} lifts/s")]
          if "lifts_cpu_ms" in figures else []),
        ("chits/s on one tally (bench chits)", f"{figures['chits_s']:,.0f}"),
        host.line(figures),
        ("goals", "all met" if not missed else "missed: " + ", ".join(missed)),
    ]))
    write_json(options.json, figures)
    return verdict([(f"{key} {figures[key]:,.1f} (goal {how} {goal})", key not in missed)
                    for key, (how, goal) in GOALS.items()], options.no_goals)
