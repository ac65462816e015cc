"""The clearing house and its clients on real nodes (loopback, Noise, SQLite), one Trio process.

Node 0 has the clearing-house role and every other node names it in ``[clearinghouse]``.
Raw requests go through ``node.evidence.request`` (no client-side checks), so every refusal
asserted here is the clearing house's own answer.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from agentd.rpc import REFUSED, TIMEOUT, RpcError
from agentd.runtime.context import Reject
from agentd.runtime.node import Node
from protocol import receipts as rc
from protocol.clearing_chain import verify_chain
from protocol.evidence import log_object
from protocol.keys import SigningKey
from store import clearing as clearing_store
from tests.netfixture import network, wait_for

T_TABLES = ("ch_processes", "ch_owners", "ch_entries")


def house_state(house: Node) -> dict[str, list]:
    """Everything the clearing house stores about processes."""
    return {t: [tuple(r) for r in house.db.read(f"SELECT * FROM {t} ORDER BY 1, 2")]
            for t in T_TABLES}


async def refused(code: str, node: Node, action: str, obj: dict[str, Any]) -> str:
    with pytest.raises(Reject) as info:
        await node.evidence.request(action, obj)
    assert info.value.code == code, info.value
    return info.value.message


def log_obj(pid: str, payload: Any = "entry", **kwargs: Any) -> dict[str, Any]:
    return log_object(pid, payload, **kwargs)


async def chain_of(node: Node, pid: str) -> list[dict]:
    entries: list[dict] = []
    page = 1
    while True:
        result = await node.evidence.request(
            "query", {"pid": pid, "page": page, "size": 1000, "sort": "asc"})
        entries += result["entries"]
        if not result["has_more"]:
            return entries
        page += 1


def receipts(node: Node, pid: str | None = None) -> list:
    sql = "SELECT pid, seq, status FROM receipts"
    return node.db.read(sql + " WHERE pid = ?", (pid,)) if pid else node.db.read(sql)


async def evidence(node: Node, count: int, pid: str, owners: list[str], kind: str = "test"
                   ) -> None:
    """Queue ``count`` evidence logs in one transaction, as a service would."""
    def work(tx):
        for n in range(count):
            node.evidence.log(tx, pid, owners, kind, {"n": n}, ref=f"{kind}-{n}")

    await node.transact(work)


async def test_access_matrix_refusals_change_nothing(tmp_path):
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        house, alice, carol = net.nodes
        await alice.evidence.request("create_process", {"pid": "p", "owners": []})
        first = await alice.evidence.request("log", log_obj("p"))
        document_id = first["document_id"]
        await carol.evidence.request("log", log_obj("carols"))
        before = house_state(house)
        big = b"x" * (house.config.max_frame // 4 + 1)
        cases = [
            ("NOT_AUTHORIZED", carol, "log", log_obj("p")),
            ("NOT_AUTHORIZED", carol, "query", {"pid": "p"}),
            ("NOT_AUTHORIZED", carol, "get", {"pid": "p", "id": document_id}),
            ("NOT_FOUND", alice, "query", {"pid": "nope"}),
            ("NOT_FOUND", alice, "get", {"pid": "nope", "id": document_id}),
            ("BAD_PARAMETERS", alice, "create_process", {"pid": "default"}),
            ("BAD_PARAMETERS", alice, "create_process", {"pid": ""}),
            ("BAD_PARAMETERS", alice, "log", log_obj("default")),
            ("BAD_PARAMETERS", alice, "log", log_obj("")),
            ("BAD_PARAMETERS", alice, "create_process", {"pid": "p"}),  # owner: exists
            ("NOT_AUTHORIZED", carol, "create_process", {"pid": "p"}),  # non-owner
            ("BAD_PARAMETERS", alice, "create_process", {"pid": "q", "owners": ["bob"]}),
            ("MALFORMED_MESSAGE", alice, "log", {"pid": "p", "header": {}}),
            ("MALFORMED_MESSAGE", alice, "log", {**log_obj("p"), "header": "text"}),
            ("MALFORMED_MESSAGE", alice, "log", {**log_obj("p"), "extra": 1}),
            ("BAD_PARAMETERS", alice, "log", {**log_obj("p"), "payload_sha256": "0" * 64}),
            ("BAD_PARAMETERS", alice, "log", log_obj("p", big)),
            ("BAD_PARAMETERS", alice, "log", log_obj("p", b"")),
            ("BAD_PARAMETERS", alice, "query", {"pid": "p", "page": 0}),
            ("BAD_PARAMETERS", alice, "query", {"pid": "p", "size": 1001}),
            ("BAD_PARAMETERS", alice, "query", {"pid": "p", "date_from": "2024-13-01"}),
            ("BAD_PARAMETERS", alice, "query",
             {"pid": "p", "date_from": "2024-02-02", "date_to": "2024-02-01"}),
            ("BAD_PARAMETERS", alice, "query", {"pid": "p", "sort": "up"}),
            ("NOT_FOUND", alice, "get", {"pid": "p", "id": "a" * 64}),
            ("NOT_FOUND", carol, "get", {"pid": "carols", "id": document_id}),  # other pid
            ("BAD_PARAMETERS", alice, "get", {"pid": "p", "id": "not-a-hash"}),
        ]
        for code, node, action, obj in cases:
            message = await refused(code, node, action, obj)
            assert message, (action, obj)
        assert house_state(house) == before
        # Refusals were replies to delivered requests, not error acks.
        assert house.counters.rejected.get("refused", 0) == 0
        assert alice.counters.rejected_by_peer == carol.counters.rejected_by_peer == 0
        # A page beyond the end is empty, not an error.
        empty = await alice.evidence.request("query", {"pid": "p", "page": 2, "size": 1})
        assert empty["entries"] == [] and empty["total"] == 1 and not empty["has_more"]


async def test_rpc_errors_carry_the_ids_code(tmp_path):
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        _, alice, carol = net.nodes
        await alice.rpc.call("ch.create_process", {"pid": "p"})
        with pytest.raises(RpcError) as info:
            await carol.rpc.call("ch.query", {"pid": "p"})
        assert info.value.code == REFUSED and info.value.reason == "NOT_AUTHORIZED"
        assert info.value.message.startswith("NOT_AUTHORIZED: ")
        with pytest.raises(RpcError) as info:
            await alice.rpc.call("ch.query", {"pid": "p", "size": 1001})
        assert info.value.reason == "BAD_PARAMETERS" and "1001" in info.value.message
        with pytest.raises(RpcError) as info:
            await alice.rpc.call("ch.log", {"pid": "p", "payload": "x", "mode": "loud"})
        assert info.value.reason == "INVALID_PARAMS"
        with pytest.raises(RpcError) as info:  # a seq where the document id goes
            await alice.rpc.call("ch.get", {"pid": "p", "id": 2})
        assert info.value.reason == "INVALID_PARAMS"
        assert info.value.message == "ch.get: id must be text, not 2"
        with pytest.raises(RpcError) as info:
            await alice.rpc.call("ch.get", {"pid": "p", "id": "2"})
        assert info.value.message == (
            "ch.get: id must be a document id (the 64 lowercase hex digits ch.log and ch.query "
            "give as document_id), not '2'")


async def test_a_mistyped_owner_or_time_is_invalid_params_not_a_round_trip(tmp_path):
    """ch.create_process owners=bob and ch.query date_from=yesterday went to the clearing
    house and came back refused (-32010 BAD_PARAMETERS); they are now checked here, as
    every other method's params are: -32602 naming the param and the value, and nothing is
    sent (the clearing house is stopped: a request sent would time out)."""
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        _, alice = net.nodes
        await alice.rpc.call("ch.create_process", {"pid": "p"})
        await net.stop(0)
        queued = alice.pump.depth_if_readable()
        for method, params, message in (
            ("ch.create_process", {"pid": "q", "owners": "bob"},
             "owners: agent id must be 43 base64url characters: 'bob' (peers.list shows the "
             "agent ids this node knows)"),
            ("ch.create_process", {"pid": "q", "owners": [alice.agent_id, "x" * 43]},
             "owners: agent id is not a canonical 32-byte base64url key"),
            ("ch.query", {"pid": "p", "date_from": "yesterday"},
             "date_from: 'yesterday' is neither integer ms since the epoch nor a YYYY-MM-DD day"),
            ("ch.query", {"pid": "p", "date_to": "2024-02-30"},
             "date_to: '2024-02-30': day is out of range for month"),
            ("ch.query", {"pid": "p", "date_from": -1}, "date_from: -1 ms is outside 0..2^63-1"),
            ("ch.query", {"pid": "p", "date_from": "2024-05-02", "date_to": "2024-05-01"},
             "date_from '2024-05-02' is after date_to '2024-05-01': no entry can be in between"),
            ("ch.query", {"pid": "p", "page": 0}, "page: 0 is below 1"),
            ("ch.query", {"pid": "p", "size": 0}, "size: 0 is below 1"),
            ("ch.query", {"pid": "p", "size": 10**20},
             "size: 100000000000000000000 is above 2^63-1"),
            ("ch.query", {"pid": "p", "sort": "newest"}, "sort must be asc or desc, not 'newest'"),
            # a pid no clearing house takes: it waited for the house's refusal (10 s, and a
            # retry while it was down, after which the refusal went unseen)
            ("ch.log", {"pid": "default", "payload": "x"}, "pid: 'default' is reserved"),
            ("ch.create_process", {"pid": ""}, "pid: must not be empty"),
            ("ch.query", {"pid": "a b"}, "pid: 'a b' is not 1 to 128 printable non-space"),
            ("ch.get", {"pid": "x" * 129, "id": "0" * 64}, "pid: 'xxxx"),
            ("ch.log_many", {"entries": [{"pid": "default", "payload": "x"}]},
             "entries[0]: pid: 'default' is reserved"),
            # "$: float is not allowed in canonical data" named neither the param nor a way out
            ("ch.log", {"pid": "p", "payload": 3.14}, "payload: float is not allowed in canonical"
             """ data: a number with a fraction cannot be logged (signed data holds integers """
             """only): give it as text, in quotes (on the command line, payload='"3.14"')"""),
            ("ch.log", {"pid": "p", "payload": "x", "header": {"rate": 1.5}},
             "header: rate: float is not allowed"),
            ("ch.log", {"pid": "p", "payload": "x", "payload_type": ""},
             "payload_type is empty: leave it out for the default"),
        ):
            with pytest.raises(RpcError) as info:
                await alice.rpc.call(method, params)
            assert (info.value.code, info.value.reason) == (-32602, "INVALID_PARAMS")
            assert info.value.message.startswith(f"{method}: {message}"), info.value.message
        assert alice.pump.depth_if_readable() == queued  # nothing was sent


async def test_what_a_reply_could_not_carry_is_refused_before_it_is_read(tmp_path,
                                                                         monkeypatch):
    """At the 1 MiB max_frame: a header over a quarter of a frame is refused, so every entry
    fits the answer to a get; one nested deeper than a peer takes is not even sent; a page
    whose stored entries are too large for one reply is refused (TOO_MANY_RESULTS) before a
    row of it is read, and a smaller page still works."""
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        house, alice = net.nodes
        with pytest.raises(RpcError) as info:
            await alice.rpc.call("ch.log", {"pid": "p", "payload": "x",
                                            "header": {"notes": "y" * (257 << 10)}})
        assert info.value.reason == "BAD_PARAMETERS" and "log.header" in info.value.message
        deep: dict[str, Any] = {}
        for _ in range(40):
            deep = {"a": deep}
        with pytest.raises(RpcError) as info:  # a peer would refuse it as malformed: not sent
            await alice.rpc.call("ch.log", {"pid": "p", "payload": "x", "header": deep})
        assert info.value.reason == "TOO_LARGE" and "deeper than 32" in info.value.message
        assert alice.pump.depth == 0
        logged = [await alice.rpc.call("ch.log", {"pid": "p", "payload": "z" * (250 << 10)})
                  for _ in range(5)]
        read = []
        query = clearing_store.query
        monkeypatch.setattr(clearing_store, "query", lambda *a: read.append(1) or query(*a))
        with pytest.raises(RpcError) as info:
            await alice.rpc.call("ch.query", {"pid": "p", "size": 5})
        assert info.value.reason == "TOO_MANY_RESULTS" and read == []
        page = await alice.rpc.call("ch.query", {"pid": "p", "size": 3})
        assert len(page["entries"]) == 3 and page["has_more"] and read == [1]
        for done in logged:
            entry = await alice.rpc.call("ch.get", {"pid": "p", "id": done["document_id"]})
            assert entry["seq"] == done["seq"]
        assert house.counters.unacked_failures == 0


async def test_two_clients_share_a_process_and_a_third_is_refused(tmp_path):
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        _, alice, bob, carol = net.nodes
        created = await alice.rpc.call("ch.create_process",
                                       {"pid": "deal-1", "owners": [bob.agent_id]})
        assert created["owners"] == sorted([alice.agent_id, bob.agent_id])
        as_text = await alice.rpc.call("ch.create_process",  # as owners=ID1,ID2 on the CLI
                                       {"pid": "deal-2", "owners": f"{bob.agent_id}, "})
        assert as_text["owners"] == created["owners"]
        logged = []
        for node, text in ((alice, "offer"), (bob, "accept"), (alice, "deliver")):
            logged.append(await node.rpc.call("ch.log", {"pid": "deal-1", "payload": text}))
        assert [r["seq"] for r in logged] == [1, 2, 3]
        with pytest.raises(RpcError) as info:
            await carol.rpc.call("ch.log", {"pid": "deal-1", "payload": "me too"})
        assert info.value.reason == "NOT_AUTHORIZED"
        page = await bob.rpc.call("ch.query", {"pid": "deal-1", "sort": "asc"})
        assert [e["payload_text"] for e in page["entries"]] == ["offer", "accept", "deliver"]
        assert [e["client_id"] for e in page["entries"]] == [alice.agent_id, bob.agent_id,
                                                            alice.agent_id]
        assert page["total"] == 3 and page["has_more"] is False
        entry = await bob.rpc.call("ch.get", {"pid": "deal-1", "id": logged[1]["document_id"]})
        assert entry["seq"] == 2 and entry["prev_hash"] == logged[0]["document_id"]
        second = await alice.rpc.call("ch.query", {"pid": "deal-1", "page": 2, "size": 2})
        assert [e["seq"] for e in second["entries"]] == [1] and second["has_more"] is False
        for node, count in ((alice, 2), (bob, 1)):
            listed = await node.rpc.call("receipts.list", {})
            assert len(listed) == count and all(r["status"] == "valid" for r in listed)
            result = await node.rpc.call("receipts.verify", {"chain": True})
            assert result == {"ok": True, "checked": count, "pending": 0,
                              "pending_detail": [], "chains": 1, "failures": []}


async def test_concurrent_appends_from_two_owners_make_one_chain(tmp_path):
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        _, alice, bob = net.nodes
        await alice.rpc.call("ch.create_process", {"pid": "hot", "owners": [bob.agent_id]})
        results: list[dict] = []

        async def writer(node: Node, n: int) -> None:
            results.append(await node.rpc.call("ch.log", {"pid": "hot", "payload": f"{n}"}))

        async with trio.open_nursery() as nursery:
            for n in range(40):
                nursery.start_soon(writer, alice if n % 2 else bob, n)
        assert sorted(r["seq"] for r in results) == list(range(1, 41))
        entries = await chain_of(alice, "hot")
        verify_chain(entries)
        assert [e["entry_hash"] for e in entries] == [
            r["document_id"] for r in sorted(results, key=lambda r: r["seq"])]


async def test_log_batch_judges_each_entry_on_its_own(tmp_path):
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        house, alice, carol = net.nodes
        await carol.evidence.request("log", log_obj("carols"))
        await alice.evidence.request("log", log_obj("mine", "first"))
        before = house_state(house)
        entries = [log_obj("mine", "a"), log_obj("carols", "b"), {"pid": "mine"},
                   log_obj("default", "c"), log_obj("new", "d"), log_obj("mine", "e")]
        result = await alice.evidence.request("log_batch", {"entries": entries})
        outcomes = result["results"]
        assert [o.get("code") for o in outcomes] == [
            None, "NOT_AUTHORIZED", "MALFORMED_MESSAGE", "BAD_PARAMETERS", None, None]
        jwks = await alice.evidence.request("keys", {})
        claims = [rc.verify_receipt(f"{result['signed']}~{o['entry']}", jwks)
                  for o in outcomes if "entry" in o]
        assert [(c["process_id"], c["seq"]) for c in claims] == [
            ("mine", 2), ("new", 1), ("mine", 3)]
        after = house_state(house)
        assert [e for e in after["ch_entries"] if e[0] == "carols"] == [
            e for e in before["ch_entries"] if e[0] == "carols"]
        verify_chain(await chain_of(alice, "mine"))
        assert "0 entries" in await refused("BAD_PARAMETERS", alice, "log_batch", {"entries": []})
        refused_all = await alice.evidence.request("log_batch", {"entries": [log_obj("carols")]})
        assert refused_all == {"results": [{"code": "NOT_AUTHORIZED", "message": (
            "log.pid: you are not an owner of 'carols'")}]}  # nothing signed, no 'signed'


async def test_concurrent_ch_log_calls_are_batched_and_each_gets_its_receipt(tmp_path):
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        _, alice, carol = net.nodes
        await carol.rpc.call("ch.log", {"pid": "carols", "payload": "mine"})
        await alice.rpc.call("ch.log", {"pid": "many", "payload": "warm-up"})
        sizes: list[int] = []
        send_batch = alice.evidence.sender._send_batch

        async def spy(batch: list) -> None:
            sizes.append(len(batch))
            await send_batch(batch)

        alice.evidence.sender._send_batch = spy  # type: ignore[method-assign]
        results: dict[int, dict] = {}
        refusals: list[str] = []

        async def caller(n: int) -> None:
            pid = "carols" if n % 7 == 0 else "many"
            try:
                results[n] = await alice.rpc.call("ch.log", {"pid": pid, "payload": f"{n}"})
            except RpcError as exc:
                refusals.append(exc.reason)

        async with trio.open_nursery() as nursery:
            for n in range(120):
                nursery.start_soon(caller, n)
        assert sum(sizes) == 120 and max(sizes) > 1
        assert refusals == ["NOT_AUTHORIZED"] * len(range(0, 120, 7))
        assert sorted(r["seq"] for r in results.values()) == list(range(2, 2 + len(results)))
        entries = await chain_of(alice, "many")
        verify_chain(entries)
        by_seq = {e["seq"]: e for e in entries}
        for n, result in results.items():
            entry = by_seq[result["seq"]]
            assert entry["payload"] == f"{n}".encode()
            assert result["document_id"] == entry["entry_hash"]
        listed = await alice.rpc.call("receipts.list", {"pid": "many"})
        assert len(listed) == len(results) + 1 and all(r["status"] == "valid" for r in listed)
        verified = await alice.rpc.call("receipts.verify", {"chain": True})
        assert verified["ok"] is True and verified["pending"] == 0


async def test_ch_log_many_answers_each_entry_in_order_under_one_signature(tmp_path):
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        house, alice, carol = net.nodes
        await carol.rpc.call("ch.log", {"pid": "carols", "payload": "mine"})
        before = house_state(house)
        for bad, message in (
            ([], "1 to 1000"),
            ([{"pid": "x"}], "entries[0] has no payload"),
            (["x"], "entries[0] must be an object with pid and payload"),
            ([{"pid": "x", "payload": "a"}, {"pid": "x", "payload": "b", "loud": 1}],
             "entries[1] has unknown key 'loud'; an entry takes header, mode, payload,"),
            ([{"pid": "x", "paylod": "a"}],
             "entries[0] has unknown key 'paylod' (did you mean payload"),
            ([{"pid": "x", "payload": "a", "mode": "loud"}], "entries[0]: log mode 'loud'"),
        ):
            with pytest.raises(RpcError) as info:
                await alice.rpc.call("ch.log_many", {"entries": bad})
            assert info.value.reason == "INVALID_PARAMS" and message in info.value.message
        assert house_state(house) == before  # a bad call logs nothing at all

        entries = [{"pid": "deal", "payload": f"line {n}"} for n in range(5)]
        entries.insert(2, {"pid": "carols", "payload": "not yours"})
        entries.append({"pid": "deal", "payload": "by hash", "mode": "hash"})
        results = await alice.rpc.call("ch.log_many", {"entries": entries})
        assert [r.get("error", {}).get("code") for r in results] == [
            None, None, "NOT_AUTHORIZED", None, None, None, None]
        granted = [r for r in results if "receipt" in r]
        assert [r["seq"] for r in granted] == [1, 2, 3, 4, 5, 6]
        signed = {r["receipt"].split("~")[0] for r in granted}
        assert len(signed) == 1  # one batch, one signature
        jwks = await alice.evidence.request("keys", {})
        chain = {e["seq"]: e for e in await chain_of(alice, "deal")}
        for result in granted:
            claims = rc.verify_receipt(result["receipt"], jwks,
                                       expect=rc.entry_claims(chain[result["seq"]]))
            assert claims["document_id"] == result["document_id"]
        listed = await alice.rpc.call("receipts.list", {"pid": "deal"})
        assert [r["status"] for r in listed] == ["valid"] * 6
        dotted = await alice.rpc.call("ch.log", {"pid": "notes...", "payload": "x"})
        assert [r["seq"] for r in await alice.rpc.call(  # a whole pid, not a cut one
            "receipts.list", {"pid": "notes..."})] == [dotted["seq"]]


async def test_clearing_house_restarted_mid_stream_loses_nothing(tmp_path):
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        _, alice, bob = net.nodes
        owners = [alice.agent_id, bob.agent_id]
        await evidence(alice, 150, "tally-1", owners, "a")
        await evidence(bob, 150, "tally-1", owners, "b")
        house = net.nodes[0]
        await wait_for(lambda: house.db.read_one("SELECT count(*) FROM ch_entries")[0] > 0)
        await net.restart(0)  # some logged, some in flight, some still queued
        await evidence(alice, 50, "tally-1", owners, "c")

        def all_receipts() -> bool:
            """every log answered with a receipt, checked (none waiting for the JWKS)"""
            counts = [(len(rows), sum(r["status"] == "unchecked" for r in rows))
                      for rows in (receipts(alice), receipts(bob))]
            return counts == [(200, 0), (150, 0)]

        await wait_for(all_receipts, timeout=25)
        entries = await chain_of(alice, "tally-1")
        assert [e["seq"] for e in entries] == list(range(1, 351))
        verify_chain(entries)
        refs = {e["header"]["ref"] for e in entries}
        assert len(refs) == 350  # each evidence logged exactly once
        for node in (alice, bob):
            assert all(r["status"] == "valid" for r in receipts(node))
            result = await node.rpc.call("receipts.verify", {"chain": True})
            assert result["ok"], result["failures"]


async def test_evidence_logged_together_goes_as_one_batch_under_one_signature(tmp_path):
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        house, alice, bob = net.nodes
        owners = [alice.agent_id, bob.agent_id]
        await evidence(alice, 1, "tally-3", owners, "tally.open")  # the process exists now
        # ... and its receipt is checked: the keys request it needed has been answered too
        await wait_for(lambda: [r["status"] for r in receipts(alice)] == ["valid"])
        before = house.db.read_one("SELECT count(*) FROM inbox")[0]
        await evidence(alice, 40, "tally-3", owners, "tally.close")  # one transaction
        await wait_for(lambda: len(receipts(alice)) == 41)
        assert house.db.read_one("SELECT count(*) FROM inbox")[0] == before + 1  # one message
        rows = alice.db.read("SELECT ref, token, status FROM receipts WHERE kind = 'tally.close'"
                             " ORDER BY seq")
        assert [r["ref"] for r in rows] == [f"tally.close-{n}" for n in range(40)]
        assert {r["status"] for r in rows} == {"valid"}
        assert len({r["token"].split("~")[0] for r in rows}) == 1  # one signature for all
        result = await alice.rpc.call("receipts.verify", {"chain": True})
        assert result["ok"] and result["checked"] == 41 and result["pending"] == 0, result


async def test_a_refused_entry_of_an_evidence_batch_is_kept_as_refused(tmp_path):
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        house, alice, bob = net.nodes
        await bob.evidence.request("create_process", {"pid": "bobs", "owners": []})
        # alice believes the process is hers to log to: the clearing house will say no
        await alice.db.write(lambda conn: clearing_store.set_client_process(
            conn, house.agent_id, "bobs", "ready"))
        await evidence(alice, 1, "mine", [alice.agent_id], "tally.open")
        await wait_for(lambda: len(receipts(alice)) == 1)

        def work(tx):
            log = alice.evidence.log
            log(tx, "mine", [alice.agent_id], "tally.close", {"n": 1}, ref="ok-1")
            log(tx, "bobs", [alice.agent_id], "tally.close", {"n": 2}, ref="refused")
            log(tx, "mine", [alice.agent_id], "tally.close", {"n": 3}, ref="ok-2")

        await alice.transact(work)
        await wait_for(lambda: len(receipts(alice)) == 3)
        refused = alice.db.read("SELECT ref, error FROM ch_requests WHERE state = 'refused'")
        assert [(r["ref"], r["error"].split(":")[0]) for r in refused] == [
            ("refused", "NOT_AUTHORIZED")]
        audit = await alice.rpc.call("receipts.verify", {})
        assert audit["checked"] == 3 and audit["pending"] == 0
        assert [f["fault"] for f in audit["failures"]] == ["refused"]


async def test_a_clearing_house_logs_its_own_evidence_at_once_without_messages(tmp_path):
    """What a clearing house logs of its own (a referee's lift decisions) is appended in the
    transaction that made it, with its receipt: no create_process or log goes round through
    its own outbox and inbox. The receipt verifies offline like any other, and every owner
    reads the process. A process that is not its own to append to falls back to a request,
    refused and recorded as such."""
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        house, alice, bob = net.nodes
        inbox = house.db.read_one("SELECT count(*) FROM inbox")[0]
        await house.transact(lambda tx: house.evidence.log(
            tx, "lift-1", [alice.agent_id, bob.agent_id], "lift.decision", {"n": 1}))
        # committed: the entry and its checked receipt are there already, nothing to send
        assert [tuple(r) for r in receipts(house, "lift-1")] == [("lift-1", 1, "valid")]
        assert house.db.read_one("SELECT count(*) FROM outbox")[0] == 0
        assert house.db.read_one("SELECT count(*) FROM inbox")[0] == inbox
        assert house.db.read_one("SELECT count(*) FROM ch_requests")[0] == 0
        assert clearing_store.owners(house.db._reader, "lift-1") == sorted(
            [house.agent_id, alice.agent_id, bob.agent_id])
        entries = await chain_of(alice, "lift-1")
        assert [entry["header"]["kind"] for entry in entries] == ["lift.decision"]
        audit = await house.rpc.call("receipts.verify", {"chain": True})
        assert audit["ok"] and audit["checked"] == 1 and audit["pending"] == 0, audit

        await bob.evidence.request("create_process", {"pid": "bobs", "owners": []})
        await house.transact(lambda tx: house.evidence.log(
            tx, "bobs", [alice.agent_id], "lift.decision", {"n": 2}, ref="theirs"))
        await wait_for(lambda: house.db.read(
            "SELECT ref FROM ch_requests WHERE state = 'refused'"))
        refused = house.db.read("SELECT ref, error FROM ch_requests WHERE state = 'refused'")
        assert [(r["ref"], r["error"].split(":")[0]) for r in refused] == [
            ("theirs", "NOT_AUTHORIZED")]
        assert receipts(house, "bobs") == []


async def test_evidence_left_waiting_by_a_stopped_node_is_sent_when_it_starts(tmp_path):
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        _, alice = net.nodes
        await evidence(alice, 1, "tally-4", [alice.agent_id], "tally.open")
        await wait_for(lambda: len(receipts(alice)) == 1)
        alice.evidence.sender.evidence_due = lambda: None  # as if the node stopped before sending
        await evidence(alice, 5, "tally-4", [alice.agent_id], "tally.close")
        await trio.sleep(0.2)
        waiting = alice.db.read_one("SELECT count(*) FROM ch_requests WHERE state = 'waiting'")
        assert waiting[0] == 5
        alice = await net.restart(1)
        await wait_for(lambda: len(receipts(alice)) == 6)
        assert [e["seq"] for e in await chain_of(alice, "tally-4")] == [1, 2, 3, 4, 5, 6]


async def test_evidence_whose_answer_never_came_is_sent_again(tmp_path, monkeypatch):
    """A clearing house drops its answer after an hour; a client down longer never gets it.
    Once its request has been delivered that long, the client asks again: a process still
    ``creating`` is created again (``BAD_PARAMETERS``: it exists, so it is ready) and its logs
    go; a log goes again in the next batch, and the second entry's receipt is kept. What a
    previous run left unanswered counts as delivered when it was made."""
    monkeypatch.setattr("agentd.services.clearing.lost.ANSWER_LOST_MS", 0)
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        house, alice = net.nodes
        answers = alice.evidence.answers
        assert not await alice.evidence.lost.check()  # the first look: nothing owed

        async def delivered_unanswered(then) -> None:
            answers.on_reply = lambda tx, envelope: None  # taken, and never applied
            await then()
            await wait_for(lambda: not clearing_store.ready_logs(alice.db._reader, 1) and (
                alice.db.read_one("SELECT count(*) FROM outbox")[0] == 0))  # sent, delivered

        async def answers_lost(then) -> None:
            await delivered_unanswered(then)
            del answers.on_reply
            # the dropped answers were taken: nothing more is to come from the clearing house
            await wait_for(lambda: house.db.read_one("SELECT count(*) FROM outbox")[0] == 0)
            await alice.evidence.lost.check()  # notes when they were delivered
            await trio.sleep(0.01)
            assert await alice.evidence.lost.check()  # and sends them again

        await answers_lost(lambda: evidence(alice, 2, "tally-9", [alice.agent_id], "tally.open"))
        await wait_for(lambda: len(receipts(alice)) == 2)
        assert clearing_store.client_process(alice.db._reader, house.agent_id, "tally-9") == (
            "ready")
        await answers_lost(lambda: evidence(alice, 1, "tally-9", [alice.agent_id], "chit.good"))
        await wait_for(lambda: len(receipts(alice)) == 3)
        refs = [e["header"]["ref"] for e in await chain_of(alice, "tally-9")]
        assert refs == ["tally.open-0", "tally.open-1", "chit.good-0", "chit.good-0"]
        assert alice.db.read_one("SELECT count(*) FROM ch_requests")[0] == 0
        assert not await alice.evidence.lost.check()  # nothing owed: the checks stop

        await delivered_unanswered(
            lambda: evidence(alice, 1, "tally-9", [alice.agent_id], "chit.void"))
        await wait_for(lambda: house.db.read_one("SELECT count(*) FROM outbox")[0] == 0)
        alice = await net.restart(1)  # back before the answer came: it never will
        assert await alice.evidence.lost.check()  # its first look sends it again at once
        await wait_for(lambda: len(receipts(alice)) == 4)
        audit = await alice.rpc.call("receipts.verify", {"chain": True})
        assert audit["ok"] and audit["checked"] == 4 and audit["pending"] == 0, audit


async def test_a_receipt_whose_keys_are_on_their_way_is_pending_not_failed(tmp_path,
                                                                           monkeypatch):
    """The first receipt from a clearing house waits for its JWKS: ``receipts.verify`` counts
    it as pending meanwhile, not as a failure. A JWKS answer that never comes is asked for
    again, and the receipt is then checked."""
    monkeypatch.setattr("agentd.services.clearing.lost.ANSWER_LOST_MS", 0)
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        house, alice = net.nodes
        alice.evidence.answers._keys = lambda tx, row, obj: None  # taken, never applied
        await evidence(alice, 1, "tally-7", [alice.agent_id], "tally.open")
        await wait_for(lambda: len(receipts(alice)) == 1 and alice.db.read_one(
            "SELECT count(*) FROM outbox")[0] == 0)  # the keys question went, and was taken
        assert [r["status"] for r in receipts(alice)] == ["unchecked"]
        audit = await alice.rpc.call("receipts.verify", {})
        [received] = alice.db.read("SELECT received FROM receipts")
        assert audit == {"ok": True, "checked": 0, "pending": 1, "pending_detail": [
            {"clearing_house": house.agent_id, "configured": True, "logs": 0, "keys": 1,
             "since": received[0], "problem": None}], "failures": []}
        del alice.evidence.answers._keys
        assert await alice.evidence.lost.check()  # asks for the keys again
        await wait_for(lambda: [r["status"] for r in receipts(alice)] == ["valid"])
        audit = await alice.rpc.call("receipts.verify", {"chain": True})
        assert audit["ok"] and audit["checked"] == 1 and audit["pending"] == 0, audit


async def test_evidence_waits_for_a_clearing_house_that_is_down(tmp_path, monkeypatch):
    monkeypatch.setattr("agentd.services.clearing.client.REQUEST_TIMEOUT", 0.5)
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        _, alice, bob = net.nodes
        await net.stop(0)
        await evidence(alice, 3, "tally-2", [alice.agent_id, bob.agent_id], "tally.open")
        await evidence(bob, 1, "tally-2", [alice.agent_id, bob.agent_id], "tally.open")
        await trio.sleep(0.3)
        pending = await alice.rpc.call("receipts.verify", {})
        [waits] = pending.pop("pending_detail")
        assert pending == {"ok": True, "checked": 0, "pending": 3, "failures": []}
        assert waits["clearing_house"] == net.nodes[0].agent_id and waits["configured"]
        assert (waits["logs"], waits["keys"]) == (3, 0)
        with pytest.raises(RpcError) as info:
            with trio.fail_after(5):
                await alice.rpc.call("ch.log", {"pid": "tally-2", "payload": "late"})
        assert info.value.code == TIMEOUT
        assert ": cannot reach 127.0.0.1:" in info.value.message  # why, as peers.ping says
        monkeypatch.undo()  # the chain check below must not time out on a slow machine
        await net.restart(0)
        await wait_for(lambda: len(receipts(alice)) == 4 and len(receipts(bob)) == 1,
                       timeout=20)
        rows = alice.db.read("SELECT kind, ref FROM receipts WHERE kind = 'tally.open'")
        assert sorted(r["ref"] for r in rows) == ["tally.open-0", "tally.open-1", "tally.open-2"]
        result = await alice.rpc.call("receipts.verify", {"chain": True})
        assert result["ok"] and result["checked"] == 4 and result["pending"] == 0, result
        assert [e["seq"] for e in await chain_of(bob, "tally-2")] == [1, 2, 3, 4, 5]


async def test_a_refusal_that_comes_after_its_call_timed_out_is_logged(tmp_path, monkeypatch,
                                                                       caplog):
    """The call was told its request stays queued and "a late receipt is still stored"; a
    late refusal went without a trace (receipts.verify's pending 1 became 0, nothing listed,
    nothing logged). It is logged now, naming what was refused and why."""
    monkeypatch.setattr("agentd.services.clearing.client.REQUEST_TIMEOUT", 0.5)
    caplog.set_level(logging.WARNING, "agentd.services.clearing")
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        _, alice, bob = net.nodes
        await bob.rpc.call("ch.create_process", {"pid": "bobs"})
        await net.stop(0)
        with pytest.raises(RpcError) as info:
            await alice.rpc.call("ch.log", {"pid": "bobs", "payload": "x"})
        assert info.value.code == TIMEOUT and "a late refusal logged" in info.value.message
        await net.restart(0)
        await wait_for(lambda: any("after the call timed out" in r.getMessage()
                                   for r in caplog.records), timeout=20)
        [line] = [r.getMessage() for r in caplog.records
                  if "after the call timed out" in r.getMessage()]
        assert "refused ch.log of pid bobs, after the call timed out: NOT_AUTHORIZED" in line, (
            line)
        # a process copied cut short from a -H table is not found, and the error says why
        with pytest.raises(RpcError) as info:
            await alice.rpc.call("ch.query", {"pid": f"{alice.agent_id[:8]}…/x"})
        assert info.value.reason == "NOT_FOUND" and "cut short, as -H shows it" in (
            info.value.message)


async def test_receipts_verify_offline_and_catches_tampering(tmp_path):
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        _, alice = net.nodes
        for n in range(3):
            await alice.rpc.call("ch.log", {"pid": "audit", "payload": f"doc {n}"})
        await net.stop(0)  # offline from here: the JWKS is in alice's database
        assert (await alice.rpc.call("receipts.verify", {}))["ok"] is True
        token = alice.db.read_one("SELECT token FROM receipts WHERE seq = 2")["token"]
        head, claims, signature = token.split(".")
        forged = claims[:10] + ("A" if claims[10] != "A" else "B") + claims[11:]

        def tamper(conn):
            conn.execute("UPDATE receipts SET token = ? WHERE seq = 2",
                         (f"{head}.{forged}.{signature}",))
            conn.execute("UPDATE receipts SET seq = 9 WHERE seq = 3")

        await alice.db.write(tamper)
        result = await alice.rpc.call("receipts.verify", {})
        assert result["ok"] is False and result["checked"] == 3
        faults = {f["seq"]: f for f in result["failures"]}
        assert set(faults) == {2, 9}
        assert faults[2]["fault"] == "bad_signature"
        assert "does not verify" in faults[2]["message"]
        assert faults[9]["fault"] == "mismatch" and "seq" in faults[9]["message"]


async def test_receipts_verify_chain_catches_a_rewritten_entry(tmp_path):
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        house, alice = net.nodes
        await alice.rpc.call("ch.log", {"pid": "gone", "payload": "x"})
        await house.db.write(lambda conn: conn.execute(
            "UPDATE ch_entries SET payload_type = 'text/html' WHERE pid = 'gone'"))
        result = await alice.rpc.call("receipts.verify", {"chain": True})
        assert result["ok"] is False
        (failure,) = result["failures"]
        assert failure["fault"] == "chain" and "entry_hash" in failure["message"]


async def test_a_rotated_key_stays_in_the_jwks(tmp_path):
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        house, alice = net.nodes
        old = await alice.rpc.call("ch.log", {"pid": "long", "payload": "before"})
        await net.stop(0)
        new_key = SigningKey.generate()
        house = await net.start(house.config.name, new_key, house.port,
                                roles=["clearinghouse"])
        old_key, net.nodes[0] = net.nodes[0].key, house
        jwks = await house.evidence.request("keys", {})
        kids = [jwk["kid"] for jwk in jwks["keys"]]
        assert kids == [rc.thumbprint(new_key.public), rc.thumbprint(old_key.public)]
        claims = rc.verify_receipt(old["receipt"], jwks, {"seq": 1, "process_id": "long"})
        assert claims["iss"] == old_key.agent_id


async def test_a_node_without_the_role_refuses_requests(tmp_path):
    async with network(tmp_path, n=2) as net:
        plain, _ = net.nodes
        client = await net.start("client", SigningKey.generate(), sections={
            "clearinghouse": {"agent": plain.agent_id, "address": plain.listen_address}})
        net.nodes.append(client)
        with pytest.raises(RpcError) as info:
            await client.rpc.call("ch.log", {"pid": "p", "payload": "x"})
        assert info.value.reason == "NOT_CLEARING_HOUSE"
        # it said "this node does not have the clearinghouse role", which the caller took for
        # the node it called
        assert info.value.message == (
            f"NOT_CLEARING_HOUSE: node {plain.agent_id} is no clearing house: its config has "
            "no roles = [\"clearinghouse\"] (check the [clearinghouse] agent that named it)")
        with pytest.raises(RpcError) as info:
            await plain.rpc.call("ch.query", {"pid": "p"})
        assert info.value.reason == "NO_CLEARING_HOUSE"


async def test_log_evidence_without_a_clearing_house_does_nothing(tmp_path, caplog):
    async with network(tmp_path, n=1) as net:
        (node,) = net.nodes
        with caplog.at_level(logging.INFO, logger="agentd.evidence"):
            await evidence(node, 2, "tally-3", [node.agent_id])
            await evidence(node, 1, "tally-3", [node.agent_id])
        assert node.db.read_one("SELECT count(*) FROM ch_requests")[0] == 0
        assert node.pump.depth == 0
        notes = [r for r in caplog.records if "no [clearinghouse]" in r.getMessage()]
        assert len(notes) == 1
        with pytest.raises(ValueError, match="owners"):
            await evidence(net.nodes[0], 1, "tally-3", ["not-an-agent"])


async def test_a_houses_answer_that_holds_no_entries_is_its_fault_not_ours(tmp_path,
                                                                           monkeypatch):
    """A clearing house whose query or get answer holds things that are not entries: the
    call is refused as the house's malformed message, not an internal error of ours."""
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        _, alice = net.nodes
        logged = await alice.rpc.call("ch.log", {"pid": "p", "payload": "x"})
        odd = {"entries": [1, 2, 3], "total": 3, "page": 1, "size": 3, "has_more": False}
        monkeypatch.setattr("protocol.clearing.query_result", lambda *a, **k: ("result", odd))
        monkeypatch.setattr("protocol.clearing.get_result",
                            lambda *a, **k: ("result", {**odd, "entries": [{"seq": 1}]}))
        for method, params in (("ch.query", {"pid": "p"}),
                               ("ch.get", {"pid": "p", "id": logged["document_id"]})):
            with pytest.raises(RpcError) as info:
                await alice.rpc.call(method, params)
            assert info.value.reason == "MALFORMED_MESSAGE", method
            assert "not entries" in info.value.message


async def test_chains_of_a_house_that_cannot_be_reached_fail_at_once_not_one_by_one(tmp_path):
    """receipts.verify chain=true asked the clearing house for each process's chain in turn,
    each waiting the request timeout (10 s) when the house was down: 40 s for four processes.
    A house that cannot be reached fails every chain at once, saying why; the receipts are
    still checked offline."""
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        alice = net.nodes[1]
        for pid in ("p1", "p2", "p3"):
            await alice.rpc.call("ch.log", {"pid": pid, "payload": "x"})
        await net.stop(0)
        audit = await alice.rpc.call("receipts.verify", {"chain": True})
        assert (audit["ok"], audit["checked"], audit["chains"]) == (False, 3, 3)
        assert [failure["pid"] for failure in audit["failures"]] == ["p1", "p2", "p3"]
        for failure in audit["failures"]:
            assert failure["message"].startswith(
                "cannot read the chain, not asked: the clearing house cannot be reached: "), \
                failure
