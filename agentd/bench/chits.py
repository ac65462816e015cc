"""``agentd bench chits``: signed chits per second across one tally between two OS processes.

Alice's node runs in this process, Bob's as its own ``agentd run``. They open a tally (Alice,
whose process also drives Bob's socket, holds the foil, the lighter side: the stock checks its
own chits once more when the foil's order brings them back), then both users pay at once:
``chit.pay_many`` batches of ``--batch`` payments, ``--in-flight`` calls outstanding per side,
until ``--count`` chits exist. Every chit is signed by its payer, verified by the payee's
node, committed on both nodes and chained; the clock stops when both holders have every chit
linked and confirmed (chain length = confirmed index = count on both, same head hash).
Beside it, in the same run (before and after, averaged: the machine's speed drifts), the
Ed25519 sign + verify time of one chit gives the crypto bound: ``1 / (sign + verify)`` chits
per second, what one core could do if signatures were all there was to it. And what the
chain costs in memory: Bob's process's resident memory before the payments and once every
chit is confirmed (``bob_rss_growth_mb``). A node keeps only a chain's newest blocks in
memory, so its live objects do not grow with the tally; what this shows is mostly the
allocator's high water of the messages in flight while both users outpay the chain.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from agentd.bench import bounded, table, verdict, write_json
from agentd.bench import parser as bench_parser
from agentd.localnodes import (
    free_ports,
    local_config,
    rss_mb,
    spawn,
    start_node,
    stop,
    wait_ready,
    write_node,
)
from agentd.rpc import call
from agentd.services.credit.chits import MAX_PAYMENTS
from protocol.keys import SigningKey, verify

UNITS = 7  # milliCHIPs per payment


def crypto_bound(samples: int) -> tuple[float, float]:
    """Seconds to sign, and to verify, one chit hash (32 bytes) with a user key."""
    key = SigningKey.generate()
    message = bytes(range(32))
    started = time.perf_counter()
    for _ in range(samples):
        signature = key.sign(message)
    signed = time.perf_counter()
    for _ in range(samples):
        verify(key.public, signature, message)
    verified = time.perf_counter()
    return (signed - started) / samples, (verified - signed) / samples


async def measure(count: int, batch: int, in_flight: int, workdir: Path) -> dict[str, float]:
    bob_node = write_node(workdir / "bob", "bob", free_ports(1)[0])
    process = spawn(bob_node)
    bob_socket = bob_node.socket

    async def bob(method: str, **params: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(call, bob_socket, method,
                                                               params, 120))

    try:
        await trio.to_thread.run_sync(wait_ready, [bob_node], [process])
        async with trio.open_nursery() as nursery:
            alice = await start_node(nursery, local_config(workdir, "alice"))

            async def me(method: str, **params: Any) -> Any:
                return await alice.rpc.call(method, params)

            await me("users.add", cuid="alice")
            await bob("users.add", cuid="bob")
            invited = await me("tally.invite", cuid="alice", limit=count * UNITS,
                               side="foil")
            tally = invited["tally"]
            await bob("tally.request", cuid="bob", ticket=invited["ticket"])
            await me("tally.offer", cuid="alice", tally=tally)
            while (await bob("tally.show", cuid="bob", tally=tally))["state"] != "P.offer":
                await trio.sleep(0.01)  # requested until the offer comes
            await bob("tally.accept", cuid="bob", tally=tally)
            for caller, cuid in ((me, "alice"), (bob, "bob")):
                while (await caller("tally.show", cuid=cuid, tally=tally))["state"] != "open":
                    await trio.sleep(0.01)

            rss_before = rss_mb(process.pid)
            batches = [min(batch, count // 2 - first) for first in range(0, count // 2, batch)]

            async def pay(caller, cuid: str, sizes: list[int]) -> None:
                for size in sizes:
                    await caller("chit.pay_many", cuid=cuid, tally=tally, units=[UNITS] * size)

            started = time.perf_counter()
            async with trio.open_nursery() as payers:
                for lane in range(in_flight):
                    payers.start_soon(pay, me, "alice", batches[lane::in_flight])
                    payers.start_soon(pay, bob, "bob", batches[lane::in_flight])
            issued = time.perf_counter()
            total = 2 * sum(batches)
            while True:
                mine = (await me("tally.show", cuid="alice", tally=tally))["chain"]
                theirs = (await bob("tally.show", cuid="bob", tally=tally))["chain"]
                if (mine["index"] == mine["confirmed"] == theirs["index"] == theirs["confirmed"]
                        == total and mine["hash"] == theirs["hash"]):
                    break
                await trio.sleep(0.005)
            elapsed = time.perf_counter() - started
            await bob("getinfo")  # the node's last writes are done: its memory has settled
            rss_after = rss_mb(process.pid)
            alice.stop()
        return {"chits": total, "chits_s": total / elapsed,
                "issue_s": issued - started, "confirm_s": elapsed,
                "bob_rss_before_mb": round(rss_before, 1),
                "bob_rss_growth_mb": round(rss_after - rss_before, 1)}
    finally:
        stop([process])


def command_parser() -> argparse.ArgumentParser:
    """``agentd bench chits``'s options, which the completion script offers too."""
    parser = bench_parser("agentd bench chits", __doc__)
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument("--count", type=bounded(int, 2, 10_000_000),
                        help="chits in all, half from each side (default 20,000; 2,000 with "
                        "--quick)")
    parser.add_argument("--batch", type=bounded(int, 1, MAX_PAYMENTS), default=100,
                        help="payments per chit.pay_many (default 100)")
    parser.add_argument("--in-flight", type=bounded(int, 1, 64), default=4,
                        help="chit.pay_many calls outstanding per side (default 4)")
    return parser


def main(argv: list[str]) -> int:
    options = command_parser().parse_args(argv)
    count = options.count or (2_000 if options.quick else 20_000)
    samples = 2_000 if options.quick else 10_000
    sign_before, verify_before = crypto_bound(samples)
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
        figures = trio.run(measure, count, options.batch, options.in_flight, Path(tmp))
    sign_after, verify_after = crypto_bound(samples)
    sign_s, verify_s = (sign_before + sign_after) / 2, (verify_before + verify_after) / 2
    figures.update(sign_us=sign_s * 1e6, verify_us=verify_s * 1e6,
                   crypto_bound_chits_s=1 / (sign_s + verify_s))
    figures["ratio"] = figures["chits_s"] / figures["crypto_bound_chits_s"]
    print("agentd bench chits" + (" --quick" if options.quick else ""))
    print(table([
        ("chits (half from each side)", f"{figures['chits']:>10,}"),
        ("issued in", f"{figures['issue_s']:>10.2f} s"),
        ("all linked and confirmed in", f"{figures['confirm_s']:>10.2f} s"),
        ("chits/s, both chains confirmed", f"{figures['chits_s']:>10,.0f}"),
        ("Ed25519 sign / verify", f"{figures['sign_us']:>7.1f} / {figures['verify_us']:.1f} µs"),
        ("crypto bound 1/(sign+verify)", f"{figures['crypto_bound_chits_s']:>10,.0f} chits/s"),
        ("ratio", f"{figures['ratio']:>10.2f}x the crypto bound (goal >= 0.5x)"),
        ("Bob's node, memory", f"{figures['bob_rss_before_mb']:>7.1f} MB before, "
                               f"{figures['bob_rss_growth_mb']:+.1f} MB after"),
    ]))
    write_json(options.json, figures)
    return verdict([(f"{figures['ratio']:.2f}x the crypto bound (goal >= 0.5x)",
                     figures["ratio"] >= 0.5)], options.no_goals)
