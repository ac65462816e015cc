"""The ``agentd`` command: init, run, sim, bench, demo — or call a method on a running node.

``agentd -c CONFIG METHOD key=value ...`` sends one JSON-RPC request to the node's control
socket and prints the result as JSON; each value is parsed as JSON when it parses and taken as
text otherwise. Problems of the user's making print one line on stderr and exit 2; an error
answered by the node prints ``{"code", "message"}`` on stderr and exits 1, and so does a
result ``{"ok": false, ...}`` (a check such as ``receipts.verify`` that found failures: the
result is still printed on stdout).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from agentd import __version__
from agentd.errors import UserError

LOCAL_COMMANDS = ("init", "run", "sim", "bench", "demo")

USAGE = """\
agentd — a peer-to-peer agent daemon

usage:
  agentd init DIR --name NAME --listen HOST:PORT   create a key and a config in DIR
  agentd run -c CONFIG                             run a node in the foreground
  agentd -c CONFIG METHOD [key=value ...]          call a JSON-RPC method on a running node
  agentd -c CONFIG help                            list the node's methods
  agentd sim SCENARIO                              run a multi-node simulation
  agentd bench {transport}                         run a benchmark
  agentd demo                                      run the three-node demo

methods (agentd -c CONFIG help lists them all, with their parameters):
  node      getinfo, peers.list, peers.ping, users.add, users.list, stop
  credit    tally.*, chit.*
  relay     relay.query, relay.state, relay.wait, relay.delete
  evidence  ch.create_process, ch.log, ch.query, ch.get, receipts.list, receipts.verify
values are JSON when they parse (units=500, owners='["a","b"]') and text otherwise.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except UserError as exc:
        print(f"agentd: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:  # a UserError raised inside the node's nursery
        matched, _ = group.split(UserError)
        if matched is None:
            raise
        print(f"agentd: {_first_leaf(matched)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _main(argv: list[str]) -> int:
    top = argparse.ArgumentParser(prog="agentd", usage=USAGE, add_help=False)
    top.add_argument("-c", "--config")
    top.add_argument("-h", "--help", action="store_true")
    top.add_argument("--version", action="store_true")
    top.add_argument("command", nargs="?")
    top.add_argument("args", nargs=argparse.REMAINDER)
    options = top.parse_args(argv)
    if options.version:
        print(f"agentd {__version__}")
        return 0
    if options.command is None or (options.help and options.command is None):
        print(USAGE, end="")
        return 0 if options.help else 2
    args = options.args
    if options.help:
        args = ["--help", *args]
    if options.command in LOCAL_COMMANDS:
        if options.config:
            args = ["-c", options.config, *args]
        return _local(options.command, args)
    if not options.config:
        raise UserError(f"'{options.command}' is not a command; to call a method on a node "
                        "give its config: agentd -c CONFIG METHOD [key=value ...]")
    return _rpc(options.config, options.command, args)


def _local(command: str, args: list[str]) -> int:
    if command == "init":
        return _init(args)
    if command == "run":
        return _run(args)
    if command == "demo":
        from agentd.demo import main as demo_main

        return demo_main(args)
    if command == "bench":
        from agentd.bench import main as bench_main

        return bench_main(args)
    from agentd.sim import main as sim_main

    return sim_main(args)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs: a value is JSON when it parses, text otherwise."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"expected key=value, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def _rpc(config_path: str, method: str, pairs: list[str]) -> int:
    from agentd.config import load_config
    from agentd.rpc import RpcError, call

    config = load_config(config_path)
    params = parse_params(pairs)
    try:
        result = call(config.socket_path, method, params)
    except RpcError as exc:
        error: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.reason:
            error["reason"] = exc.reason
        print(json.dumps(error), file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    # A check that ran and found a problem (receipts.verify) answers {"ok": false, ...}:
    # the whole result is printed, and the exit status says that the check failed.
    return 1 if isinstance(result, dict) and result.get("ok") is False else 0


def _init(args: list[str]) -> int:
    from agentd.init import init_node

    parser = argparse.ArgumentParser(prog="agentd init",
                                     description="Create a node: a key file and a config.")
    parser.add_argument("dir", help="directory for the config, key and data")
    parser.add_argument("--name", required=True, help="the node's name")
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    parser.add_argument("--network", default="agentd", help="network id (default: agentd)")
    options = parser.parse_args(args)
    result = init_node(Path(options.dir), options.name, options.listen, options.network)
    print(json.dumps(result, indent=2))
    return 0


def _run(args: list[str]) -> int:
    from agentd.config import load_config
    from agentd.keyfile import read_key
    from agentd.logs import setup_logging

    parser = argparse.ArgumentParser(prog="agentd run", description="Run a node in the foreground.")
    parser.add_argument("-c", "--config", required=True, help="the node's TOML config")
    options = parser.parse_args(args)
    config = load_config(options.config)
    setup_logging(config.name, config.log_level, config.log_format)
    key = read_key(config.key_file)
    from agentd.runtime.memory import return_large_buffers

    return_large_buffers()  # a burst of big frames must not leave a fragmented heap behind
    trio.run(_serve, config, key)
    return 0


async def _serve(config, key) -> None:
    from agentd.runtime.node import Node
    from agentd.runtime.notify import sd_notify
    from agentd.runtime.reload import reload_config

    node = Node(config, key)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            sd_notify("READY=1")

            async def stop_on_signal() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:  # re-read the config; a bad one changes nothing
                        sd_notify("RELOADING=1")
                        try:
                            reload_config(node)
                        except UserError as exc:
                            logging.getLogger("agentd.runtime.reload").error(
                                "reload refused, the running config is kept: %s", exc)
                        sd_notify("READY=1")
                        continue
                    sd_notify("STOPPING=1")
                    node.stop()
                    return

            nursery.start_soon(stop_on_signal)
            await node._stop.wait()
            nursery.cancel_scope.cancel()
