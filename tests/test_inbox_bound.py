"""The inbox keeps at most ``inbox_per_peer`` ids of one peer (besides 30 days of them): a
peer we know has no write ration, and its notes alone had the node keep an id for every
message it sent in 30 days."""

from __future__ import annotations

import sqlite3

import trio

from agentd.bench.rogue import Rogue
from protocol.codec import pack
from protocol.envelope import Ack
from store import inbox
from store.schema import migrate
from tests.netfixture import network


async def _sent(rogue: Rogue, node_agent: str, bodies: list[dict]) -> None:
    """Send ``bodies`` and wait until the node acked every one."""
    await rogue.send_frames([pack(body) for body in bodies])
    wanted, acked = {body["id"] for body in bodies}, set()
    while not wanted <= acked:
        acked |= {frame.ack for frame in await rogue.receive(10) if isinstance(frame, Ack)}


async def test_a_known_peers_notes_keep_at_most_inbox_per_peer_of_its_ids(tmp_path):
    keep = 1000
    async with network(tmp_path, n=2, inbox_per_peer=keep) as net:
        node, peer = net.nodes
        rogue = await Rogue.join(node.port, node.agent_id, key=peer.key)  # the peer's key
        assert node.is_known(rogue.agent)
        sent: list[bytes] = []
        for _ in range(6):
            notes = [rogue.envelope(node.agent_id, "note", {}) for _ in range(500)]
            await _sent(rogue, node.agent_id, notes)
            sent += [note["id"] for note in notes]
        held = node.db.read_one("SELECT count(*) FROM inbox WHERE peer = ?", (rogue.agent,))[0]
        assert keep <= held <= keep + keep // 8, held  # 3,000 taken
        info = await node.rpc.call("getinfo", {})
        assert info["counters"]["inbox_trimmed"] == len(sent) - held
        # the newest are known still: sent again, each is acked as a duplicate
        duplicates, processed = node.counters.duplicates, node.counters.messages_processed
        last = {**rogue.envelope(node.agent_id, "note", {}), "id": sent[-1], "try": 2}
        await _sent(rogue, node.agent_id, [last])
        assert node.counters.duplicates == duplicates + 1
        # one of the oldest is taken again: a note changes nothing either time
        first = {**rogue.envelope(node.agent_id, "note", {}), "id": sent[0], "try": 2}
        await _sent(rogue, node.agent_id, [first])
        assert node.counters.messages_processed == processed + 1
        await rogue.aclose()


async def test_a_refused_message_neither_adds_a_row_nor_counts_toward_the_trim(tmp_path):
    """A refused message's row is undone with it. Counted anyway, a trim could land on a
    refusal and be undone too: a peer that knew when the trims came (its own count) could
    have every one land so, and keep as many rows as it liked (counted, the 560 refusals
    moved the trims to the 66th note and every 125th after: 1,059 rows left, not 1,124)."""
    keep = 1000
    async with network(tmp_path, n=2, inbox_per_peer=keep) as net:
        node, peer = net.nodes
        rogue = await Rogue.join(node.port, node.agent_id, key=peer.key)
        refused = [rogue.envelope(node.agent_id, "open", {"uuid": "x"}, target="tally")
                   for _ in range(560)]  # no such tally
        await _sent(rogue, node.agent_id, refused)
        assert node.db.read_one("SELECT count(*) FROM inbox")[0] == 0
        for _ in range(9):  # then 1,125 notes: looked at at the first (a peer new to the
            # count), then at every 125th after: the one at 1,001 leaves 1,000, and 124 follow
            notes = [rogue.envelope(node.agent_id, "note", {}) for _ in range(keep // 8)]
            await _sent(rogue, node.agent_id, notes)
        assert node.db.read_one("SELECT count(*) FROM inbox")[0] == keep + keep // 8 - 1
        await rogue.aclose()


def test_trim_keeps_exactly_the_newest_ties_and_all(tmp_path):
    conn = sqlite3.connect(tmp_path / "db")
    migrate(conn)
    for i in range(50):  # ten ids a millisecond, another peer's beside them
        inbox.claim(conn, bytes([i]) * 16, "a", 1000 + i // 10)
        inbox.claim(conn, bytes([i]) * 8 + b"b" * 8, "b", 1000)
    assert inbox.trim(conn, "a", 25) == 25
    kept = conn.execute("SELECT received, id FROM inbox WHERE peer = 'a' "
                        "ORDER BY received, id").fetchall()
    assert len(kept) == 25 and kept[0][0] == 1002  # 1002's ten split at the edge
    assert inbox.trim(conn, "a", 25) == 0
    assert conn.execute("SELECT count(*) FROM inbox WHERE peer = 'b'").fetchone()[0] == 50


async def test_a_requestors_relay_nonces_are_kept_at_most_the_newest_bound(tmp_path,
                                                                            monkeypatch):
    """The relay's replay cache kept every nonce a week: a peer we know (no write ration)
    sent ~1,900 queries a second, ~1.6 GB an hour. It keeps a requestor's newest
    NONCES_PER_REQUESTOR, as the inbox does a peer's ids; a replay older than those could
    come only from the requestor itself, which signs its queries."""
    from agentd.services.relay import service

    monkeypatch.setattr(service, "NONCES_PER_REQUESTOR", 1000)
    async with network(tmp_path, n=2, sections={"relay": {"access": [
            {"principal": "*", "resource": "node:*"}]}}) as net:
        source, asker = net.nodes
        address = f"{source.listen_address}/{source.config.network}/node:info"
        for _ in range(1126):  # looked at at the first, then every 125th: 1,126 leaves 1,000
            await asker.rpc.call("relay.query", {"address": address})
        with trio.fail_after(60):
            while source.counters.messages_processed < 1126:
                await trio.sleep(0.05)
        assert source.db.read_one("SELECT count(*) FROM relay_nonces WHERE requestor = ?",
                                  (asker.agent_id,))[0] == 1000
        assert source.relay.nonces.trimmed == 126


def test_a_peer_whose_count_was_forgotten_is_looked_at_its_next_row():
    """Only the last 4,096 peers' counts are kept: 4,097 fresh strangers' notes between two
    of a partner's trims pushed its count out, and counted afresh it never reached a trim
    (red team: 2,000 → 3,052 rows and growing). A peer new to the count is trimmed at once."""
    from agentd.runtime.peer_rows import TRACKED, PeerRows

    trims: list[str] = []
    rows = PeerRows(1000, lambda conn, peer, keep: trims.append(peer) or 0, "ids", "key")
    for _ in range(124):
        rows.added(None, "partner")
    assert trims == ["partner"]  # its first row: a peer new to the count
    for i in range(TRACKED):
        rows.added(None, f"stranger{i}")
    rows.added(None, "partner")  # its count was pushed out: looked at again
    assert trims[-1] == "partner" and trims.count("partner") == 2
