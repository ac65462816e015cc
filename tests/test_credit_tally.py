"""Tally negotiation: every transition, every refusal, signatures, tickets.

The helpers at the top (``party``, ``negotiate``) are also used by the chit and chain tests.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import pytest

from protocol import tally as t
from protocol import tally_fields as tf
from protocol import tally_hints
from protocol import tally_states as ts
from protocol.codec import pack, unpack
from protocol.keys import ChipAddress, SigningKey
from protocol.messages import Send
from protocol.tally_local import LocalTally
from protocol.tally_sign import chain_origin, core_digest

NOW = 1_700_000_000_000
DAY = 86_400_000
TALLY_UUID = "00000000-0000-4000-8000-000000000001"
CLONE_UUID = "00000000-0000-4000-8000-000000000002"


@dataclass(frozen=True)
class Party:
    """A CHIP user on its own agent: the agent key, the user key and the user's certificate."""

    agent: SigningKey
    key: SigningKey
    cert: dict[str, Any]

    @property
    def address(self) -> ChipAddress:
        return ChipAddress.from_map(self.cert["chad"])


def party(seed: int, cuid: str) -> Party:
    agent = SigningKey(bytes([seed]) * 32)
    key = SigningKey(bytes([seed + 100]) * 32)
    address = ChipAddress(agent=agent.agent_id, cuid=cuid, host="127.0.0.1", port=65000 + seed)
    return Party(agent, key, tf.make_cert(address, cuid.title(), key.public, NOW))


ALICE = party(1, "alice")  # the inviter
BOB = party(2, "bob")  # the subject
MALLORY = party(3, "mallory")


def ticket_for(inviter: Party = ALICE, *, reuse: bool = False) -> dict[str, Any]:
    return tf.make_ticket(inviter.address, "s3cret-token", NOW + DAY, reuse=reuse)


def invited(limit: int = 10_000, side: str = t.STOCK) -> LocalTally:
    draft, messages = t.invite(
        tally_uuid=TALLY_UUID, date_ms=NOW, cert=ALICE.cert, limit=limit, side=side, memo="hi"
    )
    assert messages == []
    return draft


def present(
    template: LocalTally,
    subject: Party = BOB,
    *,
    ticket: dict[str, Any] | None = None,
    request: dict[str, Any] | None = None,  # the ticket request's object
    now_ms: int = NOW,
    new_uuid: str = CLONE_UUID,
    sender: Party | None = None,
) -> LocalTally:
    """``subject`` presents ``ticket`` (Alice's one-time ticket unless given) to ``template``."""
    ticket = ticket or ticket_for()
    request = request or t.ticket_request(ticket, subject.cert, NOW).object
    sender_agent = (sender or subject).agent.agent_id
    filled, messages = t.receive_ticket(
        template, ticket, request, now_ms=now_ms, new_uuid=new_uuid, sender_agent=sender_agent
    )
    assert messages == []
    return filled


def requested(limit: int = 10_000, side: str = t.STOCK) -> LocalTally:
    """Alice's draft after Bob presented the (one-time) ticket."""
    return present(invited(limit, side))


def take_offer(
    obj: dict[str, Any],
    holder: Party = BOB,
    *,
    local: LocalTally | None = None,
    sender: Party = ALICE,
) -> LocalTally:
    """``holder`` receives the tally ``obj`` offered over ``sender``'s channel."""
    taken, messages = t.receive_offer(
        local, obj, holder_cert=holder.cert, sender_agent=sender.agent.agent_id
    )
    assert messages == []
    return taken


def offered(limit: int = 10_000, side: str = t.STOCK) -> tuple[LocalTally, LocalTally]:
    """(Alice in H.offer, Bob in P.offer)."""
    alice, [offer] = t.offer(requested(limit, side), ALICE.key)
    alice, _ = t.delivered(alice)
    return alice, take_offer(offer.object)


def negotiate(limit: int = 10_000, side: str = t.STOCK) -> tuple[LocalTally, LocalTally]:
    """(Alice, Bob), both open: Alice invited on ``side`` with ``limit`` for both sides."""
    alice, bob = offered(limit, side)
    bob, [opened] = t.accept(bob, BOB.key)
    bob, _ = t.delivered(bob)
    alice, _ = t.receive_open(alice, opened.object)
    return alice, bob


def in_state(state: str) -> LocalTally:
    """A fully signed tally of Alice's relabelled to ``state``: the guard must refuse by state
    alone, before it looks at anything else."""
    alice, _ = negotiate()
    return LocalTally(alice.side, state, alice.tally)


def refusal(call: Any, *args: Any, **kwargs: Any) -> t.Refusal:
    with pytest.raises(t.Refusal) as caught:
        call(*args, **kwargs)
    return caught.value


def code_of(call: Any, *args: Any, **kwargs: Any) -> str:
    """The code of the refusal that ``call(*args, **kwargs)`` must raise."""
    return refusal(call, *args, **kwargs).code


# -- the happy path and its messages ------------------------------------------------------------


def test_invite_makes_a_draft_with_the_same_limit_on_both_sides() -> None:
    draft = invited(limit=5_000)
    assert draft.state == ts.DRAFT
    assert draft.side == t.STOCK
    assert draft.tally[t.STOCK]["cert"] == ALICE.cert
    assert draft.tally[t.FOIL]["cert"] is None
    assert draft.tally[t.STOCK]["terms"] == draft.tally[t.FOIL]["terms"] == {"limit": 5_000}
    assert draft.tally["sign"] == {"hash": None, "stock": None, "foil": None}


def test_invite_on_the_foil_side() -> None:
    draft = invited(side=t.FOIL)
    assert draft.side == t.FOIL
    assert draft.tally[t.FOIL]["cert"] == ALICE.cert
    bad_side = {"tally_uuid": TALLY_UUID, "date_ms": NOW, "cert": ALICE.cert, "side": "middle"}
    assert code_of(t.invite, limit=1, **bad_side) == "bad_field"


def test_negotiation_opens_both_holders_on_the_same_signed_tally() -> None:
    ticket = ticket_for()
    request = t.ticket_request(ticket, BOB.cert, NOW)
    assert request == Send(
        ALICE.address, "tally", "ticket", {"token": ticket["token"], "cert": BOB.cert}, "bob"
    )
    alice, _ = t.receive_ticket(
        invited(),
        ticket,
        request.object,
        now_ms=NOW,
        new_uuid=CLONE_UUID,
        sender_agent=BOB.agent.agent_id,
    )
    assert (alice.state, alice.uuid) == (ts.P_DRAFT, TALLY_UUID)
    assert (alice.partner, alice.cuid) == (BOB.address, "alice")

    alice, [offer] = t.offer(alice, ALICE.key)
    assert (alice.state, offer.action) == (ts.DRAFT_OFFER, "offer")
    assert (offer.to, offer.target, offer.from_cuid) == (BOB.address, "tally", "alice")
    assert offer.object["sign"]["foil"] is None
    alice, _ = t.delivered(alice)
    assert alice.state == ts.H_OFFER

    wire = unpack(pack(offer.object))  # what really crosses the network
    bob, messages = t.receive_offer(
        None, wire, holder_cert=BOB.cert, sender_agent=ALICE.agent.agent_id
    )
    assert (bob.state, bob.side, messages) == (ts.P_OFFER, t.FOIL, [])
    assert (bob.partner, bob.cuid) == (ALICE.address, "bob")

    bob, [opened] = t.accept(bob, BOB.key)
    assert (bob.state, opened.action) == (ts.OFFER_OPEN, "open")
    assert (opened.to, opened.target, opened.from_cuid) == (ALICE.address, "tally", "bob")
    bob, _ = t.delivered(bob)
    alice, messages = t.receive_open(alice, unpack(pack(opened.object)))
    assert (alice.state, bob.state, messages) == (ts.OPEN, ts.OPEN, [])
    assert alice.tally == bob.tally
    origin = chain_origin(alice)
    assert origin == chain_origin(bob) == core_digest(bob.tally) == bob.tally["sign"]["hash"]


def test_the_acceptor_is_bound_before_its_acceptance_is_delivered() -> None:
    _, bob = offered()
    bob, _ = t.accept(bob, BOB.key)
    assert bob.state == ts.OFFER_OPEN
    assert chain_origin(bob) == bob.tally["sign"]["hash"]


# -- tickets ----------------------------------------------------------------------------------


def test_a_one_time_ticket_fills_the_draft_itself_and_only_once() -> None:
    filled = requested()
    assert (filled.uuid, filled.state) == (TALLY_UUID, ts.P_DRAFT)
    assert refusal(present, filled, MALLORY).code == "bad_state"


def test_a_reusable_ticket_clones_the_draft_for_each_subject() -> None:
    ticket = ticket_for(reuse=True)
    template = invited()
    bobs = present(template, ticket=ticket)
    other_uuid = "00000000-0000-4000-8000-000000000003"
    mallorys = present(template, MALLORY, ticket=ticket, new_uuid=other_uuid)
    assert template.state == ts.DRAFT and template.tally[t.FOIL]["cert"] is None
    assert (bobs.uuid, bobs.state, bobs.tally[t.FOIL]["cert"]) == (CLONE_UUID, ts.P_DRAFT, BOB.cert)
    assert (mallorys.uuid, mallorys.tally[t.FOIL]["cert"]) == (other_uuid, MALLORY.cert)


def test_a_ticket_is_refused_when_expired_or_with_the_wrong_token() -> None:
    ticket = ticket_for()
    assert refusal(present, invited(), now_ms=NOW + DAY).code == "expired"
    guess = {**t.ticket_request(ticket, BOB.cert, NOW).object, "token": "guess"}
    assert refusal(present, invited(), request=guess).code == "bad_ticket"
    assert refusal(t.ticket_request, ticket, BOB.cert, NOW + DAY).code == "expired"
    tf.check_ticket(ticket, "s3cret-token", NOW + DAY - 1)
    assert refusal(tf.check_ticket, ticket, None, NOW).code == "bad_ticket"


def test_a_ticket_request_must_come_from_the_certified_agent_and_not_the_inviter() -> None:
    assert refusal(present, invited(), sender=MALLORY).code == "not_from_partner"
    assert refusal(present, invited(), ALICE).code == "bad_ticket"


def test_a_countered_inviter_does_not_take_a_ticket_again() -> None:
    alice, bob = offered()
    bob, [notice] = t.counter(bob)
    alice, _ = t.receive_draft(alice, notice.object)
    assert alice.state == ts.DRAFT  # the same state as a fresh draft, but it has a partner
    assert refusal(present, alice, MALLORY).code == "bad_ticket"


def test_a_ticket_travels_as_one_string() -> None:
    ticket = ticket_for(reuse=True)
    text = tf.encode_ticket(ticket)
    assert isinstance(text, str) and text.isascii() and " " not in text
    assert tf.decode_ticket(text) == ticket
    assert refusal(tf.decode_ticket, "not a ticket!").code == "bad_ticket"
    assert refusal(tf.decode_ticket, text[:-8]).message == (
        "not a ticket: it ends too soon (copy the whole string tally.invite printed)")
    assert refusal(tf.decode_ticket, text[:8]).message == refusal(tf.decode_ticket,
                                                                  text[:-8]).message
    # what went wrong in copying it, never msgpack's words for it ("received extra data")
    assert refusal(tf.decode_ticket, text + "xx").message == (
        "not a ticket: it goes on past the ticket's end: something was added after it (copy "
        "the string tally.invite printed, and only that)")
    assert refusal(tf.decode_ticket, "abcd").message == (
        "not a ticket: it does not begin as a ticket does ('hK'): copy the whole string "
        "tally.invite printed")
    assert refusal(tf.decode_ticket, tf.encode_ticket({**ticket, "reuse": 1})).code == "bad_field"
    assert refusal(tf.make_ticket, ALICE.address, "", NOW).code == "bad_field"


# -- refusing, countering, retrying -----------------------------------------------------------


def test_turning_a_request_down_voids_the_draft_and_tells_the_subjects_node() -> None:
    inviter = requested()  # the P.draft a presented ticket made
    voided, [notice] = t.refuse(inviter)
    assert (voided.state, notice.action, notice.object) == (
        ts.VOID, "void", {"uuid": TALLY_UUID, "version": 1})
    assert notice.to.agent == BOB.address.agent
    assert t.refuse(invited())[1] == []  # a withdrawn invitation: nobody to tell


def test_refusing_an_offer_voids_both_sides() -> None:
    alice, bob = offered()
    bob, [notice] = t.refuse(bob)
    assert (bob.state, notice.action) == (ts.OFFER_VOID, "void")
    assert notice.object == {"uuid": TALLY_UUID, "version": 1}
    bob, _ = t.delivered(bob)
    alice, _ = t.receive_void(alice, notice.object)
    assert alice.state == bob.state == ts.VOID


def test_a_counter_offer_swaps_who_offers_and_starts_a_new_revision() -> None:
    alice, bob = offered(limit=10_000)
    bob, [notice] = t.counter(bob)
    assert (bob.state, bob.tally["version"]) == (ts.OFFER_DRAFT, 2)
    assert bob.tally["sign"] == {"hash": None, "stock": None, "foil": None}
    assert (notice.action, notice.object) == ("draft", {"uuid": TALLY_UUID, "version": 2})
    bob, _ = t.delivered(bob)
    assert bob.state == ts.P_DRAFT

    alice, _ = t.receive_draft(alice, notice.object)
    assert (alice.state, alice.tally["version"]) == (ts.DRAFT, 2)
    assert alice.tally["sign"]["stock"] is None
    assert refusal(t.offer, alice, ALICE.key).code == "bad_state"  # Bob holds the pen now

    bob, _ = t.edit(bob, limits={t.FOIL: 2_000}, memo="smaller")
    bob, [offer] = t.offer(bob, BOB.key)
    bob, _ = t.delivered(bob)
    alice = take_offer(offer.object, ALICE, local=alice, sender=BOB)
    assert (alice.state, alice.side) == (ts.P_OFFER, t.STOCK)
    assert alice.tally[t.FOIL]["terms"]["limit"] == 2_000
    alice, [opened] = t.accept(alice, ALICE.key)
    bob, _ = t.receive_open(bob, opened.object)
    alice, _ = t.delivered(alice)
    assert alice.state == bob.state == ts.OPEN
    assert alice.tally == bob.tally and alice.tally["version"] == 2


def test_after_a_counter_offer_either_side_gives_the_tally_up_and_the_other_is_told() -> None:
    """Both hold a draft of the countered tally (bob the pen): neither could void it, so a
    negotiation nobody wanted to finish stayed for ever."""
    def countered() -> tuple[LocalTally, LocalTally]:
        alice, bob = offered()
        bob, [notice] = t.counter(bob)
        alice, _ = t.receive_draft(alice, notice.object)
        return alice, bob

    alice, bob = countered()
    bob, _ = t.delivered(bob)
    bob, [given] = t.refuse(bob)  # the pen's holder gives up its counter-draft
    assert (bob.state, given.action, given.object) == (
        ts.OFFER_VOID, "void", {"uuid": TALLY_UUID, "version": 2})
    alice, _ = t.receive_void(alice, given.object)
    bob, _ = t.delivered(bob)
    assert alice.state == bob.state == ts.VOID
    alice, bob = countered()  # the one who waits for its offer gives up
    alice, [given] = t.refuse(alice)
    assert (alice.state, given.action) == (ts.OFFER_VOID, "void")
    gone, _ = t.receive_void(bob, given.object)  # before bob's node heard its notice taken
    assert gone.state == ts.VOID
    bob, _ = t.delivered(bob)
    bob, _ = t.receive_void(bob, given.object)
    assert bob.state == ts.VOID
    # bob offers as alice gives up: each refuses the other's message, both end void
    alice, bob = countered()
    bob, _ = t.delivered(bob)
    bob, [offer] = t.offer(bob, BOB.key)
    alice, [given] = t.refuse(alice)
    assert refusal(take_offer, offer.object, ALICE, local=alice, sender=BOB).code == "bad_state"
    bob, _ = t.receive_void(bob, given.object)
    alice, _ = t.delivered(alice)
    assert alice.state == bob.state == ts.VOID
    # both give up at once: each refuses the other's notice, and its own is settled void
    alice, bob = countered()
    bob, _ = t.delivered(bob)
    alice, [from_alice] = t.refuse(alice)
    bob, [from_bob] = t.refuse(bob)
    assert refusal(t.receive_void, alice, from_bob.object).code == "bad_state"
    assert refusal(t.receive_void, bob, from_alice.object).code == "bad_state"
    alice, _ = t.rejected(alice)
    bob, _ = t.rejected(bob)
    assert alice.state == bob.state == ts.VOID
    # a void of an older revision changes nothing
    alice, bob = countered()
    assert refusal(t.receive_void, alice, {"uuid": TALLY_UUID, "version": 1}).code == (
        "bad_field")


def test_a_counter_offer_that_overtakes_its_notice_is_taken_and_the_notice_refused() -> None:
    alice, bob = offered()
    bob, [notice] = t.counter(bob)
    bob, _ = t.delivered(bob)
    bob, [offer] = t.offer(bob, BOB.key)
    alice = take_offer(offer.object, ALICE, local=alice, sender=BOB)
    assert alice.state == ts.P_OFFER
    assert refusal(t.receive_draft, alice, notice.object).code == "bad_state"


def test_a_counter_offer_must_be_a_newer_revision() -> None:
    alice, bob = offered()
    _, [stale] = t.offer(requested(), ALICE.key)  # Alice's own revision-1 offer, replayed
    replayed = refusal(take_offer, stale.object, ALICE, local=alice, sender=BOB)
    assert replayed.message.startswith("tally.sign.stock")  # it carries our own signature
    bob, _ = t.counter(bob)
    bob, _ = t.delivered(bob)
    bob = LocalTally(bob.side, bob.state, {**bob.tally, "version": 1})  # as if never bumped
    _, [old] = t.offer(bob, BOB.key)
    assert code_of(take_offer, old.object, ALICE, local=alice, sender=BOB) == "bad_field"


def test_a_rejected_offer_lapses_and_can_be_made_again() -> None:
    alice, _ = t.offer(requested(), ALICE.key)
    alice, _ = t.rejected(alice)
    assert alice.state == ts.P_DRAFT
    assert alice.tally["sign"] == {"hash": None, "stock": None, "foil": None}
    alice, _ = t.offer(alice, ALICE.key)
    assert alice.state == ts.DRAFT_OFFER


def test_a_rejected_acceptance_leaves_both_signatures_and_can_be_resent_or_withdrawn() -> None:
    _, bob = offered()
    bob, [first] = t.accept(bob, BOB.key)
    bob, _ = t.rejected(bob)
    assert bob.state == ts.B_OFFER
    again, [second] = t.accept(bob, BOB.key)
    assert again.state == ts.OFFER_OPEN and second == first  # Ed25519 is deterministic
    withdrawn, [notice] = t.refuse(bob)
    assert (withdrawn.state, notice.action) == (ts.OFFER_VOID, "void")


def test_rejected_refusals_and_counters_settle_where_the_user_can_act() -> None:
    _, bob = offered()
    refused, _ = t.refuse(bob)
    assert t.rejected(refused)[0].state == ts.VOID
    countered, _ = t.counter(bob)
    assert t.rejected(countered)[0].state == ts.P_DRAFT


def test_an_offer_received_while_our_offer_is_undelivered() -> None:
    """The partner can answer before our node has seen its ack."""
    alice, [offer] = t.offer(requested(), ALICE.key)
    assert alice.state == ts.DRAFT_OFFER
    bob = take_offer(offer.object)
    _, [opened] = t.accept(bob, BOB.key)
    assert t.receive_open(alice, opened.object)[0].state == ts.OPEN
    _, [void] = t.refuse(bob)
    assert t.receive_void(alice, void.object)[0].state == ts.VOID
    countered, [draft] = t.counter(bob)
    assert t.receive_draft(alice, draft.object)[0].state == ts.DRAFT
    countered, _ = t.delivered(countered)
    _, [counter_offer] = t.offer(countered, BOB.key)
    taken = take_offer(counter_offer.object, ALICE, local=alice, sender=BOB)
    assert (taken.state, taken.tally["version"]) == (ts.P_OFFER, 2)


def test_edit_changes_the_memo_and_limits_and_checks_them() -> None:
    draft, _ = t.edit(invited(), memo="new", limits={t.STOCK: 7, t.FOIL: 9})
    assert draft.tally["memo"] == "new"
    assert (draft.tally[t.STOCK]["terms"]["limit"], draft.tally[t.FOIL]["terms"]["limit"]) == (7, 9)
    assert refusal(t.edit, invited(), limits={"middle": 1}).code == "bad_field"
    negative = refusal(t.edit, invited(), limits={t.STOCK: -1})
    assert "tally.stock.terms.limit" in negative.message


# -- closing ----------------------------------------------------------------------------------


def test_closing_and_settling() -> None:
    alice, bob = negotiate()
    alice, [notice] = t.close(alice, balance=0)
    assert (alice.state, notice) == (
        ts.C_OPEN,
        Send(BOB.address, "tally", "close", {"uuid": TALLY_UUID}, from_cuid="alice"),
    )
    again = refusal(t.close, alice, balance=-300)  # asked again: what it waits for
    assert (again.code, again.message) == ("bad_state", (
        f"tally {TALLY_UUID} is already closing (C.open): it closes once its balance, now "
        "-300 (alice owes its partner 300), reaches zero: only chits that bring the balance "
        "toward zero are taken"))
    assert refusal(t.close, alice, balance=0).message == (
        f"tally {TALLY_UUID} is already closing (C.open): its balance is 0, and it closes as "
        "soon as its chain is settled")
    bob, _ = t.receive_close(bob, notice.object)
    assert bob.state == ts.C_OPEN
    assert t.receive_close(alice, {"uuid": TALLY_UUID})[0].state == ts.C_OPEN  # both at once
    assert refusal(t.receive_close, bob, {"uuid": CLONE_UUID}).code == "bad_field"
    assert refusal(t.settle, alice, balance=5, quiet=True).code == "not_settled"
    assert refusal(t.settle, alice, balance=0, quiet=False).code == "not_settled"
    closed, _ = t.settle(alice, balance=0, quiet=True)
    assert closed.state == ts.CLOSE
    assert refusal(t.close, closed, balance=0).to_map() == {
        "code": "bad_state", "message": f"tally {TALLY_UUID} is already closed (close)"}


# -- signatures -------------------------------------------------------------------------------


def test_only_the_users_own_key_signs_its_side() -> None:
    assert refusal(t.offer, requested(), BOB.key).code == "bad_key"
    _, bob = offered()
    assert refusal(t.accept, bob, ALICE.key).code == "bad_key"


def test_a_tampered_offer_is_refused() -> None:
    _, [offer] = t.offer(requested(), ALICE.key)
    tampered = copy.deepcopy(offer.object)
    tampered[t.FOIL]["terms"]["limit"] = 99_999_999  # Alice signed 10_000
    assert code_of(take_offer, tampered) == "bad_signature"


def test_an_offer_signed_with_another_key_is_refused() -> None:
    forged = copy.deepcopy(requested().tally)
    forged["sign"]["hash"] = core_digest(forged)
    forged["sign"][t.STOCK] = MALLORY.key.sign(forged["sign"]["hash"])
    assert code_of(take_offer, forged) == "bad_signature"


def test_an_offer_must_name_us_and_come_from_the_offerer() -> None:
    _, [offer] = t.offer(requested(), ALICE.key)
    assert code_of(take_offer, offer.object, MALLORY) == "not_addressed"
    assert code_of(take_offer, offer.object, sender=MALLORY) == "not_from_partner"


def test_an_acceptance_must_be_our_tally_with_our_signature_and_a_valid_partner_one() -> None:
    alice, bob = offered()
    _, [opened] = t.accept(bob, BOB.key)
    changed = copy.deepcopy(opened.object)
    changed["memo"] = "something else"
    assert refusal(t.receive_open, alice, changed).code == "bad_field"
    not_ours = copy.deepcopy(opened.object)
    not_ours["sign"][t.STOCK] = MALLORY.key.sign(not_ours["sign"]["hash"])
    assert refusal(t.receive_open, alice, not_ours).code == "bad_signature"
    bad_partner = copy.deepcopy(opened.object)
    bad_partner["sign"][t.FOIL] = MALLORY.key.sign(bad_partner["sign"]["hash"])
    assert refusal(t.receive_open, alice, bad_partner).code == "bad_signature"


def test_chain_origin_needs_two_valid_signatures() -> None:
    alice, _ = negotiate()
    broken = copy.deepcopy(alice.tally)
    broken["sign"][t.FOIL] = bytes(64)
    assert refusal(chain_origin, LocalTally(t.STOCK, ts.OPEN, broken)).code == "bad_signature"
    assert code_of(chain_origin, LocalTally(t.STOCK, ts.H_OFFER, alice.tally)) == "bad_state"


# -- the table: every listed transition reached above, everything else refused -----------------


@functools.cache
def _event_calls() -> dict[str, Any]:
    _, bob = offered()
    _, [offer] = t.offer(requested(), ALICE.key)
    _, [opened] = t.accept(bob, BOB.key)
    notice = {"uuid": TALLY_UUID, "version": 1}
    return {
        "edit": lambda local: t.edit(local, memo="x"),
        "offer": lambda local: t.offer(local, ALICE.key),
        "accept": lambda local: t.accept(local, ALICE.key),
        "refuse": t.refuse,
        "give up": t.give_up,
        "counter": t.counter,
        "close": lambda local: t.close(local, balance=0),
        "got ticket": lambda local: present(local, MALLORY),
        "got offer": lambda local: take_offer(offer.object, local=local),
        "got open": lambda local: t.receive_open(local, opened.object),
        "got void": lambda local: t.receive_void(local, notice),
        "got draft": lambda local: t.receive_draft(local, {**notice, "version": 2}),
        "got close": lambda local: t.receive_close(local, {"uuid": TALLY_UUID}),
        "delivered": t.delivered,
        "rejected": t.rejected,
        "settle": lambda local: t.settle(local, balance=0, quiet=True),
        "reopen": t.reopen,
    }


EVENTS = sorted({event for _, event in ts.TRANSITIONS} - {"invite"})  # invite needs no tally
UNLISTED = [(s, e) for s in ts.STATES for e in EVENTS if (s, e) not in ts.TRANSITIONS]


def test_the_table_names_every_state_and_every_event_has_a_function() -> None:
    named = {state for state, _ in ts.TRANSITIONS} | set(ts.TRANSITIONS.values())
    assert named == {None, *ts.STATES}
    assert set(_event_calls()) == set(EVENTS)


@pytest.mark.parametrize(("state", "event"), UNLISTED)
def test_an_event_the_table_does_not_list_is_refused_by_state(state: str, event: str) -> None:
    local = in_state(state)
    caught = refusal(_event_calls()[event], local)
    assert caught.to_map() == {"code": "bad_state", "message": caught.message}
    assert state in caught.message


def test_a_user_refused_by_state_is_told_what_to_do() -> None:
    """The user's own actions, refused by the tally's state, say what that state means and
    what to do: an offer made before the partner presented the ticket (a new user's first
    try), an offer made twice, an acceptance of our own offer."""
    drafted = ("nobody has requested it yet: hand the ticket tally.invite printed to the "
               "partner, whose node presents it with tally.request; then tally.offer (or "
               "tally.refuse withdraws the invitation)")
    assert refusal(t.offer, invited(), ALICE.key).message == (
        f"cannot offer a tally in state draft: {drafted}")
    # closing an invitation nobody used: told of tally.refuse, which withdraws it, as well
    assert refusal(t.close, invited(), balance=0).message == (
        f"cannot close a tally in state draft: {drafted}")
    alice, bob = offered()
    assert refusal(t.offer, alice, ALICE.key).message == (
        "cannot offer a tally in state H.offer: our offer waits for the partner, who accepts, "
        "refuses or counters it (tally.wait shows when)")
    assert refusal(t.accept, alice, ALICE.key).message.endswith(": our offer waits for the "
                                                                "partner, who accepts, refuses "
                                                                "or counters it (tally.wait "
                                                                "shows when)")
    bob, [notice] = t.counter(bob)
    alice, _ = t.receive_draft(alice, notice.object)
    assert refusal(t.offer, alice, ALICE.key).message.endswith(
        ": the partner countered our offer and offers next (tally.wait state=P.offer waits "
        "for it; tally.refuse gives the tally up, and tells the partner)")
    assert set(tally_hints.HINTS) == set(ts.STATES) - {ts.DRAFT}  # draft: by whether it has a
    # partner; every other state has its hint, in words for the user who tried


# -- storage and validation -------------------------------------------------------------------


def test_a_local_tally_survives_storage() -> None:
    alice, _ = negotiate()
    stored = unpack(pack(alice.to_map()))
    assert LocalTally.from_map(stored) == alice
    assert refusal(LocalTally.from_map, {**stored, "state": "limbo"}).code == "bad_field"
    assert refusal(LocalTally.from_map, {**stored, "side": "both"}).code == "bad_field"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("stock", "terms", "limit"), 1.5, "tally.stock.terms.limit"),
        (("stock", "terms", "limit"), True, "tally.stock.terms.limit"),
        (("uuid",), "not-a-uuid", "tally.uuid"),
        (("uuid",), "00000000-0000-4000-8000-00000000000A", "tally.uuid"),
        (("memo",), "x" * (tf.MAX_MEMO + 1), "tally.memo"),
        (("version",), 0, "tally.version"),
        (("agree", "version"), "1", "tally.agree.version"),
        (("foil", "cert", "public"), b"short", "tally.foil.cert.public"),
        (("foil", "cert", "chad"), {"agent": "nope"}, "tally.foil.cert.chad"),
        (("sign", "hash"), b"short", "tally.sign.hash"),
        (("stock", "terms", "note"), 0.5, "tally"),
    ],
)
def test_check_tally_names_the_bad_field(path: tuple[str, ...], value: Any, field: str) -> None:
    alice, _ = negotiate()
    broken = copy.deepcopy(alice.tally)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    caught = refusal(tf.check_tally, broken)
    assert caught.code == "bad_field"
    assert caught.message.startswith(field)


def test_a_certificate_must_name_a_user() -> None:
    agentless = ChipAddress(agent=ALICE.agent.agent_id)
    assert refusal(tf.make_cert, agentless, "x", ALICE.key.public, NOW).code == "bad_field"


def test_follow_starts_the_chain_once_reopens_and_closes() -> None:
    holder, _ = negotiate()
    assert holder.state in ts.BINDING_STATES
    local, happened = t.follow(holder, has_chain=False, balance=0, quiet=True)
    assert happened == (t.START_CHAIN,) and local == holder
    assert t.follow(holder, has_chain=True, balance=0, quiet=True) == (holder, ())
    closing, _ = t.close(in_state(ts.OPEN), balance=0)
    assert t.follow(closing, has_chain=True, balance=5, quiet=True)[1] == ()  # still owed
    assert t.follow(closing, has_chain=True, balance=0, quiet=False)[1] == ()  # chain moving
    closed, happened = t.follow(closing, has_chain=True, balance=0, quiet=True)
    assert (closed.state, happened) == (ts.CLOSE, (t.CLOSED,))
    reopened, happened = t.follow(closed, has_chain=True, balance=-3, quiet=True)
    assert (reopened.state, happened) == (ts.C_OPEN, (t.REOPENED,))
