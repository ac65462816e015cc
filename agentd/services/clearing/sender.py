"""Sending to the clearing house: ``ch.log`` calls and evidence logs, batched.

``ch.log``/``ch.log_many`` entries come through a bounded Trio memory channel (callers wait
while it is full: backpressure); :meth:`Sender.run` sends all that queued meanwhile, for one
clearing house and within a frame, as one ``log_batch`` (a lone one as ``log``). Evidence
logs wait as rows of ``ch_requests``; they go out the same way, all that are ready at once,
``EVIDENCE_LINGER_S`` after being told (``evidence_due``), and at start for those a stopped
node left — first moving the evidence bound to an agent that is no longer the clearing house
to the one configured (``moves.py``: at start, and when told of a new ``[clearinghouse]``).
Nothing waits on evidence, and one batch costs the node and the clearing house
about what one entry does, so the linger saves CPU: on a node making one lift after another,
evidence sent as it happened was about a sixth of each lift's CPU over all nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import takewhile
from typing import TYPE_CHECKING, Any

import trio

from agentd.runtime.context import Tx
from agentd.runtime.timers import Failures
from protocol import clearing as ch
from protocol import evidence_merge as merge
from protocol.codec import pack, unpack
from protocol.evidence import entry_key
from protocol.keys import ChipAddress
from protocol.messages import Send
from store import clearing as store

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime

log = logging.getLogger("agentd.evidence")

QUEUE_LIMIT = 4 * ch.MAX_BATCH  # queued entries beyond which ch.log callers wait
EVIDENCE_RETRY = 1.0  # s before evidence is sent again after a failed write
EVIDENCE_LINGER_S = 1.0  # evidence waits this long for more to go in the same batch
BATCH_ITEM_OVERHEAD = 16  # msgpack bytes around each entry of a log_batch, generously
MERGE_WINDOW = 4 * ch.MAX_BATCH  # waiting logs read at once, to go in one batch's entries


class Pending:
    """A ``ch.log`` entry waiting for ``Sender.run`` to send it."""

    __slots__ = ("abandoned", "error", "house", "key", "obj", "sent", "size")

    def __init__(self, house: ChipAddress, obj: dict[str, Any], size: int) -> None:
        self.house, self.obj, self.size = house, obj, size
        # set once committed to the outbox (or failed: ``error``); only a call's last entry
        # has one, as entries are sent in order
        self.sent: trio.Event | None = None
        self.key: bytes | None = None  # the receipt/waiter key, once sent
        self.error: Exception | None = None
        self.abandoned = False  # the caller went away: nobody collects the answer


class Sender:
    def __init__(self, runtime: Runtime, room: Callable[[], int],
                 address: Callable[[str], ChipAddress], move: Callable[[Tx], None]) -> None:
        self.runtime = runtime
        self._room = room  # the largest request a frame carries
        self._address = address  # where to send to a clearing house, by agent id
        self._move = move  # evidence bound to another clearing house moves to ours (moves.py)
        self._move_due = True  # at start: the configured clearing house may be a new one
        self._calls_in, self._calls = trio.open_memory_channel[Pending](QUEUE_LIMIT)
        self._evidence_waiting = True  # at start: what a previous run left
        self._evidence_told = trio.lowlevel.ParkingLot()

    async def queue(self, items: list[Pending]) -> None:
        """Queue ``ch.log`` entries, in order; waits only while the queue is full (so a
        call's entries go in one batch when there is room)."""
        for item in items:
            try:
                self._calls_in.send_nowait(item)
            except trio.WouldBlock:
                await self._calls_in.send(item)

    def evidence_due(self) -> None:
        """An evidence log committed (or its process became ready): send it soon."""
        self._evidence_waiting = True
        self._evidence_told.unpark_all()

    def house_changed(self) -> None:
        """``[clearinghouse]`` changed: the evidence bound to the old one moves, then goes."""
        self._move_due = True
        self.evidence_due()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send what waits for the clearing house until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_evidence)
            task_status.started()
            await self._send_calls()

    # -- ch.log calls ---------------------------------------------------------------------

    async def _send_calls(self) -> None:
        """Send the queued ``ch.log`` entries: all that queued meanwhile (up to ``MAX_BATCH``
        and a frame) as one ``log_batch`` to the same clearing house, a lone one as ``log``."""
        carried: Pending | None = None  # taken from the queue, but for the next batch
        while True:
            first = carried or await self._calls.receive()
            carried = None
            batch, size = [first], first.size
            while len(batch) < ch.MAX_BATCH:
                try:
                    item = self._calls.receive_nowait()
                except trio.WouldBlock:
                    break
                size += item.size + BATCH_ITEM_OVERHEAD
                if item.house != first.house or size > self._room():
                    carried = item
                    break
                batch.append(item)
            await self._send_batch(batch)
            for item in batch:
                if item.sent is not None:
                    item.sent.set()

    async def _send_batch(self, batch: list[Pending]) -> None:
        house = batch[0].house

        def work(tx: Tx) -> list[bytes]:
            conn = tx.conn
            if len(batch) == 1:
                obj = batch[0].obj
                message_id = tx.send(Send(house, ch.TARGET, "log", obj))
                store.add_request(
                    conn, message_id=message_id, ch=house.agent, action="log", pid=obj["pid"],
                    kind=None, ref=None, payload_sha256=obj["payload_sha256"], state="sent",
                    now_ms=tx.now_ms,
                )  # fmt: skip
                keys = [message_id]
            else:
                message_id = tx.send(Send(house, ch.TARGET, "log_batch",
                                          {"entries": [item.obj for item in batch]}))
                store.add_request(
                    conn, message_id=message_id, ch=house.agent, action="log_batch", pid=None,
                    kind=None, ref=None, payload_sha256=None, state="sent", now_ms=tx.now_ms,
                    obj=pack([[item.obj["pid"], item.obj["payload_sha256"]] for item in batch]),
                )  # fmt: skip
                keys = [entry_key(message_id, index) for index in range(len(batch))]
            tx.after_commit(lambda: self._await_answers(batch, keys))
            return keys

        try:
            await self.runtime.transact(work)
        except Exception as exc:  # each caller gets the failure, as request() would raise it
            for item in batch:
                item.error = exc

    def _await_answers(self, batch: list[Pending], keys: list[bytes]) -> None:
        """Once a batch committed: a waiter for each entry whose caller is still there."""
        for item, key in zip(batch, keys, strict=True):
            if not item.abandoned:
                item.key = key
                self.runtime.replies.expect(key)

    # -- evidence logs ----------------------------------------------------------------------

    async def _send_evidence(self) -> None:
        """Send the evidence logs waiting in ``ch_requests`` whose process is ready, all that
        gathered meanwhile (up to ``MAX_BATCH`` and a frame) as one ``log_batch``, each entry's
        row keyed ``message id + index`` (a lone one as ``log``, keyed by its message id)."""
        failures = Failures("sending evidence to the clearing house")
        while True:
            while not self._evidence_waiting:
                await self._evidence_told.park()
            await trio.sleep(EVIDENCE_LINGER_S)
            self._evidence_waiting = False
            moving, self._move_due = self._move_due, False
            try:
                if moving:
                    await self.runtime.transact(self._move)
                while await self._send_evidence_batch():
                    pass
            except Exception as exc:  # a failed write: nothing was sent, so try again soon
                wait = failures.survive(exc)  # the database's: logged once, with a backoff
                if wait is None:  # else a bug: logged in full each time, as it always was
                    log.exception("sending evidence to the clearing house failed; retrying")
                await trio.sleep(wait or EVIDENCE_RETRY)
                self._evidence_waiting = True
                self._move_due = self._move_due or moving
            else:
                failures.recovered()

    async def _send_evidence_batch(self) -> bool:
        """The waiting evidence read at once (up to ``MERGE_WINDOW`` logs), as one ``log`` or
        ``log_batch`` after another; False when none waits. Logs of one tally's chits that
        follow each other go as one entry (``protocol.evidence_merge``), their rows as one
        row. Each log is read and unpacked once, however many batches its window makes
        (each batch used to read its own: a backlog after a house outage, ~4 batches a
        window, was unpacked ~4 times)."""
        room = self._room()

        def work(tx: Tx) -> bool:
            rows = store.ready_logs(tx.conn, MERGE_WINDOW)
            if not rows:
                return False
            house = rows[0]["ch"]
            rows = list(takewhile(lambda row: row["ch"] == house, rows))
            objs = [unpack(row["object"]) for row in rows]
            groups = merge.group(objs, room=room // 4)
            while groups:
                batch: list[list[int]] = []
                size = 0
                for members in groups:
                    size += sum(len(rows[index]["object"]) + BATCH_ITEM_OVERHEAD
                                for index in members)
                    if batch and (size > room or len(batch) == ch.MAX_BATCH):
                        break
                    batch.append(members)
                groups = groups[len(batch):]
                self._send_entries(tx, house, rows, objs, batch)
            return True

        return await self.runtime.transact(work)

    def _send_entries(self, tx: Tx, house: str, rows: list[Any], objs: list[dict[str, Any]],
                      batch: list[list[int]]) -> None:
        """Send the groups ``batch`` of the waiting logs ``objs`` (their ``rows``) to
        ``house`` as one ``log`` or ``log_batch``, and mark their rows sent."""
        entries = [merge.merged([objs[index] for index in members]) for members in batch]
        to = self._address(house)
        if len(batch) == 1:
            message_id = tx.send(Send(to, ch.TARGET, "log", entries[0]))
            keys = [message_id]
        else:
            message_id = tx.send(Send(to, ch.TARGET, "log_batch", {"entries": entries}))
            keys = [entry_key(message_id, index) for index in range(len(batch))]
        for members, entry, key in zip(batch, entries, keys, strict=True):
            seqs = [rows[index]["seq"] for index in members]
            if len(seqs) == 1:
                store.mark_sent(tx.conn, seqs[0], key)
            else:
                store.mark_merged_sent(tx.conn, seqs, key, entry["header"]["ref"],
                                       entry["payload_sha256"], pack(entry))
