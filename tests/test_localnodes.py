"""Starting nodes as OS processes for the sim and the benchmarks (agentd.localnodes)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from agentd.localnodes import LocalNode, wait_ready
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
