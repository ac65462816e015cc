"""Every refusal has one shape and is answered in one place (agentd.runtime.refusals)."""

from __future__ import annotations

import json
import logging

import pytest

from agentd.bench.rogue import Rogue
from agentd.rpc import NOT_FOUND, REFUSED, RpcServer
from agentd.runtime.context import Reject
from agentd.runtime.refusals import QuietLog, RefusedIds, ack_error, rpc_error
from agentd.services.relay.driver import ViewError
from protocol import clearing as ch
from protocol import tally as t
from protocol.codec import pack
from protocol.envelope import Ack
from protocol.errors import Refusal
from tests.netfixture import network, wait_for


@pytest.mark.parametrize("refusal", [
    Reject("BAD_TICKET", "no such ticket"),
    t.Refusal("bad_ticket", "no such ticket"),
    ch.Rejection(ch.Reason.NOT_AUTHORIZED, "not an owner"),
    ViewError("NOT_FOUND", "no tally"),
])
def test_each_refusal_is_a_refusal_with_an_upper_case_wire_code(refusal):
    assert isinstance(refusal, Refusal)
    code, message = ack_error(refusal)
    assert code == str(refusal.code).upper() and code.isupper()
    assert message == refusal.message


def test_a_refusal_naming_something_unknown_is_not_found_any_other_refused():
    missing = rpc_error(t.Refusal("unknown_tally", "user a holds no tally x"))
    assert (missing.code, missing.reason, missing.message) == (
        NOT_FOUND, "UNKNOWN_TALLY", "user a holds no tally x")
    refused = rpc_error(ch.Rejection(ch.Reason.NOT_AUTHORIZED, "not an owner"))
    assert (refused.code, refused.reason, refused.message) == (
        REFUSED, "NOT_AUTHORIZED", "NOT_AUTHORIZED: not an owner")


async def test_an_rpc_method_that_refuses_gets_the_mapped_error():
    server = RpcServer(rpc_error)

    async def pay() -> None:
        raise t.Refusal("bad_state", "tally t is closed")

    server.register("chit.pay", pay)
    response = await server.handle_line(b'{"jsonrpc": "2.0", "id": 7, "method": "chit.pay"}')
    assert response == {"jsonrpc": "2.0", "id": 7, "error": {
        "code": REFUSED, "message": "BAD_STATE: tally t is closed",
        "data": {"reason": "BAD_STATE"}}}


async def test_missing_parameters_are_named_all_at_once():
    server = RpcServer(rpc_error)

    async def pay(cuid: str, find: str, units: int, memo: str = "") -> None:
        raise AssertionError("not called without its parameters")

    server.register("lift.pay", pay)
    for params, message in (
            ({}, "lift.pay: missing parameters 'cuid', 'find', 'units' (agentd help lift.pay "
                 "shows what each takes)"),
            ({"cuid": "ann", "find": "x"}, "lift.pay: missing parameter 'units' (agentd help "
                                           "lift.pay shows what each takes)")):
        request = {"jsonrpc": "2.0", "id": 1, "method": "lift.pay", "params": params}
        response = await server.handle_line(json.dumps(request).encode())
        assert response["error"]["message"] == message, params


async def errors_acked(rogue: Rogue, ids: set[bytes]) -> dict[bytes, str]:
    """The error code of each of ``ids``' acks, as the node sends them."""
    codes: dict[bytes, str] = {}
    while set(codes) != ids:
        for frame in await rogue.receive():
            if isinstance(frame, Ack) and frame.ack in ids:
                codes[frame.ack] = (frame.error or {}).get("code")
    return codes


async def test_a_message_refused_and_sent_again_is_counted_once(tmp_path):
    """A broken or old peer sends a message we refused for good again (or a resend crossed
    our error ack): it is refused again, as nothing was kept of it, but counted once, under
    ``rejected``, and the repeats as duplicates; a service's refusal and an addressing one
    alike. Another message of the same contents is another message."""
    async with network(tmp_path, n=1) as net:
        node = net.nodes[0]
        rogue = await Rogue.join(node.port, node.agent_id)
        promise = rogue.envelope(node.agent_id, "promise", {}, target="lift")  # no user
        unknown = rogue.envelope(node.agent_id, "nonsense", {}, target="lift")
        for _ in range(3):
            await rogue.send_frames([pack(promise), pack(unknown)])
            assert await errors_acked(rogue, {promise["id"], unknown["id"]}) == {
                promise["id"]: "UNKNOWN_USER", unknown["id"]: "UNKNOWN_ACTION"}
        assert node.counters.rejected == {"refused": 1, "unknown_action": 1}
        assert node.counters.duplicates == 4
        again = {**promise, "id": bytes(16)}
        await rogue.send_frames([pack(again)])
        assert await errors_acked(rogue, {again["id"]}) == {again["id"]: "UNKNOWN_USER"}
        assert node.counters.rejected == {"refused": 2, "unknown_action": 1}
        await rogue.aclose()


async def test_a_strangers_refused_messages_are_logged_once_a_while(tmp_path, caplog):
    """Each refused message was a line of its own: a stranger sending ``lift/query`` with a
    fresh id each time wrote ~1,200 lines a second (journald's rate limit then drops the
    node's own). A stranger's refusals are logged as routine ones are: the first of each code
    a while, the rest counted."""
    caplog.set_level(logging.INFO, "agentd.runtime.dispatch")
    caplog.set_level(logging.INFO, "agentd.runtime.node")
    async with network(tmp_path, n=1) as net:
        node = net.nodes[0]
        rogue = await Rogue.join(node.port, node.agent_id)
        queries = [rogue.envelope(node.agent_id, "promise", {}, target="lift")
                   for _ in range(50)]
        await rogue.send_frames([pack(query) for query in queries])
        acked = await errors_acked(rogue, {query["id"] for query in queries})
        assert set(acked.values()) == {"UNKNOWN_USER"}
        assert node.counters.refusals["UNKNOWN_USER"] == 50
        lines = [r.getMessage() for r in caplog.records
                 if r.name == "agentd.runtime.dispatch" and r.levelno >= logging.INFO]
        assert len(lines) == 1, lines
        assert lines[0].endswith("(further UNKNOWN_USER refusals from strangers in the next 60"
                                 " s are counted in getinfo counters.refusals, not logged)")
        caplog.clear()  # and those addressed to another node
        astray = [rogue.envelope(rogue.agent, "promise", {}, target="lift")
                  for _ in range(20)]
        await rogue.send_frames([pack(message) for message in astray])
        acked = await errors_acked(rogue, {message["id"] for message in astray})
        assert set(acked.values()) == {"WRONG_RECIPIENT"}
        lines = [r.getMessage() for r in caplog.records
                 if r.name == "agentd.runtime.dispatch" and r.levelno >= logging.INFO]
        assert len(lines) == 1 and lines[0].startswith("rejected message from "), lines
        await rogue.aclose()
        await wait_for(lambda: not node.connected(rogue.agent))
    # nor a line each for its connections: a fresh identity each connection costs nothing
    assert not [r for r in caplog.records if r.name == "agentd.runtime.node"
                and r.levelno >= logging.INFO and rogue.agent in r.getMessage()]


async def test_a_known_peers_refused_messages_are_logged_once_a_while_by_peer(tmp_path,
                                                                                caplog):
    """A peer we know (a tally partner) sending a made-up action a time had each refusal
    logged: 10,800 lines a second (red team). Its refusals are logged as a stranger's are,
    once a while per code, under its own name; another known peer's still get their line."""
    caplog.set_level(logging.INFO, "agentd.runtime.dispatch")
    async with network(tmp_path, n=3) as net:
        node, peer, other = net.nodes
        rogue = await Rogue.join(node.port, node.agent_id, key=peer.key)
        assert node.is_known(rogue.agent)
        made_up = [rogue.envelope(node.agent_id, f"act{i}", {}, target="node")
                   for i in range(40)]
        chain = [rogue.envelope(node.agent_id, "promise", {}, target="lift")
                 for _ in range(40)]
        await rogue.send_frames([pack(message) for message in made_up + chain])
        acked = await errors_acked(rogue, {message["id"] for message in made_up + chain})
        assert set(acked.values()) == {"UNKNOWN_ACTION", "UNKNOWN_USER"}
        lines = [r.getMessage() for r in caplog.records
                 if r.name == "agentd.runtime.dispatch" and r.levelno >= logging.INFO]
        assert len(lines) == 2, lines
        assert {line.split("(further ")[1].split(" in the next")[0] for line in lines} == {
            f"UNKNOWN_ACTION refusals from {rogue.agent[:8]}",
            f"UNKNOWN_USER refusals from {rogue.agent[:8]}"}
        caplog.clear()
        third = await Rogue.join(node.port, node.agent_id, key=other.key)
        one = third.envelope(node.agent_id, "nope", {})
        await third.send_frames([pack(one)])
        await errors_acked(third, {one["id"]})
        assert [r for r in caplog.records if other.agent_id[:8] in r.getMessage()]
        await rogue.aclose()
        await third.aclose()


def test_refused_ids_are_remembered_by_sender_the_last_few():
    ids = RefusedIds(size=2)
    assert ids.first(b"a", "X") and ids.first(b"a", "Y") and not ids.first(b"a", "X")
    assert ids.first(b"b", "X")  # the oldest, (a, Y), is forgotten
    assert ids.first(b"a", "Y") and not ids.first(b"b", "X")


def test_a_routine_refusal_is_logged_once_a_window_per_code_and_key():
    now = [0.0]
    quiet = QuietLog(window=60, clock=lambda: now[0])
    said = ("(further OVER_LIMIT refusals over tally T in the next 60 s are counted in getinfo "
            "counters.refusals, not logged")
    assert quiet.note("OVER_LIMIT", "over tally T") == f" {said})"
    assert quiet.note("OVER_LIMIT", "over tally T") is None
    assert quiet.note("OVER_LIMIT", "over tally U") is not None  # another key
    assert quiet.note("REFEREE_REFUSED", "over tally T") is not None  # another code
    now[0] = 59.9
    assert quiet.note("OVER_LIMIT", "over tally T") is None
    now[0] = 60.0  # the window has passed: logged again, saying how many were not
    assert quiet.note("OVER_LIMIT", "over tally T") == f" {said}; 2 were since the last one " \
                                                       "logged)"
    assert quiet.note("OVER_LIMIT", "over tally T") is None


def test_a_peers_channel_events_are_logged_at_info_twenty_a_minute():
    from agentd.runtime.churn import LINES, WINDOW_S, Churn

    churn = Churn()
    assert [churn.event("p", 0.0) for _ in range(LINES + 2)] == list(range(1, LINES + 3))
    assert churn.event("q", 1.0) == 1  # another peer's own count
    assert churn.event("p", WINDOW_S) == 1  # a new window
    assert churn.store_due("p", 0.0) and not churn.store_due("p", 0.5)
    assert churn.store_due("p", 1.0)


async def test_a_known_peer_reconnecting_in_a_loop_is_not_a_line_each_time(tmp_path, caplog):
    """A known peer reconnecting in a loop made 6,178 connections in 10 s, each a "peer
    connected" and a "peer lost" line at info (200 KB of log a second) and a store of its
    last_seen (the red team's re-run). Twenty of its channel events a minute get a line."""
    from agentd.runtime.churn import LINES

    caplog.set_level(logging.INFO, "agentd.runtime.node")
    async with network(tmp_path, n=2) as net:
        node, peer = net.nodes
        for _ in range(15):  # 30 channel events
            rogue = await Rogue.join(node.port, node.agent_id, key=peer.key)
            await rogue.aclose()
            await wait_for(lambda: not node.connected(peer.agent_id))
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO
                 and ("peer connected" in r.getMessage() or "peer lost" in r.getMessage())]
        assert len(lines) <= LINES, len(lines)
        assert any("the rest of it are logged at debug" in line for line in lines)
        assert peer.agent_id not in node.strangers  # a store skipped made it none
