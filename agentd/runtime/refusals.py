"""Refusals at the edges, in one place: a ``protocol.errors.Refusal`` (a ``Reject``, a tally
refusal, a clearing house's rejection, ...) as a wire error ack and as an RPC error.

Codes go out upper-case (tally refusals are lower-case inside the protocol); a refusal that
names something unknown is RPC error -32011, any other -32010; ``data.reason`` is the code.
A message refused for good leaves no row behind, so one sent again is decided again: the
dispatcher counts it once (``RefusedIds``). A ``RoutineReject`` is logged once per code and
key in each ``QUIET_S`` seconds (``QuietLog``): a partner cannot fill the log with it; nor with
its refusals of our messages about one thing (``Service.refusal_key``: our lift promises over
one tally), logged the same way on our side.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from enum import Enum

from agentd.rpc import NOT_FOUND, REFUSED, RpcError
from protocol.errors import Refusal

NOT_FOUND_CODES = frozenset({"UNKNOWN_USER", "UNKNOWN_TALLY", "UNKNOWN_CHIT", "UNKNOWN_LIFT",
                             "UNKNOWN_PAYEE"})
REFUSED_IDS = 1024  # ids of messages refused for good, kept to count each one once
QUIET_S = 60.0  # a routine refusal is logged once per code and key in this many seconds
QUIET_KEYS = 1024  # (code, key) pairs remembered, the oldest forgotten first


def code_of(refusal: Refusal) -> str:
    """The stable code as it goes on the wire and in RPC errors."""
    code = refusal.code.value if isinstance(refusal.code, Enum) else refusal.code
    return str(code).upper()


def ack_error(refusal: Refusal) -> tuple[str, str]:
    """The ``(code, message)`` of the error ack that refuses a message."""
    return code_of(refusal), refusal.message


def rpc_error(refusal: Refusal) -> RpcError:
    """The RPC error that refuses a call."""
    code = code_of(refusal)
    if code in NOT_FOUND_CODES:
        return RpcError(NOT_FOUND, refusal.message, code)
    return RpcError(REFUSED, f"{code}: {refusal.message}", code)


class RefusedIds:
    """The last ``size`` messages refused for good, by (id, sender): a broken or old peer
    that sends one again, or a resend that crossed our error ack, is refused again (the
    refusal left no inbox row to know it by) but counted once, as an inbox row counts a
    message taken once."""

    def __init__(self, size: int = REFUSED_IDS) -> None:
        self.size = size
        self._ids: OrderedDict[tuple[bytes, str], None] = OrderedDict()

    def first(self, message_id: bytes, sender: str) -> bool:
        """Note that ``message_id`` from ``sender`` is refused; False when it was before."""
        key = (message_id, sender)
        if key in self._ids:
            self._ids.move_to_end(key)
            return False
        self._ids[key] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


class QuietLog:
    """Which routine refusals go to the log: the first of each (code, key) in each
    ``window`` seconds; the rest are counted only (in ``getinfo`` ``counted``), and the next
    one logged says how many."""

    def __init__(self, window: float = QUIET_S, clock: Callable[[], float] = time.monotonic,
                 counted: str = "counters.refusals") -> None:
        self.window = window
        self.clock = clock
        self.counted = counted
        self._seen: OrderedDict[tuple[str, str], list[float]] = OrderedDict()  # [logged, held]

    def note(self, code: str, key: str) -> str | None:
        """What to add to this refusal's log line, or None when it is not to be logged."""
        now, seen = self.clock(), self._seen.get((code, key))
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return None
        held = int(seen[1]) if seen is not None else 0
        self._seen[(code, key)] = [now, 0]
        self._seen.move_to_end((code, key))
        while len(self._seen) > QUIET_KEYS:
            self._seen.popitem(last=False)
        return (f" (further {code} refusals {key} in the next {self.window:g} s are counted"
                f" in getinfo {self.counted}, not logged" +
                (f"; {held} were since the last one logged)" if held else ")"))
