"""What promises over one incoming tally may make this node hold (``protocol.lift.check_held``).

A hop cannot void a lift on its own (its referee may have decided good), so what a partner
can open is bounded, not what it left open: at most ``MAX_HELD`` lifts that came over the
tally pending here, and among the places their records say their referees listen (those
pending, and those decided in the last hour) at most ``MAX_UNANSWERED`` that never answered
a dial of ours. Reading those places is a scan of every lift over the tally in that hour; a
partner whose promises named a made-up referee paid it at every promise, 5 ms at 6,500
lifts, 13 ms at 15,000 (red team). So the places of a tally are read at most once a
``FRESH_MS``, and those that never answered kept meanwhile, each promise taken adding its
own if it has not: at most ``MAX_UNANSWERED`` and a few, whatever the number of places (a
partner naming this node itself as referee at 300 addresses, always answered, made a set
too large to keep, read again at every promise: 16 to 19 ms at 18,000 lifts). A place kept as
unanswered is checked again at each promise; one answered when it was read that the node
has forgotten since (it keeps the last 4,096 that answered) counts again at the next read.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from protocol import lift as lf
from store import lifts

Place = tuple[str, str | None]  # a referee's agent, where its record says it listens

FRESH_MS = 60_000  # how long the places read of a tally serve its promises
TALLIES = 1024  # tallies whose places are kept (the least recently used forgotten)


class LiftHolds:
    """Writer thread only: the places are read and kept within the promises' transactions
    (one that rolls back leaves its place kept: a superset still)."""

    def __init__(self, answered: Callable[[str, str | None], bool]) -> None:
        self._answered = answered
        self._places: OrderedDict[tuple[str, str], tuple[int, set[Place]]] = OrderedDict()

    def check(self, conn: sqlite3.Connection, record: dict[str, Any], tally: str, cuid: str,
              now_ms: int) -> None:
        """Refuse (``Refusal``) a promise over our user ``cuid``'s ``tally`` past the bounds;
        else note its place. Two indexed reads, the second only for a referee that never
        answered us where its record says it listens, and then once a ``FRESH_MS``."""
        asked: Place = (record["referee"]["agent"], lf.referee_at(record))
        unanswered = None
        if not self._answered(*asked):
            unanswered = {place for place in self._unanswered(conn, tally, cuid, now_ms)
                          if not self._answered(*place)}
        lf.check_held(record, tally, held=lifts.held(conn, tally, cuid), unanswered=unanswered)
        kept = self._places.get((tally, cuid))
        if kept is not None and unanswered is not None:
            kept[1].add(asked)

    def _unanswered(self, conn: sqlite3.Connection, tally: str, cuid: str, now_ms: int
                    ) -> set[Place]:
        """The places of the tally's lifts that had not answered when last read (at most
        ``FRESH_MS`` ago), and those of the promises taken since that had not either."""
        key = (tally, cuid)
        kept = self._places.get(key)
        if kept is not None and now_ms - kept[0] < FRESH_MS:
            self._places.move_to_end(key)
            return kept[1]
        places = {place for place in lifts.held_referees(
            conn, tally, cuid, now_ms - lf.UNANSWERED_WINDOW_MS) if not self._answered(*place)}
        self._places.pop(key, None)
        self._places[key] = (now_ms, places)
        while len(self._places) > TALLIES:
            self._places.popitem(last=False)
        return places


__all__ = ["LiftHolds"]
