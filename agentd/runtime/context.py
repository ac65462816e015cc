"""What every service gets: a transaction context, a refusal type, and the service shape.

A service's ``handle(tx, envelope)`` runs on the database writer thread inside the
transaction that also records the message id in the inbox. Whatever it writes, and every
message it queues with ``tx.send``, commits together or not at all; ``Reject`` undoes the
lot and answers the sender with an error ack.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from protocol.codec import pack
from protocol.envelope import VERSION, Envelope
from protocol.keys import ChipAddress, format_hostport
from store import outbox

if TYPE_CHECKING:
    from agentd.runtime.node import Node


class Reject(Exception):
    """Refuse a message (or an RPC call) for good, with a stable code and a readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Tx:
    """One transaction on the writer thread, with the node's identity at hand."""

    def __init__(self, node: Node, conn: sqlite3.Connection, now_ms: int) -> None:
        self.node = node
        self.conn = conn
        self.now_ms = now_ms
        self.sent: list[dict[str, Any]] = []
        self._after: list[Callable[[], None]] = []

    def send(
        self,
        to: ChipAddress,
        target: str,
        action: str,
        obj: dict,
        *,
        from_cuid: str | None = None,
        re: bytes | None = None,
    ) -> bytes:
        """Queue a message in the outbox, in this transaction; returns its id."""
        message_id = os.urandom(16)
        sender = self.node.own_address(from_cuid)
        envelope = Envelope(
            id=message_id, target=target, action=action, object=obj, to=to, from_=sender,
            try_=1, last=self.now_ms, re=re,
        ).to_map()
        address = format_hostport(to.host, to.port) if to.host is not None else None
        outbox.enqueue(
            self.conn, message_id=message_id, peer=to.agent, address=address, target=target,
            action=action, body=pack(envelope), now_ms=self.now_ms,
        )
        self.sent.append({"id": message_id, "peer": to.agent, "address": address,
                          "envelope": envelope})
        return message_id

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the event loop once this transaction has committed."""
        self._after.append(fn)

    def committed(self) -> None:
        """Called by the runtime after commit: hand sent messages to the pump, run hooks."""
        for item in self.sent:
            self.node.pump.add(item["id"], item["peer"], item["address"], item["envelope"], 0)
        for fn in self._after:
            fn()


class Service:
    """Base for a message target. Subclasses set ``target`` and implement ``handle``."""

    target: ClassVar[str]
    # The message actions this target takes: the dispatcher refuses any other as
    # UNKNOWN_ACTION, and docs/protocol.md must describe each (tests/test_protocol_doc.py
    # fails for a target that leaves this None, which the dispatcher does not check).
    actions: ClassVar[frozenset[str] | None] = None

    def __init__(self, node: Node) -> None:
        self.node = node

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        raise Reject("NOT_IMPLEMENTED", f"{self.target} accepts no messages")

    def wants_delivery(self, envelope: dict) -> bool:
        """Whether ``on_delivered`` must run when the recipient acks this message."""
        return False

    def on_delivered(self, tx: Tx, envelope: dict) -> None:
        """The recipient committed a message we sent (only when ``wants_delivery``)."""

    def on_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        """A message we sent was refused for good by its recipient (default: nothing)."""


__all__ = ["VERSION", "Reject", "Service", "Tx"]
