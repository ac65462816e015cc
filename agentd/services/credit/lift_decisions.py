"""A lift's decision at a participant (DESIGN.md §4, step 5).

``LiftService`` hands this every ``lift/decision``. A decision signed by the lift's referee on
the record we hold makes every pending chit of the lift here good (chained) or void, in one
transaction; a void on a lift that has not reached us is remembered in memory, so its promise
is refused if it comes late.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentd.logs import event
from agentd.runtime import clocks
from agentd.runtime.context import Reject, Tx
from protocol import chit_states as cs
from protocol import lift as lf
from protocol.chit_lift import lift_decided
from store import lifts

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime
    from agentd.services.credit.ledger import CreditLedger
    from agentd.services.credit.routes import RouteService
    from protocol.envelope import Envelope

log = logging.getLogger("agentd.lift")
HEARD_VOIDS = 4096  # voids remembered on lifts whose promise has not reached us (writer thread)
_PENDING = (cs.A_LIFT, cs.L_LIFT)


class LiftDecisions:
    def __init__(self, runtime: Runtime, ledger: CreditLedger, routes: RouteService,
                 wake: Callable[[str], None]) -> None:
        self.runtime = runtime
        self.ledger = ledger
        self.routes = routes
        self._wake = wake  # lift.wait callers of a lift decided here
        self.heard_void: OrderedDict[str, bytes] = OrderedDict()  # lift -> record digest

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        """A ``lift/decision``: ``{record, decision}``."""
        obj = envelope.object
        record, decision = obj.get("record"), obj.get("decision")
        lift = record.get("lift") if isinstance(record, dict) else None
        row = lifts.get(tx.conn, lift) if isinstance(lift, str) else None
        if row is None:  # we hold nothing of this lift (our hop was never reached)
            lf.check_record(record)  # a lift new to us: its record must stand on its own
            if lf.check_decision(decision, record) == lf.VOID:
                self._hear_void(record, tx.now_ms)
            return
        state = lf.check_decision(decision, lifts.record_of(row))  # the record we took part in
        if row["state"] == state:
            return  # a repeat
        if row["state"] != lf.PEND:
            raise Reject("CONFLICT", f"lift {row['lift']} is already {row['state']} here")
        self.apply(tx, row["lift"], state, decision)
        if state == lf.VOID and row["error"] is None:  # say why, as far as we can tell
            late = isinstance(decision.get("date"), int) and decision["date"] >= row["deadline"]
            lifts.set_error(tx.conn, row["lift"], "the referee voided it: " + (
                "its deadline passed before the terminus's commit reached it (a node on the"
                f" path, or the referee, down or slow; or {self._clocks(decision)})" if late
                else "a hop could not take part and cancelled it"),
                tx.now_ms)

    def apply(self, tx: Tx, lift: str, state: str, decision: dict[str, Any]) -> None:
        """Every pending chit of the lift here becomes good (and is chained) or void."""
        for chit in self.ledger.store.lift_chits(tx.conn, lift):
            if chit["state"] not in _PENDING:
                continue
            holding = self.ledger.holding(tx.conn, chit["tally"], chit["cuid"])
            pending = self.ledger.store.get_chit(tx.conn, chit["tally"], chit["cuid"],
                                                 chit["uuid"])
            assert pending is not None
            decided = lift_decided(pending, state)
            units = pending.chit["units"]
            delta = (-units, 0) if pending.state == cs.A_LIFT else (0, -units)
            if state == lf.GOOD:
                self.ledger.good(tx, holding, [decided], batched=False, lift_delta=delta)
            else:
                self.ledger.commit(tx, holding, fresh=[decided], lift_delta=delta)
                self.ledger.log(tx, holding.local, "chit.void", decided.to_map(),
                                ref=decided.uuid)
        lifts.settle(tx.conn, lift, state, decision, tx.now_ms)
        log_lift(tx, lift, state)
        tx.after_commit(lambda: self._wake(lift))
        tx.after_commit(lambda: self.routes.known.decided(lift, state))

    def _clocks(self, decision: dict[str, Any]) -> str:
        """What a late void says of the clocks: the referee's offset from ours, when its
        messages have shown it (``agentd.runtime.clocks``) to be off by more than noise."""
        ahead = self.runtime.clock_ahead_ms(decision["referee"])
        if ahead is None or abs(ahead) < clocks.WARN_MS:
            return "clocks apart"
        return f"clocks apart: the referee's is {ahead / 1000:+.1f} s from this node's"

    def _hear_void(self, record: dict[str, Any], now_ms: int) -> None:
        """Remember a void on a lift that names our node but has not reached it, so its
        promise is refused if it comes late, until its deadline (a promise after it is refused
        anyway). In memory, at most ``HEARD_VOIDS`` (a restart forgets them: the promise is
        then taken and voided when the referee is asked): anyone can sign records as their
        own referee, and no row of ours is theirs to make. A void on another record of the
        same uuid (one made up) does not match the real one's promise."""
        if record["deadline"] <= now_ms or all(
                hop["agent"] != self.runtime.agent_id for hop in record["path"]):
            return
        heard = self.heard_void
        heard[record["lift"]] = lf.record_digest(record)
        heard.move_to_end(record["lift"])
        while len(heard) > HEARD_VOIDS:
            heard.popitem(last=False)


def log_lift(tx: Tx, lift: str, state: str, **fields: Any) -> None:
    """The info line per state change of a lift on this node, once committed."""
    tx.after_commit(functools.partial(event, log, "lift state", lift=lift, state=state,
                                      **fields))
