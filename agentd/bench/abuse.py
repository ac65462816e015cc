"""``agentd bench abuse``: a legitimate peer's pings while strangers attack the node.

The target is an ``agentd run`` process; a legitimate peer (another ``agentd run``, a
configured peer of the target) pings it once at a time through ``peers.ping``. Meanwhile this
process attacks the target on 127.0.0.1 only, with rogue peers (:mod:`agentd.bench.rogue`):

- ``--half-open`` (500) connections that never send a byte, each reopened shortly after the
  target drops it;
- a flood of ``--flood`` (10,000) pings from one fresh identity that reads but never acks;
- ``--tricklers`` (200) channels that each send most of a 1 MiB frame and then one byte a
  second, reconnecting when closed.

It reports the legitimate ping's p50/p99 (``legit_ping_p99_ms``, goal <= 50), the target's
resident memory growth over its level before the attack (``rss_growth_mb``, goal <= 64),
and its outbox depth ``--wait`` seconds after the attack ended (``outbox_after_60s``, goal 0;
``--quick`` waits less and reports ``outbox_after_wait`` with ``outbox_wait_s`` instead).
``processed`` and ``rationed`` count the target's messages processed and those that waited
for a stranger's write allowance (a flood past ``stranger_write_burst``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from agentd.bench import bounded, table, verdict, write_json
from agentd.bench import parser as bench_parser
from agentd.bench.rogue import Rogue
from agentd.localnodes import (
    free_ports,
    peer_section,
    rss_mb,
    spawn,
    stop,
    wait_ready,
    write_node,
)
from agentd.rpc import call
from protocol.codec import pack

FRAME = 1 << 20
HOST = "127.0.0.1"  # never anything else: this attacks a node of our own


class Attack:
    def __init__(self, port: int, agent: str) -> None:
        self.port, self.agent = port, agent
        self.stop = trio.Event()
        self.opened = {"half_open": 0, "tricklers": 0}
        self.flood_sent = 0

    async def half_open(self) -> None:
        while not self.stop.is_set():
            try:
                rogue = await Rogue.connect(self.port, HOST)
            except OSError:
                await trio.sleep(0.5)
                continue
            self.opened["half_open"] += 1
            async with rogue.stream:
                with trio.move_on_after(60):
                    try:
                        while await rogue.stream.receive_some(1024):
                            pass
                    except trio.BrokenResourceError:
                        pass
            await trio.sleep(0.5)

    async def flood(self, count: int) -> None:
        """Send ``count`` pings and never ack; rejoin (same identity) when closed."""
        rogue = None
        while self.flood_sent < count and not self.stop.is_set():
            try:
                rogue = await Rogue.join(self.port, self.agent, host=HOST,
                                         key=rogue.key if rogue else None)
            except (OSError, ConnectionError):
                await trio.sleep(0.1)
                continue
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drain, rogue)
                try:
                    while self.flood_sent < count:
                        batch = min(500, count - self.flood_sent)
                        await rogue.send_frames([pack(rogue.envelope(self.agent))
                                                 for _ in range(batch)])
                        self.flood_sent += batch
                        await trio.sleep(0.01)
                    await self.stop.wait()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()
            await rogue.aclose()

    async def _drain(self, rogue: Rogue) -> None:
        with trio.move_on_after(3600):
            try:
                while await rogue.stream.receive_some(1 << 16):  # never acked
                    pass
            except trio.BrokenResourceError:
                pass

    async def trickler(self) -> None:
        while not self.stop.is_set():
            try:
                rogue = await Rogue.join(self.port, self.agent, host=HOST)
            except (OSError, ConnectionError):
                await trio.sleep(1)
                continue
            self.opened["tricklers"] += 1
            try:
                await rogue.start_frame(FRAME, bytes(FRAME - 1024))
                for _ in range(1023):  # one byte a second until closed (or the attack ends)
                    if self.stop.is_set():
                        break
                    await rogue.send_plaintext(b"\0")
                    await trio.sleep(1)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                await rogue.aclose()
            await trio.sleep(1)


async def measure(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    target_port, legit_port = free_ports(2)
    target = write_node(workdir / "target", "target", target_port)
    legit = write_node(workdir / "legit", "legit", legit_port,
                       sections=peer_section(target))
    with open(target.config, "a") as handle:
        handle.write(peer_section(legit))
    processes = [spawn(target), spawn(legit)]

    async def rpc(node, method: str, **params: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(call, node.socket, method,
                                                               params, 60))

    async def ping() -> float:
        result = await rpc(legit, "peers.ping", agent=target.key.agent_id)
        return result["rtt_ms"][0]

    try:
        await trio.to_thread.run_sync(wait_ready, [target, legit], processes)
        for _ in range(20):  # warm up: the channel is open and the caches are filled
            await ping()
        pid = processes[0].pid
        rss_before = rss_mb(pid)
        attack = Attack(target_port, target.key.agent_id)
        rtts: list[float] = []
        failed = 0
        rss_peak = rss_before
        async with trio.open_nursery() as nursery:
            for _ in range(options.half_open):
                nursery.start_soon(attack.half_open)
            nursery.start_soon(attack.flood, options.flood)
            for _ in range(options.tricklers):
                nursery.start_soon(attack.trickler)
            started = time.monotonic()
            while time.monotonic() - started < options.seconds:
                try:
                    rtts.append(await ping())
                except Exception:  # a ping that does not come back counts as a failure
                    failed += 1
                rss_peak = max(rss_peak, rss_mb(pid))
            attack.stop.set()
            nursery.cancel_scope.cancel()
        info = await rpc(target, "getinfo")
        await trio.sleep(options.wait)
        after = await rpc(target, "getinfo")
        rss_peak = max(rss_peak, rss_mb(pid))
    finally:
        await trio.to_thread.run_sync(stop, processes)
    rtts.sort()
    counters = info["counters"]
    figures: dict[str, Any] = {
        "attack_s": options.seconds, "half_open": options.half_open, "flood": options.flood,
        "flood_sent": attack.flood_sent, "tricklers": options.tricklers,
        "half_open_opened": attack.opened["half_open"],
        "tricklers_opened": attack.opened["tricklers"],
        "legit_pings": len(rtts), "legit_ping_failures": failed,
        "legit_ping_p50_ms": statistics.median(rtts) if rtts else None,
        "legit_ping_p99_ms": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] if rtts else None,
        "rss_before_mb": round(rss_before, 1), "rss_peak_mb": round(rss_peak, 1),
        "rss_growth_mb": round(rss_peak - rss_before, 1),
        "outbox_at_end": counters["outbox_depth"],
        "outbox_wait_s": options.wait, "outbox_after_wait": after["counters"]["outbox_depth"],
        "rejected": counters["rejected"],
        "processed": counters["messages_processed"], "rationed": counters["rationed"],
    }
    if options.wait >= 60:
        figures["outbox_after_60s"] = figures["outbox_after_wait"]
    return figures


def command_parser() -> argparse.ArgumentParser:
    """``agentd bench abuse``'s options, which the completion script offers too."""
    parser = bench_parser("agentd bench abuse", __doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds: a smaller attack and a short wait")
    parser.add_argument("--seconds", type=bounded(float, 1, 3600),
                        help="length of the attack (default 30)")
    parser.add_argument("--half-open", type=bounded(int, 0, 20_000),
                        help="half-open connections (default 500)")
    parser.add_argument("--flood", type=bounded(int, 0, 10_000_000),
                        help="pings in the flood (default 10,000)")
    parser.add_argument("--tricklers", type=bounded(int, 0, 10_000),
                        help="trickling channels (default 200)")
    parser.add_argument("--wait", type=bounded(float, 0, 3600),
                        help="seconds after the attack before the outbox is read (default 60)")
    return parser


def main(argv: list[str]) -> int:
    options = command_parser().parse_args(argv)
    quick = options.quick
    for name, full, small in (("seconds", 30.0, 3.0), ("half_open", 500, 100),
                              ("flood", 10_000, 1_000), ("tricklers", 200, 20),
                              ("wait", 60.0, 1.0)):
        if getattr(options, name) is None:
            setattr(options, name, small if quick else full)
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
        figures = trio.run(measure, options, Path(tmp))
    figures["quick"] = quick
    print("agentd bench abuse" + (" --quick" if quick else ""))
    p99 = figures["legit_ping_p99_ms"]
    print(table([
        ("attack", f"{figures['attack_s']:g} s: {figures['half_open']} half-open, "
                   f"{figures['flood_sent']:,} pings flooded, {figures['tricklers']} tricklers"),
        ("legit pings (failed)",
         f"{figures['legit_pings']:,} ({figures['legit_ping_failures']:,})"),
        ("legit ping p50 / p99", f"{figures['legit_ping_p50_ms'] or 0:.1f} / "
                                 f"{p99 or 0:.1f} ms (goal p99 <= 50)"),
        ("messages processed", f"{figures['processed']:,} ({figures['rationed']:,} waited for "
                               "a stranger's write allowance)"),
        ("target RSS growth", f"{figures['rss_growth_mb']:.1f} MB (goal <= 64)"),
        (f"outbox {figures['outbox_wait_s']:g} s after", f"{figures['outbox_after_wait']} "
         f"(at the end: {figures['outbox_at_end']}; "
         + ("goal 0 after 60 s)" if "outbox_after_60s" in figures else
            "not judged: the flood's pongs expire after 30 s, and the goal is 0 after 60 s)")),
    ]))
    write_json(options.json, figures)
    goals = [(f"legit ping p99 {p99 or 0:.1f} ms (goal <= 50)", p99 is not None and p99 <= 50),
             (f"RSS growth {figures['rss_growth_mb']:.1f} MB (goal <= 64)",
              figures["rss_growth_mb"] <= 64)]
    if "outbox_after_60s" in figures:  # a short --wait cannot judge it
        goals.append((f"outbox {figures['outbox_after_60s']} 60 s after the attack (goal 0)",
                      figures["outbox_after_60s"] == 0))
    return verdict(goals, options.no_goals)
