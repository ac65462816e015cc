"""The command line's side of the control socket: a node that goes away in the middle of a
call is one line saying the call's outcome is unknown, never a traceback or a silent death."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from agentd.errors import UserError
from agentd.rpc import call


def closing_server(path: Path, calls: int) -> threading.Thread:
    """Takes ``calls`` connections, reads a little of each and closes it, the rest unread."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        with server:
            for _ in range(calls):
                conn, _ = server.accept()
                conn.recv(16)
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("payload", [1, 4 << 20], ids=["small", "large"])
def test_a_node_gone_mid_call_says_the_outcome_is_unknown(tmp_path, payload):
    path = tmp_path / "agentd.sock"
    server = closing_server(path, 1)
    with pytest.raises(UserError, match=r"agentd closed the control socket during 'ch.log': "
                                        r"whether it was done is unknown"):
        call(path, "ch.log", {"pid": "p", "payload": "x" * payload}, 10)
    server.join(5)
