"""Issue 12, item 4: no control-socket request, however malformed, stops a real node.

Each hostile line goes to an ``agentd run`` process over its Unix socket; each must get a
JSON-RPC error (or, for an over-long line, an error and a closed socket), and the node must
still answer ``getinfo`` afterwards.
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

import pytest

from agentd.rpc import MAX_REQUEST
from tests.clihelpers import cli, init, running

HOSTILE = [
    (b"[" * 100_000, -32700),                      # nesting past the recursion limit
    (b'{"jsonrpc":"2.0","id":1,"method":"getinfo","params":' + b"[" * 50_000 + b"}", -32700),
    (b"\xff\xfe not utf-8", -32700),
    (b"not json", -32700),
    (b"[1, 2, 3]", -32600),                        # JSON, but not an object
    (b'"text"', -32600),
    (b"null", -32600),
    (b'{"jsonrpc":"1.0","id":1,"method":"getinfo"}', -32600),
    (b'{"jsonrpc":"2.0","id":1,"method":7}', -32600),
    (b'{"jsonrpc":"2.0","id":1,"method":"no.such"}', -32601),
    (b'{"jsonrpc":"2.0","id":1,"method":"getinfo","params":[1]}', -32602),
    (b'{"jsonrpc":"2.0","id":1,"method":"getinfo","params":{"x":1}}', -32602),
    (b'{"jsonrpc":"2.0","id":1,"method":"peers.ping","params":{"agent":[[[1]]]}}', -32602),
    (b'{"jsonrpc":"2.0","id":1,"method":"peers.ping","params":{"agent":"a","count":1e999}}',
     -32602),
    (b'{"jsonrpc":"2.0","id":' + b"[" * 900 + b"]" * 900 + b',"method":"no.such"}', -32600),
    (b'{"jsonrpc":"2.0","id":{"a":1},"method":"getinfo"}', -32600),  # id: text, number or null
    (b'{"jsonrpc":"2.0","id":true,"method":"getinfo"}', -32600),
    (b'{"jsonrpc":"2.0","method":"no.such"}\n'
     b'{"jsonrpc":"2.0","id":2,"method":"getinfo","params":[1]}',
     -32602),  # a notification gets no answer, even an error: the first answer is the second's
]


def _exchange(sock: socket.socket, line: bytes) -> dict:
    sock.sendall(line + b"\n")
    buffer = b""
    while not buffer.endswith(b"\n"):
        chunk = sock.recv(1 << 20)
        assert chunk, "the node closed the control socket instead of answering"
        buffer += chunk
    return json.loads(buffer)


def test_hostile_requests_get_errors_and_the_node_keeps_running(tmp_path: Path) -> None:
    info = init(tmp_path, "n1")
    socket_path = str(Path(info["config"]).parent / "data" / "agentd.sock")
    with running({"n1": info}) as processes:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(socket_path)
            for line, code in HOSTILE:
                response = _exchange(sock, line)
                assert "error" in response, (line[:60], response)
                if code is not None:
                    assert response["error"]["code"] == code, (line[:60], response)
        with socket.socket(socket.AF_UNIX) as sock:  # one line past the bound: refused, closed
            sock.settimeout(30)
            sock.connect(socket_path)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"x" * (MAX_REQUEST + 65536))
            answer = sock.recv(1 << 16)
            assert json.loads(answer)["error"]["code"] == -32600
        assert processes["n1"].poll() is None
        getinfo = json.loads(cli("-c", info["config"], "getinfo").stdout)
        assert getinfo["agent"] == info["agent"]


@pytest.mark.parametrize("method", ["getinfo", "help"])
def test_a_good_request_after_a_bad_one_on_the_same_socket(tmp_path: Path, method: str) -> None:
    info = init(tmp_path, "n1")
    socket_path = str(Path(info["config"]).parent / "data" / "agentd.sock")
    with running({"n1": info}), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(socket_path)
        assert _exchange(sock, b"[" * 100_000)["error"]["code"] == -32700
        batch = _exchange(sock, b'[{"jsonrpc":"2.0","id":1,"method":"getinfo"}]')["error"]
        assert (batch["code"], batch["message"]) == (-32600, "batches are not taken: send one "
                                                     "request object a line, each answered in turn")
        good = json.dumps({"jsonrpc": "2.0", "id": 7, "method": method}).encode()
        assert _exchange(sock, good)["id"] == 7
