"""``agentd up [DIR|CONFIG]`` and ``agentd down [DIR|CONFIG]``: a local network that stays up.

``up`` starts ``agentd run -c CONFIG`` for every ``*.toml`` in DIR and every
``DIR/*/agentd.toml`` (the layout ``agentd init DIR/NAME`` makes; default ``configs/local``:
alice, bob, carol and their clearing house) as processes of their own
session, so they outlive the command, waits until each listens (its control socket answers
``getinfo``), then prints each node's agent id and how to call and stop them. A node already
running for a config is left as it is, and so is one another ``up`` is starting: each ``up``
holds ``DATA_DIR/agentd.up.lock`` (``flock``) from deciding to start a node until it answers,
so two at once never both start one, nor both say they did. ``down`` asks each node to
``stop`` through its control socket and waits until it has gone. Each node logs to
``agentd.log`` in its data dir.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from agentd.completion import FILE
from agentd.config import Config, load_config
from agentd.config_files import control_socket
from agentd.errors import UserError
from agentd.keyfile import missing_key
from agentd.rpc import RpcError, call
from agentd.runtime.datadir import in_use
from agentd.stray import stray_note

DEFAULT_DIR = Path("configs/local")
READY_TIMEOUT = 30.0
START_LOCK = "agentd.up.lock"
STOP_TIMEOUT = 15.0


def node_configs(directory: Path) -> list[Path]:
    """The configs ``agentd up DIR`` starts: ``DIR/*.toml`` and ``DIR/*/agentd.toml``."""
    return sorted([*directory.glob("*.toml"), *directory.glob("*/agentd.toml")])


def _configs(directory: Path) -> list[Path]:
    """The node configs ``directory`` names: its own, or the one file it is."""
    if directory.is_file():
        return [directory]
    if not directory.is_dir():  # the default is the repository's: say where to run it
        raise UserError(f"{directory}: no such directory of node configs, nor a config file"
                        + (f" ({DEFAULT_DIR} is the repository's: run from there, or give DIR"
                           " or CONFIG)" if directory == DEFAULT_DIR else ""))
    found = node_configs(directory)
    if not found:
        raise UserError(f"{directory}: no node configs in it (*.toml, or */agentd.toml as "
                        "`agentd init` writes)")
    return found


def _load_all(paths: list[Path]) -> list[Config]:
    """Every config, or one error that names the problems of all of them (not the first
    file's alone, to be fixed and run again for the next)."""
    configs, problems = [], []
    for path in paths:
        try:
            configs.append(load_config(path))
        except UserError as exc:
            problems.append(str(exc))
    if problems:
        raise UserError("\n".join(problems))
    return configs


def _info(socket_path: Path) -> dict | None:
    """The node's getinfo, or None when no node answers on ``socket_path``."""
    try:
        return call(socket_path, "getinfo", {}, timeout=5)
    except (UserError, RpcError, OSError):
        return None


def _last_line(log: Path) -> str:
    """``: LINE``, the last line a node that failed to start wrote (its reason), or ''."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f": {lines[-1].strip()}" if lines else ""


def _claim_start(config: Config) -> int | None:
    """The descriptor holding ``config``'s start lock, for this ``up`` to start the node; None
    when another ``up`` holds it (that one starts the node)."""
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(config.data_dir / START_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _keys_missing(configs: list[Config]) -> None:
    """Refuse, before anything is started or created, when a node that is not running has no
    key file where its config says (its data_dir edited, say): ``up`` made that directory for
    its lock and log, and a directory there then turned the advised move of the old one's
    files into a move of the old one into it."""
    problems = []
    for config in configs:
        if not config.key_file.exists() and _info(config.socket_path) is None:
            stray = stray_note(config.path)
            problems.append(f"node {config.name}: {missing_key(config.key_file)}"
                            + ("" if stray is None else f"; {stray}"))
    if problems:
        raise UserError("\n".join(problems) + "\nnothing was started")


def up(directory: Path) -> int:
    configs = _load_all(_configs(directory))
    _keys_missing(configs)
    locks: list[int] = []  # held until the nodes this up starts answer
    try:
        return _up(directory, configs, locks)
    finally:
        for fd in locks:
            os.close(fd)


def _up(directory: Path, configs: list[Config], locks: list[int]) -> int:
    started: dict[Path, subprocess.Popen] = {}  # by config file: two may share a name
    elsewhere = 0  # nodes another `agentd up` is starting
    for config in configs:
        if _info(config.socket_path) is not None:
            continue  # already running: leave it be
        fd = _claim_start(config)
        if fd is None:
            elsewhere += 1  # it answers once the other up has started it
            continue
        locks.append(fd)
        if _info(config.socket_path) is not None:
            continue  # started by an up that held the lock until just now
        with open(config.data_dir / "agentd.log", "ab") as log:
            started[config.path] = subprocess.Popen(
                [sys.executable, "-m", "agentd", "run", "-c", str(config.path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    infos: dict[Path, dict] = {}
    shown = os.path.relpath(directory)
    stop_them = f"agentd down{'' if directory == DEFAULT_DIR else ' ' + shown}"
    deadline = time.monotonic() + READY_TIMEOUT
    for config in configs:
        while (info := _info(config.socket_path)) is None:
            process = started.get(config.path)
            if process is not None and process.poll() is not None:
                stray = stray_note(config.path)  # its data_dir edited while it ran
                raise UserError(f"node {config.name} exited with {process.returncode}"
                                f"{_last_line(config.data_dir / 'agentd.log')}; see "
                                f"{config.data_dir / 'agentd.log'}"
                                + ("" if stray is None else f"; {stray}")
                                + _left_running(configs, config, stop_them))
            if time.monotonic() > deadline:
                raise UserError(f"node {config.name} did not answer within {READY_TIMEOUT:g} s;"
                                f" see {config.data_dir / 'agentd.log'}"
                                + _left_running(configs, config, stop_them))
            time.sleep(0.05)
        infos[config.path] = info
    others = f", {elsewhere} being started by another `agentd up`" if elsewhere else ""
    print(f"agentd up: {_nodes(len(configs))} running from {shown} ({len(started)} started, "
          f"{len(configs) - len(started) - elsewhere} already running{others})")
    width = max(len(config.name) for config in configs)
    for config in configs:
        info = infos[config.path]
        advertised = info["address"].partition("@")[2]
        where = info["listen"] + ("" if advertised == info["listen"] else
                                  f" (advertised {advertised})")
        print(f"  {config.name:<{width}}  {where:<15}  agent {info['agent']}")
    first = configs[0]
    print(f"\ncall one:   agentd -c {os.path.relpath(first.path)} getinfo")
    print(f"logs:       {os.path.relpath(first.data_dir / 'agentd.log')} (one per node)")
    print(f"stop them:  {stop_them}")
    return 0


def _nodes(count: int) -> str:
    return f"{count} node{'' if count == 1 else 's'}"


def _left_running(configs: list[Config], failed: Config, stop_them: str) -> str:
    """What a failed ``up`` leaves behind: the nodes that do answer, and how to stop them."""
    running = [config.name for config in configs
               if config is not failed and _info(config.socket_path) is not None]
    if not running:
        return ""
    return f"; left running: {', '.join(running)} (`{stop_them}` stops them)"


def down(directory: Path) -> int:
    """Stop every node ``directory`` names; 1 when one still runs that the CLI cannot reach
    (its data_dir edited while it ran: ``agentd.stray``)."""
    stopped, idle, strays = [], [], []
    for path in _configs(directory):
        name = _name(path)
        socket_path = control_socket(path)
        try:
            call(socket_path, "stop", {}, timeout=5)
        except (UserError, RpcError, OSError):
            note = stray_note(path)
            if note is None:
                idle.append(name)  # not running
            else:  # running, where the CLI cannot reach it
                strays.append(name)
                print(f"agentd down: {path}: no control socket where its data_dir says "
                      f"({socket_path}), {note}", file=sys.stderr)
            continue
        stopped.append((name, socket_path))
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, socket_path in stopped:
        # the node removes its socket as it stops, and lets go of its data dir's lock last,
        # its database closed: a backup restored over it meets no writer
        while socket_path.exists() or in_use(socket_path.parent):
            if time.monotonic() > deadline:
                raise UserError(f"node {name} did not stop within {STOP_TIMEOUT:g} s")
            time.sleep(0.05)
    names = ", ".join(name for name, _ in stopped)
    if not names and not strays:
        print("agentd down: no node was running")
    elif names:
        print(f"agentd down: stopped {names}"
              + (f"; {', '.join(idle)} {'was' if len(idle) == 1 else 'were'} not running"
                 if idle else ""))
    if strays:
        print(f"agentd down: still running, not stopped: {', '.join(strays)} (see above)",
              file=sys.stderr)
        return 1
    return 0


def _name(path: Path) -> str:
    """A node's ``[node] name``, as ``up`` shows it; its file's name if the config is broken."""
    try:
        return load_config(path).name
    except UserError:
        return path.parent.name if path.name == "agentd.toml" else path.stem


def command_parser(command: str) -> argparse.ArgumentParser:
    """``agentd up``'s or ``agentd down``'s options, which the completion script offers too."""
    parser = argparse.ArgumentParser(
        prog=f"agentd {command}",
        description=("Start every node configured in DIR (or the one CONFIG names) and leave "
                     "them running." if command == "up" else
                     "Stop every node configured in DIR (or the one CONFIG names)."))
    where = parser.add_argument("dir", nargs="?", default=str(DEFAULT_DIR), metavar="DIR|CONFIG",
                                help=("a directory of node configs: its *.toml files and the "
                                      "agentd.toml of each subdirectory (default: "
                                      f"{DEFAULT_DIR}); or one node's config file"))
    where.complete = FILE  # a directory or a config: file completion offers both
    return parser


def main(command: str, argv: list[str]) -> int:
    options = command_parser(command).parse_args(argv)
    return (up if command == "up" else down)(Path(options.dir))
