"""A built wheel works outside the repository: `agentd demo` runs from the installed package.

The wheel is built and installed offline (no index, no dependencies fetched): the fresh venv
sees the test venv's packages through ``--system-site-packages`` when the test venv is the
interpreter's base, or else through a ``.pth`` line naming the test venv's site-packages.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_the_wheel_runs_the_demo_and_a_sample_scenario_outside_the_repo(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True, timeout=120)
    wheel = next(wheels.glob("agentd-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    target = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    # the test venv's dependencies (trio, noise, ...), but not its editable agentd
    (target / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                    "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    # a short cwd: the control sockets under it must fit a Unix socket path (108 bytes)
    away = Path(tempfile.mkdtemp(prefix="agentd-wheel-"))
    try:
        _run_from(python, target, away)
    finally:
        shutil.rmtree(away, ignore_errors=True)


def _run_from(python: Path, target: Path, away: Path) -> None:
    where = subprocess.run([python, "-c", "import agentd; print(agentd.__file__)"], cwd=away,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(target)), where  # the installed copy, not the repository's
    demo = subprocess.run([python, "-m", "agentd", "demo", "--free-ports"], cwd=away,
                          capture_output=True, text=True, timeout=120)  # beside a `make demo`
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "all clean" in demo.stdout and (away / ".run" / "demo" / "alice").is_dir()
    sim = subprocess.run([python, "-m", "agentd", "sim", "ring"], cwd=away,
                         capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0, sim.stdout[-2000:] + sim.stderr[-2000:]
