"""``agentd init`` writes its config with a TOML library: any name reads back as given."""

from __future__ import annotations

import pytest

from agentd.config import load_config
from agentd.errors import UserError
from agentd.init import init_node


def test_a_name_with_quotes_and_backslashes_round_trips(tmp_path):
    name = 'a"b\\c ë [x] # y'  # one line: a line break is refused (tests/test_config.py)
    made = init_node(tmp_path / "n", name, "127.0.0.1:7301", "_net-work")
    config = load_config(made["config"])
    assert (config.name, config.network, config.listen) == (name, "_net-work", "127.0.0.1:7301")
    assert config.key_file == tmp_path / "n" / "data" / "agent.key"
    text = (tmp_path / "n" / "agentd.toml").read_text(encoding="utf-8")
    assert "# agentd node config" in text and "peers.add" in text


def test_a_name_or_network_the_node_could_not_run_with_is_refused_before_anything_is_written(
        tmp_path):
    """The config ``agentd init`` writes runs as written: an empty name, or a network no relay
    address can name, was written and then refused by ``agentd run``."""
    with pytest.raises(UserError, match=r"^--name must be 1 to 64 printable characters \(no "
                                        r"line breaks, tabs or other control characters\), "
                                        r"not empty$"):
        init_node(tmp_path / "a", "", "127.0.0.1:7301", "agentd")
    with pytest.raises(UserError, match=r"^--network 'my\.net' must start with a letter or '_'"
                                        r" and hold up to 64 letters, digits, '_', '-' \(relay "
                                        r"addresses name it: RELAY/NETWORK/VIEW\)$"):
        init_node(tmp_path / "a", "a", "127.0.0.1:7301", "my.net")
    assert not (tmp_path / "a").exists()


def test_a_node_on_every_interface_advertises_where_peers_dial_it(tmp_path):
    with pytest.raises(UserError, match=r"--listen 0\.0\.0\.0:7301 listens on every interface"):
        init_node(tmp_path / "a", "a", "0.0.0.0:7301", "agentd")
    with pytest.raises(UserError, match=r"--advertise \[::\]:7301 is not an address"):
        init_node(tmp_path / "a", "a", "0.0.0.0:7301", "agentd", "[::]:7301")
    with pytest.raises(UserError, match=r"--listen 127\.0\.0\.1:0: port 0 is a new port"):
        init_node(tmp_path / "a", "a", "127.0.0.1:0", "agentd")
    assert not (tmp_path / "a").exists()
    made = init_node(tmp_path / "a", "a", "0.0.0.0:7301", "agentd", "node-a.example:7301")
    assert made["address"] == f"{made['agent']}@node-a.example:7301"
    config = load_config(made["config"])
    assert (config.listen, config.advertise) == ("0.0.0.0:7301", "node-a.example:7301")


def test_a_port_a_node_beside_it_listens_on_is_refused(tmp_path):
    init_node(tmp_path / "n1", "n1", "127.0.0.1:7301", "agentd")
    with pytest.raises(UserError, match=r"--listen 127\.0\.0\.1:7301 is the address of .*n1/"
                                        r"agentd\.toml already"):
        init_node(tmp_path / "n2", "n2", "127.0.0.1:7301", "agentd")
    assert not (tmp_path / "n2").exists()  # nothing written
    init_node(tmp_path / "n2", "n2", "127.0.0.1:7302", "agentd")
    # nodes for several hosts may share a port on every interface
    init_node(tmp_path / "h1", "h1", "0.0.0.0:7400", "agentd", advertise="10.0.0.1:7400")
    init_node(tmp_path / "h2", "h2", "0.0.0.0:7400", "agentd", advertise="10.0.0.2:7400")


def test_the_port_of_a_config_file_beside_it_or_written_as_localhost_is_refused(tmp_path):
    """``agentd up DIR`` starts ``DIR/*.toml`` too (configs/local's layout), and localhost
    binds loopback."""
    (tmp_path / "alice.toml").write_text('[node]\nname = "alice"\nlisten = "127.0.0.1:7101"\n')
    with pytest.raises(UserError, match=r"is the address of .*alice\.toml already"):
        init_node(tmp_path / "dave", "dave", "127.0.0.1:7101", "agentd")
    with pytest.raises(UserError, match=r"--listen localhost:7101 is the address of"):
        init_node(tmp_path / "erin", "erin", "localhost:7101", "agentd")


def test_the_name_of_a_node_beside_it_is_refused(tmp_path):
    """Two nodes of one name in one directory: ``agentd up`` lists both under it, and peering
    by name is ambiguous. The second is refused, naming the first, and nothing is written;
    the same name in another directory is another network's business."""
    init_node(tmp_path / "nodes" / "n1", "n1", "127.0.0.1:7301", "agentd")
    with pytest.raises(UserError) as refused:
        init_node(tmp_path / "nodes" / "n2", "n1", "127.0.0.1:7302", "agentd")
    assert str(refused.value) == (
        f"--name n1 is the name of the node in {tmp_path / 'nodes' / 'n1' / 'agentd.toml'} "
        f"already ('agentd up {tmp_path / 'nodes'}' would list two nodes of that name, which "
        "you and their peers could tell apart by agent id alone): pick another name")
    assert not (tmp_path / "nodes" / "n2").exists()
    (tmp_path / "nodes" / "alice.toml").write_text('[node]\nname = "alice"\n')  # configs/local
    with pytest.raises(UserError, match=r"--name alice is the name of the node in .*alice\.toml"):
        init_node(tmp_path / "nodes" / "a", "alice", "0.0.0.0:7303", "agentd", "10.0.0.1:7303")
    init_node(tmp_path / "nodes" / "n2", "n2", "127.0.0.1:7302", "agentd")
    init_node(tmp_path / "other" / "n1", "n1", "127.0.0.1:7304", "agentd")


def test_a_directory_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    """agentd init FILE (or FILE/sub) was a NotADirectoryError traceback."""
    taken = tmp_path / "backup.db"
    taken.write_bytes(b"x")
    for directory in (taken, taken / "sub"):
        with pytest.raises(UserError, match=rf"^{directory}: {taken} is a file, not a directory: "
                                            r"give a new \(or empty\) directory for the node$"):
            init_node(directory, "zz", "127.0.0.1:7388", "agentd")
    assert taken.read_bytes() == b"x"
