"""A holder that gives up a partner's claim of confirmed blocks (``protocol.chain.give_up``,
what a node's repair does after ``ASKS`` asks that brought none), sans-IO: the claim only
steered asking, so no block a partner confirmed is lost, and the chains agree in the end,
the blocks both holders lost included (before the bound, a person had to see to those)."""

from __future__ import annotations

from hypothesis import settings
from hypothesis.stateful import rule

from protocol import chain as ch
from protocol import chit_states as cs
from protocol import tally as t
from tests.test_chain_restore import RestoredExchange, agreed, backup, pay, restore
from tests.test_credit_chain import SIDES, Holder, Pair, Unsettled


def give_up(holder: Holder) -> None:
    holder.chain = ch.give_up(holder.chain)


def both_restored(told_first: str) -> tuple[Pair, str | None]:
    """Both holders restored to before three blocks the stock confirmed, the ``told_first``
    side told of them by the other before the other's restore (as in
    ``test_chain_restore_late``): it asks for blocks nobody holds. A foil so told has paid
    once meanwhile (the uuid returned)."""
    pair = Pair()
    stock_then, foil_then = backup(pair.stock), backup(pair.foil)
    pay(pair, pair.foil, 3)
    pair.drain()
    if told_first == t.STOCK:
        restore(pair, pair.stock, stock_then)
        pair.deliver()  # the stock's probe; the foil answers with its conf
        pair.deliver()
        restore(pair, pair.foil, foil_then)
        return pair, None
    restore(pair, pair.foil, foil_then)
    (mine,) = pay(pair, pair.foil, 1)
    for _ in range(2):  # the stock answers it with its block at conf
        pair.deliver(len(pair.queue) - 1)
    pair.queue = [(receiver, message) for receiver, message in pair.queue
                  if receiver is pair.stock]
    restore(pair, pair.stock, stock_then)
    return pair, mine


def test_blocks_both_holders_lost_are_given_up_and_the_tally_moves_on():
    """The side told asks for ever (``Unsettled``) until it gives them up; then both settle
    and agree, a foil's payment that waited is good on both sides, and new payments either
    way settle."""
    for side in (t.STOCK, t.FOIL):
        pair, mine = both_restored(side)
        try:
            pair.recover()
        except Unsettled:
            pass
        else:
            raise AssertionError(f"the {side} asked for nothing")
        told = pair.stock if side == t.STOCK else pair.foil
        assert ch.lacking(told.chain) == 3
        give_up(told)
        assert ch.lacking(told.chain) == 0
        pair.recover()
        agreed(pair)
        if mine is not None:
            assert pair.foil.chits[mine].state == cs.L_GOOD
        pay(pair, pair.stock, 2)
        pay(pair, pair.foil, 2)
        pair.drain()
        pair.recover()
        agreed(pair)


class GivingUp(RestoredExchange):
    """:class:`RestoredExchange` whose holders may give up what their partner claims at any
    moment (its invariant: no block a partner confirmed is lost), and in the end give up
    what nobody sends, as a node's repairs do: then the chains always agree."""

    @rule(side=SIDES)
    def give_up(self, side: str) -> None:
        give_up(self.holder(side))

    def teardown(self) -> None:
        self.pair.drain()
        for side in (t.STOCK, t.FOIL):
            self.give_up(side)
        self.pair.recover()
        agreed(self.pair)


GivingUp.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
test_giving_up = GivingUp.TestCase
