"""A node that runs where its config no longer points: its ``[node] data_dir`` was edited
while it ran, so the CLI finds no control socket where the config says, and would tell the
user that no node runs (``agentd down``: "no node was running") or to start it again (which
fails: its port is taken). Such a node is an ``agentd run -c CONFIG`` process of this very
config file; the data directory it still holds (its lock file is open) says where its
control socket is. Anything else on the port (another node, another program) is not it,
and is not named as it."""

from __future__ import annotations

import os
from pathlib import Path

from agentd.runtime.datadir import LOCK_NAME

PROC = Path("/proc")


def stray_note(config: Path) -> str | None:
    """What to tell the user when no control socket is where ``config`` says but a node
    started from that config still runs: its pid and how to stop it. None when none does
    (or this system has no ``/proc`` to look in)."""
    target = config.resolve()
    for process in _processes():
        if _config_of(process) != target:
            continue
        data_dir = _data_dir_of(process)
        if data_dir is None:
            how = f"kill -TERM {process.name}"
        else:
            how = f"agentd --socket {data_dir / 'agentd.sock'} stop"
        return (f"but a node started from this config still runs (pid {process.name}), "
                f"with the data_dir it had then ({data_dir or 'unknown'}): stop it with "
                f"'{how}', then start it again (move that directory's files to the new "
                "data_dir first, or set data_dir back: they hold the node's key and database)")
    return None


def _processes() -> list[Path]:
    try:
        return [entry for entry in PROC.iterdir()
                if entry.name.isdigit() and entry.name != str(os.getpid())]
    except OSError:
        return []


def _config_of(process: Path) -> Path | None:
    """The config an ``agentd run -c CONFIG`` process was started with, resolved from its
    working directory; None for any other process."""
    try:
        args = [arg.decode("utf-8", "replace")
                for arg in (process / "cmdline").read_bytes().split(b"\0")]
        cwd = (process / "cwd").resolve()
    except OSError:
        return None
    if "run" not in args or not any("agentd" in arg for arg in args[:3]):
        return None
    rest = args[args.index("run") + 1:]
    for i, arg in enumerate(rest):
        if arg in ("-c", "--config") and i + 1 < len(rest):
            return (cwd / rest[i + 1]).resolve()
        if arg.startswith("--config="):
            return (cwd / arg.removeprefix("--config=")).resolve()
    return None


def _data_dir_of(process: Path) -> Path | None:
    """The data directory whose lock the process holds open."""
    try:
        for fd in (process / "fd").iterdir():
            target = Path(os.readlink(fd))
            if target.name == LOCK_NAME:
                return target.parent
    except OSError:
        return None
    return None
