"""Credit between real nodes (loopback, Noise, SQLite): negotiation, chits, chain consensus,
persistence, relay views and every kind of bad message."""

from __future__ import annotations

import dataclasses
import re
import socket
import sqlite3
import uuid
from typing import Any

import pytest
import trio

from agentd.config import AccessRule
from agentd.human import render
from agentd.methods import method_help
from agentd.rpc import NOT_FOUND, RpcError
from agentd.runtime.context import Reject
from agentd.runtime.dispatch import _Heard
from agentd.runtime.node import Node
from agentd.services.credit import tallies as tallies_module
from agentd.services.credit.chits import REPAIRS
from agentd.services.credit.tallies import ticket_tally_uuid
from agentd.services.relay import driver as relay_driver
from protocol import chain as ch
from protocol import chit as c
from protocol import chit_states as cs
from protocol import tally as t
from protocol import tally_fields as tf
from protocol import tally_states as ts
from protocol.chit_fields import chit_hash
from protocol.chit_local import balance as chit_balance
from protocol.codec import pack, unpack
from protocol.envelope import Envelope
from protocol.keys import ChipAddress, SigningKey, b64u, parse_hostport
from protocol.messages import Send
from protocol.tally_sign import core_digest
from store import outbox
from store import relay as relay_store
from store.chain_rows import CHAIN_WINDOW
from store.credit import Ledger
from store.schema import migrate
from tests.netfixture import network, node_config, start_node, wait_for
from tests.test_credit_chain import Pair
from tests.test_credit_tally import ALICE, BOB, negotiate

LIMIT = 1_000_000


# -- helpers ----------------------------------------------------------------------------------


async def rpc(node: Node, method: str, **params: Any) -> Any:
    return await node.rpc.call(method, params)


async def refused(node: Node, method: str, **params: Any) -> RpcError:
    """The error of an RPC call that must fail."""
    with pytest.raises(RpcError) as caught:
        await rpc(node, method, **params)
    return caught.value


def state(node: Node, cuid: str, tally: str) -> str | None:
    row = node.db.read_one("SELECT state FROM tallies WHERE uuid = ? AND cuid = ?", (tally, cuid))
    return None if row is None else row[0]


def chain_of(node: Node, cuid: str, tally: str) -> tuple[int, int, bytes, int]:
    """(length, confirmed, head, balance) as stored."""
    row = node.db.read_one(
        "SELECT chain_length, chain_conf, chain_head, balance FROM tallies"
        " WHERE uuid = ? AND cuid = ?", (tally, cuid))
    return tuple(row)


def agreed(a: Node, a_cuid: str, b: Node, b_cuid: str, tally: str, length: int) -> bool:
    """Both holders hold ``length`` confirmed blocks with the same head and opposite
    balances."""
    mine, theirs = chain_of(a, a_cuid, tally), chain_of(b, b_cuid, tally)
    return (mine[0] == mine[1] == theirs[0] == theirs[1] == length and mine[2] == theirs[2]
            and mine[3] == -theirs[3])


def rebuilt(node: Node, cuid: str, tally: str):
    """The holding as a fresh ledger builds it from the rows alone (no cache)."""
    conn = sqlite3.connect(node.config.db_path)
    conn.row_factory = sqlite3.Row
    try:
        return Ledger().get(conn, tally, cuid)
    finally:
        conn.close()


def node_holding(node: Node, cuid: str, tally: str):
    """The holding as the node's ledger holds it in memory."""
    return node.credit.ledger.store._cache[(tally, cuid)]


def whole_chain(node: Node, cuid: str, tally: str) -> list[dict[str, Any]]:
    """Every linked chit of the holder's chain, with its block, from the rows."""
    rows = node.db.read("SELECT body, block FROM chits WHERE tally = ? AND cuid = ?"
                            " AND chain_index IS NOT NULL ORDER BY chain_index", (tally, cuid))
    return [{**unpack(body), "chain": unpack(block)} for body, block in rows]


def user_key(node: Node, cuid: str) -> SigningKey:
    return SigningKey(node.db.read_one("SELECT seed FROM users WHERE cuid = ?", (cuid,))[0])


async def open_tally(a: Node, a_cuid: str, b: Node, b_cuid: str, *, limit: int = LIMIT) -> str:
    """Invite (a), request (b), offer (a), accept (b): both holders open."""
    invited = await rpc(a, "tally.invite", cuid=a_cuid, limit=limit)
    requested = await rpc(b, "tally.request", cuid=b_cuid, ticket=invited["ticket"])
    tally = invited["tally"]
    assert requested == {"tally": tally, "state": "requested",
                         "partner": str(a.own_address(a_cuid))}
    assert state(a, a_cuid, tally) == ts.P_DRAFT
    await rpc(a, "tally.offer", cuid=a_cuid, tally=tally)
    await wait_for(lambda: state(b, b_cuid, tally) == ts.P_OFFER)
    await rpc(b, "tally.accept", cuid=b_cuid, tally=tally)
    await wait_for(lambda: state(a, a_cuid, tally) == state(b, b_cuid, tally) == ts.OPEN)
    return tally


async def send_raw(sender: Node, to: Node, to_cuid: str, target: str, action: str,
                   obj: dict, from_cuid: str) -> bytes:
    """Queue a hand-made message; returns its id."""
    address = to.own_address(to_cuid)

    return await sender.transact(
        lambda tx: tx.send(Send(address, target, action, obj, from_cuid=from_cuid)))


async def refusal_of(sender: Node, message_id: bytes) -> str:
    """The error the recipient answered a message with (it must refuse it)."""
    def failed():
        return sender.db.read_one(
            "SELECT error FROM outbox WHERE id = ? AND state = 'failed'", (message_id,))

    await wait_for(lambda: failed() is not None)
    return failed()[0]


async def processed(sender: Node, message_id: bytes) -> None:
    """The recipient committed (acked without error) a message."""
    def gone():
        return sender.db.read_one("SELECT 1 FROM outbox WHERE id = ?", (message_id,)) is None

    await wait_for(lambda: message_id not in sender.pump.live and gone())


def chit_by(key: SigningKey, tally: str, by: str, units: int, chit_uuid: str | None = None
            ) -> dict:
    chit = {"tally": tally, "uuid": chit_uuid or str(uuid.uuid4()), "by": by, "type": "tran",
            "date": 1_700_000_000_000, "units": units, "ref": None, "memo": "", "hash": b"",
            "sign": None, "chain": None}
    chit["hash"] = chit_hash(chit)
    chit["sign"] = key.sign(chit["hash"])
    return chit


async def users(node: Node, *cuids: str) -> None:
    for cuid in cuids:
        await rpc(node, "users.add", cuid=cuid)


async def one_user_each(net: Any, *cuids: str) -> list[Node]:
    """``net``'s nodes, the i-th hosting user ``cuids[i]``."""
    for node, cuid in zip(net.nodes, cuids, strict=True):
        await users(node, cuid)
    return list(net.nodes)


# -- negotiation ------------------------------------------------------------------------------


async def test_tally_wait_returns_once_each_step_of_a_negotiation_lands(tmp_path):
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        invited = await rpc(a, "tally.invite", cuid="alice", limit=LIMIT)
        tally = invited["tally"]
        # bob has not presented the ticket: no offer is coming, so no wait (a typo alike)
        early = await refused(b, "tally.wait", cuid="bob", tally=tally, state=ts.P_OFFER,
                              timeout_s=30)
        assert (early.reason, early.message) == ("UNKNOWN_TALLY", (
            f"user bob holds no tally {tally} (tally.list cuid=bob lists those it "
            "holds)"))
        await rpc(b, "tally.request", cuid="bob", ticket=invited["ticket"])
        early = await rpc(b, "tally.wait", cuid="bob", tally=tally, state=ts.P_OFFER,
                          timeout_s=0)
        assert early["state"] == "requested"  # presented: bob's node waits for the offer
        async with trio.open_nursery() as nursery:  # waiting before the offer is even made
            shown: dict[str, dict] = {}

            async def wait(node: Node, cuid: str, state: str | list[str]) -> None:
                shown[cuid] = await rpc(node, "tally.wait", cuid=cuid, tally=tally,
                                        state=state, timeout_s=30)

            nursery.start_soon(wait, b, "bob", ts.P_OFFER)
            await rpc(a, "tally.offer", cuid="alice", tally=tally)
        assert shown["bob"]["state"] == ts.P_OFFER
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait, a, "alice", [ts.OPEN, ts.VOID])
            await rpc(b, "tally.accept", cuid="bob", tally=tally)
        assert shown["alice"]["state"] == ts.OPEN and shown["alice"]["tally"] == tally
        bad = await refused(a, "tally.wait", cuid="alice", tally=tally, state=[], timeout_s=1)
        assert "state must be" in bad.message
        bad = await refused(a, "tally.wait", cuid="alice", tally=tally, state=ts.OPEN,
                            timeout_s=-1)
        assert bad.message == ("tally.wait: timeout_s must be seconds from 0 (look now) to 3600,"
                               " not -1")
        looked = await rpc(a, "tally.wait", cuid="alice", tally=tally, state=ts.VOID, timeout_s=0)
        assert looked["state"] == ts.OPEN  # a look: the state as it is, at once
        bad = await refused(a, "tally.wait", cuid="alice", tally=tally,
                            state=[ts.OPEN, "opne"], timeout_s=1)
        assert bad.message.startswith("tally.wait: state 'opne' is not a tally state (one of: ")


async def presented(a: Node, b: Node) -> dict:
    """alice's invitation (on node a), which bob (on node b) has presented."""
    invited = await rpc(a, "tally.invite", cuid="alice", limit=LIMIT)
    await rpc(b, "tally.request", cuid="bob", ticket=invited["ticket"])
    return invited


async def test_a_one_time_ticket_presented_again_while_its_offer_is_on_the_way(tmp_path):
    """bob presents alice's one-time ticket, alice offers, and bob presents it again before
    the offer reaches his node: alice's node says where the tally got, bob's node keeps
    waiting for the offer, and the offer, once it lands, opens the tally as usual."""
    async with network(tmp_path, n=2) as net:
        a, b = await one_user_each(net, "alice", "bob")
        invited = await presented(a, b)
        tally = invited["tally"]
        held, add = [], a.pump.add

        def holding(*args: Any, **kwargs: Any) -> Any:
            envelope = args[3]
            if (envelope.get("target"), envelope.get("action")) == ("tally", "offer"):
                held.append((args, kwargs))
                return None
            return add(*args, **kwargs)

        a.pump.add = holding
        await rpc(a, "tally.offer", cuid="alice", tally=tally)
        await wait_for(lambda: held)
        again = await refused(b, "tally.request", cuid="bob", ticket=invited["ticket"])
        assert (again.reason, again.message) == ("BAD_TICKET", (
            f"BAD_TICKET: you used this ticket already: tally {tally} is draft.offer at the "
            "inviter's node"
            " (tally.list shows it on your node)"))
        waiting = await rpc(b, "tally.wait", cuid="bob", tally=tally, state=ts.P_OFFER,
                            timeout_s=0)
        assert waiting["state"] == "requested"  # bob's node still waits for the offer
        a.pump.add = add
        for args, kwargs in held:
            add(*args, **kwargs)
        offered = await rpc(b, "tally.wait", cuid="bob", tally=tally, state=ts.P_OFFER,
                            timeout_s=20)
        assert offered["state"] == ts.P_OFFER
        assert b.db.read_one("SELECT count(*) FROM tally_requests")[0] == 0
        await rpc(b, "tally.accept", cuid="bob", tally=tally)
        for node, cuid in ((a, "alice"), (b, "bob")):
            shown = await rpc(node, "tally.wait", cuid=cuid, tally=tally, state=ts.OPEN,
                              timeout_s=20)
            assert shown["state"] == ts.OPEN


async def test_the_inviter_turns_a_request_down_before_offering(tmp_path):
    """tally.refuse on the P.draft a ticket made was BAD_STATE ("it is ours to offer"): an
    inviter who did not want that partner had no way to say so. It voids the draft; the
    ticket presented again says so. After a counter-offer, either side gives the tally up."""
    async with network(tmp_path, n=2) as net:
        a, b = await one_user_each(net, "alice", "bob")
        invited = await presented(a, b)
        tally = invited["tally"]
        assert state(a, "alice", tally) == ts.P_DRAFT
        waited: list[RpcError] = []

        async def wait_for_the_offer() -> None:  # bob waits, as tally.request's answer says
            waited.append(await refused(b, "tally.wait", cuid="bob", tally=tally,
                                        state=ts.P_OFFER, timeout_s=60))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_the_offer)
            await trio.sleep(0.2)
            assert (await rpc(a, "tally.refuse", cuid="alice", tally=tally))["state"] == ts.VOID
            with trio.fail_after(20):  # told at once: it waited out its 60 s
                while not waited:
                    await trio.sleep(0.05)
        assert (waited[0].reason, waited[0].message) == ("TICKET_REFUSED", (
            f"TICKET_REFUSED: the inviter turned bob's request down: no offer of tally {tally} "
            "will come"))
        assert b.db.read_one("SELECT count(*) FROM tally_requests")[0] == 0
        again = await refused(b, "tally.request", cuid="bob", ticket=invited["ticket"])
        assert (again.reason, again.message) == ("TICKET_REFUSED", (
            f"TICKET_REFUSED: the inviter turned your request down: tally {tally} is void"))
        # the request forgotten, a wait is UNKNOWN_TALLY at once
        gone = await refused(b, "tally.wait", cuid="bob", tally=tally, state=ts.P_OFFER,
                             timeout_s=30)
        assert gone.reason == "UNKNOWN_TALLY"
        assert (await refused(a, "tally.offer", cuid="alice", tally=tally)).reason == (
            "BAD_STATE")
        # bob counters alice's offer, then gives it up: a counter-offer left both of them a
        # draft of it that neither could void (alice's node said wait for his offer, bob's
        # said offer it or leave it unsent), so it stayed for ever
        for giver, holder in (("bob", "alice"), ("alice", "bob")):
            tally = (await presented(a, b))["tally"]
            await rpc(a, "tally.offer", cuid="alice", tally=tally)
            await rpc(b, "tally.wait", cuid="bob", tally=tally, state=ts.P_OFFER, timeout_s=20)
            await rpc(b, "tally.counter", cuid="bob", tally=tally)
            await rpc(b, "tally.wait", cuid="bob", tally=tally, state=ts.P_DRAFT, timeout_s=20)
            await rpc(a, "tally.wait", cuid="alice", tally=tally, state=ts.DRAFT, timeout_s=20)
            nodes = {"alice": a, "bob": b}
            given = await rpc(nodes[giver], "tally.refuse", cuid=giver, tally=tally)
            assert given["state"] in (ts.OFFER_VOID, ts.VOID)
            for node, cuid in ((nodes[giver], giver), (nodes[holder], holder)):
                shown = await rpc(node, "tally.wait", cuid=cuid, tally=tally, state=ts.VOID,
                                  timeout_s=20)
                assert shown["state"] == ts.VOID, (giver, cuid, shown)
            assert (await refused(nodes[holder], "tally.offer", cuid=holder, tally=tally)
                    ).reason == "BAD_STATE"


async def test_negotiation_counter_offer_then_accept_and_a_refusal(tmp_path):
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        invited = await rpc(a, "tally.invite", cuid="alice", limit=5000, memo="first")
        tally = invited["tally"]
        assert invited["state"] == ts.DRAFT and isinstance(invited["ticket"], str)
        assert tally == ticket_tally_uuid(tf.decode_ticket(invited["ticket"])["token"])
        await rpc(b, "tally.request", cuid="bob", ticket=invited["ticket"])
        offered = await rpc(a, "tally.offer", cuid="alice", tally=tally)
        assert offered["state"] in (ts.DRAFT_OFFER, ts.H_OFFER)
        await wait_for(lambda: state(b, "bob", tally) == ts.P_OFFER)
        await wait_for(lambda: state(a, "alice", tally) == ts.H_OFFER)
        # bob counters: the pen passes to him, alice's signature lapses
        await rpc(b, "tally.counter", cuid="bob", tally=tally)
        await wait_for(lambda: state(b, "bob", tally) == ts.P_DRAFT)
        await wait_for(lambda: state(a, "alice", tally) == ts.DRAFT)
        shown = await rpc(a, "tally.show", cuid="alice", tally=tally)
        assert shown["version"] == 2 and shown["signed"] == []
        # ... revises the limits (what alice may owe him, what he may owe her) and offers back
        await rpc(b, "tally.offer", cuid="bob", tally=tally, limit=2000, partner_limit=3000)
        await wait_for(lambda: state(a, "alice", tally) == ts.P_OFFER)
        await rpc(a, "tally.accept", cuid="alice", tally=tally)
        await wait_for(lambda: state(a, "alice", tally) == state(b, "bob", tally) == ts.OPEN)
        alice = await rpc(a, "tally.show", cuid="alice", tally=tally)
        bob = await rpc(b, "tally.show", cuid="bob", tally=tally)
        assert (alice["side"], alice["limit"], alice["partner_limit"]) == ("stock", 3000, 2000)
        assert (bob["side"], bob["limit"], bob["partner_limit"]) == ("foil", 2000, 3000)
        assert alice["chain"] == bob["chain"] == {
            "index": 0, "hash": alice["chain"]["hash"], "confirmed": 0, "pending": 0,
            "missing": 0}
        assert alice["signed"] == ["stock", "foil"] and alice["partner"] == str(
            b.own_address("bob"))
        # a second invitation, refused
        again = await rpc(a, "tally.invite", cuid="alice", side="foil")
        await rpc(b, "tally.request", cuid="bob", ticket=again["ticket"])
        await rpc(a, "tally.offer", cuid="alice", tally=again["tally"])
        await wait_for(lambda: state(b, "bob", again["tally"]) == ts.P_OFFER)
        assert (await rpc(b, "tally.refuse", cuid="bob", tally=again["tally"]))["state"] in (
            ts.OFFER_VOID, ts.VOID)
        await wait_for(lambda: state(a, "alice", again["tally"]) == state(
            b, "bob", again["tally"]) == ts.VOID)
        listed = await rpc(a, "tally.list", cuid="alice")
        assert [(x["tally"], x["state"]) for x in listed] == [(tally, "open"),
                                                              (again["tally"], "void")]
        assert (await refused(b, "tally.accept", cuid="bob", tally=again["tally"])).reason == (
            "BAD_STATE")


async def test_both_users_on_one_node_and_a_reusable_ticket(tmp_path, monkeypatch):
    async with network(tmp_path, n=1) as net:
        (a,) = net.nodes
        await users(a, "alice", "bob", "carol")
        tally = await open_tally(a, "alice", a, "bob")
        # no [clearinghouse]: no evidence, and tally.show names no process for it
        assert (await rpc(a, "tally.show", cuid="alice", tally=tally))["evidence"] is None
        await rpc(a, "chit.pay", cuid="alice", tally=tally, units=700)
        await rpc(a, "chit.pay", cuid="bob", tally=tally, units=200)
        bill = await rpc(a, "chit.invoice", cuid="alice", tally=tally, units=50)
        assert bill["state"] == cs.A_PEND
        await wait_for(lambda: a.db.read_one(
            "SELECT 1 FROM chits WHERE cuid = 'bob' AND uuid = ?", (bill["chit"],)) is not None)
        mine = await refused(a, "chit.accept", cuid="alice", chit=bill["chit"])
        assert mine.reason == "BAD_STATE" and mine.message.endswith(
            "is alice's own invoice, waiting for the partner: the payer accepts or refuses "
            "it, on its node")
        assert (await rpc(a, "chit.accept", cuid="bob", chit=bill["chit"]))["state"] == cs.L_GOOD
        # answered twice: what the chit is now, not "cannot accept a chit in state L.good"
        twice = await refused(a, "chit.refuse", cuid="bob", chit=bill["chit"])
        assert twice.reason == "BAD_STATE" and twice.message.endswith(
            f"chit {bill['chit']} is paid already (L.good): only an invoice waiting for bob's "
            "answer (L.pend) can be accepted or refused"), twice.message
        await wait_for(lambda: a.db.read_one("SELECT state FROM chits WHERE cuid = 'alice' AND"
                                             " uuid = ?", (bill["chit"],))[0] == cs.A_GOOD)
        paid = await refused(a, "chit.accept", cuid="alice", chit=bill["chit"])
        assert paid.message.endswith(  # not "is A.good" alone
            f"chit {bill['chit']} is a payment to alice (A.good): the partner's, alice's "
            "invoice it paid, or a lift's; only an invoice waiting for alice's answer (L.pend) "
            "can be accepted or refused")
        await wait_for(lambda: agreed(a, "alice", a, "bob", tally, 3))
        assert chain_of(a, "alice", tally)[3] == -450  # alice (stock) owes bob 700 - 200 - 50
        bobs = await rpc(a, "chit.list", cuid="bob", tally=tally)
        alices = await rpc(a, "chit.list", cuid="alice", tally=tally)
        assert [(x["chit"], x["index"], x["hash"]) for x in bobs] == [
            (x["chit"], x["index"], x["hash"]) for x in alices]
        assert {x["state"] for x in bobs} == {cs.A_GOOD, cs.L_GOOD}
        # carol named where alice or bob was meant: told who holds it here, by every method
        for method, params in (("tally.show", {}), ("chit.list", {}),
                               ("chit.pay", {"units": 1}), ("chit.invoice", {"units": 1}),
                               ("tally.close", {})):
            wrong = await refused(a, method, cuid="carol", tally=tally, **params)
            assert (wrong.reason, wrong.message) == ("UNKNOWN_TALLY", (
                f"user carol holds no tally {tally}: on this node alice and bob hold it "
                "(cuid=alice)")), method
        # an unlinked chit (a refused invoice) comes after the chain, on the page that ends it
        refused_bill = await rpc(a, "chit.invoice", cuid="alice", tally=tally, units=5)
        await wait_for(lambda: a.db.read_one(
            "SELECT 1 FROM chits WHERE cuid = 'bob' AND uuid = ?", (refused_bill["chit"],)))
        await rpc(a, "chit.refuse", cuid="bob", chit=refused_bill["chit"])
        again = await refused(a, "chit.accept", cuid="bob", chit=refused_bill["chit"])
        assert again.message.endswith(f"chit {refused_bill['chit']} is refused already (L.void)"
                                      ": only an invoice waiting for bob's answer (L.pend) can "
                                      "be accepted or refused"), again.message
        listed = await rpc(a, "chit.list", cuid="bob", tally=tally)
        assert [x["index"] for x in listed] == [1, 2, 3, None]
        assert await rpc(a, "chit.list", cuid="bob", tally=tally, start=3, limit=1) == listed[2:3]
        assert await rpc(a, "chit.list", cuid="bob", tally=tally, start=4) == listed[3:]
        # a reusable ticket: a tally of its own for each user who presents it
        invited = await rpc(a, "tally.invite", cuid="alice", reuse=True)
        for cuid in ("bob", "carol"):
            requested = await rpc(a, "tally.request", cuid=cuid, ticket=invited["ticket"])
            assert requested["tally"] == ticket_tally_uuid(
                tf.decode_ticket(invited["ticket"])["token"], a.own_address(cuid))
            assert state(a, "alice", requested["tally"]) == ts.P_DRAFT
        assert state(a, "alice", invited["tally"]) == ts.DRAFT  # the template stays a draft
        again = await rpc(a, "tally.request", cuid="carol", ticket=invited["ticket"])
        assert again == requested  # taken again until alice offers, as a one-time ticket is
        own = await refused(a, "tally.request", cuid="alice", ticket=invited["ticket"])
        assert own.reason == "BAD_TICKET" and own.message.endswith(
            "alice made this ticket: the user it is for presents it, with tally.request on "
            "that user's node")
        # requests waiting for alice's offer are bounded: a public ticket makes no endless rows
        rows = a.db.read_one("SELECT count(*) FROM tallies")[0]
        monkeypatch.setattr(tallies_module, "MAX_REQUESTS", 2)
        await rpc(a, "users.add", cuid="dan")
        busy = await refused(a, "tally.request", cuid="dan", ticket=invited["ticket"])
        assert busy.reason == "TOO_MANY_REQUESTS" and "alice has 2 tally requests" in busy.message
        assert a.db.read_one("SELECT count(*) FROM tallies")[0] == rows
        # once alice offered carol's tally, presenting the ticket again says where it is
        await rpc(a, "tally.offer", cuid="alice", tally=requested["tally"])
        await wait_for(lambda: state(a, "carol", requested["tally"]) == ts.P_OFFER)
        used = await refused(a, "tally.request", cuid="carol", ticket=invited["ticket"])
        assert used.reason == "BAD_TICKET" and used.message.endswith(
            f"tally {requested['tally']} is already ours (P.offer)"), used.message


# -- chits and the chain ----------------------------------------------------------------------


async def test_a_partner_that_never_acks_gets_a_few_repairs_at_a_time(tmp_path):
    """A request for old blocks changes nothing, and the blocks that answer it are a repair
    the partner's resync asks for again: while REPAIRS such answers wait unacked, a new one
    is not written (a partner that never acked made each request of ~200 bytes cost a row of
    up to 100 blocks, for ever)."""
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        tally = await open_tally(a, "alice", b, "bob")  # alice holds the stock, bob the foil
        for _ in range(3):
            await rpc(a, "chit.pay", cuid="alice", tally=tally, units=1)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 3))
        alice, length = a.own_address("alice"), chain_of(b, "bob", tally)[0]

        def answers() -> int:
            return b.db.read_one("SELECT count(*) FROM outbox WHERE action = 'chain'")[0]

        # bob's chain messages so far acked and their rows gone: a repair of the settling
        # above whose row waits for the next delete of acked rows counts as one in flight
        await wait_for(lambda: answers() == 0)
        await net.stop(0)  # nothing bob's node answers is acked now

        async def from_alice(obj: dict) -> bytes | None:
            message = Envelope(id=uuid.uuid4().bytes, target="chit", action="chain",
                               object={"tally": tally, **obj}, to=b.own_address("bob"),
                               from_=alice, last=b.clock.now_ms())
            return await b.dispatcher._finish(_Heard.of(message),
                                              b.dispatcher._start(message, a.agent_id))

        before = answers()
        for index in (1, 2, 3) * 10:
            assert await from_alice({"cmd": "req", "index": index}) is not None  # taken
        assert answers() == before + REPAIRS
        assert chain_of(b, "bob", tally)[0] == length


async def test_a_thousand_chits_from_both_sides_at_once_converge(tmp_path):
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        tally = await open_tally(a, "alice", b, "bob")
        paid: dict[str, int] = {}

        async def pay(node: Node, cuid: str, count: int) -> None:
            for i in range(count):
                result = await rpc(node, "chit.pay", cuid=cuid, tally=tally, units=1 + i % 7)
                paid[result["chit"]] = result["units"] if cuid == "bob" else -result["units"]

        async def pay_many(node: Node, cuid: str, count: int) -> None:
            result = await rpc(node, "chit.pay_many", cuid=cuid, tally=tally,
                               units=[3] * count)
            paid.update({chit: 3 if cuid == "bob" else -3 for chit in result["chits"]})

        async with trio.open_nursery() as nursery:
            for _ in range(20):  # 400 single payments from each side, 20 callers each
                nursery.start_soon(pay, a, "alice", 20)
                nursery.start_soon(pay, b, "bob", 20)
            nursery.start_soon(pay_many, a, "alice", 100)  # and 100 each in one batch
            nursery.start_soon(pay_many, b, "bob", 100)
        assert len(paid) == 1000
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 1000), timeout=30)
        stock, foil = whole_chain(a, "alice", tally), whole_chain(b, "bob", tally)
        assert stock == foil  # identical chits, signatures and blocks
        assert [chit["chain"]["index"] for chit in stock] == list(range(1, 1001))
        assert {chit["uuid"] for chit in stock} == set(paid)
        assert chit_balance(stock, t.STOCK) == sum(paid.values()) == -chit_balance(foil, t.FOIL)
        for node, cuid in ((a, "alice"), (b, "bob")):  # only the newest blocks in memory
            for holding in (rebuilt(node, cuid, tally), node_holding(node, cuid, tally)):
                assert len(holding.chain.chits) <= 2 * CHAIN_WINDOW
                assert holding.chain.chits[-1] == stock[-1]
                assert ch.balance(holding.chain) == holding.balance == chit_balance(
                    stock, holding.local.side)
        listed = await rpc(b, "chit.list", cuid="bob", tally=tally)
        assert [x["index"] for x in listed] == list(range(1, 1001))
        paged, start = [], 1  # a page at a time, each from the block after the last one shown
        while page := await rpc(b, "chit.list", cuid="bob", tally=tally, start=start, limit=300):
            paged.append(page)
            start = page[-1]["index"] + 1
        assert [len(page) for page in paged] == [300, 300, 300, 100]
        assert [x for page in paged for x in page] == listed
        assert listed[-1]["hash"] == (await rpc(a, "tally.show", cuid="alice",
                                                tally=tally))["chain"]["hash"]
        # Alice asks for the blocks from 1 again, as a partner restored from a backup does:
        # bob's node reads them back from its rows, and alice's takes them as known.
        message = await send_raw(a, b, "bob", "chit", "chain",
                                 {"cmd": "req", "tally": tally, "index": 1}, "alice")
        await wait_for(lambda: a.db.read_one("SELECT count(*) FROM outbox WHERE id = ?",
                                             (message,))[0] == 0)  # taken
        await wait_for(lambda: b.db.read_one("SELECT count(*) FROM outbox")[0] == 0)
        assert whole_chain(a, "alice", tally) == whole_chain(b, "bob", tally) == stock
        assert agreed(a, "alice", b, "bob", tally, 1000)
        for node, cuid in ((a, "alice"), (b, "bob")):
            assert (await rpc(node, "tally.show", cuid=cuid, tally=tally))["error"] is None


async def test_limits_closing_and_invoices(tmp_path):
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        tally = await open_tally(a, "alice", b, "bob", limit=1000)
        depth = a.db.read_one("SELECT count(*) FROM outbox")[0]
        over = await refused(a, "chit.pay", cuid="alice", tally=tally, units=1001)
        assert over.reason == "OVER_LIMIT" and "limit of 1000" in over.message
        assert a.db.read_one("SELECT count(*) FROM outbox")[0] == depth  # nothing sent
        many = await refused(a, "chit.pay_many", cuid="alice", tally=tally, units=[600, 600])
        assert many.reason == "OVER_LIMIT" and many.message.startswith(
            "OVER_LIMIT: units[1], after 600 in this call before it (nothing was paid): 600 "
            "would bring alice (stock)'s debt")
        assert a.db.read_one("SELECT count(*) FROM outbox")[0] == depth
        await rpc(a, "chit.pay", cuid="alice", tally=tally, units=600)
        # bob refuses one invoice and pays another
        for units, answer in ((100, "chit.refuse"), (200, "chit.accept")):
            bill = await rpc(a, "chit.invoice", cuid="alice", tally=tally, units=units)
            await wait_for(lambda bill=bill: b.db.read_one(
                "SELECT 1 FROM chits WHERE uuid = ?", (bill["chit"],)) is not None)
            await rpc(b, answer, cuid="bob", chit=bill["chit"])
        await wait_for(lambda: a.db.read_one("SELECT state FROM chits WHERE units = 100")[0]
                       == cs.A_VOID)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 2))
        assert chain_of(a, "alice", tally)[3] == -400
        # closing: only payments that shrink the balance, then closed at zero
        assert (await rpc(b, "tally.close", cuid="bob", tally=tally))["state"] == ts.C_OPEN
        again = await refused(b, "tally.close", cuid="bob", tally=tally)
        assert (again.reason, again.message) == ("BAD_STATE", (
            f"BAD_STATE: tally {tally} is already closing (C.open): it closes once its "
            "balance, now 400 (bob's partner owes it 400), reaches zero: only chits that "
            "bring the balance toward zero are taken"))
        await wait_for(lambda: state(a, "alice", tally) == ts.C_OPEN)
        growing = await refused(a, "chit.pay", cuid="alice", tally=tally, units=1)
        assert growing.reason == "CLOSING"
        capacity = {cuid: (await rpc(node, "tally.show", cuid=cuid, tally=tally))["capacity"]
                    for node, cuid in ((a, "alice"), (b, "bob"))}
        assert capacity == {"alice": {"pay": 0, "receive": 400},  # toward zero only
                            "bob": {"pay": 400, "receive": 0}}
        await rpc(b, "chit.pay", cuid="bob", tally=tally, units=400)
        await wait_for(lambda: state(a, "alice", tally) == state(b, "bob", tally) == ts.CLOSE)
        assert chain_of(a, "alice", tally)[3] == chain_of(b, "bob", tally)[3] == 0
        closed = await rpc(a, "tally.show", cuid="alice", tally=tally)
        assert closed["capacity"] == {"pay": 0, "receive": 0}  # a closed tally carries nothing
        late = await refused(b, "chit.pay", cuid="bob", tally=tally, units=1)
        assert late.reason == "BAD_STATE"


async def test_a_chain_repairs_itself_after_a_rejected_message(tmp_path):
    """A chit message the partner refuses for good is not retried by the outbox; the chain's
    resync brings the chit over once the partner takes it again."""
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        tally = await open_tally(a, "alice", b, "bob")
        original = b.dispatcher.services["chit"].handle
        calls = 0

        def refuse_once(tx, envelope):
            nonlocal calls
            calls += 1
            if calls == 1:
                raise Reject("BUSY", "try later")
            original(tx, envelope)

        b.dispatcher.services["chit"].handle = refuse_once
        await rpc(a, "chit.pay", cuid="alice", tally=tally, units=5)  # stock -> foil, refused
        await wait_for(lambda: b.db.read_one("SELECT error FROM tallies")[0] is None
                       and a.db.read_one("SELECT error FROM tallies")[0] is not None)
        assert "BUSY" in a.db.read_one("SELECT error FROM tallies")[0]
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 1), timeout=15)
        assert chain_of(b, "bob", tally)[3] == 5
        # the rows keep the refusal, but neither the chit bob confirmed nor the tally, whose
        # chain is settled again, shows it
        assert "BUSY" in a.db.read_one("SELECT error FROM chits")[0]
        assert "BUSY" in a.db.read_one("SELECT error FROM tallies")[0]
        assert [chit["error"] for chit in await rpc(a, "chit.list", cuid="alice",
                                                    tally=tally)] == [None]
        assert (await rpc(a, "tally.show", cuid="alice", tally=tally))["error"] is None


# -- persistence ------------------------------------------------------------------------------


class Rows:
    """Both holders of a tally in one in-memory database, wired as the chit service wires
    the ledger and the chain protocol: payments of 5, chain messages with their history."""

    def __init__(self) -> None:
        self.conn = conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.row_factory = sqlite3.Row
        migrate(conn)
        self.alice, self.bob = negotiate(limit=10**9)  # alice holds the stock, bob the foil
        self.ledger = ledger = Ledger()
        conn.execute("BEGIN")
        self.stock = ledger.save(conn, ledger.create(conn, "alice", self.alice, 1), 2,
                                 chain=ch.start(self.alice))
        self.foil = ledger.save(conn, ledger.create(conn, "bob", self.bob, 1), 2,
                                chain=ch.start(self.bob))

    def pay(self, holding, key, count):
        paid = [c.pay(holding.local, key, chit_uuid=str(uuid.uuid4()), units=5, date_ms=3,
                      balance=0)[0] for _ in range(count)]
        chain, messages = ch.add_many(holding.chain, [chit.chit for chit in paid], holding.local)
        delta = -5 * count
        saved = self.ledger.save(self.conn, holding, 3, chain=chain, balance_delta=delta,
                                 fresh=paid)
        return saved, messages

    def receive(self, holding, messages):
        replies = []
        for message in messages:  # from the partner's user to ours
            sender = holding.local.partner.cuid
            assert (message.to.cuid, message.from_cuid) == (holding.cuid, sender)
            obj = unpack(pack(message.object))
            chain, history, _ = self.ledger.named(self.conn, holding,
                                                  ch.wanted(holding.chain, obj))
            got = ch.receive(chain, obj, holding.local, history)
            adopted = [c.receive_good(None, chit, holding.local, balance=0)[0]
                       for chit in got.adopted]
            holding = self.ledger.save(self.conn, holding, 4, chain=got.chain, fresh=adopted,
                                       balance_delta=5 * len(adopted))
            replies += got.messages
        return holding, replies


def test_the_ledger_stores_chains_row_by_row_and_rebuilds_them_after_a_rollback():
    rows = Rows()
    conn, ledger, alice, pay, receive = rows.conn, rows.ledger, rows.alice, rows.pay, rows.receive
    stock, foil = rows.stock, rows.foil
    stock, news = pay(stock, ALICE.key, 3)  # wait unlinked until the foil orders them
    assert conn.execute("SELECT count(*) FROM chits WHERE chain_index IS NULL").fetchone()[0] == 3
    foil, upds = pay(foil, BOB.key, 2)  # linked at once, at 1 and 2
    stock, acks = receive(stock, upds)
    foil, ordered = receive(foil, news)  # the stock's three, linked at 3 to 5
    stock, acks = receive(stock, ordered)
    foil, _ = receive(foil, acks)
    conn.execute("COMMIT")
    assert stock.chain.chits == foil.chain.chits and stock.chain.length == 5
    assert ch.settled(foil.chain) and not stock.chain.pending
    assert stock.balance == ch.balance(stock.chain) == -foil.balance == -5
    for holding in (stock, foil):
        assert Ledger().get(conn, alice.uuid, holding.cuid) == holding  # the rows alone
    indexes = conn.execute("SELECT chain_index FROM chits WHERE cuid = 'alice' ORDER BY seq")
    assert [row[0] for row in indexes] == [3, 4, 5, 1, 2]

    conn.execute("BEGIN")
    conn.execute("SAVEPOINT job")
    ledger.save(conn, stock, 5, balance_delta=1000)
    conn.execute("ROLLBACK TO job")
    conn.execute("COMMIT")
    before = ledger.rebuilds
    assert ledger.get(conn, alice.uuid, "alice").balance == -5
    assert ledger.rebuilds == before + 1  # the token went back: the cached copy was stale
    assert ledger.get(conn, alice.uuid, "alice") is ledger.get(conn, alice.uuid, "alice")


def test_a_long_chain_is_held_by_its_newest_blocks_and_reads_older_ones_back():
    rows = Rows()
    conn, ledger = rows.conn, rows.ledger
    stock, news = rows.pay(rows.stock, ALICE.key, 50)  # ordered at 251 to 300
    foil, upds = rows.pay(rows.foil, BOB.key, 250)
    for _ in range(4):  # until neither side has anything to say
        stock, replies = rows.receive(stock, upds)
        foil, upds = rows.receive(foil, news + replies)
        news = []
    assert (foil.chain.length, foil.chain.conf, stock.chain.conf) == (300, 300, 300)
    whole = [{**unpack(body), "chain": unpack(block)} for body, block in conn.execute(
        "SELECT body, block FROM chits WHERE cuid = 'bob' ORDER BY chain_index")]
    for holding in (stock, foil, ledger.get(conn, foil.local.uuid, "bob"),
                    Ledger().get(conn, foil.local.uuid, "bob")):  # saved, cached, rebuilt
        assert holding.chain.base > 0 and len(holding.chain.chits) <= 2 * CHAIN_WINDOW
        assert list(holding.chain.chits) == whole[holding.chain.base:]
        assert ch.balance(holding.chain) == holding.balance
    # A restored partner asks from block 1: the blocks come back from the rows.
    to_bob = ChipAddress(agent=foil.local.tally[t.FOIL]["cert"]["chad"]["agent"], cuid="bob")
    req = {"cmd": "req", "tally": foil.local.uuid, "index": 1}
    foil, (upd,) = rows.receive(foil, [Send(to_bob, "chit", "chain", req, "alice")])
    assert upd.object["chits"] == whole[:ch.UPD_BATCH]
    # ... and the stock takes that late copy of blocks it forgot as what it holds already.
    before = stock.chain
    stock, replies = rows.receive(stock, [upd])
    assert replies == [] and stock.chain.chits == before.chits and stock.balance == 250 * 5 - 50 * 5


# -- views ------------------------------------------------------------------------------------


async def viewed_tally(net, tmp_path) -> tuple[Node, Node, Node, str]:
    """carol (n0) may view alice's tallies on a (started here); alice's with bob (n1)."""
    carol, b = net.nodes
    config = dataclasses.replace(node_config(tmp_path, "alice"), relay_access=(
        AccessRule(carol.agent_id, "tally:*"),))
    a = await start_node(net.nursery, config)
    net.nodes.append(a)
    net.introduce()
    await users(a, "alice")
    await users(b, "bob")
    return carol, a, b, await open_tally(a, "alice", b, "bob")


async def test_a_chits_view_too_large_to_answer_is_refused_before_it_is_read_whole(
        tmp_path, monkeypatch):
    """A tally of 50,000 chits was read whole, in the writer's transaction, and refused
    only once encoded (0.7 s of the writer and 50 MB a query, which a peer the access
    rules let in could ask again and again); then read until it could not fit, 68 ms, the
    rows coming sorted. Too many chits to fit is refused by their count, nothing read; a
    count that might fit is read until it cannot."""
    read: list[int] = []

    def counted(conn, uuid, cuid, rows=relay_store.holder_chits):
        for row in rows(conn, uuid, cuid):
            read.append(1)
            yield row

    monkeypatch.setattr(relay_store, "holder_chits", counted)
    async with network(tmp_path, n=2) as net:
        carol, a, b, tally = await viewed_tally(net, tmp_path)
        for _ in range(60):
            await rpc(b, "chit.pay", cuid="bob", tally=tally, units=1)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 60))
        address = f"{a.listen_address}/{a.config.network}/tally:{tally}:chits"
        for bound, most in ((4096, 0), (16_000, 59)):  # 60 chits: 12,000 bytes at the least
            monkeypatch.setattr(relay_driver, "MAX_PAYLOAD", bound)
            read.clear()
            asked = await rpc(carol, "relay.query", address=address)
            done = await rpc(carol, "relay.wait", request_id=asked["request_id"])
            assert done["status"] == "ERROR", done
            assert done["error"] == (
                f"the source could not serve the view: UNAVAILABLE: the view of tally {tally}'s"
                f" 60 chits is more than the {bound} bytes a relay answer may carry (tally:"
                f"{tally} shows its balance and chain)"), done
            assert len(read) <= most and (most == 0 or read), (bound, len(read))


async def test_a_relay_view_of_a_real_tally(tmp_path):
    async with network(tmp_path, n=2) as net:
        carol, a, b, tally = await viewed_tally(net, tmp_path)
        await rpc(b, "chit.pay", cuid="bob", tally=tally, units=42)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 1))
        for view in (f"tally:{tally}", f"tally:{tally}:chits"):
            asked = await rpc(carol, "relay.query",
                              address=f"{a.listen_address}/{a.config.network}/{view}")
            done = await rpc(carol, "relay.wait", request_id=asked["request_id"])
            assert done["status"] == "COMPLETED", done
            assert done["view"]["signers"] == [a.agent_id]
            payload = done["view"]["payload"]
            _, _, head, _ = chain_of(a, "alice", tally)
            if view.endswith(":chits"):
                [entry] = payload["chits"]
                assert (entry["chit"]["units"], entry["chit"]["by"], entry["state"],
                        entry["index"]) == (42, "foil", cs.A_GOOD, 1)
                assert entry["hash"] == b64u(head)
            else:
                [holder] = payload["holders"]
                assert (holder["cuid"], holder["state"], holder["balance"]) == ("alice", "open", 42)
                assert holder["chain"] == {"index": 1, "head": b64u(head), "confirmed": 1}
                shown = render("relay.wait", done).splitlines()  # -H: as tally.list's CHAIN
                assert re.split(r"\s{2,}", shown[shown.index("    holders:") + 2].strip()) == [
                    "alice", "stock", "open", f"{b.agent_id[:8]}…", "42", "1/1"], shown
                signed = payload["signed"]
                assert signed["uuid"] == tally and signed["sign"]["stock"] and \
                    signed["sign"]["foil"]  # the tally as both users signed it


# -- bad input --------------------------------------------------------------------------------


async def test_a_ticket_whose_inviter_is_down_is_unreachable_at_once(tmp_path, monkeypatch):
    """tally.request while nothing listens at the inviter's address waited the whole 10 s
    for a TIMEOUT, where peers.ping gives up half a second in: it is UNREACHABLE as soon as
    the dial is refused (the wait here is 20 s, which the call does not wait out), naming
    why. A node that is there but slow (a listener that never answers the handshake) is
    still waited for, and times out without a stale dial failure's reason."""
    monkeypatch.setattr("agentd.services.credit.tallies.REQUEST_TIMEOUT", 20.0)
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        down, slow = [(await rpc(a, "tally.invite", cuid="alice"))["ticket"] for _ in "ab"]
        await net.stop(0)
        late = await refused(b, "tally.request", cuid="bob", ticket=down)
        assert late.reason == "UNREACHABLE", late.message
        assert late.message.startswith(
            f"cannot reach the inviter's node {a.agent_id}: cannot reach {a.listen_address}: "
            f"connection refused; nothing listens there: is n0 (agent {a.agent_id[:8]}) "
            "running, "), late.message
        assert late.message.endswith(  # forgetting the address would strand the request
            "and is that where it listens? check the address learned for it "
            f"(peers.list; learned from a ticket, a tally or a route): if it moved, peers.add "
            f"name=… agent={a.agent_id} address=HOST:PORT dials it there (the request stays in"
            " the outbox and will be retried)"), late.message
        monkeypatch.setattr("agentd.services.credit.tallies.REQUEST_TIMEOUT", 1.0)
        host, port = parse_hostport(a.listen_address)
        with socket.create_server((host, port)):  # takes the connection, never answers
            late = await refused(b, "tally.request", cuid="bob", ticket=slow)
        assert (late.reason, late.message) == ("TIMEOUT", (
            f"the inviter's node {a.agent_id} did not answer within 1 s (the request stays in "
            "the outbox and will be retried)"))


async def test_bad_tickets_are_refused_with_the_reason(tmp_path):
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob", "carol")
        expiring = await rpc(a, "tally.invite", cuid="alice", expires_s=0.05)
        await trio.sleep(0.1)
        expired = await refused(b, "tally.request", cuid="bob", ticket=expiring["ticket"])
        assert expired.reason == "EXPIRED"
        # the inviter checks too, whatever the subject's clock says
        presented = {"token": tf.decode_ticket(expiring["ticket"])["token"],
                     "cert": tf.make_cert(b.own_address("bob"), "bob", user_key(b, "bob").public,
                                         0)}
        message = await send_raw(b, a, "alice", "tally", "ticket", presented, "bob")
        assert (await refusal_of(b, message)).startswith("EXPIRED")
        once = await rpc(a, "tally.invite", cuid="alice")
        first = await rpc(b, "tally.request", cuid="bob", ticket=once["ticket"])
        # bob presenting it again is taken again until alice offers; then told where it is
        assert await rpc(b, "tally.request", cuid="bob", ticket=once["ticket"]) == first
        reused = await refused(b, "tally.request", cuid="carol", ticket=once["ticket"])
        assert reused.reason == "BAD_TICKET" and "already used" in reused.message
        twice = await refused(b, "tally.request", cuid="bob", ticket=once["ticket"] * 2)
        assert twice.reason == "BAD_TICKET" and "pasted twice" in twice.message
        await rpc(a, "tally.offer", cuid="alice", tally=once["tally"])
        presented = {"token": tf.decode_ticket(once["ticket"])["token"],
                     "cert": tf.make_cert(b.own_address("bob"), "bob", user_key(b, "bob").public,
                                         0)}  # bob's node itself refuses: the tally is its own
        message = await send_raw(b, a, "alice", "tally", "ticket", presented, "bob")
        refusal = await refusal_of(b, message)  # offered: draft.offer, H.offer once bob acks
        assert re.fullmatch(f"BAD_TICKET: you used this ticket already: tally {once['tally']} "
                            r"is (draft|H)\.offer at the inviter's node \(.*\)", refusal), refusal
        forged = tf.make_ticket(a.own_address("alice"), "guessed-token", a.clock.now_ms() + 60_000)
        unknown = await refused(b, "tally.request", cuid="bob", ticket=tf.encode_ticket(forged))
        assert unknown.reason == "BAD_TICKET" and "never issued" in unknown.message
        garbled = await refused(b, "tally.request", cuid="bob", ticket="not-a-ticket")
        assert garbled.reason == "BAD_TICKET"
        assert (await refused(b, "tally.request", cuid="nobody", ticket=once["ticket"])).code == (
            NOT_FOUND)
        assert a.db.read_one("SELECT count(*) FROM tallies WHERE state != 'draft'")[0] == 1


async def test_bad_signatures_and_strangers_change_nothing(tmp_path):
    async with network(tmp_path, n=3) as net:
        a, b, m = await one_user_each(net, "alice", "bob", "mallory")
        tally = await open_tally(a, "alice", b, "bob")
        await rpc(b, "chit.pay", cuid="bob", tally=tally, units=10)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 1))
        before = chain_of(a, "alice", tally)
        bob_key, wrong = user_key(b, "bob"), SigningKey.generate()

        bob_cert = tf.make_cert(b.own_address("bob"), "bob", bob_key.public, 1)
        alice_cert = rebuilt(a, "alice", tally).local.tally[t.STOCK]["cert"]

        async def offer_to_alice(key: SigningKey) -> str:
            """A first offer of a new tally from bob to alice, signed by ``key``: refused."""
            draft, _ = t.invite(tally_uuid=str(uuid.uuid4()), date_ms=1, cert=bob_cert, limit=5)
            draft.tally[t.FOIL]["cert"] = alice_cert
            core = core_digest(draft.tally)
            signed = {**draft.tally, "sign": {"hash": core, t.STOCK: key.sign(core), t.FOIL: None}}
            message = await send_raw(b, a, "alice", "tally", "offer", signed, "bob")
            refusal = await refusal_of(b, message)
            assert state(a, "alice", draft.uuid) is None
            return refusal

        assert (await offer_to_alice(wrong)).startswith("BAD_SIGNATURE")
        # a well-signed offer alice never asked for (she presented no ticket of bob's for it):
        # anyone with her certificate could otherwise fill her tally list
        for _ in range(3):
            assert (await offer_to_alice(bob_key)).startswith("NOT_REQUESTED")
        assert len(await rpc(a, "tally.list", cuid="alice")) == 1

        # a chit signed by the wrong key, and a chit reusing a uuid with other contents
        forged = chit_by(wrong, tally, t.FOIL, 5)
        message = await send_raw(b, a, "alice", "chit", "good", forged, "bob")
        assert (await refusal_of(b, message)).startswith("BAD_SIGNATURE")
        [first] = await rpc(b, "chit.list", cuid="bob", tally=tally)
        twin = chit_by(bob_key, tally, t.FOIL, 999, chit_uuid=first["chit"])
        message = await send_raw(b, a, "alice", "chit", "good", twin, "bob")
        assert (await refusal_of(b, message)).startswith("CONFLICT")

        # a well-signed chit bob's own node would never have signed: past alice's limit
        over = chit_by(bob_key, tally, t.FOIL, LIMIT + 1)
        message = await send_raw(b, a, "alice", "chit", "good", over, "bob")
        assert (await refusal_of(b, message)).startswith("OVER_LIMIT")
        # ... nor one carried in the chain, as a good message lost on the way would be
        carried = chit_by(user_key(a, "alice"), tally, t.STOCK, 2 * LIMIT)  # bob owes 10
        message = await send_raw(a, b, "bob", "chit", "chain",
                                 {"cmd": "new", "tally": tally, "chits": [carried]}, "alice")
        assert (await refusal_of(a, message)).startswith("OVER_LIMIT")

        # messages from an agent that is not party to the tally
        for target, action, obj in (
            ("chit", "good", chit_by(user_key(m, "mallory"), tally, t.FOIL, 5)),
            ("tally", "close", {"uuid": tally}),
            ("chit", "chain", {"cmd": "req", "tally": tally, "index": 1}),
        ):
            message = await send_raw(m, a, "alice", target, action, obj, "mallory")
            assert (await refusal_of(m, message)).startswith("UNKNOWN_TALLY"), action
        # ... or that names a user this node does not have
        message = await send_raw(m, a, "nobody", "tally", "close", {"uuid": tally}, "mallory")
        assert (await refusal_of(m, message)).startswith("UNKNOWN_USER")
        assert chain_of(a, "alice", tally) == before and state(a, "alice", tally) == ts.OPEN


async def test_a_counter_offer_from_a_stranger_is_refused(tmp_path):
    async with network(tmp_path, n=3) as net:
        a, b, m = await one_user_each(net, "alice", "bob", "mallory")
        invited = await rpc(a, "tally.invite", cuid="alice")
        tally = invited["tally"]
        await rpc(b, "tally.request", cuid="bob", ticket=invited["ticket"])
        await rpc(a, "tally.offer", cuid="alice", tally=tally)
        await wait_for(lambda: state(a, "alice", tally) == ts.H_OFFER)
        # mallory learned the uuid and offers alice "the same" tally with herself as partner
        mallory_key = user_key(m, "mallory")
        ours = rebuilt(a, "alice", tally).local.tally
        hijack = {**ours, "version": 2, t.FOIL: {"cert": tf.make_cert(
            m.own_address("mallory"), "mallory", mallory_key.public, 1), "terms": {"limit": 9}}}
        digest = core_digest(hijack)
        hijack["sign"] = {"hash": digest, t.STOCK: None, t.FOIL: mallory_key.sign(digest)}
        message = await send_raw(m, a, "alice", "tally", "offer", hijack, "mallory")
        assert (await refusal_of(m, message)).startswith("NOT_REQUESTED")  # as for no tally
        assert state(a, "alice", tally) == ts.H_OFFER


async def test_chits_for_a_tally_that_is_not_open_and_replays(tmp_path):
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        invited = await rpc(a, "tally.invite", cuid="alice")
        draft = invited["tally"]
        await rpc(b, "tally.request", cuid="bob", ticket=invited["ticket"])
        early = chit_by(user_key(b, "bob"), draft, t.FOIL, 5)
        message = await send_raw(b, a, "alice", "chit", "good", early, "bob")
        assert (await refusal_of(b, message)).startswith("BAD_STATE")
        assert (await refused(a, "chit.pay", cuid="alice", tally=draft, units=1)).reason == (
            "BAD_STATE")

        tally = await open_tally(a, "alice", b, "bob")
        await net.stop(0)  # bob's payment waits in his outbox, where we can read it
        await rpc(b, "chit.pay", cuid="bob", tally=tally, units=30)
        [row] = b.db.read("SELECT body FROM outbox WHERE action = 'good'"
                          " AND state = 'pending'")
        envelope = unpack(row["body"])
        a = await net.restart(0)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 1))
        await wait_for(lambda: b.pump.depth == 0)
        settled = chain_of(a, "alice", tally)

        async def replay(envelope: dict) -> None:
            def job(conn):
                outbox.enqueue(conn, message_id=envelope["id"], peer=a.agent_id,
                               address=a.listen_address, target="chit", action="good",
                               body=pack(envelope), now_ms=b.clock.now_ms())

            await wait_for(lambda: b.db.read_one(
                "SELECT 1 FROM outbox WHERE id = ?", (envelope["id"],)) is None)
            await b.db.write(job)
            b.pump.add(envelope["id"], a.agent_id, a.listen_address, envelope, 0)
            await processed(b, envelope["id"])

        duplicates = a.counters.duplicates
        await replay(envelope)  # the very same message: acked and ignored
        assert a.counters.duplicates == duplicates + 1
        await replay({**envelope, "id": uuid.uuid4().bytes})  # a copy under a new id
        assert chain_of(a, "alice", tally) == settled
        assert len(await rpc(a, "chit.list", cuid="alice", tally=tally)) == 1


async def test_a_tally_not_held_yet_is_told_from_one_never_to_be_held(tmp_path):
    """The subject of a ticket holds the tally from the inviter's offer on: until then its
    user is told the wait (tally.show shows the request), and once the tally is held,
    nothing more. A uuid the user never asked for (another node's, or one opened after the
    backup a node was restored from) gets no wait to try, only where its tallies are listed.
    By its start as -H shows it (``agentd.services.credit.ids``) alike: the wait, and the
    other user holding it."""
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await rpc(a, "users.add", cuid="ann")
        await rpc(b, "users.add", cuid="bob")
        invited = await rpc(a, "tally.invite", cuid="ann")
        tally = invited["tally"]
        await rpc(b, "tally.request", cuid="bob", ticket=invited["ticket"])
        for given in (tally, tally[:8] + "…"):
            shown = await rpc(b, "tally.show", cuid="bob", tally=given)
            assert (shown["tally"], shown["state"]) == (tally, "requested")
            waiting = await refused(b, "chit.list", cuid="bob", tally=given)
            assert (waiting.reason, waiting.message) == ("UNKNOWN_TALLY", (
                f"user bob holds no tally {tally} yet: it presented the tally's ticket, and "
                "holds it from the inviter's offer on, unless the inviter refused the ticket "
                "(tally.wait state=P.offer waits for it)"))
        other = str(uuid.uuid4())
        never = await refused(b, "chit.pay", cuid="bob", tally=other, units=1)
        assert (never.reason, never.message) == ("UNKNOWN_TALLY", (
            f"user bob holds no tally {other} (tally.list cuid=bob lists those it holds)"))
        await rpc(a, "tally.offer", cuid="ann", tally=tally)
        offered = await rpc(b, "tally.wait", cuid="bob", tally=tally[:8], state="P.offer",
                            timeout_s=10)
        assert (offered["tally"], offered["state"]) == (tally, ts.P_OFFER)
        await rpc(b, "users.add", cuid="bea")  # another user of bob's node: told who holds it
        other = await refused(b, "tally.show", cuid="bea", tally=tally[:8])
        assert other.message.endswith(f"user bea holds no tally {tally}: on this node bob "
                                      "holds it (cuid=bob)")


async def test_a_requested_tally_is_listed_and_shown_until_the_offer_makes_it(tmp_path):
    """After tally.request the subject's node holds only the request, and tally.list did not
    list it until the inviter offered: a user could not see what it had asked for. It is
    listed, in its place by age, and shown as ``requested``, with its partner, what the
    offer brings null and the rest 0; the offer's tally then takes its place."""
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await rpc(a, "users.add", cuid="ann")
        await rpc(b, "users.add", cuid="bob")
        own = await rpc(b, "tally.invite", cuid="bob")  # a draft of bob's, older
        invited = await rpc(a, "tally.invite", cuid="ann")
        tally = invited["tally"]
        requested = await rpc(b, "tally.request", cuid="bob", ticket=invited["ticket"])
        draft, listed = await rpc(b, "tally.list", cuid="bob")
        assert draft["tally"] == own["tally"] and listed.keys() == draft.keys()
        assert listed == {
            "tally": tally, "cuid": "bob", "side": None, "state": "requested",
            "partner": requested["partner"], "balance": 0, "limit": None,
            "partner_limit": None, "version": None, "memo": None,
            "chain": {"index": 0, "hash": None, "confirmed": 0, "pending": 0, "missing": 0},
            "error": None, "capacity": {"pay": 0, "receive": 0}, "reserved": {"in": 0, "out": 0}}
        assert requested["partner"].startswith(f"ann:{a.agent_id}@")
        assert await rpc(b, "tally.list") == [draft, listed]  # every user's alike
        shown = await rpc(b, "tally.show", cuid="bob", tally=tally)
        assert shown == {**listed, "date": None, "signed": [], "evidence": None}
        await rpc(b, "users.add", cuid="bea")  # bea asked for nothing
        assert await rpc(b, "tally.list", cuid="bea") == []
        wrong = await refused(b, "tally.show", cuid="bea", tally=tally)  # who asked for it
        assert wrong.message.endswith(f"user bea holds no tally {tally}: on this node bob "
                                      "requested it (cuid=bob)"), wrong.message
        await rpc(a, "tally.offer", cuid="ann", tally=tally)
        await rpc(b, "tally.wait", cuid="bob", tally=tally, state="P.offer", timeout_s=10)
        assert [(row["tally"], row["state"]) for row in await rpc(b, "tally.list", cuid="bob")
                ] == [(own["tally"], "draft"), (tally, ts.P_OFFER)]


async def test_rpc_parameters_are_checked(tmp_path):
    async with network(tmp_path, n=1) as net:
        (a,) = net.nodes
        await users(a, "alice")
        for method, params, words in (
            ("tally.invite", {"cuid": "alice", "limit": -1}, "limit"),
            ("tally.invite", {"cuid": "alice", "side": "left"},
             "side must be one of stock, foil, not 'left'"),  # the value given, quoted
            ("tally.invite", {"cuid": "alice", "expires_s": 0},
             "expires_s must be a number of seconds in (0, 31536000], not 0"),
            ("tally.offer", {"cuid": "alice", "tally": "nope"}, "tally"),
            ("chit.pay", {"cuid": "alice", "tally": str(uuid.uuid4()), "units": 0}, "units"),
            ("chit.pay", {"cuid": "alice", "tally": str(uuid.uuid4()), "units": 1.5}, "units"),
            ("chit.pay_many", {"cuid": "alice", "tally": str(uuid.uuid4()), "units": []},
             "units"),
            ("chit.pay_many", {"cuid": "alice", "tally": str(uuid.uuid4()), "units": [5, 0]},
             "units[1] must be"),  # which of them
            ("chit.invoice", {"cuid": "alice", "tally": str(uuid.uuid4()), "units": 1,
                              "memo": 5}, "memo"),
            ("tally.list", {"cuid": "no body"}, "cuid"),
            ("chit.list", {"cuid": "alice", "tally": str(uuid.uuid4()), "start": 0}, "start"),
            ("chit.list", {"cuid": "alice", "tally": str(uuid.uuid4()), "limit": 0}, "limit"),
            ("chit.list", {"cuid": "alice", "tally": str(uuid.uuid4()), "limit": 2**64},
             "limit"),
        ):
            error = await refused(a, method, **params)
            assert error.reason == "INVALID_PARAMS" and words in error.message, method
        missing = await refused(a, "tally.show", cuid="alice", tally=str(uuid.uuid4()))
        assert (missing.code, missing.reason) == (NOT_FOUND, "UNKNOWN_TALLY")
        assert missing.message.endswith("(tally.list cuid=alice lists those it holds)")
        missing = await refused(a, "chit.accept", cuid="alice", chit=str(uuid.uuid4()))
        assert (missing.code, missing.reason) == (NOT_FOUND, "UNKNOWN_CHIT")
        missing = await refused(a, "chit.pay", cuid="alice", tally=str(uuid.uuid4()), units=1)
        assert (missing.code, missing.reason) == (NOT_FOUND, "UNKNOWN_TALLY")
        assert (await refused(a, "tally.list", cuid="zed")).reason == "UNKNOWN_USER"
        # a user before a tally, a ticket or a route: UNKNOWN_USER, saying where to look
        elsewhere = ChipAddress(agent=SigningKey.generate().agent_id, cuid="ivy",
                                host="127.0.0.1", port=9)
        ticket = tf.encode_ticket(tf.make_ticket(elsewhere, b64u(bytes(24)), 2**40))
        for method, params in (("chit.pay", {"tally": str(uuid.uuid4()), "units": 1}),
                               ("tally.show", {"tally": str(uuid.uuid4())}),
                               ("tally.invite", {}), ("tally.request", {"ticket": ticket}),
                               ("route.find", {"find": str(elsewhere), "units": 1})):
            missing = await refused(a, method, cuid="zed", **params)
            assert (missing.reason, missing.message) == (
                "UNKNOWN_USER", "no user 'zed' on this node (n0: users.list shows its users)"
            ), method
        assert await rpc(a, "peers.list") == []  # the refused ticket taught it no address
        selfward = await refused(a, "route.find", cuid="alice", find=f"alice:{a.agent_id}",
                                 units=1)
        assert (selfward.reason, selfward.message) == (
            "INVALID_PARAMS", "route.find: find is the payor itself: lift.clear finds a circle")
        for timeout_s in (0, -1, 30.5):  # the range is (0, 30]; the help says so too
            late = await refused(a, "route.find", cuid="alice", find=f"zed:{a.agent_id}",
                                 units=1, timeout_s=timeout_s)
            assert (late.reason, late.message) == (
                "INVALID_PARAMS", "route.find: timeout_s must be more than 0 and at most 30 "
                f"seconds (the search's time budget), not {timeout_s}")
        help_text = " ".join(method_help("route.find").split())
        assert "(more than 0 and at most 30; default 2)" in help_text


def test_chain_add_many_batches_what_add_would_send_one_by_one():
    pair = Pair()
    chits = [c.pay(pair.foil.local, BOB.key, chit_uuid=pair.next_uuid(), units=1, date_ms=1,
                   balance=0)[0] for _ in range(250)]
    pair.foil.chits.update({chit.uuid: chit for chit in chits})
    pair.foil.chain, messages = ch.add_many(pair.foil.chain, [chit.chit for chit in chits],
                                              pair.foil.local)
    assert [len(m.object["chits"]) for m in messages] == [100, 100, 50]
    assert {m.object["cmd"] for m in messages} == {"upd"}
    pair.post(pair.foil, messages)
    pair.drain()
    pair.assert_agreed()
    assert pair.stock.chain.length == 250
    with pytest.raises(t.Refusal):
        ch.add_many(pair.stock.chain, [chits[0].chit], pair.stock.local)  # the foil user's chit


async def test_a_chit_in_flight_when_the_tally_closes_reopens_it(tmp_path):
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        tally = await open_tally(a, "alice", b, "bob")
        await net.stop(1)  # bob's node is down: alice's close waits in her outbox
        assert (await rpc(a, "tally.close", cuid="alice", tally=tally))["state"] == ts.CLOSE
        await net.stop(0)  # ... and now alice's is down while bob, still open, pays
        b = await net.restart(1)
        await rpc(b, "chit.pay", cuid="bob", tally=tally, units=100)
        a = await net.restart(0)  # both messages cross: the close and the late chit
        await wait_for(lambda: state(a, "alice", tally) == state(b, "bob", tally) == ts.C_OPEN,
                       timeout=20)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 1), timeout=20)
        assert chain_of(a, "alice", tally)[3] == 100  # owed all the same
        # only a chit that shrinks the balance is taken now; at zero the tally closes again
        assert (await refused(b, "chit.pay", cuid="bob", tally=tally, units=1)).reason == \
            "CLOSING"
        await rpc(a, "chit.pay", cuid="alice", tally=tally, units=100)
        await wait_for(lambda: state(a, "alice", tally) == state(b, "bob", tally) == ts.CLOSE,
                       timeout=20)
        assert chain_of(a, "alice", tally)[3] == chain_of(b, "bob", tally)[3] == 0


async def test_a_partners_invoices_waiting_for_an_answer_are_bounded(tmp_path, monkeypatch,
                                                                     caplog):
    """Each invoice waiting for our user is a row: past MAX_INVOICES on a tally the next is
    refused (TOO_MANY_INVOICES) until our user answers one. The refusal is logged once on
    the sender's node, naming the tally."""
    monkeypatch.setattr("agentd.services.credit.chits.MAX_INVOICES", 3)
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        tally = await open_tally(a, "alice", b, "bob")

        async def invoice() -> str:
            return (await rpc(b, "chit.invoice", cuid="bob", tally=tally, units=10))["chit"]

        def waiting() -> int:
            return a.db.read_one("SELECT count(*) FROM chits WHERE tally = ? AND cuid = 'alice'"
                                 " AND state = 'L.pend'", (tally,))[0]

        first = [await invoice() for _ in range(3)]
        await wait_for(lambda: waiting() == 3)
        fourth = await invoice()

        def error_of(chit: str) -> str | None:
            row = b.db.read_one("SELECT error FROM chits WHERE uuid = ?", (chit,))
            return row["error"] if row is not None else None

        await wait_for(lambda: "TOO_MANY_INVOICES" in (error_of(fourth) or ""))
        assert waiting() == 3
        said = [r.getMessage() for r in caplog.records
                if r.levelname == "WARNING" and "TOO_MANY_INVOICES" in r.getMessage()]
        assert len(said) == 1 and re.match(
            f"{re.escape(a.agent_id[:8])} refused chit/pend \\(id [0-9a-f]{{12}}, tally {tally}\\):"
            " TOO_MANY_INVOICES: ", said[0]), said
        await rpc(a, "chit.refuse", cuid="alice", chit=first[0])
        await invoice()
        await wait_for(lambda: waiting() == 3 and a.db.read_one(
            "SELECT count(*) FROM chits WHERE tally = ? AND cuid = 'alice'", (tally,))[0] == 4)
