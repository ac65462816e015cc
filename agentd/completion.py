"""``agentd completion {bash,zsh,tcsh,fish,powershell}``: a shell completion script, made
by shtab.

shtab writes the script from an argparse parser, so the parser here is built for completion,
from the same tables as the usage text and from the local commands' own parsers: the
commands with every option they take (paths where a path goes, the shipped scenarios'
names where ``agentd sim`` takes one), the benchmarks with theirs, and every method of the
registry with its parameters offered as ``name=`` words (in bash, :data:`BASH_PARAMS`: each
once, and without a space after it).

A command's own parser marks what an argument takes on its action (``.complete``) in plain
words (:data:`FILE`, :data:`DIRECTORY`, :class:`NamesOrFiles`), which the script's parser
turns into shtab's: the command then starts without importing shtab, which loads
``importlib.metadata`` (~40 ms at every ``agentd run``).
"""

from __future__ import annotations

import argparse
import importlib
import re
import textwrap
from dataclasses import dataclass
from typing import Any

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


FILE, DIRECTORY = "file", "directory"  # what an argument takes: see the module's docstring

# bash runs this in place of shtab's function. shtab offers a method's parameters as choices,
# each a word of its own: `lift.show <TAB><TAB>` wrote `lift= lift= `. So a name= word is not
# offered once the line has it (the CLI refuses a parameter given twice), and takes no space
# after it, as its value comes next. bash splits `cuid=alice` into `cuid`, `=`, `alice` where
# COMP_WORDBREAKS has "=", as it has by default; both forms are read. Once nothing is left to
# offer, no file names either (bashdefault). After -c CONFIG or --socket PATH a method comes
# (or run, or help): the commands that take neither are not offered there.
BASH_PARAMS = r"""
# agentd's own, run in place of shtab's: each name= parameter offered once, no space after it
_agentd() {
  _shtab_agentd "$@"
  local i word given=" " offered=() named=0 others=0 node=0
  local unnoded=" @UNNODED@ "
  for ((i = 1; i < COMP_CWORD; i++)); do
    word="${COMP_WORDS[i]}"
    case "$word" in -c|--config|--socket|--config=*|--socket=*) node=1 ;; esac
    if [[ "${COMP_WORDS[i+1]}" == "=" ]]; then
      given+="$word= "
    elif [[ "$word" == ?*=* ]]; then
      given+="${word%%=*}= "
    fi
  done
  for word in "${COMPREPLY[@]}"; do
    (( node )) && [[ "$unnoded" == *" $word "* ]] && continue
    if [[ "$word" == *= ]]; then
      [[ "$given" == *" $word "* ]] && continue
      named=1
    else
      others=1
    fi
    offered+=("$word")
  done
  if (( ${#offered[@]} < ${#COMPREPLY[@]} && ! ${#offered[@]} )); then
    compopt +o bashdefault 2>/dev/null
  elif (( named && ! others )); then
    compopt -o nospace 2>/dev/null
  fi
  COMPREPLY=("${offered[@]}")
  return 0
}
complete -o bashdefault -F _agentd agentd"""


# zsh and fish: shtab offers a method's parameters as one fixed list. zsh offered only the
# first, with a space after it; fish offered those given again. Each list goes through a
# function of ours instead, which offers those not on the line yet (zsh: no space after one).
ZSH_SPEC = re.compile(r'"\(\*\)::params:\(([^)]*)\)"')
ZSH_PARAMS = r"""
# agentd's own: a method's name= parameters not yet on the line, with no space after one
_agentd_params() {
  local -a given left options
  local word
  given=(${${(M)words[1,CURRENT-1]:#?*=*}%%=*})
  for word in "$@"; do  # _arguments puts compadd's options (-J -default-) before ours
    if [[ $word != ?*= ]]; then
      options+=("$word")
    elif (( ! ${given[(Ie)${word%=}]} )); then
      left+=("$word")
    fi
  done
  compadd "${options[@]}" -S '' -- "${left[@]}"
}

"""
FISH_SPEC = re.compile(r'-ka "([^"(]*=[^"(]*)" -d params')
FISH_PARAMS = r"""
# agentd's own: a method's name= parameters not yet on the line
function _agentd_params
  set -l given
  for token in (commandline -opc)
    string match -qr '^[^=]+=' -- $token; and set -a given (string replace -r '=.*' '=' -- $token)
  end
  for word in $argv
    contains -- $word $given; or echo $word
  end
end
"""


@dataclass(frozen=True)
class NamesOrFiles:
    """An argument that takes a file, or a shipped one by name (``agentd sim ring``)."""

    what: str
    names: tuple[str, ...]


def _names_or_files(marked: NamesOrFiles) -> dict[str, Any]:
    """shtab's ``.complete`` offering ``marked.names`` as well as paths: shtab can give an
    argument choices or a completion function, not both. tcsh's ``complete`` cannot mix the
    two: it offers paths."""
    import shtab

    what, listed = marked.what, " ".join(marked.names)
    quoted = ", ".join(f"'{name}'" for name in marked.names)  # PowerShell's literal strings
    # with "_file" in its name shtab's bash script completes as paths (a "/" after a directory)
    function = f"_shtab_agentd_compgen_{what}_files"
    return {
        "bash": function,
        "zsh": f"{{_alternative '{what}s:{what}:({listed})' 'files:file:{shtab.FILE['zsh']}'}}",
        "tcsh": shtab.FILE["tcsh"],
        "fish": f"{listed} {shtab.FILE['fish']}",
        "powershell": function,
        "preamble": {
            "bash": "\n".join([f"{function}() {{", f'  compgen -W "{listed}" -- "$1"',
                               f'  {shtab.FILE["bash"]} "$1"', "}"]),
            "powershell": "\n".join([
                f"function {function} {{", "  param([string]$WordToComplete)",
                f'  @({quoted}) | Where-Object {{ $_ -like "$WordToComplete*" }}',
                f"  {shtab.FILE['powershell']} $WordToComplete", "}"]),
        },
    }


def _as_shtab(parser: argparse.ArgumentParser) -> None:
    """Turn the marks on ``parser``'s actions (and its sub-parsers') into shtab's."""
    import shtab

    for action in parser._actions:
        marked = getattr(action, "complete", None)
        if marked == FILE:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif marked == DIRECTORY:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        elif isinstance(marked, NamesOrFiles):
            action.complete = _names_or_files(marked)  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _as_shtab(sub)


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """The parser each local command parses its arguments with, by command name (not
    ``help``, which has none, nor ``bench``, whose benchmarks each have one)."""
    from agentd import cli, demo, sim, up

    return {"init": cli.init_parser(), "run": cli.run_parser(), "sim": sim.command_parser(),
            "demo": demo.command_parser(), "up": up.command_parser("up"),
            "down": up.command_parser("down"), "completion": command_parser()}


def completion_parser() -> argparse.ArgumentParser:
    from agentd.bench import BENCHMARKS, summary
    from agentd.cli import COMMANDS
    from agentd.methods import describe, registry

    parser = argparse.ArgumentParser(prog="agentd")
    parser.add_argument("-c", "--config", help="the node's config").complete = FILE
    parser.add_argument("--socket", help="the node's control socket").complete = FILE
    parser.add_argument("-H", "--human", action="store_true", help="text, not JSON")
    commands = parser.add_subparsers(dest="command")
    methods = registry()
    own = command_parsers()
    for name, (_, what) in COMMANDS.items():
        if name in own:  # its options as the command itself parses them (-h comes with them)
            commands.add_parser(name, help=what, parents=[own[name]], add_help=False)
            continue
        sub = commands.add_parser(name, help=what)
        if name == "help":
            sub.add_argument("name", nargs="?", choices=sorted({*methods, *COMMANDS}))
        elif name == "bench":
            benchmarks = sub.add_subparsers(dest="benchmark")
            for benchmark, module_name in BENCHMARKS.items():
                module = importlib.import_module(module_name)
                benchmarks.add_parser(benchmark, help=summary(module.__doc__),
                                      parents=[module.command_parser()], add_help=False)
    for name, method in sorted(methods.items()):
        if name in COMMANDS:  # `help` is the command that also explains methods
            continue
        described = describe(name, method)
        sub = commands.add_parser(name, help=described["doc"][:60])
        sub.add_argument("-H", "--human", action="store_true", help="text, not JSON")  # after too
        words = [f"{param['name']}=" for param in described["params"]]
        if words:
            sub.add_argument("params", nargs="*", choices=words)
    _as_shtab(parser)
    return parser


def install_command(shell: str) -> str:
    """The shell command that installs ``shell``'s script where :data:`INSTALL` says."""
    path = INSTALL[shell][0]
    return f"mkdir -p {path.rsplit('/', 1)[0]} && agentd completion {shell} > {path}"


def script(shell: str) -> str:
    """shtab's script for ``shell``, its opening comment saying where it goes (shtab's names
    other places than the README does)."""
    import shtab

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
    text = "\n".join([*lines[:start], *note, *lines[end:]])
    if shell == "zsh":
        text = ZSH_SPEC.sub(r'"*:params:_agentd_params \1"', text)
        return text.replace("\ntypeset -A opt_args\n", ZSH_PARAMS + "typeset -A opt_args\n", 1)
    if shell == "fish":
        return FISH_SPEC.sub(r'-ka "(_agentd_params \1)" -d params', text) + FISH_PARAMS
    if shell != "bash":
        return text
    from agentd.cli import COMMANDS

    unnoded = " ".join(name for name in COMMANDS if name not in ("run", "help"))
    return text + BASH_PARAMS.replace("@UNNODED@", unnoded)  # its complete replaces shtab's


def command_parser() -> argparse.ArgumentParser:
    """``agentd completion``'s options, which the completion script offers too."""
    parser = argparse.ArgumentParser(
        prog="agentd completion", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Print a shell completion script; for bash:\n  {install_command('bash')}"
        "\n(the script's first lines say where each shell's goes)")
    parser.add_argument("shell", choices=SHELLS)
    return parser


def main(argv: list[str]) -> int:
    options = command_parser().parse_args(argv)
    print(script(options.shell))
    return 0
