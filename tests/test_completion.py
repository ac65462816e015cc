"""`agentd completion bash` completes commands, method names and their parameters in bash."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agentd.bench import BENCHMARKS
from agentd.completion import INSTALL, install_command
from tests.clihelpers import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def complete(script: str, *words: str) -> list[str]:
    """What bash offers for the last of ``words`` after ``agentd``."""
    quoted = " ".join(f'"{word}"' for word in ("agentd", *words))
    probe = (f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words)}; "
             f"COMP_LINE='agentd {' '.join(words)}'; COMP_POINT=${{#COMP_LINE}}; "
             "_shtab_agentd; printf '%s\\n' \"${COMPREPLY[@]}\"")
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
    return [word.strip() for word in result.stdout.splitlines() if word.strip()]


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
