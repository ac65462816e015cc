"""Issue 12, item 5: a full disk is a failure of ours, never a refusal of the message.

A clearing house runs as an ``agentd run`` process with its data directory on a small tmpfs.
With the disk filled up, a client's ``ch.log`` cannot be committed: the house must not answer
it with an error ack (the client would mark it failed for good) but leave it unacked, count
and log the cause, and take the entry on the client's retry once space is freed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.clihelpers import AGENTD, cli, init, running

TMPFS_SIZE = 4 << 20


def rpc(config: str, method: str, *params: str):
    return json.loads(cli("-c", config, method, *params).stdout)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A house whose data directory is a 4 MiB tmpfs (needs root and mount; else skip)."""
    info = init(tmp_path, "house")
    data = Path(info["config"]).parent / "data"
    key = (data / "agent.key").read_bytes()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to make a small tmpfs for a real full disk")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700",
                              "tmpfs", str(data)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        fd = os.open(data / "agent.key", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, key)
        os.close(fd)
        yield info, data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` (a small tmpfs) to the last byte."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:  # nothing left to flush at close
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def _wait(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_full_disk_leaves_messages_unacked_and_they_flow_once_space_returns(small_disk, tmp_path):
    house, data = small_disk
    config = Path(house["config"])
    config.write_text(config.read_text().replace("roles = []", 'roles = ["clearinghouse"]'))
    alice = init(tmp_path, "alice")
    with open(alice["config"], "a") as handle:
        handle.write(f'\n[clearinghouse]\nagent = "{house["agent"]}"\n'
                     f'address = "127.0.0.1:{house["port"]}"\n')
    with running({"house": house, "alice": alice}) as processes:
        rpc(alice["config"], "ch.create_process", "pid=p1")
        filler = fill(data)
        payload = "x" * 120_000  # more than the WAL already holds: it must grow
        call = subprocess.Popen([*AGENTD, "-c", alice["config"], "ch.log", "pid=p1",
                                 f"payload={payload}"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            info = _wait(lambda: (i := rpc(house["config"], "getinfo"))["counters"]["db_errors"]
                         and i, "the house to fail a commit")
            assert "full" in info["last_db_error"]
            assert processes["house"].poll() is None
            filler.unlink()  # space returns: the client's retry now commits
            page = _wait(lambda: (p := rpc(alice["config"], "ch.query", "pid=p1"))["total"]
                         and p, "the entry to be logged after space returned")
            assert page["total"] == 1 and page["entries"][0]["payload_text"] == payload
            receipts = rpc(alice["config"], "receipts.list", "pid=p1")
            assert [r["status"] for r in receipts if r["seq"] == 1] == ["valid"], receipts
            assert rpc(alice["config"], "getinfo")["counters"]["rejected_by_peer"] == 0
        finally:
            call.kill()
            call.wait()
    log = (config.parent / "agentd.log").read_text()
    assert "database write failed" in log
