"""The ``node`` target: ping and pong, the round trip behind ``peers.ping`` and the demo.

``note`` is a one-way message that needs no reply: the receiver only records it (the inbox
does that), which makes it the unit of the durable-delivery benchmark.

A ping goes through the whole delivery path — outbox row, Noise channel, inbox, the pong
queued in the receiver's transaction, its ack — so its latency is that of every message.
"""

from __future__ import annotations

import trio

from agentd.rpc import NOT_FOUND, TIMEOUT, RpcError, invalid_params
from agentd.rpc_types import shown
from agentd.runtime.context import Reject, Runtime, Service, Tx
from protocol.envelope import Envelope
from protocol.keys import ChipAddress, agent_id_problem, parse_hostport
from protocol.messages import Send

PING_TIMEOUT = 10.0
DIAL_GRACE_S = 0.5  # how long a failed dial may still be put right before a ping gives up


class PingService(Service):
    target = "node"
    actions = frozenset({"ping", "pong", "note"})

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        runtime.register_target(self)
        runtime.register_method("peers.ping", self.rpc_ping)

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        if envelope.action == "ping":
            tx.send(Send(envelope.from_, "node", "pong", {"seq": envelope.object.get("seq", 0)}),
                    re=envelope.id)
        elif envelope.action == "note":
            return
        elif envelope.action == "pong":
            self.runtime.replies.settle(tx, envelope.re, peer=envelope.from_.agent)
        else:
            raise Reject("UNKNOWN_ACTION", f"node has no action {envelope.action!r}")

    async def rpc_ping(self, agent: str, count: int = 1) -> dict:
        """``count`` (1 to 1000) round trips to ``agent`` through the outbox and ack path;
        latencies in ms. A peer whose address we do not know is pinged over the channel it
        has open to us."""
        if (problem := agent_id_problem(agent)) is not None:
            raise invalid_params(f"agent: {problem} (peers.list shows the agent ids this node "
                                 "knows)")
        if not 1 <= count <= 1000:
            raise invalid_params(f"count must be an integer from 1 to 1000, not {shown(count)}")
        runtime = self.runtime
        address = runtime.address_of(agent)
        if address is None and agent != runtime.agent_id and not runtime.connected(agent):
            raise RpcError(NOT_FOUND, f"unknown peer {agent}: this node knows no address of "
                           f"it: peers.add name=NAME agent={agent} address=HOST:PORT adds one "
                           "(or ping it while it is connected)", "UNKNOWN_PEER")
        host, port = parse_hostport(address) if address else (None, None)
        to = ChipAddress(agent=agent, host=host, port=port)
        runtime.redial(agent)  # a peer back since its last failed dial is not judged by it
        rtts = []
        for seq in range(count):
            started = runtime.clock.monotonic()

            def work(tx: Tx, seq: int = seq) -> bytes:
                message_id = tx.send(Send(to, "node", "ping", {"seq": seq}))
                runtime.replies.expect_after(tx, message_id, agent)
                return message_id

            await self._pong(agent, await runtime.transact(work))
            rtts.append(round((runtime.clock.monotonic() - started) * 1000, 3))
        return {"rtt_ms": rtts}

    async def _pong(self, agent: str, message_id: bytes) -> None:
        """Wait for the pong to ``message_id``: ``TIMEOUT`` after ``PING_TIMEOUT``, or
        ``UNREACHABLE`` as soon as ``agent`` still cannot be dialled ``DIAL_GRACE_S`` in (a
        peer that is down or unresolvable need not cost the caller the whole wait)."""
        runtime = self.runtime
        unreachable: list[str] = []

        async def watch_dials(scope: trio.CancelScope) -> None:
            await trio.sleep(DIAL_GRACE_S)
            while (why := runtime.dial_error(agent)) is None or runtime.connected(agent):
                await trio.sleep(0.1)
            unreachable.append(why)
            scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_dials, nursery.cancel_scope)
                try:
                    await runtime.replies.result(
                        message_id, PING_TIMEOUT, f"no pong from {agent} within "
                        f"{PING_TIMEOUT:g} s (the ping stays in the outbox and will be retried)")
                finally:
                    nursery.cancel_scope.cancel()
        except RpcError as exc:
            why = runtime.dial_error(agent)
            if exc.reason != "TIMEOUT" or why is None:
                raise
            raise RpcError(exc.code, f"{exc.message}: {why}", exc.reason) from None
        if unreachable:
            raise RpcError(TIMEOUT, f"cannot reach {agent}: {unreachable[0]} (the ping stays in"
                           " the outbox and will be retried)", "UNREACHABLE")
