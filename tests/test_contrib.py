"""contrib/agentd.service is a unit systemd accepts, run as a Type=notify service."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "agentd.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path):
    text = UNIT.read_text()
    assert "\nType=notify\n" in text and "\nExecReload=/bin/kill -HUP $MAINPID\n" in text
    agentd = Path(sys.executable).parent / "agentd"
    unit = tmp_path / "agentd.service"
    unit.write_text(text.replace("/opt/agentd/bin/agentd", str(agentd)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "agentd.service" in line]
    assert result.returncode == 0 and not problems, problems
