"""Refusals at the edges, in one place: a ``protocol.errors.Refusal`` (a ``Reject``, a tally
refusal, a clearing house's rejection, ...) as a wire error ack and as an RPC error.

Codes go out upper-case (tally refusals are lower-case inside the protocol); a refusal that
names something unknown is RPC error -32011, any other -32010; ``data.reason`` is the code.
A message refused for good leaves no row behind, so one sent again is decided again: the
dispatcher counts it once (``RefusedIds``).
"""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum

from agentd.rpc import NOT_FOUND, REFUSED, RpcError
from protocol.errors import Refusal

NOT_FOUND_CODES = frozenset({"UNKNOWN_USER", "UNKNOWN_TALLY", "UNKNOWN_CHIT", "UNKNOWN_LIFT",
                             "UNKNOWN_PAYEE"})
REFUSED_IDS = 1024  # ids of messages refused for good, kept to count each one once


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
