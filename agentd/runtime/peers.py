"""The peer manager: one channel per peer, dialled on demand, with backoff and idle close.

It accepts inbound connections (the listener hands each socket here), dials outbound ones
when the outbox needs a peer, and runs every channel in its own nursery so stopping the
manager closes them all. A peer that cannot be reached is retried with capped exponential
backoff and jitter; callers learn at once that it is backing off instead of waiting. A peer
given another address (``peers.add``, ``reload``) and a user's ``peers.ping`` are dialled at
once (``redial``): neither waits out a backoff, nor is answered with a failure from before.
"""

from __future__ import annotations

import logging
import os
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from agentd.config import Limits
from agentd.runtime.counters import Counters
from agentd.runtime.limits import FrameBudget, HandshakeSlots
from agentd.runtime.links import Links
from agentd.runtime.transport import (
    PIPELINE,
    Channel,
    ChannelClosed,
    Hello,
    initiate,
    respond,
)
from protocol.keys import IdentityError, SigningKey, parse_hostport

log = logging.getLogger("agentd.runtime.peers")
BACKOFF_MIN = 0.2
BACKOFF_MAX = 30.0
ANSWERED = 4096  # places (agent, address) kept as having answered a dial of ours
_JITTER = random.Random()  # its own: the global random stays whoever seeded it (a test)


class PeerUnreachable(Exception):
    """No channel to the peer could be opened (now, or while it is backing off)."""


@dataclass
class _DialState:
    failures: int = 0
    retry_at: float = 0.0
    lock: trio.Lock | None = None
    error: str | None = None  # why the last dial failed, until one succeeds
    wrong_key_at: str | None = None  # where it met a node with another key, until then too


class PeerManager:
    def __init__(
        self,
        key: SigningKey,
        hello: Hello,
        counters: Counters,
        *,
        max_frame: int,
        handshake_timeout: float,
        idle_timeout: float,
        on_frame: Callable[[Channel, bytes], Awaitable[None]],
        on_channel: Callable[[Channel], None],
        on_channel_closed: Callable[[Channel], None],
        limits: Limits | None = None,
        is_known: Callable[[str], bool] = lambda agent: False,
        links: Links | None = None,
        describe: Callable[[str, str], tuple[str, str]] = lambda agent, key: (
            f"agent {agent[:8]}", f"its {key}"),
        on_dial: Callable[[str, str, bool], None] = lambda agent, address, answered: None,
    ) -> None:
        """``describe(agent, key)``: how a log line names a peer, and where the operator checks
        its ``key`` (``agent`` or ``address``: its line of the config), for a dial that
        failed; ``on_dial(agent, address, answered)`` hears how each dial went."""
        self.key = key
        self.links = links  # simulated link faults, agentd sim only
        self.hello = hello
        self.counters = counters
        self.max_frame = max_frame
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self._on_frame = on_frame
        self._on_channel = on_channel
        self._on_channel_closed = on_channel_closed
        self.channels: dict[str, list[Channel]] = {}
        self._dial: dict[str, _DialState] = {}
        self._answered: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.limits = limits = limits or Limits()
        self._is_known = is_known
        self._describe = describe
        self._on_dial = on_dial
        self.handshakes = HandshakeSlots(limits, handshake_timeout, counters)
        self.budget = FrameBudget(limits.partial_frames_budget)
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def connected(self, agent: str) -> bool:
        return self.channel_for(agent) is not None

    def connected_since(self, agent: str) -> float | None:
        """When the channel to ``agent`` that is open now opened (Trio's clock), or None."""
        channel = self.channel_for(agent)
        return None if channel is None else channel.opened

    def answered(self, agent: str, address: str) -> bool:
        """Whether ``agent`` answered a dial of ours at ``address`` since the node started
        (the last ``ANSWERED`` such places): a handshake there shows the address is the
        agent's own, as a channel it opened to us, or a message it sent, does not."""
        return (agent, address) in self._answered

    def channel_for(self, agent: str) -> Channel | None:
        for channel in reversed(self.channels.get(agent, ())):
            if channel.alive:
                return channel
        return None

    # -- inbound -------------------------------------------------------------------------

    async def handle_inbound(self, stream: trio.SocketStream) -> None:
        """serve_tcp handler: handshake, then run the channel. Never raises."""
        address = _remote_host(stream)
        admitted = self.handshakes.admit(address, stream.socket.fileno())
        if admitted is None:
            self.counters.reject("too_many_handshakes")
            await stream.aclose()
            return
        key, slot = admitted
        try:
            with slot.scope:
                session, remote = await respond(
                    stream, self.key, self.hello, slot.timeout,
                    on_first_message=lambda: setattr(slot, "spoken", True),
                )
        except ChannelClosed as exc:
            self.counters.handshakes_failed += 1
            self.counters.reject(exc.reason)
            log.info("inbound handshake from %s rejected: %s%s", address, exc,
                     " (a node dialling another agent id at our address?)"
                     if exc.reason == "handshake_failed" else "")
            await stream.aclose()
            return
        except Exception as exc:  # a socket error of any kind costs this connection only
            self.counters.handshakes_failed += 1
            self.counters.reject("handshake_error")
            log.warning("inbound handshake error: %r", exc)
            await stream.aclose()
            return
        finally:
            self.handshakes.release(key)
        if slot.scope.cancelled_caught:  # evicted to make room for a newer connection
            await stream.aclose()
            return
        refusal = self._admit_channel(remote.agent, address)
        if refusal is not None:
            self.counters.reject(refusal)
            log.info("refused a channel from %s at %s: %s", remote.agent[:8], address, refusal)
            await stream.aclose()
            return
        self.counters.handshakes_ok += 1
        channel = self._make_channel(stream, session, remote, outbound=False)
        channel.address = address
        await self._run_channel(channel, idle_timeout=self.idle_timeout)

    def _admit_channel(self, agent: str, address: str) -> str | None:
        """None if a new inbound channel from ``agent`` at ``address`` fits the caps (a peer we
        know makes room by closing a stranger's channel), else the counter reason."""
        limits = self.limits
        if len([c for c in self.channels.get(agent, ()) if c.alive]) \
                >= limits.max_channels_per_agent:
            return "too_many_channels_agent"
        if self._is_known(agent):
            if self.channel_count() >= limits.max_channels:
                stranger = self._oldest_stranger()
                if stranger is None:
                    return "too_many_channels"
                stranger.close("evicted")
                self.counters.reject("channel_evicted")
            return None
        if self.channel_count() >= limits.max_channels:
            return "too_many_channels"
        same = sum(1 for live in self.channels.values() for c in live
                   if c.alive and c.address == address)
        if same >= limits.max_channels_per_address:
            return "too_many_channels_address"
        return None

    def channel_count(self) -> int:
        return sum(len(live) for live in self.channels.values())

    def _oldest_stranger(self) -> Channel | None:
        strangers = [c for agent, live in self.channels.items() if not self._is_known(agent)
                     for c in live if c.alive and not c.outbound]
        return min(strangers, key=lambda c: c.opened, default=None)

    # -- outbound ------------------------------------------------------------------------

    async def connect(self, agent: str, address: str | None) -> Channel:
        """A live channel to ``agent``, dialling ``address`` if there is none."""
        channel = self.channel_for(agent)
        if channel is not None:
            return channel
        state = self._dial.setdefault(agent, _DialState())
        if state.lock is None:
            state.lock = trio.Lock()
        async with state.lock:
            channel = self.channel_for(agent)
            if channel is not None:
                return channel
            if address is None:
                raise PeerUnreachable(f"no address known for agent {agent}")
            now = trio.current_time()
            if now < state.retry_at:
                raise PeerUnreachable(
                    f"{address} is backing off for {state.retry_at - now:.1f} s more"
                )
            try:
                channel = await self._dial_once(agent, address)
            except (OSError, ChannelClosed, IdentityError, trio.TooSlowError) as exc:
                state.failures += 1
                delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (state.failures - 1))
                state.retry_at = trio.current_time() + delay * _JITTER.uniform(0.5, 1.0)
                if isinstance(exc, ChannelClosed):
                    self.counters.handshakes_failed += 1
                state.error = f"cannot reach {address}: {_why(exc)}"
                wrong_key = isinstance(exc, ChannelClosed) and exc.reason == "handshake_eof"
                state.wrong_key_at = address if wrong_key else None
                who, where = self._describe(agent, "agent" if wrong_key else "address")
                if wrong_key:  # an IK responder without the key we dial cannot read us
                    state.error += (f"; most likely the node at {address} has another key "
                                    f"than {who}: check {where} (unless that node was "
                                    "stopping just then: it hangs up on a handshake too)")
                elif isinstance(_cause(exc), ConnectionRefusedError):
                    state.error += (f"; nothing listens there: is {who} running, and is that "
                                    f"where it listens? check {where}")
                if state.failures == 1:  # once a streak: the retries back off quietly
                    log.log(logging.WARNING if wrong_key else logging.INFO,
                            "%s: %s; retrying with backoff", who, state.error)
                else:
                    log.debug("%s: %s; dial %d, the next in %.1f s at the most", who,
                              state.error, state.failures, delay)
                self._on_dial(agent, address, False)
                raise PeerUnreachable(state.error) from exc
            state.failures = 0
            state.retry_at = 0.0
            state.error = None
            self._answered[(agent, address)] = None
            self._answered.move_to_end((agent, address))
            while len(self._answered) > ANSWERED:
                self._answered.popitem(last=False)
            self._on_dial(agent, address, True)
            return channel

    def dial_error(self, agent: str) -> str | None:
        """Why the last dial of ``agent`` failed, while no dial since has succeeded."""
        state = self._dial.get(agent)
        return None if state is None else state.error

    def wrong_key_at(self, agent: str) -> str | None:
        """The address where the last dial of ``agent`` met a node with another key (it hung
        up on the handshake), while no dial since has succeeded or failed otherwise."""
        state = self._dial.get(agent)
        return None if state is None or state.error is None else state.wrong_key_at

    def redial(self, agent: str) -> None:
        """Dial ``agent`` at the next send, whatever the backoff, and forget why the last dial
        failed: a user asked to reach it now (``peers.ping``), or gave it another address (it
        may have come back, or be there, since)."""
        state = self._dial.get(agent)
        if state is not None:
            state.retry_at = 0.0
            state.error = None

    async def _dial_once(self, agent: str, address: str) -> Channel:
        host, port = parse_hostport(address)
        with trio.fail_after(self.handshake_timeout):
            stream = await trio.open_tcp_stream(host, port)
        try:
            session, remote = await initiate(
                stream, self.key, agent, self.hello, self.handshake_timeout
            )
        except BaseException:
            await stream.aclose()
            raise
        self.counters.handshakes_ok += 1
        channel = self._make_channel(stream, session, remote, outbound=True)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_channel, channel, None)
        return channel

    def _make_channel(self, stream, session, remote: Hello, *, outbound: bool) -> Channel:
        known = outbound or self._is_known(remote.agent)
        channel = Channel(
            stream, session, remote, outbound=outbound, max_frame=self.max_frame,
            counters=self.counters, frame_timeout=self.limits.frame_timeout, budget=self.budget,
            pipeline=PIPELINE if known else self.limits.stranger_pipeline, links=self.links,
        )
        self.channels.setdefault(channel.agent, []).append(channel)
        self._on_channel(channel)
        return channel

    async def _run_channel(self, channel: Channel, idle_timeout: float | None) -> None:
        try:
            await channel.run(self._on_frame, idle_timeout)
        except ChannelClosed as exc:
            channel.close_reason = exc.reason
            self.counters.reject(exc.reason)
            log.warning("closed channel to %s: %s", channel.agent[:8], exc)
        except Exception:  # a bug handling this peer's traffic costs its channel, not the node
            channel.close_reason = "internal_error"
            self.counters.reject("internal_error")
            log.exception("closed channel to %s after an internal error", channel.agent[:8])
        finally:
            live = self.channels.get(channel.agent, [])
            if channel in live:
                live.remove(channel)
            if not live:
                self.channels.pop(channel.agent, None)
            self._on_channel_closed(channel)


def _cause(exc: BaseException) -> BaseException:
    """The error under trio's ``all attempts to connect to HOST:PORT failed`` (an OSError
    whose cause is a group of one error per address tried): the first of them."""
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    return cause if isinstance(cause, OSError) else exc


def _why(exc: BaseException) -> str:
    """A failed dial's reason as a person reads it: ``connection refused``, not trio's
    ``all attempts to connect to 127.0.0.1:7402 failed``."""
    cause = _cause(exc)
    if not isinstance(cause, OSError) or not cause.strerror:
        return str(exc) or type(exc).__name__
    # trio's own says "Error connecting to ('127.0.0.1', 7402): Connection refused"
    why = os.strerror(cause.errno) if cause.errno and cause.errno > 0 else cause.strerror
    return why[0].lower() + why[1:]


def _remote_host(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except (OSError, IndexError):
        return "?"
