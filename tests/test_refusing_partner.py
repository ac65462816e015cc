"""A tally partner that refuses our messages for good, as a dishonest one may: what its
refusals make our node keep (real nodes: loopback, Noise, SQLite)."""

from __future__ import annotations

from typing import Any

from agentd.runtime import dispatch
from agentd.runtime.context import Reject
from agentd.services.credit import ledger, repair
from protocol.envelope import MAX_ERROR_CODE, MAX_ERROR_MESSAGE, Ack
from store import outbox
from tests.netfixture import network, wait_for
from tests.test_credit_service import open_tally, rpc, users


async def alice_and_bob(net) -> tuple[Any, Any, str]:
    """alice's and bob's nodes, and their tally."""
    a, b = net.nodes
    await users(a, "alice")
    await users(b, "bob")
    return a, b, await open_tally(a, "alice", b, "bob", limit=10**9)


def refuse_chain_messages(monkeypatch, node) -> None:
    """``node`` refuses every chain message it is sent (``BAD_FIELD``)."""
    def refuse(tx, holding, obj):
        raise Reject("BAD_FIELD", "no")

    monkeypatch.setattr(node.credit.chits, "_on_chain", refuse)


async def test_a_partners_refusal_is_kept_cut_short(tmp_path, monkeypatch):
    """alice's node refuses bob's chain messages with a code and a message of half a
    megabyte (its own acks not cut, as a hostile node's are not). bob's node keeps the
    refusal on the message's row, the tally's error and its log: each cut as its own
    refusals are (it kept all 590 KB in each)."""
    async with network(tmp_path, n=2) as net:
        a, b, tally = await alice_and_bob(net)

        def refuse(tx, holding, obj):
            raise Reject("BAD_FIELD" * 10_000, "x" * 500_000)

        monkeypatch.setattr(dispatch, "ack_frame", lambda message_id, code=None, message="": Ack(
            message_id, None if code is None else {"code": code, "message": message}).encode())
        monkeypatch.setattr(a.credit.chits, "_on_chain", refuse)
        await rpc(b, "chit.pay_many", cuid="bob", tally=tally, units=[1] * 3)
        await wait_for(lambda: b.db.read_one(
            "SELECT count(*) FROM outbox WHERE state = 'failed'")[0] >= 1)
        most = MAX_ERROR_CODE + len(": ") + MAX_ERROR_MESSAGE
        assert b.db.read_one("SELECT max(length(error)) FROM outbox")[0] == most
        shown = await rpc(b, "tally.show", cuid="bob", tally=tally)
        assert shown["error"].startswith("chit chain: BAD_FIELDBAD_FIELD")
        assert len(shown["error"]) == len("chit chain: ") + most


async def test_a_partner_that_refuses_every_repair_costs_a_few_small_rows(tmp_path,
                                                                           monkeypatch):
    """alice's node refuses every chain message of bob's, and reconnects over and over:
    bob's repair resends his unconfirmed blocks (here 100) at once each time its channel
    opens, and each is refused again. A refused message kept its whole row for 30 days, so
    each reconnect left ~34 KB (up to ~600 KB with long memos) on bob's disk; its row now
    keeps what it was and why, not its body, and only the newest of a peer's (3 here)."""
    monkeypatch.setattr(outbox, "FAILED_KEPT", 3)
    monkeypatch.setattr(repair, "REOPENED_S", 0.0)  # each opening repairs (see below)
    async with network(tmp_path, n=2) as net:
        a, b, tally = await alice_and_bob(net)

        refuse_chain_messages(monkeypatch, a)
        await rpc(b, "chit.pay_many", cuid="bob", tally=tally, units=[1] * 100)

        def refused() -> int:
            return b.counters.rejected_by_peer

        await wait_for(lambda: refused() >= 1)
        for _ in range(5):
            for channel in list(a.peers.channels.get(b.agent_id, [])):
                channel.close("test")
            await wait_for(lambda: not a.connected(b.agent_id))
            before = refused()
            await rpc(a, "peers.ping", agent=b.agent_id)  # a channel again: bob resends
            await wait_for(lambda before=before: refused() > before)
        rows = b.db.read("SELECT action, error, length(body) FROM outbox WHERE state = 'failed'")
        assert [tuple(row) for row in rows] == [("chain", "BAD_FIELD: no", 0)] * 3


async def test_a_partner_that_reconnects_over_and_over_is_repaired_once_a_while(tmp_path,
                                                                                monkeypatch):
    """alice's node refuses bob's chain messages and reconnects five times in a row: bob's
    repair resent his 100 unconfirmed blocks each time its channel opened (at one reconnect a
    second, 100 blocks a chain a second, whatever the backoff). An opening repairs a
    partner's chains at most once in REOPENED_S now. (The backoff's own repairs are put off
    past the test, so only openings repair.)"""
    monkeypatch.setattr(ledger, "RESYNC_QUIET_MS", 10**9)
    monkeypatch.setattr(repair, "RESYNC_QUIET_MS", 10**9)
    async with network(tmp_path, n=2) as net:
        a, b, tally = await alice_and_bob(net)

        refuse_chain_messages(monkeypatch, a)
        await rpc(b, "chit.pay_many", cuid="bob", tally=tally, units=[1] * 100)
        await wait_for(lambda: b.counters.rejected_by_peer >= 1)
        first = b.counters.rejected_by_peer
        for _ in range(5):
            for channel in list(a.peers.channels.get(b.agent_id, [])):
                channel.close("test")
            await wait_for(lambda: not a.connected(b.agent_id))
            await rpc(a, "peers.ping", agent=b.agent_id)  # a channel again
            opened = b.clock.monotonic()
            await wait_for(lambda opened=opened: b.credit.repair._looked > opened)
            await wait_for(lambda: b.pump.depth == 0)  # what it sent, refused
        assert b.counters.rejected_by_peer == first + 1
