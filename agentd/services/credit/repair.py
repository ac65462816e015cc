"""Chain repair: resend what a partner may have lost, for chains that are not settled.

Once a second :class:`ChainRepair` looks for chains that are not settled, have been still for
a while (or whose partner's channel just opened) and whose partner has nothing waiting in our
outbox; each repair (``protocol.chain.resync``) pushes the next one back (doubling, up to a
minute), and any chain change resets the pace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from agentd.runtime.context import Tx
from agentd.runtime.timers import Ticker
from agentd.services.credit.ledger import RESYNC_QUIET_MS, CreditLedger
from protocol import chain as ch
from store import credit as credit_store
from store import outbox

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime

RESYNC_INTERVAL = 1.0  # s between looks for chains to repair
RESYNC_MAX_MS = 60_000  # while repairs do not settle a chain, at most this far apart


class ChainRepair:
    def __init__(self, node: Runtime, ledger: CreditLedger) -> None:
        self.runtime = node
        self.ledger = ledger
        self._connected: set[str] = set()
        self._unsettled = False  # whether the last look found a chain to settle
        self._ticker = Ticker(RESYNC_INTERVAL, self._tick)
        ledger.on_change.append(self._ticker.wake)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Repair unsettled chains now and then (only while some chain is unsettled: a
        chain change wakes it), until cancelled."""
        await self._ticker.run(task_status=task_status)

    async def _tick(self) -> bool:
        await self.resync()
        return self._unsettled

    async def resync(self) -> int:
        """Send ``protocol.chain.resync`` repairs for every unsettled chain that is due (still
        for a while, or its partner's channel just opened) and whose partner has nothing
        waiting in our outbox; returns how many chains were repaired."""
        node = self.runtime
        now = node.clock.now_ms()
        rows = node.db.reading(credit_store.unsettled)
        self._unsettled = bool(rows)
        waiting = node.db.reading(outbox.waiting_peers)
        partners = {row["partner"] for row in rows}
        connected = {agent for agent in partners
                     if agent == node.agent_id or node.connected(agent)}
        opened, self._connected = connected - self._connected, connected
        due = [row for row in rows if row["partner"] not in waiting
               and (row["resync_due"] <= now or row["partner"] in opened)]
        if not due:
            return 0

        def work(tx: Tx) -> int:
            for row in due:
                holding = self.ledger.store.get(tx.conn, row["uuid"], row["cuid"])
                if holding is None or holding.chain is None:
                    continue
                self.ledger.emit(tx, ch.resync(holding.chain, holding.local))
                pause = RESYNC_QUIET_MS * 2 ** min(row["resync_tries"] + 1, 16)
                due_ms = tx.now_ms + min(pause, RESYNC_MAX_MS)
                self.ledger.store.resynced(tx.conn, *holding.key, due_ms)
            return len(due)

        return await self.ledger.transact(work)

