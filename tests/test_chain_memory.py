"""A partner that never confirms: a holder keeps a window of the chain in memory, not its
unconfirmed tail, and reads the rest back from the chit rows when it is needed (repairs,
requests, acks, the stock's rollback), byte for byte what it sent the first time."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sqlite3
from typing import Any

import pytest

from protocol import chain as ch
from protocol import chain_stock
from protocol import chit as c
from protocol import tally as t
from protocol.chit_local import effect
from protocol.codec import pack, unpack
from protocol.messages import Send
from store import chain_rows
from store import credit as credit_store
from store.chain_rows import CHAIN_WINDOW
from store.credit import Ledger
from tests.netfixture import network, wait_for
from tests.test_credit_chain import ALICE_TALLY, BOB_TALLY, Holder, Pair, command, one
from tests.test_credit_service import (
    Rows,
    agreed,
    chain_of,
    node_holding,
    open_tally,
    rebuilt,
    rpc,
    users,
    whole_chain,
)
from tests.test_credit_tally import ALICE, BOB

PARKED_BLOCKS = 128  # chain_stock's bound, made small enough for a quick test

# -- the protocol: a trimmed unconfirmed tail answers as the whole chain does -------------------


def summary(chain: ch.Chain, obj: dict[str, Any], holder: Holder | None = None) -> Any:
    """What ``chain`` makes of a chain message (read back as ``holder``'s rows would be, when
    given): the chain's length, head, confirmed index and balance, how many good chits wait
    unlinked (held or spilled), the replies and the chits adopted; or the refusal."""
    local = ALICE_TALLY if chain.side == t.STOCK else BOB_TALLY
    history = None
    if holder is not None:
        wanted = ch.wanted(chain, obj)
        chain, history = holder.named(wanted), holder.history(wanted)
    try:
        got = ch.receive(chain, obj, local, history)
    except t.Refusal as refused:
        return refused.code, refused.message
    kept = got.chain
    return (kept.length, kept.head, kept.conf, ch.balance(kept),
            len(kept.pending) + kept.spilled, got.messages, got.adopted)


def unconfirmed_pair() -> tuple[Pair, Holder]:
    """Twelve blocks both holders linked, of which the partner confirmed 3 (the acks for the
    others were lost): the foil's 1 to 4, the stock's chits at 5 to 12; six stock chits the
    foil never heard of; and a rival foil restored from a backup of 4 blocks that ordered
    three others at 5 to 7."""
    pair = Pair()
    for _ in range(3):
        pair.post(pair.foil, pair.foil.pay(pair.next_uuid(), 5))
    pair.drain()
    pair.stock.receive(one(pair.foil.pay(pair.next_uuid(), 5)))  # block 4; its ack is lost
    rival = Holder(BOB_TALLY, BOB.key)
    rival.chain, rival.chits = pair.foil.chain, dict(pair.foil.chits)
    for _ in range(8):  # ordered at 5 to 12, linked by the stock; the acks are lost
        pair.stock.receive(one(pair.foil.receive(one(pair.stock.pay(pair.next_uuid(), 1)))))
    for _ in range(6):
        pair.stock.pay(pair.next_uuid(), 2)  # lost too
    for _ in range(3):
        rival.pay(pair.next_uuid(), 1)
    assert (pair.stock.chain.length, pair.stock.chain.conf, pair.foil.chain.conf) == (12, 3, 3)
    return pair, rival


def test_an_unconfirmed_tail_trimmed_away_answers_as_the_whole_chain_does() -> None:
    """Each holder keeps 2 of its 12 blocks (3 confirmed) and 2 of its 6 unordered chits;
    acks, requests, copies and a rival order that rolls the stock back to its confirmed
    block get the whole chain's answer from the blocks and chits read back, and each
    holder's repair sends the same blocks and chits."""
    pair, rival = unconfirmed_pair()
    stock, foil = pair.stock, pair.foil
    blocks = foil.whole()
    own = [chit for chit in stock.chain.pending if chit["by"] == t.STOCK]
    cases = {
        stock: [command("upd", chits=list(rival.chain.chits[4:]), conf=0),  # rolls back
                command("upd", chits=list(rival.chain.chits[4:]), conf=3),
                command("nak", index=3, hash=blocks[2]["chain"]["hash"]),  # rolls back
                command("ack", index=7, hash=blocks[6]["chain"]["hash"]),
                command("ack", index=7, hash=blocks[5]["chain"]["hash"]),  # rolls back
                command("upd", chits=blocks[2:9], conf=8),  # copies, and conf 8
                command("upd", chits=[{**own[4], "chain": blocks[11]["chain"]}], conf=0)],
        foil: [command("req", index=1), command("req", index=4), command("req", index=11),
               command("ack", index=7, hash=blocks[6]["chain"]["hash"]),
               command("ack", index=2, hash=blocks[1]["chain"]["hash"]),  # echoes conf 3
               command("ack", index=7, hash=blocks[5]["chain"]["hash"]),  # nak
               command("new", chits=own[:3])],
    }
    rolled = 0
    for holder, objects in cases.items():
        whole = holder.chain
        holder.chain = ch.trim(whole, 2)
        trimmed = holder.chain
        assert (trimmed.base, trimmed.conf, len(trimmed.chits)) == (10, 3, 2)
        assert trimmed.spilled == (4 if holder is stock else 0)
        assert ch.balance(trimmed) == ch.balance(whole)
        for obj in objects:
            obj = unpack(pack(obj))
            assert summary(trimmed, obj, holder) == summary(whole, obj), obj
            rolled += summary(whole, obj)[0] == 3
        assert holder.resync() == ch.resync(whole, holder.local)
    assert rolled == 4  # the rival orders, the nak and the wrong ack roll back from behind the base


def test_a_rollback_behind_the_base_spills_the_blocks_it_unlinks_and_converges() -> None:
    """The rival order reaches a stock holding 2 of its 12 blocks: it goes back to its
    confirmed block 3, keeps only the unlinked blocks the message named, and once the foil
    and the stock repair each other the two chains agree."""
    pair, rival = unconfirmed_pair()
    pair.stock.chain = ch.trim(pair.stock.chain, 2)
    pair.foil.chain, pair.foil.chits = rival.chain, rival.chits  # the rival is the foil now
    pair.foil.chain = ch.trim(pair.foil.chain, 2)  # holding its blocks 6 and 7
    pair.post(pair.foil, [one(ch.receive(rival.chain, command("req", index=4), BOB_TALLY,
                                         ).messages)])
    pair.deliver()  # blocks 4 (as the stock has it) and the rival's 5 to 7
    stock = pair.stock.chain
    assert (stock.base, stock.length, stock.conf) == (3, 3, 3)  # and it asks from 4
    assert stock.spilled == 4 + 3  # its own 4, and its blocks 8 to 10, which nothing named
    assert len(stock.pending) == 2 + 4 + 2 + 3  # own; its 4 to 7 (named), 11, 12; rival's
    pair.recover()
    pair.assert_agreed()


# -- the store: a window per tally, however many chits pile up unconfirmed ----------------------


def held(holding: credit_store.Holding) -> tuple[int, int]:
    """(linked blocks, unlinked chits) the holding's chain keeps in memory."""
    assert holding.chain is not None
    return len(holding.chain.chits), len(holding.chain.pending)


def take(rows: Rows, holding: credit_store.Holding, messages: list[Send]
         ) -> tuple[credit_store.Holding, list[Send]]:
    """``Rows.receive``, with the partner's chits good for the balance they move."""
    replies = []
    for message in messages:
        obj = unpack(pack(message.object))
        chain, history, _ = rows.ledger.named(rows.conn, holding, ch.wanted(holding.chain, obj))
        got = ch.receive(chain, obj, holding.local, history)
        adopted = [c.receive_good(None, chit, holding.local, balance=0)[0]
                   for chit in got.adopted]
        delta = sum(effect(chit.chit, holding.local.side) for chit in adopted)
        holding = rows.ledger.save(rows.conn, holding, 4, chain=got.chain, fresh=adopted,
                                   balance_delta=delta)
        replies += got.messages
    return holding, replies


def resend(rows: Rows, holding: credit_store.Holding) -> list[Send]:
    """What the chain repair sends (``ChainRepair._resend``)."""
    chain, history, _ = rows.ledger.named(rows.conn, holding, ch.to_resend(holding.chain))
    return ch.resync(chain, holding.local, history)


def stored(rows: Rows, holding: credit_store.Holding) -> credit_store.Holding:
    """The holding as a fresh ledger builds it from the rows alone."""
    built = Ledger().get(rows.conn, holding.local.uuid, holding.cuid)
    assert built is not None
    return built


@pytest.mark.parametrize("case", ["foil pays", "stock pays", "foil orders"])
def test_chits_a_partner_never_confirms_cost_the_cache_a_window(case: str) -> None:
    """1,500 chits pile up unconfirmed, a hundred at a time: the foil's own (a stock that
    never acks), the stock's own (a foil that never orders them) or the foil's blocks the
    stock links (a foil that never confirms one): the chain in memory, saved or rebuilt from
    the rows, holds fewer than twice the window, and its balance is the whole tally's."""
    rows = Rows()
    foil, stock = rows.foil, rows.stock
    for batch in range(15):
        if case == "stock pays":
            stock, _ = rows.pay(stock, ALICE.key, 100)
            holding = stock
        else:
            foil, upds = rows.pay(foil, BOB.key, 100)
            holding = foil
            if case == "foil orders":
                stock, acks = take(rows, stock, upds)
                assert acks and stock.chain.conf == 0
                holding = stock
        count = 100 * (batch + 1)
        for version in (holding, stored(rows, holding)):
            linked, unlinked = held(version)
            assert linked + unlinked < 2 * CHAIN_WINDOW, (count, linked, unlinked)
            assert ch.balance(version.chain) == version.balance == holding.balance
            assert version.chain.length + len(version.chain.pending) + (
                version.chain.spilled) == count
    assert holding.chain.spilled if case == "stock pays" else holding.chain.base > 0
    # the row counts every chit still waiting, so the chain repair looks at the tally
    assert holding.cuid in {row["cuid"] for row in credit_store.unsettled(rows.conn)}
    assert rows.conn.execute("SELECT chain_pending FROM tallies WHERE cuid = ?", (
        holding.cuid,)).fetchone()[0] == (1500 if case == "stock pays" else 0)
    spilled_only = ch.Chain.from_map({**ch.start(holding.local).to_map(), "spilled": 1})
    assert not ch.settled(spilled_only)


def test_late_acks_and_requests_after_many_unconfirmed_chits_read_back_the_same_bytes() -> None:
    """The foil pays 1,000 chits and the stock 400 while neither hears the other. Then a
    late request, the repairs and the delivery of every lost message: what is read back from
    the rows is byte for byte what was sent, and the chains converge, settled, with the
    same blocks on both sides."""
    rows = Rows()
    foil, stock = rows.foil, rows.stock
    upds, news = [], []
    for _ in range(10):
        foil, sent = rows.pay(foil, BOB.key, 100)
        upds += sent
    for _ in range(4):
        stock, sent = rows.pay(stock, ALICE.key, 100)
        news += sent
    assert foil.chain.base > foil.chain.conf == 0 and stock.chain.spilled
    late = Send(upds[0].to, "chit", "chain", command("req", index=1), "alice")
    foil, (answer,) = take(rows, foil, [late])
    assert pack(answer.object) == pack(upds[0].object)
    assert [pack(message.object) for message in resend(rows, foil)] == [pack(upds[0].object)]
    assert [pack(message.object) for message in resend(rows, stock)][:1] == [
        pack(news[0].object)]  # the stock's oldest unordered chits, read back

    stock, foil = converge(rows, stock, foil, upds, news)  # the lost messages arrive at last
    assert stock.chain.length == 1400 and stock.balance == 1000 * 5 - 400 * 5


def converge(rows: Rows, stock: credit_store.Holding, foil: credit_store.Holding,
             for_stock: list[Send], for_foil: list[Send]
             ) -> tuple[credit_store.Holding, credit_store.Holding]:
    """Deliver, and repair, until neither holder has anything to say, each holding a window
    all along; then both chains are settled and the same, row for row."""
    for _ in range(200):
        stock, for_foil_next = take(rows, stock, for_stock)
        foil, for_stock = take(rows, foil, for_foil + for_foil_next)
        for_foil = []
        if not for_stock:
            for_stock, for_foil = resend(rows, foil), resend(rows, stock)
            if not for_stock and not for_foil:
                break
        for holding in (stock, foil):
            assert max(held(holding)) < 2 * CHAIN_WINDOW
    else:
        raise AssertionError("the holders keep talking")
    for holding in (stock, foil, stored(rows, stock), stored(rows, foil)):
        assert ch.settled(holding.chain) and holding.chain.length == foil.chain.length
    chains = [[(body, block) for body, block in rows.conn.execute(
        "SELECT body, block FROM chits WHERE cuid = ? ORDER BY chain_index", (cuid,))]
        for cuid in ("alice", "bob")]
    assert chains[0] == chains[1]
    assert stock.balance == -foil.balance
    return stock, foil


def test_a_stock_rolled_back_from_behind_its_window_unlinks_the_rows_and_converges() -> None:
    """The stock linked 300 foil blocks the foil never confirmed, then the foil says it holds
    none of them (a nak of block 0: restored from a backup that still knows the chits): the
    stock unlinks every row after its confirmed block, holds a window of the chits, and the
    foil's order brings back the same chain."""
    rows = Rows()
    foil, stock = rows.foil, rows.stock
    upds = []
    for _ in range(3):
        foil, sent = rows.pay(foil, BOB.key, 100)
        upds += sent
    stock, _ = take(rows, stock, upds)  # its acks are lost
    assert (stock.chain.length, stock.chain.conf) == (300, 0) and stock.chain.base > 0
    nak = Send(upds[0].to, "chit", "chain", command(
        "nak", index=0, hash=foil.chain.origin), "bob")
    stock, (req,) = take(rows, stock, [nak])
    assert req.object["cmd"] == "req" and req.object["index"] == 1
    for version in (stock, stored(rows, stock)):
        assert version.chain.length == 0 and max(held(version)) < 2 * CHAIN_WINDOW
        assert len(version.chain.pending) + version.chain.spilled == 300
    assert rows.conn.execute("SELECT count(*) FROM chits WHERE cuid = 'alice'"
                             " AND chain_index IS NOT NULL").fetchone()[0] == 0
    converge(rows, stock, foil, [], [req])


# -- two nodes: a partner away while chits pile up ------------------------------------------------


async def test_a_node_holds_a_window_while_its_partner_is_away_and_repairs_the_rest(
        tmp_path, monkeypatch):
    """With a window of 4, each user pays 60 chits while the partner's node is down: the
    payer's node holds a few blocks and chits in memory, not 60. Its messages are lost (its
    outbox emptied while it is down too); once both are back the chain repair, reading what
    it sends back from the rows, brings both chains to the same 120 blocks."""
    monkeypatch.setattr(chain_rows, "CHAIN_WINDOW", 4)
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        tally = await open_tally(a, "alice", b, "bob")  # alice holds the stock, bob the foil
        for away, payer, cuid in ((0, 1, "bob"), (1, 0, "alice")):
            await net.stop(away)
            node = net.nodes[payer]
            await rpc(node, "chit.pay_many", cuid=cuid, tally=tally, units=[1] * 40)
            for _ in range(20):
                await rpc(node, "chit.pay", cuid=cuid, tally=tally, units=1)
            chain = node_holding(node, cuid, tally).chain
            assert len(chain.chits) + len(chain.pending) <= 2 * 4
            assert (chain.base if cuid == "bob" else chain.spilled) >= 40
            await net.stop(payer)
            with contextlib.closing(sqlite3.connect(node.config.db_path)) as conn, conn:
                assert conn.execute("DELETE FROM outbox WHERE target = 'chit'").rowcount
            await net.restart(payer)
            await net.restart(away)
            a, b = net.nodes
            await wait_for(functools.partial(agreed, a, "alice", b, "bob", tally,
                                             60 if cuid == "bob" else 120), timeout=30)
        assert whole_chain(a, "alice", tally) == whole_chain(b, "bob", tally)
        assert chain_of(a, "alice", tally)[3] == 0  # 60 each way
        for node, cuid in ((a, "alice"), (b, "bob")):
            chain = rebuilt(node, cuid, tally).chain
            assert len(chain.chits) <= 2 * 4 and ch.settled(chain)


def paid(rows: Rows, holding: credit_store.Holding, key: Any
         ) -> tuple[credit_store.Holding, list[Send]]:
    """``holding``'s user pays 1,500 chits, a hundred at a time: the holding after, and the
    chain messages the payments sent."""
    sent: list[Send] = []
    for _ in range(15):
        holding, messages = rows.pay(holding, key, 100)
        sent += messages
    return holding, sent


def test_blocks_a_foil_sends_beyond_a_gap_cost_the_cache_a_bounded_number(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The foil pays 1,500 chits and its upd of the first 100 is lost: the stock keeps at
    most ``PARKED_BLOCKS`` (made 128 here) of the 1,400 blocks beyond the gap, in memory and
    in the rows it is rebuilt from; the others wait as chits without a block (spilled past
    the window), all counted in the balance. Once the lost upd arrives the chains converge."""
    monkeypatch.setattr(chain_stock, "PARKED_BLOCKS", PARKED_BLOCKS)
    rows = Rows()
    stock, (foil, upds) = rows.stock, paid(rows, rows.foil, BOB.key)
    stock, replies = take(rows, stock, upds[1:])
    assert replies and all(reply.object["index"] == 1 for reply in replies
                           if reply.object["cmd"] == "req")
    for version in (stock, stored(rows, stock)):
        chain = version.chain
        parked = [chit for chit in chain.pending if chit["chain"] is not None]
        assert chain.length == 0 and len(parked) == PARKED_BLOCKS
        assert len(chain.pending) < 2 * CHAIN_WINDOW + PARKED_BLOCKS
        assert len(chain.pending) + chain.spilled == 1400
        assert ch.balance(chain) == version.balance == stock.balance == 1400 * 5
    assert rows.conn.execute("SELECT count(*) FROM chits WHERE cuid = 'alice'"
                             " AND block IS NOT NULL").fetchone()[0] == PARKED_BLOCKS
    stock, foil = converge(rows, stock, foil, upds[:1], [])
    assert stock.chain.length == 1500


def test_the_foil_orders_the_stocks_own_chits_beyond_a_gap_all_parked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stock pays 1,500 chits, and the first of the foil's 15 upds that order them comes
    last (under load the foil's order of the stock's chits overtakes its own chits): the
    stock parks every block beyond the gap, past ``PARKED_BLOCKS`` (made 128 here), since
    each is one of its own user's chits, and links all 1,500 as soon as the late upd comes,
    with no repair. Asked for again by repairs, ``bench chits``' 20,000 took minutes."""
    monkeypatch.setattr(chain_stock, "PARKED_BLOCKS", PARKED_BLOCKS)
    rows = Rows()
    foil, (stock, news) = rows.foil, paid(rows, rows.stock, ALICE.key)
    foil, upds = take(rows, foil, news)
    assert len(upds) == 15
    stock, _ = take(rows, stock, upds[1:])
    assert stock.chain.length == 0
    assert sum(chit["chain"] is not None for chit in stock.chain.pending) == 1400
    stock, _ = take(rows, stock, upds[:1])
    assert stock.chain.length == foil.chain.length == 1500


def test_a_foil_that_gives_up_lost_blocks_links_every_chit_that_waited_spilled_too() -> None:
    """A foil told of 3 blocks it lacks (restored from a backup; the stock never sends them)
    waits with its user's 600 payments unordered, most spilled past the window. Giving the
    blocks up links them all (``Ledger.given_up`` reads the spilled back): the foil orders
    and sends them, and both chains agree. Before, it linked only when none was spilled,
    so they waited for ever."""
    rows = Rows()
    foil, stock = rows.foil, rows.stock
    foil, upds = rows.pay(foil, BOB.key, 100)
    stock, foil = converge(rows, stock, foil, upds, [])
    told = dataclasses.replace(foil.chain, ahead=foil.chain.length + 3)
    foil = rows.ledger.save(rows.conn, foil, 5, chain=told)
    for _ in range(6):
        foil, sent = rows.pay(foil, BOB.key, 100)
        assert sent == []  # catching up: nothing is ordered
    assert foil.chain.spilled > 0 and ch.lacking(foil.chain) == 3
    foil = rows.ledger.save(rows.conn, foil, 6, chain=rows.ledger.given_up(rows.conn, foil))
    assert foil.chain.length == 700 and foil.chain.spilled == 0 and not foil.chain.pending
    stock, foil = converge(rows, stock, foil, resend(rows, foil), [])
    assert stock.chain.length == 700
