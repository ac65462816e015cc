"""RPC calls that wait for a peer's answer to a message they sent.

A call commits its request (``Tx.send``, then ``expect_after``), then waits here under the
request's message id; the service that applies the answer — on the writer thread — settles
it with ``tx.after_commit(...)``, so the caller wakes only once the answer is durable. A call that
times out leaves its request in the outbox: the answer may still come and is still applied,
there is just nobody waiting for it any more.
"""

from __future__ import annotations

from typing import Any

import trio

from agentd.rpc import TIMEOUT, RpcError
from agentd.runtime.context import Reject, Tx


class _Waiter:
    __slots__ = ("error", "event", "peer", "value")

    def __init__(self, peer: str | None = None) -> None:
        self.event = trio.Event()
        self.value: Any = None
        self.error: Reject | None = None
        self.peer = peer  # the agent whose pong settles it (None: only its caller's checks do)


class Replies:
    def __init__(self) -> None:
        self._waiting: dict[bytes, _Waiter] = {}

    def expect(self, message_id: bytes, peer: str | None = None) -> None:
        """Register a waiter for ``message_id`` before its request reaches the pump; with
        ``peer``, only an answer from that agent settles it."""
        self._waiting[message_id] = _Waiter(peer)

    def expect_after(self, tx: Tx, message_id: bytes, peer: str | None = None) -> None:
        """Register a waiter for ``message_id`` once ``tx`` commits (before the pump sends
        it); then ``await result(message_id, ...)``."""
        tx.after_commit(lambda: self.expect(message_id, peer))

    def discard(self, message_id: bytes) -> None:
        """Forget a waiter nobody will collect (its caller went away)."""
        self._waiting.pop(message_id, None)

    async def result(self, message_id: bytes, timeout: float, timeout_message: str) -> Any:
        """Wait for the answer to ``message_id``, registered with ``expect``: the settled
        value; raises the settled refusal, or RpcError(TIMEOUT) with ``timeout_message`` when
        nothing came within ``timeout`` seconds."""
        waiter = self._waiting[message_id]
        try:
            with trio.move_on_after(timeout):
                await waiter.event.wait()
        finally:
            self.discard(message_id)
        if not waiter.event.is_set():
            raise RpcError(TIMEOUT, timeout_message, "TIMEOUT")
        if waiter.error is not None:
            raise waiter.error
        return waiter.value

    async def results(self, message_ids: list[bytes]) -> list[Any]:
        """Wait for the answers to ``message_ids``, registered with ``expect``: each value,
        or the ``Reject`` it was settled with. The caller bounds the wait with its own
        cancel scope."""
        waiters = [self._waiting[key] for key in message_ids]
        for waiter in waiters:
            if not waiter.event.is_set():  # the answers of one batch come in one commit
                await waiter.event.wait()
        return [waiter.error if waiter.error is not None else waiter.value
                for waiter in waiters]

    def settle(self, tx: Tx, message_id: object, value: Any = None,
               error: Reject | None = None, *, peer: str | None = None) -> None:
        """Wake the call waiting for ``message_id`` (if any) once ``tx`` has committed. With
        ``peer`` (an answer anyone may send, such as a pong), only a waiter that expects that
        very peer: a pong naming another call's request id settles nothing."""
        waiter = self._waiting.get(message_id) if isinstance(message_id, bytes) else None
        if waiter is not None and (peer is None or waiter.peer == peer):
            tx.after_commit(lambda: self._wake(message_id, value, error))

    def _wake(self, message_id: bytes, value: Any, error: Reject | None) -> None:
        waiter = self._waiting.get(message_id)
        if waiter is not None:
            waiter.value, waiter.error = value, error
            waiter.event.set()
