"""A lift's loose ends on this node: asking its referee once the deadline has passed while it
is still pending here (DESIGN.md §4, step 5), and ``[lift] auto_clear``, which clears debt
cycles on a schedule as MyCHIPs' scheduler does. Both run as long as the node does."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from agentd.runtime.timers import Failures
from protocol import lift as lf
from protocol.errors import Refusal
from store import lifts

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime, Tx
    from agentd.services.credit.ledger import CreditLedger

log = logging.getLogger("agentd.lift")
QUERY_POLL_S = 60.0  # at most this long between looks while a lift is pending (a safety net)

Clear = Callable[..., Awaitable[dict[str, Any]]]  # LiftService.clear


class FollowUp:
    def __init__(self, runtime: Runtime, ledger: CreditLedger, clear: Clear) -> None:
        self.runtime = runtime
        self.ledger = ledger
        self._clear = clear
        self._work = trio.Event()  # a lift pending here is due sooner than we sleep until
        self._next_due: int | None = None  # ms: when the next question to a referee is due

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Ask the referee about every lift still pending past its deadline, until
        cancelled; sleeps until the next one is due (or a new lift starts)."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            if self.runtime.config.lift.auto_clear:
                nursery.start_soon(self._auto_clear)
            await self._follow_up()

    def due_at(self, due_ms: int) -> None:
        """A lift became pending here; its question to the referee is due at ``due_ms``."""
        if self._next_due is None or due_ms < self._next_due:
            self._next_due = due_ms
            self._work.set()

    async def _follow_up(self) -> None:
        """Look in the database only when a question is due (or ``QUERY_POLL_S`` passed): a
        lift that becomes pending here is due at its deadline, which ``due_at`` notes in
        memory, so taking part in a lift costs no look of its own."""
        asking = Failures("asking referees about lifts past their deadline")
        while True:
            self._next_due = None  # from here on, lifts that become pending note their due
            looked = await asking.retry(lambda: self.ledger.transact(self._ask_due))
            if looked is not None and (self._next_due is None or looked < self._next_due):
                self._next_due = looked  # else a lift told meanwhile is due sooner (or alone)
            while True:
                self._work = trio.Event()
                due = self._next_due
                wait = math.inf if due is None else min(
                    QUERY_POLL_S, (due - self.runtime.clock.now_ms()) / 1000)
                if wait <= 0:
                    break
                with trio.move_on_after(wait):
                    await self._work.wait()  # a lift due sooner: sleep until then instead
                    continue
                break

    def _ask_due(self, tx: Tx) -> int | None:
        """Ask about the lifts that are due; when the next one is (ms since the epoch, at
        least 50 ms from now), or None when no lift is pending."""
        for row in lifts.due(tx.conn, tx.now_ms):
            self.ledger.emit(tx, [lf.query(lifts.record_of(row), from_cuid=row["payor"])])
            lifts.asked(tx.conn, row["lift"], tx.now_ms)
        due = lifts.next_due(tx.conn)
        return None if due is None else max(due, tx.now_ms + 50)

    async def _auto_clear(self) -> None:
        """``[lift] auto_clear``: every ``interval_s``, clear a debt cycle through each of our
        users owed at least ``minimum``."""
        clearing = Failures("[lift] auto_clear")
        while True:
            await trio.sleep(self.runtime.config.lift.interval_s)
            await clearing.retry(self._clear_creditors)

    async def _clear_creditors(self) -> None:
        settings = self.runtime.config.lift
        creditors = await self.runtime.db.write(
            lambda conn: self.ledger.store.creditors(conn, settings.minimum))
        for cuid in creditors:
            try:
                cleared = await self._clear(cuid, settings.minimum, exact=False,
                                            memo="auto clear")
            except Refusal as exc:  # no cycle now, or it filled up meanwhile
                log.debug("auto clear for %s: %s", cuid, exc)
                continue
            log.info("auto clear for %s: lift %s of %d mCHIP", cuid, cleared["lift"],
                     cleared["units"])


__all__ = ["QUERY_POLL_S", "FollowUp"]
