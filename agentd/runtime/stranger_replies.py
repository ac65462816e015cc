"""The replies the outbox pump holds for peers we do not know, and their bounds.

A stranger that asks and never reads its answers (or acks them) would have us hold each until
it expires. So one stranger's replies stop at ``STRANGER_QUEUE`` waiting or the pump's
``HOLD_BYTES`` held, and all strangers' at ``ALL_STRANGERS_HOLD`` bytes: past a bound the
oldest waiting reply goes, row included (``outbox_dropped``) — of that stranger, or, over all
of them, of the one holding the most. One stranger's bound times a thousand fresh identities
was gigabytes; replies cost the strangers' own requests, nothing of ours.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from agentd.runtime.outgoing import Outgoing

STRANGER_QUEUE = 256  # replies waiting to go to one peer we do not know; past it the oldest go
ALL_STRANGERS_HOLD = 64 << 20  # bytes of replies to all strangers; past it the largest holder's


class StrangerReplies:
    """The replies held for strangers, in bytes, in all and by peer. ``drop_oldest(queue,
    newest)`` is the pump's: it drops the oldest reply waiting in ``queue`` but ``newest``,
    False when there is none; ``queues`` and ``held`` are the pump's queues and bytes held by
    peer, read here."""

    __slots__ = ("_by_peer", "_drop_oldest", "_held", "_hold_bytes", "_ids", "_queues", "total")

    def __init__(self, drop_oldest: Callable[[deque[Outgoing], Outgoing], bool],
                 queues: dict[str, deque[Outgoing]], held: dict[str, int],
                 hold_bytes: int) -> None:
        self._drop_oldest, self._queues, self._held = drop_oldest, queues, held
        self._hold_bytes = hold_bytes
        self.total = 0
        self._by_peer: dict[str, int] = {}
        self._ids: set[bytes] = set()

    def add(self, item: Outgoing, queue: deque[Outgoing]) -> None:
        """Count a reply just queued (in ``queue``) for a stranger, and keep to the bounds."""
        if item.id not in self._ids:  # queued again after a lost channel: counted once
            self._ids.add(item.id)
            self._by_peer[item.peer] = self._by_peer.get(item.peer, 0) + item.size
            self.total += item.size
        while (len(queue) > STRANGER_QUEUE or self._held.get(item.peer, 0) > self._hold_bytes) \
                and self._drop_oldest(queue, item):
            pass
        while self.total > ALL_STRANGERS_HOLD:
            if not any(peer in self._queues and self._drop_oldest(self._queues[peer], item)
                       for peer in self._largest_first()):
                return  # all on their way: acked, or timed out, soon

    def discard(self, item: Outgoing) -> None:
        """A message leaves the pump (acked, dropped, withdrawn, expired)."""
        if item.id in self._ids:
            self._ids.remove(item.id)
            self.total -= item.size
            left = self._by_peer[item.peer] - item.size
            if left:
                self._by_peer[item.peer] = left
            else:
                del self._by_peer[item.peer]

    def _largest_first(self) -> list[str]:
        return sorted(self._by_peer, key=self._by_peer.__getitem__, reverse=True)


__all__ = ["ALL_STRANGERS_HOLD", "STRANGER_QUEUE", "StrangerReplies"]
