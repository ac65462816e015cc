"""``agentd completion {bash,zsh,tcsh,fish,powershell}``: a shell completion script, made
by shtab.

shtab writes the script from an argparse parser, so the parser here is built for completion
only, from the same tables as the usage text: the commands, the benchmarks, and every method
of the registry with its parameters offered as ``name=`` words.
"""

from __future__ import annotations

import argparse
import textwrap

import shtab

from agentd.methods import describe, registry

# where each shell's script goes and how the shell finds it there: the script's opening
# comment says it (in place of shtab's own advice, which names other places), as does the README
INSTALL = {
    "bash": ("~/.local/share/bash-completion/completions/agentd",
             "bash-completion loads it from there the first time agentd is completed "
             "(without bash-completion, source it from ~/.bashrc)."),
    "zsh": ("~/.local/share/zsh_completion/_agentd",
            "Then add fpath=(~/.local/share/zsh_completion $fpath) to ~/.zshrc, before "
            "compinit."),
    "tcsh": ("~/.local/share/tcsh_completion/agentd",
             "Then add source ~/.local/share/tcsh_completion/agentd to ~/.tcshrc."),
    "fish": ("~/.config/fish/completions/agentd.fish", "fish loads it from there."),
    "powershell": ("~/.config/powershell/completions/agentd.ps1",
                   "Then add . ~/.config/powershell/completions/agentd.ps1 to your $PROFILE."),
}
SHELLS = tuple(INSTALL)  # shtab's, as of 1.13


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


def install_command(shell: str) -> str:
    """The shell command that installs ``shell``'s script where :data:`INSTALL` says."""
    path = INSTALL[shell][0]
    return f"mkdir -p {path.rsplit('/', 1)[0]} && agentd completion {shell} > {path}"


def script(shell: str) -> str:
    """shtab's script for ``shell``, its opening comment saying where it goes (shtab's names
    other places than the README does)."""
    lines = shtab.complete(completion_parser(), shell=shell).split("\n")
    start = 1 if lines[0].startswith("#compdef") else 0  # zsh's tag stays the first line
    while lines[start] == "":
        start += 1
    end = start
    while lines[end].startswith("#"):
        end += 1
    note = [f"# agentd's {shell} completion, written by shtab (https://github.com/tqdm/shtab).",
            f"# Install: {install_command(shell)}",
            *textwrap.wrap(INSTALL[shell][1], 88, initial_indent="# ",
                           subsequent_indent="# ", break_on_hyphens=False)]
    return "\n".join([*lines[:start], *note, *lines[end:]])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="agentd completion", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Print a shell completion script; for bash:\n  {install_command('bash')}"
        "\n(the script's first lines say where each shell's goes)")
    parser.add_argument("shell", choices=SHELLS)
    options = parser.parse_args(argv)
    print(script(options.shell))
    return 0
