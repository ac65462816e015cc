"""`agentd completion bash` completes commands and their options, the shipped scenarios,
method names and their parameters in bash."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agentd.bench import BENCHMARKS
from agentd.cli import COMMANDS
from agentd.completion import INSTALL, SHELLS, command_parsers, install_command
from agentd.configs_dir import shipped_scenarios
from tests.clihelpers import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def completion(script: str, *words: str, cwd: Path | None = None
               ) -> tuple[list[str], list[str]]:
    """What bash offers for the last of ``words`` after ``agentd`` (in ``cwd``), through the
    function the script registers for agentd, and the compopt calls it made (``-o nospace``).
    ``words`` as bash splits the line: ``cuid=alice`` is ``cuid``, ``=``, ``alice``."""
    quoted = " ".join(f'"{word}"' for word in ("agentd", *words))
    probe = (f"{script}\ncalls=(); compopt() {{ calls+=(\"$*\"); }}\n"  # recorded, not run
             f"COMP_WORDS=({quoted}); COMP_CWORD={len(words)}; "
             f"COMP_LINE='agentd {' '.join(words)}'; COMP_POINT=${{#COMP_LINE}}; "
             'read -ra spec <<< "$(complete -p agentd)"; "${spec[-2]}"; '
             "printf '%s\\n' \"${COMPREPLY[@]}\" compopt: \"${calls[@]}\"")
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60,
                            cwd=cwd)
    offered, _, calls = result.stdout.rpartition("compopt:\n")
    return ([word.strip() for word in offered.splitlines() if word.strip()],
            [call for call in calls.splitlines() if call != "-o filenames"])


def complete(script: str, *words: str, cwd: Path | None = None) -> list[str]:
    """What bash offers for the last of ``words`` after ``agentd``, in ``cwd``."""
    return completion(script, *words, cwd=cwd)[0]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_methods_and_parameters():
    script = cli("completion", "bash").stdout
    assert complete(script, "-c", "n.toml", "peers.p") == ["peers.ping"]
    assert complete(script, "-c", "n.toml", "peers.ping", "") == ["agent=", "count="]
    assert complete(script, "bench", "") == list(BENCHMARKS)
    assert "tally.accept" in complete(script, "help", "tally.")
    assert complete(script, "help", "ini") == ["init"]  # agentd help COMMAND shows its options
    assert "demo" in complete(script, "de")
    assert cli("completion", "zsh").stdout.startswith("#compdef agentd")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_offers_each_parameter_once_with_no_space_after_it():
    """`agentd -c n.toml lift.show <TAB><TAB>` wrote `lift= lift= `: each name= word took a
    space after it, where its value goes, and was offered again once given (the CLI refuses
    a parameter given twice); with every parameter given, file names were offered."""
    script = cli("completion", "bash").stdout
    assert completion(script, "-c", "n.toml", "lift.show", "") == (["lift="], ["-o nospace"])
    assert completion(script, "-c", "n.toml", "tally.invite", "cu") == (["cuid="],
                                                                         ["-o nospace"])
    given = ("-c", "n.toml", "tally.invite", "cuid", "=", "alice", "memo", "=", "x y")
    assert completion(script, *given, "") == (["limit=", "side=", "reuse=", "expires_s="],
                                              ["-o nospace"])
    assert complete(script, *given, "cu") == []
    assert complete(script, "-c", "n.toml", "peers.ping", "agent=x", "") == ["count="]  # no
    #   "=" in COMP_WORDBREAKS: the word whole
    assert completion(script, "-c", "n.toml", "lift.show", "lift", "=", "ab12", "") == (
        [], ["+o bashdefault"])  # nothing left: no file names
    assert completion(script, "-c", "n.toml", "tally.s") == (["tally.show"], [])  # a space
    assert completion(script, "-c", "n.toml", "tally.show", "-")[1] == []
    # after -c CONFIG a method, run or help: not a command that takes no node (it offered
    # init, up, down ... there)
    assert set(complete(script, "-c", "n.toml", "r")) == {
        "run", "receipts.list", "receipts.verify", "relay.delete", "relay.query", "relay.state",
        "relay.wait", "reload", "route.find"}
    assert not {"up", "down", "demo", "init"} & set(complete(script, "-c", "n.toml", ""))
    assert not {"up", "down", "demo", "init"} & set(complete(script, "--socket", "s", ""))
    assert {"up", "down", "demo", "init"} <= set(complete(script, ""))  # first, they are


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_the_local_commands_options_paths_and_scenario_names(tmp_path):
    """The script offered no option of init, sim, bench ... (agentd init x --<TAB>: nothing),
    and after `agentd sim` only files, though sim takes a shipped scenario by name: the
    options come from each command's own parser, and sim's SCENARIO offers both."""
    script = cli("completion", "bash").stdout
    (tmp_path / "rings.toml").touch()
    (tmp_path / "reports").mkdir()
    named = [name for name in shipped_scenarios() if name.startswith("r")]
    assert "ring" in named
    paths = ["reports", "rings.toml"]  # bash sorts them for display; compgen need not
    assert sorted(complete(script, "sim", "r", cwd=tmp_path)) == sorted([*named, *paths])
    assert complete(script, "sim", "ring", "--report", "r", cwd=tmp_path) == ["reports"]
    assert sorted(complete(script, "sim", "ring", "--json", "r", cwd=tmp_path)) == paths
    assert complete(script, "init", "r", cwd=tmp_path) == ["reports"]
    assert complete(script, "init", "x", "--") == ["--help", "--name", "--listen",
                                                   "--advertise", "--network"]
    assert complete(script, "bench", "lifts", "--q") == ["--quick"]
    assert "-H" in complete(script, "tally.show", "-")  # -H may come after the method
    assert sorted(complete(script, "run", "-c", "r", cwd=tmp_path)) == paths
    own = command_parsers()  # every local command but help (none) and bench (one a benchmark)
    assert set(own) == set(COMMANDS) - {"help", "bench"}
    for command, parser in own.items():  # every option, as the command takes it
        options = {option for action in parser._actions for option in action.option_strings
                   if option.startswith("--")}
        assert options <= set(complete(script, command, "--")), command
    for benchmark in BENCHMARKS:
        assert {"--json", "--no-goals", "--quick"} <= set(
            complete(script, "bench", benchmark, "--")), benchmark


def test_every_shells_script_has_the_local_commands_options():
    """As each shell's script writes an option (fish: ``-l name``; tcsh: a word of its one
    ``c/--/(…)`` list; the others: ``--name``), not the word alone, which help could hold."""
    for shell in SHELLS:
        script = cli("completion", shell).stdout
        for option in ("advertise", "processes", "free-ports", "in-flight", "no-goals"):
            if shell == "tcsh":
                assert option in re.search(r"'c/--/\(([^)]*)\)/'", script)[1].split(), option
            else:
                assert (f"-l {option}" if shell == "fish" else f"--{option}") in script, (
                    shell, option)


def test_each_script_says_where_it_goes_as_the_readme_does():
    """shtab's comment told bash users ~/.local/share/bash_completion/agentd, sourced from
    ~/.bashrc, where the README says bash-completion's own directory."""
    readme = " ".join(README.read_text().split())
    assert "mkdir -p ~/.local/share/bash-completion/completions\nagentd completion bash > " \
           "~/.local/share/bash-completion/completions/agentd\n" in README.read_text()
    for shell, (path, how) in INSTALL.items():
        script = cli("completion", shell).stdout
        head = script.split("\n\n", 2)[1 if shell == "zsh" else 0]  # after zsh's #compdef
        assert head.splitlines()[1] == f"# Install: {install_command(shell)}", shell
        assert " ".join(line.removeprefix("# ") for line in head.splitlines()[2:]) == how
        assert f"`{shell}` `{path}`" in readme or shell == "bash", shell
        assert "Usage:" not in script and "_completion/agentd)" not in script, shell
    assert install_command("bash") == ("mkdir -p ~/.local/share/bash-completion/completions "
                                       "&& agentd completion bash > "
                                       "~/.local/share/bash-completion/completions/agentd")
