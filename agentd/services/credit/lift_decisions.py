"""A lift's decision at a participant (DESIGN.md §4, step 5), and a referee that equivocates.

``LiftService`` hands this every ``lift/decision``. A decision signed by the lift's referee on
the record we hold makes every pending chit of the lift here good (chained) or void, in one
transaction; a void on a lift that has not reached us is remembered in memory, so its promise
is refused if it comes late.

A good decision on a lift we hold nothing of, from a tally partner of ours on its path, is a
lift a node restored from a backup lost (``take_back``): the partner shows it when we refuse
its chain message that carries the lift's chit (``on_undecided``, below). Each part of it is
taken only from the partner that pays into us on that part (``vouchers``).

A referee that signs both ``good`` and ``void`` on one record (``protocol.lift_equivocation``)
could leave a tally's partners disagreeing for ever, one holding the lift chit good and in its
chain, the other void. Two such decisions are a proof anyone can check, and a node that holds
one and hears the other (or hears both in one message) settles the lift **good**: its void
chits become good and are chained. It keeps the losing decision on the lift row (``lift.show``
``equivocation``), logs the proof to its clearing house (pid ``AGENT/LIFT/equivocation`` in its
own namespace, owned by every agent on the path), warns, counts it
(``getinfo.counters.lift_equivocations``), refuses the referee for later lifts
(``refusal``: ``equivocators``, the newest ``MAX_EQUIVOCATORS``) and shows the proof to its
partners on the lift, who may hold the losing state. What gets a partner that holds a lift
void the good decision in the first place is its refusal of our chain message carrying the
chit (``on_undecided``): we show it the decision.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentd.logs import event
from agentd.runtime import clocks
from agentd.runtime.answers import AnswersInFlight
from agentd.runtime.context import Reject, Tx
from protocol import chit_states as cs
from protocol import lift as lf
from protocol import lift_equivocation as eq
from protocol.chit_lift import lift_chit, lift_decided
from protocol.codec import unpack
from protocol.errors import Refusal
from protocol.messages import Send
from store import lifts, outbox

if TYPE_CHECKING:
    import sqlite3

    from agentd.runtime.context import Runtime
    from agentd.services.credit.ledger import CreditLedger
    from agentd.services.credit.routes import RouteService
    from protocol.envelope import Envelope
    from store.credit import Holding

log = logging.getLogger("agentd.lift")
HEARD_VOIDS = 4096  # voids remembered on lifts whose promise has not reached us (writer thread)
MAX_EQUIVOCATORS = 1024  # referees remembered as having equivocated (rows)
_PENDING = (cs.A_LIFT, cs.L_LIFT)
_VOID = (cs.A_VOID, cs.L_VOID)


class LiftDecisions:
    def __init__(self, runtime: Runtime, ledger: CreditLedger, routes: RouteService,
                 wake: Callable[[str], None]) -> None:
        self.runtime = runtime
        self.ledger = ledger
        self.routes = routes
        self._wake = wake  # lift.wait callers of a lift decided here
        # (lift, record digest) of voids heard on lifts not here, oldest first
        self.heard_void: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._shown = AnswersInFlight(1)  # decisions and proofs shown, by (lift, agent)

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        """A ``lift/decision``: ``{record, decision, other?}``."""
        obj = envelope.object
        record, decision = obj.get("record"), obj.get("decision")
        lift = record.get("lift") if isinstance(record, dict) else None
        row = lifts.get(tx.conn, lift) if isinstance(lift, str) else None
        if row is None:  # we hold nothing of this lift: our hop was never reached, or ...
            lf.check_record(record)  # a lift new to us: its record must stand on its own
            if lf.check_decision(decision, record) == lf.VOID:
                self._hear_void(record, tx.now_ms)
                return
            if not self.take_back(tx, record, decision, envelope.from_.agent):
                return
            row = lifts.get(tx.conn, lift)  # ... we lost it: held good now, as it was
            assert row is not None
        elif row["state"] == lf.GOOD and obj.get("other") is None and lf.check_decision(
                decision, lifts.record_of(row)) == lf.GOOD:  # part of it taken back so far?
            self.take_back(tx, lifts.record_of(row), decision, envelope.from_.agent)
        known = lifts.record_of(row)  # the record we checked when we took part counts
        held = lifts.decision_of(row) if row["state"] != lf.PEND else None
        other = obj.get("other")
        outcome = eq.receive(known, held, decision, other)
        if outcome.proof is not None:
            self._proven(tx, row, known, outcome, envelope, carried=other is not None)
            return
        if row["state"] == outcome.state:
            return  # a repeat
        self.apply(tx, row["lift"], outcome.state, decision)
        if outcome.state == lf.VOID and row["error"] is None:  # say why, as far as we can tell
            late = isinstance(decision.get("date"), int) and decision["date"] >= row["deadline"]
            lifts.set_error(tx.conn, row["lift"], "the referee voided it: " + (
                "its deadline passed before the terminus's commit reached it (a node on the"
                f" path, or the referee, down or slow; or {self._clocks(decision)})" if late
                else "a hop could not take part and cancelled it"),
                tx.now_ms)

    def apply(self, tx: Tx, lift: str, state: str, decision: dict[str, Any],
              record: dict[str, Any] | None = None) -> None:
        """Every pending chit of the lift here becomes good (and is chained) or void; given
        the lift's ``record``, a good decision makes its void chits good too (the referee
        equivocated: ``protocol.lift_equivocation``), each the chit the promise made."""
        for chit in self.ledger.store.lift_chits(tx.conn, lift):
            again = record is not None and state == lf.GOOD and chit["state"] in _VOID
            if chit["state"] not in _PENDING and not again:
                continue
            holding = self.ledger.holding(tx.conn, chit["tally"], chit["cuid"])
            if again:
                assert record is not None
                self._chain_again(tx, holding, record, chit["uuid"])
                continue
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
        self._done_with_referee(tx, lift, decision["referee"])
        log_lift(tx, lift, state)
        tx.after_commit(lambda: self._wake(lift))
        tx.after_commit(lambda: self.routes.decided(lift, state))

    def _done_with_referee(self, tx: Tx, lift: str, referee: str) -> None:
        """A decided lift needs nothing more of its referee (the decision's signer, checked
        against the record): what we still queued to it about the lift (a commit, a cancel,
        a question) goes (a partner that named a made-up referee, and voided its lift itself
        with that referee's key, had us dial its address for ever), and its address is
        forgotten unless something else needs it."""
        for message_id, body in outbox.pending_bodies_to(tx.conn, referee, "lift",
                                                          ("commit", "cancel", "query")):
            record = (unpack(body).get("object") or {}).get("record")
            if isinstance(record, dict) and record.get("lift") == lift:
                tx.unsend(message_id)
        self.runtime.forget_referee(tx, referee)

    def take_back(self, tx: Tx, record: dict[str, Any], decision: dict[str, Any],
                  sender: str) -> bool:
        """A good ``decision`` (checked) on a lift we lack chits of, from agent ``sender``:
        when it is our tally partner on the lift's path, this node lost the lift (restored
        from a backup made before it) and the partner, which holds it good, showed it the
        decision. Nothing of a lift is signed by us, and a referee's good vouches for no hop
        (an honest one decides good on any record its terminus's agent commits), so what we
        pay out rests on the partner that pays it in, as its promise did the first time:
        each run of our users on the path is taken only on the word of the partner that pays
        into it, or where our own user is the payor, on its signature on the record
        (:func:`vouchers`; a partner we pay, in league with whoever made the record up, would
        gain by our taking it), and only under a referee we trust (:meth:`trusted`). A path
        that enters this node from two partners is so taken back a run at a time, as each
        partner shows the decision (its chain carries the run's chit), each run paying out
        what it takes in; until the last, the lift's error names the partners it waits for.
        Nor does a partner vouch for our limits: each chit must fit its tally as a promise's
        must (``protocol.lift.check_room``), or a partner that is its own lift's terminus,
        whose commit has an honest referee decide good, could run a made-up lift through us
        past every limit (``OVER_LIMIT``). Taken, a run's chits are pending, then the
        decision applied to them. False when ``sender`` is no partner of ours on the path,
        or vouches for no chit we lack: then the decision is ignored. Refused
        (``UNKNOWN_TALLY``) when a tally of ours the path crosses is not held here (opened
        after the backup, say), as none of its chits can be taken alone; and so, in the same
        words, when our user holds that tally with another user than the path's (a partner
        must not learn which tally uuids our users hold)."""
        agent, path, lift = self.runtime.agent_id, record["path"], record["lift"]
        holdings, missing = [], []  # (hop, our holding of its tally); what we lack
        for hop in range(len(path) - 1):
            for user, other in ((path[hop], path[hop + 1]), (path[hop + 1], path[hop])):
                if user["agent"] != agent:
                    continue
                holding = self.ledger.store.get(tx.conn, path[hop]["tally"], user["cuid"])
                if holding is None or holding.chain is None or not self.ledger.is_partner(
                        holding, other["agent"], other["cuid"]):  # as not held: see below
                    missing.append(f"{user['cuid']} on tally {path[hop]['tally']}")
                else:
                    holdings.append((hop, holding))
        if all(holding.local.partner.agent != sender for _, holding in holdings):
            return False
        held = {(chit["tally"], chit["cuid"]) for chit in self.ledger.store.lift_chits(
            tx.conn, lift)}
        lacking = [(hop, holding) for hop, holding in holdings
                   if (holding.local.uuid, holding.cuid) not in held]
        if not lacking and not missing:
            return False  # a repeat: we hold every chit of it
        vouched = vouchers(path, agent)
        taken = [(hop, holding) for hop, holding in lacking if vouched[hop] in (sender, SIGNED)]
        if not taken:  # the partner we pay there, say: it gains by our taking it
            hop = lacking[0][0] if lacking else 0
            log.info("lift %s: not taken back on the word of %s, which does not pay into "
                     "this node's user %s on it (hop %d: it takes it from the partner that "
                     "does)", lift, sender[:8], path[hop]["cuid"], hop)
            return False
        if missing:  # one side of an intermediary's alone would pay out what it took in
            raise Reject("UNKNOWN_TALLY", f"lift {lift} crosses {', '.join(missing)}"
                         ", which this node does not hold open (opened after the backup it was"
                         " restored from?): its chits are not taken on any tally")
        refused = self.trusted(tx.conn, record["referee"]["agent"])
        if refused is not None:
            raise Reject("REFEREE_REFUSED", f"lift {lift}: {refused}")
        chits = []  # (holding, its pending chit, whether the partner pays us)
        for hop, holding in taken:
            pending = lift_chit(record, hop, holding.local)  # the payor's key, if ours
            incoming = pending.state == cs.A_LIFT
            try:  # as a promise is: the partner vouches for the payment, not the limits
                lf.check_room(record, pending, holding.local, balance=holding.balance,
                              reserved=holding.lift_in if incoming else holding.lift_out)
            except Refusal as exc:
                raise Refusal(exc.code, f"lift {lift}, taken back: {exc.message}") from None
            chits.append((holding, pending, incoming))
        lifts.add(tx.conn, record, payor=path[0]["cuid"] if path[0]["agent"] == agent else None,
                  now_ms=tx.now_ms)
        units = record["units"]
        for holding, pending, incoming in chits:
            self.ledger.commit(tx, holding, fresh=[pending],
                               lift_delta=(units, 0) if incoming else (0, units))
        self.apply(tx, lift, lf.GOOD, decision)
        waiting = sorted({vouched[hop] for hop, _ in lacking} - {sender, SIGNED})
        if waiting:
            lifts.set_error(tx.conn, lift, f"{PART} (restored from a backup?): {len(taken)} of "
                            f"its chits here, as {sender} showed its decision; its chits on "
                            f"{len(lacking) - len(taken)} more tallies wait for "
                            f"{', '.join(waiting)}, which pays into this node on that part, to "
                            "show it too (a partner vouches only for what it pays in)", tx.now_ms)
        elif (lifts.get(tx.conn, lift)["error"] or "").startswith(PART):  # the rest, now
            lifts.set_error(tx.conn, lift, None, tx.now_ms)
        log.info("lift %s: good, as partner %s showed its decision (%d of its chits here%s); "
                 "this node held %s of it (restored from a backup made before it?)", lift,
                 sender[:8], len(taken), f", {len(lacking) - len(taken)} wait for "
                 f"{', '.join(agent[:8] for agent in waiting)}" if waiting else "",
                 "part" if held else "nothing")
        return True

    def trusted(self, conn: sqlite3.Connection, referee: str) -> str | None:
        """Why this node does not take back a lift it lost on ``referee``'s word (None: it
        does). A lift is taken back only from the partner that pays into it
        (:func:`vouchers`), but a referee of that partner's making could sign good on a
        record nobody else saw and have the node hold a lift its own node never took part
        in. So the referee must be one in ``[lift] referees`` (when set), or else the one
        this node names for its own lifts or its clearing house; never one proven to have
        equivocated."""
        config = self.runtime.config
        allowed = config.lift.referees or tuple(dict.fromkeys(agent for agent in (
            config.referee or self.runtime.agent_id,
            config.clearinghouse.agent if config.clearinghouse else None) if agent))
        if referee not in allowed:
            return (f"a lift this node lost is taken back only under a referee it trusts: "
                    f"{', '.join(allowed)} ([lift] referees, else its own lift referee and "
                    f"clearing house), not {referee}")
        return self.refusal(conn, referee)

    def _chain_again(self, tx: Tx, holding: Holding, record: dict[str, Any],
                     chit_uuid: str) -> None:
        """A void lift chit made good: the chit the promise made, decided good (the same
        uuid and hash on both holders), chained like any good one (its capacity was released
        when it went void: nothing reserved to release)."""
        hop = next(at for at, step in enumerate(record["path"][:-1])
                   if step["tally"] == holding.local.uuid)
        made = lift_decided(lift_chit(record, hop, holding.local), lf.GOOD)
        assert made.uuid == chit_uuid
        self.ledger.good(tx, holding, [made], batched=False)

    def _clocks(self, decision: dict[str, Any]) -> str:
        """What a late void says of the clocks: the referee's offset from ours, when its
        messages have shown it (``agentd.runtime.clocks``) to be off by more than noise."""
        ahead = self.runtime.clock_ahead_ms(decision["referee"])
        if ahead is None or abs(ahead) < clocks.WARN_MS:
            return "clocks apart"
        return f"clocks apart: the referee's is {ahead / 1000:+.1f} s from this node's"

    # -- a referee that equivocated ----------------------------------------------------------

    def refusal(self, conn: sqlite3.Connection, referee: str) -> str | None:
        """Why ``referee`` may not decide a lift here: it equivocated on one (None if not)."""
        lift = lifts.equivocated_on(conn, referee)
        if lift is None:
            return None
        return (f"the lift referee {referee} signed both good and void on lift {lift} (it "
                "equivocated): this node takes no lift it referees (until `lift.forgive "
                f"referee={referee}` on this node)")

    def _proven(self, tx: Tx, row: sqlite3.Row, record: dict[str, Any], outcome: eq.Outcome,
                envelope: Envelope, *, carried: bool) -> None:
        """The referee of ``row``'s lift signed both states: the lift is good here (its
        pending or void chits become good), the proof is kept and shown to the partners."""
        lift, referee, proof = row["lift"], record["referee"]["agent"], outcome.proof
        assert proof is not None and outcome.state == lf.GOOD
        new = lifts.contradict(tx.conn, lift, proof.void)
        if row["state"] != outcome.state:
            self.apply(tx, lift, outcome.state, proof.good, record)
            lifts.set_error(tx.conn, lift, f"its referee {referee} signed both good and void "
                            f"(it equivocated): it was {row['state']} here and is good, as on "
                            "every node that sees both, so both partners of each tally agree",
                            tx.now_ms)
        if new:
            evidence = {"record": record, "good": proof.good, "void": proof.void}
            lifts.add_equivocator(tx.conn, referee, lift, evidence, tx.now_ms,
                                  keep=MAX_EQUIVOCATORS)
            self.ledger.evidence.log(
                tx, eq.evidence_pid(record, self.runtime.agent_id),
                sorted({hop["agent"] for hop in record["path"]}), "lift.equivocation",
                evidence, ref=lift)
            tx.after_commit(functools.partial(self._warn, lift, referee, row["state"]))
        heard = envelope.object["decision"]["state"]
        for agent in eq.to_tell(new=new, carried=carried, heard=heard,
                                sender=envelope.from_.agent, partners=self._partners(tx, lift),
                                record=record, here=self.runtime.agent_id):
            self._show(tx, lift, eq.proof_message(agent, record, proof))

    def _warn(self, lift: str, referee: str, was: str) -> None:
        self.runtime.counters.lift_equivocations += 1
        log.warning("lift %s: its referee %s signed both good and void (it equivocated); the "
                    "lift is good here (it was %s), the proof is logged, and this node refuses "
                    "that referee from now on", lift, referee, was)

    def _partners(self, tx: Tx, lift: str) -> set[str]:
        """The agents of our users' tally partners on the lift."""
        return {self.ledger.holding(tx.conn, chit["tally"], chit["cuid"]).local.partner.agent
                for chit in self.ledger.store.lift_chits(tx.conn, lift)}

    def _show(self, tx: Tx, lift: str, send: Send) -> None:
        """Send a decision (or a proof) to an agent we know or that is connected to us, one
        at a time per lift and agent: a partner that keeps asking gets one answer at once."""
        agent = send.to.agent
        node = self.runtime
        if node.address_of(agent) is None and not node.connected(agent):
            return
        key = (lift, agent)
        if self._shown.room(tx.conn, key):
            self._shown.sent(key, tx.send(send))

    def on_undecided(self, tx: Tx, envelope: dict[str, Any]) -> None:
        """The partner refused our chain message ``envelope`` as ``LIFT_UNDECIDED``: it does
        not hold the lift chits it carries good (``protocol.lift_equivocation.undecided``).
        Show it the decision of each of those lifts good here, or the proof when we hold
        one: the referee may have withheld its decision, or told it void. Its refusal is what
        says it lacks them (a node pending before the deadline leaves the message unacked
        instead), so the lifts of the moment, whose decisions are on their way, are not
        shown; our chain repair sends the message again while the chit is not taken."""
        partner = (envelope.get("to") or {}).get("agent")
        if not isinstance(partner, str) or partner == self.runtime.agent_id:
            return
        for lift in eq.undecided(envelope.get("object") or {}):
            row = lifts.get(tx.conn, lift)
            if row is None or row["state"] != lf.GOOD:
                continue
            record, good = lifts.record_of(row), lifts.decision_of(row)
            assert good is not None
            void = lifts.contradiction_of(row)
            self._show(tx, lift, eq.decision_message(partner, record, good) if void is None
                       else eq.proof_message(partner, record, eq.Proof(good, void)))

    # -- voids on lifts not here yet -------------------------------------------------------

    def _hear_void(self, record: dict[str, Any], now_ms: int) -> None:
        """Remember a void on a lift that names our node but has not reached it, so its
        promise is refused if it comes late, until its deadline (a promise after it is refused
        anyway). In memory, at most ``HEARD_VOIDS`` (a restart forgets them: the promise is
        then taken and voided when the referee is asked): anyone can sign records as their
        own referee, and no row of ours is theirs to make. A void on another record of the
        same uuid (one made up) does not match the real one's promise, and is kept beside a
        void heard on the real one, never in its place: it verifies only against the record
        it was made up with, so it must change nothing of the real one."""
        if record["deadline"] <= now_ms or all(
                hop["agent"] != self.runtime.agent_id for hop in record["path"]):
            return
        heard, key = self.heard_void, (record["lift"], lf.record_digest(record))
        heard[key] = None
        heard.move_to_end(key)
        while len(heard) > HEARD_VOIDS:
            heard.popitem(last=False)


PART = "taken back in part"  # a lift's error while it waits for a partner's word on the rest
SIGNED = ""  # what vouches for a run that starts with our payor: its signature on the record


def vouchers(path: list[dict[str, Any]], here: str) -> dict[int, str]:
    """For each hop of a lift's ``path`` with a user of node ``here`` at an end, whose word
    vouches for ``here``'s chits on it, were ``here`` to take the lift back: the agent that
    pays into the run of ``here``'s users the hop belongs to, as that agent's promise did
    (one further along, which is paid, would gain by our taking a lift whose payment in it
    made up), or :data:`SIGNED` for a run that starts with the payor, whose signature on the
    record ``chit_lift.lift_chit`` checks against our user's key. A path that enters
    ``here`` from two nodes has two such agents: each vouches for its run alone."""
    found: dict[int, str] = {}
    voucher = SIGNED if path[0]["agent"] == here else None
    for hop in range(len(path) - 1):
        payer, payee = path[hop]["agent"], path[hop + 1]["agent"]
        if payer != here and payee == here:
            voucher = payer
        if here in (payer, payee):
            assert voucher is not None  # a hop we pay on follows one we are paid on, or hop 0
            found[hop] = voucher
    return found


def log_lift(tx: Tx, lift: str, state: str, **fields: Any) -> None:
    """The info line per state change of a lift on this node, once committed."""
    tx.after_commit(functools.partial(event, log, "lift state", lift=lift, state=state,
                                      **fields))
