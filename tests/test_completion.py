"""`agentd completion bash` completes commands, method names and their parameters in bash."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from agentd.bench import BENCHMARKS
from tests.clihelpers import cli


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
