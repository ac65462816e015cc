"""Start N real nodes in one Trio process: loopback TCP, Noise, SQLite files, no mocks.

``async with network(tmp_path, n=5) as nodes`` yields started :class:`Node` objects that
all know each other as peers. ``restart(nodes, i)`` stops one and starts it again on the
same port and data dir with the same config, as a crash-free restart would.
``network(..., clearinghouse=i)`` gives node ``i`` the clearing-house role and names it in
every other node's ``[clearinghouse]`` section.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import trio

from agentd.localnodes import local_config, start_node
from agentd.runtime.node import Node
from agentd.runtime.peers import PeerUnreachable
from agentd.runtime.transport import Channel
from protocol.keys import SigningKey

node_config = local_config  # a parsed config; ``sections`` adds tables like ``clearinghouse``


class Network:
    def __init__(self, nursery: trio.Nursery, tmp_path: Path) -> None:
        self.nursery = nursery
        self.tmp_path = tmp_path
        self.nodes: list[Node] = []
        self._scopes: list[trio.CancelScope] = []
        self._options: dict[str, dict[str, Any]] = {}

    async def start(self, name: str, key: SigningKey, port: int = 0, *,
                    sections: dict[str, Any] | None = None, **node_keys: Any) -> Node:
        self._options[name] = {"sections": sections, **node_keys}
        return await start_node(self.nursery, node_config(self.tmp_path, name, port,
                                                          sections=sections, **node_keys), key)

    def introduce(self) -> None:
        for a in self.nodes:
            for b in self.nodes:
                if a is not b:
                    a.learn_peer(b.agent_id, b.listen_address, b.config.name)

    async def stop(self, index: int) -> None:
        node = self.nodes[index]
        node.stop()
        with trio.fail_after(10):
            while node.db is not None and not node.db.closed:
                await trio.sleep(0.01)

    async def restart(self, index: int, meanwhile: Callable[[Node], None] | None = None
                      ) -> Node:
        """``meanwhile`` is called with the stopped node (its data dir closed), e.g. to rewind
        its database to an older version, as an upgrade would find it."""
        old = self.nodes[index]
        await self.stop(index)
        if meanwhile is not None:
            meanwhile(old)
        node = await self.start(old.config.name, old.key, old.port,
                                **self._options[old.config.name])
        self.nodes[index] = node
        self.introduce()
        return node


@contextlib.asynccontextmanager
async def network(tmp_path: Path, n: int, *, clearinghouse: int | None = None,
                  sections: dict[str, Any] | None = None,
                  **node_keys: Any) -> AsyncIterator[Network]:
    """``sections`` adds top-level config tables (e.g. ``relay``, ``lift``) to every node."""
    async with trio.open_nursery() as nursery:
        net = Network(nursery, tmp_path)
        started: dict[int, Node] = {}
        if clearinghouse is not None:
            house = await net.start(f"n{clearinghouse}", SigningKey.generate(),
                                    roles=["clearinghouse"], sections=sections, **node_keys)
            started[clearinghouse] = house
            sections = {**(sections or {}), "clearinghouse": {
                "agent": house.agent_id, "address": house.listen_address}}
        for i in range(n):
            if i not in started:
                started[i] = await net.start(f"n{i}", SigningKey.generate(), sections=sections,
                                             **node_keys)
        net.nodes.extend(started[i] for i in range(n))
        net.introduce()
        try:
            yield net
        finally:
            for node in net.nodes:
                node.stop()


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; fail the test with a clear message on timeout."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(interval)
        return
    raise AssertionError(f"condition not reached within {timeout} s: {predicate.__doc__ or ''}")


__all__ = ["Network", "dial_failures", "network", "node_config", "start_node", "wait_for"]


def dial_failures(node: Node) -> list[str]:
    """Record each failed dial of ``node``'s pump from now on (the list fills as it happens):
    a test waits on it to know the pump really tried, and failed, to reach a peer."""
    failures: list[str] = []
    connect = node.peers.connect

    async def recording(agent: str, address: str | None) -> Channel:
        try:
            return await connect(agent, address)
        except PeerUnreachable as exc:
            failures.append(str(exc))
            raise

    node.peers.connect = recording  # type: ignore[method-assign]
    return failures
