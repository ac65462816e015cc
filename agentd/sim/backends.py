"""Where a simulation's nodes run: all in this Trio process, or one ``agentd run`` each."""

from __future__ import annotations

import contextlib
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import trio

from agentd.errors import UserError
from agentd.localnodes import (
    LocalNode,
    free_ports,
    local_config,
    peer_section,
    spawn,
    start_node,
    stop,
    wait_ready,
    write_node,
)
from agentd.rpc import RpcError, call
from agentd.runtime.node import Node
from protocol.keys import SigningKey
from store import SharedWriter

RELAY_ACCESS = {"principal": "*", "resource": "*"}  # every sim node lets every other read


def _neighbours(names: list[str], edges: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {name: [] for name in names}
    for a, b in edges:
        out[a].append(b)
        out[b].append(a)
    return out


class InProcess:
    """All nodes in this Trio process: real sockets, Noise and SQLite, no subprocesses.

    Unless ``durable``, their databases share one writer thread with ``synchronous =
    NORMAL`` (see ``store.db``): a simulated crash is a process crash, not a power cut."""

    def __init__(self, nursery: trio.Nursery, workdir: Path, writer: SharedWriter | None
                 ) -> None:
        self.nursery = nursery
        self.workdir = workdir
        self.nodes: dict[str, Node] = {}
        self.database = {} if writer is None else {"shared": writer, "synchronous": "NORMAL"}

    async def start(self, names: list[str], edges: list[tuple[str, str]],
                    house: str | None = None) -> dict[str, str]:
        logging_to: dict[str, Any] = {}
        if house is not None:
            node = await self._start(house, {"roles": ["clearinghouse"]}, {})
            logging_to = {"clearinghouse": {"agent": node.agent_id,
                                            "address": node.listen_address}}
        for name in names:
            await self._start(name, {}, {**logging_to, "relay": {"access": [RELAY_ACCESS]}})
        for name, others in _neighbours(names, edges).items():
            for other in others:
                peer = self.nodes[other]
                self.nodes[name].learn_peer(peer.agent_id, peer.listen_address, other)
        return {name: node.agent_id for name, node in self.nodes.items()}

    async def _start(self, name: str, node_keys: dict[str, Any], sections: dict[str, Any]
                     ) -> Node:
        config = local_config(self.workdir, name, sections=sections, **node_keys)
        node = self.nodes[name] = await start_node(self.nursery, config, **self.database)
        return node

    async def call(self, name: str, method: str, params: dict) -> Any:
        return await self.nodes[name].rpc.call(method, params)

    async def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


class Processes:
    """One ``agentd run`` OS process per node, peered by config, driven by its socket."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.sockets: dict[str, Path] = {}

    async def start(self, names: list[str], edges: list[tuple[str, str]],
                    house: str | None = None) -> dict[str, str]:
        everyone = [*names, *([house] if house else [])]
        planned = {name: LocalNode(name, self.workdir / name, SigningKey.generate(), port)
                   for name, port in zip(everyone, free_ports(len(everyone)), strict=True)}
        logging_to = "" if house is None else (
            f'[clearinghouse]\nagent = "{planned[house].key.agent_id}"\n'
            f'address = "{planned[house].address}"\n')
        nodes = []
        if house is not None:
            nodes.append(write_node(planned[house].directory, house, planned[house].port,
                                    key=planned[house].key,
                                    node_keys='roles = ["clearinghouse"]'))
        access = (f'[[relay.access]]\nprincipal = "{RELAY_ACCESS["principal"]}"\n'
                  f'resource = "{RELAY_ACCESS["resource"]}"\n')
        for name, others in _neighbours(names, edges).items():
            node = planned[name]
            peers = "".join(peer_section(planned[other]) for other in others)
            nodes.append(write_node(node.directory, name, node.port, key=node.key,
                                    sections=logging_to + access + peers))
        self.procs = {node.name: spawn(node) for node in nodes}
        self.sockets = {node.name: node.socket for node in nodes}
        try:
            await trio.to_thread.run_sync(wait_ready, nodes, list(self.procs.values()))
        except RuntimeError as exc:
            raise UserError(str(exc)) from exc
        return {name: node.key.agent_id for name, node in planned.items()}

    async def call(self, name: str, method: str, params: dict) -> Any:
        return await trio.to_thread.run_sync(partial(call, self.sockets[name], method, params, 60))

    async def stop(self) -> None:
        for name in self.procs:
            with contextlib.suppress(RpcError, UserError, OSError):
                await self.call(name, "stop", {})
        await trio.to_thread.run_sync(stop, list(self.procs.values()))
