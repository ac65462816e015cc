"""Simulated link faults (agentd.runtime.links): how faults on one link combine, and that a
delayed link keeps its frames in order and drops none it was not told to."""

from __future__ import annotations

import random

import trio

from agentd.runtime.links import Links, Rule

PEER = "peer"


def test_faults_on_one_link_add_up_and_heal_one_by_one():
    links = Links()
    links.set(PEER, "delay1", Rule(ms=20, jitter_ms=5))
    links.set(PEER, "loss2", Rule(loss=0.5))
    links.set(PEER, "loss3", Rule(loss=0.5))
    assert links.rules[PEER] == Rule(ms=20, jitter_ms=5, loss=0.75)
    links.set(PEER, "loss2", None)
    assert links.rules[PEER] == Rule(ms=20, jitter_ms=5, loss=0.5)
    links.set(PEER, "delay1", None)
    links.set(PEER, "loss3", None)
    assert links.rules == {}


async def test_a_delayed_link_keeps_its_frames_in_order():
    links = Links(random.Random(3))
    links.set(PEER, "delay", Rule(ms=5, jitter_ms=20))  # jitter would reorder a careless line
    line = links.line(PEER)
    sent: list[bytes] = []
    frames = [bytes([i]) for i in range(40)]
    all_sent = trio.Event()

    async def forward(body: bytes) -> None:
        sent.append(body)
        if len(sent) == len(frames):
            all_sent.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(line.run, forward)
        for body in frames[:20]:
            assert await line.hold(body)
        links.set(PEER, "delay", None)  # healed: what is held still goes first
        for body in frames[20:]:
            assert await line.hold(body)
        with trio.fail_after(10):
            await all_sent.wait()
        nursery.cancel_scope.cancel()
    assert sent == frames
    assert links.counts() == {"frames_dropped": 0, "frames_delayed": 20}
    assert not await line.hold(b"after")  # nothing held, nothing in force: sent as usual


async def test_a_lossy_link_drops_about_its_rate():
    links = Links(random.Random(5))
    links.set(PEER, "loss", Rule(loss=0.25))
    line = links.line(PEER)
    taken = [await line.hold(b"x") for _ in range(2000)]
    assert links.frames_dropped == sum(taken)
    assert 400 < links.frames_dropped < 600
