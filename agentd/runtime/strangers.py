"""Peers we did not choose: remembered in a bounded table that forgets the oldest.

Anyone with a key can complete a handshake. Such a peer is not stored in the database, its
claimed ``listen`` address is never dialled, and it takes one slot here (its address as it
claims it, when we last saw it) until newer strangers push it out.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

MAX_STRANGERS = 1024


@dataclass(slots=True)
class Stranger:
    agent: str
    listen: str | None
    last_seen: int


class Strangers:
    def __init__(self, limit: int = MAX_STRANGERS) -> None:
        self.limit = limit
        self._table: OrderedDict[str, Stranger] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, agent: str) -> bool:
        return agent in self._table

    def seen(self, agent: str, listen: str | None, now_ms: int) -> None:
        """Note a stranger (the most recent last); past the limit the oldest is forgotten."""
        self._table[agent] = Stranger(agent, listen, now_ms)
        self._table.move_to_end(agent)
        while len(self._table) > self.limit:
            self._table.popitem(last=False)
            self.evicted += 1

    def get(self, agent: str) -> Stranger | None:
        return self._table.get(agent)

    def forget(self, agent: str) -> None:
        """A stranger we came to know (a tally opened, a peer added) is one no longer."""
        self._table.pop(agent, None)


__all__ = ["MAX_STRANGERS", "Stranger", "Strangers"]
