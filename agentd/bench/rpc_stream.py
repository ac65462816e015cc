"""Persistent JSON-RPC connections to nodes' control sockets, for benchmarks.

``agentd.rpc.call`` opens a connection per call, as the CLI does. A benchmark that makes
thousands of calls would then measure connection set-up on both sides (and a thread per call
here) as much as the node: these keep their connections open, as an application would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from agentd.rpc import result_of


class RpcStream:
    """One persistent JSON-RPC connection to a node's control socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.next_id = 0

    @classmethod
    async def open(cls, path: Path) -> RpcStream:
        return cls(await trio.open_unix_socket(str(path)))

    async def call(self, method: str, params: dict) -> dict:
        """The whole response: a map with ``result`` or ``error``."""
        self.next_id += 1
        request = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        await self.stream.send_all(json.dumps(request).encode() + b"\n")
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise RuntimeError("the node closed its control socket")
            self.buffer += data
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        return json.loads(line)


class RpcPool:
    """Idle connections per control socket: a caller takes one (or opens one), calls, and
    gives it back, so concurrent callers never share a connection."""

    def __init__(self) -> None:
        self._idle: dict[Path, list[RpcStream]] = {}

    async def call(self, path: Path, method: str, **params: Any) -> Any:
        """The method's result; raises ``RpcError`` as ``agentd.rpc.call`` does."""
        idle = self._idle.setdefault(path, [])
        stream = idle.pop() if idle else await RpcStream.open(path)
        response = await stream.call(method, params)
        idle.append(stream)
        return result_of(response)

    async def aclose(self) -> None:
        for streams in self._idle.values():
            for stream in streams:
                await stream.stream.aclose()
        self._idle.clear()
