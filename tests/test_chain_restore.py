"""A holder restored from a backup catches up with its partner (``protocol.chain``, sans-IO):
it takes back the blocks and chits it lost, checked as they were the first time, and its
partner, up to date, never gives up a block it confirmed."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from protocol import chain as ch
from protocol import chit as c
from protocol import chit_states as cs
from protocol import tally as t
from protocol.chit_local import LocalChit
from tests.test_credit_chain import (
    ALICE_TALLY,
    BOB_TALLY,
    GOOD,
    PICK,
    SIDES,
    Holder,
    Pair,
    Unsettled,
    chain_cmd,
    command,
    fresh,
    one,
)
from tests.test_credit_tally import ALICE, BOB, MALLORY, refusal

Backup = tuple[ch.Chain, dict[str, LocalChit], dict[int, dict[str, Any]], list]


def backup(holder: Holder) -> Backup:
    """What a copy of the holder's database keeps: its chain, chits and rows, and the
    notices its outbox would send again."""
    return holder.chain, dict(holder.chits), dict(holder.rows), list(holder.notices)


def restore(pair: Pair, holder: Holder, saved: Backup) -> None:
    """Put the copy back and start again: the chain is rebuilt from its rows (hints of its
    own), and the holder asks its partner what it lacks, as a node does once a start."""
    chain, chits, rows, notices = saved
    holder.chits, holder.rows, holder.notices = dict(chits), dict(rows), list(notices)
    holder._chain = fresh(chain)  # not through the setter: the rows are the backup's
    pair.post(holder, [probe(holder)])


def probe(holder: Holder) -> Any:
    chain = holder.chain
    return ch.probe(holder.local, length=chain.length, head=chain.head, conf=chain.conf)


def pay(pair: Pair, holder: Holder, count: int, units: int = 1) -> list[str]:
    """``count`` payments by the holder, delivered; their uuids."""
    uuids = [pair.next_uuid() for _ in range(count)]
    for chit_uuid in uuids:
        pair.post(holder, holder.pay(chit_uuid, units))
    return uuids


def agreed(pair: Pair) -> None:
    """Identical settled chains, each good chit in them once and good on both sides (an
    asset on one, a liability on the other), opposite balances."""
    stock, foil = pair.stock, pair.foil
    assert stock.whole() == foil.whole()
    assert ch.settled(stock.chain) and ch.settled(foil.chain)
    uuids = [chit["uuid"] for chit in foil.whole()]
    assert len(uuids) == len(set(uuids))
    for holder in (stock, foil):
        assert {u for u, local in holder.chits.items() if local.state in GOOD} == set(uuids)
    for chit_uuid in uuids:
        assert {stock.chits[chit_uuid].state, foil.chits[chit_uuid].state} == {
            cs.A_GOOD, cs.L_GOOD}
    assert ch.balance(stock.chain) == -ch.balance(foil.chain)


def restored(which: str, *, gap: int, paid_meanwhile: int) -> tuple[Pair, list[Any]]:
    """A pair with 6 confirmed blocks; ``which`` holder is backed up there; then ``gap``
    payments each way are confirmed; the holder is restored, its user pays
    ``paid_meanwhile`` more, and both talk until quiet. Returns the pair and the blocks the
    up-to-date partner held confirmed before the restore."""
    pair = Pair()
    pay(pair, pair.stock, 3)
    pay(pair, pair.foil, 3, 10)
    pair.drain()
    holder = pair.stock if which == t.STOCK else pair.foil
    saved = backup(holder)
    pay(pair, pair.stock, gap, 2)
    pay(pair, pair.foil, gap, 20)
    pair.drain()
    pair.recover()
    partner = pair.other(holder)
    confirmed = partner.whole()[: partner.chain.conf]
    assert len(confirmed) == 6 + 2 * gap
    restore(pair, holder, saved)
    assert holder.chain.length == 6
    pay(pair, holder, paid_meanwhile, 5)  # before its partner's answers come
    pair.drain()
    pair.recover()
    return pair, confirmed


def test_a_restored_foil_takes_back_the_confirmed_blocks_and_orders_its_new_chits_after():
    pair, confirmed = restored(t.FOIL, gap=4, paid_meanwhile=2)
    agreed(pair)
    whole = pair.foil.whole()
    assert whole[: len(confirmed)] == confirmed  # the stock gave up nothing it confirmed
    assert [chit["units"] for chit in whole[len(confirmed):]] == [5, 5]  # ordered after
    assert ch.balance(pair.stock.chain) == 3 * 10 - 3 + 4 * 20 - 4 * 2 + 2 * 5
    cmds = [(receiver.side, chain_cmd(message)) for receiver, message in pair.sent]
    assert (t.STOCK, "req") in cmds and (t.FOIL, "upd") in cmds  # the new directions


def test_a_restored_stock_asks_for_what_it_lost_and_the_foil_changes_nothing():
    pair, confirmed = restored(t.STOCK, gap=4, paid_meanwhile=2)
    agreed(pair)
    assert pair.foil.whole()[: len(confirmed)] == confirmed
    ours = [chit for chit in pair.stock.whole() if chit["by"] == t.STOCK]
    assert len(ours) == 3 + 4 + 2  # its own payments it lost came back too, signed by it
    assert all(pair.stock.chits[chit["uuid"]].state == cs.L_GOOD for chit in ours)


def test_a_gap_longer_than_a_batch_and_the_window_comes_in_bounded_messages():
    """Restored 2.5 batches behind, with both holders keeping 3 blocks in memory: every
    message carries at most ``UPD_BATCH`` chits, and the partner answers from its rows."""
    for which in (t.STOCK, t.FOIL):
        pair = Pair()
        holder = pair.stock if which == t.STOCK else pair.foil
        saved = backup(holder)
        gap = 5 * ch.UPD_BATCH // 4
        pay(pair, pair.stock, gap)
        pay(pair, pair.foil, gap)
        pair.drain()
        pair.recover()
        for each in (pair.stock, pair.foil):
            each.chain = ch.trim(each.chain, 3)
        restore(pair, holder, saved)
        holder.chain = ch.trim(holder.chain, 3)
        pay(pair, holder, 7)
        pair.drain()
        for _ in range(20):  # the trimmed holders forget again between rounds
            for each in (pair.stock, pair.foil):
                each.chain = ch.trim(each.chain, 3)
            pair.post(pair.stock, pair.stock.resync())
            pair.post(pair.foil, pair.foil.resync())
            pair.drain()
        agreed(pair)
        assert pair.foil.chain.length == 2 * gap + 7
        sizes = [len(message.object.get("chits", ())) for _, message in pair.sent]
        assert max(sizes) == ch.UPD_BATCH


def test_a_side_behind_its_partner_asks_again_when_its_request_is_lost():
    """A restored side learns from its partner's conf (``ahead``) that it lost blocks: until
    it holds them its chain is not settled, so the repair asks again for a request (or an
    answer) lost on the way. The stock asks from block 1; the foil, 150 behind, has taken
    the stock's first 100 blocks when its request for the rest is lost."""
    for which in (t.STOCK, t.FOIL):
        pair = Pair()
        holder = pair.stock if which == t.STOCK else pair.foil
        saved = backup(holder)
        pay(pair, pair.foil, 150)
        pair.drain()
        restore(pair, holder, saved)
        for _ in range(2):  # the probe and its answer (the stock's: with its first blocks)
            pair.deliver()
        (lost,) = [message for _, message in pair.queue]
        assert lost.object == command("req", index=1 if which == t.STOCK else 101)
        pair.queue.clear()
        assert holder.chain.ahead == 150 and not ch.settled(holder.chain)
        assert chain_cmd(holder.resync()[-1]) == "req"
        pair.recover()
        agreed(pair)


def test_a_restored_foil_that_never_heard_back_is_sent_the_confirmed_block_by_its_nak():
    """A foil restored with a block of its own the stock never confirmed, whose probe's
    answer was lost, re-sends that block; the stock acks its own head (the foil lost its
    acks), which the foil does not hold (``nak`` below the stock's ``conf``): the stock
    sends its block at ``conf``, from which the foil asks for what it lost. (It answered
    with a rollback that unlinks nothing confirmed and a request for blocks past the foil's
    head: ack, nak, req for ever.)"""
    pair = Pair()
    pair.post(pair.foil, pair.foil.pay(pair.next_uuid(), 1))  # ordered, not confirmed yet
    saved = backup(pair.foil)
    pay(pair, pair.stock, 1)
    pair.drain()
    assert (pair.stock.chain.length, pair.stock.chain.conf) == (2, 2)
    restore(pair, pair.foil, saved)
    pair.deliver()  # the probe; its answer is lost
    pair.queue.clear()
    assert (pair.foil.chain.length, pair.foil.chain.conf) == (1, 0)
    pair.recover()
    agreed(pair)
    assert pair.foil.chain.length == 2


def test_a_partner_cannot_make_up_a_payment_by_our_user():
    """Our own user's chit comes back only with our user's signature: one the partner
    signed, or unsigned, is refused, in ``new`` and in the stock's blocks alike."""
    pair = Pair()
    pay(pair, pair.stock, 1)
    pair.drain()
    forged, _ = c.pay(BOB_TALLY, BOB.key, chit_uuid=pair.next_uuid(), units=900, date_ms=1,
                      balance=0)
    chit = {**forged.chit, "sign": ALICE.key.sign(forged.chit["hash"])}  # the stock's key
    for sign in (ALICE.key.sign(chit["hash"]), MALLORY.key.sign(chit["hash"]), None):
        made_up = {**chit, "sign": sign}
        new = command("new", chits=[made_up])
        assert refusal(ch.receive, pair.foil.chain, new, BOB_TALLY).code == "bad_signature"
        assert refusal(ch.own_good, None, made_up, BOB_TALLY).code == "bad_signature"
    genuine = forged.chit
    assert ch.own_good(None, genuine, BOB_TALLY).state == cs.L_GOOD
    assert refusal(ch.own_good, None, genuine, ALICE_TALLY).code == "bad_field"  # not hers
    held = LocalChit(cs.L_GOOD, genuine)
    assert refusal(ch.own_good, held, genuine, BOB_TALLY).code == "bad_state"


def test_a_partner_behind_never_rolls_the_other_back():
    """A stock restored from a backup asks and acks from its old head; a foil restored
    asks from its old conf: the up-to-date side's chain is not touched either way."""
    pair = Pair()
    pay(pair, pair.foil, 3)
    pair.drain()
    stock_then, foil_then = backup(pair.stock), backup(pair.foil)
    pay(pair, pair.foil, 2)
    pay(pair, pair.stock, 2)
    pair.drain()
    pair.recover()
    for holder, saved in ((pair.stock, stock_then), (pair.foil, foil_then)):
        partner = pair.other(holder)
        before = partner.chain
        question = ch.probe(holder.local, length=saved[0].length, head=saved[0].head,
                            conf=saved[0].conf)
        answer = ch.receive(before, question.object, partner.local)
        assert (answer.chain.chits, answer.chain.conf, answer.chain.pending) == (
            before.chits, before.conf, before.pending)
        assert answer.adopted == []


def test_a_foil_that_lost_the_stocks_acks_is_acked_again():
    """A foil restored from a backup links again, in the same order, blocks the stock has
    confirmed (it applies the same lift decisions again, say): its blocks are the stock's,
    but it lost the acks. The stock acks them again, or the foil would resend them for
    ever."""
    pair = Pair()
    pay(pair, pair.foil, 2)
    pair.drain()
    stock = pair.stock.chain
    assert stock.conf == 2
    again = ch.start(BOB_TALLY)
    for chit in pair.foil.chain.chits:
        again, _ = ch.add(again, {**chit, "chain": None}, BOB_TALLY)
    assert (again.chits, again.conf) == (pair.foil.chain.chits, 0)
    (upd,) = ch.resync(again, BOB_TALLY)
    (answer,) = ch.receive(stock, upd.object, ALICE_TALLY).messages
    assert answer.object == command("ack", index=2, hash=stock.head)
    assert ch.receive(again, answer.object, BOB_TALLY).chain.conf == 2


def test_the_stock_answers_a_foil_in_step_with_one_block():
    """Once a start a foil asks from its conf: a stock in step answers with its conf block
    alone (the foil holds it: nothing changes), a stock that confirmed nothing answers
    nothing."""
    pair = Pair()
    assert ch.receive(pair.stock.chain, probe(pair.foil).object, ALICE_TALLY).messages == []
    pay(pair, pair.foil, 2)
    pair.drain()
    (upd,) = ch.receive(pair.stock.chain, probe(pair.foil).object, ALICE_TALLY).messages
    assert upd.object == command("upd", chits=[pair.stock.chain.chits[-1]], conf=2)
    taken = ch.receive(pair.foil.chain, upd.object, BOB_TALLY)
    assert (taken.chain.chits, taken.messages, taken.adopted) == (pair.foil.chain.chits, [], [])


def test_a_foil_catching_up_links_nothing_new_until_it_holds_every_confirmed_block():
    """Restored empty while the stock confirmed 205 blocks, the foil has ordered two chits
    of its own: the stock's first 100 blocks unlink them, and it asks for the next batch;
    a payment meanwhile waits with them, sending nothing; the last batch links the three,
    in the order they came, in one upd."""
    pair = Pair()
    saved = backup(pair.foil)
    pay(pair, pair.foil, 2 * ch.UPD_BATCH + 5)
    pair.drain()
    pair.recover()
    chain, chits, rows, _ = saved
    pair.foil.chits, pair.foil.rows, pair.foil.chain = dict(chits), dict(rows), fresh(chain)
    mine = [pair.next_uuid() for _ in range(3)]
    for chit_uuid in mine[:2]:
        pair.foil.pay(chit_uuid, 1)  # linked at 1 and 2: the stock never hears of them
    upd = one(pair.stock.receive(probe(pair.foil)))
    assert len(upd.object["chits"]) == ch.UPD_BATCH
    req = one(pair.foil.receive(upd))
    assert req.object == command("req", index=ch.UPD_BATCH + 1)
    assert [chit["uuid"] for chit in pair.foil.chain.pending] == mine[:2]
    assert pair.foil.pay(mine[2], 1) == []  # it waits too
    assert pair.foil.chain.length == ch.UPD_BATCH
    pair.post(pair.foil, [req])
    pair.drain()
    assert [chit["uuid"] for chit in pair.foil.whole()[-3:]] == mine
    assert pair.foil.chain.length == 2 * ch.UPD_BATCH + 8
    agreed(pair)


# -- any number of restores over a lossy network ------------------------------------------------


class RestoredExchange(RuleBasedStateMachine):
    """Payments and invoices from both sides over a network that loses (but a restored
    holder's probe), repeats, reorders and replays messages, holders that keep a few blocks
    in memory, and either holder backed up now and then and restored from its last backup
    (it then asks its partner, as a node does once a start; what it sent since the backup
    is gone with its outbox). No holder ever gives up a block its partner confirmed to it;
    after a final recovery the chains are identical, every good chit good on both sides.
    Amounts stay far within the limits: a restored user who pays past what it forgot it
    owed is refused by its partner (``over_limit``), a case the README leaves to a human."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair()
        self.backups: dict[str, Backup] = {}
        self.confirmed: dict[str, tuple[dict[str, Any], ...]] = {t.STOCK: (), t.FOIL: ()}
        self.probes: list[Any] = []  # what restored holders asked: never lost
        self.marks: dict[str, int] = {}  # len(pair.sent) at each side's backup
        self.unsent: set[int] = set()  # ids of messages a restore took back (see restore)
        self.final: set[tuple[int, bytes]] = set()  # (index, hash): every block held confirmed

    def holder(self, side: str) -> Holder:
        return self.pair.stock if side == t.STOCK else self.pair.foil

    @rule(side=SIDES, count=st.integers(1, 6), units=st.integers(1, 12))
    def pay(self, side: str, count: int, units: int) -> None:
        holder = self.holder(side)
        for _ in range(count):
            self.pair.post(holder, holder.pay(self.pair.next_uuid(), units))

    @rule(side=SIDES, units=st.integers(1, 12))
    def invoice(self, side: str, units: int) -> None:
        holder = self.holder(side)
        self.pair.post(holder, holder.invoice(self.pair.next_uuid(), units))

    @rule(side=SIDES, pick=PICK)
    def accept(self, side: str, pick: int) -> None:
        """Invoices are accepted, never refused: a user who refused one, then is restored
        to before and accepts it, pays an invoice its partner holds void (not handled)."""
        holder = self.holder(side)
        owed = sorted(uuid for uuid, local in holder.chits.items() if local.state == cs.L_PEND)
        if owed:
            self.pair.post(holder, holder.answer(owed[pick % len(owed)], agree=True))

    @rule(pick=PICK)
    def deliver(self, pick: int) -> None:
        if self.pair.queue:
            at, waiting = pick % len(self.pair.queue), len(self.pair.queue) - 1
            asked = self.pair.queue[at][1] in self.probes
            self.pair.deliver(at)
            if asked:  # the answer to a probe is not lost either (see lose)
                self.probes += [message for _, message in self.pair.queue[waiting:]]

    @rule()
    def calm(self) -> None:
        self.pair.drain()

    @rule(pick=PICK)
    def lose(self, pick: int) -> None:
        """Any message but a probe and its answer: the outbox keeps a chit message until it
        is acked, so messages are not lost, but a repair must make good one that is (the
        stock's request for the blocks it lost, say); a restored node that never asked, or
        never heard back, cannot know. (A stock writes no new answer while ``REPAIRS`` of
        them wait unacked, but those reach the foil, and say as much.)"""
        if self.pair.queue:
            at = pick % len(self.pair.queue)
            if self.pair.queue[at][1] not in self.probes:
                self.pair.queue.pop(at)

    @rule(pick=PICK)
    def replay(self, pick: int) -> None:
        """A message sent before arrives again, but none a restore took back."""
        sent = [each for each in self.pair.sent if id(each[1]) not in self.unsent]
        if sent:
            self.pair.queue.append(sent[pick % len(sent)])

    @rule(side=SIDES)
    def resync(self, side: str) -> None:
        holder = self.holder(side)
        self.pair.post(holder, holder.resync())

    @rule(side=SIDES, keep=st.integers(1, 3))
    def forget(self, side: str, keep: int) -> None:
        holder = self.holder(side)
        holder.chain = ch.trim(holder.chain, keep)

    @rule(side=SIDES)
    def back_up(self, side: str) -> None:
        self.backups[side] = backup(self.holder(side))
        self.marks[side] = len(self.pair.sent)

    @rule(side=SIDES)
    def restore(self, side: str) -> None:
        """The holder is put back to its last backup: what it sent since then was sent by a
        history that is gone. None of it arrives any more (the node was stopped: its outbox
        is the backup's, its channels closed; Noise sessions refuse a replay), and none of
        it is replayed later; what its partner took of it before is the partner's to keep."""
        if side in self.backups:
            holder = self.holder(side)
            partner = self.pair.other(holder)
            self.unsent.update(id(message) for receiver, message
                               in self.pair.sent[self.marks[side]:] if receiver is partner)
            self.pair.queue = [(receiver, message) for receiver, message in self.pair.queue
                               if id(message) not in self.unsent]
            restore(self.pair, holder, self.backups[side])
            self.probes.append(self.pair.queue[-1][1])
            self.confirmed[side] = holder.whole()[: holder.chain.conf]

    @invariant()
    def confirmed_blocks_stay(self) -> None:
        """Each side keeps the blocks up to the index its partner confirmed, which only
        ratchets forward (a restore puts the backup's back)."""
        for side in (t.STOCK, t.FOIL):
            holder = self.holder(side)
            whole = holder.whole()
            assert whole[: len(self.confirmed[side])] == self.confirmed[side]
            assert holder.chain.conf <= holder.chain.length
            self.confirmed[side] = whole[: holder.chain.conf]
            self.final.update((index, chit["chain"]["hash"])
                              for index, chit in enumerate(self.confirmed[side], 1))

    def teardown(self) -> None:
        self.pair.drain()
        try:
            self.pair.recover()
        except Unsettled:
            self.asks_for_blocks_nobody_holds()
            return
        agreed(self.pair)

    def asks_for_blocks_nobody_holds(self) -> None:
        """The one case that does not settle, by design: both holders were restored to
        before blocks the stock had confirmed, and one of them heard of those blocks from
        the other first (a stock restored, its probe answered, then the foil restored; or a
        foil restored, told the stock's ``conf``, then the stock restored). Nobody holds
        them, and the one told asks for them at every repair (a stock until the foil's new
        chain is as long; a node, ``ASKS`` times: this model has no give-up, which
        ``tests/test_chain_give_up.py`` adds): a confirmed index never moves back, and
        nothing tells a partner's restore from a late copy of its older message
        (``tests/test_chain_restore_late.py``).
        So a holder that does not settle must be asking for a block that either side held
        confirmed and neither holds any more."""
        held = {(index, chit["chain"]["hash"]) for holder in (self.pair.stock, self.pair.foil)
                for index, chit in enumerate(holder.whole(), 1)}
        lost = {index for index, block in self.final if (index, block) not in held}
        stock, foil = self.pair.stock.chain, self.pair.foil.chain
        asking = [chain.ahead for chain in (stock, foil)
                  if chain.ahead > (chain.length if chain is stock else chain.conf)]
        assert asking and set(asking) <= lost, (asking, sorted(lost))


RestoredExchange.TestCase.settings = settings(max_examples=200, stateful_step_count=60,
                                              deadline=None)
test_restored_exchange = RestoredExchange.TestCase
