"""The outbox pump: at-least-once delivery of everything the transactional outbox holds.

Messages arrive here only after the transaction that wrote them committed (``Tx.committed``)
or, at start-up, from the table itself. One sender task per peer dials on demand and writes
batches; each message then waits for its ack. An ack deletes the row; an error ack marks it
failed and tells the service; silence past the ack timeout (capped exponential backoff with
jitter) or a lost channel puts it back in the queue with ``try`` bumped. Only the timeouts
lengthen the next wait: a message resent because its channel was lost is no later for it, so
a burst of cut connections does not leave it waiting half a minute for an ack. A message to an
ephemeral target (``Service.ephemeral``) has no row: it is delivered the same way from memory.

Memory is bounded by peer, not by what waits: a peer's queue holds at most ``HOLD`` durable
messages (and ``WINDOW`` more in flight), and what it holds in all, ephemeral messages
included, comes to about ``HOLD_BYTES`` at most. Past either, new durable messages for it
stay in their rows (the peer is *spilled*) and its sender reads them back in commit order as
it sends, so a partner away for a day, or slower than our users, costs rows on disk, not
memory; a restart reads each peer's first ``HOLD`` rows, not the whole table. An ephemeral
message, which has no row, is not queued at all past ``HOLD_BYTES`` (or ``EPHEMERAL_QUEUE``).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import trio

from agentd.runtime.acked_rows import AckedRows
from agentd.runtime.outgoing import Outgoing, RoundTrip, ack_timeout, trace
from agentd.runtime.peers import PeerUnreachable
from agentd.runtime.stranger_replies import StrangerReplies
from agentd.runtime.timers import Failures, Ticker
from agentd.runtime.transport import Channel, ChannelClosed
from protocol.codec import unpack
from protocol.envelope import Ack
from protocol.expiry import EXPIRING_TARGETS, expires_at
from store import outbox

if TYPE_CHECKING:
    from agentd.runtime.node import Node

log = logging.getLogger("agentd.runtime.outbox")
SCAN_INTERVAL = 0.25  # the retry scan's shortest interval: a retry is at most this late...
SCAN_AT_MOST = 1.0  # ... or, while messages are live, this: expired ones leave within it
WINDOW = 1024  # unacked messages per peer: keeps ack latency, and so timeouts, meaningful
EPHEMERAL_QUEUE = 4096  # messages waiting for one peer past which an ephemeral one is not queued
SENDER_IDLE_S = 60.0  # a peer's sender ends after this long with nothing to send or await
HOLD = 1024  # durable messages waiting for one peer in memory; later ones wait in their rows
HOLD_BYTES = 8 << 20  # encoded bytes of one peer's messages in memory (and in flight)
ROW_SWEEP_S = 30.0  # how often spilled peers' rows are looked at for messages past their time


def _past(target: str, action: str, created_ms: int, now_ms: int) -> bool:
    """Whether a message of this kind made at ``created_ms`` is past its time."""
    expiry = expires_at(target, action, created_ms)
    return expiry is not None and expiry <= now_ms


class OutboxPump:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.live: dict[bytes, Outgoing] = {}
        self._queues: dict[str, deque[Outgoing]] = {}
        self._wake: dict[str, trio.Event] = {}
        self._inflight: dict[bytes, Outgoing] = {}
        self._unacked: dict[str, int] = {}
        self._window_open: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._early: list[Outgoing] = []
        self._spilled: dict[str, int] = {}  # peer -> the last seq in memory: later rows wait
        self._held: dict[str, int] = {}  # peer -> bytes of its messages in ``live``
        self._stranger_replies = StrangerReplies(self._drop_oldest_reply, self._queues,
                                                 self._held, HOLD_BYTES)
        self._rows_swept = 0.0  # when _expire_rows last looked (monotonic)
        self._reading = Failures("reading spilled outbox rows back to send them")
        self._reads_resume = 0.0  # after a failed read of them: not before (monotonic)
        self._counting = Failures(
            "reading the outbox depth (the rows of peers whose queue spilled to disk)",
            meanwhile="getinfo shows outbox_depth null and the metrics scrape leaves it out")
        self.round_trips: dict[str, RoundTrip] = {}
        self.round_trip = RoundTrip()  # all peers': the timeout of a peer not yet measured
        self._scanner = Ticker(SCAN_INTERVAL, self._scan, task="the outbox's retry scan")
        self._acked = AckedRows(lambda: node.db)

    @property
    def depth(self) -> int:
        """Messages waiting to be sent or acked: in memory, and the rows of spilled peers."""
        waiting = len(self.live)
        for peer, after in self._spilled.items():
            waiting += self.node.db.reading(
                lambda conn, peer=peer, after=after: outbox.count_pending_to(conn, peer, after))
        return waiting

    def depth_if_readable(self) -> int | None:
        """``depth``, or None while the database fails to count a spilled peer's rows: for
        getinfo and the metrics scrape, which must answer then (it is how the failure is
        seen), not stop the node. Logged once a streak; each failed read is in db_errors."""
        try:
            depth = self.depth
        except Exception as exc:
            if self._counting.survive(exc) is None:
                raise  # a bug
            return None
        self._counting.recovered()
        return depth

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # what the last run left undelivered stays in its rows: each sender reads its own
            for peer in await self.node.db.write(outbox.waiting_peers):
                self._spilled[peer] = 0
                if peer not in self._queues:  # else a message committed since has one
                    self._start_sender(peer)
            for item in self._early:
                self._enqueue(item)
            self._early.clear()
            nursery.start_soon(self._scanner.run)
            nursery.start_soon(self._acked.run)
            task_status.started()
            await trio.sleep_forever()

    # -- intake --------------------------------------------------------------------------

    def add(self, message_id: bytes, peer: str, address: str | None, envelope: dict,
            tries: int, created: int | None = None, *, durable: bool = True,
            prefix: bytes | None = None, seq: int | None = None, size: int = 0) -> None:
        """A message just committed (``seq``: its row's), or read back from its row (``size``:
        the row's bytes), for delivery."""
        if message_id in self.live:
            return  # its sender read its row first
        # a reply to a peer we do not know is held, never spilled to its row, where the bound
        # on a stranger's replies did not reach (4,000 answers of 256 KiB were 1 GB of rows)
        if seq is not None and not self._to_stranger(peer, envelope) and self._spill(peer, seq):
            return
        expires = expires_at(envelope.get("target", ""), envelope.get("action", ""),
                             self.node.clock.now_ms() if created is None else created)
        # a message a stopped node left unacked keeps its backoff: count its tries as timeouts
        item = Outgoing(message_id, peer, address, envelope, tries, tries, expires,
                        durable=durable, prefix=prefix,
                        size=len(prefix) if prefix is not None else size)
        self._hold(item)
        self._scanner.wake()
        if self._nursery is None:
            self._early.append(item)
        else:
            self._enqueue(item)

    def _spill(self, peer: str, seq: int) -> bool:
        """Whether the message of row ``seq`` stays in its row for now: its peer has ``HOLD``
        messages waiting in memory already (or ``HOLD_BYTES`` held), or rows waiting before
        it, which it must not overtake."""
        after = self._spilled.get(peer)
        if after is None:
            queue = self._queues.get(peer)
            if queue is None or (len(queue) < HOLD and self._held.get(peer, 0) < HOLD_BYTES):
                return False
            self._spilled[peer] = after = seq - 1
        if seq <= after:  # committed before the spill began: its place is in memory
            return False
        self._wake[peer].set()
        return True

    def _refill(self, peer: str, queue: deque[Outgoing]) -> None:
        """A spilled peer's next rows, read into its queue once it runs low. A read that finds
        fewer than it asked for ends the spill: it runs on the event loop, so every message
        committed before it is in its rows, and every one added after it is held."""
        after = self._spilled.get(peer)
        if after is None or len(queue) >= HOLD // 2 or self._held.get(peer, 0) >= HOLD_BYTES // 2:
            return
        if self.node.clock.monotonic() < self._reads_resume:
            return
        room = HOLD - len(queue)
        try:
            rows = self.node.db.reading(lambda conn: outbox.pending_to(conn, peer, after, room))
        except Exception as exc:
            wait = self._reading.survive(exc)
            if wait is None:
                raise  # a bug
            self._reads_resume = self.node.clock.monotonic() + wait  # the sender waits for it
            return
        self._reading.recovered()
        now, taken, expired = self.node.clock.now_ms(), 0, []
        for row in rows:
            if taken and self._held.get(peer, 0) >= HOLD_BYTES:
                break  # the rest wait for acks to make room (on_ack wakes the sender)
            taken += 1
            if row.id in self.live:
                continue
            if _past(row.target, row.action, row.created, now):
                expired.append(row.id)  # its time passed while it waited in its row
                continue
            self.add(row.id, row.peer, row.address, unpack(row.body), row.tries,
                     created=row.created, size=len(row.body))
        if taken == len(rows) < room:
            del self._spilled[peer]
        elif taken:
            self._spilled[peer] = rows[taken - 1].seq
        if expired:
            self.node.counters.outbox_expired += len(expired)
            self.node.db.submit(lambda conn: outbox.delete(conn, expired))

    async def _expire_rows(self) -> None:
        """Drop what spilled peers' rows hold past its time, without reading it back:
        ``_expire`` sees only the messages in memory, and a partner away for a day must not
        keep pings and relay queries waiting behind its chits. At most every ``ROW_SWEEP_S``;
        it reads only rows to targets that expire."""
        now = self.node.clock.monotonic()
        if not self._spilled or now < self._rows_swept + ROW_SWEEP_S:
            return
        self._rows_swept, spilled, now_ms = now, dict(self._spilled), self.node.clock.now_ms()
        gone = await self.node.db.write(lambda conn: sum(
            outbox.expire_after(conn, peer, after, EXPIRING_TARGETS,
                                lambda *kind: _past(*kind, now_ms))
            for peer, after in spilled.items()))
        if gone:
            self.node.counters.outbox_expired += gone
            log.info("outbox: %d %s expired undelivered in their rows", gone,
                     "message" if gone == 1 else "messages")

    def _hold(self, item: Outgoing) -> None:
        self.live[item.id] = item
        self._held[item.peer] = self._held.get(item.peer, 0) + item.size

    def _let_go(self, message_id: bytes) -> Outgoing | None:
        """Take a message out of ``live`` (acked, withdrawn, dropped or expired)."""
        item = self.live.pop(message_id, None)
        if item is not None:
            self._stranger_replies.discard(item)
            held = self._held[item.peer] - item.size
            if held:
                self._held[item.peer] = held
            else:
                del self._held[item.peer]
            if item.peer in self._spilled:  # room for its next rows
                self._wake[item.peer].set()
        return item

    def _start_sender(self, peer: str) -> deque[Outgoing]:
        queue = self._queues[peer] = deque()
        self._wake[peer] = trio.Event()
        assert self._nursery is not None
        self._nursery.start_soon(self._sender, peer)
        return queue

    def _enqueue(self, item: Outgoing) -> None:
        queue = self._queues.get(item.peer)
        if queue is None:
            queue = self._start_sender(item.peer)
        if not item.durable and (len(queue) >= EPHEMERAL_QUEUE
                                 or self._held.get(item.peer, 0) > HOLD_BYTES):
            # a peer this far behind will not take a route message in time to matter, and a
            # partner flooding searches through us must not make us hold its fan-out (a
            # route query with a long path of long host names is ~4 KB: 4,096 were 16 MB)
            self._let_go(item.id)
            self.node.counters.outbox_dropped += 1
            return
        queue.append(item)
        if self._to_stranger(item.peer, item.envelope):
            self._stranger_replies.add(item, queue)
        self._wake[item.peer].set()

    def _to_stranger(self, peer: str, envelope: dict) -> bool:
        """Whether ``envelope`` is a reply to a peer we do not know (``Outgoing.is_reply``)."""
        return envelope.get("re") is not None and not self.node.is_known(peer)

    def _drop_oldest_reply(self, queue: deque[Outgoing], newest: Outgoing) -> bool:
        """Drop the oldest reply waiting in ``queue`` but ``newest``, row included
        (``StrangerReplies``' bounds); False when there is none."""
        victim = next((i for i in queue if i.is_reply and i.id in self.live
                       and i is not newest), None)
        if victim is None:
            return False
        queue.remove(victim)
        self._let_go(victim.id)
        self.forget(victim)  # its row goes with the next batch of deletes
        self.node.counters.outbox_dropped += 1
        return True

    # -- acks ----------------------------------------------------------------------------

    def on_ack(self, ack: Ack, from_agent: str) -> Outgoing | None:
        """Settle a message; returns it, or None for a late or foreign ack. The caller then
        deletes its row (``forget``) or records the peer's refusal."""
        self.node.counters.acks_in += 1
        item = self.live.get(ack.ack)
        if item is None or item.peer != from_agent:
            return None  # a late duplicate ack, or an ack for a message we never sent it
        self._let_go(ack.ack)
        if self._inflight.pop(ack.ack, None) is not None:
            self._release(item.peer)
            if item.tries == 1:  # Karn: a resent message's ack could answer either send
                seconds = self.node.clock.monotonic() - item.sent
                self.round_trips.setdefault(item.peer, RoundTrip()).sample(seconds)
                self.round_trip.sample(seconds)
        if ack.error is None:  # a refusal: the dispatcher logs it once it is recorded
            trace("message acked", item, by=from_agent)
        return item

    def unsettle(self, item: Outgoing) -> None:
        """An ack ``on_ack`` took whose row and service we could not update (our database
        failed): the message is live again, as if the ack had been lost, and is sent again
        once its ack timeout passes (a backoff, growing while it keeps failing); the
        recipient acks the duplicate, or decides again on a message it refused."""
        if item.id in self.live:
            return
        self._hold(item)
        trip = self.round_trips.get(item.peer) or self.round_trip
        item.due = self.node.clock.monotonic() + ack_timeout(item.timeouts + 1, trip.rto)
        self._unacked[item.peer] = self._unacked.get(item.peer, 0) + 1
        self._inflight[item.id] = item
        self._scanner.wake()

    def forget(self, item: Outgoing) -> None:
        """Delete an acked message's row with the next batch of deletes."""
        if item.durable:
            self._acked.add(item.id)

    def withdraw(self, message_id: bytes) -> None:
        """Stop delivering a message whose row the caller has marked failed or deleted. It
        leaves its peer's queue too: a sender whose queue holds only withdrawn messages
        dialled their address for as long as they stayed there (a made-up referee's, after
        its lift was decided), and dials no one once it is empty."""
        peer = self._withdraw(message_id)
        if peer is not None:
            self._drop_from_queue(peer)

    def _withdraw(self, message_id: bytes) -> str | None:
        """``withdraw`` but for its peer's queue; returns that peer (None: not live)."""
        let_go = self._let_go(message_id)
        item = self._inflight.pop(message_id, None)
        if item is not None:
            self._release(item.peer)
        return None if let_go is None else let_go.peer

    def _drop_from_queue(self, peer: str) -> None:
        """Take the messages no longer live out of ``peer``'s queue."""
        queue = self._queues.get(peer)
        if queue is not None:
            kept = [item for item in queue if item.id in self.live]
            if len(kept) != len(queue):
                queue.clear()
                queue.extend(kept)

    def _release(self, peer: str) -> None:
        self._unacked[peer] -= 1
        event = self._window_open.get(peer)
        if event is not None:
            event.set()

    def on_channel_closed(self, channel: Channel) -> None:
        """Everything sent on a lost channel and not yet acked goes back in its queue, its
        backoff as it was (the peer did not fail to ack it: the channel went)."""
        lost = [item for item in self._inflight.values() if item.channel is channel]
        for item in lost:
            del self._inflight[item.id]
            self._release(item.peer)
            self._enqueue(item)

    # -- sending -------------------------------------------------------------------------

    async def _sender(self, peer: str) -> None:
        """Send ``peer``'s queue, dialling as needed, until it has been idle ``SENDER_IDLE_S``
        with nothing unacked: then its task and state go (``_retire``), so every stranger we
        ever answered does not keep a task; the next message for it starts another."""
        queue = self._queues[peer]
        while True:
            while not queue:
                self._refill(peer, queue)
                if queue:
                    break
                self._wake[peer] = trio.Event()
                idle, deferred = SENDER_IDLE_S, self._reads_resume - self.node.clock.monotonic()
                if peer in self._spilled and deferred > 0:  # its rows' read failed: try again
                    idle = min(idle, deferred)
                with trio.move_on_after(idle):
                    await self._wake[peer].wait()
                if not queue and not self._unacked.get(peer) and peer not in self._spilled:
                    self._retire(peer)
                    return
            if peer == self.node.agent_id:
                await self._deliver_locally(queue)
                continue
            # a message we started may dial the address it names (a ticket's, a cert's, a
            # user's), the newest such: a user who corrects a mistyped address is not held to
            # the old one while a message naming it waits; a reply only an address we know:
            # never one a stranger claims. A peer the config names is dialled where the
            # config says: a fix of its address (peers.add, reload) also takes the messages
            # queued before it, which name the old one
            address = self.node.address_of(peer) if self.node.peer_source(peer) == "config" \
                else None
            address = address or next((i.address for i in reversed(queue) if i.address
                                       and not i.is_reply), None) or self.node.address_of(peer)
            try:
                channel = await self.node.peers.connect(peer, address)
            except PeerUnreachable:
                if address is None:  # a stranger's reply waits for its channel (or expiry)
                    self.node.counters.no_route += 1
                await trio.sleep(0.5)  # the dial's failure is logged where it was made
                continue
            await self._send_queue(channel, queue)

    def _retire(self, peer: str) -> None:
        del self._queues[peer], self._wake[peer]
        self._unacked.pop(peer, None)
        self._window_open.pop(peer, None)
        if not self.node.is_known(peer):  # a known peer's round trip is worth remembering
            self.round_trips.pop(peer, None)

    async def _send_queue(self, channel: Channel, queue: deque[Outgoing]) -> None:
        peer = channel.agent
        while queue:
            while self._unacked.get(peer, 0) >= WINDOW:
                self._window_open[peer] = trio.Event()
                await self._window_open[peer].wait()
                if not channel.alive:
                    return
            if not queue:
                return
            item = queue.popleft()
            self._refill(peer, queue)
            if item.id not in self.live:
                continue
            item.tries += 1
            item.channel = channel
            item.sent = self.node.clock.monotonic()
            trip = self.round_trips.get(peer) or self.round_trip
            item.due = item.sent + ack_timeout(item.timeouts + 1, trip.rto)
            self._unacked[peer] = self._unacked.get(peer, 0) + 1
            self._inflight[item.id] = item
            try:
                await channel.send_frame(item.attempt(self.node.clock.now_ms()))
            except ChannelClosed:
                if self._inflight.pop(item.id, None) is not None:
                    self._release(peer)
                queue.appendleft(item)
                return
            trace("message sent", item, to=peer, attempt=item.tries)

    async def _deliver_locally(self, queue: deque[Outgoing]) -> None:
        """Messages between two users of this node take the same path minus the socket."""
        while queue:
            item = queue.popleft()
            self._refill(self.node.agent_id, queue)
            if item.id not in self.live:
                continue
            item.tries += 1
            trace("message sent", item, to=self.node.agent_id, attempt=item.tries)
            ack_body = await self.node.dispatcher.process_local(
                item.attempt(self.node.clock.now_ms()))
            if ack_body is None:  # not committed (disk full?): try again a little later
                queue.appendleft(item)
                await trio.sleep(ack_timeout(item.tries))
                continue
            await self.node.dispatcher.on_ack_frame(ack_body, self.node.agent_id)

    def _expire(self) -> None:
        """Drop the messages no longer worth delivering, rows included."""
        now = self.node.clock.now_ms()
        expired = [item for item in self.live.values()
                   if item.expires is not None and item.expires <= now]
        if not expired:
            return
        for item in expired:
            self._withdraw(item.id)
        for peer in {item.peer for item in expired}:
            self._drop_from_queue(peer)
        self.node.counters.outbox_expired += len(expired)
        ids = [item.id for item in expired if item.durable]
        if ids:
            self.node.db.submit(lambda conn: outbox.delete(conn, ids))
        log.info("outbox: %d %s expired undelivered", len(expired),
                 "message" if len(expired) == 1 else "messages")

    async def _scan(self) -> bool | float:
        """Put back in their queues the messages whose ack is overdue, drop the expired; the
        seconds until the next ack falls due (at most ``SCAN_AT_MOST``), or False when no
        message is live (then the scan sleeps until one is added): a node with nothing to
        deliver has no timer, and a busy one scans about once a second, not four times."""
        self._expire()
        now = self.node.clock.monotonic()
        overdue = [item for item in self._inflight.values() if item.due <= now]
        for item in overdue:
            del self._inflight[item.id]
            item.timeouts += 1
            self._release(item.peer)
            self._enqueue(item)
        tries = [(item.tries, item.id) for item in overdue if item.durable]
        if tries:
            self.node.db.submit(lambda conn, tries=tries: outbox.record_tries(conn, tries))
        await self._expire_rows()  # last: a failing database does not hold back the resends
        if not self.live:
            return False
        due = min((item.due for item in self._inflight.values()), default=now + SCAN_AT_MOST)
        return min(max(due - now, 0.0), SCAN_AT_MOST)
