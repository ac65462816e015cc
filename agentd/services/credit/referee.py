"""The referee role: deciding the lifts whose records name this node (DESIGN §4, step 4).

A commit before the deadline makes a lift good, a cancel (or any event past the deadline
with no decision yet) void; the decision is signed once, kept for ever under the record it
decides (``store.lifts``), logged as evidence (under ``lf.evidence_pid``, in the referee's
namespace at the clearing house, so no hop can create the process first), and sent to every
node on the path that we know or that is connected to us. Asked again (a query, a commit or
cancel repeated), the referee answers the asker with the decision it keeps, one answer at a
time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agentd.runtime.answers import AnswersInFlight
from agentd.runtime.context import Reject, Tx
from protocol import lift as lf
from store import lifts

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime
    from agentd.services.credit.ledger import CreditLedger
    from protocol.envelope import Envelope
    from protocol.messages import Send

log = logging.getLogger("agentd.lift")


class Referee:
    def __init__(self, runtime: Runtime, ledger: CreditLedger) -> None:
        self.runtime = runtime
        self.ledger = ledger
        # decisions sent again, by (lift, record digest, agent asking)
        self._told_again = AnswersInFlight(1)

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        """A ``lift/commit``, ``cancel`` or ``query`` for a record that names us referee."""
        record = envelope.object.get("record")
        lf.check_record(record)
        if record["referee"]["agent"] != self.runtime.agent_id:
            raise Reject("NOT_REFEREE", f"lift {record['lift']} is refereed by "
                         f"{record['referee']['agent']}, not this node")
        decided = lifts.decision(tx.conn, record["lift"], record)
        decision, sends = lf.decide(decided, envelope.action, record, now_ms=tx.now_ms,
                                    key=self.runtime.key, asker=envelope.from_.agent)
        if decided is not None:  # asked again: the decision kept, to the asker
            self._tell_again(tx, record, sends)
        else:  # first: the nodes wait for it, the evidence does not
            self.ledger.emit(tx, [send for send in sends if self._reachable(send.to.agent)])
        if decided is not None and decision is not decided:  # one made before 009, signed again
            lifts.decide(tx.conn, record, decision, tx.now_ms, legacy=True)
        if decision is not None and decided is None:
            lifts.decide(tx.conn, record, decision, tx.now_ms)
            log.info("lift %s: %s (%s)", record["lift"], decision["state"], envelope.action)
            owners = sorted({hop["agent"] for hop in record["path"]})
            self.ledger.evidence.log(tx, lf.evidence_pid(record), owners, "lift.decision",
                                     {"record": record, "decision": decision},
                                     ref=record["lift"])

    def _tell_again(self, tx: Tx, record: dict[str, Any], sends: list[Send]) -> None:
        """Send a decision kept to the agent asking again, unless the one we sent it last
        time still waits in the outbox: a participant that asks (or commits, or cancels)
        over and over without acking gets one answer at a time, not a row each."""
        for send in sends:
            if not self._reachable(send.to.agent):
                continue
            key = (record["lift"], lf.record_digest(record), send.to.agent)
            if self._told_again.room(tx.conn, key):
                self._told_again.sent(key, tx.send(send))

    def _reachable(self, agent: str) -> bool:
        """Whether to push a decision to ``agent``: ourselves, a node we know, or one
        connected to us now. Any other asks (``LiftService._ask_referee``), and a made-up
        record cannot make us dial the addresses it names or queue messages nobody takes."""
        node = self.runtime
        return agent == node.agent_id or node.address_of(agent) is not None or node.connected(
            agent)
