"""Answers from the clearing house that never came: the request is sent again.

A clearing house keeps its answer to a request (a receipt, a created process, its JWKS) in its
outbox for an hour (``protocol.expiry``); a node that is down or cut off longer never gets it.
Its request would then stay ``sent`` for ever: the receipt missing from ``receipts.verify``
(counted as pending), the logs of a process still ``creating`` never sent, receipts waiting for
a JWKS left ``unchecked``. So once a minute, while such a request waits, this notes when each
was delivered (its message acked and gone from the outbox) and sends again those still
unanswered ``ANSWER_LOST_MS`` after that, by which time the answer has expired. What a
previous run left delivered is taken as delivered when it was made (the node may have been
down for hours): a node back from a long stop asks again within a minute, and one back from
a short one is answered before then (an answer that crosses a request sent again is ignored,
and the clearing house holds one entry more).

- an evidence log goes back to ``waiting`` and out with the next batch (the clearing house then
  holds two entries for the same payload, and this node the receipt of the second);
- ``create_process`` and ``keys`` go again as they were (a process that exists already is
  ``BAD_PARAMETERS``, which makes it ready, as when a tally partner created it first).

``ch.*`` RPC calls are not sent again: their callers waited at most ``REQUEST_TIMEOUT``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from agentd.runtime.context import Tx
from agentd.runtime.timers import Ticker
from protocol import clearing as ch
from protocol.codec import unpack
from protocol.expiry import EXPIRY_MS, MINUTE_MS
from protocol.keys import ChipAddress
from protocol.messages import Send
from store import clearing as store

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentd.runtime.context import Runtime

log = logging.getLogger("agentd.evidence")

CHECK_S = 60.0  # between looks, while an answer is owed
# the clearing house's answer is dropped this long after it was made, at the latest
ANSWER_LOST_MS = EXPIRY_MS[(ch.TARGET, "processed_batch")] + 5 * MINUTE_MS


class LostAnswers:
    def __init__(self, runtime: Runtime, address: Callable[[str], ChipAddress],
                 evidence_due: Callable[[], None]) -> None:
        self.runtime = runtime
        self._address = address  # where to send to a clearing house, by agent id
        self._evidence_due = evidence_due
        self._ticker = Ticker(CHECK_S, self.check,
                              task="asking the clearing house again for lost answers")
        self._first = True  # the first look notes what a previous run left delivered

    def wake(self) -> None:
        """A request that needs its answer was sent: look now and then until none waits."""
        self._ticker.wake()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        await self._ticker.run(task_status=task_status)

    async def check(self) -> bool:
        """Note deliveries, send again what is overdue; whether an answer is still owed."""
        first, self._first = self._first, False
        if not self.runtime.db.reading(store.owes_answers):
            return False

        def work(tx: Tx) -> bool:
            store.note_delivered(tx.conn, tx.now_ms, at_creation=first)
            logs = 0
            for row in store.unanswered(tx.conn, tx.now_ms - ANSWER_LOST_MS):
                if row["action"] == "log":
                    store.resend(tx.conn, row["seq"], None)
                    logs += 1
                    continue
                obj = {} if row["action"] == "keys" else unpack(row["object"])
                message_id = tx.send(Send(self._address(row["ch"]), ch.TARGET, row["action"],
                                          obj))
                store.resend(tx.conn, row["seq"], message_id)
                log.info("clearing house %s never answered %s: asked again", row["ch"][:8],
                         row["action"])
            if logs:
                log.info("clearing house never answered %d evidence logs: sent again", logs)
                tx.after_commit(self._evidence_due)
            return True

        return await self.runtime.transact(work)


__all__ = ["LostAnswers"]
