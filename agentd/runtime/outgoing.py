"""One message on its way out, as the outbox pump holds it (:class:`Outgoing`), and how long
its sender waits for an ack: capped exponential backoff with jitter over a round-trip time
kept per peer (:class:`RoundTrip`, RFC 6298's smoothing)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from agentd.logs import event, traced
from agentd.runtime.transport import Channel
from protocol.envelope import attempt_prefix, with_attempt

ACK_TIMEOUT_MIN = 2.0
ACK_TIMEOUT_MAX = 60.0
log = logging.getLogger("agentd.runtime.outbox")  # its lines are the pump's
_JITTER = random.Random()  # its own: the global random stays whoever seeded it (a test)


def ack_timeout(tries: int, rto: float = ACK_TIMEOUT_MIN) -> float:
    """The wait for an ack of the ``tries``-th send, when the peer's timeout is ``rto``."""
    base = min(ACK_TIMEOUT_MAX, max(rto, ACK_TIMEOUT_MIN) * 2 ** min(max(0, tries - 1), 8))
    return base * _JITTER.uniform(0.8, 1.2)


@dataclass(slots=True)
class RoundTrip:
    """A peer's smoothed ack time and its variation (RFC 6298), in seconds: the ack timeout
    follows it (smoothed + 4 times the variation, from first tries only), never below
    ``ACK_TIMEOUT_MIN``, so a loaded peer that acks in 3 s is not sent everything twice."""

    srtt: float | None = None
    rttvar: float = 0.0

    def sample(self, seconds: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = seconds, seconds / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - seconds)
            self.srtt = 0.875 * self.srtt + 0.125 * seconds

    @property
    def rto(self) -> float:
        return ACK_TIMEOUT_MIN if self.srtt is None else self.srtt + 4 * self.rttvar


@dataclass(slots=True)
class Outgoing:
    id: bytes
    peer: str
    address: str | None
    envelope: dict[str, Any]
    tries: int
    timeouts: int = 0  # acks that never came in time: what the backoff counts (see _scan)
    expires: int | None = None  # ms since the epoch; None: never
    durable: bool = True  # False: held in memory only, no outbox row
    size: int = 0  # encoded bytes: what HOLD_BYTES counts
    due: float = 0.0
    sent: float = 0.0
    channel: Channel | None = field(default=None, repr=False)
    prefix: bytes | None = field(default=None, repr=False)  # see protocol.envelope

    def attempt(self, now_ms: int) -> bytes:
        """The frame body of this attempt (``tries`` counted already): the envelope encoded
        once, with this attempt's ``try`` and ``last``."""
        if self.prefix is None:
            self.prefix = attempt_prefix(self.envelope)
        return with_attempt(self.prefix, self.tries, now_ms)

    @property
    def traced_id(self) -> str:
        return traced(self.id)

    @property
    def is_reply(self) -> bool:
        """A reply goes back to whoever asked: on a channel it opened, unless we know it."""
        return self.envelope.get("re") is not None


def trace(what: str, item: Outgoing, **fields: Any) -> None:
    """A message's way out, at debug (``[log] level = "debug"``): followed by its id to the
    peer's ``message taken`` line."""
    if log.isEnabledFor(logging.DEBUG):
        envelope = item.envelope
        event(log, what, logging.DEBUG, message=f"{envelope.get('target')}/"
              f"{envelope.get('action')}", id=item.traced_id, **fields)


__all__ = ["ACK_TIMEOUT_MAX", "ACK_TIMEOUT_MIN", "Outgoing", "RoundTrip", "ack_timeout",
           "trace"]
