"""The control link between ``agentd sim`` and its worker processes: msgpack messages over a
socket pair, each side one reader and one writer task.

A request is ``[id, op, args]``, its answer ``[id, ok, value]``. Many calls are in flight
at once (``[sim] concurrency``), so the writer sends whatever has queued up in one write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import trio

from agentd.rpc import RpcError

QUEUE = 4096  # messages queued for one write at most; a full queue makes senders wait
READ = 1 << 16


class Link:
    """One end of a control link on ``stream``; ``run`` reads until the other end closes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._send, self._queue = trio.open_memory_channel[bytes](QUEUE)

    async def send(self, message: list) -> None:
        await self._send.send(msgpack.packb(message, use_bin_type=True))

    async def run(self, on_message: Callable[[Any], None]) -> None:
        """Hand each message that arrives to ``on_message`` until the other end closes."""
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write)
            while data := await self.stream.receive_some(READ):
                unpacker.feed(data)
                for message in unpacker:
                    on_message(message)
            nursery.cancel_scope.cancel()

    async def _write(self) -> None:
        async for first in self._queue:
            batch = [first]
            while True:
                try:
                    batch.append(self._queue.receive_nowait())
                except trio.WouldBlock:
                    break
            await self.stream.send_all(b"".join(batch))

    async def aclose(self) -> None:
        await self.stream.aclose()


def error_value(exc: BaseException) -> dict[str, Any]:
    """An exception as an answer's value: an RPC error keeps its code, message and reason."""
    if isinstance(exc, RpcError):
        return {"rpc": [exc.code, exc.message, exc.reason]}
    return {"error": f"{type(exc).__name__}: {exc}"}
