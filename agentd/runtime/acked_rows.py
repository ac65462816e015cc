"""The outbox rows of acked messages, deleted together: one commit (and one fsync) per
``ACK_DELETE_S`` instead of one per message sent. A crash before a flush only makes the next
run send those messages again, and their recipients ack the duplicates; a clean stop
deletes them."""

from __future__ import annotations

from collections.abc import Callable

from agentd.runtime.timers import Ticker
from store import outbox
from store.db import Database

ACK_DELETE_S = 0.2  # acked rows wait this long, to be deleted together


class AckedRows:
    def __init__(self, db: Callable[[], Database]) -> None:
        """``db()``: the node's database, once it has opened it."""
        self.db = db
        self._ids: list[bytes] = []
        self._flusher = Ticker(ACK_DELETE_S, self._flush, armed=False,
                               task="deleting acked outbox rows")

    def add(self, message_id: bytes) -> None:
        """Delete this acked message's row with the next batch."""
        self._ids.append(message_id)
        self._flusher.wake()

    async def run(self) -> None:
        """Flush every ``ACK_DELETE_S`` while rows wait, until cancelled (the node stops):
        then the database takes the last batch as a job before it closes."""
        try:
            await self._flusher.run()
        finally:
            ids, self._ids = self._ids, []
            if ids:
                self.db().submit(lambda conn: outbox.delete(conn, ids))

    async def _flush(self) -> bool:
        """Delete the rows acked since the last flush; ids whose delete failed (the
        database's failure) are kept for the ticker's next try."""
        ids, self._ids = self._ids, []
        if ids:
            try:
                await self.db().write(lambda conn: outbox.delete(conn, ids))
            except BaseException:
                self._ids[:0] = ids
                raise
        return False
