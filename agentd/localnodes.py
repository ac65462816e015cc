"""Local agentd nodes — for ``agentd sim``, the benchmarks and the tests.

In this Trio process: :func:`local_config` builds a node's config in a work directory and
:func:`start_node` starts a :class:`Node` on it in a nursery (the one way every harness does).
As OS processes: :func:`write_node` lays out a node directory (key with mode 0600, config, data
in the same directory), :func:`spawn` starts ``agentd run`` on it, and :func:`wait_ready`
waits for the control sockets, failing with the node's name if one exits first.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomlkit

from agentd.config import Config, parse_config
from protocol.keys import SigningKey

if TYPE_CHECKING:
    import trio

    from agentd.runtime.node import Node

READY_TIMEOUT = 30.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def local_config(workdir: Path, name: str, port: int = 0, *,
                 sections: dict[str, Any] | None = None, **node_keys: Any) -> Config:
    """The config of node ``name`` with its data in ``workdir/name``, listening on loopback
    (``port`` 0: any free port); ``node_keys`` go into ``[node]``, ``sections`` beside it."""
    data_dir = workdir / name
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    raw = {"node": {"name": name, "data_dir": str(data_dir), "listen": f"127.0.0.1:{port}",
                    **node_keys}, **(sections or {})}
    return parse_config(raw, workdir / f"{name}.toml")


async def start_node(nursery: trio.Nursery, config: Config, key: SigningKey | None = None,
                     **database: Any) -> Node:
    """A :class:`Node` on ``config`` running in ``nursery``, started (listening) on return;
    ``database`` are options for ``Database.open`` (a shared writer, ``synchronous``)."""
    from agentd.runtime.node import Node  # the runtime is only loaded by in-process harnesses

    node = Node(config, key or SigningKey.generate(), database=database)
    await nursery.start(node.run)
    return node


@dataclass(frozen=True)
class LocalNode:
    name: str
    directory: Path
    key: SigningKey
    port: int

    @property
    def config(self) -> Path:
        return self.directory / "agentd.toml"

    @property
    def socket(self) -> Path:
        return self.directory / "agentd.sock"

    @property
    def database(self) -> Path:
        return self.directory / "agentd.db"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def write_node(directory: Path, name: str, port: int, *, key: SigningKey | None = None,
               node_keys: str = "", sections: str = "", log_level: str = "warning"
               ) -> LocalNode:
    """A node directory; ``node_keys`` go into ``[node]``, ``sections`` after it (TOML)."""
    node = LocalNode(name, directory, key or SigningKey.generate(), port)
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / "agent.key"
    key_file.write_text(node.key.dump())
    key_file.chmod(0o600)
    node.config.write_text(
        f'[node]\nname = {toml_string(name)}\ndata_dir = "."\n'
        f'listen = {toml_string(node.address)}\n{node_keys}\n'
        f'{sections}\n[log]\nlevel = {toml_string(log_level)}\n')
    return node


def peer_section(node: LocalNode) -> str:
    return (f"[[peers]]\nname = {toml_string(node.name)}\n"
            f"agent = {toml_string(node.key.agent_id)}\naddress = {toml_string(node.address)}\n")


def toml_string(value: str) -> str:
    """``value`` as a TOML string: a name (a sim's node names are the scenario's) may hold a
    quote, a backslash or a character TOML must have escaped, which quoting alone broke."""
    return tomlkit.string(value).as_string()


RUN = ("agentd", "run")


def spawn(node: LocalNode, module: tuple[str, ...] = RUN, *,
          own_group: bool = False) -> subprocess.Popen:
    """``agentd run`` on ``node`` (or another ``python -m`` module taking ``-c CONFIG``, such
    as the sim's ``agentd.sim.node``); its log goes to ``agentd.log`` in the node directory.
    ``own_group``: out of the terminal's process group, so that Ctrl-C reaches the caller
    alone, which stops the node itself (a node stopping on its own at the same moment closed
    its socket under the caller's calls, which failed first)."""
    with open(node.directory / "agentd.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", *module, "-c", str(node.config)],
                                stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=own_group)


def wait_ready(nodes: list[LocalNode], processes: list[subprocess.Popen],
               timeout: float = READY_TIMEOUT) -> None:
    """Wait until every node's control socket takes a connection. Its file appears when the
    node binds it, a moment before it listens: a call made then was refused (a sim on a
    loaded machine failed so, "no agentd is running here")."""
    deadline = time.monotonic() + timeout
    for node, process in zip(nodes, processes, strict=True):
        while not _answers(node.socket):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {node.name} did not start; see "
                                   f"{node.directory / 'agentd.log'}")
            time.sleep(0.05)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def cpu_seconds(processes: list[subprocess.Popen]) -> list[float] | None:
    """CPU time (user and system, every thread's) each process has used so far, from its
    CPU-time clock, to the nanosecond: Linux's ``/proc/PID/stat`` counts it in clock ticks
    (10 ms), so a phase of a few ms a process read 0 or 10 ms each, and a short bench phase
    could read 0.0 over every process. None where the C library has no such clock, or once one
    of the processes has gone."""
    try:
        return [time.clock_gettime(_cpu_clock(process.pid)) for process in processes]
    except OSError:
        return None


@functools.cache
def _clock_getcpuclockid() -> Any:
    """The C library's ``clock_getcpuclockid``, looked up once (None where it has none)."""
    return getattr(ctypes.CDLL(None), "clock_getcpuclockid", None)


def _cpu_clock(pid: int) -> int:
    """The id of process ``pid``'s CPU-time clock (POSIX ``clock_getcpuclockid``)."""
    find = _clock_getcpuclockid()
    if find is None:
        raise OSError(errno.ENOSYS, "no clock_getcpuclockid in this C library")
    clock = ctypes.c_int()  # clockid_t
    error = find(pid, ctypes.byref(clock))
    if error:
        raise OSError(error, os.strerror(error))
    return clock.value


def rss_mb(pid: int) -> float:
    """The process's resident memory, in MiB (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM every process, then kill what has not exited within 10 s."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
