"""``agentd completion {bash,zsh,tcsh,fish,powershell}``: a shell completion script, made
by shtab.

shtab writes the script from an argparse parser, so the parser here is built for completion
only, from the same tables as the usage text: the commands, the benchmarks, and every method
of the registry with its parameters offered as ``name=`` words.
"""

from __future__ import annotations

import argparse

import shtab

from agentd.methods import describe, registry

SHELLS = ("bash", "zsh", "tcsh", "fish", "powershell")  # shtab's, as of 1.13


def completion_parser() -> argparse.ArgumentParser:
    from agentd.bench import BENCHMARKS
    from agentd.cli import COMMANDS

    parser = argparse.ArgumentParser(prog="agentd")
    parser.add_argument("-c", "--config", help="the node's config").complete = shtab.FILE
    parser.add_argument("--socket", help="the node's control socket").complete = shtab.FILE
    parser.add_argument("-H", "--human", action="store_true", help="text, not JSON")
    commands = parser.add_subparsers(dest="command")
    methods = registry()
    for name, (_, what) in COMMANDS.items():
        sub = commands.add_parser(name, help=what)
        if name == "help":
            sub.add_argument("name", nargs="?", choices=sorted({*methods, *COMMANDS}))
        elif name == "bench":
            sub.add_argument("benchmark", choices=list(BENCHMARKS))
        elif name in ("run", "init", "sim", "up", "down"):
            sub.add_argument("path", nargs="?").complete = shtab.FILE
        elif name == "completion":
            sub.add_argument("shell", choices=SHELLS)
    for name, method in sorted(methods.items()):
        if name in COMMANDS:  # `help` is the command that also explains methods
            continue
        described = describe(name, method)
        sub = commands.add_parser(name, help=described["doc"][:60])
        words = [f"{param['name']}=" for param in described["params"]]
        if words:
            sub.add_argument("params", nargs="*", choices=words)
    return parser


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="agentd completion", description="Print a shell completion script, e.g. "
        "agentd completion bash > ~/.local/share/bash-completion/completions/agentd")
    parser.add_argument("shell", choices=shtab.SUPPORTED_SHELLS)
    options = parser.parse_args(argv)
    print(shtab.complete(completion_parser(), shell=options.shell))
    return 0
