"""Incoming frames: validate, deduplicate, hand to the service by ``target``, ack after commit.

For each envelope the dispatcher queues one database job — record the id in the inbox, then
let the service apply its guarded transition and queue its replies — without waiting for it,
so many messages share one group commit. The channel sends the acks in arrival order once
each job has committed. A duplicate is acked and ignored; a refusal is an error ack, counted
(by code) and logged once per message however often it is sent (``RefusedIds``), a routine
one logged once per ``QUIET_S`` for what it is about (``RoutineReject``), as is a peer's
refusal of our messages about one thing (``Service.refusal_key``); a failure of ours
(disk full, a bug), or a message that depends on one not here yet (``NotYet``), gets no ack
at all, so the sender retries. A stranger's frame waits first, as
bytes, for its allowance (``WriteRation``) and then for its share of what strangers' frames
may hold decoded at once (``DecodeBudget``, given back once its job has run), its channel
reading nothing meanwhile: an ephemeral one too, which writes nothing but costs as much to
handle (a route ask reads the tallies). What waits in the pipeline for its commit keeps
only the message's id and names (``_Heard``), not its object.

An ephemeral service's messages (``Service.ephemeral``) skip the inbox and the commit: the
service handles them at once on the read connection and deduplicates them itself.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import trio

from agentd.logs import event, traced
from agentd.runtime.context import NotYet, Reject, RoutineReject, Service, Tx
from agentd.runtime.limits import MAX_WAIT, MESSAGE_COST, DecodeBudget
from agentd.runtime.refusals import QuietLog, RefusedIds, ack_error
from agentd.runtime.timers import Failures
from agentd.runtime.transport import Channel, ChannelClosed
from protocol.codec import CodecError
from protocol.envelope import Ack, Envelope, EnvelopeError, ack_frame, parse_frame
from protocol.errors import Refusal
from store import DatabaseError, inbox, outbox

if TYPE_CHECKING:
    from agentd.runtime.node import Node
    from agentd.runtime.outgoing import Outgoing
    from store.db import PendingWrite

log = logging.getLogger("agentd.runtime.dispatch")
_DUPLICATE = object()


class _Heard(NamedTuple):
    """What concluding a message needs of it: not its object, which a stranger's frame can
    make huge, and which its job has done with by then."""

    id: bytes
    target: str
    action: str
    sender: str

    @classmethod
    def of(cls, envelope: Envelope) -> _Heard:
        return cls(envelope.id, envelope.target, envelope.action, envelope.from_.agent)

    @property
    def kind(self) -> str:
        return f"{self.target}/{self.action}"

    @property
    def traced_id(self) -> str:
        return traced(self.id)


class _Share:
    """A stranger's frame's share of the decoding budget, given back once: when its job has
    run (from the writer thread), or when it is handled without one."""

    __slots__ = ("budget", "handed", "size")

    def __init__(self, budget: DecodeBudget, size: int) -> None:
        self.budget, self.size, self.handed = budget, size, False

    def release(self) -> None:
        if self.size:
            self.budget.release(self.size)
            self.size = 0


class _Done:
    """The outcome of handling an ephemeral message: known at once, nothing to commit."""

    __slots__ = ("error", "result")

    def __init__(self, handle: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: Exception | None = None
        try:
            self.result = handle()
        except Exception as exc:  # raised to _finish, like a failed job's
            self.error = exc

    async def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class Dispatcher:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.services: dict[str, Service] = {}
        self.ephemeral: set[str] = set()  # targets whose messages are never written
        self._recording = Failures("recording peers' acks of our messages (each is sent "
                                   "again after its ack timeout, and its duplicate acked)")
        self._refused = RefusedIds()
        self._quiet = QuietLog()
        self._quiet_peers = QuietLog(counted="counters.peer_refusals")  # peers' refusals

    def register(self, service: Service) -> None:
        self.services[service.target] = service
        if service.ephemeral:
            self.ephemeral.add(service.target)

    # -- frames from a channel -----------------------------------------------------------

    async def on_frame(self, channel: Channel, body: bytes) -> None:
        """Handle one frame; raises ChannelClosed when the peer broke the protocol."""
        if self.node.is_known(channel.agent):
            await self._on_frame(channel, body, None)
            return
        await self._ration(channel.agent, len(body))
        with trio.move_on_after(MAX_WAIT) as waiting:
            size = await self.node.decoding.acquire(len(body))
        if waiting.cancelled_caught:
            raise ChannelClosed("decode_budget", f"strangers' frames would wait more than "
                                f"{MAX_WAIT:g} s to be read")
        share = _Share(self.node.decoding, size)
        try:
            await self._on_frame(channel, body, share)
        finally:
            if not share.handed:
                share.release()

    async def _on_frame(self, channel: Channel, body: bytes, share: _Share | None) -> None:
        try:
            message = parse_frame(body)
        except CodecError as exc:
            raise ChannelClosed("malformed_frame", str(exc)) from exc
        except EnvelopeError as exc:
            if exc.message_id is None:
                raise ChannelClosed("bad_envelope", str(exc)) from exc
            first = self._first_refusal(exc.message_id, channel.agent, "bad_envelope")
            log.log(logging.WARNING if first else logging.DEBUG,
                    "rejected message from %s: %s", channel.agent[:8], exc)
            await channel.send_frame(ack_frame(exc.message_id, "BAD_ENVELOPE", str(exc)))
            return
        if isinstance(message, Ack):
            await self._settle(message, channel.agent)
            return
        refusal = self._check_addressing(message, channel.agent)
        if refusal is not None:
            first = self._first_refusal(message.id, channel.agent, refusal.code.lower())
            key = self._quiet_key(refusal, channel.agent) if first else None
            note = "" if key is None else self._quiet.note(refusal.code, key)
            log.log(logging.WARNING if first and note is not None else logging.DEBUG,
                    "rejected message from %s: %s%s", channel.agent[:8], refusal, note or "")
            await channel.send_frame(ack_frame(message.id, refusal.code, refusal.message))
            return
        started = time.perf_counter()
        self.node.clocks.sample(channel.agent, message.last, self.node.clock.now_ms(),
                                known=self.node.is_known(channel.agent))
        pending = self._start(message, channel.agent, share)
        heard = _Heard.of(message)
        del message  # the pipeline keeps what concluding needs, not the object
        if isinstance(pending, _Done) and channel.replies_idle:
            # an ephemeral message's outcome is known already and no earlier ack waits to
            # go before its own: answer now, not on the reply task's next turn
            body = self._conclude(heard, pending.result, pending.error, started)
            if body is not None:
                await channel.send_frame(body)
            return
        await channel.defer(lambda: self._finish(heard, pending, started))

    async def _ration(self, agent: str, size: int) -> None:
        """Wait for a stranger's write allowance (``WriteRation``) before its message is
        processed; ChannelClosed when the wait would be too long."""
        wait = self.node.ration.charge(agent, size + MESSAGE_COST, trio.current_time())
        if wait is None:  # unacked: the sender sends it again, on a new channel, later
            raise ChannelClosed("write_ration", f"strangers' messages would wait more than "
                                f"{MAX_WAIT:g} s for their write allowance")
        if wait > 0:
            self.node.counters.rationed += 1
            await trio.sleep(wait)

    def _debit(self, stranger: str, tx: Tx) -> None:
        """A stranger's message paid for its frame before it ran; what it made us write beyond
        that is booked against its allowance now, so that its next messages wait for it: the
        messages it made us send to anyone but itself (a referee's decision to every node on a
        lift's path: one cancel of a record naming 31 nodes we know made 32 times its bytes)
        and what its service charged (``Tx.charge``)."""
        cost = tx.cost + sum(len(item.prefix or b"") + MESSAGE_COST for item in tx.sent
                             if item.peer != stranger)
        if cost:
            self.node.ration.debit(stranger, cost, trio.current_time())

    async def on_ack_frame(self, body: bytes, from_agent: str) -> None:
        message = parse_frame(body)
        assert isinstance(message, Ack)
        await self._settle(message, from_agent)

    async def process_local(self, body: bytes) -> bytes | None:
        """Process a message from this node to itself; returns the ack frame body, or None
        when it could not be committed (it is then retried)."""
        message = parse_frame(body)
        assert isinstance(message, Envelope)
        return await self._finish(_Heard.of(message), self._start(message, self.node.agent_id))

    # -- the pipeline --------------------------------------------------------------------

    def _check_addressing(self, envelope: Envelope, agent: str) -> Reject | None:
        if envelope.from_.agent != agent:
            return Reject("FROM_MISMATCH", "from.agent is not the channel's authenticated agent")
        if envelope.to.agent != self.node.agent_id:
            return Reject("WRONG_RECIPIENT", "to.agent is not this node")
        service = self.services.get(envelope.target)
        if service is None:
            return Reject("UNKNOWN_TARGET", f"this node does not serve {envelope.target!r}")
        if service.actions is not None and envelope.action not in service.actions:
            return Reject("UNKNOWN_ACTION", f"{envelope.target} has no action "
                          f"{envelope.action!r} (it takes {', '.join(sorted(service.actions))})")
        return None

    def _start(self, envelope: Envelope, agent: str,
               share: _Share | None = None) -> PendingWrite | _Done:
        """Handle an ephemeral message now, or queue the job of a durable one, which gives
        back a stranger's ``share`` of the decoding budget once it has run."""
        service = self.services[envelope.target]
        node = self.node
        received = node.clock.now_ms()
        if service.ephemeral:
            def handle() -> Tx:
                tx = node.db.reading(lambda conn: node.new_tx(conn, received))
                service.handle(tx, envelope)
                return tx

            return _Done(handle)

        def job(conn):
            try:
                if not inbox.claim(conn, envelope.id, agent, received):
                    return _DUPLICATE
                tx = node.new_tx(conn, received)
                service.handle(tx, envelope)
                node.inbox_bound.added(conn, agent)  # taken: a refusal undoes its row
                return tx
            finally:
                if share is not None:
                    with contextlib.suppress(trio.RunFinishedError):
                        token.run_sync_soon(share.release)

        if share is not None:
            token, share.handed = trio.lowlevel.current_trio_token(), True
        return node.db.start(job, owner=agent)  # its share of a batch: OWNER_SLICE

    async def _finish(self, heard: _Heard, pending: PendingWrite | _Done,
                      started: float | None = None) -> bytes | None:
        """The ack (or error ack) to send for a message once its job is done, or None when
        it must stay unacked."""
        try:
            outcome = await pending.outcome()
        except Exception as exc:  # the job's, told apart by _conclude
            return self._conclude(heard, None, exc, started)
        return self._conclude(heard, outcome, None, started)

    def _conclude(self, heard: _Heard, outcome: Any, error: Exception | None,
                  started: float | None) -> bytes | None:
        """What a message's outcome (or ``error``) calls for: its ack, an error ack, or None
        (left unacked). The messages a commit caused go to the pump, whose tasks send them
        after the caller has queued this ack: a peer hears its message was taken first."""
        counters = self.node.counters
        if isinstance(error, NotYet):  # before ``Refusal``: nothing wrong, just early
            counters.deferred += 1
            log.debug("deferred %s from %s (id %s): %s", heard.kind, heard.sender[:8],
                      heard.traced_id, error)
            return None
        if isinstance(error, Refusal):
            return self._refuse(heard, error)
        if error is not None:  # our failure (disk full, a bug), not the message's: no ack
            counters.unacked_failures += 1
            if isinstance(error, DatabaseError | sqlite3.Error):
                log.error("could not commit %s from %s (id %s), left unacked for a retry: %s",
                          heard.kind, heard.sender[:8], heard.traced_id, error)
            else:
                log.error("failed to process %s from %s (id %s), left unacked for a retry",
                          heard.kind, heard.sender[:8], heard.traced_id, exc_info=error)
            return None
        ack = ack_frame(heard.id)
        if outcome is _DUPLICATE:
            counters.duplicates += 1
            if log.isEnabledFor(logging.DEBUG):
                event(log, "message taken again", logging.DEBUG, message=heard.kind,
                      id=heard.traced_id, peer=heard.sender)
            return ack
        counters.messages_processed += 1
        if log.isEnabledFor(logging.DEBUG):
            event(log, "message taken", logging.DEBUG, message=heard.kind,
                  id=heard.traced_id, peer=heard.sender, sent_on=len(outcome.sent))
        outcome.committed()
        if heard.sender != self.node.agent_id and not self.node.is_known(heard.sender):
            self._debit(heard.sender, outcome)
        if started is not None:
            self.node.metrics.message_seconds.labels(heard.target).observe(
                time.perf_counter() - started)
        return ack

    def _refuse(self, heard: _Heard, refusal: Refusal) -> bytes:
        """The error ack of a message a service refused, counted and logged (once)."""
        code, text = ack_error(refusal)
        level, note = logging.DEBUG, " (refused before: not counted again)"
        if self._first_refusal(heard.id, heard.sender, "refused"):
            self.node.counters.refusals[code] += 1
            quiet = self._quiet.note(code, self._quiet_key(refusal, heard.sender))
            level, note = (logging.DEBUG, "") if quiet is None else (logging.INFO, quiet)
        log.log(level, "refused %s from %s (id %s): %s: %s%s", heard.kind, heard.sender[:8],
                heard.traced_id, code, text, note)
        return ack_frame(heard.id, code, text)

    def _quiet_key(self, refusal: Refusal, sender: str) -> str:
        """What a refusal is logged once a while under (``QuietLog``): a routine one's key,
        any of a stranger's together (a fresh id each costs it nothing: a line each filled
        the log at ~1,200 lines/s, and journald's rate limit then drops ours), and a known
        peer's by the peer (a partner sending a made-up action a time filled it at 10,800
        lines/s)."""
        if isinstance(refusal, RoutineReject):
            return refusal.key
        return f"from {sender[:8]}" if self.node.is_known(sender) else "from strangers"

    def _first_refusal(self, message_id: bytes, sender: str, reason: str) -> bool:
        """Count the refusal of a message under ``rejected[reason]`` the first time; one
        refused before (sent again) counts as a duplicate. True the first time."""
        if self._refused.first(message_id, sender):
            self.node.counters.reject(reason)
            return True
        self.node.counters.duplicates += 1
        return False

    async def _settle(self, ack: Ack, from_agent: str) -> None:
        node = self.node
        item = node.pump.on_ack(ack, from_agent)
        if item is None:
            return
        envelope = item.envelope
        service = self.services.get(envelope.get("target", ""))
        if ack.error is None and (service is None or not service.wants_delivery(envelope)):
            node.pump.forget(item)
            return
        try:
            tx = await self._record(item, service, ack)
        except Exception as exc:
            if self._recording.survive(exc) is None:
                raise  # a bug: it costs this channel, as any bug handling a peer's traffic
            node.pump.unsettle(item)  # our failure, not the peer's: as if the ack were lost
            return
        self._recording.recovered()
        if ack.error is not None:  # counted and logged as recorded: once, however many
            code, text = ack.error.get("code", "?"), ack.error.get("message", "")
            node.counters.peer_refused(code)  # sends it took to record (unsettle)
            routine = service is not None and (envelope.get("action"), code) in (
                service.routine_refusals)
            level, note = logging.INFO if routine else logging.WARNING, ""
            key = None if service is None else service.refusal_key(envelope)
            if key is not None:
                quiet = self._quiet_peers.note(code, key)
                level, note = (logging.DEBUG, "") if quiet is None else (level, quiet)
            subject = None if service is None else service.subject(envelope)
            about = "" if subject is None else f", {subject}"
            log.log(level, "%s refused %s/%s (id %s%s): %s: %s%s", from_agent[:8],
                    envelope.get("target"), envelope.get("action"),
                    item.traced_id, about, code, text, note)
        tx.committed()

    async def _record(self, item: Outgoing, service: Service | None, ack: Ack) -> Tx:
        """Delete (or mark refused) the acked message's row and tell its service, in one
        transaction; a message without a row: its service hears of it on the read
        connection. The caller runs the transaction's after-commit work."""
        node = self.node
        if not item.durable:
            tx = node.db.reading(node.new_tx)
            self._tell(service, tx, item, ack)
            return tx

        def job(conn):
            if ack.error is None:
                outbox.delete(conn, [item.id])
            else:
                error = ack.error
                outbox.mark_failed(conn, item.id,
                                   f"{error.get('code', '?')}: {error.get('message', '')}")
            tx = node.new_tx(conn)
            self._tell(service, tx, item, ack)
            return tx

        return await node.db.write(job)

    @staticmethod
    def _tell(service: Service | None, tx: Tx, item: Outgoing, ack: Ack) -> None:
        """The sending service learns that its message was committed, or refused."""
        if service is None:
            return
        if ack.error is None:
            service.on_delivered(tx, item.envelope)
        else:
            service.on_rejected(tx, item.envelope, ack.error.get("code", "?"),
                                ack.error.get("message", ""))


__all__ = ["Dispatcher"]
