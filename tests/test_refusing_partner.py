"""A tally partner that refuses our messages for good, as a dishonest one may: what its
refusals make our node keep (real nodes: loopback, Noise, SQLite)."""

from __future__ import annotations

from agentd.runtime import dispatch
from agentd.runtime.context import Reject
from protocol.envelope import MAX_ERROR_CODE, MAX_ERROR_MESSAGE, Ack
from tests.netfixture import network, wait_for
from tests.test_credit_service import open_tally, rpc, users


async def test_a_partners_refusal_is_kept_cut_short(tmp_path, monkeypatch):
    """alice's node refuses bob's chain messages with a code and a message of half a
    megabyte (its own acks not cut, as a hostile node's are not). bob's node keeps the
    refusal on the message's row, the tally's error and its log: each cut as its own
    refusals are (it kept all 590 KB in each)."""
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        tally = await open_tally(a, "alice", b, "bob", limit=10**9)

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
