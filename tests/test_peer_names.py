"""One name, one peer: a name the config gives (a ``[[peers]]`` entry's, or the clearing
house's) is that agent's alone, so a peer that carried it before — taken out of the config or
renamed, then another given its name, as restoring an old config file does — is listed
without a name, and ``reload`` says so."""

from __future__ import annotations

import logging

import trio

from agentd.config import load_config
from agentd.runtime import peer_names
from agentd.runtime.node import Node
from protocol.keys import SigningKey
from store import peers as peer_store

BOB = SigningKey(bytes([2]) * 32).agent_id
CAROL = SigningKey(bytes([3]) * 32).agent_id
HOUSE = SigningKey(bytes([5]) * 32).agent_id
HEAD = """[node]
name = "alice"
data_dir = "data"
listen = "127.0.0.1:0"
"""


def peer(name: str, agent: str, port: int) -> str:
    return f'\n[[peers]]\nname = "{name}"\nagent = "{agent}"\naddress = "127.0.0.1:{port}"\n'


def house(agent: str, port: int) -> str:
    return f'\n[clearinghouse]\nagent = "{agent}"\naddress = "127.0.0.1:{port}"\n'


async def names(node: Node) -> dict[str, tuple[str | None, str]]:
    return {p["agent"]: (p["name"], p["source"]) for p in await node.rpc.call("peers.list", {})}


async def test_a_name_the_config_gives_another_peer_leaves_the_old_one_unnamed(tmp_path,
                                                                               caplog):
    caplog.set_level(logging.WARNING, logger="agentd.runtime.node")
    path = tmp_path / "alice.toml"
    path.write_text(HEAD + peer("bob", BOB, 7902))
    node = Node(load_config(path), SigningKey.generate())
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        # bob's node was keyed anew, and the file says so: the old agent stays, learned
        path.write_text(HEAD + peer("bob", CAROL, 7903))
        reloaded = await node.rpc.call("reload", {})
        assert await names(node) == {CAROL: ("bob", "config"), BOB: (None, "learned")}
        assert reloaded == {"applied": ["peers"], "restart": [], "warnings": [],
                            "unnamed": [{"agent": BOB, "name": "bob", "now": CAROL}]}
        said = [r.getMessage() for r in caplog.records]
        assert said == [f"peer {BOB} is no longer called 'bob': that name is {CAROL}'s "
                        f"(peers.list shows it unnamed; peers.remove agent={BOB} forgets it)"]

        # the old config file restored: bob is the old agent again, the new one unnamed
        path.write_text(HEAD + peer("bob", BOB, 7902))
        reloaded = await node.rpc.call("reload", {})
        assert await names(node) == {BOB: ("bob", "config"), CAROL: (None, "learned")}
        assert reloaded["unnamed"] == [{"agent": CAROL, "name": "bob", "now": BOB}]
        assert await node.rpc.call("reload", {}) == {"applied": [], "restart": [], "warnings": []}

        # a new clearing house takes the name from the one before
        path.write_text(HEAD + peer("bob", BOB, 7902) + house(HOUSE, 7905))
        await node.rpc.call("reload", {})
        path.write_text(HEAD + peer("bob", BOB, 7902) + house(CAROL, 7903))
        reloaded = await node.rpc.call("reload", {})
        assert await names(node) == {BOB: ("bob", "config"), CAROL: ("clearinghouse", "config"),
                                     HOUSE: (None, "learned")}
        assert reloaded["unnamed"] == [{"agent": HOUSE, "name": "clearinghouse", "now": CAROL}]
        # the clearing house taken out of [[peers]] keeps its name, unless an entry has it
        path.write_text(HEAD + peer("bob", CAROL, 7903) + house(BOB, 7902))
        assert "unnamed" not in await node.rpc.call("reload", {})  # both renamed
        assert await names(node) == {CAROL: ("bob", "config"), BOB: ("clearinghouse", "config"),
                                     HOUSE: (None, "learned")}

        # peers.add of a name a learned peer still carries: the same
        path.write_text(HEAD + peer("bob", BOB, 7902))
        await node.rpc.call("reload", {})
        node.learn_peer(HOUSE, "127.0.0.1:7905", "dave")
        added = await node.rpc.call("peers.add", {"name": "dave", "agent": CAROL,
                                                  "address": "127.0.0.1:7903"})
        assert added["unnamed"] == [{"agent": HOUSE, "name": "dave", "now": CAROL}]
        listed = [p["name"] for p in await node.rpc.call("peers.list", {}) if p["name"]]
        assert sorted(listed) == ["bob", "dave"]
        node.stop()


async def test_a_restart_lists_one_peer_per_name_too(tmp_path):
    """The database keeps the name a peer had when the config named it: a node started on a
    config that gives the name to another agent lists that one alone under it, and the
    stored row forgets the name."""
    path = tmp_path / "alice.toml"
    path.write_text(HEAD + peer("bob", BOB, 7902))
    for config, expected in ((peer("bob", BOB, 7902), {BOB: ("bob", "config")}),
                             (peer("bob", CAROL, 7903), {CAROL: ("bob", "config"),
                                                         BOB: (None, "learned")})):
        path.write_text(HEAD + config)
        node = Node(load_config(path), SigningKey(bytes([1]) * 32))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            assert await names(node) == expected
            stored = {row["agent"]: row["name"] for row in node.db.reading(peer_store.all_peers)}
            assert stored == {agent: name for agent, (name, _) in expected.items()}
            node.stop()


def test_names_kept_from_before_go_to_the_first_peer_that_had_one():
    """Two stored peers with one name (kept by a node from before this rule): the first
    keeps it; the config's names are never taken."""
    names = {"c": "bob"}
    assert peer_names.load(names, [("a", "ann"), ("b", "ann"), ("d", "bob")]) == [
        peer_names.Unnamed("b", "ann", "a"), peer_names.Unnamed("d", "bob", "c")]
    assert names == {"a": "ann", "c": "bob"}
