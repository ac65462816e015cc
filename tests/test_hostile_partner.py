"""A tally partner that lies, and a stranger that makes records up: what their messages can
make a node hold, send or log, and that a refused one changes nothing (real nodes: loopback,
Noise, SQLite)."""

from __future__ import annotations

import uuid

from agentd.services.credit import ledger, repair
from protocol import chain as ch
from protocol import lift as lf
from protocol import tally_states as ts
from protocol.chain_state import block_hash
from protocol.keys import ChipAddress, SigningKey
from tests.netfixture import network, wait_for
from tests.test_credit_service import (
    agreed,
    chit_by,
    open_tally,
    processed,
    rebuilt,
    refusal_of,
    refused,
    rpc,
    send_raw,
    state,
    user_key,
    users,
)
from tests.test_refusing_partner import alice_and_bob


async def test_a_made_up_void_does_not_replace_the_void_heard_on_the_real_record(tmp_path):
    """alice's node hears the referee's void on bob's lift before its promise (it never
    reached her). Anyone can then make up a record with the lift's uuid, sign it as its own
    referee and send a void on it: that void verifies against its own record only, but it
    took the real one's place, so the real promise, coming late, was taken (and its chit
    held until the referee was asked) instead of refused."""
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        tally = await open_tally(b, "bob", a, "alice")
        record = lf.make_record(
            lift_uuid=str(uuid.uuid4()), kind="linear", units=5, path=[
                {"cuid": "bob", "agent": b.agent_id, "tally": tally},
                {"cuid": "alice", "agent": a.agent_id, "tally": None}],
            referee=ChipAddress(agent=b.agent_id), date_ms=b.clock.now_ms(), life_ms=60_000,
            memo="", key=user_key(b, "bob"))
        void, _ = lf.decide(None, "cancel", record, now_ms=b.clock.now_ms(), key=b.key,
                            asker=b.agent_id)
        heard = await send_raw(b, a, "alice", "lift", "decision",
                               {"record": record, "decision": void}, "bob")
        await processed(b, heard)
        liar = SigningKey.generate()  # a referee of the record it makes up
        made_up = lf.make_record(
            lift_uuid=record["lift"], kind="linear", units=1, path=record["path"],
            referee=ChipAddress(agent=liar.agent_id), date_ms=b.clock.now_ms(),
            life_ms=60_000, memo="", key=SigningKey.generate())
        its_void, _ = lf.decide(None, "cancel", made_up, now_ms=b.clock.now_ms(), key=liar,
                                asker=b.agent_id)
        told = await send_raw(b, a, None, "lift", "decision",
                              {"record": made_up, "decision": its_void}, None)
        await processed(b, told)
        late = await send_raw(b, a, "alice", "lift", "promise", {"record": record, "hop": 0},
                              "bob")
        assert (await refusal_of(b, late)).startswith("BAD_STATE")
        assert a.db.read_one("SELECT count(*) FROM lifts")[0] == 0
        assert a.db.read_one("SELECT count(*) FROM chits WHERE type = 'lift'")[0] == 0
        await wait_for(lambda: b.pump.depth == 0)


async def test_a_partner_refusing_the_decisions_it_is_shown_is_logged_once_a_while(
        tmp_path, caplog):
    """bob's node refuses every decision alice's node sends it (as a partner that keeps its
    chain message coming while refusing the decision that answers it makes alice's node
    send one at each repair, on a lift of its choosing): alice's node logged a warning for
    each refusal; now the first of each code in a minute per partner, the rest counted."""
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        sent = []
        for _ in range(5):
            record = lf.make_record(
                lift_uuid=str(uuid.uuid4()), kind="linear", units=5, path=[
                    {"cuid": "alice", "agent": a.agent_id, "tally": str(uuid.uuid4())},
                    {"cuid": "bob", "agent": b.agent_id, "tally": None}],
                referee=ChipAddress(agent=a.agent_id), date_ms=a.clock.now_ms(),
                life_ms=60_000, memo="", key=user_key(a, "alice"))
            decision = {"lift": record["lift"]}  # not a decision: refused BAD_FIELD
            sent.append(await send_raw(a, b, "bob", "lift", "decision",
                                       {"record": record, "decision": decision}, "alice"))
        for message in sent:
            assert (await refusal_of(a, message)).startswith("BAD_FIELD")
        logged = [r for r in caplog.records if "refused lift/decision" in r.getMessage()
                  and r.levelno >= 20]
        assert len(logged) == 1, [r.getMessage() for r in logged]
        assert a.counters.rejected_by_peer == 5


def give_up_after_two(monkeypatch) -> None:
    """Repairs a moment apart, that give a partner's claim up after 2 asks (ASKS)."""
    monkeypatch.setattr(ledger, "ASKS", 2)
    monkeypatch.setattr(repair, "ASKS", 2)
    monkeypatch.setattr(repair, "RESYNC_QUIET_MS", 50)


async def test_a_partner_claiming_blocks_it_never_shows_cannot_keep_a_tally_open(
        tmp_path, monkeypatch):
    """bob's node (the foil) says it holds 1,000 blocks of the tally's chain that alice's
    confirmed (an ack past her head, as a foil answers a restored stock's probe), and sends
    none when asked: alice's node asked at every repair for ever, her chain never settled,
    and the tally could not close. Now her repairs ask ASKS times (2 here, a repair a moment
    apart), then give the claim up; a new claim, the chain not having grown, is not taken,
    and the tally closes."""
    give_up_after_two(monkeypatch)
    async with network(tmp_path, n=2) as net:
        a, b, tally = await alice_and_bob(net)

        async def claim(index: int) -> None:
            said = await send_raw(b, a, "alice", "chit", "chain",
                                  {"cmd": "ack", "tally": tally, "index": index,
                                   "hash": bytes(32)}, "bob")
            await processed(b, said)

        async def missing() -> int:
            return (await rpc(a, "tally.show", cuid="alice", tally=tally))["chain"]["missing"]

        await claim(1000)
        assert await missing() == 1000
        await wait_for(lambda: ch.settled(rebuilt(a, "alice", tally).chain), timeout=30)
        assert await missing() == 0
        await claim(2000)  # again: the chain has not grown since
        assert await missing() == 0
        assert ch.settled(rebuilt(a, "alice", tally).chain)
        await rpc(a, "tally.close", cuid="alice", tally=tally)
        await wait_for(lambda: state(a, "alice", tally) == ts.CLOSE)


async def test_a_stock_claiming_blocks_it_never_shows_cannot_hold_up_the_foils_payments(
        tmp_path, monkeypatch):
    """alice's node (the stock) sends bob's a run of blocks from far past his chain, saying
    he confirmed 1,000 of them, as a stock answers a foil restored from a backup, and never
    sends the rest. bob's node, catching up, ordered nothing new: alice's payment to him
    waited unordered for ever, and his own are refused CHAIN_BEHIND while it lacks blocks.
    Now it asks ASKS times (2 here), gives the claim up, orders alice's payment, and takes
    bob's again."""
    give_up_after_two(monkeypatch)
    async with network(tmp_path, n=2) as net:
        a, b, tally = await alice_and_bob(net)
        chit = chit_by(user_key(a, "alice"), tally, "stock", 1)
        prev = bytes(32)
        chit["chain"] = {"index": 500, "prev": prev, "hash": block_hash(500, prev, chit["hash"])}
        said = await send_raw(a, b, "bob", "chit", "chain",
                              {"cmd": "upd", "tally": tally, "chits": [chit], "conf": 1000},
                              "alice")
        await processed(a, said)
        assert (await rpc(b, "tally.show", cuid="bob", tally=tally))["chain"]["missing"] == 1000
        error = await refused(b, "chit.pay", cuid="bob", tally=tally, units=5)
        assert error.reason == "CHAIN_BEHIND"
        await rpc(a, "chit.pay", cuid="alice", tally=tally, units=3)  # waits for bob's order
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 1), timeout=30)
        assert (await rpc(b, "tally.show", cuid="bob", tally=tally))["chain"]["missing"] == 0
        await rpc(b, "chit.pay", cuid="bob", tally=tally, units=5)
        await wait_for(lambda: agreed(a, "alice", b, "bob", tally, 2), timeout=30)
