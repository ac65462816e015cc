"""A failure of the node's own database (its file deleted, a full disk) costs neither the node
nor its background work: each task tries again with a backoff and the node keeps answering;
an RPC call that meets it is error -32014 DATABASE, the node's fault and not the request's."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import trio

from agentd.rpc import DATABASE, RpcError
from agentd.runtime import node as node_module
from agentd.runtime import outbox as pump_module
from agentd.services.relay.service import RelayService
from protocol.keys import ChipAddress
from protocol.messages import Send
from tests.clihelpers import cli, init, running
from tests.netfixture import network, wait_for
from tests.test_disk_full import fill


def _outbox_rows(node) -> int:
    return node.db.read_one("SELECT count(*) FROM outbox")[0]


async def _queue_pings(node, to_node, count: int) -> None:
    to = ChipAddress(agent=to_node.agent_id, host="127.0.0.1", port=to_node.port)
    await node.transact(lambda tx: [tx.send(Send(to, "node", "ping", {"seq": i}))
                                    for i in range(count)])


async def test_a_node_whose_database_was_deleted_keeps_running_its_timers(
        tmp_path, monkeypatch, caplog):
    """Maintenance and the relay's sweep tick every 0.1 s here, and the deleted file fails
    every write: each task backs off, logs once, and the node goes on answering."""
    monkeypatch.setattr(node_module, "MAINTENANCE_INTERVAL", 0.1)
    monkeypatch.setattr(RelayService, "sweep_interval_ms", 100)
    caplog.set_level(logging.ERROR, logger="agentd.runtime")
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await net.stop(1)
        await _queue_pings(a, b, 5)  # rows waiting for b, acked once it is back
        a.config.db_path.unlink()
        b = await net.restart(1)
        await wait_for(lambda: a.db.errors >= 3, timeout=10)
        await trio.sleep(2.5)  # maintenance and the sweep fail, back off and fail again
        info = await a.rpc.call("getinfo", {})
        assert info["counters"]["db_errors"] >= 3
        assert "was deleted while the node ran" in info["last_db_error"]
        with pytest.raises(RpcError) as raised:
            await a.rpc.call("users.add", {"cuid": "ann"})
        assert raised.value.code == DATABASE and raised.value.reason == "DATABASE"
        assert "was deleted while the node ran" in raised.value.message
        assert "not the request's" in raised.value.message
    streaks = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    maintenance = [line for line in streaks if line.startswith("maintenance")]
    assert len(maintenance) == 1, streaks  # once per streak, not once per failed tick
    assert any(line.startswith("the relay's sweep") for line in streaks), streaks


@pytest.fixture
def small_disk(tmp_path: Path):
    """``tmp_path/n0`` (node n0's data directory) on a 4 MiB tmpfs: needs root and mount."""
    directory = tmp_path / "n0"
    directory.mkdir(mode=0o700)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to make a small tmpfs for a real full disk")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs",
                              str(directory)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


async def test_a_full_disk_fails_background_writes_and_the_work_is_done_once_space_returns(
        small_disk, tmp_path, monkeypatch, caplog):
    """A real full disk (SQLITE_FULL): the acked rows' deletes and maintenance fail while it
    lasts, the node keeps running, and once space returns the acked rows are deleted. The
    writer logs the streak once, not each failed job, and when writes work again."""
    monkeypatch.setattr(node_module, "MAINTENANCE_INTERVAL", 0.1)
    caplog.set_level(logging.WARNING, logger="agentd.store")
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await net.stop(1)
        await _queue_pings(a, b, 20)
        with sqlite3.connect(a.config.db_path) as conn:  # an empty WAL: the next write grows it
            assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        filler = fill(small_disk)
        b = await net.restart(1)  # b takes the pings and acks them; a cannot delete the rows
        await wait_for(lambda: a.counters.acks_in >= 20, timeout=20)
        await wait_for(lambda: a.db.errors >= 3, timeout=10)
        await trio.sleep(1.5)  # the deletes and maintenance back off and fail again
        info = await a.rpc.call("getinfo", {})
        assert "full" in info["last_db_error"], info["last_db_error"]
        assert _outbox_rows(a) == 20  # acked, but not deleted: nothing could be written
        filler.unlink()  # space returns: the ids kept are deleted at the next try
        await wait_for(lambda: _outbox_rows(a) == 0, timeout=30)
        await wait_for(lambda: a.db.read_one("SELECT count(*) FROM inbox")[0] == 20,
                       timeout=30)  # and b's pongs, unacked meanwhile, were taken
        await a.rpc.call("users.add", {"cuid": "ann"})  # writes work again
    store_lines = [r.getMessage() for r in caplog.records
                   if r.name == "agentd.store" and r.getMessage().startswith("database write")]
    assert len(store_lines) == 2, store_lines  # a's streak; b's disk is not full
    assert "logged once until a write works again" in store_lines[0]
    assert store_lines[1].startswith("database writes work again, after ")
    assert not any("background database job" in r.getMessage() for r in caplog.records)


def test_the_cli_says_a_failed_write_is_the_nodes_database_not_the_request(tmp_path):
    """Over the control socket: error -32014 DATABASE on stderr, exit 1, node still up."""
    alice = init(tmp_path, "alice")
    config = alice["config"]
    with running({"alice": alice}) as processes:
        cli("-c", config, "users.add", "cuid=ann")
        (Path(config).parent / "data" / "agentd.db").unlink()
        time.sleep(1.2)  # the writer looks for its files at most once a second
        failed = cli("-c", config, "users.add", "cuid=bob", check=False)
        assert failed.returncode == 1, failed
        error = json.loads(failed.stderr)
        assert error["code"] == DATABASE and error["reason"] == "DATABASE"
        assert "could not use its database" in error["message"]
        assert "was deleted while the node ran" in error["message"]
        assert "changed nothing" in error["message"]
        info = json.loads(cli("-c", config, "getinfo").stdout)
        assert info["counters"]["db_errors"] >= 1
        assert processes["alice"].poll() is None


async def test_a_refusal_that_cannot_be_recorded_is_asked_again_and_recorded_once_space_returns(
        small_disk, tmp_path, caplog):
    """b refuses a's messages (BAD_ENVELOPE: no such target) while a's disk is full: marking
    their rows refused fails. That is a's failure: the channel stays open, the messages stay
    live and are sent again (b refuses each again); once space returns b's refusals are
    recorded, and each message's refusal is counted (rejected_by_peer) and logged once, not
    once a send."""
    caplog.set_level(logging.WARNING, logger="agentd.runtime.dispatch")
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await net.stop(1)
        to = ChipAddress(agent=b.agent_id, host="127.0.0.1", port=b.port)
        await a.transact(lambda tx: [tx.send(Send(to, "no-such-target", "ping", {"seq": i}))
                                     for i in range(5)])
        with sqlite3.connect(a.config.db_path) as conn:  # an empty WAL: the next write grows it
            assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        filler = fill(small_disk)
        b = await net.restart(1)
        # Each refused twice, and each live again: an ack takes its message out of the live
        # set until recording the refusal has failed (``pump.unsettle``), so right after the
        # tenth ack the last one may still be on its way back.
        await wait_for(lambda: a.counters.acks_in >= 10 and len(a.pump.live) == 5, timeout=30)
        assert a.db.errors >= 1 and "full" in a.db.last_error, a.db.last_error
        assert a.counters.rejected["internal_error"] == 0  # the channel was not closed for it
        assert a.counters.rejected_by_peer == 0  # not recorded yet
        filler.unlink()
        # A refusal is counted once its row is marked: the count may trail the row by a
        # moment (the writer commits, then the pump's task resumes), never exceed it.
        await wait_for(lambda: a.db.read_one(
            "SELECT count(*) FROM outbox WHERE state = 'failed'")[0] == 5
            and a.counters.rejected_by_peer >= 5, timeout=30)
        assert not a.pump.live
        assert a.counters.rejected["internal_error"] == 0
        assert a.counters.rejected_by_peer == 5
    refusals = [r.getMessage() for r in caplog.records
                if re.search(r"refused no-such-target/ping \(id [0-9a-f]{12}\): BAD_ENVELOPE: ",
                             r.getMessage())]
    assert len(refusals) == 5, refusals


def _corrupt_copy(db_path: Path, ids: list[bytes], copy: Path) -> sqlite3.Connection:
    """A copy of the database (checkpointed first) whose table pages that hold ``ids``' rows
    are garbage: reading those rows from it fails as a real corrupt file does."""
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(db_path.read_bytes())
    for start in range(page, len(data), page):  # page 1 (the schema) stays
        if data[start] == 0x0D and any(i in data[start:start + page] for i in ids):
            data[start + 8:start + page] = b"\xff" * (page - 8)  # a table leaf's cells
    copy.write_bytes(bytes(data))
    conn = sqlite3.connect(copy, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


async def test_a_failed_read_of_spilled_outbox_rows_costs_neither_the_sender_nor_the_node(
        tmp_path, monkeypatch, caplog):
    """b is away while a queues 30 messages for it: 8 wait in memory, the rest in their rows.
    Once b is back, reading those rows fails (a real SQLITE_CORRUPT: the read connection is
    swapped for a corrupt copy of the file): a's sender backs off and tries again, the node
    keeps running, and once reads work the rest are delivered."""
    monkeypatch.setattr(pump_module, "HOLD", 8)
    caplog.set_level(logging.ERROR, logger="agentd.runtime")
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        await net.stop(1)
        await _queue_pings(a, b, 30)
        assert len(a.pump.live) == 8 and a.pump.depth == 30
        spilled = [row[0] for row in a.db.read("SELECT id FROM outbox ORDER BY seq")[8:]]
        reader, a.db._reader = a.db._reader, _corrupt_copy(a.config.db_path, spilled,
                                                            tmp_path / "corrupt.db")
        try:
            b = await net.restart(1)  # the 8 are acked, and the sender reads the rest back
            await wait_for(lambda: any("reading spilled outbox rows" in r.getMessage()
                                       for r in caplog.records), timeout=20)
            await trio.sleep(1.5)  # tried again after a second: fails again
            assert "malformed" in a.db.last_error, a.db.last_error
            assert a.counters.acks_in == 8 and not a.pump.live  # the rest wait in their rows
            assert (await a.rpc.call("getinfo", {}))["counters"]["db_errors"] >= 2
        finally:
            a.db._reader.close()
            a.db._reader = reader
        await wait_for(lambda: _outbox_rows(a) == 0, timeout=30)
        assert b.db.read_one("SELECT count(*) FROM inbox")[0] == 30


async def test_the_relay_survives_a_failed_read_of_its_next_deadline(
        tmp_path, monkeypatch, caplog):
    """The relay's sweep loop reads when its next deadline is: a read connection on a file
    that is not a database (a real SQLITE_NOTADB) fails it every time; the loop backs off,
    logs once, and goes on once reads work."""
    monkeypatch.setattr(RelayService, "sweep_interval_ms", 100)
    caplog.set_level(logging.WARNING, logger="agentd.runtime")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\xff" * 8192)
    async with network(tmp_path, n=1) as net:
        node = net.nodes[0]
        reader = node.db._reader
        node.db._reader = sqlite3.connect(garbage, check_same_thread=False)
        try:
            await wait_for(lambda: node.db.errors >= 2, timeout=10)
            assert "not a database" in node.db.last_error, node.db.last_error
        finally:
            node.db._reader.close()
            node.db._reader = reader
        await wait_for(lambda: any("relay's sweep" in r.getMessage() and "works again"
                                   in r.getMessage() for r in caplog.records), timeout=10)
    failed = [r for r in caplog.records if "relay's sweep" in r.getMessage()
              and "trying again" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in caplog.records]


def _garble_table(db_path: Path, table: str) -> None:
    """Overwrite ``table``'s root page with garbage: reading it fails (SQLITE_CORRUPT)."""
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                            (table,)).fetchone()[0]
    with open(db_path, "r+b") as handle:
        handle.seek((root - 1) * page)
        handle.write(b"\xff" * page)


@pytest.mark.parametrize("table", ["peers", "outbox_pending"])
def test_agentd_run_on_a_database_that_fails_at_start_exits_with_one_line(tmp_path, table):
    """A start-up read or write that fails (loading the peers, before the node's tasks; the
    outbox's waiting peers, in the pump's start) ends ``agentd run`` with one line naming the
    database and the failure, exit 2, no traceback."""
    alice = init(tmp_path, "alice")
    config = alice["config"]
    with running({"alice": alice}) as processes:  # made the database
        cli("-c", config, "stop")
        assert processes["alice"].wait(timeout=20) == 0
    db_path = Path(config).parent / "data" / "agentd.db"
    _garble_table(db_path, table)
    failed = cli("run", "-c", config, check=False)
    assert failed.returncode == 2, failed
    assert "Traceback" not in failed.stderr, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last == (f"agentd: cannot start: the database {db_path} failed: database disk image "
                    "is malformed; fix that (free disk space, restore the file from a backup) "
                    "and start again"), failed.stderr
