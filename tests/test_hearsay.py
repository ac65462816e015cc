"""Where a good payment's route said its payee's node listens is hearsay (a hop could have
made it up): kept in memory until a dial there is answered, then stored; forgotten after
``FORGET_AFTER`` failed dials in a row, so the node does not dial a wrong host for ever."""

from __future__ import annotations

import logging
import socket

import trio

from agentd.config import load_config
from agentd.runtime import hearsay
from agentd.runtime.node import Node
from protocol.keys import ChipAddress, SigningKey, parse_hostport
from store import peers as peer_store
from tests.netfixture import wait_for
from tests.test_peer_admin import BOB, CONFIG, DAVE


def stored(node: Node, agent: str) -> str | None:
    return node.db.reading(lambda conn: peer_store.address_of(conn, agent))


async def test_an_address_on_hearsay_is_stored_once_answered_and_forgotten_once_it_fails(
        tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="agentd.runtime.hearsay")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        wrong = closed.getsockname()[1]
    (tmp_path / "a").mkdir()
    (tmp_path / "c").mkdir()
    (tmp_path / "a" / "alice.toml").write_text(CONFIG.replace("7902", str(wrong)))
    (tmp_path / "c" / "carol.toml").write_text(CONFIG.split("# bob")[0])
    alice = Node(load_config(tmp_path / "a" / "alice.toml"), SigningKey.generate())
    carol = Node(load_config(tmp_path / "c" / "carol.toml"), SigningKey.generate())
    async with trio.open_nursery() as nursery:
        await nursery.start(alice.run)
        await nursery.start(carol.run)
        host, port = parse_hostport(carol.listen_address)
        alice.learn_address(ChipAddress(carol.agent_id, "ann", host, port), hearsay=True)
        assert alice.address_of(carol.agent_id) == carol.listen_address
        await alice.db.write(lambda conn: None)  # after what the writer had queued
        assert stored(alice, carol.agent_id) is None  # not before a dial there is answered
        assert await alice.reach(carol.agent_id, 5) is None
        await wait_for(lambda: stored(alice, carol.agent_id) == carol.listen_address)

        alice.learn_address(ChipAddress(DAVE, "dan", "127.0.0.1", wrong), hearsay=True)
        for failed in range(1, hearsay.FORGET_AFTER + 1):
            assert alice.address_of(DAVE) == f"127.0.0.1:{wrong}", failed
            alice.peers.redial(DAVE)  # past the backoff
            assert await alice.reach(DAVE, 5) is not None
        assert alice.address_of(DAVE) is None and stored(alice, DAVE) is None
        assert [r.getMessage() for r in caplog.records] == [
            f"agent {DAVE[:8]}: forgot 127.0.0.1:{wrong}, which a payment's route gave as "
            f"where its node listens, after {hearsay.FORGET_AFTER} failed dials there"]
        alice.learn_address(ChipAddress(DAVE, "dan", "127.0.0.1", wrong), hearsay=True)
        assert alice.address_of(DAVE) == f"127.0.0.1:{wrong}"  # a later payment may teach it

        for _ in range(hearsay.FORGET_AFTER):  # what the config names is never hearsay
            alice.peers.redial(BOB)
            assert await alice.reach(BOB, 5) is not None
        assert alice.address_of(BOB) == f"127.0.0.1:{wrong}"
        alice.stop()
        carol.stop()


def test_unproven_addresses_are_bounded_the_oldest_forgotten_first(monkeypatch) -> None:
    """Past ``MAX_UNPROVEN`` the oldest unproven address is forgotten, unless the config
    names its agent; a proven one (answered) stays."""
    monkeypatch.setattr(hearsay, "MAX_UNPROVEN", 3)
    addresses: dict[str, str] = {}
    kept: list[tuple[str, str]] = []
    table = hearsay.Hearsay(addresses, lambda agent, address: kept.append((agent, address)),
                            lambda agent: agent == "configured")
    table.learn("configured", "h:1")
    table.learn("proven", "h:2")
    table.dialled("proven", "h:2", answered=True)
    for n in range(3):
        table.learn(f"payee{n}", f"h:{10 + n}")
    assert addresses == {"configured": "h:1", "proven": "h:2", "payee0": "h:10",
                         "payee1": "h:11", "payee2": "h:12"}
    table.learn("payee3", "h:13")
    table.learn("payee0", "h:10")  # learnt again: the newest
    table.learn("payee4", "h:14")
    assert addresses == {"configured": "h:1", "proven": "h:2", "payee0": "h:10",
                         "payee3": "h:13", "payee4": "h:14"}
    assert kept == [("proven", "h:2")]
