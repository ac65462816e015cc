"""Lifts: the record, lift chits, the participant table, the referee and its decisions."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from protocol import chain as ch
from protocol import chit as c
from protocol import chit_states as cs
from protocol import lift as lf
from protocol import tally as t
from protocol import tally_states as ts
from protocol.chit_fields import check_chit, chit_hash
from protocol.chit_lift import lift_chit, lift_decided
from protocol.chit_local import effect
from protocol.expiry import expires_at
from protocol.keys import ChipAddress, SigningKey
from protocol.tally_local import LocalTally
from tests.liftdata import REFEREE, USERS, open_tally, record, user_map, uuid_of
from tests.test_credit_tally import NOW, code_of, refusal

A, B, C, D = USERS[:4]
# A holds the stock of T_AB, B its foil; B the stock of T_BC, C its foil; C-A closes a circle.
T_AB, T_BC, T_CA = uuid_of(1), uuid_of(2), uuid_of(3)
AB_A, AB_B = open_tally(T_AB, A, B, stock_limit=1_000, foil_limit=1_000)
BC_B, BC_C = open_tally(T_BC, B, C, stock_limit=1_000, foil_limit=1_000)
CA_C, CA_A = open_tally(T_CA, C, A, stock_limit=1_000, foil_limit=1_000)
LINEAR = record([A, B, C], [T_AB, T_BC])
CIRCLE = record([A, B, C, A], [T_AB, T_BC, T_CA], kind="circular", lift_uuid=uuid_of(501))


def decided(event: str = "commit", now: int = NOW, rec: dict[str, Any] = LINEAR,
            asker: str | None = None) -> tuple[dict[str, Any] | None, list[Any]]:
    asker = asker or rec["path"][-1]["agent"]
    return lf.decide(None, event, rec, now_ms=now, key=REFEREE, asker=asker)


# -- the record ---------------------------------------------------------------------------------


def test_a_record_is_signed_by_the_payor_and_checks() -> None:
    lf.check_record(LINEAR)
    lf.check_record(CIRCLE)
    assert LINEAR["deadline"] == NOW + 60_000
    assert LINEAR["public"] == A.key.public
    assert LINEAR["path"][-1]["tally"] is None


def test_a_tampered_record_fails_its_signature() -> None:
    tampered = {**LINEAR, "units": LINEAR["units"] + 1}
    assert code_of(lf.check_record, tampered) == "bad_signature"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.update(kind="sideways"), "kind"),
        (lambda r: r.update(units=0), "units"),
        (lambda r: r.update(path=r["path"][:1]), "path"),
        (lambda r: r["path"][-1].update(tally=uuid_of(9)), "path[2].tally"),
        (lambda r: r["path"][0].update(tally="nope"), "path[0].tally"),
        (lambda r: r["path"][2].update(cuid=r["path"][0]["cuid"],
                                       agent=r["path"][0]["agent"]), "twice"),
        (lambda r: r["path"][1].update(tally=r["path"][0]["tally"]), "tally twice"),
        (lambda r: r["referee"].update(cuid="someone"), "referee"),
        (lambda r: r.update(deadline=r["date"]), "deadline"),
        (lambda r: r.update(memo="x" * 1001), "memo"),
        (lambda r: r.update(public=b"short"), "public"),
        (lambda r: r.update(extra=1), "fields"),
    ],
)
def test_a_malformed_record_is_refused_naming_the_field(change: Any, field: str) -> None:
    bad = copy.deepcopy(LINEAR)
    change(bad)
    caught = refusal(lf.check_record, bad)
    assert caught.code == "bad_field"
    assert field in caught.message


def test_a_circle_must_close_and_take_two_hops() -> None:
    open_end = copy.deepcopy(CIRCLE)
    open_end["path"][-1].update(user_map(D))
    assert "return to its first user" in refusal(lf.check_record, open_end).message
    short = copy.deepcopy(CIRCLE)
    short["path"] = [{**short["path"][0]}, {**short["path"][0], "tally": None}]
    assert refusal(lf.check_record, short).code == "bad_field"


# -- the participant table ----------------------------------------------------------------------


def test_participant_transitions() -> None:
    assert lf.advance(None, "originate") == lf.PEND
    assert lf.advance(None, "promise") == lf.PEND
    assert lf.advance(None, "refuse") == lf.PEND
    assert lf.advance(None, "void") == lf.VOID
    assert lf.advance(lf.PEND, "promise") == lf.PEND  # a circle's payor, its last hop
    assert lf.advance(lf.PEND, "refuse") == lf.PEND
    assert lf.advance(lf.PEND, "good") == lf.GOOD
    assert lf.advance(lf.PEND, "void") == lf.VOID


def test_a_repeated_decision_is_a_no_op_and_a_contradicting_one_a_conflict() -> None:
    assert lf.advance(lf.GOOD, "good") == lf.GOOD
    assert lf.advance(lf.VOID, "void") == lf.VOID
    assert code_of(lf.advance, lf.GOOD, "void") == "conflict"
    assert code_of(lf.advance, lf.VOID, "good") == "conflict"


def test_late_events_are_bad_state() -> None:
    assert code_of(lf.advance, lf.GOOD, "promise") == "bad_state"
    assert code_of(lf.advance, lf.VOID, "promise") == "bad_state"
    assert code_of(lf.advance, None, "good") == "bad_state"  # nobody promised us anything
    assert code_of(lf.advance, lf.PEND, "originate") == "bad_state"


# -- promises -----------------------------------------------------------------------------------


def test_a_promise_from_the_hops_payer_to_its_payee_is_taken() -> None:
    lf.check_promise(LINEAR, 1, now_ms=NOW, sender=B.address, here=C.address)


def test_a_promise_past_its_deadline_is_expired() -> None:
    late = LINEAR["deadline"]
    caught = refusal(lf.check_promise, LINEAR, 1, now_ms=late, sender=B.address, here=C.address)
    assert caught.code == "expired"


@pytest.mark.parametrize(("sender", "here"), [(A, C), (B, D), (C, B)])
def test_a_promise_off_the_path_is_refused(sender: Any, here: Any) -> None:
    caught = refusal(lf.check_promise, LINEAR, 1, now_ms=NOW, sender=sender.address,
                     here=here.address)
    assert caught.code == "not_on_path"


def test_a_promise_with_a_bad_hop_or_record_is_refused() -> None:
    kw = {"now_ms": NOW, "sender": B.address, "here": C.address}
    assert code_of(lf.check_promise, LINEAR, 2, **kw) == "bad_field"
    assert code_of(lf.check_promise, LINEAR, True, **kw) == "bad_field"
    forged = {**LINEAR, "units": 5}
    assert code_of(lf.check_promise, forged, 1, **kw) == "bad_signature"


def test_messages_name_their_users_and_the_referee() -> None:
    sent = lf.promise(LINEAR, 0)
    assert (sent.target, sent.action, sent.from_cuid) == ("lift", "promise", "user0")
    assert sent.to == ChipAddress(agent=B.address.agent, cuid="user1")  # host filled by runtime
    assert sent.object == {"record": LINEAR, "hop": 0}
    done = lf.commit(LINEAR)
    assert (done.to.agent, done.action, done.from_cuid) == (REFEREE.agent_id, "commit", "user2")
    assert lf.cancel(LINEAR, "no room", from_cuid="user1").object["reason"] == "no room"
    assert lf.query(LINEAR, from_cuid="user0").action == "query"


# -- lift chits ---------------------------------------------------------------------------------


def test_both_holders_build_the_identical_lift_chit() -> None:
    paying, paid = lift_chit(LINEAR, 0, AB_A), lift_chit(LINEAR, 0, AB_B)
    assert (paying.state, paid.state) == (cs.L_LIFT, cs.A_LIFT)
    assert paying.chit == paid.chit
    chit = paying.chit
    assert (chit["by"], chit["type"], chit["units"], chit["sign"]) == ("stock", "lift", 100, None)
    assert chit["ref"] == {"lift": LINEAR["lift"]}
    assert lift_chit(LINEAR, 1, BC_B).chit["uuid"] != chit["uuid"]
    check_chit(chit, AB_B.tally, signed=True)  # authorised by the decision, not a signature
    assert effect(chit, t.STOCK) == -100  # A pays B


def test_a_lift_chit_on_a_tally_of_other_users_is_not_party() -> None:
    assert code_of(lift_chit, LINEAR, 1, AB_A) == "not_party"  # hop 1 is on T_BC
    foreign = copy.deepcopy(LINEAR)
    foreign["path"][1]["tally"] = T_AB  # hop 1 claims T_AB, whose users are A and B
    assert code_of(lift_chit, foreign, 1, AB_B) == "not_party"
    assert code_of(lift_chit, LINEAR, 2, BC_C) == "bad_field"


def test_a_lift_chit_needs_the_payors_own_key() -> None:
    mallory = record([A, B, C], [T_AB, T_BC], key=D.key)  # signed by a stranger in A's name
    assert code_of(lift_chit, mallory, 0, AB_B) == "bad_signature"
    lift_chit(mallory, 1, BC_C)  # C cannot tell (A is not its partner); B's refusal stops it


def test_a_lift_chit_with_a_signature_or_a_bad_ref_is_refused() -> None:
    chit = lift_chit(LINEAR, 0, AB_A).chit
    signed = {**chit, "sign": A.key.sign(chit["hash"])}
    assert "sign" in refusal(check_chit, signed, AB_B.tally, signed=True).message
    for ref in ({"lift": "x"}, {"lift": LINEAR["lift"], "more": 1}, None):
        bad = {**chit, "ref": ref}
        bad["hash"] = chit_hash(bad)
        assert "ref" in refusal(check_chit, bad, AB_B.tally, signed=True).message


def test_lift_chits_follow_the_decision() -> None:
    paying, paid = lift_chit(LINEAR, 0, AB_A), lift_chit(LINEAR, 0, AB_B)
    assert lift_decided(paying, "good").state == cs.L_GOOD
    assert lift_decided(paid, "good").state == cs.A_GOOD
    assert lift_decided(paying, "void").state == cs.L_VOID
    assert lift_decided(paid, "void").state == cs.A_VOID
    done = lift_decided(paid, "good")
    assert code_of(lift_decided, done, "void") == "bad_state"
    assert code_of(lift_decided, paid, "maybe") == "bad_field"


def test_a_partner_cannot_make_a_lift_chit_good_by_message() -> None:
    chit = lift_chit(LINEAR, 0, AB_A).chit
    assert code_of(c.receive_good, None, chit, AB_B, balance=0) == "lift_undecided"
    chain = ch.start(AB_A)  # A holds the stock: the foil's upd carries a lift chit it lacks
    foil = ch.start(AB_B)
    foil, sent = ch.add(foil, chit, AB_B)
    assert sent == []  # the foil sends the block later, in the upd resync makes
    [upd] = ch.resync(foil, AB_B)
    assert (upd.to, upd.action, upd.from_cuid) == (A.address, "chain", B.address.cuid)
    assert code_of(ch.receive, chain, upd.object, AB_A) == "lift_undecided"
    # once A applied the decision itself, the same upd links it
    chain, _ = ch.add(chain, chit, AB_A)
    received = ch.receive(chain, upd.object, AB_A)
    assert received.adopted == [] and received.chain.length == 1


@pytest.mark.parametrize("paid_by", [t.STOCK, t.FOIL])
def test_a_good_lift_chit_joins_the_chain_with_one_upd_and_two_acks(paid_by: str) -> None:
    # both holders apply the decision on their own: neither sends the chit `good`; the foil
    # links it and sends its block a moment later (resync: the runtime's ChainRepair.owe),
    # the stock parks it silently until that block comes
    rec = LINEAR if paid_by == t.STOCK else record([B, A], [T_AB], lift_uuid=uuid_of(502))
    stock, foil = ch.start(AB_A), ch.start(AB_B)
    stock, sent = ch.add(stock, lift_decided(lift_chit(rec, 0, AB_A), "good").chit, AB_A)
    assert sent == [] and stock.length == 0 and len(stock.pending) == 1
    foil, sent = ch.add(foil, lift_decided(lift_chit(rec, 0, AB_B), "good").chit, AB_B)
    assert sent == [] and foil.length == 1
    [upd] = ch.resync(foil, AB_B)
    assert (upd.action, upd.object["cmd"], upd.object["chits"][0]["chain"]["index"]) == (
        "chain", "upd", 1)
    linked = ch.receive(stock, upd.object, AB_A)
    assert linked.chain.length == 1 and linked.chain.pending == () and linked.adopted == []
    [ack] = linked.messages
    assert ack.object["cmd"] == "ack" and ack.object["index"] == 1
    answered = ch.receive(foil, ack.object, AB_B)
    assert answered.chain.conf == 1 and [m.object["cmd"] for m in answered.messages] == ["ack"]
    settled = ch.receive(linked.chain, answered.messages[0].object, AB_A).chain
    assert ch.settled(settled) and ch.settled(answered.chain)


def test_a_parked_foil_lift_chit_waits_for_its_upd_and_only_a_repair_asks() -> None:
    backwards = record([B, A], [T_AB], lift_uuid=uuid_of(503))  # B, the foil, pays A
    stock, foil = ch.start(AB_A), ch.start(AB_B)
    stock, _ = ch.add(stock, lift_decided(lift_chit(backwards, 0, AB_A), "good").chit, AB_A)
    paid, _ = c.pay(AB_B, B.key, chit_uuid=uuid_of(78), units=5, date_ms=NOW, balance=0)
    foil, [good] = ch.add(foil, paid.chit, AB_B)
    stock, replies = ch.add(stock, good.object, AB_A)  # another foil chit arrives meanwhile
    assert [m.object["cmd"] for m in replies] == ["ack"]  # no req for the parked lift chit
    # a repair asks: for the gap, and for what the stock holds unlinked (which a foil
    # restored from a backup may have lost)
    assert [m.object["cmd"] for m in ch.resync(stock, AB_A)] == ["new", "ack", "req"]


def test_reserved_lift_chits_count_as_spent_in_a_payment() -> None:
    # B (foil of T_AB) may owe A at most 1_000; 700 are reserved by B's pending lift chits
    pay = {"chit_uuid": uuid_of(77), "units": 400, "date_ms": NOW, "balance": 0}
    assert c.pay(AB_B, B.key, **pay)[0].state == cs.L_GOOD
    caught = refusal(c.pay, AB_B, B.key, **pay, reserved=700)
    assert caught.code == "over_limit" and "700 of it reserved" in caught.message


def test_room_for_a_lift_chit() -> None:
    paying, paid = lift_chit(LINEAR, 0, AB_A), lift_chit(LINEAR, 0, AB_B)
    lf.check_room(LINEAR, paying, AB_A, balance=0, reserved=900)
    lf.check_room(LINEAR, paid, AB_B, balance=0, reserved=900)
    assert code_of(lf.check_room, LINEAR, paying, AB_A, balance=0, reserved=901) == "over_limit"
    assert code_of(lf.check_room, LINEAR, paid, AB_B, balance=0, reserved=901) == "over_limit"
    circle = lift_chit(CIRCLE, 0, AB_A)  # A may clear only what B owes it
    assert code_of(lf.check_room, CIRCLE, circle, AB_A, balance=99, reserved=0) == "over_limit"
    lf.check_room(CIRCLE, circle, AB_A, balance=150, reserved=50)
    closing = LocalTally(AB_A.side, ts.C_OPEN, AB_A.tally)  # linear, but must shrink
    assert code_of(lf.check_room, LINEAR, paying, closing, balance=0, reserved=0) == "over_limit"
    lf.check_room(LINEAR, paying, closing, balance=100, reserved=0)
    voided = LocalTally(AB_A.side, ts.VOID, AB_A.tally)
    assert code_of(lf.check_room, LINEAR, paying, voided, balance=0, reserved=0) == "bad_state"


def test_what_promises_over_one_tally_may_make_a_node_hold() -> None:
    """At most MAX_HELD lifts, naming at most MAX_UNANSWERED places (referee, address) where
    the referee never answered us; one of those again, or an answered one, is no more."""
    here = (REFEREE.agent_id, "127.0.0.1:65099")  # where LINEAR's record says it listens
    assert lf.referee_at(LINEAR) == here[1]
    others = {(SigningKey.generate().agent_id, f"10.0.0.{n}:1") for n in range(4)}
    lf.check_held(LINEAR, T_AB, held=lf.MAX_HELD - 1, unanswered=set(list(others)[:3]))
    lf.check_held(LINEAR, T_AB, held=1, unanswered=None)  # answered: not counted
    lf.check_held(LINEAR, T_AB, held=1, unanswered={here, *list(others)[:3]})
    assert code_of(lf.check_held, LINEAR, T_AB, held=lf.MAX_HELD,
                   unanswered=None) == "over_limit"
    assert code_of(lf.check_held, LINEAR, T_AB, held=4, unanswered=others) == "referee_refused"


# -- the referee --------------------------------------------------------------------------------


def test_a_commit_before_the_deadline_is_good_and_sent_to_every_agent() -> None:
    decision, sends = decided()
    assert decision is not None and decision["state"] == lf.GOOD
    assert [send.to.agent for send in sends] == [u.address.agent for u in (A, B, C)]
    assert all(s.to.cuid is None and s.action == "decision" for s in sends)
    assert lf.check_decision(decision, LINEAR) == lf.GOOD


def test_a_cancel_voids_and_a_late_commit_voids() -> None:
    assert decided("cancel", asker=B.address.agent)[0]["state"] == lf.VOID
    assert decided("commit", now=LINEAR["deadline"])[0]["state"] == lf.VOID


def test_a_query_waits_until_the_deadline_then_voids() -> None:
    assert decided("query", asker=A.address.agent) == (None, [])
    late, sends = decided("query", now=LINEAR["deadline"], asker=A.address.agent)
    assert late["state"] == lf.VOID and len(sends) == 3


def test_a_decision_never_changes_and_goes_to_the_asker_only() -> None:
    first, _ = decided()
    again, sends = lf.decide(first, "cancel", LINEAR, now_ms=NOW + 1, key=REFEREE,
                             asker=B.address.agent)
    assert again is first
    assert [send.to for send in sends] == [ChipAddress(agent=B.address.agent)]
    assert sends[0].object == {"record": LINEAR, "decision": first}


def test_the_referee_decides_no_record_with_a_deadline_no_hop_would_take() -> None:
    """A void decision is forgotten a month past its record's deadline (store.lifts); one on
    a record years away would be forgotten before it, and a commit then decided good."""
    early = LINEAR["deadline"] - lf.MAX_LIFE_MS - 1
    for event in ("cancel", "commit"):
        assert code_of(decided, event, now=early, asker=C.address.agent) == "bad_field"
    assert decided("cancel", now=early + 1, asker=B.address.agent)[0]["state"] == lf.VOID
    first, _ = decided()  # one kept is still answered, whatever the clock says
    assert lf.decide(first, "query", LINEAR, now_ms=early, key=REFEREE,
                     asker=A.address.agent)[0] is first


def test_the_referee_refuses_strangers_a_wrong_key_and_an_early_commit() -> None:
    assert code_of(decided, "query", asker=D.address.agent) == "not_on_path"
    assert code_of(decided, "commit", asker=B.address.agent) == "not_on_path"
    other = SigningKey(bytes([98]) * 32)
    assert code_of(lf.decide, None, "commit", LINEAR, now_ms=NOW, key=other,
                   asker=C.address.agent) == "wrong_referee"
    assert code_of(decided, "maybe") == "bad_field"


def test_a_decision_signed_by_another_key_is_refused() -> None:
    decision, _ = decided()
    other = SigningKey(bytes([98]) * 32)
    forged = {**decision, "state": lf.VOID}
    assert code_of(lf.check_decision, forged, LINEAR) == "bad_signature"
    body = {k: v for k, v in decision.items() if k != "sign"}
    by_other = {**body, "sign": other.sign(lf._decision_digest(body))}
    assert code_of(lf.check_decision, by_other, LINEAR) == "bad_signature"
    assert code_of(lf.check_decision, {**decision, "referee": other.agent_id},
                   LINEAR) == "wrong_referee"
    assert code_of(lf.check_decision, decision, CIRCLE) == "bad_field"  # another lift
    assert code_of(lf.check_decision, {**decision, "state": "pend"}, LINEAR) == "bad_field"


def test_a_path_may_say_where_each_node_listens_but_a_decision_names_agents_only() -> None:
    """A path may say where each node listens, but neither a promise (to the payer's tally
    partner, whose node it knows) nor a decision names more than the agent: a route answer
    cannot steer where an honest hop dials, a made-up record where a referee does."""
    path = [{**user_map(u), "host": "127.0.0.1", "port": 7000 + n, "tally": tally}
            for n, (u, tally) in enumerate(zip([A, B, C], [T_AB, T_BC, None], strict=True))]
    rec = lf.make_record(lift_uuid=uuid_of(502), kind="linear", units=100, path=path,
                         referee=ChipAddress(agent=REFEREE.agent_id), date_ms=NOW,
                         life_ms=60_000, memo="", key=A.key)
    lf.check_record(rec)
    decision, sends = lf.decide(None, "commit", rec, now_ms=NOW, key=REFEREE,
                                asker=C.address.agent)
    assert decision is not None and decision["state"] == lf.GOOD
    assert {(s.to.agent, s.to.host, s.to.port) for s in sends} == {
        (A.address.agent, None, None), (B.address.agent, None, None),
        (C.address.agent, None, None)}
    promised = lf.promise(rec, 0).to
    assert (promised.agent, promised.cuid, promised.host, promised.port) == (
        B.address.agent, B.address.cuid, None, None)
    for bad in ({"host": "127.0.0.1"}, {"host": "", "port": 1}, {"host": "h", "port": 0},
                {"host": "h", "port": True}):
        hops = [{**path[0], **bad}, *path[1:]]
        if "port" not in bad:
            del hops[0]["port"]
        assert code_of(lf.check_record, {**rec, "path": hops}) == "bad_field", bad


def test_a_pushed_decision_may_expire_but_nothing_else_of_a_lift_does() -> None:
    """A decision the referee could not deliver leaves its outbox after an hour (a path node
    that never answers costs it no row for good): a participant still pending asks after the
    deadline and gets the decision the referee keeps; its question, asked again each minute,
    lasts two. Promises, commits and cancels are delivered however long it takes."""
    assert expires_at("lift", "decision", NOW) == NOW + 3_600_000
    assert expires_at("lift", "query", NOW) == NOW + 120_000  # asked again every minute
    for action in ("promise", "commit", "cancel"):
        assert expires_at("lift", action, NOW) is None, action
