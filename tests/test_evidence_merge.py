"""Evidence of several chits of one tally goes as one clearing-house entry
(``protocol.evidence_merge``): the grouping rules alone, then on real nodes, where the
entries, receipts and the process's chain must still prove every chit."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from agentd.services.clearing import sender
from protocol import evidence_merge as merge
from protocol.codec import canonical, unpack
from protocol.evidence import evidence_object
from tests.netfixture import network, wait_for
from tests.test_clearing_service import chain_of, receipts

OWNERS = ["A" * 43]


def chit_log(pid: str, kind: str, ref: str, **kwargs: Any) -> dict[str, Any]:
    return evidence_object(pid, OWNERS, kind, {"uuid": ref, "units": 5}, ref=ref,
                           header=None, payload_type=None, mode="full", max_payload=10_000,
                           **kwargs)[1]


def test_logs_of_one_process_and_kind_that_follow_each_other_go_together():
    logs = [chit_log("P", "chit.good", "p1"), chit_log("Q", "chit.good", "q1"),
            chit_log("P", "chit.good", "p2"), chit_log("P", "chit.void", "p3"),
            chit_log("P", "chit.void", "p4"), chit_log("Q", "tally.close", "q2"),
            chit_log("Q", "chit.good", "q3"), chit_log("P", "chit.void", "p5")]
    # Q's tally.close closes its open group: q3 cannot go before it
    assert merge.group(logs, room=10_000) == [[0, 2], [1], [3, 4, 7], [5], [6]]


def test_a_group_stops_at_its_bounds_and_unmergeable_logs_go_alone():
    logs = [chit_log("P", "chit.good", f"c{n}") for n in range(merge.MAX_MERGED + 2)]
    assert [len(g) for g in merge.group(logs, room=10**9)] == [merge.MAX_MERGED, 2]
    size = len(logs[0]["payload"])
    assert [len(g) for g in merge.group(logs[:5], room=2 * size)] == [2, 2, 1]
    by_hash = evidence_object("P", OWNERS, "chit.good", {"n": 1}, ref="h", header=None,
                              payload_type=None, mode="header", max_payload=10_000)[1]
    headed = evidence_object("P", OWNERS, "chit.good", {"n": 1}, ref="x", header={"more": 1},
                             payload_type=None, mode="full", max_payload=10_000)[1]
    merged_before = merge.merged(logs[:2])
    for alone in (by_hash, headed, merged_before):
        assert not merge.mergeable(alone)
        assert merge.group([logs[0], alone, logs[1]], room=10**9) == [[0], [1], [2]]


def test_a_merged_entry_carries_every_chit_in_order_and_hashes_what_it_carries():
    logs = [chit_log("P", "chit.good", f"c{n}") for n in range(3)]
    entry = merge.merged(logs)
    assert entry["header"] == {"kind": "chit.good", "ref": "c0 c1 c2"}
    assert unpack(entry["payload"]) == [{"uuid": f"c{n}", "units": 5} for n in range(3)]
    assert entry["payload"] == canonical([{"uuid": f"c{n}", "units": 5} for n in range(3)])
    assert entry["payload_sha256"] == hashlib.sha256(entry["payload"]).hexdigest()
    assert merge.merged(logs[:1]) == logs[0]  # a lone chit's entry is as it always was


async def process_t(net) -> tuple[Any, Any, list[str], int]:
    """The house and alice's node once alice's first log made process ``T`` at the house
    (its receipt back); alice's owners, and the house's inbox rows by then."""
    house, alice = net.nodes
    owners = [alice.agent_id]

    def first(tx):
        alice.evidence.log(tx, "T", owners, "tally.open", {"n": 0}, ref="T")

    await alice.transact(first)
    await wait_for(lambda: [r["status"] for r in receipts(alice)] == ["valid"])
    return house, alice, owners, house.db.read_one("SELECT count(*) FROM inbox")[0]


async def test_a_tallys_chits_logged_in_one_linger_are_one_entry_with_one_receipt(tmp_path):
    chits = 20
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        house, alice, owners, inbox = await process_t(net)

        def work(tx):
            log = alice.evidence.log
            for n in range(chits):
                log(tx, "T", owners, "chit.good", {"n": n}, ref=f"c{n}")
                if n == 9:
                    log(tx, "T", owners, "tally.close", {"n": n}, ref="T")

        await alice.transact(work)
        await wait_for(lambda: len(receipts(alice)) == 4)
        assert house.db.read_one("SELECT count(*) FROM inbox")[0] == inbox + 1  # one message
        entries = await chain_of(alice, "T")
        assert [(e["header"]["kind"], e["header"]["ref"].split()) for e in entries] == [
            ("tally.open", ["T"]), ("chit.good", [f"c{n}" for n in range(10)]),
            ("tally.close", ["T"]), ("chit.good", [f"c{n}" for n in range(10, chits)])]
        payloads = [msgpack.unpackb(e["payload"]) for e in entries[1::2]]
        assert payloads == [[{"n": n} for n in range(10)],
                            [{"n": n} for n in range(10, chits)]]
        rows = alice.db.read("SELECT kind, ref, status FROM receipts ORDER BY seq")
        assert [(r["kind"], r["ref"], r["status"]) for r in rows][1] == (
            "chit.good", " ".join(f"c{n}" for n in range(10)), "valid")
        assert alice.db.read_one("SELECT count(*) FROM ch_requests")[0] == 0
        audit = await alice.rpc.call("receipts.verify", {"chain": True})
        assert audit["ok"] and audit["checked"] == 4, audit


async def test_a_backlog_is_read_once_however_many_batches_it_makes(tmp_path, monkeypatch):
    """600 logs that do not merge wait at once (as after a house outage): they go as three
    ``log_batch`` messages (at most 256 entries each) from one read, each log unpacked once
    (each batch read its window again: 1,032 unpacks), and every receipt comes back."""
    logs = 600
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        house, alice, owners, inbox = await process_t(net)
        unpacked = []

        def counting(data, **kwargs):
            unpacked.append(1)
            return unpack(data, **kwargs)

        monkeypatch.setattr(sender, "unpack", counting)

        def work(tx):
            for n in range(logs):
                alice.evidence.log(tx, "T", owners, "tally.close", {"n": n}, ref=f"r{n}")

        await alice.transact(work)
        await wait_for(lambda: len(receipts(alice)) == 1 + logs, timeout=30)
        assert house.db.read_one("SELECT count(*) FROM inbox")[0] == inbox + 3
        assert len(unpacked) == logs
        assert all(r["status"] == "valid" for r in receipts(alice))
