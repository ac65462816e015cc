"""Simulated link faults: latency and frame loss on the channels to chosen peers.

A testing hook, off unless a harness sets ``Node.links`` before the node runs (``agentd sim``
does; ``agentd run`` never does). Each channel to a shaped peer then passes every frame it
sends through a :class:`Line`: dropped at random (``loss``; the at-least-once delivery resends
it), or held for ``ms`` plus up to ``jitter_ms`` before it is queued for the socket. Frames
never overtake one another (TCP does not reorder), and a full line makes the sender wait as a
full send queue does. Several faults on one peer add up: delays add, losses compound.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

HELD = 4096  # frames one channel's line holds before its sender waits (as the send queue)


@dataclass(frozen=True)
class Rule:
    ms: float = 0.0  # at least this much latency, each frame
    jitter_ms: float = 0.0  # and up to this much more, at random
    loss: float = 0.0  # the fraction of frames dropped


class Links:
    """A node's shaped links by peer agent, and what the shaping did (for the sim's report)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.rules: dict[str, Rule] = {}  # peer agent -> the faults in force, combined
        self._faults: dict[str, dict[str, Rule]] = {}  # peer agent -> fault key -> rule
        self.frames_dropped = 0
        self.frames_delayed = 0

    def set(self, agent: str, fault: str, rule: Rule | None) -> None:
        """Put ``rule`` in force on the link to ``agent`` as fault ``fault`` (None: heal it)."""
        faults = self._faults.setdefault(agent, {})
        if rule is None:
            faults.pop(fault, None)
        else:
            faults[fault] = rule
        if not faults:
            del self._faults[agent]
            self.rules.pop(agent, None)
            return
        kept = 1.0
        for each in faults.values():
            kept *= 1 - each.loss
        self.rules[agent] = Rule(sum(f.ms for f in faults.values()),
                                 sum(f.jitter_ms for f in faults.values()), 1 - kept)

    def counts(self) -> dict[str, int]:
        return {"frames_dropped": self.frames_dropped, "frames_delayed": self.frames_delayed}

    def line(self, agent: str) -> Line:
        return Line(self, agent)


class Line:
    """One channel's way out through the link faults to its peer."""

    def __init__(self, links: Links, agent: str) -> None:
        self._links = links
        self._agent = agent
        self._in, self._out = trio.open_memory_channel[tuple[float, bytes]](HELD)
        self._held = 0
        self._last_due = 0.0

    async def hold(self, body: bytes) -> bool:
        """Whether the link took ``body`` (dropped or delayed); False: send it as usual.
        Raises ``trio.BrokenResourceError`` once the channel stopped running its line."""
        links = self._links
        rule = links.rules.get(self._agent)
        if rule is None and not self._held:
            return False  # no checkpoint: an unshaped link batches as before
        if rule is not None and rule.loss and links.rng.random() < rule.loss:
            links.frames_dropped += 1
            return True
        delay = 0.0 if rule is None else (rule.ms + links.rng.uniform(0, rule.jitter_ms)) / 1000
        if not delay and not self._held:
            return False
        if delay:
            links.frames_delayed += 1
        self._last_due = max(self._last_due, trio.current_time() + delay)  # in order
        self._held += 1
        await self._in.send((self._last_due, body))
        return True

    async def run(self, forward: Callable[[bytes], Awaitable[None]]) -> None:
        """Hand each held frame to ``forward`` when it is due, until cancelled."""
        async with self._out:
            async for due, body in self._out:
                await trio.sleep_until(due)
                self._held -= 1
                await forward(body)


__all__ = ["Line", "Links", "Rule"]
