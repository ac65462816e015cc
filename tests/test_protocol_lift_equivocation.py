"""The rule for a lift referee that equivocates (``protocol.lift_equivocation``), sans-IO: what
a participant makes of a decision given what it holds, whom it shows a proof, which decisions
a partner's refusal of a chain message asks for, and a property: partners along a path, each
holding its tallies' chains (``protocol.chain``), told anything by a referee that signs both
states, with messages delivered in any order and repeated, end with identical chains and
opposite balances on every tally, all good as soon as any of them was told good, and all
holding the proof as soon as the referee was seen to sign both."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import chain as ch
from protocol import chit as c
from protocol import lift as lf
from protocol import lift_equivocation as eq
from protocol import tally as t
from protocol.chit_lift import lift_chit, lift_decided
from protocol.codec import digest
from protocol.keys import SigningKey
from protocol.messages import Send
from tests.liftdata import REFEREE, USERS, open_tally, record, uuid_of
from tests.test_credit_tally import NOW, code_of

A, B, C = USERS[:3]
T_AB, T_BC = uuid_of(1), uuid_of(2)
REC = record([A, B, C], [T_AB, T_BC])
HERE, REFEREE_AGENT = B.address.agent, REFEREE.agent_id


def decision(state: str, rec: dict[str, Any] = REC, key: SigningKey = REFEREE) -> dict:
    event = "commit" if state == lf.GOOD else "cancel"
    made, _ = lf.decide(None, event, rec, now_ms=NOW, key=key,
                        asker=rec["path"][-1]["agent"])
    return made


GOOD, VOID = decision(lf.GOOD), decision(lf.VOID)


# -- what a participant makes of a decision ---------------------------------------------------


def test_without_a_contradiction_a_decision_applies_as_ever() -> None:
    assert eq.receive(REC, None, GOOD) == (lf.GOOD, None)
    assert eq.receive(REC, None, VOID) == (lf.VOID, None)
    assert eq.receive(REC, GOOD, GOOD) == (lf.GOOD, None)  # a repeat
    assert eq.receive(REC, VOID, VOID) == (lf.VOID, None)


@pytest.mark.parametrize("held", [None, GOOD, VOID])
def test_both_decisions_prove_the_equivocation_and_good_wins(held: dict | None) -> None:
    proof = eq.Proof(GOOD, VOID)
    assert eq.receive(REC, held, GOOD, VOID) == (lf.GOOD, proof)  # both in one message
    assert eq.receive(REC, held, VOID, GOOD) == (lf.GOOD, proof)
    if held is not None:  # one held, the other heard
        other = VOID if held is GOOD else GOOD
        assert eq.receive(REC, held, other) == (lf.GOOD, proof)


def test_the_rule_is_a_join_good_over_void_over_pend() -> None:
    order = [lf.PEND, lf.VOID, lf.GOOD]
    for (state, heard), settled in eq.TRANSITIONS.items():
        assert settled == max(state, heard, key=order.index)


def test_what_is_no_proof_is_refused() -> None:
    same = decision(lf.GOOD)
    assert code_of(lambda: eq.receive(REC, None, GOOD, same)) == "bad_field"
    unsigned = {key: value for key, value in VOID.items() if key != "sign"}
    forged = {**unsigned, "sign": SigningKey.generate().sign(digest(unsigned))}  # not its key
    assert code_of(lambda: eq.receive(REC, None, GOOD, forged)) == "bad_signature"
    assert code_of(lambda: eq.receive(REC, GOOD, forged)) == "bad_signature"
    other_record = record([A, B, C], [T_AB, T_BC], units=99)
    elsewhere = decision(lf.VOID, other_record)  # the same lift uuid, another record
    assert code_of(lambda: eq.receive(REC, None, GOOD, elsewhere)) == "other_record"
    legacy = {key: value for key, value in VOID.items() if key != "record"}
    assert code_of(lambda: eq.receive(REC, legacy, GOOD)) == "conflict"


def test_whom_a_proof_is_shown() -> None:
    partners = {A.address.agent, C.address.agent}
    on_path = {"record": REC, "here": HERE, "partners": partners}
    # first held here: every partner, and the sender of a lone decision (it lacks ours)
    assert set(eq.to_tell(new=True, carried=False, heard=lf.GOOD, sender=A.address.agent,
                          **on_path)) == partners
    assert eq.to_tell(new=True, carried=True, heard=lf.GOOD, sender=A.address.agent,
                      **on_path) == [C.address.agent]  # it carried the proof: it has it
    stranger = SigningKey.generate().agent_id  # off the path: never told
    assert set(eq.to_tell(new=True, carried=False, heard=lf.VOID, sender=stranger,
                          **on_path)) == partners
    assert eq.to_tell(new=True, carried=False, heard=lf.VOID, sender=REFEREE_AGENT,
                      record=REC, here=HERE, partners={REFEREE_AGENT, HERE}) == []
    # held before: only a sender on the path that shows a lone void (it holds the lift void)
    assert eq.to_tell(new=False, carried=False, heard=lf.VOID, sender=C.address.agent,
                      **on_path) == [C.address.agent]
    for carried, heard in ((False, lf.GOOD), (True, lf.GOOD)):
        assert eq.to_tell(new=False, carried=carried, heard=heard, sender=C.address.agent,
                          **on_path) == []


def test_a_proof_message_carries_both_decisions_to_an_agent() -> None:
    sent = eq.proof_message(C.address.agent, REC, eq.Proof(GOOD, VOID))
    assert (sent.to.agent, sent.to.cuid, sent.target, sent.action) == (
        C.address.agent, None, "lift", "decision")
    assert sent.object == {"record": REC, "decision": GOOD, "other": VOID}
    assert eq.decision_message(C.address.agent, REC, GOOD).object == {
        "record": REC, "decision": GOOD}


def test_a_refused_chain_message_names_the_lifts_whose_decision_the_partner_lacks() -> None:
    stock_ab, foil_ab = open_tally(T_AB, A, B, stock_limit=1_000, foil_limit=1_000)
    good = lift_decided(lift_chit(REC, 0, stock_ab), lf.GOOD).chit
    stock, _ = ch.add(ch.start(stock_ab), good, stock_ab)  # parked until the foil orders it
    (new,) = ch.resync(stock, stock_ab)  # the stock's repair: new, with the parked chit
    assert eq.undecided(new.object) == [REC["lift"]]
    foil, _ = ch.add(ch.start(foil_ab), good, foil_ab)  # linked, not confirmed
    (upd,) = ch.resync(foil, foil_ab)  # the foil's repair (and owed blocks): its block
    assert eq.undecided(upd.object) == [REC["lift"]]
    paid, _ = c.pay(foil_ab, B.key, chit_uuid=uuid_of(70), units=5, date_ms=NOW, balance=0)
    plain, _ = ch.add(foil, paid.chit, foil_ab)
    (both,) = ch.resync(plain, foil_ab)
    assert [chit["type"] for chit in both.object["chits"]] == ["lift", "tran"]
    assert eq.undecided(both.object) == [REC["lift"]]  # once, and no payment
    assert eq.undecided({"cmd": "req", "tally": T_AB, "index": 1}) == []


def test_a_participant_logs_its_proof_in_its_own_namespace() -> None:
    assert eq.evidence_pid(REC, HERE) == f"{HERE}/{REC['lift']}/equivocation"


# -- the property: a path of partners and a referee that signs both ---------------------------


class Holder:
    """One user on its own node on the lift's path: its tallies' chains, its state of the
    lift, the decision it applied and the proof, wired as ``agentd`` wires the modules."""

    def __init__(self, at: int, rec: dict[str, Any], tallies: dict[str, t.LocalTally]) -> None:
        self.agent = rec["path"][at]["agent"]
        self.rec = rec
        self.locals = tallies
        self.chains = {uuid: ch.start(local) for uuid, local in tallies.items()}
        self.state, self.held, self.proof = lf.PEND, None, None

    def partners(self) -> set[str]:
        return {local.partner.agent for local in self.locals.values()}

    def _hop(self, tally: str) -> int:
        return next(at for at, hop in enumerate(self.rec["path"]) if hop["tally"] == tally)

    def _settle(self, state: str, decided: dict[str, Any]) -> list[Send]:
        """The lift becomes ``state`` here: good chits join the chains (a foil sends its
        block a moment later: the runtime's owed ``upd``)."""
        self.state, self.held = state, decided
        sends: list[Send] = []
        if state != lf.GOOD:
            return sends
        for uuid, local in self.locals.items():
            chit = lift_decided(lift_chit(self.rec, self._hop(uuid), local), lf.GOOD)
            self.chains[uuid], now = ch.add(self.chains[uuid], chit.chit, local)
            sends += now + (ch.resync(self.chains[uuid], local) if local.side == t.FOIL else [])
        return sends

    def on_decision(self, obj: dict[str, Any], sender: str) -> list[Send]:
        outcome = eq.receive(self.rec, self.held, obj["decision"], obj.get("other"))
        if outcome.proof is None:
            if outcome.state == self.state:
                return []
            return self._settle(outcome.state, obj["decision"])
        new, self.proof = self.proof is None, outcome.proof
        sends = [] if outcome.state == self.state else self._settle(
            outcome.state, outcome.proof.good if outcome.state == lf.GOOD else outcome.proof.void)
        return sends + [eq.proof_message(agent, self.rec, outcome.proof) for agent in eq.to_tell(
            new=new, carried="other" in obj, heard=obj["decision"]["state"], sender=sender,
            partners=self.partners(), record=self.rec, here=self.agent)]

    def on_chain(self, send: Send, *, past_deadline: bool) -> list[Send] | None:
        """A chain message from a partner; None: left unacked for a retry (our lift chit is
        pending and the deadline has not passed: the decision may be on its way); a refusal
        ``lift_undecided`` raised for the sender to take (``on_undecided``)."""
        tally = send.object.get("tally")
        try:
            received = ch.receive(self.chains[tally], send.object, self.locals[tally])
        except t.Refusal as refusal:
            if refusal.code != "lift_undecided":
                return []  # refused for good: the sender's repair sends it again
            if self.state == lf.PEND and not past_deadline:
                return None
            raise
        assert received.adopted == []
        self.chains[tally] = received.chain
        return received.messages

    def on_undecided(self, send: Send) -> list[Send]:
        """The partner refused our chain message ``send`` as ``lift_undecided``: show it the
        decision (or the proof) of each lift good here whose chit it carried."""
        if self.state != lf.GOOD:
            return []
        assert self.held is not None and eq.undecided(send.object) == [self.rec["lift"]]
        return [eq.decision_message(send.to.agent, self.rec, self.held) if self.proof is None
                else eq.proof_message(send.to.agent, self.rec, self.proof)]

    def repair(self) -> list[Send]:
        """What the chain repair sends for each unsettled chain."""
        return [send for uuid, local in self.locals.items()
                if not ch.settled(self.chains[uuid])
                for send in ch.resync(self.chains[uuid], local)]


@settings(max_examples=60, deadline=None)
@given(length=st.integers(2, 4), data=st.data())
def test_partners_told_anything_by_an_equivocating_referee_converge(length: int,
                                                                    data: st.DataObject) -> None:
    users = USERS[:length]
    tallies = [uuid_of(10 + at) for at in range(length - 1)]
    rec = record(users, tallies, units=40, lift_uuid=uuid_of(600 + length))
    held: list[dict[str, t.LocalTally]] = [{} for _ in users]
    for at, tally in enumerate(tallies):  # either may hold the stock side
        stock, foil = (at, at + 1) if data.draw(st.booleans()) else (at + 1, at)
        held[stock][tally], held[foil][tally] = open_tally(
            tally, users[stock], users[foil], stock_limit=1_000, foil_limit=1_000)
    holders = [Holder(at, rec, held[at]) for at in range(length)]
    by_agent = {holder.agent: holder for holder in holders}
    told = data.draw(st.lists(st.lists(st.sampled_from([lf.GOOD, lf.VOID]), max_size=2),
                              min_size=length, max_size=length), label="the referee tells")
    signed = {lf.GOOD: decision(lf.GOOD, rec), lf.VOID: decision(lf.VOID, rec)}
    bag: list[tuple[Send, str]] = [
        (eq.decision_message(holder.agent, rec, signed[state]), REFEREE_AGENT)
        for holder, states in zip(holders, told, strict=True) for state in states]
    rng = random.Random(data.draw(st.integers(0, 2**32), label="delivery order"))
    for rounds in range(40):  # deliver everything in any order (some twice), then repair
        tries = 0
        while bag and tries < 500:
            tries += 1
            send, sender = bag.pop(rng.randrange(len(bag)))
            if rng.random() < 0.1:
                bag.append((send, sender))  # delivered again later
            holder = by_agent[send.to.agent]
            try:  # the lift's deadline passes after the first round
                out = holder.on_chain(send, past_deadline=rounds > 0) if (
                    send.action == "chain") else holder.on_decision(send.object, sender)
            except t.Refusal:  # lift_undecided: the error ack goes back to the sender
                out, holder = by_agent[sender].on_undecided(send), by_agent[sender]
            if out is None:  # unacked: tried again
                bag.append((send, sender))
                continue
            bag += [(message, holder.agent) for message in out]
        bag = [(message, holder.agent) for holder in holders for message in holder.repair()]
        if not bag:
            break
    assert not bag, "the chains never settled"
    told_good = any(lf.GOOD in states for states in told)
    told_both = told_good and any(lf.VOID in states for states in told)
    for holder in holders:
        assert holder.state == lf.GOOD if told_good else holder.state != lf.GOOD
        assert (holder.proof is not None) == told_both
    units = 40 if told_good else 0
    for at, tally in enumerate(tallies):  # identical chains; the payer paid, the payee got
        payer, payee = holders[at].chains[tally], holders[at + 1].chains[tally]
        assert (payer.length, payer.head, payer.conf) == (payee.length, payee.head, payee.conf)
        assert (payer.length, payer.conf) == ((1, 1) if told_good else (0, 0))
        assert (ch.balance(payer), ch.balance(payee)) == (-units, units)
