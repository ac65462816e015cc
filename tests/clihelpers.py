"""Helpers for end-to-end tests: ``agentd init``/``run`` subprocesses driven by the CLI."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

AGENTD = [sys.executable, "-m", "agentd"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*AGENTD, *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"agentd {' '.join(args)} failed: {result.stderr}")
    return result


def init(tmp_path: Path, name: str) -> dict:
    port = free_port()
    info = json.loads(cli("init", str(tmp_path / name), "--name", name,
                          "--listen", f"127.0.0.1:{port}").stdout)
    info["port"] = port
    return info


def add_peer(config: str, name: str, info: dict) -> None:
    with open(config, "a") as handle:
        handle.write(f'\n[[peers]]\nname = "{name}"\nagent = "{info["agent"]}"\n'
                     f'address = "127.0.0.1:{info["port"]}"\n')


def start(config: str) -> subprocess.Popen:
    """``agentd run -c config``, its log in ``agentd.log`` beside the config (a pipe nobody
    reads would block a chatty node); returns once its control socket exists."""
    log_path = Path(config).parent / "agentd.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([*AGENTD, "run", "-c", config], stderr=log)
    socket_path = Path(config).parent / "data" / "agentd.sock"
    deadline = time.monotonic() + 20
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"node did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    return process


@contextlib.contextmanager
def running(infos: dict[str, dict]) -> Iterator[dict[str, subprocess.Popen]]:
    """Start a node per ``init`` result; kill whatever is still running on the way out."""
    processes = {}
    try:
        for name, info in infos.items():
            processes[name] = start(info["config"])
        yield processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (a process, a file) until true; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)
