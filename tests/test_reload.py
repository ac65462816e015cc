"""Re-reading a config while the node runs: what applies now, what waits, what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.config import load_config
from agentd.errors import UserError
from agentd.runtime.node import Node
from agentd.runtime.reload import reload_config
from protocol.keys import SigningKey
from tests.netfixture import network
from tests.test_credit_service import open_tally, rpc

BOB = SigningKey(bytes([2]) * 32).agent_id
CAROL = SigningKey(bytes([3]) * 32).agent_id
BASE = f"""[node]
name = "alice"
data_dir = "data"
listen = "127.0.0.1:7901"

[[peers]]
name = "bob"
agent = "{BOB}"
address = "127.0.0.1:7902"

[[relay.access]]
principal = "*"
resource = "node:*"
"""


def node_from(tmp_path: Path, text: str) -> tuple[Node, Path]:
    path = tmp_path / "alice.toml"
    path.write_text(text)
    return Node(load_config(path), SigningKey.generate()), path


def test_peers_relay_rules_and_log_level_apply_and_the_rest_waits(tmp_path):
    node, path = node_from(tmp_path, BASE)
    path.write_text(
        BASE.replace("127.0.0.1:7902", "127.0.0.1:7912").replace("7901", "7911")
        + f'\n[[peers]]\nname = "carol"\nagent = "{CAROL}"\naddress = "127.0.0.1:7903"\n'
        + '\n[[relay.access]]\nprincipal = "*"\nresource = "user:*"\n'
        + '\n[log]\nlevel = "debug"\n'
    )
    result = reload_config(node)
    assert result == {"applied": ["peers", "relay.access", "log.level"],
                      "restart": ["node.listen"], "warnings": []}
    assert node.address_of(BOB) == "127.0.0.1:7912"  # a configured address wins at once
    assert node.address_of(CAROL) == "127.0.0.1:7903"
    assert [rule.resource for rule in node.relay.access] == ["node:*", "user:*"]
    assert node.config.listen == "127.0.0.1:7901"  # still listening where it started
    assert reload_config(node) == {"applied": [], "restart": ["node.listen"], "warnings": []}


def test_a_new_clearing_house_names_the_lift_referee_it_makes(tmp_path):
    """With no [lift] referee the clearing house referees our lifts, so changing who it is
    changes the referee at once, and reload says so; its new address alone does not, and
    neither does a clearing house beside a [lift] referee of our own."""
    house = f'\n[clearinghouse]\nagent = "{CAROL}"\naddress = "127.0.0.1:7903"\n'
    node, path = node_from(tmp_path, BASE)
    path.write_text(BASE + house)
    assert reload_config(node) == {"applied": ["clearinghouse", "lift.referee"], "restart": [],
                                   "warnings": []}
    assert node.config.referee == CAROL
    path.write_text(BASE + house.replace("7903", "7913"))
    assert reload_config(node) == {"applied": ["clearinghouse"], "restart": [], "warnings": []}
    path.write_text(BASE)
    assert reload_config(node) == {"applied": ["clearinghouse", "lift.referee"], "restart": [],
                                   "warnings": []}
    assert node.config.referee is None  # this node referees its own lifts again

    own = f'\n[lift]\nreferee = "{BOB}"\n'
    node, path = node_from(tmp_path, BASE + own)
    path.write_text(BASE + own + house)
    assert reload_config(node) == {"applied": ["clearinghouse"], "restart": [], "warnings": []}
    assert node.config.referee == BOB


@pytest.mark.parametrize("bad, complaint", [
    ('\n[[relay.access]]\nprincipal = "nobody"\nresource = "user:*"\n',
     r"relay\.access\[1\]\.principal"),
    ("\n[node2]\n", "node2"),
])
def test_a_bad_config_changes_nothing(tmp_path, bad, complaint):
    node, path = node_from(tmp_path, BASE)
    before = (node.config, node.relay.access, node.address_of(CAROL))
    path.write_text(BASE + f'\n[[peers]]\nname = "carol"\nagent = "{CAROL}"\n'
                    f'address = "127.0.0.1:7903"\n' + bad)
    with pytest.raises(UserError, match=complaint):
        reload_config(node)
    assert (node.config, node.relay.access, node.address_of(CAROL)) == before


async def test_a_config_naming_the_node_itself_as_a_peer_is_refused(tmp_path):
    """peers.add refuses the node's own agent; a [[peers]] entry written by hand was taken at
    start and by reload, and peers.list listed the node as its own peer."""
    key = SigningKey.generate()
    path = tmp_path / "alice.toml"
    itself = f'\n[[peers]]\nname = "me"\nagent = "{key.agent_id}"\naddress = "127.0.0.1:7904"\n'
    path.write_text(BASE + itself)
    with pytest.raises(UserError, match=r"peers\[1\]\.agent is this node's own agent"):
        await Node(load_config(path), key).run()
    path.write_text(BASE)
    node = Node(load_config(path), key)
    path.write_text(BASE + itself)
    with pytest.raises(UserError, match=r"peers\[1\]\.agent is this node's own agent"):
        reload_config(node)
    assert node.address_of(key.agent_id) is None


def test_a_missing_config_file_changes_nothing(tmp_path):
    node, path = node_from(tmp_path, BASE)
    path.unlink()
    with pytest.raises(UserError, match="not found"):
        reload_config(node)
    assert node.address_of(BOB) == "127.0.0.1:7902"


def test_a_refused_reload_is_logged_and_changes_wait_by_their_file_names(tmp_path, caplog):
    node, path = node_from(tmp_path, BASE)
    path.write_text(BASE.replace('listen = "127.0.0.1:7901"', 'lisen = "127.0.0.1:7901"'))
    with pytest.raises(UserError, match=r"node\.listen is required") as caught:
        reload_config(node)
    assert "\n" not in str(caught.value) and "; " in str(caught.value)  # a "\n" in JSON
    refused = [r for r in caplog.records if r.name == "agentd.runtime.reload"]
    assert [r.levelname for r in refused] == ["ERROR"]
    assert "reload refused, the running config is kept" in refused[0].getMessage()
    assert "node.lisen" in refused[0].getMessage()
    assert "\n" not in refused[0].getMessage()  # two problems, one line of the log
    path.write_text(BASE.replace('listen = "127.0.0.1:7901"',
                                 'listen = "127.0.0.1:7901"\nmax_channels = 99')
                    + '\n[lift]\nlife_s = 30\n\n[log]\nformat = "json"\n')
    assert reload_config(node) == {
        "applied": [], "restart": ["log.format", "node.max_channels", "lift.life_s"],
        "warnings": []}


DAVE = SigningKey(bytes([4]) * 32).agent_id


def no_address(config_path: Path, agent: str) -> str:
    return (f"lift.referee in {config_path}: the node knows no address for {agent} (not a "
            "[[peers]] entry, not the [clearinghouse], not learned from a tally or a lift): "
            "lift.pay with this referee answers NO_REFEREE until the node learns one; add the "
            "referee to [[peers]] (agentd peers.add)")


def test_a_lift_referee_with_no_known_address_is_taken_and_warned_of(tmp_path, caplog):
    """An agent id is a valid [lift] referee, and the node may learn its address later (a
    tally, a lift), so reload does not refuse it: a config is checked by itself, as at start.
    But lift.pay would answer NO_REFEREE, so reload's answer and the log say so, naming the
    key and the file; a referee the same reload configures as a peer or clearing house is
    known."""
    node, path = node_from(tmp_path, BASE)
    path.write_text(BASE + f'\n[lift]\nreferee = "{DAVE}"\n')
    warning = no_address(node.config.path, DAVE)
    assert reload_config(node) == {"applied": ["lift.referee"], "restart": [],
                                   "warnings": [warning]}
    logged = [r.getMessage() for r in caplog.records
              if r.name == "agentd.runtime.reload" and r.levelname == "WARNING"]
    assert logged == [warning]
    for known in (f'\n[[peers]]\nname = "dave"\nagent = "{DAVE}"\naddress = "127.0.0.1:7904"\n',
                  f'\n[clearinghouse]\nagent = "{DAVE}"\naddress = "127.0.0.1:7904"\n'):
        node, path = node_from(tmp_path, BASE)
        path.write_text(BASE + known + f'\n[lift]\nreferee = "{DAVE}"\n')
        assert reload_config(node)["warnings"] == []
    path.write_text(BASE + f'\n[lift]\nreferee = "{BOB}"\n')  # a configured peer
    assert reload_config(node)["warnings"] == []


def test_the_lift_referee_applies_at_once_and_the_rest_of_lift_waits(tmp_path):
    node, path = node_from(tmp_path, BASE + f'\n[lift]\nreferee = "{BOB}"\n')
    path.write_text(BASE + f'\n[lift]\nreferee = "{CAROL}"\nlife_s = 30\n')
    assert reload_config(node) == {"applied": ["lift.referee"], "restart": ["lift.life_s"],
                                   "warnings": [no_address(node.config.path, CAROL)]}
    assert (node.config.referee, node.config.lift.life_s) == (CAROL, 120)
    path.write_text(BASE + '\n[lift]\nlife_s = 30\n')  # no referee: this node's own again
    assert reload_config(node)["applied"] == ["lift.referee"]
    assert node.config.referee is None


async def test_a_node_warns_at_start_of_a_lift_referee_it_knows_no_address_for(tmp_path,
                                                                               caplog):
    async with network(tmp_path, n=1, sections={"lift": {"referee": DAVE}}) as net:
        config_path = net.nodes[0].config.path
    warnings = [r.getMessage() for r in caplog.records
                if r.levelname == "WARNING" and "lift.referee" in r.getMessage()]
    assert warnings == [no_address(config_path, DAVE)]


async def test_a_new_lift_referee_decides_the_lifts_started_after_a_reload(tmp_path):
    """``[lift] referee`` applies at once: the next ``lift.pay`` names the new referee, which
    decides it; a lift in flight keeps the referee its signed record names — the clearing
    house, down when the lift started and when the referee changed, decides it once back."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        house, judge, ann, bob = net.nodes
        await rpc(ann, "users.add", cuid="ann")
        await rpc(bob, "users.add", cuid="bob")
        await open_tally(ann, "ann", bob, "bob")
        payee = f"bob:{bob.agent_id}"
        await rpc(ann, "peers.ping", agent=house.agent_id)  # a referee that answered before
        await net.stop(0)
        before = await rpc(ann, "lift.pay", cuid="ann", find=payee, units=100)
        assert before["referee"] == house.agent_id  # the clearing house, by default
        config = ann.config
        Path(config.path).write_text(
            f'[node]\nname = "{config.name}"\ndata_dir = "{config.data_dir}"\n'
            f'listen = "{config.listen}"\n\n[clearinghouse]\nagent = "{house.agent_id}"\n'
            f'address = "{house.listen_address}"\n\n[lift]\nreferee = "{judge.agent_id}"\n')
        assert await rpc(ann, "reload") == {"applied": ["lift.referee"], "restart": [],
                                            "warnings": []}
        after = await rpc(ann, "lift.pay", cuid="ann", find=payee, units=200)
        assert after["referee"] == judge.agent_id
        done = await rpc(ann, "lift.wait", lift=after["lift"], timeout_s=30)
        assert (done["state"], done["referee"], done["decision"]["referee"]) == (
            "good", judge.agent_id, judge.agent_id)
        held = await rpc(ann, "lift.show", lift=before["lift"])
        assert (held["state"], held["referee"]) == ("pend", house.agent_id)
        await net.restart(0)
        done = await rpc(ann, "lift.wait", lift=before["lift"], timeout_s=60)
        assert (done["state"], done["referee"], done["decision"]["referee"]) == (
            "good", house.agent_id, house.agent_id)
