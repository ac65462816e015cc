"""One owner's jobs take at most ``OWNER_SLICE`` of a batch (``store.db``): a peer we know
(no write ration) whose messages are costly to handle delays the others' by a slice, not by
everything it had queued — a partner's 2,048 messages in flight at ~10 ms each had every other
peer's, and the node's own work, wait ~20 s."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import trio

from agentd.bench.rogue import Rogue
from protocol.codec import pack
from protocol.envelope import Ack
from store.db import Database
from store.shared_writer import SharedWriter
from tests.netfixture import network, wait_for

SLOW = 0.005  # seconds of CPU a flooding owner's job takes


def burn(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU: what the writer's slices count."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def test_an_owners_slow_jobs_wait_for_the_next_batch_past_its_slice(tmp_path: Path):
    ran: list[tuple[str, int]] = []

    def slow(i: int):
        def job(conn):
            burn(SLOW)
            ran.append(("flood", i))
        return job

    async with Database.open(tmp_path / "db") as db:  # 200 x 5 ms: 10 slices of 100 ms
        gate = threading.Event()
        held = db.start(lambda conn: gate.wait(5))  # all below is queued before it ends
        flood = [db.start(slow(i), owner="flooder") for i in range(200)]
        honest = db.start(lambda conn: ran.append(("honest", 0)), owner="honest")
        gate.set()
        await held.outcome()
        await honest.outcome()
        before = sum(1 for who, _ in ran if who == "flood")
        assert before <= 2 * 0.1 / SLOW, before  # ~one 100 ms slice (all 200 before)
        for pending in flood:
            await pending.outcome()
        assert [i for who, i in ran if who == "flood"] == list(range(200))  # in order
        assert db.jobs == 202


async def test_another_owners_job_is_not_behind_a_backlog_past_a_batchs_size(tmp_path: Path):
    """The jobs left from an owner's slice filled the next batch first, and a batch took at
    most MAX_BATCH (2,000) jobs: with 3,000 of one owner's queued, another's waited for
    1,000 of them (two channels of a partner's queries: 116 s). Every job that came is
    taken in, by owner, each time."""
    ran: list[str] = []

    def cheap(conn):
        burn(0.0005)
        ran.append("flood")

    async with Database.open(tmp_path / "db") as db:
        gate = threading.Event()
        held = db.start(lambda conn: gate.wait(5))
        flood = [db.start(cheap, owner="flooder") for _ in range(3000)]
        honest = db.start(lambda conn: ran.append("honest"), owner="honest")
        gate.set()
        await held.outcome()
        await honest.outcome()
        before = ran.index("honest")
        assert before <= 2 * 0.1 / 0.0005, before  # ~one slice of 200 (1,000 and more before)
        for pending in flood:
            await pending.outcome()
        assert len(ran) == 3001


async def test_the_shared_writer_still_commits_every_job_in_order(tmp_path: Path):
    ran: list[int] = []

    def slow(i: int):
        def job(conn):
            burn(SLOW)
            ran.append(i)
            conn.execute("CREATE TABLE IF NOT EXISTS t (i)")
            conn.execute("INSERT INTO t VALUES (?)", (i,))
        return job

    with SharedWriter() as writer:
        async with Database.open(tmp_path / "db", shared=writer) as db:
            pending = [db.start(slow(i), owner="flooder") for i in range(30)]
            last = db.start(lambda conn: ran.append(-1), owner="other")
            await last.outcome()
            assert all(p.done for p in pending)  # in the same commit: no slices there
            assert ran[:30] == list(range(30))
            assert db.read_one("SELECT count(*) FROM t")[0] == 30


async def _acked(rogue: Rogue, ids: set[bytes]) -> None:
    acked: set[bytes] = set()
    while not ids <= acked:
        acked |= {frame.ack for frame in await rogue.receive(10) if isinstance(frame, Ack)}


async def test_a_partners_costly_flood_leaves_another_peers_message_a_slice_behind(
        tmp_path: Path):
    """Two peers the node knows; one floods it with notes that each cost its writer 5 ms of CPU
    (a handler made slow for that peer alone: what a partner's costly messages do)."""
    async with network(tmp_path, n=3) as net:
        node, partner, other = net.nodes
        service = node.dispatcher.services["node"]
        plain = service.handle
        flooder = await Rogue.join(node.port, node.agent_id, key=partner.key)
        honest = await Rogue.join(node.port, node.agent_id, key=other.key)
        assert node.is_known(flooder.agent) and node.is_known(honest.agent)

        def handle(tx, envelope):
            if envelope.from_.agent == flooder.agent:
                burn(SLOW)
            plain(tx, envelope)

        service.handle = handle  # type: ignore[method-assign]

        def taken(agent: str) -> int:
            return node.db.read_one("SELECT count(*) FROM inbox WHERE peer = ?", (agent,))[0]

        flood = [flooder.envelope(node.agent_id, "note", {}) for _ in range(400)]
        await flooder.send_frames([pack(body) for body in flood])
        await wait_for(lambda: taken(flooder.agent) >= 10)
        note = honest.envelope(node.agent_id, "note", {})
        await honest.send_frames([pack(note)])
        await _acked(honest, {note["id"]})
        assert taken(flooder.agent) < 150, taken(flooder.agent)  # all 400 before
        await _acked(flooder, {body["id"] for body in flood})
        assert taken(flooder.agent) == 400
        with trio.CancelScope(shield=True):
            await flooder.aclose()
            await honest.aclose()
