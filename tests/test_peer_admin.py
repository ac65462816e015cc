"""peers.add / peers.remove edit the config file (comments kept) and apply at once."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import pytest
import trio

from agentd.config import load_config
from agentd.rpc import RpcError
from agentd.runtime.node import Node
from protocol.keys import SigningKey
from store import peers as peer_store
from tests.netfixture import Network, dial_failures, network, wait_for
from tests.test_credit_service import open_tally, users

BOB = SigningKey(bytes([2]) * 32).agent_id
CAROL = SigningKey(bytes([3]) * 32).agent_id
DAVE = SigningKey(bytes([4]) * 32).agent_id
CONFIG = f"""# alice's node — hand-written comments must survive
[node]
name = "alice"
data_dir = "data"   # beside this file
listen = "127.0.0.1:0"

# bob is our first partner
[[peers]]
name = "bob"
agent = "{BOB}"
address = "127.0.0.1:7902"

[log]
level = "warning"
"""


async def test_the_nodes_own_bound_and_advertised_addresses_are_no_peers(tmp_path):
    """peers.add refuses both the port the node is bound to and the address it advertises,
    each named by its key."""
    path = tmp_path / "alice.toml"
    path.write_text(CONFIG.replace('listen = "127.0.0.1:0"',
                                   'listen = "127.0.0.1:0"\nadvertise = "alice.example:7101"'))
    node = Node(load_config(path), SigningKey.generate())
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        for address, key in ((node.bound_address, "listen"),
                             ("ALICE.example.:7101", "advertise")):
            with pytest.raises(RpcError, match=re.escape(
                    f"address {address} is this node's own ([node] {key})")):
                await node.rpc.call("peers.add", {"name": "dave", "agent": DAVE,
                                                  "address": address})
        nursery.cancel_scope.cancel()


async def test_add_change_and_remove_peers_keeping_comments(tmp_path):
    path = tmp_path / "alice.toml"
    path.write_text(CONFIG)
    path.chmod(0o640)
    node = Node(load_config(path), SigningKey.generate())
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        added = await node.rpc.call("peers.add", {"name": "carol", "agent": CAROL,
                                                  "address": "127.0.0.1:7903"})
        assert added["change"] == "added" and added["applied"] == ["peers"]
        text = path.read_text()
        for comment in ("# alice's node", "# beside this file", "# bob is our first partner"):
            assert comment in text
        assert [p.name for p in load_config(path).peers] == ["bob", "carol"]
        assert node.address_of(CAROL) == "127.0.0.1:7903"
        assert path.stat().st_mode & 0o777 == 0o640

        same = path.read_text()  # one listening port is one node: one agent
        for alias in ("127.0.0.1:7903", "LOCALHOST:7903"):  # however the address is written
            with pytest.raises(RpcError, match=re.escape(
                    f"address {alias} is already that of peer 'carol' (agent {CAROL}): one "
                    f"address is one node. If that node's agent changed, peers.remove "
                    f"agent={CAROL} first")) as taken:
                await node.rpc.call("peers.add", {"name": "dave", "agent": DAVE,
                                                  "address": alias})
            assert taken.value.reason == "INVALID_PARAMS" and path.read_text() == same
        assert node.address_of(DAVE) is None
        for nowhere in ("0.0.0.0:7904", "[::]:7904", "127.0.0.1:0", "0:7904",
                        "[::ffff:0.0.0.0]:7904"):  # as init --advertise
            with pytest.raises(RpcError, match=re.escape(
                    f"address {nowhere} is not an address a node can be dialled at")):
                await node.rpc.call("peers.add", {"name": "dave", "agent": DAVE,
                                                  "address": nowhere})
        assert path.read_text() == same
        own = node.listen_address.replace("127.0.0.1", "localhost")
        with pytest.raises(RpcError, match=re.escape(
                f"address {own} is this node's own ([node] listen): one address is one node")):
            await node.rpc.call("peers.add", {"name": "dave", "agent": DAVE, "address": own})
        assert path.read_text() == same
        again = await node.rpc.call("peers.add", {"name": "carol", "agent": CAROL,
                                                  "address": "127.0.0.1:7903"})
        assert again["change"] == "unchanged"  # the peer itself may give its address again

        moved = await node.rpc.call("peers.add", {"name": "bobby", "agent": BOB,
                                                  "address": "127.0.0.1:7912"})
        assert moved["change"] == "updated"
        assert node.address_of(BOB) == "127.0.0.1:7912"

        node.learn_peer(DAVE, "127.0.0.1:7904", "dave")  # as a hello would teach it
        sources = {p["agent"]: p["source"] for p in await node.rpc.call("peers.list", {})}
        assert sources == {BOB: "config", CAROL: "config", DAVE: "learned"}
        before = path.read_text()
        forgotten = await node.rpc.call("peers.remove", {"agent": DAVE})  # nothing needs it
        assert forgotten == {"change": "forgotten", "config": str(path), "applied": [],
                             "agent": DAVE}
        assert node.address_of(DAVE) is None and path.read_text() == before
        assert DAVE not in {p["agent"] for p in await node.rpc.call("peers.list", {})}
        assert DAVE not in {row["agent"] for row in node.db.reading(peer_store.all_peers)}
        with pytest.raises(RpcError, match="nor a peer this node learned") as gone:
            await node.rpc.call("peers.remove", {"agent": DAVE})
        assert gone.value.reason == "UNKNOWN_PEER"

        removed = await node.rpc.call("peers.remove", {"agent": BOB})
        assert removed["change"] == "removed"
        assert [p.name for p in load_config(path).peers] == ["carol"]
        assert "# bob is our first partner" in path.read_text()
        assert node.address_of(BOB) is None
        listed = {p["agent"] for p in await node.rpc.call("peers.list", {})}
        assert BOB not in listed and CAROL in listed

        before = path.read_text()
        with pytest.raises(RpcError, match="address is not HOST:PORT") as bad:
            await node.rpc.call("peers.add", {"name": "x", "agent": DAVE, "address": "nope"})
        assert bad.value.reason == "INVALID_PARAMS"
        with pytest.raises(RpcError) as unknown:
            await node.rpc.call("peers.remove", {"agent": BOB})
        assert unknown.value.reason == "UNKNOWN_PEER"
        for name, complaint in (("two\nlines", "printable characters (no line breaks, "),
                                ("x" * 65, "1 to 64 printable characters"),
                                ("carol", f"name 'carol' is already peer {CAROL}'s")):
            with pytest.raises(RpcError, match=re.escape(complaint)):
                await node.rpc.call("peers.add", {"name": name, "agent": DAVE,
                                                  "address": "127.0.0.1:7904"})
        near = "A" * 42 + "B"  # 43 base64url characters, but no canonical 32-byte key
        with pytest.raises(RpcError, match="agent id is not a canonical 32-byte base64url key"):
            await node.rpc.call("peers.add", {"name": "d", "agent": near,
                                              "address": "127.0.0.1:7904"})
        assert path.read_text() == before

        path.write_text(before + "\n[nodes]\n")  # broken by hand: ours to refuse, not rewrite
        with pytest.raises(RpcError, match="unknown key") as broken:
            await node.rpc.call("peers.add", {"name": "d", "agent": DAVE,
                                              "address": "127.0.0.1:7904"})
        assert broken.value.reason == "BAD_CONFIG"
        assert path.read_text() == before + "\n[nodes]\n"
        path.write_text(before)

        # removing the last peer leaves no "peers = []" behind, and the next add is a table
        await node.rpc.call("peers.remove", {"agent": CAROL})
        assert "peers" not in path.read_text()
        await node.rpc.call("peers.add", {"name": "dave", "agent": DAVE,
                                          "address": "127.0.0.1:7904"})
        text = path.read_text()
        assert text.startswith("# alice's node") and "\n[[peers]]\nname = \"dave\"" in text
        node.stop()


def bob_nowhere(tmp_path: Path, monkeypatch) -> tuple[Node, Path, int]:
    """alice's node (not started) with bob configured at a port nothing listens on; a ping
    waits up to 60 s (it does not wait that out): the node, its config file and the port."""
    monkeypatch.setattr("agentd.services.ping.PING_TIMEOUT", 60)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    path = tmp_path / "alice.toml"
    path.write_text(CONFIG.replace("127.0.0.1:7902", f"127.0.0.1:{port}"))
    return Node(load_config(path), SigningKey.generate()), path, port


async def test_a_ping_that_times_out_says_why_the_peer_cannot_be_dialled(tmp_path, monkeypatch,
                                                                         caplog):
    """A peer whose address nobody answers at: the ping is UNREACHABLE once a redial has had
    half a second (not a TIMEOUT after the whole wait), naming the dial's failure, and the
    log says it once (not once per retry)."""
    caplog.set_level(logging.INFO, logger="agentd.runtime.peers")
    node, path, port = bob_nowhere(tmp_path, monkeypatch)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        with pytest.raises(RpcError) as caught:
            await node.rpc.call("peers.ping", {"agent": BOB})
        assert caught.value.reason == "UNREACHABLE"
        assert caught.value.message.startswith(f"cannot reach {BOB}: ")
        with pytest.raises(RpcError) as unknown:  # nobody it knows: how to make it known
            await node.rpc.call("peers.ping", {"agent": DAVE})
        assert (unknown.value.reason, unknown.value.message) == ("UNKNOWN_PEER", (
            f"unknown peer {DAVE}: this node knows no address of it: peers.add name=NAME "
            f"agent={DAVE} address=HOST:PORT adds one (or ping it while it is connected)"))
        # the cause (not trio's "all attempts to connect ... failed") and the line to check
        assert (f"cannot reach 127.0.0.1:{port}: connection refused; nothing listens there: "
                f"is bob (agent {BOB[:8]}) running, and is that where it listens? check "
                f'address = "127.0.0.1:{port}" of [[peers]] "bob" in {path}'
                in caught.value.message), caught.value.message
        node.stop()
    said = [r for r in caplog.records if f"cannot reach 127.0.0.1:{port}" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "INFO"
    assert said[0].getMessage().startswith(f"bob (agent {BOB[:8]}): ")


async def test_a_ping_to_a_peer_that_never_answers_times_out(tmp_path, monkeypatch):
    """A peer that takes the connection and never answers the handshake is slow, not
    unreachable: the ping waits the whole PING_TIMEOUT and says so (it raised its TIMEOUT out
    of a nursery as an exception group, which the caller got as an internal error)."""
    monkeypatch.setattr("agentd.services.ping.PING_TIMEOUT", 1)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes connections, says nothing
        path = tmp_path / "alice.toml"
        path.write_text(CONFIG.replace("127.0.0.1:7902",
                                       f"127.0.0.1:{silent.getsockname()[1]}"))
        node = Node(load_config(path), SigningKey.generate())
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            with pytest.raises(RpcError) as caught:
                await node.rpc.call("peers.ping", {"agent": BOB})
            assert (caught.value.reason, caught.value.message) == ("TIMEOUT", (
                f"no pong from {BOB} within 1 s (the ping stays in the outbox and will be "
                "retried)"))
            node.stop()


async def test_a_peer_back_up_is_pinged_at_once_not_judged_by_a_failed_dial_before(
        tmp_path, monkeypatch):
    """A peer that was down is started again: a ping dials it at once and gets its pong,
    instead of waiting out the backoff of the dials that failed while it was down and being
    answered UNREACHABLE with their reason (which named the address it is back at)."""
    for bound in ("BACKOFF_MIN", "BACKOFF_MAX"):  # no redial of its own within the test
        monkeypatch.setattr(f"agentd.runtime.peers.{bound}", 1000.0)
    bob_key = SigningKey.generate()
    async with trio.open_nursery() as nursery:
        net = Network(nursery, tmp_path)
        bob = await net.start("bob", bob_key)
        port = bob.port
        alice = await net.start("alice", SigningKey.generate(), sections={"peers": [
            {"name": "bob", "agent": bob.agent_id, "address": bob.listen_address}]})
        net.nodes = [bob, alice]
        await alice.rpc.call("peers.ping", {"agent": bob.agent_id})
        await net.stop(0)
        with pytest.raises(RpcError) as down:
            await alice.rpc.call("peers.ping", {"agent": bob.agent_id})
        assert down.value.reason == "UNREACHABLE" and "connection refused" in down.value.message
        bob = await net.start("bob", bob_key, port)
        pinged = await alice.rpc.call("peers.ping", {"agent": bob.agent_id})
        assert len(pinged["rtt_ms"]) == 1
        alice.stop()
        bob.stop()


async def test_a_peers_address_put_right_is_dialled_at_once(tmp_path, monkeypatch):
    """peers.add that corrects a peer's address: what waits for that peer goes there at once,
    not after the backoff of the dials that failed at the wrong address."""
    for bound in ("BACKOFF_MIN", "BACKOFF_MAX"):  # no redial of its own within the test
        monkeypatch.setattr(f"agentd.runtime.peers.{bound}", 1000.0)
    with socket.socket() as closed:  # the wrong port: nothing listens on it
        closed.bind(("127.0.0.1", 0))
        wrong = closed.getsockname()[1]
    async with trio.open_nursery() as nursery:
        net = Network(nursery, tmp_path)
        bob = await net.start("bob", SigningKey.generate(), sections={
            "relay": {"access": [{"principal": "*", "resource": "node:*"}]}})
        path = tmp_path / "alice.toml"
        path.write_text(CONFIG.replace(BOB, bob.agent_id).replace(
            "127.0.0.1:7902", f"127.0.0.1:{wrong}"))
        alice = Node(load_config(path), SigningKey.generate())
        await nursery.start(alice.run)
        failed = dial_failures(alice)
        asked = await alice.rpc.call("relay.query", {
            "address": f"{bob.agent_id}/agentd/node:info"})
        await wait_for(lambda: failed)
        await alice.rpc.call("peers.add", {"name": "bob", "agent": bob.agent_id,
                                           "address": bob.listen_address})
        state = await alice.rpc.call("relay.wait", {"request_id": asked["request_id"],
                                                    "timeout_s": 30})
        assert state["status"] == "COMPLETED", state
        alice.stop()
        bob.stop()


async def test_a_peer_configured_with_another_nodes_agent_id_is_named_with_the_fix(
        tmp_path, caplog):
    """A [[peers]] entry whose agent id is not that of the node at its address: the dial
    fails (that node cannot read an IK handshake made for another key and hangs up), and
    the ping's error and the log line name the peer, the address dialled and the likely
    cause, with the line of the config to check; the other node's log says who dialled."""
    caplog.set_level(logging.INFO, logger="agentd.runtime.peers")
    wrong = SigningKey.generate().agent_id
    async with trio.open_nursery() as nursery:
        net = Network(nursery, tmp_path)
        bob = await net.start("bob", SigningKey.generate())
        alice = await net.start("alice", SigningKey.generate(), sections={"peers": [
            {"name": "bob", "agent": wrong, "address": bob.listen_address}]})
        with pytest.raises(RpcError) as caught:
            await alice.rpc.call("peers.ping", {"agent": wrong})
        hint = (f"most likely the node at {bob.listen_address} has another key than bob "
                f'(agent {wrong[:8]}): check agent = "{wrong}" of [[peers]] "bob" in '
                f"{alice.config.path} (unless that node was stopping just then: it hangs up "
                "on a handshake too)")
        assert caught.value.reason == "UNREACHABLE" and hint in caught.value.message
        assert f"cannot reach {bob.listen_address}: handshake_eof" in caught.value.message
        alice.stop()
        bob.stop()
    said = [r for r in caplog.records if hint in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert said[0].getMessage().startswith(f"bob (agent {wrong[:8]}): cannot reach ")
    assert any(r.getMessage().startswith("inbound handshake from 127.0.0.1 rejected: "
                                         "handshake_failed") for r in caplog.records)


async def test_a_peer_the_node_still_needs_keeps_its_address(tmp_path):
    """peers.remove forgets a learned peer only when nothing here still needs its address:
    the clearing house and a tally partner's node are refused (PEER_IN_USE, saying why), and
    a configured tally partner leaves the file but stays, learned, with ``kept`` saying why."""
    async with network(tmp_path, 3, clearinghouse=2) as net:
        alice, bob, house = net.nodes
        path = tmp_path / "n0.toml"  # the file n0's config names, as `agentd init` writes it
        path.write_text(f'[node]\nname = "n0"\ndata_dir = "n0"\nlisten = "127.0.0.1:0"\n\n'
                        f'[clearinghouse]\nagent = "{house.agent_id}"\n'
                        f'address = "{house.listen_address}"\n')
        with pytest.raises(RpcError, match=r"\[clearinghouse\] agent in .*n0\.toml") as ch:
            await alice.rpc.call("peers.remove", {"agent": house.agent_id})
        assert ch.value.reason == "PEER_IN_USE"
        assert "outside [[peers]]" in ch.value.message  # as peers.list says: source config
        assert "learned" not in ch.value.message
        assert alice.address_of(house.agent_id) == house.listen_address
        with pytest.raises(RpcError, match=re.escape(
                f"is that of the clearing house (agent {house.agent_id}, [clearinghouse]): one "
                "address is one node")):  # another agent at the house's address
            await alice.rpc.call("peers.add", {"name": "bob", "agent": bob.agent_id,
                                               "address": house.listen_address})

        removed = await alice.rpc.call("peers.remove", {"agent": bob.agent_id})
        assert removed["change"] == "forgotten" and alice.address_of(bob.agent_id) is None
        await users(alice, "ann")
        await users(bob, "ben")
        await open_tally(alice, "ann", bob, "ben")  # its ticket teaches alice bob's address
        with pytest.raises(RpcError, match=r"partner's side of 1 of our tallies") as partner:
            await alice.rpc.call("peers.remove", {"agent": bob.agent_id})
        assert partner.value.reason == "PEER_IN_USE" and "but learned" in partner.value.message
        assert alice.address_of(bob.agent_id) == bob.listen_address

        await alice.rpc.call("peers.add", {"name": "bob", "agent": bob.agent_id,
                                           "address": bob.listen_address})
        removed = await alice.rpc.call("peers.remove", {"agent": bob.agent_id})
        assert removed["change"] == "removed" and "bob" not in path.read_text()
        assert removed["kept"].startswith("its address stays (learned): it holds the partner")
        assert alice.address_of(bob.agent_id) == bob.listen_address
        assert alice.peer_source(bob.agent_id) == "learned"


async def test_removing_a_peer_withdraws_the_pings_queued_to_it(tmp_path, monkeypatch):
    """A ping to a peer at a dead address stays in the outbox; peers.remove forgot the
    address but the pump went on dialling the removed peer until the ping expired (~5
    minutes), its log line telling to remove it. The ping is withdrawn with the peer."""
    node, _, _ = bob_nowhere(tmp_path, monkeypatch)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        with pytest.raises(RpcError):
            await node.rpc.call("peers.ping", {"agent": BOB})
        assert node.pump.depth == 1
        removed = await node.rpc.call("peers.remove", {"agent": BOB})
        assert removed["change"] == "removed" and "kept" not in removed
        assert node.pump.depth == 0
        assert [tuple(row) for row in node.db.read(
            "SELECT state, error FROM outbox WHERE peer = ?", (BOB,))] == [
            ("failed", "its peer was removed (peers.remove) before it was delivered")]
        _, where = node.describe_peer(BOB)
        assert where.startswith("the messages queued to it (getinfo outbox_depth): this node "
                                "knows no address of it (a peer removed, or never one)")
        node.stop()
