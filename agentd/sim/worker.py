"""A worker process of ``agentd sim --workers N``: it hosts its share of the nodes (real
``Node``s, as :class:`~agentd.sim.backends.InProcess` runs them) and does what the parent
asks over the control link (:mod:`agentd.sim.wire`): start a node, give it its peers, make
an RPC call on it, crash and restart it, cut or partition its connections, stop.

Started by :mod:`agentd.sim.workers` as ``python -m agentd.sim.worker FD WORKDIR
[--durable] [--shaped]``, FD being its end of a socket pair; it exits when the parent closes
it.
"""

from __future__ import annotations

import contextlib
import random
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import trio

from agentd.runtime.links import Rule
from agentd.sim.backends import InProcess
from agentd.sim.wire import Link, error_value
from store import SharedWriter

SWITCH_INTERVAL = 0.0002  # as agentd.sim sets for its own in-process run (see there)
OPS = frozenset({"host", "learn", "know", "call", "crash", "restart", "cut", "partition",
                 "heal", "shape", "link_counts", "freeze", "stop"})


class Host:
    """The operations the parent may ask for, each on this worker's ``InProcess`` nodes."""

    def __init__(self, backend: InProcess) -> None:
        self.backend = backend

    async def host(self, name: str, node_keys: dict, sections: dict) -> list[str]:
        node = await self.backend.host(name, node_keys, sections)
        return [node.agent_id, node.listen_address]

    async def learn(self, links: list[list[str]]) -> None:
        """``[name, agent, address, other]``: node ``name`` learns its peer ``other``."""
        for name, agent, address, other in links:
            self.backend.nodes[name].learn_peer(agent, address, other)

    async def know(self, agents: dict[str, str]) -> None:
        self.backend.agents.update(agents)

    async def call(self, name: str, method: str, params: dict) -> Any:
        return await self.backend.call(name, method, params)

    async def crash(self, name: str) -> None:
        await self.backend.crash(name)

    async def restart(self, name: str) -> None:
        await self.backend.restart(name)

    async def cut(self, seed: int) -> str | None:
        return await self.backend.cut(random.Random(seed))

    async def partition(self, groups: list[list[str]]) -> None:
        await self.backend.partition(groups)

    async def heal(self) -> None:
        await self.backend.heal()

    async def shape(self, name: str, peer: str, fault: str, rule: dict | None) -> None:
        await self.backend.shape(name, peer, fault, None if rule is None else Rule(**rule))

    async def link_counts(self) -> dict[str, int]:
        return await self.backend.link_counts()

    async def freeze(self) -> None:
        await self.backend.freeze()

    async def stop(self) -> int:
        """Stop every node; this process's peak resident memory, in KiB."""
        await self.backend.stop()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def serve(fd: int, workdir: Path, durable: bool, shaped: bool) -> None:
    sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
    link = Link(trio.SocketStream(sock))
    writer = contextlib.nullcontext(None) if durable else SharedWriter()
    with writer as shared:
        async with trio.open_nursery() as nodes:
            host = Host(InProcess(nodes, workdir, shared, shaped=shaped))

            async def answer(message: list) -> None:
                ident, op, args = message
                try:
                    if op not in OPS:
                        raise ValueError(f"no such worker operation: {op!r}")
                    value, ok = await getattr(host, op)(*args), True
                except Exception as exc:  # sent to the parent, which raises it there
                    value, ok = error_value(exc), False
                await link.send([ident, ok, value])

            async with trio.open_nursery() as requests:
                await link.run(lambda message: requests.start_soon(answer, message))
                requests.cancel_scope.cancel()  # the parent is gone: so is what it asked
            await host.backend.stop()


def main(argv: list[str]) -> None:
    # Ctrl-C reaches the terminal's whole process group: the parent stops the run and then
    # its workers (each printed its own traceback, and the parent took that as its failure)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd, workdir = int(argv[0]), Path(argv[1])
    if "--durable" not in argv:
        sys.setswitchinterval(SWITCH_INTERVAL)
    trio.run(serve, fd, workdir, "--durable" in argv, "--shaped" in argv)


if __name__ == "__main__":
    main(sys.argv[1:])
