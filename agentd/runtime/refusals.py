"""Refusals at the edges, in one place: a ``protocol.errors.Refusal`` (a ``Reject``, a tally
refusal, a clearing house's rejection, ...) as a wire error ack and as an RPC error.

Codes go out upper-case (tally refusals are lower-case inside the protocol); a refusal that
names something unknown is RPC error -32011, any other -32010; ``data.reason`` is the code.
"""

from __future__ import annotations

from enum import Enum

from agentd.rpc import NOT_FOUND, REFUSED, RpcError
from protocol.errors import Refusal

NOT_FOUND_CODES = frozenset({"UNKNOWN_USER", "UNKNOWN_TALLY", "UNKNOWN_CHIT", "UNKNOWN_LIFT",
                             "UNKNOWN_PAYEE"})


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
