"""The ``agentd`` command: init, run, sim, bench, demo — or call a method on a running node.

``agentd -c CONFIG METHOD key=value ...`` sends one JSON-RPC request to the node's control
socket and prints the result as JSON; each value is parsed as JSON when it parses and taken as
text otherwise, or where its parameter takes only text. Problems of the user's making print one
line on stderr and exit 2; an error answered by the node prints ``{"code", "message"}`` on
stderr and exits 1, and so does a result ``{"ok": false, ...}`` (a check such as
``receipts.verify`` that found failures) or one with a refused item (``ch.log_many``): such a
result is still printed on stdout. The usage
text and ``agentd help METHOD`` are built from the method registry (:mod:`agentd.methods`) and
the benchmark list, so they cannot go stale.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from agentd import __version__, printable
from agentd.completion import DIRECTORY, FILE
from agentd.errors import NotRunning, UserError, did_you_mean

# name: (synopsis, what it does) — the commands that run here rather than call a node
COMMANDS = {
    "init": ("init DIR --name NAME --listen HOST:PORT [--advertise HOST:PORT] [--network ID]",
             "create a key and a config in DIR"),
    "run": ("run -c CONFIG", "run a node in the foreground"),
    "help": ("help [METHOD | COMMAND | bench NAME]",
             "list the methods, or show one method or command"),
    "sim": ("sim SCENARIO [--processes | --workers N] [--json FILE] [--report DIR] [--keep] "
            "[--durable]", "run a multi-node simulation (configs/sims/; agentd sim --help)"),
    "bench": ("bench {{{benchmarks}}} [--quick] [--json FILE] [--no-goals] [options]",
              "run a benchmark (agentd bench --help)"),
    "demo": ("demo [--workdir DIR] [--free-ports]",
             "alice, bob, carol and a clearing house: a tour"),
    "up": ("up [DIR|CONFIG]", "start configs/local (or DIR, or one node) and leave it running"),
    "down": ("down [DIR|CONFIG]", "stop them"),
    "completion": ("completion {{bash,zsh,tcsh,fish,powershell}}",
                   "print a shell completion script"),
}
LOCAL_COMMANDS = tuple(COMMANDS)


BOTH_NODES = ("-c CONFIG and --socket PATH both name the node to call: give one of them (-c "
              "finds the socket in the config's data_dir)")


def usage() -> str:
    """The top-level help, from the command table, the benchmarks and the method registry."""
    from agentd.bench import BENCHMARKS
    from agentd.methods import grouped

    rows = [(f"agentd {synopsis.format(benchmarks=','.join(BENCHMARKS))}", what)
            for synopsis, what in COMMANDS.values()]
    rows.insert(2, ("agentd -c CONFIG METHOD [key=value ...]", "call a method on a running node"))
    rows.insert(3, ("agentd --socket PATH METHOD [key=value ...]",
                    "the same, naming the control socket"))
    rows.append(("agentd --version", "print the version"))
    width = min(max(len(left) for left, _ in rows), 46)
    lines = ["agentd — a peer-to-peer agent daemon", "", "usage:"]
    for left, what in rows:  # a synopsis too long for the column gets its own line
        lines += ([f"  {left:<{width}}  {what}"] if len(left) <= width
                  else [f"  {left}", f"  {'':<{width}}  {what}"])
    lines += ["", "options for a method call:",
              "  -H, --human   readable text instead of JSON",
              "", "methods (agentd help METHOD shows one's parameters and defaults):"]
    for group, names in grouped().items():
        lines += textwrap.wrap(", ".join(names), width=92, initial_indent=f"  {group:<9} ",
                               subsequent_indent=" " * 12)
    lines += ["values are JSON when they parse (units=500, owners='[\"a\",\"b\"]') and text"
              " otherwise,", "or where the parameter takes only text (memo=2024 is the text"
              " \"2024\")."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except UserError as exc:
        print(f"agentd: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:  # raised inside a nursery (a node's, the sim's)
        interrupted, _ = group.split(KeyboardInterrupt)  # Ctrl-C in a sim's nursery: what
        if interrupted is not None:                      # failed beside it failed of it
            return 130
        matched, _ = group.split(UserError)
        if matched is not None:
            print(f"agentd: {_first_leaf(matched)}", file=sys.stderr)
            return 2
        _, rest = group.split(BrokenPipeError)
        if rest is not None:
            raise
        return _reader_gone()  # agentd sim ... | head: the progress lines' print
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """The reader went away (agentd ... | head): stop quietly, as a Unix tool does; the
    interpreter's final flush must not find the broken pipe again either."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _main(argv: list[str]) -> int:
    top = argparse.ArgumentParser(prog="agentd", add_help=False)
    top.add_argument("-c", "--config")
    top.add_argument("--socket")
    top.add_argument("-H", "--human", action="store_true")
    top.add_argument("-h", "--help", action="store_true")
    top.add_argument("--version", action="store_true")
    top.add_argument("command", nargs="?")
    top.add_argument("args", nargs=argparse.REMAINDER)
    options, unknown = top.parse_known_args(argv)
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r}; 'agentd --help' lists the options")
    if options.version:
        print(f"agentd {__version__}")
        return 0
    if options.config and options.socket and options.command not in LOCAL_COMMANDS:
        raise UserError(BOTH_NODES)
    if options.command is None:
        if (options.config or options.socket) and not options.help:  # and nothing to do
            node = "-c CONFIG" if options.config else "--socket PATH"
            raise UserError(f"no METHOD to call: agentd {node} METHOD [key=value ...] "
                            f"(agentd {node} help lists the methods, getinfo shows the node)")
        print(usage(), end="")
        return 0 if options.help else 2
    args = options.args
    if options.command not in LOCAL_COMMANDS or options.command == "help":
        args = _node_options_after(options, args)
    asks_help = options.help or any(arg in ("-h", "--help") for arg in args)
    if options.command == "help" or (asks_help and options.command not in COMMANDS):
        return _help(args if options.command == "help" else [options.command])
    if options.help:
        args = ["--help", *args]
    if options.command in LOCAL_COMMANDS:
        if (options.config and options.command != "run") or options.socket:
            raise UserError(_not_for(options.command, options.config, options.socket))
        if options.config:
            args = ["-c", options.config, *args]
        return _local(options.command, args)
    if options.socket:
        socket_path = Path(options.socket)
    elif options.config:
        from agentd.config_files import control_socket

        socket_path = control_socket(options.config)
    else:
        hint = _spaced_method(options.command, args) or did_you_mean(options.command, COMMANDS)
        raise UserError(f"'{options.command}' is not a command{hint}; to call a method on a "
                        "node give its config: agentd -c CONFIG METHOD [key=value ...]")
    human = options.human or any(arg in ("-H", "--human") for arg in args)
    args = [arg for arg in args if arg not in ("-H", "--human")]  # after the method too
    try:
        return _rpc(socket_path, options.command, args, human=human,
                    start="nothing to stop" if options.command == "stop"
                    else _how_to_start(options.config))
    except NotRunning as exc:
        if options.config is None:
            raise
        from agentd.stray import stray_note

        note = stray_note(Path(options.config))
        if note is None:
            raise
        raise UserError(f"{exc}; {note}") from exc


def _node_options_after(options: argparse.Namespace, args: list[str]) -> list[str]:
    """``-c CONFIG`` or ``--socket PATH`` given after the method (``agentd tally.show
    cuid=alice -c CONFIG``, ``agentd help tally.show -c CONFIG``), as ``-H`` may be: taken
    as if given before it. A parameter is ``key=value``, never an option, so nothing is
    mistaken for one."""
    rest: list[str] = []
    words = iter(args)
    for word in words:
        name, sep, value = word.partition("=")
        if name in ("-c", "--config", "--socket"):
            value = value if sep else next(words, None)
            if value is None:
                raise UserError(f"{name} needs a value: agentd {name} "
                                f"{'PATH' if name == '--socket' else 'CONFIG'} METHOD ...")
            key = "socket" if name == "--socket" else "config"
            if getattr(options, key) not in (None, value):
                raise UserError(f"{name} is given twice ({getattr(options, key)} and {value})")
            setattr(options, key, value)
            continue
        rest.append(word)
    if options.config and options.socket:
        raise UserError(BOTH_NODES)
    return rest


def _not_for(command: str, config: str | None, socket: str | None) -> str:
    """Why ``agentd -c CONFIG COMMAND`` (or ``--socket``) is refused: the option was passed
    on to the command, which took the config for its own argument (``sim``: the scenario)
    or said only "unrecognized arguments: -c", or ignored ``--socket`` and went on."""
    if socket:
        return (f"--socket names the control socket of a node to call a method on; agentd "
                f"{command} does not take it")
    if command in ("up", "down"):
        return f"agentd {command} takes the config as its argument: agentd {command} {config}"
    return f"-c CONFIG is for agentd run and method calls; agentd {command} does not take it"


HELP_USAGE = """usage: agentd help [METHOD | COMMAND | bench NAME]

Without an argument: the commands and every method (as agentd --help). With a method: its
parameters, their types and defaults, and what it does. With a command: its options (as
agentd COMMAND --help); bench NAME, a benchmark's (as agentd bench NAME --help). No node is
needed, nor a config.
"""


def _help(args: list[str]) -> int:
    from agentd.methods import method_help

    args = [arg for arg in args if arg not in ("-H", "--human")]  # text already
    if any(arg in ("-h", "--help") for arg in args):
        print(HELP_USAGE, end="")
        return 0
    if not args:
        print(usage(), end="")
        return 0
    if args[0].startswith("-"):
        raise UserError(f"unknown option {args[0]!r} for agentd help; {HELP_USAGE.splitlines()[0]}")
    if len(args) == 2 and args[0] == "bench":  # agentd help bench lifts: that benchmark's
        return _local("bench", [args[1], "--help"])
    if len(args) > 1:
        raise UserError(f"agentd help takes one METHOD or COMMAND (or bench NAME), not "
                        f"{' '.join(args)!r}")
    name = args[0].removeprefix("method=")  # as the RPC help method is called: method=NAME
    if name == "help":
        print(HELP_USAGE, end="")
        return 0
    if name in COMMANDS:
        return _local(name, ["--help"])
    print(method_help(name), end="")
    return 0


def _local(command: str, args: list[str]) -> int:
    if command == "init":
        return _init(args)
    if command == "run":
        return run_node(args)
    if command == "demo":
        from agentd.demo import main as demo_main

        return demo_main(args)
    if command == "bench":
        from agentd.bench import main as bench_main

        return bench_main(args)
    if command == "help":
        return _help(args)
    if command == "completion":
        from agentd.completion import main as completion_main

        return completion_main(args)
    if command in ("up", "down"):
        from agentd.up import main as up_main

        return up_main(command, args)
    from agentd.sim import main as sim_main

    return sim_main(args)


def parse_params(pairs: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``key=value`` pairs: a value is JSON when it parses, text otherwise. Returns the
    values and, for those JSON made something other than text, the text as typed (which
    :func:`_fit_text` gives a parameter that takes only text)."""
    params: dict[str, Any] = {}
    typed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"expected key=value, got {pair!r}")
        if key in params:
            raise UserError(f"{key} is given twice ({key}={typed.get(key, params[key])} and "
                            f"{pair}); give each parameter once")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
        if not isinstance(params[key], str):
            typed[key] = value
    return params, typed


def _fit_text(socket_path: Path, method: str, params: dict[str, Any],
              typed: dict[str, str], start: str) -> dict[str, Any]:
    """``memo=2024`` or ``cuid=123`` mean text: a value JSON read as a number (or true,
    null, a list) goes as the text typed when its parameter takes text but not that. The
    node's ``help`` says what each parameter takes; asked only when some value is not text."""
    from agentd.rpc import RpcError, call
    from agentd.rpc_types import accepts

    if not typed:
        return params
    try:
        (described,) = call(socket_path, "help", {"method": method}, start=start)
    except (RpcError, ValueError):  # an unknown method: the call itself will say so
        return params
    hints = {param["name"]: param["type"] for param in described["params"]}
    fitted = dict(params)
    for key, text in typed.items():
        hint = hints.get(key)
        if hint is not None and accepts(hint, text) and accepts(hint, params[key]) is False:
            fitted[key] = text
    return fitted


def _how_to_start(config: str | None) -> str:
    """What to run when no node answers: the commands for this config, when one was given."""
    from agentd.rpc import START

    if config is None:
        return START
    path = Path(config)  # this node alone: its directory's parent may hold others' configs
    return (f"start it with 'agentd up {path}' (in the background) or 'agentd run -c "
            f"{path}' (in the foreground)")


def _rpc(socket_path: Path, method: str, pairs: list[str], *, human: bool = False,
         start: str) -> int:
    from agentd.rpc import RpcError, call

    try:
        params, typed = parse_params(pairs)
    except UserError as exc:
        raise UserError(f"{exc}{_spaced_method(method, pairs)}") from exc
    try:
        params = _fit_text(socket_path, method, params, typed, start)
        result = call(socket_path, method, params, start=start)
    except RpcError as exc:
        error: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.reason:
            error["reason"] = exc.reason
        print(_json(error), file=sys.stderr)
        return 1
    if human:
        from agentd.human import render

        print(render(method, result), end="")
    else:
        print(_json(result, indent=2))
    sys.stdout.flush()  # a reader gone (| head) is found here, inside main's handler
    return 1 if _failed(method, result) else 0


# methods whose result has an item per thing asked, each an "error" where it was refused
PER_ITEM = ("ch.log_many",)


def _failed(method: str, result: Any) -> bool:
    """Whether an answered call still reports a failure, which the exit status (1) must say
    for a script to tell, the whole result printed all the same: a check that found a problem
    (``receipts.verify``: ``{"ok": false, ...}``), or an item refused of a batch
    (``ch.log_many``: the others were done, and the result says which)."""
    if isinstance(result, dict):
        return result.get("ok") is False
    return (method in PER_ITEM and isinstance(result, list)
            and any(isinstance(item, dict) and "error" in item for item in result))


def _spaced_method(method: str, args: list[str]) -> str:
    """`` (did you mean tally.list?)`` for ``agentd -c CONFIG tally list``: a method's name
    is one word. Asked only on the way to an error (the method table takes ~0.5 s)."""
    if "." in method or not args or "=" in args[0]:
        return ""
    from agentd.methods import registry

    joined = f"{method}.{args[0]}".lower()
    return f" (did you mean {joined}? a method's name is one word)" if joined in registry() else ""


# what JSON leaves raw that a terminal acts on or reorders by: DEL, the C1 controls (CSI
# among them), the line and paragraph separators and the bidirectional controls
_RAW = re.compile(f"[\\x7f-\\x9f{printable.SEPARATORS}{printable.BIDI}]")


def _json(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON for a terminal: text as it is (no ``\\u`` for every accent), but
    for the characters a peer could choose to drive or reorder the reader's terminal, which
    are escaped as JSON allows (JSON already escapes C0 controls)."""
    return _RAW.sub(lambda found: f"\\u{ord(found.group()):04x}",
                    json.dumps(value, indent=indent, ensure_ascii=False))


def init_parser() -> argparse.ArgumentParser:
    """``agentd init``'s options, which the completion script offers too."""
    parser = argparse.ArgumentParser(prog="agentd init",
                                     description="Create a node: a key file and a config.")
    # metavars as `agentd --help` and the README write them (argparse's own: LISTEN, dir)
    where = parser.add_argument("dir", metavar="DIR",
                                help="directory for the config, key and data")
    where.complete = DIRECTORY
    parser.add_argument("--name", required=True, help="the node's name: 1 to 64 printable "
                        "characters, one no node beside DIR has")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT",
                        help="where to listen")
    parser.add_argument("--advertise", metavar="HOST:PORT", help="where peers should dial, "
                        "when it differs from --listen (needed with --listen 0.0.0.0:PORT)")
    parser.add_argument("--network", default="agentd", metavar="ID",
                        help="network id, which relay addresses name (default: agentd)")
    return parser


def _init(args: list[str]) -> int:
    from agentd.init import init_node

    options = init_parser().parse_args(args)
    result = init_node(Path(options.dir), options.name, options.listen, options.network,
                       options.advertise)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def run_parser() -> argparse.ArgumentParser:
    """``agentd run``'s options, which the completion script offers too."""
    parser = argparse.ArgumentParser(
        prog="agentd run", description="Run a node in the foreground, logging to stderr: "
        "SIGINT or SIGTERM stops it cleanly, SIGHUP re-reads its config (as the reload "
        "method does). It never daemonises: 'agentd up' starts nodes in the background.")
    parser.add_argument("-c", "--config", required=True,
                        help="the node's TOML config").complete = FILE
    return parser


def run_node(args: list[str], prepare: Callable[[Any], None] | None = None) -> int:
    """``agentd run``; ``prepare`` sees the node before it starts (the sim's hook: see
    agentd.sim.node)."""
    from agentd.config import load_config
    from agentd.keyfile import read_key
    from agentd.logs import setup_logging

    options = run_parser().parse_args(args)
    config = load_config(options.config)
    setup_logging(config.name, config.log_level, config.log_format)
    key = read_key(config.key_file)
    from agentd.runtime.memory import return_large_buffers

    return_large_buffers()  # a burst of big frames must not leave a fragmented heap behind
    trio.run(_serve, config, key, prepare)
    return 0


async def _serve(config, key, prepare: Callable[[Any], None] | None = None) -> None:
    from agentd.runtime.node import Node
    from agentd.runtime.notify import sd_notify
    from agentd.runtime.reload import reload_config

    node = Node(config, key)
    if prepare is not None:
        prepare(node)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            sd_notify("READY=1")

            async def stop_on_signal() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:  # re-read the config; a bad one changes nothing
                        # systemd matches the reload by the time it began (CLOCK_MONOTONIC, µs)
                        stamp = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={stamp}")
                        with contextlib.suppress(UserError):  # reload_config logs it
                            reload_config(node)
                        sd_notify("READY=1")
                        continue
                    sd_notify("STOPPING=1")
                    node.stop()
                    return

            nursery.start_soon(stop_on_signal)
            await node._stop.wait()
            nursery.cancel_scope.cancel()
