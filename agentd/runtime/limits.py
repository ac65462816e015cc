"""Bounds on what peers can make us hold: handshakes in progress, channels, partial frames.

A peer speaks first (the Noise initiator's message), so the kernel holds a connection that
has sent nothing for ``defer_accept`` seconds before the node even accepts it: half-open
sockets cost no task, no slot and no key work while they stay silent. Anyone can open a
TCP connection and stall, so handshake slots are bounded in total and per source address. A
full table does not turn newcomers away (that would lock out our own peers): the newcomer
takes the slot of the oldest connection from the same address (or, the table being full, of
any address) that has not sent a byte yet. Once half the slots are taken the deadline to
finish a handshake shortens. Established channels are capped in total, per address and per
identity (peers we know are exempt from the first two: a stranger's channel makes room for
them), and unfinished frames share one memory budget, as do strangers' frames being decoded
and processed (``DecodeBudget``). What strangers make us write is rationed (``WriteRation``).
"""

from __future__ import annotations

import array
import fcntl
import itertools
import socket
import termios
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import trio

from agentd.config import Limits
from agentd.runtime.counters import Counters


@dataclass(eq=False)
class HandshakeSlot:
    address: str
    timeout: float
    fd: int = -1  # the socket, to see whether the peer has sent anything yet
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    spoken: bool = False  # the first handshake message arrived: no longer evictable

    @property
    def silent(self) -> bool:
        """Nothing read from it and nothing waiting to be read: a half-open socket (a real
        peer's first message may already wait in the socket while its task is not yet run)."""
        if self.spoken:
            return False
        try:
            unread = array.array("i", [0])
            fcntl.ioctl(self.fd, termios.FIONREAD, unread)
        except OSError:
            return True
        return unread[0] == 0

    def evict(self) -> None:
        self.scope.cancel()


class HandshakeSlots:
    def __init__(self, limits: Limits, normal_timeout: float, counters: Counters) -> None:
        self.limits = limits
        self.normal_timeout = normal_timeout
        self.counters = counters
        self._slots: OrderedDict[int, HandshakeSlot] = OrderedDict()
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._slots)

    def admit(self, address: str, fd: int = -1) -> tuple[int, HandshakeSlot] | None:
        """A slot for a new inbound connection from ``address``, evicting the oldest silent
        one when a bound is reached; None when every slot is busy with a real handshake."""
        limits = self.limits
        same = [key for key, slot in self._slots.items() if slot.address == address]
        if len(same) >= limits.max_handshakes_per_address and not self._evict(same):
            return None
        if len(self._slots) >= limits.max_handshakes and not self._evict(list(self._slots)):
            return None
        busy = len(self._slots) >= limits.max_handshakes // 2
        timeout = min(self.normal_timeout, limits.busy_handshake_timeout) if busy \
            else self.normal_timeout
        key = next(self._ids)
        slot = self._slots[key] = HandshakeSlot(address, timeout, fd)
        return key, slot

    def release(self, key: int) -> None:
        self._slots.pop(key, None)

    def _evict(self, keys: list[int]) -> bool:
        for key in keys:  # oldest first
            slot = self._slots[key]
            if slot.silent:
                del self._slots[key]
                slot.evict()
                self.counters.reject("handshake_evicted")
                return True
        return False


class FrameBudget:
    """The declared lengths of unfinished frames over all channels, against one budget: a
    frame is charged in full when its header arrives, so what the budget admits bounds what
    the buffers can grow to, however the bytes come."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._held: dict[int, int] = {}

    def update(self, channel_id: int, charge: int) -> bool:
        """Set a channel's charge; False, and the charge not taken, when raising it would
        push the total past the budget (the caller closes that channel, the newest
        offender): the total never passes the budget, so no one else is refused for it."""
        old = self._held.get(channel_id, 0)
        if charge > old and self.total + charge - old > self.limit:
            return False
        self.total += charge - old
        if charge:
            self._held[channel_id] = charge
        else:
            self._held.pop(channel_id, None)
        return True


class DecodeBudget:
    """Bytes of strangers' frames decoded and not yet processed, over all channels, against
    one budget. A frame decodes into up to ~70 times its size in Python objects (a megabyte
    of empty lists is a million lists), so what strangers' messages may hold in memory at
    once is bounded by their bytes here, not by their count: a frame waits its turn as bytes
    (its channel reads nothing meanwhile), first come first served; one larger than the
    budget goes alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: deque[tuple[int, trio.Event]] = deque()

    async def acquire(self, size: int) -> int:
        """Wait for ``size`` bytes (at most the whole budget); returns what was taken, for
        :meth:`release`."""
        size = min(size, self.limit)
        if not self._waiting and self.used + size <= self.limit:
            self.used += size
            return size
        turn = (size, trio.Event())
        self._waiting.append(turn)
        try:
            await turn[1].wait()
        except BaseException:
            if turn[1].is_set():
                self.release(size)
            else:
                self._waiting.remove(turn)
                self._grant()  # the next in line may fit now
            raise
        return size

    def release(self, size: int) -> None:
        self.used -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.limit:
            size, event = self._waiting.popleft()
            self.used += size
            event.set()


MESSAGE_COST = 1024  # bytes charged per message beyond its frame: its inbox row, indexes, commit
MAX_WAIT = 30.0  # seconds a stranger's message may wait for its write allowance, or to be decoded


class WriteRation:
    """What agents we do not know may make us write, in bytes a second with a burst: each
    stranger on its own, and all of them together. A message is charged its frame's length
    plus ``MESSAGE_COST`` before it is processed (a ``route`` message too: it writes nothing,
    but a stranger's route ask costs as much to answer), and what it made us write beyond
    that once it has (:meth:`debit`); past either allowance it waits, and
    its channel reads nothing meanwhile, so TCP slows the sender down (or, past
    ``MAX_WAIT``, its channel is closed and the message is sent again later). Nothing is
    refused for good: a legitimate stranger (a clearing house's client, a lift's participant
    at its referee, a relay requestor, a payor asking for last hops) is only slowed, and a
    flood of fresh identities shares the one allowance of all strangers, which leaves the
    writer to the peers we know.

    Each allowance is a GCRA bucket (the virtual-scheduling form of a token bucket): ``due``
    is when it would be full again, so a charge waits for whatever of it lies more than a
    burst ahead. An agent whose bucket is full again, or the oldest past ``MAX_TRACKED``, is
    forgotten: it comes back with a full burst, which the shared allowance still bounds."""

    MAX_TRACKED = 4096

    def __init__(self, rate: float, burst: float, all_rate: float, all_burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.all_rate, self.all_burst = all_rate, all_burst
        self._due: OrderedDict[str, float] = OrderedDict()  # agent -> when its bucket is full
        self._all_due = 0.0

    def __len__(self) -> int:
        return len(self._due)

    def charge(self, agent: str, cost: int, now: float) -> float | None:
        """Charge ``agent`` ``cost`` bytes at ``now`` (seconds, monotonic); the seconds it
        must wait before it may go on (0 when within its allowance), or None, charging
        nothing, when that would be more than ``MAX_WAIT``: the caller closes the channel
        and the sender tries again later. So a swarm of fresh identities cannot book the
        shared allowance further ahead than that, and it is back within ``MAX_WAIT`` of the
        swarm's end."""
        self._forget(now)
        due = max(self._due.get(agent, now), now) + cost / self.rate
        all_due = max(self._all_due, now) + cost / self.all_rate
        wait = max(due - self.burst / self.rate, all_due - self.all_burst / self.all_rate) - now
        if wait > MAX_WAIT:
            return None
        self._due.pop(agent, None)
        self._due[agent] = due
        self._all_due = all_due
        return max(0.0, wait)

    def debit(self, agent: str, cost: int, now: float) -> None:
        """Book ``cost`` bytes that ``agent``'s message made us write beyond what it was
        charged (a referee's decision sent to every node on a lift's path, the entries of a
        batch past its first), known only once it ran: its next messages, and all strangers',
        wait for it. Booked at most ``MAX_WAIT`` ahead, as a charge is: past that, the next
        message closes its channel until the allowance comes back."""
        self._forget(now)
        most = now + MAX_WAIT
        due = max(self._due.get(agent, now), now) + cost / self.rate
        self._due.pop(agent, None)
        self._due[agent] = min(due, most + self.burst / self.rate)
        all_due = max(self._all_due, now) + cost / self.all_rate
        self._all_due = min(all_due, most + self.all_burst / self.all_rate)

    def _forget(self, now: float) -> None:
        due = self._due
        while due and (len(due) >= self.MAX_TRACKED or next(iter(due.values())) <= now):
            due.popitem(last=False)


def defer_accept(listeners: list[trio.SocketListener], seconds: int) -> None:
    """Have the kernel hand us a connection only once its first bytes arrive, or after about
    ``seconds`` (Linux ``TCP_DEFER_ACCEPT``; a no-op elsewhere or when ``seconds`` is 0)."""
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is None or seconds <= 0:
        return
    for listener in listeners:
        listener.socket.setsockopt(socket.IPPROTO_TCP, option, seconds)


__all__ = ["MAX_WAIT", "MESSAGE_COST", "DecodeBudget", "FrameBudget", "HandshakeSlot",
           "HandshakeSlots", "WriteRation", "defer_accept"]
