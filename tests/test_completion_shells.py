"""zsh's and fish's completion of a method's ``name=`` parameters, in the shells themselves
(each skipped where the shell is not installed: `apt-get install zsh fish`). zsh offered a
method's first parameter alone, with a space after it; fish offered the given ones again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clihelpers import cli

# a zsh in a pseudo-terminal (zpty) with compadd wrapped to print what it is given: each
# candidate and the suffix it would take after it (" " unless -S says otherwise)
ZSH_INIT = r"""
PROMPT=
fpath=({folder} $fpath)
autoload -U compinit && compinit -u
zmodload zsh/zutil
compadd () {{
  if [[ ${{@[1,(i)(-|--)]}} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
  typeset -a __hits
  builtin compadd -A __hits "$@"
  local ret=$?
  typeset -A asuf
  zparseopts -E S:=asuf
  local suf=" "
  (( $#asuf )) && suf="${{asuf[-S]}}"
  for i in {{1..$#__hits}}; do print -r -- "HIT<${{__hits[i]}}>SUF<$suf>"; done
  return $ret
}}
bindkey '^I' complete-word
"""
ZSH_RUN = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "source {init}"
zpty -w z "$1"$'\t'
zpty -w z $'echo END\n'
local line
while zpty -r z line; do
  [[ $line == *END* ]] && break
  [[ $line == *HIT\<* ]] && print -r -- "${{line//$'\r'/}}"
done
zpty -d z
"""


def _path_env() -> dict[str, str]:
    """agentd on the PATH, as the user's shell finds it (the script calls nothing of it)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def zsh_offers(tmp_path: Path, line: str) -> list[tuple[str, str]]:
    """What zsh offers at the end of ``line`` (its tab): (candidate, suffix) pairs."""
    (tmp_path / "_agentd").write_text(cli("completion", "zsh").stdout)
    init, run = tmp_path / "init.zsh", tmp_path / "run.zsh"
    init.write_text(ZSH_INIT.format(folder=tmp_path))
    run.write_text(ZSH_RUN.format(init=init))
    out = subprocess.run(["zsh", "-f", str(run), line], capture_output=True, text=True,
                         timeout=60, env=_path_env()).stdout
    pairs = []
    for found in out.splitlines():
        hit, _, suffix = found.partition("HIT<")[2].partition(">SUF<")
        if hit:
            pairs.append((hit, suffix.removesuffix(">")))
    return pairs


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh")
def test_zsh_offers_the_parameters_not_given_yet_with_no_space_after_one(tmp_path):
    assert zsh_offers(tmp_path, "agentd -c n.toml lift.show ") == [("lift=", "")]
    assert zsh_offers(tmp_path, "agentd -c n.toml tally.invite cuid=alice ") == [
        ("limit=", ""), ("side=", ""), ("reuse=", ""), ("expires_s=", ""), ("memo=", "")]
    assert zsh_offers(tmp_path, "agentd -c n.toml lift.show lift=ab12 ") == []
    assert zsh_offers(tmp_path, "agentd -c n.toml tally.s") == [("tally.show", " ")]


def fish_offers(tmp_path: Path, line: str) -> list[str]:
    script = tmp_path / "agentd.fish"
    script.write_text(cli("completion", "fish").stdout)
    out = subprocess.run(["fish", "-c", f"source {script}; complete -C '{line}'"],
                         capture_output=True, text=True, timeout=60, env=_path_env()).stdout
    return [found.split("\t")[0] for found in out.splitlines()]


@pytest.mark.skipif(shutil.which("fish") is None, reason="needs fish")
def test_fish_offers_the_parameters_not_given_yet(tmp_path):
    assert fish_offers(tmp_path, "agentd -c n.toml lift.show ") == ["lift="]
    assert fish_offers(tmp_path, "agentd -c n.toml tally.invite cuid=alice ") == [
        "limit=", "side=", "reuse=", "expires_s=", "memo="]
    assert fish_offers(tmp_path, "agentd -c n.toml tally.invite cuid=alice li") == ["limit="]
