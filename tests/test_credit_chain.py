"""Chit-chain consensus: every command, the recovery paths, and a lossy two-holder simulation."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from protocol import chain as ch
from protocol import chain_messages, chain_stock
from protocol import chit as c
from protocol import chit_states as cs
from protocol import tally as t
from protocol import tally_states as ts
from protocol.chit_fields import chit_hash
from protocol.chit_local import LocalChit, effect
from protocol.codec import pack, unpack
from protocol.keys import ChipAddress
from protocol.messages import Send
from protocol.tally_local import LocalTally, to_partner
from tests.test_credit_tally import ALICE, BOB, MALLORY, NOW, negotiate, refusal

LIMIT = 10_000
ALICE_TALLY, BOB_TALLY = negotiate(limit=LIMIT)  # Alice holds the stock, Bob the foil
GOOD = (cs.A_GOOD, cs.L_GOOD)


class Holder:
    """One holder of the tally, wired the way the runtime wires the modules: chit events
    first, then the chain; chits the chain adopts are recorded as received good. ``rows``
    keeps every block the chain held, by index, as the runtime's chit rows do, so a chain
    trimmed (``ch.trim``) reads back what a message names behind its base; the good chits
    neither linked nor held are the ones it spilled, which a message that names them and a
    repair take back (``ch.unspill``), as ``store.credit`` does."""

    def __init__(self, local: LocalTally, key: Any) -> None:
        self.local = local
        self.key = key
        self.rows: dict[int, dict[str, Any]] = {}
        self.chain = ch.start(local)
        self.chits: dict[str, LocalChit] = {}
        self.notices: list[Send] = []  # pend and void: the outbox retries them

    @property
    def chain(self) -> ch.Chain:
        return self._chain

    @chain.setter
    def chain(self, chain: ch.Chain) -> None:
        self.rows.update((chain.base + at, chit) for at, chit in enumerate(chain.chits, 1))
        self._chain = chain

    def spilled(self) -> list[dict[str, Any]]:
        """The good chits the chain neither links nor holds, oldest first."""
        held = {chit["uuid"] for chit in (*self.whole(), *self.chain.pending)}
        return [{**local.chit, "chain": None} for uuid, local in self.chits.items()
                if local.state in GOOD and uuid not in held]

    def named(self, wanted: ch.Wanted) -> ch.Chain:
        """The chain holding again the spilled chits ``wanted`` names, or the oldest ones it
        asks for (``Ledger.named``)."""
        spilled = self.spilled()
        named = [chit for chit in spilled if chit["uuid"] in wanted.uuids]
        named += [chit for chit in spilled if chit not in named][: wanted.spilled]
        return ch.unspill(self.chain, named) if self.chain.spilled else self.chain

    def resync(self) -> list[Send]:
        """``ch.resync`` with what it sends read back (``ChainRepair._resend``)."""
        wanted = ch.to_resend(self.chain)
        return ch.resync(self.named(wanted), self.local, self.history(wanted))

    def whole(self) -> tuple[dict[str, Any], ...]:
        """Every linked block, the trimmed ones from ``rows``."""
        return tuple(self.rows[i] for i in range(1, self.chain.base + 1)) + self.chain.chits

    def history(self, wanted: ch.Wanted) -> dict[int, dict[str, Any]]:
        """The history the runtime's ``Ledger.named`` reads: blocks behind the base, by
        index or by chit uuid."""
        return {i: chit for i, chit in self.rows.items() if i <= self.chain.base and (
            i in wanted.indexes or chit["uuid"] in wanted.uuids)}

    @property
    def side(self) -> str:
        return self.local.side

    def pay(self, chit_uuid: str, units: int) -> list[Send]:
        paid, _ = c.pay(
            self.local,
            self.key,
            chit_uuid=chit_uuid,
            units=units,
            date_ms=NOW,
            balance=ch.balance(self.chain),
        )
        return self._good(paid)

    def invoice(self, chit_uuid: str, units: int) -> list[Send]:
        drafted, messages = c.invoice(
            self.local,
            chit_uuid=chit_uuid,
            units=units,
            date_ms=NOW,
            balance=ch.balance(self.chain),
        )
        self.chits[drafted.uuid] = drafted
        self.notices += messages
        return messages

    def answer(self, chit_uuid: str, *, agree: bool) -> list[Send]:
        owed = self.chits[chit_uuid]
        if agree:
            paid, _ = c.accept(owed, self.local, self.key, balance=ch.balance(self.chain))
            return self._good(paid)
        self.chits[chit_uuid], messages = c.refuse(owed, self.local)
        self.notices += messages
        return messages

    def receive(self, message: Send) -> list[Send]:
        """Handle one message; a chit event that no longer applies is refused as ``bad_state``
        (the sender's duplicate or a copy the chain delivered first)."""
        action, obj = message.action, unpack(pack(message.object))
        if action == "chain":
            wanted = ch.wanted(self.chain, obj)
            chain = self.named(wanted)
            received = ch.receive(chain, obj, self.local, self.history(wanted))
            if obj["cmd"] == "upd" and self.side == t.STOCK:
                assert outcome(received) == outcome(
                    one_by_one(chain, obj, self.local, self.history(wanted)))
            assert {chit["uuid"] for chit in received.adopted} <= wanted.uuids
            balance = ch.balance(chain)  # before the chits this message adopts
            self.chain = received.chain
            for chit in received.adopted:
                self.chits[chit["uuid"]] = self._adopt(chit, balance)
                balance += effect(chit, self.local.side)
            return received.messages
        known = self.chits.get(obj["uuid"])
        try:
            if action == "pend":
                self.chits[obj["uuid"]], _ = c.receive_pend(known, obj, self.local)
                return []
            if action == "void":
                if known is not None:  # else UNKNOWN_CHIT (a restored holder lost it)
                    self.chits[obj["uuid"]], _ = c.receive_void(known, obj, self.local)
                return []
            good = self._receive_good(obj, ch.balance(self.chain))
        except t.Refusal as refused:
            assert refused.code == "bad_state", refused
            return []
        self.chits[good.uuid] = good
        history = self.history(ch.wanted_chit(self.chain, good.chit))
        self.chain, messages = ch.add(self.chain, good.chit, self.local, history)
        return messages

    def _adopt(self, chit: dict[str, Any], balance: int) -> LocalChit:
        """A chit a chain message brought: the partner's, or our user's that we lost."""
        if chit["by"] == self.side:
            return ch.own_good(self.chits.get(chit["uuid"]), chit, self.local)
        return self._receive_good(chit, balance)

    def _receive_good(self, chit: dict[str, Any], balance: int) -> LocalChit:
        """The partner's good chit, checked against our limit at our ``balance``: under
        every interleaving the model tries, an honest partner's chit must fit."""
        return c.receive_good(self.chits.get(chit["uuid"]), chit, self.local,
                              balance=balance)[0]

    def _good(self, paid: LocalChit) -> list[Send]:
        self.chits[paid.uuid] = paid
        self.chain, messages = ch.add(self.chain, paid.chit, self.local)
        return messages


class Unsettled(AssertionError):
    """Repairs went on past every round :meth:`Pair.recover` gives them."""


class Pair:
    """Both holders and the messages between them, which a test delivers, drops or repeats."""

    def __init__(self) -> None:
        self.stock = Holder(ALICE_TALLY, ALICE.key)
        self.foil = Holder(BOB_TALLY, BOB.key)
        self.queue: list[tuple[Holder, Send]] = []
        self.sent: list[tuple[Holder, Send]] = []  # every message ever queued
        self.serial = 0

    def other(self, holder: Holder) -> Holder:
        return self.foil if holder is self.stock else self.stock

    def next_uuid(self) -> str:
        self.serial += 1
        return f"00000000-0000-4000-8000-{self.serial:012x}"

    def post(self, sender: Holder, messages: list[Send]) -> None:
        """Queue ``messages`` for the sender's partner: each must name that partner's user
        (with where its agent listens) as recipient and the sender's user as sender."""
        receiver = self.other(sender)
        address = ChipAddress.from_map(receiver.local.tally[receiver.side]["cert"]["chad"])
        for message in messages:
            assert (message.to, message.from_cuid) == (address, sender.local.cuid), message
            assert message.target == "chit"
        self.queue += [(receiver, message) for message in messages]
        self.sent += [(receiver, message) for message in messages]

    def deliver(self, position: int = 0) -> None:
        receiver, message = self.queue.pop(position)
        self.post(receiver, receiver.receive(message))

    def drain(self) -> None:
        for _ in range(100_000):
            if not self.queue:
                return
            self.deliver()
        raise AssertionError("the holders keep talking")

    def recover(self) -> int:
        """Resend pend/void notices once, then resync until neither side has anything to say;
        returns how many resync rounds had work."""
        for holder in (self.stock, self.foil):
            self.post(holder, holder.notices)
        self.drain()
        for rounds in range(100):
            for holder in (self.stock, self.foil):
                self.post(holder, holder.resync())
            if not self.queue:
                return rounds
            self.drain()
        raise Unsettled("resync does not converge")

    def assert_agreed(self) -> None:
        """Identical chains, every signed chit in them once, opposite balances, matching
        chit states, limits kept."""
        stock, foil = self.stock.chain, self.foil.chain
        assert self.stock.whole() == self.foil.whole()
        assert ch.settled(stock) and ch.settled(foil)
        uuids = [chit["uuid"] for chit in self.foil.whole()]
        assert len(uuids) == len(set(uuids))
        for holder in (self.stock, self.foil):
            good = {uuid for uuid, local in holder.chits.items() if local.state in GOOD}
            assert good == set(uuids)
            assert ch.balance(holder.chain) <= LIMIT
        assert ch.balance(stock) == -ch.balance(foil)
        assert self.stock.chits.keys() == self.foil.chits.keys()
        for uuid, ours in self.stock.chits.items():
            theirs = self.foil.chits[uuid]
            assert {ours.state[0], theirs.state[0]} == {"A", "L"}
            assert ours.state[1:] == theirs.state[1:]


def fresh(chain: ch.Chain) -> ch.Chain:
    """The same chain with lookup hints of its own: the versions of one chain share theirs,
    and hints other cases left (a claim on an index, say) would steer this one."""
    return ch.Chain.from_map(chain.to_map())


def one_by_one(chain: ch.Chain, obj: dict[str, Any], local: LocalTally,
               history: dict[int, dict[str, Any]] | None = None) -> ch.Received:
    """The stock's ``upd`` taken a chit at a time, each linked with its own copy of the
    chain (as before ``receive`` linked a run of blocks at once): what the batched path must
    equal. Run on a copy with hints of its own, so neither path leans on the other's."""
    chain = found = replace(fresh(chain), history=history or {})
    adopted = []
    try:
        for chit in obj["chits"]:
            ours = chain_messages.known(chain, chit, local)
            if chit["chain"] is None:
                raise t.Refusal("bad_field", f"chit {chit['uuid']} in an upd has no chain block")
            if ours is None:
                adopted.append(chit)
            chain = chain_stock.take(chain, chit if ours is None else {
                **ours, "chain": chit["chain"]})
    except chain_stock.Lost:  # the foil lost blocks it confirmed: answered, nothing linked
        lost = chain_stock.lost(found, obj["chits"], local)
        return lost._replace(chain=replace(lost.chain, history={}))
    length = found.length
    conf = max(chain.conf, min(obj["conf"], chain_stock.shown(chain, obj["chits"])))
    chain = replace(chain, conf=conf, history={}, ahead=max(chain.ahead, obj["conf"]))
    return ch.Received(chain, chain_stock.stock_reply(
        chain, local, foil_conf=obj["conf"], moved=chain.length > length), adopted)


def outcome(received: ch.Received) -> tuple[Any, ...]:
    chain = received.chain
    return (chain.base, chain.chits, chain.pending, chain.conf, received.messages,
            received.adopted)


def one(messages: list[Send]) -> Send:
    [message] = messages
    return message


def command(cmd: str, **fields: Any) -> dict[str, Any]:
    """The object of a chain message about the test tally."""
    return {"cmd": cmd, "tally": ALICE_TALLY.uuid, **fields}


def chain_cmd(message: Send) -> str:
    return message.object["cmd"] if message.action == "chain" else message.action


# -- the two basic flows --------------------------------------------------------------------------


def test_a_chain_starts_at_the_tally_digest_once_both_have_signed() -> None:
    chain = ch.start(ALICE_TALLY)
    assert (chain.length, chain.head, chain.conf) == (0, ALICE_TALLY.tally["sign"]["hash"], 0)
    assert ch.settled(chain) and ch.balance(chain) == 0
    offered = LocalTally(t.STOCK, ts.H_OFFER, ALICE_TALLY.tally)
    assert refusal(ch.start, offered).code == "bad_state"


def test_a_foil_payment_travels_with_its_block_and_is_confirmed_both_ways() -> None:
    pair = Pair()
    good = one(pair.foil.pay(pair.next_uuid(), 300))
    block = good.object["chain"]
    origin = pair.foil.chain.origin
    assert (good.action, block["index"], block["prev"]) == ("good", 1, origin)
    assert block["hash"] == ch.block_hash(1, origin, good.object["hash"])

    ack = one(pair.stock.receive(good))
    assert (chain_cmd(ack), ack.object["index"]) == ("ack", 1)
    assert pair.stock.chain.length == 1 and not ch.settled(pair.stock.chain)
    echo = one(pair.foil.receive(ack))
    assert (chain_cmd(echo), pair.foil.chain.conf) == ("ack", 1)
    assert pair.stock.receive(echo) == []
    assert pair.stock.chain.conf == 1
    pair.assert_agreed()
    assert ch.balance(pair.stock.chain) == 300


def test_a_stock_payment_waits_in_pending_until_the_foil_orders_it() -> None:
    pair = Pair()
    good = one(pair.stock.pay(pair.next_uuid(), 200))
    assert good.object["chain"] is None
    assert pair.stock.chain.length == 0 and len(pair.stock.chain.pending) == 1
    assert ch.balance(pair.stock.chain) == -200  # owed already, ordered or not
    upd = one(pair.foil.receive(good))
    assert chain_cmd(upd) == "upd"
    assert [chit["chain"]["index"] for chit in upd.object["chits"]] == [1]
    pair.post(pair.stock, pair.stock.receive(upd))
    assert pair.stock.chain.pending == () and pair.stock.chain.length == 1
    pair.drain()
    pair.assert_agreed()


def test_many_chits_in_flight_from_both_sides_in_any_order_need_no_resync() -> None:
    pair = Pair()
    shuffle = random.Random(7).shuffle
    for _ in range(40):
        pair.post(pair.stock, pair.stock.pay(pair.next_uuid(), 10))
        pair.post(pair.foil, pair.foil.pay(pair.next_uuid(), 15))
    while pair.queue:
        shuffle(pair.queue)
        pair.deliver()
    for holder in (pair.stock, pair.foil):
        assert ch.resync(holder.chain, holder.local) == []
    pair.assert_agreed()
    assert pair.foil.chain.length == 80
    assert ch.balance(pair.stock.chain) == 40 * 15 - 40 * 10


# -- reordering and recovery ----------------------------------------------------------------------


def test_blocks_that_arrive_early_wait_for_the_gap_to_fill() -> None:
    pair = Pair()
    goods = [one(pair.foil.pay(pair.next_uuid(), 1)) for _ in range(3)]
    for early in (goods[2], goods[1]):
        req = one(pair.stock.receive(early))
        assert req.object == command("req", index=1)
    assert [chit["chain"]["index"] for chit in pair.stock.chain.pending] == [3, 2]
    ack = one(pair.stock.receive(goods[0]))
    assert (ack.object["index"], pair.stock.chain.length) == (3, 3)
    assert pair.stock.chain.pending == ()


def test_req_is_answered_with_blocks_from_that_index_in_batches() -> None:
    pair = Pair()
    for _ in range(ch.UPD_BATCH + 5):
        pair.foil.pay(pair.next_uuid(), 1)
    upd = one(ch.receive(pair.foil.chain, command("req", index=3), BOB_TALLY).messages).object
    assert [chit["chain"]["index"] for chit in upd["chits"]] == list(range(3, 3 + ch.UPD_BATCH))
    beyond = command("req", index=pair.foil.chain.length + 1)
    assert ch.receive(pair.foil.chain, beyond, BOB_TALLY).messages == []
    assert len(one(ch.resync(pair.foil.chain, pair.foil.local)).object["chits"]) == ch.UPD_BATCH


def test_a_lost_stock_payment_reaches_the_foil_through_new() -> None:
    pair = Pair()
    paid_uuid = pair.next_uuid()
    pair.stock.pay(paid_uuid, 50)  # the good message is lost
    new = one(ch.resync(pair.stock.chain, pair.stock.local))
    assert chain_cmd(new) == "new"
    received = ch.receive(pair.foil.chain, new.object, BOB_TALLY)
    assert [chit["uuid"] for chit in received.adopted] == [paid_uuid]
    pair.post(pair.stock, [new])
    pair.drain()
    assert pair.foil.chits[paid_uuid].state == cs.A_GOOD
    assert ch.balance(pair.foil.chain) == 50
    pair.assert_agreed()


def test_a_lost_foil_payment_reaches_the_stock_through_upd() -> None:
    pair = Pair()
    paid_uuid = pair.next_uuid()
    pair.foil.pay(paid_uuid, 70)  # lost
    assert ch.resync(pair.stock.chain, pair.stock.local) == []  # the stock cannot know
    assert pair.recover() == 1
    assert pair.stock.chits[paid_uuid].state == cs.A_GOOD
    pair.assert_agreed()


def test_a_lost_invoice_acceptance_turns_the_invoice_good_through_the_chain() -> None:
    pair = Pair()
    chit_uuid = pair.next_uuid()
    pair.post(pair.foil, pair.foil.invoice(chit_uuid, 400))
    pair.drain()
    assert pair.stock.chits[chit_uuid].state == cs.L_PEND
    pair.stock.answer(chit_uuid, agree=True)  # the good message is lost
    assert pair.foil.chits[chit_uuid].state == cs.A_PEND
    pair.recover()
    assert pair.foil.chits[chit_uuid].state == cs.A_GOOD
    pair.assert_agreed()


def test_lost_acks_are_sent_again_and_duplicates_change_nothing() -> None:
    pair = Pair()
    good = one(pair.foil.pay(pair.next_uuid(), 5))
    pair.stock.receive(good)  # its ack is lost
    assert pair.stock.receive(good) == []  # a duplicate good is refused as bad_state
    assert pair.foil.chain.conf == 0
    ack = one(ch.resync(pair.stock.chain, pair.stock.local))
    assert chain_cmd(ack) == "ack"
    echo = one(pair.foil.receive(ack))
    assert one(pair.foil.receive(ack)) == echo  # a repeated ack is answered the same way
    pair.stock.receive(echo)
    pair.assert_agreed()


def test_a_restored_foil_and_a_stale_stock_are_repaired_by_nak_and_req() -> None:
    """The foil loses its last block (restored from a backup) and orders another chit there;
    the stock, which linked the lost block, conforms."""
    pair = Pair()
    backup = pair.foil.chain, dict(pair.foil.chits)
    upd = one(pair.foil.receive(one(pair.stock.pay(pair.next_uuid(), 9))))
    ack = one(pair.stock.receive(upd))  # the stock links the stock chit at 1
    pair.foil.chain, pair.foil.chits = backup  # ... and the foil forgets it
    nak = one(pair.foil.receive(ack))
    assert (chain_cmd(nak), nak.object["index"]) == ("nak", 0)
    req = one(pair.stock.receive(nak))
    assert (chain_cmd(req), req.object["index"], pair.stock.chain.length) == ("req", 1, 0)
    good = one(pair.foil.pay(pair.next_uuid(), 4))  # the foil orders its own chit at 1
    pair.post(pair.foil, [good])
    pair.post(pair.stock, [req])
    pair.drain()
    pair.recover()  # the stock's unlinked chit goes back to the foil in new
    pair.assert_agreed()
    assert [chit["units"] for chit in pair.foil.chain.chits] == [4, 9]


def test_the_stock_conforms_when_the_foil_reorders_unconfirmed_blocks() -> None:
    pair = Pair()
    backup = pair.foil.chain, dict(pair.foil.chits)
    pair.stock.receive(one(pair.foil.pay(pair.next_uuid(), 1)))  # linked at 1, unconfirmed
    pair.foil.chain, pair.foil.chits = backup
    second = one(pair.foil.pay(pair.next_uuid(), 2))  # the foil orders another chit at 1
    pair.stock.receive(second)
    assert [chit["units"] for chit in pair.stock.chain.chits] == [2]
    assert [chit["units"] for chit in pair.stock.chain.pending] == [1]


def test_a_block_contradicting_a_confirmed_one_is_answered_with_the_confirmed_block() -> None:
    """The stock never rolls back a block its foil confirmed: a rival block there (from a
    foil restored from a backup that lost it) leaves its chit unordered and owed, and brings
    the foil the confirmed block, from which it asks for what it lost. The foil takes no
    stock block that contradicts one it confirmed."""
    pair = Pair()
    first = one(pair.foil.pay(pair.next_uuid(), 1))
    pair.post(pair.foil, [first])
    pair.drain()
    stock = pair.stock.chain
    assert stock.conf == 1
    rival = one(Pair().foil.pay(pair.next_uuid(), 2)).object  # another chit at 1
    chain, (answer,) = ch.add(stock, rival, ALICE_TALLY)
    assert (chain.chits, chain.conf) == (stock.chits, 1)
    assert chain.pending == ({**rival, "chain": None},)
    assert ch.balance(chain) == ch.balance(stock) + 2
    assert answer.object == command("upd", chits=list(stock.chits), conf=1)
    received = ch.receive(stock, command("upd", chits=[rival], conf=0), ALICE_TALLY)
    assert (received.chain.pending, received.messages, received.adopted) == (
        chain.pending, [answer], [rival])
    upd = command("upd", chits=[rival], conf=1)
    assert refusal(ch.receive, pair.foil.chain, upd, BOB_TALLY).code == "conflict"


def test_a_forged_or_altered_chit_in_a_chain_message_is_refused() -> None:
    pair = Pair()
    good = one(pair.foil.pay(pair.next_uuid(), 5)).object
    upd = command("upd", chits=[good], conf=0)

    def refused(chit: dict[str, Any]) -> t.Refusal:
        """What the stock says to an upd carrying ``chit``."""
        return refusal(ch.receive, pair.stock.chain, {**upd, "chits": [chit]}, ALICE_TALLY)

    wrong_block = {**good, "chain": {**good["chain"], "index": 2}}
    assert refused(wrong_block).message.endswith("not its block hash")
    assert refused({**good, "sign": MALLORY.key.sign(good["hash"])}).code == "bad_signature"
    pair.stock.receive(to_partner(BOB_TALLY, "chit", "good", good))
    altered = {**good, "memo": "changed"}
    altered["hash"] = chit_hash(altered)
    assert refused(altered).code == "conflict"
    assert refused({**good, "chain": None}).message.endswith("has no chain block")
    for no_text in ([good["uuid"]], {"a": 1}):  # cannot key anything: refused, not a crash
        assert refused({**good, "uuid": no_text}).code == "bad_field"
    # the foil's own chit, which the stock holds unordered (it unlinked it for a foil that
    # lost it), is taken back on the foil's user's signature, which nobody else can make
    taken = ch.receive(Pair().foil.chain, command("new", chits=[good]), BOB_TALLY)
    assert [chit["uuid"] for chit in taken.adopted] == [good["uuid"]]
    forged = command("new", chits=[{**good, "sign": MALLORY.key.sign(good["hash"])}])
    assert refusal(ch.receive, Pair().foil.chain, forged, BOB_TALLY).code == "bad_signature"


def upd_cases() -> tuple[Pair, list[dict[str, Any]]]:
    """A stock holding two confirmed blocks and a third unconfirmed, two of its own chits
    waiting for the foil's order and an early block parked beyond a gap; and every block the
    foil could send it (1 to 8), rival orders (blocks 3 to 5, and a block 7 after the same
    6), blocks that lie, and blocks of a foil that lost its first blocks."""
    pair = Pair()
    for _ in range(2):
        pair.post(pair.foil, pair.foil.pay(pair.next_uuid(), 3))
    pair.drain()
    rival = Holder(BOB_TALLY, BOB.key)
    rival.chain = pair.foil.chain
    for _ in range(3):
        rival.pay(pair.next_uuid(), 4)
    pair.stock.receive(one(pair.foil.pay(pair.next_uuid(), 3)))  # linked at 3, unconfirmed
    for good in [one(pair.stock.pay(pair.next_uuid(), 2)) for _ in range(2)]:
        pair.foil.receive(good)  # the foil orders them at 4 and 5; the stock has not heard
    pair.foil.pay(pair.next_uuid(), 1)
    other = Holder(BOB_TALLY, BOB.key)
    other.chain = pair.foil.chain
    other.pay(pair.next_uuid(), 5)  # another block 7 on the same block 6
    early = [one(pair.foil.pay(pair.next_uuid(), 1)) for _ in range(2)]
    pair.stock.receive(early[0])  # parked: block 7 waits for block 6
    blocks = list(pair.foil.chain.chits)

    def placed(chit: dict[str, Any], index: int, prev: bytes) -> dict[str, Any]:
        return {**chit, "chain": {"index": index, "prev": prev,
                                  "hash": ch.block_hash(index, prev, chit["hash"])}}

    moved = {**blocks[3], "chain": {**blocks[3]["chain"], "index": 9}}  # its hash lies
    forged = {**blocks[3], "chain": {**blocks[3]["chain"], "hash": bytes(32)}}
    astray = placed(blocks[4], 5, bytes(32))
    again = placed(blocks[2], 4, blocks[2]["chain"]["hash"])  # block 3's chit at 4 too
    lost = placed(blocks[0], 4, blocks[2]["chain"]["hash"])  # confirmed block 1's chit at 4
    return pair, [*blocks, *rival.chain.chits[2:], other.chain.chits[-1], moved, astray, again,
                  forged, lost]


UPD_PAIR, UPD_BLOCKS = upd_cases()
OWN_4, OWN_5, PARKED_7 = UPD_PAIR.stock.chain.pending
# the same stock with the parked block between its own chits (the order events left them in
# is not always the foil's)
UPD_STOCKS = (UPD_PAIR.stock.chain, ch.Chain.from_map(
    {**UPD_PAIR.stock.chain.to_map(), "pending": [OWN_4, PARKED_7, OWN_5]}))


@settings(max_examples=400, deadline=None)
@given(picks=st.lists(st.integers(0, len(UPD_BLOCKS) - 1), min_size=1, max_size=12),
       conf=st.integers(0, 8), which=st.sampled_from(UPD_STOCKS))
def test_an_upd_links_its_run_of_blocks_as_taking_them_one_by_one_would(
        picks: list[int], conf: int, which: ch.Chain) -> None:
    """Any upd a foil, honest or not, could send (blocks in any order, repeated, rivals,
    lying blocks) leaves the stock's chain, replies and adopted chits, or its refusal, as
    taking its chits one at a time did."""
    stock = fresh(which)
    upd = unpack(pack(command("upd", chits=[UPD_BLOCKS[i] for i in picks], conf=conf)))
    try:
        batched: Any = outcome(ch.receive(stock, upd, ALICE_TALLY))
    except t.Refusal as refused:
        batched = refused.code, refused.message
    try:
        expected: Any = outcome(one_by_one(stock, upd, ALICE_TALLY))
    except t.Refusal as refused:
        expected = refused.code, refused.message
    assert batched == expected


def test_the_upd_cases_reach_every_path() -> None:
    """The cases above link runs, park, fill the gap, roll back, refuse, and answer a foil
    that lost blocks it confirmed."""
    stock, blocks = UPD_PAIR.stock.chain, UPD_BLOCKS
    assert (stock.length, stock.conf, len(stock.pending)) == (3, 2, 3)

    def took(*picks: int) -> ch.Chain:
        upd = command("upd", chits=[blocks[i] for i in picks], conf=0)
        return ch.receive(fresh(stock), upd, ALICE_TALLY).chain

    assert (took(3, 4, 5, 6, 7).length, took(3, 4, 5, 6, 7).pending) == (8, ())
    assert took(3, 4, 5).length == 7  # 6 links the parked 7 behind it
    assert (took(4, 5).length, len(took(4, 5).pending)) == (3, 4)  # beyond the gap
    assert [chit["units"] for chit in took(8).chits] == [3, 3, 4]  # rolled back to 2
    assert refusal(took, 12).message.endswith("not its block hash")
    assert took(3, 13).length == 2  # block 5 on another 4: rolled back, parked
    moved = took(14)  # block 3's chit moved to 4: rolled back to 2, parked beyond the gap
    assert moved.length == 2
    assert [chit["chain"] for chit in moved.pending if chit["uuid"] == blocks[2]["uuid"]] == [
        blocks[14]["chain"]]
    lost = command("upd", chits=[blocks[16]], conf=0)  # confirmed block 1's chit at 4
    answer = ch.receive(fresh(stock), lost, ALICE_TALLY)  # the foil lost it: it is told
    assert (answer.chain.chits, answer.chain.pending) == (stock.chits, stock.pending)
    assert answer.messages == [t.to_partner(ALICE_TALLY, "chit", "chain", command(
        "upd", chits=[stock.chits[1]], conf=2))]
    assert refusal(took, 15).message.endswith("not its block hash")
    assert took(3, 4, 5, 11).length == 2  # the parked 7 linked, then another 7: rolled back
    stock = UPD_STOCKS[1]
    assert (took(3, 4).length, took(3, 4).pending) == (5, (PARKED_7,))


def test_a_refused_upd_leaves_no_hint_of_the_links_it_made_on_the_way() -> None:
    """Three blocks link before the fourth is found forged: the upd is refused whole, and
    the chain's lookup hints name only what it holds (a stale hint sent every later lookup
    of those chits scanning the whole chain: a hostile foil replayed such upds to make
    each cost a scan of tens of thousands of blocks)."""
    stock = fresh(UPD_PAIR.stock.chain)
    upd = command("upd", chits=[UPD_BLOCKS[i] for i in (3, 4, 5, 15)], conf=0)
    assert refusal(ch.receive, stock, upd, ALICE_TALLY).message.endswith("not its block hash")
    assert set(stock.hints.linked) == {chit["uuid"] for chit in stock.chits}
    assert ch.receive(stock, command("upd", chits=[UPD_BLOCKS[3]], conf=0),
                      ALICE_TALLY).chain.length == 4  # and it takes the next one as before


# -- messages, roles, storage -------------------------------------------------------------------


def test_each_holder_takes_only_the_commands_of_its_role() -> None:
    pair = Pair()
    stock_only = command("nak", index=0, hash=bytes(32))
    assert refusal(ch.receive, pair.foil.chain, stock_only, BOB_TALLY).code == "bad_state"
    foil_only = command("new", chits=[{}])
    assert refusal(ch.receive, pair.stock.chain, foil_only, ALICE_TALLY).code == "bad_state"


@pytest.mark.parametrize(
    "obj",
    [
        None,
        {"cmd": "sync"},
        {**command("ack", index=0, hash=bytes(32)), "tally": "another"},
        {"cmd": "ack", "index": 0, "hash": bytes(32)},
        command("ack", index=-1, hash=bytes(32)),
        command("ack", index=True, hash=bytes(32)),
        command("ack", index=0, hash=b"short"),
        command("ack", index=0, hash=bytes(32), extra=1),
        command("req", index=0),
        command("upd", chits=[], conf=0),
        command("upd", chits=[{}] * (ch.UPD_BATCH + 1), conf=0),
        command("upd", chits={}, conf=0),
        command("upd", chits=[{}], conf=-1),
    ],
)
def test_chain_messages_are_validated(obj: Any) -> None:
    assert refusal(ch.receive, ch.start(ALICE_TALLY), obj, ALICE_TALLY).code == "bad_field"


def test_add_refuses_a_chit_twice_or_for_another_tally() -> None:
    pair = Pair()
    chit_uuid = pair.next_uuid()
    pair.foil.pay(chit_uuid, 5)
    chit = pair.foil.chits[chit_uuid].chit
    assert refusal(ch.add, pair.foil.chain, chit, BOB_TALLY).code == "bad_state"
    elsewhere = ch.Chain(tally=pair.next_uuid(), side=t.FOIL, origin=bytes(32))
    assert refusal(ch.add, elsewhere, chit, BOB_TALLY).code == "bad_field"


def test_a_chain_survives_storage() -> None:
    pair = Pair()
    pair.post(pair.foil, pair.foil.pay(pair.next_uuid(), 5))
    pair.stock.pay(pair.next_uuid(), 3)
    pair.drain()
    for holder in (pair.stock, pair.foil):
        stored = unpack(pack(holder.chain.to_map()))
        assert ch.Chain.from_map(stored) == holder.chain
    assert refusal(ch.Chain.from_map, {"side": t.FOIL}).code == "bad_field"
    bad_side = {**pair.foil.chain.to_map(), "side": "both"}
    assert refusal(ch.Chain.from_map, bad_side).code == "bad_field"


# -- a chain that holds only its recent blocks -------------------------------------------------


def answer(chain: ch.Chain, obj: dict[str, Any], history: dict | None = None) -> Any:
    """What ``chain`` makes of a chain message: its new state and replies, or its refusal."""
    try:
        got = ch.receive(chain, obj, ALICE_TALLY if chain.side == t.STOCK else BOB_TALLY,
                         history)
    except t.Refusal as refused:
        return refused.code, refused.message
    kept = got.chain
    return kept.length, kept.chits[-1:], kept.pending, kept.conf, got.messages, got.adopted


def test_a_trimmed_chain_answers_every_message_as_the_whole_chain_does() -> None:
    """Each holder of a settled chain of 60 blocks keeps only its last 3; every chain message
    of the session arrives again, with requests, acks and repairs that name the forgotten
    blocks: each answer is the whole chain's, from the blocks ``wanted`` names alone."""
    pair = Pair()
    for _ in range(20):
        pair.post(pair.stock, pair.stock.pay(pair.next_uuid(), 10))
        pair.post(pair.foil, pair.foil.pay(pair.next_uuid(), 15))
        pair.post(pair.stock, ch.resync(pair.stock.chain, pair.stock.local))  # new, ack
    pair.drain()
    pair.recover()
    for _ in range(20):  # chits on the chain, and others in flight, as trimming happens
        pair.post(pair.foil, pair.foil.pay(pair.next_uuid(), 1))
    pair.drain()
    pair.assert_agreed()
    stock_chit = next(chit for chit in pair.foil.whole() if chit["by"] == t.STOCK)
    for holder in (pair.stock, pair.foil):
        whole = holder.chain
        holder.chain = ch.trim(whole, 3)
        assert (holder.chain.base, len(holder.chain.chits)) == (whole.length - 3, 3)
        assert ch.balance(holder.chain) == ch.balance(whole)
        blocks = holder.whole()
        objects = [unpack(pack(message.object)) for receiver, message in pair.sent
                   if receiver is holder and message.action == "chain"]
        objects += [command("req", index=1), command("req", index=whole.length - 4),
                    command("ack", index=2, hash=whole.hash_at(2)),
                    command("ack", index=2, hash=whole.hash_at(3)),  # a block it does not hold
                    command("new", chits=[{**stock_chit, "chain": None}]),
                    command("upd", chits=list(blocks[1:4]), conf=2)]
        assert len(objects) > 60
        for obj in objects:
            wanted = ch.wanted(holder.chain, obj)
            assert answer(holder.chain, obj, holder.history(wanted)) == answer(whole, obj), obj
        assert holder.history(ch.wanted(holder.chain, objects[-1]))  # it did read back


def test_a_trimmed_stock_still_links_and_asks_for_what_it_parked() -> None:
    pair = Pair()
    for _ in range(6):
        pair.post(pair.foil, pair.foil.pay(pair.next_uuid(), 1))
    pair.drain()
    g7, g8, g9 = (one(pair.foil.pay(pair.next_uuid(), 1)) for _ in range(3))
    pair.stock.receive(g9)  # parked beyond the gap
    pair.stock.chain = ch.trim(pair.stock.chain, 2)
    assert (pair.stock.chain.base, pair.stock.chain.pending) == (4, (g9.object,))
    assert chain_cmd(ch.resync(pair.stock.chain, pair.stock.local)[-1]) == "req"
    pair.stock.receive(g7)
    pair.stock.receive(g8)  # fills the gap: the parked block follows at once
    assert (pair.stock.chain.length, pair.stock.chain.pending) == (9, ())


def test_wanted_names_chits_not_held_and_blocks_behind_the_base() -> None:
    pair = Pair()
    for _ in range(6):
        pair.post(pair.foil, pair.foil.pay(pair.next_uuid(), 1))
    pair.drain()
    foil = ch.trim(pair.foil.chain, 2)
    assert (foil.base, foil.length) == (4, 6)
    assert ch.wanted(pair.foil.chain, command("req", index=1)) == ch.NOTHING  # nothing trimmed
    new = one(Pair().stock.pay(pair.next_uuid(), 1)).object
    assert ch.wanted(pair.foil.chain, command("new", chits=[new])) == ch.Wanted(
        frozenset({new["uuid"]}), frozenset())  # new, or known to the caller only
    assert ch.wanted(foil, command("req", index=3)).indexes == {3, 4}
    assert ch.wanted(foil, command("ack", index=5, hash=bytes(32))) == ch.NOTHING
    held, old = foil.chits[0], pair.foil.whole()[0]
    assert ch.wanted(foil, command("upd", chits=[held, old], conf=0)) == ch.Wanted(
        frozenset({old["uuid"]}), frozenset({1}))
    assert ch.wanted(foil, command("upd", chits=[old] * (ch.UPD_BATCH + 1), conf=0)) == (
        ch.NOTHING)  # refused by receive anyway: nothing to read for it
    with pytest.raises(LookupError, match="behind the chain's base 4"):
        ch.receive(foil, command("req", index=1), BOB_TALLY)  # its caller forgot to read


# -- two holders over a lossy, duplicating, reordering network -----------------------------------

SIDES = st.sampled_from([t.STOCK, t.FOIL])
PICK = st.integers(0, 10_000)


class LossyExchange(RuleBasedStateMachine):
    """Random payments and invoices from both sides; the network loses, repeats and reorders
    messages. After a final recovery round the holders must agree exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair()

    def holder(self, side: str) -> Holder:
        return self.pair.stock if side == t.STOCK else self.pair.foil

    def issue(self, side: str, make: Any, units: int) -> None:
        holder = self.holder(side)
        try:
            messages = make(holder, self.pair.next_uuid(), units)
        except t.Refusal as refused:  # judged on the local balance, before anything is sent
            assert refused.code == "over_limit"
            return
        self.pair.post(holder, messages)

    @rule(side=SIDES, units=st.integers(1, 4_000))
    def pay(self, side: str, units: int) -> None:
        self.issue(side, Holder.pay, units)

    @rule(side=SIDES, count=st.integers(2, 10), units=st.integers(1, 600))
    def burst(self, side: str, count: int, units: int) -> None:
        """Many payments in flight at once: the case where MyCHIPs' consensus stalls."""
        for _ in range(count):
            self.issue(side, Holder.pay, units)

    @rule(side=SIDES, units=st.integers(1, 4_000))
    def invoice(self, side: str, units: int) -> None:
        self.issue(side, Holder.invoice, units)

    @rule(side=SIDES, pick=PICK, agree=st.booleans())
    def answer(self, side: str, pick: int, agree: bool) -> None:
        holder = self.holder(side)
        owed = sorted(uuid for uuid, local in holder.chits.items() if local.state == cs.L_PEND)
        if not owed:
            return
        try:
            self.pair.post(holder, holder.answer(owed[pick % len(owed)], agree=agree))
        except t.Refusal as refused:
            assert refused.code == "over_limit"

    @rule(pick=PICK)
    def deliver(self, pick: int) -> None:
        if self.pair.queue:
            self.pair.deliver(pick % len(self.pair.queue))

    @rule(pick=PICK)
    def lose(self, pick: int) -> None:
        if self.pair.queue:
            self.pair.queue.pop(pick % len(self.pair.queue))

    @rule()
    def outage(self) -> None:
        """The connection drops with everything in flight."""
        self.pair.queue.clear()

    @rule(pick=PICK)
    def repeat(self, pick: int) -> None:
        if self.pair.queue:
            self.pair.queue.append(self.pair.queue[pick % len(self.pair.queue)])

    @rule(side=SIDES)
    def resync(self, side: str) -> None:
        holder = self.holder(side)
        self.pair.post(holder, holder.resync())

    @invariant()
    def the_stock_chain_is_a_prefix_of_the_foils(self) -> None:
        stock, foil = self.pair.stock, self.pair.foil
        assert stock.whole() == foil.whole()[: stock.chain.length]
        assert stock.chain.conf <= foil.chain.conf <= foil.chain.length

    @invariant()
    def nobody_is_owed_past_its_limit(self) -> None:
        for holder in (self.pair.stock, self.pair.foil):
            assert ch.balance(holder.chain) <= LIMIT

    def teardown(self) -> None:
        self.pair.drain()
        self.pair.recover()
        self.pair.assert_agreed()


LossyExchange.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_lossy_exchange = LossyExchange.TestCase


class ForgetfulExchange(LossyExchange):
    """The same, with holders that keep only their recent blocks as the runtime's cache does
    (``ch.trim``): late, repeated and repair messages that name older blocks must be taken
    exactly as before, from the blocks ``ch.wanted`` names."""

    @rule()
    def calm(self) -> None:
        """Everything in flight arrives: blocks get confirmed, so there is something to
        forget."""
        self.pair.drain()

    @rule(side=SIDES, keep=st.integers(1, 3))
    def forget(self, side: str, keep: int) -> None:
        holder = self.holder(side)
        before, holder.chain = holder.chain, ch.trim(holder.chain, keep)
        chain = holder.chain
        if chain.base == before.base:
            return
        forgotten = {holder.rows[index]["uuid"] for index in range(1, chain.base + 1)}
        hints = chain.hints  # what a trimmed chain remembers is bounded by what it holds
        assert set(hints.linked) == {chit["uuid"] for chit in chain.chits}
        assert not forgotten & (hints.parked | hints.foreign)
        assert all(index > chain.base for index in hints.claims)
        for chit in chain.pending:  # and still names everything it holds (a miss is certain)
            assert chit["uuid"] in hints.parked
            assert chit["by"] == chain.side or chit["uuid"] in hints.foreign
            assert chit["chain"] is None or chit["chain"]["index"] in hints.claims

    @rule(pick=PICK)
    def replay(self, pick: int) -> None:
        """A message sent long ago arrives again (a partner's retry, a restored backup's
        repair): it names blocks the receiver may have forgotten."""
        if self.pair.sent:
            self.pair.queue.append(self.pair.sent[pick % len(self.pair.sent)])


ForgetfulExchange.TestCase.settings = settings(max_examples=150, stateful_step_count=80,
                                               deadline=None)
test_forgetful_exchange = ForgetfulExchange.TestCase
