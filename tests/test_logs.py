"""Logging to stderr: readable text by default, one JSON object per line on request."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentd.logs import setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_node_name_and_level(capsys):
    setup_logging("alice", "info", "json")
    logging.getLogger("agentd.test").info("listening on %s", "127.0.0.1:7101")
    logging.getLogger("agentd.test").debug("not shown at info")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["node"] == "alice" and entry["level"] == "info"
    assert entry["logger"] == "agentd.test" and entry["msg"] == "listening on 127.0.0.1:7101"
    assert entry["ts"].endswith("Z")


def test_text_lines_name_the_node(capsys):
    setup_logging("bob", "warning", "text")
    logging.getLogger("agentd.test").info("hidden")
    logging.getLogger("agentd.test").warning("peer unreachable")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert " bob WARNING agentd.test: peer unreachable" in err


def test_a_text_line_is_one_line_whatever_a_peer_wrote(capsys):
    """A partner's refusal message goes into a log line: a line break in it forged a line
    of its own, and an escape sequence reached the terminal. Both show as escapes; a
    traceback keeps its lines."""
    setup_logging("bob", "info", "text")
    told = "OVER_LIMIT\n2026-01-01T00:00:00.000Z bob ERROR agentd: forged\x1b[2J"
    logging.getLogger("agentd.test").info("refused: %s", told)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("agentd.test").exception("failed")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("agentd.test: refused: OVER_LIMIT\\n2026-01-01T00:00:00.000Z bob "
                             "ERROR agentd: forged\\x1b[2J"), lines
    assert "\x1b" not in "".join(lines) and lines[1].endswith("agentd.test: failed")
    assert lines[2] == "Traceback (most recent call last):"


def test_events_keep_their_fields_and_timestamps_are_full(capsys):
    from agentd.logs import event

    setup_logging("alice", "info", "json")
    event(logging.getLogger("agentd.credit"), "tally state", tally="T1", state="open",
          was="offer.open", memo=None)
    entry = json.loads(capsys.readouterr().err)
    assert entry["msg"] == "tally state tally=T1 state=open was=offer.open"
    assert (entry["tally"], entry["state"], entry["was"]) == ("T1", "open", "offer.open")
    assert "memo" not in entry
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    setup_logging("alice", "info", "text")
    logging.getLogger("agentd.test").info("hello ë")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z alice INFO agentd.test: hello ë",
                    capsys.readouterr().err)


def test_repeated_warnings_are_held_back_and_counted():
    from agentd.logs import RepeatFilter

    now = [0.0]
    limiter = RepeatFilter(window=60, clock=lambda: now[0])

    def record(text: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("agentd.peers", level, __file__, 1, text, None, None)

    assert limiter.filter(record("dial bob failed"))
    now[0] = 10
    assert not limiter.filter(record("dial bob failed"))
    assert not limiter.filter(record("dial bob failed"))
    assert limiter.filter(record("dial carol failed"))  # other text passes
    assert limiter.filter(record("all fine", logging.INFO))  # info is never held back
    now[0] = 61
    passed = record("dial bob failed")
    assert limiter.filter(passed) and passed.repeated == 2


async def test_peers_and_relay_requests_log_one_line_each(tmp_path, caplog):
    from tests.netfixture import network

    caplog.set_level(logging.INFO)
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await a.rpc.call("peers.ping", {"agent": b.agent_id})
        connected = [r for r in caplog.records if r.getMessage().startswith("peer connected")]
        assert {r.fields["agent"] for r in connected} == {a.agent_id, b.agent_id}
        assert {r.fields["direction"] for r in connected} == {"in", "out"}
        asked = await a.rpc.call("relay.query", {"address": f"{b.agent_id}/agentd/node:info"})
        await a.rpc.call("relay.wait", {"request_id": asked["request_id"]})
    states = [r.fields["state"] for r in caplog.records
              if r.getMessage().startswith("relay request")
              and r.fields["request"] == asked["request_id"]]
    assert states[0] == "PENDING_ACK" and states[-1] in ("COMPLETED", "ERROR")
    assert any(r.getMessage().startswith("peer lost") for r in caplog.records)


@contextlib.asynccontextmanager
async def alice_and_bob(tmp_path) -> AsyncIterator[tuple[Any, Any, str]]:
    """Two nodes, alice's and bob's, and an open tally between them."""
    from tests.netfixture import network
    from tests.test_credit_service import open_tally, users

    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await users(a, "alice")
        await users(b, "bob")
        yield a, b, await open_tally(a, "alice", b, "bob")


async def test_tally_and_chit_state_changes_log_one_line_each(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="agentd.credit")
    async with alice_and_bob(tmp_path) as (a, _, tally):
        paid = await a.rpc.call("chit.pay", {"cuid": "alice", "tally": tally, "units": 5})
    lines = [r for r in caplog.records if getattr(r, "fields", {}).get("tally") == tally]
    alice = [r.fields["state"] for r in lines
             if r.getMessage().startswith("tally state") and r.fields["cuid"] == "alice"]
    assert alice[0] == "draft" and alice[-1] == "open"
    assert len(alice) == len(set(alice))  # one line per change, none repeated
    chits = [r.fields for r in lines if r.getMessage().startswith("chit state")]
    assert {"chit": paid["chit"], "tally": tally, "cuid": "alice", "state": "L.good",
            "units": 5} in chits


async def test_a_lost_peer_is_logged_with_where_it_was_and_why(tmp_path, caplog):
    """README (Operations, Logs): a lost peer's line names its address and direction as the
    connected line does, and why it closed: the inbound side closes an idle channel
    (``idle``), which the dialler sees as the peer hanging up (``eof``)."""
    from tests.netfixture import network, wait_for

    caplog.set_level(logging.INFO)

    def lost_lines() -> dict[str, dict]:
        return {r.fields["agent"]: r.fields for r in caplog.records
                if r.getMessage().startswith("peer lost")}

    async with network(tmp_path, n=2, idle_timeout=0.3) as net:
        a, b = net.nodes
        await a.rpc.call("peers.ping", {"agent": b.agent_id})
        # each side logs its line as its own channel ends, which may be after the other's
        # has (a full suite once read the lines as soon as a saw the channel closed)
        await wait_for(lambda: {a.agent_id, b.agent_id} <= lost_lines().keys(), timeout=5)
        lost = lost_lines()
    of_b, of_a = lost[a.agent_id], lost[b.agent_id]  # b's line names a, and a's b
    assert (of_b["name"], of_b["address"], of_b["direction"], of_b["reason"]) == (
        "n0", a.listen_address, "in", "idle")
    assert (of_a["name"], of_a["address"], of_a["direction"], of_a["reason"]) == (
        "n1", b.listen_address, "out", "eof")


async def test_at_debug_every_message_is_traced_from_its_send_to_its_ack(tmp_path, caplog):
    """``[log] level = "debug"``: the sender logs each attempt of a message and its ack, the
    receiver what it took, each with the message's id, so one message can be followed
    across two nodes' logs (and by the id field in JSON)."""
    from tests.netfixture import wait_for

    caplog.set_level(logging.DEBUG, logger="agentd.runtime")
    async with alice_and_bob(tmp_path) as (a, b, tally):
        caplog.clear()
        await a.rpc.call("chit.pay", {"cuid": "alice", "tally": tally, "units": 5})

        def traced() -> dict[str, dict]:
            return {r.getMessage().split(" message=")[0]: r.fields for r in caplog.records
                    if getattr(r, "fields", {}).get("message") == "chit/good"}

        await wait_for(lambda: {"message sent", "message taken", "message acked"} <= set(
            traced()))
    lines = traced()
    message_id = lines["message sent"]["id"]
    assert len(message_id) == 12
    assert lines["message sent"] == {"message": "chit/good", "id": message_id,
                                     "to": b.agent_id, "attempt": 1}
    taken = lines["message taken"]
    assert isinstance(taken.pop("sent_on"), int)  # what its commit sent (a chain message)
    assert taken == {"message": "chit/good", "id": message_id, "peer": a.agent_id}
    assert lines["message acked"] == {"message": "chit/good", "id": message_id,
                                      "by": b.agent_id}
