"""Chits: signing, validation, the balance convention, limits, invoices and the closing rule."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import chit as c
from protocol import chit_states as cs
from protocol import tally as t
from protocol import tally_fields as tf
from protocol import tally_states as ts
from protocol.chit_fields import MAX_REF, check_chit, check_form, chit_hash
from protocol.chit_local import LocalChit, effect
from protocol.chit_local import balance as chit_balance
from protocol.chit_room import check_room
from protocol.codec import pack, unpack
from protocol.messages import Send
from protocol.tally_local import LocalTally
from tests.test_credit_tally import (
    ALICE,
    BOB,
    MALLORY,
    NOW,
    TALLY_UUID,
    code_of,
    negotiate,
    refusal,
)

# Alice holds the stock (vendor), Bob the foil (client); each side's limit is 10_000.
ALICE_TALLY, BOB_TALLY = negotiate(limit=10_000)
KEYS = {t.STOCK: ALICE.key, t.FOIL: BOB.key}


def uuid_of(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


def pay(
    local: LocalTally, units: int, *, balance: int = 0, n: int = 100, **extra: Any
) -> LocalChit:
    """``local``'s user pays ``units``; ``extra`` may give ``key``, ``memo`` or ``ref``."""
    key = extra.pop("key", KEYS[local.side])
    paid, messages = c.pay(
        local, key, chit_uuid=uuid_of(n), units=units, date_ms=NOW, balance=balance, **extra
    )
    assert messages == []  # the chain sends good chits
    return paid


def closing(local: LocalTally) -> LocalTally:
    return t.close(local, balance=0)[0]


# -- a direct payment ---------------------------------------------------------------------------


def test_a_payment_is_signed_by_the_payer_and_good_at_once() -> None:
    paid = pay(BOB_TALLY, 2_500)
    chit = paid.chit
    assert paid.state == cs.L_GOOD
    assert (chit["by"], chit["type"], chit["units"], chit["tally"]) == (
        "foil",
        "tran",
        2_500,
        TALLY_UUID,
    )
    assert chit["hash"] == chit_hash(chit)
    assert chit["chain"] is None
    check_chit(unpack(pack(chit)), ALICE_TALLY.tally, signed=True)


def test_the_payees_balance_rises_and_the_two_views_are_opposite() -> None:
    by_foil = pay(BOB_TALLY, 300).chit
    by_stock = pay(ALICE_TALLY, 100, n=101).chit
    assert effect(by_foil, t.STOCK) == 300  # Bob now owes Alice 300 more
    assert effect(by_foil, t.FOIL) == -300
    assert chit_balance([by_foil, by_stock], t.STOCK) == 200
    assert chit_balance([by_foil, by_stock], t.FOIL) == -200


def test_a_payment_past_the_payees_limit_is_refused_before_it_is_signed() -> None:
    # Bob's balance is -9_000 (he owes Alice 9_000); Alice lets him owe her at most 10_000.
    assert pay(BOB_TALLY, 1_000, balance=-9_000).state == cs.L_GOOD
    caught = refusal(pay, BOB_TALLY, 1_001, balance=-9_000)
    assert caught.code == "over_limit"
    assert caught.message == ("1001 would bring bob (foil)'s debt to alice (stock) to 10001, "
                              "past alice (stock)'s limit of 10000: at most 1000 fits now")
    # The other way round it is Bob's limit that counts.
    assert pay(ALICE_TALLY, 10_000, balance=0).state == cs.L_GOOD
    assert refusal(pay, ALICE_TALLY, 10_001, balance=0).code == "over_limit"
    assert pay(ALICE_TALLY, 15_000, balance=5_000).state == cs.L_GOOD  # paying a debt down first


def test_only_the_payers_key_signs_and_only_on_an_open_tally() -> None:
    assert refusal(pay, BOB_TALLY, 1, key=ALICE.key).code == "bad_key"
    offered = LocalTally(BOB_TALLY.side, ts.P_OFFER, BOB_TALLY.tally)
    assert refusal(pay, offered, 1).code == "bad_state"
    bound = LocalTally(BOB_TALLY.side, ts.OFFER_OPEN, BOB_TALLY.tally)
    assert refusal(pay, bound, 1).code == "bad_state"  # not until the acceptance is delivered


def test_a_user_refused_by_the_tallys_state_is_told_what_to_do() -> None:
    """A payment, an invoice or an acceptance on a tally that takes no chits says what its
    state means and what to do, as the tally's own calls do (README: BAD_STATE)."""
    offered = LocalTally(BOB_TALLY.side, ts.P_OFFER, BOB_TALLY.tally)
    assert refusal(pay, offered, 1).message == (
        f"tally {TALLY_UUID} is P.offer: our user's chits move only on an open tally; the "
        "partner's offer waits for us: tally.accept, tally.refuse or tally.counter")
    closed = LocalTally(ALICE_TALLY.side, ts.CLOSE, ALICE_TALLY.tally)
    assert refusal(c.invoice, closed, balance=0, chit_uuid=uuid_of(2), units=1,
                   date_ms=NOW).message.endswith(
        "is close: our user's chits move only on an open tally; it is closed: tally.invite "
        "starts another")
    owed = c.receive_pend(None, c.invoice(ALICE_TALLY, chit_uuid=uuid_of(3), units=1,
                                          date_ms=NOW, balance=0)[1][0].object, BOB_TALLY)[0]
    void = LocalTally(BOB_TALLY.side, ts.VOID, BOB_TALLY.tally)
    assert refusal(c.accept, owed, void, BOB.key, balance=0).message.endswith(
        "it is void, and nothing more happens to it: tally.invite starts another")


# -- validation and signatures --------------------------------------------------------------------


def test_a_tampered_chit_is_refused() -> None:
    chit = pay(BOB_TALLY, 2_500).chit
    more = {**chit, "units": 25_000}
    assert refusal(check_chit, more, ALICE_TALLY.tally, signed=True).message.startswith(
        "chit.hash"
    )
    rehashed = {**more, "hash": chit_hash(more)}
    assert refusal(check_chit, rehashed, ALICE_TALLY.tally, signed=True).code == "bad_signature"
    by_mallory = {**chit, "sign": MALLORY.key.sign(chit["hash"])}
    assert refusal(check_chit, by_mallory, ALICE_TALLY.tally, signed=True).code == "bad_signature"
    unsigned = {**chit, "sign": None}
    assert refusal(check_chit, unsigned, ALICE_TALLY.tally, signed=True).code == "bad_signature"
    other_tally = {**ALICE_TALLY.tally, "uuid": uuid_of(9)}
    assert refusal(check_chit, chit, other_tally, signed=True).message.startswith("chit.tally")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("units", 2.5),
        ("units", 0),
        ("units", -5),
        ("units", True),
        ("units", tf.MAX_UNITS + 1),
        ("by", "middle"),
        ("type", "gift"),
        ("date", -1),
        ("memo", "x" * (tf.MAX_MEMO + 1)),
        ("memo", None),
        ("uuid", "chit-1"),
        ("tally", None),
        ("ref", {"rate": 0.5}),
        ("ref", "x" * MAX_REF),
        ("sign", b"short"),
        ("chain", {"index": 0, "prev": bytes(32), "hash": bytes(32)}),
        ("chain", {"index": 1, "prev": b"short", "hash": bytes(32)}),
        ("chain", [1]),
    ],
)
def test_validation_names_the_bad_field(field: str, value: Any) -> None:
    chit = {**pay(BOB_TALLY, 2_500).chit, field: value}
    caught = refusal(check_form, chit)
    assert caught.code == "bad_field"
    assert caught.message.startswith(f"chit.{field}")


def test_a_chit_needs_exactly_its_fields_and_set_chits_move_nothing() -> None:
    chit = pay(BOB_TALLY, 2_500).chit
    assert refusal(check_form, {**chit, "extra": 1}).code == "bad_field"
    setting = {**chit, "type": "set", "units": 0, "ref": {"close": True}}
    check_form({**setting, "hash": chit_hash(setting)})
    assert refusal(check_form, {**setting, "units": 1}).message.startswith("chit.units")


def test_a_payment_with_a_bad_ref_is_refused_naming_it() -> None:
    assert refusal(pay, BOB_TALLY, 1, ref={"rate": 1.5}).message.startswith("chit.ref")
    kept = pay(BOB_TALLY, 1, ref={"order": 42}, memo="beans").chit
    assert (kept["ref"], kept["memo"]) == ({"order": 42}, "beans")


# -- invoices -------------------------------------------------------------------------------------


def invoice(units: int = 700, *, balance: int = 0) -> tuple[LocalChit, Send]:
    """Alice (stock) invoices Bob (foil): (Alice's chit, the pend message)."""
    drafted, [pend] = c.invoice(
        ALICE_TALLY, chit_uuid=uuid_of(7), units=units, date_ms=NOW, balance=balance, memo="bill"
    )
    return drafted, pend


def test_an_invoice_paid() -> None:
    drafted, pend = invoice()
    assert (drafted.state, pend.action) == (cs.A_PEND, "pend")
    assert (pend.to, pend.target, pend.from_cuid) == (BOB.address, "chit", "alice")
    assert (pend.object["by"], pend.object["sign"]) == (t.FOIL, None)
    owed, messages = c.receive_pend(None, unpack(pack(pend.object)), BOB_TALLY)
    assert (owed.state, messages) == (cs.L_PEND, [])
    paid, messages = c.accept(owed, BOB_TALLY, BOB.key, balance=0)
    assert (paid.state, messages) == (cs.L_GOOD, [])
    check_chit(paid.chit, BOB_TALLY.tally, signed=True)
    assert paid.chit["hash"] == drafted.chit["hash"]
    received, _ = c.receive_good(drafted, paid.chit, ALICE_TALLY, balance=0)
    assert received.state == cs.A_GOOD
    assert effect(received.chit, t.STOCK) == 700


def test_an_invoice_refused() -> None:
    drafted, pend = invoice()
    owed, _ = c.receive_pend(None, pend.object, BOB_TALLY)
    refused, [void] = c.refuse(owed, BOB_TALLY)
    assert refused.state == cs.L_VOID
    notice = {"tally": TALLY_UUID, "uuid": drafted.uuid}
    assert void == Send(ALICE.address, "chit", "void", notice, from_cuid="bob")
    voided, _ = c.receive_void(drafted, void.object, ALICE_TALLY)
    assert voided.state == cs.A_VOID
    another = {"tally": TALLY_UUID, "uuid": uuid_of(8)}
    assert code_of(c.receive_void, drafted, another, ALICE_TALLY) == "bad_field"


def test_invoices_respect_the_payees_limit_when_made_and_when_paid() -> None:
    assert refusal(invoice, 10_001).code == "over_limit"
    _, pend = invoice(4_000)
    owed, _ = c.receive_pend(None, pend.object, BOB_TALLY)
    # Meanwhile Bob came to owe 7_000: paying 4_000 more would pass Alice's limit.
    assert refusal(c.accept, owed, BOB_TALLY, BOB.key, balance=-7_000).code == "over_limit"
    assert refusal(c.accept, owed, BOB_TALLY, ALICE.key, balance=0).code == "bad_key"


def test_an_invoice_must_be_in_the_payers_name_unsigned_and_unchained() -> None:
    _, pend = invoice()
    chit = pend.object
    mine = {**chit, "by": t.STOCK}
    mine["hash"] = chit_hash(mine)
    assert refusal(c.receive_pend, None, mine, BOB_TALLY).message.startswith("chit.by")
    signed = {**chit, "sign": BOB.key.sign(chit["hash"])}
    assert refusal(c.receive_pend, None, signed, BOB_TALLY).message.startswith("chit.sign")
    chained = {**chit, "chain": {"index": 1, "prev": bytes(32), "hash": bytes(32)}}
    assert refusal(c.receive_pend, None, chained, BOB_TALLY).message.startswith("chit.chain")


def test_a_payment_received_must_be_the_partners_and_match_our_invoice() -> None:
    drafted, _ = invoice()
    other = pay(BOB_TALLY, 701, n=8).chit
    assert refusal(c.receive_good, drafted, other, ALICE_TALLY,
                   balance=0).message.startswith("chit.hash")
    own = pay(ALICE_TALLY, 5, n=9).chit
    assert refusal(c.receive_good, None, own, ALICE_TALLY,
                   balance=0).message.startswith("chit.by")
    direct, _ = c.receive_good(None, other, ALICE_TALLY, balance=0)
    assert direct.state == cs.A_GOOD
    assert refusal(c.receive_good, direct, other, ALICE_TALLY,
                   balance=0).code == "bad_state"  # a replay


def test_a_partners_chit_past_our_limit_is_refused_though_its_signature_is_good() -> None:
    """The partner's node checks our limit before its user signs; a chit that passes it
    anyway (a forged ledger) is refused on receipt, so the holders cannot drift apart."""
    limit = BOB_TALLY.tally[BOB_TALLY.side]["terms"]["limit"]
    fits = pay(ALICE_TALLY, 30, balance=0).chit
    assert c.receive_good(None, fits, BOB_TALLY, balance=limit - 30)[0].state == cs.A_GOOD
    refused = refusal(c.receive_good, None, fits, BOB_TALLY, balance=limit - 29)
    assert refused.code == "over_limit" and f"limit of {limit}" in refused.message
    # Bob's own pending lift chits to Alice (paying 9) may be good in Alice's view already:
    # a chit that fits once they are is early, one that would not fit even then is refused
    early = refusal(c.receive_good, None, fits, BOB_TALLY, balance=limit - 29, paying=9)
    assert early.code == "awaiting_lift" and "pending lift chits of 9" in early.message
    assert refusal(c.receive_good, None, fits, BOB_TALLY, balance=limit - 20,
                   paying=9).code == "over_limit"
    assert c.receive_good(None, fits, BOB_TALLY, balance=limit - 30, paying=9)[0].state == (
        cs.A_GOOD)


def test_the_partners_chits_are_taken_in_every_binding_state_but_never_issued_after_close(
) -> None:
    chit = pay(ALICE_TALLY, 5).chit
    bound = LocalTally(BOB_TALLY.side, ts.OFFER_OPEN, BOB_TALLY.tally)
    assert c.receive_good(None, chit, bound, balance=0)[0].state == cs.A_GOOD
    # signed before the partner learned of the close: owed all the same (the tally reopens)
    closed = LocalTally(BOB_TALLY.side, ts.CLOSE, BOB_TALLY.tally)
    assert c.receive_good(None, chit, closed, balance=0)[0].state == cs.A_GOOD
    assert t.reopen(closed)[0].state == ts.C_OPEN
    assert refusal(pay, closed, 1, balance=0).code == "bad_state"  # our user: no new chits
    assert code_of(c.invoice, closed, balance=0, chit_uuid=uuid_of(2), units=1,
                   date_ms=NOW) == "bad_state"


# -- closing --------------------------------------------------------------------------------------


def test_on_a_closing_tally_no_chit_may_raise_the_balances_magnitude() -> None:
    bob = closing(BOB_TALLY)
    alice = closing(ALICE_TALLY)
    # Bob owes Alice 500 (Bob's balance -500): Bob may not pledge more ...
    assert refusal(pay, bob, 1, balance=-500).code == "closing"
    # ... but Alice may pay him back, up to the point where the debt would flip and grow.
    assert pay(alice, 500, balance=500).state == cs.L_GOOD
    assert pay(alice, 1_000, balance=500).state == cs.L_GOOD  # the debt flips to 500 the other way
    refused = refusal(pay, alice, 1_001, balance=500)
    assert refused.code == "closing" and "at most 1000 fits now" in refused.message
    at_zero = refusal(pay, alice, 1, balance=0)  # at zero nothing moves: not "at most 0"
    assert at_zero.code == "closing" and at_zero.message.endswith("; nothing fits now")
    bill = {"chit_uuid": uuid_of(1), "units": 1, "date_ms": NOW}
    assert code_of(c.invoice, bob, balance=0, **bill) == "closing"


@given(balance=st.integers(-10_000, 10_000), reserved=st.integers(0, 10_000),
       units=st.integers(1, 30_000), payer=st.sampled_from(["bob", "alice"]),
       is_closing=st.booleans())
def test_a_refusal_names_exactly_the_most_that_fits(
    balance: int, reserved: int, units: int, payer: str, is_closing: bool
) -> None:
    """Either side of an open or a closing tally: a payment fits exactly when it is no more
    than the refusal of a larger one says, whichever rule refuses it (on a closing tally, an
    amount the limit alone would let through can break the closing rule: it must not be
    named)."""
    holder = BOB_TALLY if payer == "bob" else ALICE_TALLY
    holder = closing(holder) if is_closing else holder
    if not is_closing and reserved:  # an open tally's reserved room: within the limit
        return

    def refused(units: int) -> t.Refusal | None:
        try:
            check_room(holder, {"by": holder.side, "units": units}, balance, reserved)
        except t.Refusal as exc:
            return exc
        return None

    why = refused(units)
    if why is None:
        return
    fits = 0 if why.message.endswith("nothing fits now") else int(
        why.message.rsplit("at most ", 1)[1].split()[0])
    assert units > fits
    assert fits == 0 or refused(fits) is None, (why.message, refused(fits))
    assert refused(fits + 1) is not None


# -- the table and storage ------------------------------------------------------------------------


def test_chit_events_outside_the_table_are_refused() -> None:
    drafted, pend = invoice()
    owed, _ = c.receive_pend(None, pend.object, BOB_TALLY)
    paid, _ = c.accept(owed, BOB_TALLY, BOB.key, balance=0)
    assert refusal(c.accept, paid, BOB_TALLY, BOB.key, balance=0).code == "bad_state"
    assert refusal(c.refuse, paid, BOB_TALLY).code == "bad_state"
    assert refusal(c.receive_pend, owed, pend.object, BOB_TALLY).code == "bad_state"
    assert refusal(c.accept, drafted, ALICE_TALLY, ALICE.key, balance=0).code == "bad_state"
    voided = LocalChit(cs.A_VOID, drafted.chit)
    assert refusal(c.receive_good, voided, paid.chit, ALICE_TALLY, balance=0).code == "bad_state"
    notice = {"tally": TALLY_UUID, "uuid": drafted.uuid}
    assert refusal(c.receive_void, voided, notice, ALICE_TALLY).code == "bad_state"
    named = {state for state, _ in cs.TRANSITIONS} | set(cs.TRANSITIONS.values())
    assert named == {None, *cs.STATES}


def test_a_local_chit_survives_storage() -> None:
    paid = pay(BOB_TALLY, 42)
    assert LocalChit.from_map(unpack(pack(paid.to_map()))) == paid
    assert refusal(LocalChit.from_map, {"state": "L.lost", "chit": paid.chit}).code == "bad_field"
    broken = copy.deepcopy(paid.to_map())
    broken["chit"]["units"] = 43
    assert refusal(LocalChit.from_map, broken).message.startswith("chit.hash")
