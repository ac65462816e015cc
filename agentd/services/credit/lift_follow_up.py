"""A lift's loose ends on this node: asking its referee once the deadline has passed while it
is still pending here (DESIGN.md §4, step 5), and ``[lift] auto_clear``, which clears debt
cycles on a schedule as MyCHIPs' scheduler does. Both run as long as the node does."""

from __future__ import annotations

import logging
import math
import random
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
Decided = Callable[[str, float], Awaitable[dict[str, Any]]]  # LiftService.decided
JITTER = 0.5  # auto clear rounds come interval_s apart, times 1 - JITTER to 1 + JITTER
RACE_TRIES = 3  # lifts an auto clear round starts for one user while hops cancel them
DECIDED_GRACE_S = 10.0  # past a lift's deadline, for its referee's void to arrive
_RANDOM = random.Random()  # its own: the global random stays whoever seeded it (a test)


class FollowUp:
    def __init__(self, runtime: Runtime, ledger: CreditLedger, clear: Clear,
                 decided: Decided) -> None:
        self.runtime = runtime
        self.ledger = ledger
        self._clear = clear
        self._decided = decided
        self._work = trio.Event()  # a lift pending here is due sooner than we sleep until
        self._next_due: int | None = None  # ms: when the next question to a referee is due

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Ask the referee about every lift still pending past its deadline, until
        cancelled; sleeps until the next one is due (or a new lift starts)."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            if self.runtime.config.lift.auto_clear:
                nursery.start_soon(self.auto_clear)
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

    async def auto_clear(self) -> None:
        """``[lift] auto_clear``: about every ``interval_s``, clear debt cycles through each
        of our users owed at least ``minimum``. Each wait is drawn anew between half and one
        and a half ``interval_s``: nodes started together, or with one interval, would else
        clear in the same instant round after round, when their searches see the same debt
        and their lifts take hops the others need, so that a hop cancels them (void)."""
        clearing = Failures("[lift] auto_clear")
        while True:
            await trio.sleep(self.runtime.config.lift.interval_s
                             * _RANDOM.uniform(1 - JITTER, 1 + JITTER))
            await clearing.retry(self._clear_creditors)

    async def _clear_creditors(self) -> None:
        """One lift at a time, each waited for until it is decided, so that the next search
        sees the debt the last one cleared instead of racing it for the same hops. A lift
        still pending past its deadline ends the round: its referee is slow or unreachable,
        and more lifts would only hold more room until it answers."""
        settings = self.runtime.config.lift
        creditors = await self.runtime.db.write(
            lambda conn: self.ledger.store.creditors(conn, settings.minimum))
        for cuid in creditors:
            if not await self._clear_for(cuid, settings.minimum):
                return

    async def _clear_for(self, cuid: str, minimum: int) -> bool:
        """Clear a debt cycle through ``cuid``, if one can carry ``minimum``. A lift a hop
        cancelled lost a race for a hop's room to another lift: look again after a random
        while, up to 4, then 8 times what that lift took (a node whose clearing lost the
        same race backs off too: one of the two goes first), at most ``RACE_TRIES`` lifts.
        False when a lift was still undecided ``DECIDED_GRACE_S`` past its deadline."""
        for attempt in range(RACE_TRIES):
            began = trio.current_time()
            try:
                started = await self._clear(cuid, minimum, exact=False, memo="auto clear")
            except Refusal as exc:  # no cycle now, or it filled up meanwhile
                log.debug("auto clear for %s: %s", cuid, exc)
                return True
            log.info("auto clear for %s: lift %s of %d mCHIP", cuid, started["lift"],
                     started["units"])
            life_s = (started["deadline"] - self.runtime.clock.now_ms()) / 1000
            ended = await self._decided(started["lift"], max(life_s, 0) + DECIDED_GRACE_S)
            if ended["state"] == lf.PEND:
                return False
            if not cancelled(ended) or attempt == RACE_TRIES - 1:
                return True
            took_s = trio.current_time() - began
            await trio.sleep(took_s * _RANDOM.uniform(0, 2 ** (attempt + 2)))
        return True


def cancelled(shown: dict[str, Any]) -> bool:
    """Whether a lift (as ``lift.show`` shows it) ended void because a hop cancelled it,
    before its deadline: not because the deadline passed."""
    decision = shown["decision"]
    return (shown["state"] == lf.VOID and decision is not None
            and decision["date"] < shown["deadline"])


__all__ = ["QUERY_POLL_S", "FollowUp"]
