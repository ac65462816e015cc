"""``agentd sim --workers N``: the nodes sharded across N worker OS processes.

Python runs one thread of a process at a time, so one process simulates on one core; N
workers (:mod:`agentd.sim.worker`) each host every N-th node as real ``Node``s linked by real
loopback TCP and Noise — across workers as within one. This process only coordinates: it
starts the nodes, gives them their peers, and forwards every RPC call and fault to the
worker hosting the node, over a msgpack control link (:mod:`agentd.sim.wire`). Crash and
restart act inside the worker (the node is cancelled and started again from its database);
a cut closes a random live connection of a random worker; a partition is put in force by
every worker on its own nodes; delay and loss shape the node's links in its worker.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import socket
import sys
from collections import Counter
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import trio

from agentd.errors import UserError
from agentd.rpc import RpcError
from agentd.runtime.links import Rule
from agentd.sim import backends
from agentd.sim.wire import Link

STARTING = 16  # nodes a worker starts at once
STOP_TIMEOUT = 10.0  # s a worker has to exit once stopped, then it is killed


class WorkerFailed(UserError):
    """A worker process answered an operation with an error that is not an RPC error."""


class _Worker:
    def __init__(self, index: int, link: Link, process: trio.Process) -> None:
        self.index = index
        self.link = link
        self.process = process
        self.names: list[str] = []
        self.stopping = False


class Workers:
    """The simulation backend that shards the nodes across ``count`` worker processes."""

    def __init__(self, nursery: trio.Nursery, workdir: Path, count: int, *,
                 durable: bool = False, shaped: bool = False) -> None:
        """``durable`` and ``shaped`` as for :class:`~agentd.sim.backends.InProcess`."""
        self.nursery = nursery
        self.workdir = workdir
        self.count = count
        self.durable = durable
        self.shaped = shaped
        self.rss_kib = 0  # the workers' peak resident memory, summed, once stopped
        self._workers: list[_Worker] = []
        self._where: dict[str, _Worker] = {}
        self._ids = itertools.count()
        self._waiting: dict[int, tuple[trio.Event, list]] = {}

    async def start(self, names: list[str], edges: list[tuple[str, str]],
                    house: str | None = None) -> dict[str, str]:
        everyone = [*([house] if house else []), *names]
        for index in range(min(self.count, len(everyone))):
            self._workers.append(await self._spawn(index))
        for i, name in enumerate(everyone):
            worker = self._workers[i % len(self._workers)]
            worker.names.append(name)
            self._where[name] = worker
        places: dict[str, list[str]] = {}  # name -> [agent, address]
        logging_to: dict[str, Any] = {}
        if house is not None:
            places[house] = await self._ask(self._where[house], "host", house,
                                            {"roles": ["clearinghouse"]}, {})
            logging_to = {"clearinghouse": {"agent": places[house][0],
                                            "address": places[house][1]}}
        sections = {**logging_to, "relay": {"access": [backends.RELAY_ACCESS]}}

        async def host_all(worker: _Worker) -> None:
            limit = trio.Semaphore(STARTING)

            async def one(name: str) -> None:
                async with limit:
                    places[name] = await self._ask(worker, "host", name, {}, sections)

            async with trio.open_nursery() as nursery:
                for name in worker.names:
                    if name != house:
                        nursery.start_soon(one, name)

        async with trio.open_nursery() as nursery:
            for worker in self._workers:
                nursery.start_soon(host_all, worker)
        agents = {name: place[0] for name, place in places.items()}
        links: dict[int, list[list[str]]] = {w.index: [] for w in self._workers}
        for name, others in backends._neighbours(names, edges).items():
            links[self._where[name].index] += [[name, *places[other], other]
                                               for other in others]
        for worker in self._workers:
            await self._ask(worker, "know", agents)
            await self._ask(worker, "learn", links[worker.index])
        return {name: agents[name] for name in everyone}

    async def _spawn(self, index: int) -> _Worker:
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "agentd.sim.worker", str(theirs.fileno()),
                   str(self.workdir), *(["--durable"] if self.durable else []),
                   *(["--shaped"] if self.shaped else [])]
        try:
            process = await self.nursery.start(partial(
                trio.run_process, command, check=False, pass_fds=(theirs.fileno(),)))
        finally:
            theirs.close()
        worker = _Worker(index, Link(trio.SocketStream(trio.socket.from_stdlib_socket(ours))),
                         process)
        self.nursery.start_soon(self._read, worker)
        return worker

    async def _read(self, worker: _Worker) -> None:
        await worker.link.run(self._answered)
        await worker.link.aclose()
        if not worker.stopping:
            code = await worker.process.wait()
            raise UserError(f"agentd sim: worker process {worker.index} (nodes "
                            f"{', '.join(worker.names[:4])}...) exited with code {code} in the "
                            "middle of the simulation; its error is printed above")

    def _answered(self, message: list) -> None:
        ident, ok, value = message
        event, slot = self._waiting.pop(ident)
        slot.extend((ok, value))
        event.set()

    async def _ask(self, worker: _Worker, op: str, *args: Any) -> Any:
        ident = next(self._ids)
        event, slot = trio.Event(), []
        self._waiting[ident] = (event, slot)
        await worker.link.send([ident, op, list(args)])
        await event.wait()
        ok, value = slot
        if ok:
            return value
        if "rpc" in value:
            raise RpcError(*value["rpc"])
        raise WorkerFailed(f"agentd sim: worker process {worker.index}, {op}: {value['error']}")

    async def call(self, name: str, method: str, params: dict) -> Any:
        return await self._ask(self._where[name], "call", name, method, params)

    async def crash(self, name: str) -> None:
        await self._ask(self._where[name], "crash", name)

    async def restart(self, name: str) -> None:
        with trio.CancelScope(shield=True):
            await self._ask(self._where[name], "restart", name)

    async def cut(self, rng: random.Random) -> str | None:
        """Close one random live connection of a random worker (another one, if that one has
        none); which, or None when there is none."""
        order = list(self._workers)
        rng.shuffle(order)
        for worker in order:
            if cut := await self._ask(worker, "cut", rng.getrandbits(32)):
                return cut
        return None

    async def partition(self, groups: list[list[str]]) -> None:
        for worker in self._workers:
            await self._ask(worker, "partition", groups)

    async def heal(self) -> None:
        for worker in self._workers:
            await self._ask(worker, "heal")

    async def shape(self, name: str, peer: str, fault: str, rule: Rule | None) -> None:
        """Put link fault ``fault`` in force on ``name``'s frames to ``peer`` (None: heal)."""
        await self._ask(self._where[name], "shape", name, peer, fault,
                        None if rule is None else asdict(rule))

    async def link_counts(self) -> dict[str, int]:
        total: Counter = Counter()
        for worker in self._workers:
            total.update(await self._ask(worker, "link_counts"))
        return dict(total)

    async def freeze(self) -> None:
        """Every worker freezes what its nodes hold so far (``InProcess.freeze``)."""
        async with trio.open_nursery() as nursery:
            for worker in self._workers:
                nursery.start_soon(self._ask, worker, "freeze")

    async def stop(self) -> None:
        """Stop every node, then every worker (killed if it has not exited in time)."""
        with trio.CancelScope(shield=True):
            for worker in self._workers:
                worker.stopping = True
                with trio.move_on_after(STOP_TIMEOUT), contextlib.suppress(
                        WorkerFailed, trio.BrokenResourceError, trio.ClosedResourceError):
                    self.rss_kib += await self._ask(worker, "stop")
                    await worker.link.stream.send_eof()  # the worker exits when it reads this
            for worker in self._workers:
                with trio.move_on_after(STOP_TIMEOUT):
                    await worker.process.wait()
                if worker.process.returncode is None:
                    worker.process.kill()
                    await worker.process.wait()
