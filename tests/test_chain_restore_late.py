"""Restores that meet late copies of older messages, and partners both restored
(``protocol.chain``, sans-IO; ``tests/test_chain_restore.py`` has the catching up itself and
the state machine that found these): a restored side learns how far its partner confirmed
from every message that says so, a copy that says less changes nothing, an upd confirms only
the blocks it shows, and blocks both partners lost are asked for until a person sees to it."""

from __future__ import annotations

import pytest

from protocol import chain as ch
from protocol import chit_states as cs
from protocol import tally as t
from tests.test_chain_restore import RestoredExchange, agreed, backup, pay, restore
from tests.test_credit_chain import Pair, Unsettled, chain_cmd, command


def test_a_restored_stock_learns_from_the_foils_request_that_it_lost_a_block():
    """The stock, restored to before its payment, asks (its probe); the foil is restored
    too, to after the payment, before its answer goes out (the answer was in the outbox the
    restore replaced). The foil's own probe asks from its ``conf`` + 1 = 2: the stock
    confirmed block 1, so it lost it and asks for it. (It answered nothing and took both
    chains for settled: the stock without the block the foil held confirmed.)"""
    pair = Pair()
    stock_then = backup(pair.stock)
    (paid,) = pay(pair, pair.stock, 1)
    pair.drain()
    foil_then = backup(pair.foil)
    restore(pair, pair.stock, stock_then)
    pair.deliver()  # the stock's probe; the foil's answer is lost with its outbox
    pair.queue.clear()
    restore(pair, pair.foil, foil_then)
    assert pair.queue[-1][1].object == command("req", index=2)
    pair.recover()
    agreed(pair)
    assert pair.stock.chain.length == 1 and pair.stock.chits[paid].state == cs.L_GOOD


def test_a_stale_copy_never_tells_a_restored_side_that_it_caught_up():
    """A side restored from a backup learns how far its partner's ``conf`` reached
    (``ahead``), and takes the blocks back in batches. A copy of an older message of the
    partner's, whose ``conf`` is as far as the first batch, arrives meanwhile and the
    request for the next batch is lost: the restored side still lacks blocks its partner
    confirmed, so its repair asks again. (It took the copy's ``conf`` for the partner's:
    both chains counted as settled, the restored one 30 blocks short.)"""
    for which in (t.STOCK, t.FOIL):
        pair = Pair()
        holder = pair.stock if which == t.STOCK else pair.foil
        partner = pair.other(holder)
        saved = backup(holder)
        pay(pair, pair.foil, ch.UPD_BATCH)
        pair.drain()
        earlier = partner.chain  # the partner's answer to a request from block 1, then
        (stale,) = ch.receive(earlier, command("req", index=1), partner.local).messages
        assert stale.object["conf"] == ch.UPD_BATCH
        pay(pair, pair.foil, 30)
        pair.drain()
        restore(pair, holder, saved)
        while holder.chain.length < ch.UPD_BATCH:  # the first batch comes
            pair.deliver()
        asked = [message.object for _, message in pair.queue]
        assert command("req", index=ch.UPD_BATCH + 1) in asked  # lost, with all in flight
        pair.queue = [(holder, stale)]
        pair.drain()
        assert holder.chain.length == ch.UPD_BATCH and not ch.settled(holder.chain)
        pair.recover()
        agreed(pair)
        assert holder.chain.length == ch.UPD_BATCH + 30


def test_blocks_both_holders_lost_are_asked_for_until_a_person_sees_to_it():
    """Both holders restored to before three blocks the stock confirmed, one of them told
    of the blocks by the other before the other's restore: nobody holds them, and the side
    told asks for them at every repair, its chain never settled (confirmed indexes never
    move back, and a partner's restore looks like a late copy of its older message). A
    stock so told takes new blocks from the foil meanwhile, and settles once the foil's
    chain is as long again; a foil orders nothing new while it lacks confirmed blocks, so
    nothing moves on the tally until its node gives them up, after ``ASKS`` repairs
    (``protocol.chain.give_up``: tests/test_chain_give_up.py)."""
    pair = Pair()
    stock_then, foil_then = backup(pair.stock), backup(pair.foil)
    pay(pair, pair.foil, 3)
    pair.drain()
    restore(pair, pair.stock, stock_then)
    pair.deliver()  # the stock's probe; the foil answers with its conf
    pair.deliver()
    assert pair.stock.chain.ahead == 3
    restore(pair, pair.foil, foil_then)
    with pytest.raises(Unsettled):
        pair.recover()
    assert {chain_cmd(message) for _, message in pair.sent[-4:]} == {"req"}
    assert pair.stock.whole() == pair.foil.whole() == ()
    pay(pair, pair.foil, 2)
    pair.drain()
    assert pair.stock.chain.length == 2 and not ch.settled(pair.stock.chain)
    pay(pair, pair.foil, 1)
    pair.drain()
    pair.recover()
    agreed(pair)

    pair = Pair()
    stock_then, foil_then = backup(pair.stock), backup(pair.foil)
    pay(pair, pair.foil, 3)
    pair.drain()
    restore(pair, pair.foil, foil_then)
    (mine,) = pay(pair, pair.foil, 1)  # ordered at 1, where the stock confirmed another
    for _ in range(2):  # the stock answers it with its block at conf, which the foil takes
        pair.deliver(len(pair.queue) - 1)
    assert pair.foil.chain.ahead == 3
    pair.queue = [(receiver, message) for receiver, message in pair.queue
                  if receiver is pair.stock]  # its answer to the probe goes with its outbox
    restore(pair, pair.stock, stock_then)
    with pytest.raises(Unsettled):
        pair.recover()
    assert pay(pair, pair.foil, 1) and pair.foil.chain.pending[-1]["chain"] is None
    with pytest.raises(Unsettled):
        pair.recover()
    assert pair.foil.chain.conf == 0 and pair.stock.chain.length == 0
    assert pair.foil.chits[mine].state == cs.L_GOOD


def test_a_foils_upd_confirms_only_the_blocks_it_shows_the_stock_holds():
    """A foil restored to before the stock's payment 1 orders the stock's payment 2 at 1,
    then takes block 1 back from the stock and moves payment 2 to 2. The stock, restored to
    before both, links payment 2 at 1 from a late copy of the foil's first order, and then
    takes the foil's upd of block 3 (``conf`` 2, beyond a gap): that shows nothing of block
    1, so it confirms nothing, and the stock takes the foil's block 1 in place of its own
    when it comes. (It took ``conf`` 2 to cover its own block 1: it kept payment 2 there
    as confirmed, and the foil refused its blocks as ``conflict`` for ever.)"""
    pair = Pair()
    stock_then, foil_then = backup(pair.stock), backup(pair.foil)
    (first,) = pay(pair, pair.stock, 1)
    pair.drain()
    restore(pair, pair.foil, foil_then)
    (second,) = pay(pair, pair.stock, 1)
    pair.drain()
    (late,) = [message for receiver, message in pair.sent if receiver is pair.stock
               and chain_cmd(message) == "upd" and [
                   (chit["uuid"], chit["chain"]["index"]) for chit in message.object["chits"]
               ] == [(second, 1)]]
    assert [chit["uuid"] for chit in pair.foil.whole()] == [first, second]
    restore(pair, pair.stock, stock_then)
    pay(pair, pair.stock, 1)  # linked at 3 by the foil, sent (conf 2) before block 1 comes
    pair.deliver()  # the stock's probe: the foil answers with its conf
    pair.queue.append((pair.stock, late))
    pair.drain()
    pair.recover()
    agreed(pair)
    assert [chit["uuid"] for chit in pair.stock.whole()][:2] == [first, second]


def test_nothing_a_restored_holder_sent_since_its_backup_arrives_after_the_restore():
    """Hypothesis's shrunk case: the stock, restored, took its three blocks back from the
    foil, the foil acking them; both were restored again to before any block, and the
    foil's ack of block 1, from the history its restore undid, arrived at the stock: it
    asked the foil for block 1 for ever (nobody holds it). A node's messages leave only
    from its outbox, which a restore replaces with the backup's, over channels that close
    when it stops, so none of that history's messages reaches its partner afterwards (a
    copy on the wire is refused by the channel's Noise session). The model now takes them
    back with the restore, as the runtime does, and the same steps settle."""
    machine = RestoredExchange()
    for rule_name, args in [
        ("back_up", {"side": t.STOCK}), ("back_up", {"side": t.FOIL}),
        ("invoice", {"side": t.STOCK, "units": 1}),
        ("pay", {"count": 2, "side": t.STOCK, "units": 1}), ("calm", {}),
        ("invoice", {"side": t.STOCK, "units": 1}), ("restore", {"side": t.STOCK}),
        ("pay", {"count": 1, "side": t.STOCK, "units": 1}), ("calm", {}),
        ("restore", {"side": t.STOCK}), ("restore", {"side": t.STOCK}),
        ("restore", {"side": t.STOCK}), ("back_up", {"side": t.STOCK}),
        ("restore", {"side": t.FOIL}), ("replay", {"pick": 315}),
    ]:
        getattr(machine, rule_name)(**args)
        machine.confirmed_blocks_stay()
    machine.teardown()


def test_the_state_machine_lets_only_blocks_both_holders_lost_go_unsettled():
    """The machine's teardown takes a chain that does not settle only when the side that
    asks asks for a block one side held confirmed and neither holds: here the stock, told
    the foil's conf 3 before the foil went back to its empty backup."""
    machine = RestoredExchange()
    for rule_name, args in [
        ("back_up", {"side": t.STOCK}), ("back_up", {"side": t.FOIL}),
        ("pay", {"count": 3, "side": t.FOIL, "units": 1}), ("calm", {}),
        ("restore", {"side": t.STOCK}), ("deliver", {"pick": 0}), ("deliver", {"pick": 0}),
        ("restore", {"side": t.FOIL}),
    ]:
        getattr(machine, rule_name)(**args)
        machine.confirmed_blocks_stay()
    machine.teardown()
    assert machine.pair.stock.chain.ahead == 3 and not ch.settled(machine.pair.stock.chain)
    machine.final = {block for block in machine.final if block[0] != 3}
    with pytest.raises(AssertionError):  # had block 3 not been lost, this would be a bug
        machine.asks_for_blocks_nobody_holds()
