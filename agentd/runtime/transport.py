"""Noise channels over TCP: the IK handshake with hello maps, then framed msgpack.

A :class:`Channel` is one authenticated connection. It owns a send task that coalesces
queued frames into few large writes (throughput comes from fewer syscalls and Noise
messages, not from the cipher) and a receive loop that hands each frame body to the node.
Every failure of the peer's making raises :class:`ChannelClosed` with a counter reason; it
costs that one connection, never the node.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from agentd.runtime.limits import FrameBudget
from agentd.runtime.links import Links
from protocol.codec import CodecError, pack, unpack
from protocol.frames import FrameDecoder, FrameError, FrameRefused, encode_frame
from protocol.keys import (
    IdentityError,
    SigningKey,
    agent_id_to_public,
    ed25519_public_to_x25519,
    is_agent_id,
)
from protocol.noise import HandshakeReader, NoiseFailure, NoiseSession, Role

log = logging.getLogger("agentd.runtime.transport")
RECEIVE_SIZE = 256 * 1024
SEND_QUEUE = 4096
PIPELINE = 2048
MAX_HANDSHAKE_MESSAGE = 4096


class ChannelClosed(Exception):
    """The connection ended; ``reason`` is the counter key, ``detail`` says what happened."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Hello:
    agent: str
    listen: str | None
    roles: tuple[str, ...]

    def encode(self) -> bytes:
        return pack({"v": 1, "agent": self.agent, "listen": self.listen, "roles": list(self.roles)})

    @classmethod
    def decode(cls, payload: bytes) -> Hello:
        try:
            value = unpack(payload, max_size=MAX_HANDSHAKE_MESSAGE)
        except CodecError as exc:
            raise ChannelClosed("bad_hello", str(exc)) from exc
        if not isinstance(value, dict) or value.get("v") != 1:
            raise ChannelClosed("bad_hello", "hello is not a v1 map")
        agent, listen, roles = value.get("agent"), value.get("listen"), value.get("roles", [])
        if not is_agent_id(agent):
            raise ChannelClosed("bad_hello", "hello.agent is not an agent id")
        if listen is not None and not isinstance(listen, str):
            raise ChannelClosed("bad_hello", "hello.listen is not text")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ChannelClosed("bad_hello", "hello.roles is not a list of text")
        return cls(agent, listen, tuple(roles))


async def _read_handshake_message(stream: trio.abc.Stream, reader: HandshakeReader) -> bytes:
    while True:
        data = await stream.receive_some(MAX_HANDSHAKE_MESSAGE)
        if not data:
            raise ChannelClosed("handshake_eof", "peer closed during the handshake")
        message, rest = reader.feed(data)
        if message is not None:
            if rest:
                raise ChannelClosed("handshake_garbage", "unexpected bytes after handshake")
            return message
        if reader.declared_length > MAX_HANDSHAKE_MESSAGE:
            raise ChannelClosed(
                "handshake_garbage",
                f"handshake message of {reader.declared_length} bytes is too large",
            )


async def initiate(
    stream: trio.SocketStream, key: SigningKey, remote_agent: str, hello: Hello, timeout: float
) -> tuple[NoiseSession, Hello]:
    """Run the initiator side of the IK handshake; returns the session and the peer's hello."""
    try:
        remote_static = ed25519_public_to_x25519(agent_id_to_public(remote_agent))
    except IdentityError as exc:
        raise ChannelClosed("bad_agent", str(exc)) from exc
    session = NoiseSession(Role.INITIATOR, key.x25519_private(), remote_static)
    with trio.move_on_after(timeout) as scope:
        try:
            await stream.send_all(session.write_handshake(hello.encode()))
            message = await _read_handshake_message(stream, HandshakeReader())
            remote_hello = Hello.decode(session.read_handshake(message))
        except NoiseFailure as exc:
            raise ChannelClosed("handshake_failed", str(exc)) from exc
        except trio.BrokenResourceError as exc:
            raise ChannelClosed("handshake_eof", str(exc)) from exc
    if scope.cancelled_caught:
        raise ChannelClosed("handshake_timeout", f"no answer within {timeout:g} s")
    if remote_hello.agent != remote_agent:
        raise ChannelClosed("hello_mismatch", "responder's hello names another agent")
    return session, remote_hello


async def respond(
    stream: trio.SocketStream, key: SigningKey, hello: Hello, timeout: float,
    on_first_message: Callable[[], None] | None = None,
) -> tuple[NoiseSession, Hello]:
    """Run the responder side; checks the Noise static key is the hello agent's key.
    ``on_first_message`` is called once the initiator's message has arrived. No Noise work
    is done before that message: a socket that never speaks costs no key operations."""
    with trio.move_on_after(timeout) as scope:
        try:
            message = await _read_handshake_message(stream, HandshakeReader())
            if on_first_message is not None:
                on_first_message()
            session = NoiseSession(Role.RESPONDER, key.x25519_private())
            remote_hello = Hello.decode(session.read_handshake(message))
            expected = ed25519_public_to_x25519(agent_id_to_public(remote_hello.agent))
            if session.remote_static != expected:
                raise ChannelClosed("hello_mismatch", "Noise static key is not the hello agent's")
            await stream.send_all(session.write_handshake(hello.encode()))
        except NoiseFailure as exc:
            raise ChannelClosed("handshake_failed", str(exc)) from exc
        except IdentityError as exc:
            raise ChannelClosed("bad_hello", str(exc)) from exc
        except trio.BrokenResourceError as exc:
            raise ChannelClosed("handshake_eof", str(exc)) from exc
    if scope.cancelled_caught:
        raise ChannelClosed("handshake_timeout", f"no handshake within {timeout:g} s")
    return session, remote_hello


FrameHandler = Callable[["Channel", bytes], Awaitable[None]]
Deferred = Callable[[], Awaitable[bytes | None]]


class Channel:
    """An established, authenticated connection to one peer."""

    def __init__(
        self,
        stream: trio.SocketStream,
        session: NoiseSession,
        hello: Hello,
        *,
        outbound: bool,
        max_frame: int,
        counters,
        now: Callable[[], float] = trio.current_time,
        frame_timeout: float | None = None,
        budget: FrameBudget | None = None,
        pipeline: int = PIPELINE,
        links: Links | None = None,
    ) -> None:
        """``pipeline``: messages of this peer being processed at once; past it the channel
        stops reading (a stranger gets a small one, so it cannot crowd the writer thread).
        ``links``: simulated link faults (``agentd sim`` only; see agentd.runtime.links)."""
        self.stream = stream
        self.session = session
        self.pipeline = pipeline
        self.agent = hello.agent
        self.hello = hello
        self.outbound = outbound
        self.counters = counters
        self._budget = budget
        self._decoder = FrameDecoder(max_frame, admit=self._admit_frame if budget else None)
        self._send, self._queue = trio.open_memory_channel[bytes](SEND_QUEUE)
        self._defer_send, self._deferred = trio.open_memory_channel[Deferred](pipeline)
        self._replies = 0  # deferred replies not yet sent (replies_idle)
        self._now = now
        self.last_activity = now()
        self.closed = trio.Event()
        self.close_reason: str | None = None
        self._cancel = trio.CancelScope()
        self.frame_timeout = frame_timeout
        self.address: str | None = None  # the remote host of an inbound channel
        self.opened = now()
        self._frame_started: float | None = None  # when the unfinished frame began
        self._frame_begun = trio.Event()  # set when a frame starts: wakes the frame watch
        self._line = links.line(self.agent) if links is not None else None

    @property
    def alive(self) -> bool:
        return self.close_reason is None and not self.closed.is_set()

    async def send_frame(self, body: bytes) -> None:
        """Queue one frame body; waits only when the send queue is full (backpressure).

        Not yielding when there is room is deliberate: a burst of frames queued without a
        checkpoint is picked up by the send loop as one batch — one Noise message, one
        syscall — instead of one each.
        """
        if self._line is not None:
            try:
                if await self._line.hold(body):
                    return  # dropped or delayed by a simulated link fault
            except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
                raise ChannelClosed("closed", "channel is closed") from exc
        await self._queue_frame(body)

    async def _queue_frame(self, body: bytes) -> None:
        try:
            self._send.send_nowait(body)
        except trio.WouldBlock:
            try:
                await self._send.send(body)
            except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
                raise ChannelClosed("closed", "channel is closed") from exc
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise ChannelClosed("closed", "channel is closed") from exc

    async def _release(self, body: bytes) -> None:
        """Send a frame the link held; one for a channel that closed meanwhile is lost (as a
        queued one is; the outbox sends it again)."""
        with contextlib.suppress(ChannelClosed):
            await self._queue_frame(body)

    async def defer(self, reply: Deferred) -> None:
        """Queue ``reply`` (an async callable giving a frame body or None) to be awaited
        and sent in arrival order. This lets the receive loop keep reading while earlier
        messages are still committing; a full pipeline makes it wait (backpressure)."""
        self._replies += 1
        try:
            await self._defer_send.send(reply)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise ChannelClosed("closed", "channel is closed") from exc

    @property
    def replies_idle(self) -> bool:
        """Whether no deferred reply waits to be sent: one known now may go at once."""
        return self._replies == 0

    async def _reply_loop(self) -> None:
        async for reply in self._deferred:
            while True:
                body = await reply()  # no checkpoint when its commit is already done
                if body is not None:
                    try:
                        await self.send_frame(body)
                    except ChannelClosed:
                        return
                self._replies -= 1
                try:
                    reply = self._deferred.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break

    def close(self, reason: str = "closed") -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self._cancel.cancel()

    async def run(self, on_frame: FrameHandler, idle_timeout: float | None) -> None:
        """Pump both directions until the peer leaves, a fault occurs or ``close`` is called.

        Raises ChannelClosed for faults of the peer's making; returns on orderly closes.
        """
        fault: ChannelClosed | None = None
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_loop)
                    nursery.start_soon(self._reply_loop)
                    if self._line is not None:
                        nursery.start_soon(self._line.run, self._release)
                    if idle_timeout is not None:
                        nursery.start_soon(self._idle_watch, idle_timeout)
                    if self.frame_timeout is not None:
                        nursery.start_soon(self._frame_watch, self.frame_timeout)
                    try:
                        await self._receive_loop(on_frame)
                    except ChannelClosed as exc:
                        # A new exception, without the traceback that holds the receive
                        # loop's buffers: the one raised below is kept alive by a cycle
                        # until the garbage collector runs, so it must hold nothing big.
                        fault = ChannelClosed(exc.reason, exc.detail)
                    nursery.cancel_scope.cancel()
        finally:
            self.close_reason = self.close_reason or "closed"
            if self._budget is not None:
                self._budget.update(id(self), 0)
            self._decoder.discard()  # the buffers go now, not when a cycle is collected
            self.session.close()
            self._send.close()
            self._defer_send.close()
            self.closed.set()
            with trio.CancelScope(shield=True):
                await self.stream.aclose()
        if fault is not None:
            raise fault

    async def _receive_loop(self, on_frame: FrameHandler) -> None:
        counters = self.counters
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError:
                self.close_reason = self.close_reason or "reset"
                return
            if not data:
                self.close_reason = self.close_reason or "eof"
                return
            self.last_activity = self._now()
            counters.bytes_in += len(data)
            try:
                frames = self._decoder.feed(self.session.decrypt(data))
            except NoiseFailure as exc:
                raise ChannelClosed("decrypt_failed", str(exc)) from exc
            except FrameRefused as exc:
                raise ChannelClosed("partial_frames_budget", f"{exc}: unfinished frames would "
                                    f"pass the budget of {self._budget.limit} bytes") from exc
            except FrameError as exc:
                raise ChannelClosed("frame_too_large", str(exc)) from exc
            self._track_partial_frame(bool(frames))
            counters.frames_in += len(frames)
            for body in frames:
                await on_frame(self, body)

    async def _send_loop(self) -> None:
        counters = self.counters
        async for body in self._queue:
            batch = [encode_frame(body)]
            while len(batch) < 1024:
                try:
                    batch.append(encode_frame(self._queue.receive_nowait()))
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            wire = self.session.encrypt(b"".join(batch))
            try:
                await self.stream.send_all(wire)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.close("reset")
                return
            counters.frames_out += len(batch)
            counters.bytes_out += len(wire)
            self.last_activity = self._now()

    def _admit_frame(self, length: int) -> bool:
        """Charge an unfinished frame's declared length to the budget before any of its body
        is buffered; False (the channel is closed) when it would pass the budget."""
        assert self._budget is not None
        return self._budget.update(id(self), length)

    def _track_partial_frame(self, completed: bool) -> None:
        """Start the frame deadline when a frame begins; a finished frame frees its charge."""
        decoder = self._decoder
        if not decoder.partial:
            self._frame_started = None
        elif completed or self._frame_started is None:
            self._frame_started = self._now()
            self._frame_begun.set()
        if self._budget is not None:
            self._budget.update(id(self), decoder.pending)

    async def _frame_watch(self, frame_timeout: float) -> None:
        """Close the channel when a frame stays unfinished ``frame_timeout``. It sleeps only
        while a frame is unfinished: a timer a second on every channel was, at a thousand
        simulated nodes (10,000 channel ends), a large part of the event loop."""
        while True:
            started = self._frame_started
            if started is None:
                self._frame_begun = trio.Event()
                await self._frame_begun.wait()
                continue
            remaining = started + frame_timeout - self._now()
            if remaining <= 0:
                log.info("closing channel to %s: a frame unfinished after %g s",
                         self.agent[:8], frame_timeout)
                self.counters.reject("frame_timeout")
                self.close("frame_timeout")
                return
            await trio.sleep(max(remaining, 0.05))

    async def _idle_watch(self, idle_timeout: float) -> None:
        while True:
            remaining = self.last_activity + idle_timeout - self._now()
            if remaining <= 0:
                log.info("closing channel to %s: idle for %g s", self.agent[:8], idle_timeout)
                self.close("idle")
                return
            await trio.sleep(max(remaining, 0.05))


__all__ = ["Channel", "ChannelClosed", "Hello", "initiate", "respond"]
