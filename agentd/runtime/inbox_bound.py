"""At most ``inbox_per_peer`` processed-message ids of any one peer in the inbox.

The inbox keeps a message's id 30 days, so that its sender's retries are acked and ignored.
A stranger's messages wait for its write ration; a peer we know (a tally partner, our
clearing house) has none, and could have us keep an id for every message it sent in 30 days,
as fast as it sends them. So, besides the 30 days, a peer's ids beyond its newest
``inbox_per_peer`` go: a peer's retry reaches us within minutes of the message (the outbox's
backoff), long before it has sent that many others. Trimming walks the peer's newest ids, so
it is done once every ``keep // 8`` ids a peer adds (a peer holds at most ~1.125 ``keep``),
on the writer thread, in the transaction of the message that passes the mark.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import OrderedDict

from store import inbox

log = logging.getLogger("agentd.runtime.inbox")

TRACKED = 4096  # peers whose count since their last trim is kept (the oldest forgotten)


class InboxBound:
    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._every = max(1, keep // 8)
        self._added: OrderedDict[str, int] = OrderedDict()  # writer thread only
        self.trimmed = 0  # ids forgotten before their 30 days (getinfo: inbox_trimmed)

    def claimed(self, conn: sqlite3.Connection, peer: str) -> None:
        """``peer``'s message took an inbox row (writer thread, in its transaction)."""
        added = self._added.pop(peer, 0) + 1
        if added < self._every:
            self._added[peer] = added
            while len(self._added) > TRACKED:  # forgotten: counted afresh, trimmed later
                self._added.popitem(last=False)
            return
        gone = inbox.trim(conn, peer, self.keep)
        if gone:
            self.trimmed += gone
            log.info("forgot %d message ids of %s past its newest %d (inbox_per_peer): its "
                     "older messages, sent again, would be taken again", gone, peer[:8],
                     self.keep)


__all__ = ["InboxBound"]
