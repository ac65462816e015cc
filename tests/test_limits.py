"""Issue 12, items 2 and 3: half-open sockets, trickled frames and piles of channels cost
their own connections, never the node, on real ``agentd run`` processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from agentd.bench.rogue import Rogue
from agentd.runtime.limits import DecodeBudget, FrameBudget
from protocol.keys import SigningKey
from tests.clihelpers import add_peer, cli, init, running
from tests.rogue import getinfo


def _limits(info: dict, **keys) -> None:
    config = Path(info["config"])
    lines = "".join(f"{key} = {value}\n" for key, value in keys.items())
    config.write_text(config.read_text().replace("[node]\n", "[node]\n" + lines, 1))


def test_half_open_connections_do_not_lock_out_a_peer(tmp_path: Path) -> None:
    n1, n2 = init(tmp_path, "n1"), init(tmp_path, "n2")
    _limits(n1, defer_accept=0)  # the silent sockets reach the node's handshake slots
    add_peer(n2["config"], "n1", n1)
    held = 500

    async def attack_while_pinging() -> dict:
        stop = trio.Event()

        async def keep_half_open() -> None:
            while not stop.is_set():  # reopen as soon as the node drops it
                try:
                    rogue = await Rogue.connect(n1["port"])
                except OSError:
                    await trio.sleep(0.05)
                    continue
                async with rogue.stream:
                    with trio.move_on_after(30):
                        while await rogue.stream.receive_some(1024):
                            pass
                    await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            for _ in range(held):
                nursery.start_soon(keep_half_open)
            await trio.sleep(0)
            with trio.fail_after(30):
                while getinfo(n1["config"])["counters"]["handshakes_in_progress"] < 16:
                    await trio.sleep(0.05)
            result = await trio.to_thread.run_sync(
                lambda: cli("-c", n2["config"], "peers.ping", f"agent={n1['agent']}", "count=3",
                            check=False))
            stop.set()
            nursery.cancel_scope.cancel()
        return {"rc": result.returncode, "out": result.stdout, "err": result.stderr}

    with running({"n1": n1, "n2": n2}) as processes:
        result = trio.run(attack_while_pinging)
        assert result["rc"] == 0, result["err"]
        assert len(json.loads(result["out"])["rtt_ms"]) == 3
        counters = getinfo(n1["config"])["counters"]
        assert counters["rejected"]["handshake_evicted"] > 0
        assert processes["n1"].poll() is None


def test_trickled_frames_and_piles_of_channels_are_closed(tmp_path: Path) -> None:
    n1 = init(tmp_path, "n1")
    _limits(n1, frame_timeout=1, max_channels_per_address=6, max_channels_per_agent=2,
            partial_frames_budget=65536)
    agent, port = n1["agent"], n1["port"]

    async def attack() -> dict:
        outcome: dict = {}
        trickler = await Rogue.join(port, agent)  # a frame one byte every 0.2 s never ends
        await trickler.start_frame(1000, b"\x81")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickler.trickle, b"\xa1" * 200, 0.2)
            outcome["trickler_closed"] = await trickler.closed_by_node(timeout=10)
            nursery.cancel_scope.cancel()

        # Unfinished frames of 30,000 bytes, charged in full on their header: the third
        # would pass the 64 KiB budget and is closed on its header alone.
        holders = []
        for first in (b"\x00" * 20_000, b"\x00" * 20_000, b""):
            holder = await Rogue.join(port, agent)
            await holder.start_frame(30_000, first)
            holders.append(holder)
        outcome["third_holder_closed"] = await holders[2].closed_by_node(timeout=5)

        key = SigningKey.generate()  # one identity, three channels: the third is closed
        kept = []
        outcome["same_identity_closed"] = []
        for _ in range(3):
            kept.append(await Rogue.join(port, agent, key=key))
            outcome["same_identity_closed"].append(await kept[-1].closed_by_node(timeout=0.5))
        crowd = []  # past six channels from one address (the two above are still open)
        for _ in range(6):
            kept.append(await Rogue.join(port, agent))
            crowd.append(await kept[-1].closed_by_node(timeout=0.5))
        outcome["crowd_closed"] = crowd
        return outcome

    with running({"n1": n1}) as processes:
        outcome = trio.run(attack)
        counters = getinfo(n1["config"])["counters"]
        assert outcome["trickler_closed"]
        assert counters["rejected"]["frame_timeout"] >= 1  # the holders too, later
        assert outcome["third_holder_closed"]  # the others end at their frame deadline
        assert counters["rejected"]["partial_frames_budget"] == 1
        assert counters["partial_frame_bytes"] <= 65536
        assert counters["rejected"]["too_many_channels_agent"] >= 1
        assert outcome["same_identity_closed"] == [False, False, True]
        assert outcome["crowd_closed"] == [False] * 4 + [True] * 2
        assert counters["rejected"]["too_many_channels_address"] == 2
        assert processes["n1"].poll() is None


def test_the_frame_budget_never_passes_its_limit_and_a_refusal_takes_nothing() -> None:
    budget = FrameBudget(100)
    assert budget.update(1, 60) and budget.total == 60
    assert not budget.update(2, 50) and budget.total == 60  # refused: 2 holds nothing
    assert budget.update(1, 30) and budget.update(2, 50) and budget.total == 80
    assert not budget.update(1, 51) and budget.total == 80  # 1 keeps its 30
    assert budget.update(1, 0) and budget.update(2, 0) and budget.total == 0


async def test_the_decode_budget_serves_frames_in_turn_and_one_too_big_alone():
    budget = DecodeBudget(100)
    assert await budget.acquire(60) == 60
    order: list[str] = []

    async def take(name: str, size: int, cancel: trio.CancelScope | None = None) -> None:
        with cancel or trio.CancelScope():
            held = await budget.acquire(size)
            order.append(name)
            await trio.sleep(0.01)
            budget.release(held)

    async with trio.open_nursery() as nursery:
        gone = trio.CancelScope()
        nursery.start_soon(take, "big", 500)  # more than the whole budget: alone, capped
        await trio.sleep(0.01)
        nursery.start_soon(take, "cancelled", 10, gone)
        await trio.sleep(0.01)
        nursery.start_soon(take, "small", 10)  # fits now, but waits its turn behind big
        await trio.sleep(0.01)
        assert order == [] and budget.used == 60
        gone.cancel()  # a waiter that gives up leaves the line
        await trio.sleep(0.01)
        budget.release(60)
    assert order == ["big", "small"] and budget.used == 0
