"""A lift referee that equivocates: it signs both ``good`` and ``void`` on one lift record.

The referee of a lift (``protocol.lift``) decides once, and every node applies the decision it
gets. A hostile referee can sign both states and send ``good`` to one partner of a tally and
``void`` to the other: one holds the lift chit good, in its chain, the other void, and chain
consensus can never agree on that tally. Atomicity across the path rests on the referee and
is gone; each **tally** must still converge: both partners hold the identical chain and
opposite balances.

Two decisions of the lift's referee on the record a node took part in, with different states,
each checked by :func:`protocol.lift.check_decision` (signed by the record's referee, on that
record's digest), are a **proof** of equivocation that anyone can check. A node that holds
one and hears the other, or hears both at once, settles the lift by one rule:

**good wins.** The participant states form a join on ``pend < void < good``
(:data:`TRANSITIONS`): with a proof, the lift is good here, whichever came first. Its void
chits become good and are chained like any good chit, its pending ones good, its good ones
stay. Why good and not void:

- a good lift chit may be in its holder's chain already (the foil links it the moment it
  applies the decision) and a good chit never leaves a chain: the foil never unlinks or
  reorders a block the stock confirmed (a restored foil unlinks only blocks the stock never
  confirmed, and links their chits again), so void could win only by rewriting both
  chains; good needs no more than a late decision does;
- every participant agreed to good: each took part by holding the pending chit the payor's
  signed record set, and the terminus committed it;
- a node applies one state to all its chits of the lift, so an intermediary still pays out
  exactly what it receives, and as each node that turns good shows its partners the proof,
  every honest node on the path ends good: atomicity comes back wherever the nodes cooperate.

The rule is order-free (a join), so two partners that have each seen both decisions hold the
same state, whatever order the decisions came in. What good costs: the void holder may have
spent the capacity the void released, so the good chit may take a tally past a limit, and
the lift becomes good after its deadline. Only a referee's two signatures can trigger it: a
partner that is not the referee cannot make a void lift good.

**How a decision travels between partners:** ``lift/decision`` carries ``{record,
decision, other?}``; ``other``, when present, is the referee's contradicting decision on the
same record, so one message is a proof on its own (:func:`proof_message`). A node that does not
hold a lift chit good refuses a partner's chain message that carries it (``lift_undecided``:
it holds the chit void, or pending past the lift's deadline, or not at all), and that refusal
is what makes the partner show it the decision (:func:`undecided`: the lifts a refused
message carried). The partner's chain repair sends the message again while the chit is not
taken, so a node the referee told void, or told nothing, hears the decision from its
partner; one that holds the lift void then has the proof, and a node that first holds a
proof shows it to its partners on the lift (:func:`to_tell`).

Public API: ``TRANSITIONS``, ``settle(state, event)``, ``Proof``, ``check_proof(record, a, b)``,
``Outcome``, ``receive(record, held, decision, other)``, ``to_tell``, ``proof_message``,
``decision_message``, ``undecided(obj)``, ``evidence_pid(record, agent)``.
Refusal codes: those of ``check_decision``, ``bad_field`` (an ``other`` that does not
contradict) and ``conflict`` (a held decision this one cannot be checked against).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NamedTuple

from .errors import Refusal
from .keys import ChipAddress
from .lift import GOOD, PEND, VOID, check_decision
from .messages import Send

# (state here, what the decisions heard say) -> state here: good wins over void
TRANSITIONS: dict[tuple[str, str], str] = {
    (PEND, GOOD): GOOD,
    (PEND, VOID): VOID,
    (GOOD, GOOD): GOOD,
    (VOID, VOID): VOID,
    (VOID, GOOD): GOOD,  # only with a proof: the void chits become good
    (GOOD, VOID): GOOD,  # only with a proof: the good chits stay
}


def settle(state: str, event: str) -> str:
    """The participant's state after hearing ``event`` (see :data:`TRANSITIONS`)."""
    return TRANSITIONS[(state, event)]


class Proof(NamedTuple):
    """The referee's two decisions on one record: evidence that it equivocated."""

    good: dict[str, Any]
    void: dict[str, Any]


class Outcome(NamedTuple):
    state: str  # the lift's state here once the message is taken
    proof: Proof | None  # when the referee is proven to have equivocated


def check_proof(record: dict[str, Any], a: Any, b: Any) -> Proof:
    """Two decisions of ``record``'s referee on it that contradict each other."""
    states = check_decision(a, record), check_decision(b, record)
    if states[0] == states[1]:
        raise Refusal("bad_field", f"decision and other on lift {record['lift']} are both "
                      f"{states[0]}: a proof of equivocation needs one good and one void")
    return Proof(a, b) if states[0] == GOOD else Proof(b, a)


def receive(record: dict[str, Any], held: dict[str, Any] | None, decision: Any,
            other: Any = None) -> Outcome:
    """What a participant of ``record``'s lift holding ``held`` (the decision it applied;
    None while pending) makes of ``decision`` (and ``other``, its contradiction, if any)."""
    state = check_decision(decision, record)
    proof = None
    if other is not None:
        proof = check_proof(record, decision, other)
    elif held is not None and held["state"] != state:
        try:
            proof = check_proof(record, held, decision)
        except Refusal:  # one kept from before decisions named their record
            raise Refusal("conflict", f"the lift is already {held['state']} here, on a "
                          f"decision this {state} one cannot be checked against") from None
    here = PEND if held is None else held["state"]
    return Outcome(settle(here, GOOD if proof is not None else state), proof)


def to_tell(*, new: bool, carried: bool, heard: str, sender: str,
            partners: Collection[str], record: dict[str, Any], here: str) -> list[str]:
    """The agents a participant shows its proof after taking a decision message from
    ``sender``: when the proof is ``new`` here, its tally partners on the lift (who may hold
    the losing state, or nothing of the proof) and a sender on the path whose lone decision
    contradicted ours; later, a sender on the path that showed a lone ``void`` (it holds the
    lift void: the proof makes it good). Never a sender whose message ``carried`` the proof,
    this node or the referee."""
    told = set(partners) if new else set()
    if carried:
        told.discard(sender)
    elif sender in {hop["agent"] for hop in record["path"]} and (new or heard == VOID):
        told.add(sender)
    return sorted(told - {here, record["referee"]["agent"]})


def proof_message(agent: str, record: dict[str, Any], proof: Proof) -> Send:
    """``lift/decision`` carrying both decisions: a proof on its own."""
    return Send(ChipAddress(agent=agent), "lift", "decision",
                {"record": record, "decision": proof.good, "other": proof.void})


def decision_message(agent: str, record: dict[str, Any], decision: dict[str, Any]) -> Send:
    """``lift/decision`` carrying the decision a node applied, as the referee sends it."""
    return Send(ChipAddress(agent=agent), "lift", "decision",
                {"record": record, "decision": decision})


def undecided(obj: dict[str, Any]) -> list[str]:
    """The lifts (first first) of the lift chits in ``obj``, a chain message of ours that the
    partner refused ``lift_undecided``: it does not hold them good (a decision withheld from
    it, a referee that told it void, a lift lost with a backup), so it lacks their decision.
    ``obj`` is our own message, as we sent it."""
    found: dict[str, None] = {}
    for chit in obj.get("chits") or ():
        if chit["type"] == "lift":
            found[chit["ref"]["lift"]] = None
    return list(found)


def evidence_pid(record: dict[str, Any], agent: str) -> str:
    """The clearing-house process a participant (``agent``) logs a proof under: in its own
    namespace (``protocol.clearing.namespace_of``), which nobody else may create first."""
    return f"{agent}/{record['lift']}/equivocation"
