"""Starting nodes as OS processes for the sim and the benchmarks (agentd.localnodes)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from agentd.config import load_config
from agentd.localnodes import LocalNode, peer_section, wait_ready, write_node
from protocol.keys import SigningKey


def test_a_node_is_ready_when_its_control_socket_takes_a_connection(tmp_path):
    """The socket's file appears when the node binds it, a moment before it listens; a call
    made in between was refused ("no agentd is running here"), which failed a sim on a
    loaded machine. So the wait is for a connection, not for the file."""
    node = LocalNode("n1", tmp_path, SigningKey.generate(), 0)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
            bound.bind(str(node.socket))  # the file is there; nothing listens yet
            with pytest.raises(RuntimeError, match="node n1 did not start"):
                wait_ready([node], [process], timeout=0.3)
            bound.listen(1)
            wait_ready([node], [process], timeout=5)
    finally:
        process.kill()
        process.wait()


def test_a_written_nodes_config_keeps_any_name_as_it_is(tmp_path):
    """write_node and peer_section put names in the TOML between quotes as they were: a name
    with a quote or a backslash (a sim scenario's [nodes] names are the user's) made a config
    that did not parse, or parsed to another name. They are TOML strings now."""
    names = ['say "hi"', "back\\slash", "it's #1", '"""']
    peers = [write_node(tmp_path / f"p{i}", name, 7000 + i) for i, name in enumerate(names)]
    node = write_node(tmp_path / "n", 'n "1" \\', 7100,
                      sections="".join(peer_section(peer) for peer in peers))
    config = load_config(node.config)
    assert config.name == 'n "1" \\'
    assert [(peer.name, peer.address) for peer in config.peers] == [
        (name, f"127.0.0.1:{7000 + i}") for i, name in enumerate(names)]
    assert [load_config(peer.config).name for peer in peers] == names
