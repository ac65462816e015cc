"""How far each peer's clock is ahead of ours, read from the send time (``last``) its messages
carry, so that a clock set wrong is named rather than guessed at.

Lifts are decided by deadline: a referee whose clock runs ten minutes ahead voids every lift
it is asked about, and each participant only sees "void". A message's ``last`` is stamped by
its sender as it goes, so ``last - now`` is the sender's clock offset less the transit time:
never more than the true offset. The estimate is the largest such sample of the last
``WINDOW_MS`` (two half windows, so it follows a clock that is put right), which one message
that was not held up anywhere makes exact to within a transit.

A peer ``WARN_MS`` or more ahead is logged once (and again once it agrees). Only "ahead" is
warned of: a slow path makes a peer look behind, never ahead, and of two nodes whose clocks
disagree the one behind sees the other ahead, so one of them always says so. ``peers.list``
shows every peer's estimate, behind too. Bounded: ``MAX_PEERS`` peers, the least recently
heard forgotten first.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger("agentd.runtime.clocks")
WARN_MS = 5_000  # a lift's default life is 120 s: 5 s of it lost is worth a line in the log
WINDOW_MS = 60_000
MAX_PEERS = 4096


class _Offset:
    __slots__ = ("best", "older", "since", "warned")

    def __init__(self, sample: int, now_ms: int) -> None:
        self.best, self.older, self.since, self.warned = sample, None, now_ms, False

    def add(self, sample: int, now_ms: int) -> None:
        if now_ms - self.since >= WINDOW_MS // 2:  # a new half window: the old one ages out
            self.older = self.best if now_ms - self.since < WINDOW_MS else None
            self.best, self.since = sample, now_ms
        elif sample > self.best:
            self.best = sample

    @property
    def estimate(self) -> int:
        return self.best if self.older is None else max(self.best, self.older)


class PeerClocks:
    def __init__(self, describe: Callable[[str], str] = lambda agent: f"agent {agent[:8]}"
                 ) -> None:
        """``describe(agent)``: how a log line names the peer."""
        self._describe = describe
        self._peers: OrderedDict[str, _Offset] = OrderedDict()

    def sample(self, agent: str, sent_ms: int, now_ms: int, *, known: bool = True) -> None:
        """A message from ``agent`` stamped ``sent_ms`` by its clock arrived at ``now_ms``.
        A stranger's clock (``known`` false) is told at ``debug`` only: a fresh identity
        each costs nothing, and the node's clock is not the one to check."""
        offset = self._peers.get(agent)
        if offset is None:
            offset = self._peers[agent] = _Offset(sent_ms - now_ms, now_ms)
            if len(self._peers) > MAX_PEERS:
                self._peers.popitem(last=False)
        else:
            offset.add(sent_ms - now_ms, now_ms)
            self._peers.move_to_end(agent)
        ahead = offset.estimate >= WARN_MS
        if ahead != offset.warned:
            offset.warned = ahead
            level = logging.WARNING if known else logging.DEBUG
            if ahead:
                log.log(level, "the clock of %s is %.1f s ahead of ours (the send times on its "
                            "messages): lifts it decides, or deadlines it sets, expire that "
                            "much early; check the time (NTP) on both hosts",
                            self._describe(agent), offset.estimate / 1000)
            else:
                log.log(level, "the clock of %s agrees with ours again", self._describe(agent))

    def ahead_ms(self, agent: str) -> int | None:
        """How far ``agent``'s clock is ahead of ours (negative: behind, at most by that
        much), or None before any message of its."""
        offset = self._peers.get(agent)
        return None if offset is None else offset.estimate


__all__ = ["WARN_MS", "PeerClocks"]
