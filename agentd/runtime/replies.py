"""RPC calls that wait for a peer's answer to a message they sent.

A call commits its request (``Tx.send``, then ``expect_after``), then waits here under the
request's message id; the service that applies the answer — on the writer thread — settles
it with ``tx.after_commit(...)``, so the caller wakes only once the answer is durable. A call that
times out leaves its request in the outbox: the answer may still come and is still applied,
there is just nobody waiting for it any more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from agentd.rpc import TIMEOUT, RpcError
from agentd.runtime.context import Reject, Tx

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime

DIAL_GRACE_S = 0.5  # how long a failed dial may still be put right before a call gives up


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

    def waiting(self, message_id: object) -> bool:
        """Whether a call still waits for the answer to ``message_id``."""
        return isinstance(message_id, bytes) and message_id in self._waiting

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


async def answer_from(runtime: Runtime, agent: str, message_id: bytes, timeout: float, *,
                      late: str, kept: str, who: str | None = None) -> Any:
    """Wait for ``agent``'s answer to ``message_id`` (registered with ``expect``): the settled
    value, or the settled refusal raised. A node that cannot be dialled need not cost the
    caller the whole wait: ``UNREACHABLE`` as soon as a dial of ``agent`` has failed (nothing
    listens at its address, the name does not resolve, another key answers) and still has
    ``DIAL_GRACE_S`` in; a node that is slow to answer, or whose dial is still under way, is
    waited for, until ``TIMEOUT`` after ``timeout`` seconds (``late``, and why the last dial
    failed when one did). ``kept`` says what becomes of the request (it stays in the outbox);
    ``who`` names the agent in the errors (default: its id). The caller's job is to redial
    ``agent`` first, so that a dial that failed before the call does not judge it."""
    unreachable: list[str] = []

    async def watch_dials(scope: trio.CancelScope) -> None:
        await trio.sleep(DIAL_GRACE_S)
        while (why := runtime.dial_error(agent)) is None or runtime.connected(agent):
            await trio.sleep(0.1)
        unreachable.append(why)
        scope.cancel()

    answered, answer, failure = False, None, None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_dials, nursery.cancel_scope)
        try:
            answer, answered = await runtime.replies.result(message_id, timeout,
                                                            f"{late} ({kept})"), True
        except (RpcError, Reject) as exc:  # raised below, not as a group out of the nursery
            failure = exc
        nursery.cancel_scope.cancel()
    if answered:
        return answer
    if failure is None:  # only watch_dials cancels the wait before it ends
        raise RpcError(TIMEOUT, f"cannot reach {who or agent}: {unreachable[0]} ({kept})",
                       "UNREACHABLE")
    why = runtime.dial_error(agent)
    if isinstance(failure, RpcError) and failure.reason == "TIMEOUT" and why is not None:
        raise RpcError(failure.code, f"{failure.message}: {why}", failure.reason)
    raise failure
