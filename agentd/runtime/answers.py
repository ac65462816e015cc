"""Answers sent again, a few at a time: what a peer that asks over and over without acking
can make us keep.

A chain message that changes nothing, or a question to a lift's referee asked again, is
answered with something the asker's own retry asks for again if it is lost. So while
``per_key`` such answers under one key (a tally, an asker of one lift) still wait in the
outbox, a new one is not written; otherwise each small question from a peer that never acks
would leave a row of its own, up to 100 blocks or a decision each, for as long as the outbox
keeps it. Keys are remembered for the newest ``keys`` of them (writer thread).
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Hashable

from store import outbox


class AnswersInFlight:
    def __init__(self, per_key: int, keys: int = 4096) -> None:
        self.per_key = per_key
        self.keys = keys
        self._sent: OrderedDict[Hashable, list[bytes]] = OrderedDict()

    def room(self, conn: sqlite3.Connection, key: Hashable) -> bool:
        """Whether another answer under ``key`` may be written now."""
        waiting = outbox.still_pending(conn, self._sent.get(key, ()))
        self._sent[key] = waiting
        self._sent.move_to_end(key)
        while len(self._sent) > self.keys:
            self._sent.popitem(last=False)
        return len(waiting) < self.per_key

    def sent(self, key: Hashable, message_id: bytes) -> None:
        """Note an answer written under ``key`` (after :meth:`room` said there was room)."""
        self._sent.setdefault(key, []).append(message_id)
