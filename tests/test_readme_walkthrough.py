"""The README runs as written: its walkthrough blocks, in order, from top to bottom.

Each shell block marked ``<!-- walkthrough ... -->`` in the README is run by bash (``-e``,
``pipefail``: every command must succeed) in a sandbox that holds a copy of
``configs/local`` — same keys, so the agent ids the README prints are right, but free ports
instead of 7101-7104, so the test never collides with a ``make demo`` — and a ``.venv`` that
is this interpreter's environment. The nodes a block makes by hand (``agentd init`` on
127.0.0.1:7301 and 7302) get free ports too: the block's text is rewritten before it runs.
The sandbox's nodes are stopped whatever happens.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agentd.localnodes import free_ports

ROOT = Path(__file__).resolve().parent.parent
PORTS = ("7101", "7102", "7103", "7104")
BY_HAND_PORTS = ("7301", "7302")


def walkthrough_blocks(text: str) -> list[str]:
    return re.findall(r"<!-- walkthrough[^>]*-->\s*```sh\n(.*?)```", text, re.DOTALL)


def test_the_readme_marks_its_walkthrough():
    blocks = walkthrough_blocks((ROOT / "README.md").read_text())
    assert "agentd init nodes/n1" in blocks[0] and "agentd up nodes" in blocks[0]
    assert any(line.startswith("agentd up  ") for line in blocks[1].splitlines())
    assert blocks[-1].strip() == "agentd down"
    for needed in ("ch.create_process", "relay.wait", "lift.pay", "chit.pay"):
        assert any(needed in block for block in blocks), needed


@pytest.mark.e2e
def test_the_readme_walkthrough_runs_as_written():
    blocks = walkthrough_blocks((ROOT / "README.md").read_text())
    sandbox = Path(tempfile.mkdtemp(prefix="agentd-readme-"))  # short: Unix socket paths
    try:
        local = sandbox / "configs" / "local"
        shutil.copytree(ROOT / "configs" / "local", local)
        ports = dict(zip(PORTS + BY_HAND_PORTS,
                         map(str, free_ports(len(PORTS) + len(BY_HAND_PORTS))), strict=True))
        for config in local.glob("*.toml"):
            config.write_text(re.sub(r"127\.0\.0\.1:(710[1-4])",
                                     lambda m: f"127.0.0.1:{ports[m.group(1)]}",
                                     config.read_text()))
        (sandbox / ".venv").symlink_to(sys.prefix)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        for number, block in enumerate(blocks, 1):
            script = re.sub(r"127\.0\.0\.1:(730[12])",
                            lambda m: f"127.0.0.1:{ports[m.group(1)]}", block)
            result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=sandbox,
                                    env=env, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, (f"README walkthrough block {number} failed:\n"
                                            f"{block}\n{result.stdout[-3000:]}"
                                            f"{result.stderr[-3000:]}")
            if "receipts.verify" in block:
                assert '"ok": true' in result.stdout
            if "-H peers.list" in block:
                assert re.search(r"^bob +ZHL-dKJE… .* config ", result.stdout, re.MULTILINE)
    finally:
        for network in ("configs/local", "nodes"):
            if (sandbox / network).is_dir():
                subprocess.run([sys.executable, "-m", "agentd", "down", network], cwd=sandbox,
                               capture_output=True, timeout=60)
        shutil.rmtree(sandbox, ignore_errors=True)
