"""Where a simulation's nodes run: all in this Trio process, or one ``agentd run`` each."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import random
import subprocess
from collections import Counter
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import trio

from agentd.config import Config
from agentd.errors import UserError
from agentd.localnodes import (
    RUN,
    LocalNode,
    free_ports,
    local_config,
    peer_section,
    spawn,
    stop,
    wait_ready,
    write_node,
)
from agentd.rpc import RpcError, call
from agentd.runtime.links import Links, Rule
from agentd.runtime.node import Node
from agentd.runtime.peers import PeerUnreachable
from agentd.sim.node import CUT, METHOD, PARTITION
from protocol.keys import SigningKey
from store import SharedWriter

RELAY_ACCESS = {"principal": "*", "resource": "*"}  # every sim node lets every other read


def _neighbours(names: list[str], edges: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {name: [] for name in names}
    for a, b in edges:
        out[a].append(b)
        out[b].append(a)
    return out


# Hundreds of nodes in one process hold millions of long-lived objects, and each of Python's
# full cyclic collections walked them all: 1,000 nodes in one process spent 26.5 s of an 88 s
# run in 34 full collections of up to 3.3 s each, every pause long enough to time acks out.
# So a process hosting nodes collects rarely (the young generation after 10,000 allocations,
# not 700; a full collection after 1,000 middle ones, not 10), and freezes what start-up and
# the tallies built (``InProcess.freeze``): 4.5 s of collections, 88 -> 63 s in all.
GC_THRESHOLD = (10_000, 50, 1000)


class InProcess:
    """All nodes in this Trio process: real sockets, Noise and SQLite, no subprocesses.

    Unless ``durable``, their databases share one writer thread with ``synchronous =
    NORMAL`` (see ``store.db``): a simulated crash is a process crash, not a power cut.

    Faults: ``crash`` cancels a node abruptly (its tasks, channels and in-memory state go;
    what its database committed stays) and ``restart`` starts a new node on the same key,
    port and database; ``cut`` closes one live connection; ``partition`` has every node
    refuse to dial across groups (and closes the channels that cross them) until ``heal``.
    ``agents`` names every node of the simulation (also those another worker process hosts,
    :mod:`agentd.sim.workers`), so a partition and a cut can name them.
    A call to a crashed node waits for its restart, and one the crash interrupted is made
    again on the restarted node, as a user whose call failed would."""

    def __init__(self, nursery: trio.Nursery, workdir: Path, writer: SharedWriter | None,
                 *, shaped: bool = False) -> None:
        """``shaped``: give the nodes link faults, for a scenario with delay or loss."""
        self.nursery = nursery
        self.workdir = workdir
        gc.set_threshold(*GC_THRESHOLD)
        self.nodes: dict[str, Node] = {}
        self.agents: dict[str, str] = {}  # name -> agent id, of every node of the sim
        self.database = {} if writer is None else {"shared": writer, "synchronous": "NORMAL"}
        self._configs: dict[str, Config] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._up: dict[str, trio.Event] = {}
        self._down: dict[str, trio.Event] = {}
        self._group: dict[str, int] | None = None  # the partition in force, by agent
        self._shaped = shaped
        self._links: dict[str, Links] = {}  # each node's link faults (kept across restarts)

    async def start(self, names: list[str], edges: list[tuple[str, str]],
                    house: str | None = None) -> dict[str, str]:
        logging_to: dict[str, Any] = {}
        if house is not None:
            node = await self.host(house, {"roles": ["clearinghouse"]}, {})
            logging_to = {"clearinghouse": {"agent": node.agent_id,
                                            "address": node.listen_address}}
        for name in names:
            await self.host(name, {}, {**logging_to, "relay": {"access": [RELAY_ACCESS]}})
        for name, others in _neighbours(names, edges).items():
            for other in others:
                peer = self.nodes[other]
                self.nodes[name].learn_peer(peer.agent_id, peer.listen_address, other)
        return {name: node.agent_id for name, node in self.nodes.items()}

    async def host(self, name: str, node_keys: dict[str, Any], sections: dict[str, Any]
                   ) -> Node:
        """Start node ``name`` here: ``node_keys`` go into its ``[node]``, ``sections`` beside."""
        config = local_config(self.workdir, name, sections=sections, **node_keys)
        node = await self._launch(name, config, SigningKey.generate())
        host, port = node.host, node.port  # restarts keep the port peers know
        self._configs[name] = dataclasses.replace(config, listen=f"{host}:{port}")
        self.agents[name] = node.agent_id
        return node

    async def _launch(self, name: str, config: Config, key: SigningKey) -> Node:
        node = Node(config, key, database=self.database)
        if self._shaped:
            node.links = self._links.setdefault(name, Links())
        self._down[name] = trio.Event()
        await self.nursery.start(self._run_node, name, node)
        self._guard(node)
        self.nodes[name] = node
        self._up.setdefault(name, trio.Event()).set()  # (crash left an unset one: waited on)
        return node

    async def _run_node(self, name: str, node: Node, *,
                        task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        down = self._down[name]
        try:
            with trio.CancelScope() as self._scopes[name]:
                await node.run(task_status=task_status)
        finally:
            down.set()

    def _guard(self, node: Node) -> None:
        """Let a partition stop this node dialling across it (sim only)."""
        dial = node.peers.connect

        async def connect(agent: str, address: str | None) -> Any:
            group = self._group
            if group is not None and group.get(agent, -1) != group.get(node.agent_id, -2):
                raise PeerUnreachable(f"partitioned from {agent[:8]} (sim fault)")
            return await dial(agent, address)

        node.peers.connect = connect  # type: ignore[method-assign]

    async def call(self, name: str, method: str, params: dict) -> Any:
        while True:
            await self._up[name].wait()
            node = self.nodes[name]
            try:
                return await node.rpc.call(method, params)
            except Exception:
                if self.nodes[name] is node and self._up[name].is_set():
                    raise
                # the node crashed during the call: make it again once it is back

    # -- faults ------------------------------------------------------------------------

    async def crash(self, name: str) -> None:
        self._up[name] = trio.Event()
        self._scopes[name].cancel()
        await self._down[name].wait()

    async def restart(self, name: str) -> None:
        old = self.nodes[name]
        with trio.CancelScope(shield=True):
            await self._launch(name, self._configs[name], old.key)  # peers: from its db

    async def cut(self, rng: random.Random) -> str | None:
        """Close one random live connection; which, or None when there is none."""
        live = [(name, channel) for name, node in self.nodes.items() if self._up[name].is_set()
                for channels in node.peers.channels.values() for channel in channels
                if channel.alive]
        if not live:
            return None
        name, channel = rng.choice(live)
        channel.close("sim_cut")
        return f"{name} - {self._name_of(channel.agent)}"

    async def partition(self, groups: list[list[str]]) -> None:
        self._group = {self.agents[name]: i for i, group in enumerate(groups)
                       for name in group}
        for node in self.nodes.values():
            for agent, channels in list(node.peers.channels.items()):
                if self._group.get(agent, -1) != self._group.get(node.agent_id, -2):
                    for channel in list(channels):
                        channel.close("sim_partition")

    async def heal(self) -> None:
        self._group = None

    async def shape(self, name: str, peer: str, fault: str, rule: Rule | None) -> None:
        """Put link fault ``fault`` in force on ``name``'s frames to ``peer`` (None: heal)."""
        self._links[name].set(self.agents[peer], fault, rule)

    async def link_counts(self) -> dict[str, int]:
        return dict(sum((Counter(links.counts()) for links in self._links.values()), Counter()))

    def _name_of(self, agent: str) -> str:
        return next((name for name, known in self.agents.items() if known == agent),
                    agent[:8])

    async def freeze(self) -> None:
        """Take what the nodes hold so far out of the cyclic garbage collector's sight (see
        :data:`GC_THRESHOLD`); called once the nodes are up and once the tallies are open."""
        gc.freeze()

    async def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


class Processes:
    """One ``agentd run`` OS process per node, peered by config, driven by its socket."""

    def __init__(self, workdir: Path, *, faulted: bool = False) -> None:
        """``faulted``: start the nodes as ``agentd.sim.node`` (``agentd run`` with network
        faults), for a scenario with cut, partition, delay or loss faults."""
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.sockets: dict[str, Path] = {}
        self._module = ("agentd.sim.node",) if faulted else RUN
        self._groups: list[list[str]] | None = None  # the partition in force
        self._rules: dict[str, dict[tuple[str, str], Rule]] = {}  # name -> (peer, fault) -> rule
        self._counted: dict[str, Counter] = {}  # link counts of each node: earlier lives
        self._seen: dict[str, dict[str, int]] = {}  # ... and its current one, as last seen
        self.rss_kib = 0  # the nodes' peak resident memory, summed, once stopped

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
        self.procs = {node.name: spawn(node, self._module, own_group=True) for node in nodes}
        self.sockets = {node.name: node.socket for node in nodes}
        self._nodes = {node.name: node for node in nodes}
        self._up = {node.name: trio.Event() for node in nodes}
        for event in self._up.values():
            event.set()
        try:
            await trio.to_thread.run_sync(wait_ready, nodes, list(self.procs.values()))
        except RuntimeError as exc:
            raise UserError(str(exc)) from exc
        return {name: node.key.agent_id for name, node in planned.items()}

    async def call(self, name: str, method: str, params: dict) -> Any:
        while True:
            await self._up[name].wait()
            process = self.procs[name]
            try:
                return await trio.to_thread.run_sync(
                    partial(call, self.sockets[name], method, params, 60))
            except (UserError, OSError):
                if self.procs[name] is process and self._up[name].is_set():
                    raise
                # killed during the call: make it again once it is back

    async def crash(self, name: str) -> None:
        """SIGKILL: no clean shutdown, as a real crash."""
        self._up[name] = trio.Event()
        self.procs[name].kill()
        await trio.to_thread.run_sync(self.procs[name].wait)

    async def restart(self, name: str) -> None:
        node = self._nodes[name]
        node.socket.unlink(missing_ok=True)
        self.procs[name] = spawn(node, self._module, own_group=True)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(wait_ready, [node], [self.procs[name]])
            self._counted.setdefault(name, Counter()).update(self._seen.pop(name, {}))
            for (peer, fault), rule in self._rules.get(name, {}).items():  # a new process
                await self._set_link(name, peer, fault, rule)
            if self._groups is not None:  # ... that must not reach across the partition
                await trio.to_thread.run_sync(partial(
                    call, self.sockets[name], PARTITION, {"agents": self._apart(name)}, 60))
        self._up[name].set()

    async def cut(self, rng: random.Random) -> str | None:
        """Close one random live connection (asking random nodes until one has one): which,
        or None when there is none."""
        names = [name for name in self.procs if self._up[name].is_set()]
        rng.shuffle(names)
        for name in names:
            agent = await self.call(name, CUT, {"seed": rng.randrange(2**31)})
            if agent is not None:
                peer = next((other for other, node in self._nodes.items()
                             if node.key.agent_id == agent), agent[:8])
                return f"{name} - {peer}"
        return None

    async def partition(self, groups: list[list[str]]) -> None:
        self._groups = groups
        for name in self.procs:
            if self._up[name].is_set():  # (a crashed node is told as it restarts)
                await self.call(name, PARTITION, {"agents": self._apart(name)})

    async def heal(self) -> None:
        self._groups = None
        for name in self.procs:
            if self._up[name].is_set():
                await self.call(name, PARTITION, {"agents": []})

    def _apart(self, name: str) -> list[str]:
        """The agents of every node in another group than ``name``'s (or in none)."""
        group = {member: i for i, members in enumerate(self._groups or []) for member in members}
        ours = group.get(name, -1)
        return sorted(node.key.agent_id for other, node in self._nodes.items()
                      if other != name and (ours == -1 or group.get(other, -2) != ours))

    async def shape(self, name: str, peer: str, fault: str, rule: Rule | None) -> None:
        rules = self._rules.setdefault(name, {})
        if rule is None:
            rules.pop((peer, fault), None)
        else:
            rules[(peer, fault)] = rule
        if self._up[name].is_set():  # (a crashed node is given its rules as it restarts)
            self._seen[name] = await self.call(name, METHOD, self._link(peer, fault, rule))

    async def _set_link(self, name: str, peer: str, fault: str, rule: Rule | None) -> None:
        self._seen[name] = await trio.to_thread.run_sync(partial(
            call, self.sockets[name], METHOD, self._link(peer, fault, rule), 60))

    def _link(self, peer: str, fault: str, rule: Rule | None) -> dict[str, Any]:
        return {"peer": self._nodes[peer].key.agent_id, "fault": fault,
                "rule": None if rule is None else asdict(rule)}

    async def link_counts(self) -> dict[str, int]:
        """Frames dropped and delayed, by every node in all its lives (what a killed process
        had counted since the sim last asked it is lost with it)."""
        total: Counter = Counter()
        for name in self.procs:
            self._seen[name] = await self.call(name, METHOD, {})
            total.update(self._counted.get(name, Counter()))
            total.update(self._seen[name])
        return dict(total)

    async def freeze(self) -> None:
        """Nothing to do: each node is a process of its own, with a small heap."""

    async def stop(self) -> None:
        self.rss_kib = sum(_peak_kib(proc.pid) for proc in self.procs.values())
        for name in self.procs:
            if not self._up[name].is_set():  # crashed, its restart cancelled (Ctrl-C): a
                continue                     # call would wait for it for ever; killed below
            with contextlib.suppress(RpcError, UserError, OSError):
                await self.call(name, "stop", {})
        await trio.to_thread.run_sync(stop, list(self.procs.values()))


def _peak_kib(pid: int) -> int:
    """A live process's peak resident memory (0 once it is gone, or off Linux)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM")),
                        0)
    except OSError:
        return 0
