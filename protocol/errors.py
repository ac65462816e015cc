"""One shape for every reasoned refusal: a stable ``code`` and a message a person can act on.

Protocol decisions raise a subclass (``tally.Refusal``, ``clearing.Rejection``, ...); the
runtime maps any of them to a wire error ack and to an RPC error in one place
(``agentd.runtime.refusals``). Raising one means nothing changed.
"""

from __future__ import annotations


class Refusal(Exception):
    """The event does not apply: ``code`` says why (stable), ``message`` in words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_map(self) -> dict[str, str]:
        """The ``error`` of a rejecting ack."""
        return {"code": str(self.code), "message": self.message}
