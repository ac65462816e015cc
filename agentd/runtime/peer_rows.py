"""At most ``keep`` rows of any one peer in a table that remembers what peers sent.

The inbox keeps a message's id 30 days, so that its sender's retries are acked and ignored;
the relay's replay cache keeps a requestor's nonces a week. A stranger's messages wait for
its write ration; a peer we know (a tally partner, our clearing house) has none, and could
have us keep a row for every message it sent in that time, as fast as it sends them (its
notes: ~11,000 ids a second; its relay queries: ~1,900 nonces a second). So, besides their
time, a peer's rows beyond its newest ``keep`` go: they guard only against that peer's own
repeats (a retry of its message, a replay of its own signed query), and a peer's retry comes
within minutes, long before it has sent that many others. Trimming walks the peer's newest
rows, so it is done once every ``keep // 8`` rows a peer adds (a peer holds at most ~1.125
``keep``), on the writer thread, in the transaction of the row that passes the mark.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger("agentd.runtime.peer_rows")

TRACKED = 4096  # peers whose count since their last trim is kept (the oldest forgotten)
Trim = Callable[[sqlite3.Connection, str, int], int]  # (conn, peer, keep) -> rows deleted


class PeerRows:
    def __init__(self, keep: int, trim: Trim, rows: str, key: str) -> None:
        """``rows``: what the rows are, for the log (``message ids``); ``key``: what sets
        ``keep`` (``inbox_per_peer``)."""
        self.keep = keep
        self._trim = trim
        self._rows, self._key = rows, key
        self._every = max(1, keep // 8)
        self._added: OrderedDict[str, int] = OrderedDict()  # writer thread only
        self.trimmed = 0  # rows forgotten before their time (getinfo)

    def added(self, conn: sqlite3.Connection, peer: str) -> None:
        """``peer`` made us keep one more row (writer thread, in its transaction, once
        nothing after can refuse the message: a refusal undoes the row, and counted, a trim
        landing on one would be undone too, which a peer that knows its count could arrange
        every time)."""
        # a peer whose count is not here (new, forgotten past TRACKED, or since a restart)
        # is looked at now: counting it afresh from 0, 4,096 fresh strangers' notes between a
        # peer's trims had it skip every trim (an index probe, ~µs, for a peer with few rows)
        added = self._added.pop(peer, self._every - 1) + 1
        self._added[peer] = added if added < self._every else 0
        while len(self._added) > TRACKED:  # forgotten: looked at again at its next row
            self._added.popitem(last=False)
        if added < self._every:
            return
        gone = self._trim(conn, peer, self.keep)
        if gone:
            self.trimmed += gone
            log.info("forgot %d %s of %s past its newest %d (%s): the older ones, sent again, "
                     "would be taken again", gone, self._rows, peer[:8], self.keep, self._key)


__all__ = ["PeerRows"]
