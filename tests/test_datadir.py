"""Issue 12, items 6 and 7: the data directory is private, and one node at a time owns it.

Real ``agentd run`` processes: a second node on a live node's data directory refuses before
it starts anything (it must not even write its configured peers into the live database),
and the database files are 0600 whatever the umask, with a warning for a shared directory.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

from tests.clihelpers import AGENTD, add_peer, cli, free_port, init, running


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_second_node_on_the_same_data_dir_refuses_and_touches_nothing(tmp_path: Path) -> None:
    first = init(tmp_path, "n1")
    stranger = init(tmp_path, "other")
    data = Path(first["config"]).parent / "data"
    second = tmp_path / "second.toml"
    second.write_text(f'[node]\nname = "n1b"\ndata_dir = "{data}"\n'
                      f'listen = "127.0.0.1:{free_port()}"\n')
    add_peer(str(second), "other", stranger)
    with running({"n1": first}) as processes:
        result = subprocess.run([*AGENTD, "run", "-c", str(second)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "another agentd is already running" in lines[0], lines
        peers = json.loads(cli("-c", first["config"], "peers.list").stdout)
        assert stranger["agent"] not in {p["agent"] for p in peers}  # the live db untouched
        assert processes["n1"].poll() is None
        assert json.loads(cli("-c", first["config"], "getinfo").stdout)["agent"] == first["agent"]


def test_database_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    info = init(tmp_path, "n1")
    data = Path(info["config"]).parent / "data"
    os.chmod(data, 0o755)  # an existing directory others can read: kept, but warned about
    old = os.umask(0)
    try:
        with running({"n1": info}):
            cli("-c", info["config"], "users.add", "cuid=alice")  # a seed is written
            for name in ("agentd.db", "agentd.db-wal", "agentd.db-shm"):
                assert _mode(data / name) == 0o600, name
    finally:
        os.umask(old)
    log = (Path(info["config"]).parent / "agentd.log").read_text()
    assert "data dir is readable by others (mode 755)" in log


def test_a_new_data_dir_is_0700_whatever_the_umask(tmp_path: Path) -> None:
    info = init(tmp_path, "n1")
    config = Path(info["config"])
    fresh = tmp_path / "fresh"
    text = config.read_text()
    config.write_text(text.replace('data_dir = "data"',
                                   f'data_dir = "{fresh}"\nkey = "data/agent.key"'))
    old = os.umask(0)
    try:
        process = subprocess.Popen([*AGENTD, "run", "-c", str(config)],
                                   stderr=subprocess.DEVNULL)
    finally:
        os.umask(old)
    try:
        assert _wait_for(fresh / "agentd.sock", process), "node did not start"
        assert _mode(fresh) == 0o700
        assert _mode(fresh / "agentd.db") == 0o600
    finally:
        process.kill()
        process.wait()


def _wait_for(path: Path, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + 20
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
