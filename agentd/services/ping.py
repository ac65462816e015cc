"""The ``node`` target: ping and pong, the round trip behind ``peers.ping`` and the demo.

``note`` is a one-way message that needs no reply: the receiver only records it (the inbox
does that), which makes it the unit of the durable-delivery benchmark.

A ping goes through the whole delivery path — outbox row, Noise channel, inbox, the pong
queued in the receiver's transaction, its ack — so its latency is that of every message.
"""

from __future__ import annotations

from agentd.rpc import NOT_FOUND, RpcError, invalid_params
from agentd.rpc_types import shown
from agentd.runtime.context import Reject, Runtime, Service, Tx
from agentd.runtime.replies import answer_from
from protocol.envelope import Envelope
from protocol.keys import ChipAddress, agent_id_problem, parse_hostport
from protocol.messages import Send

PING_TIMEOUT = 10.0


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

            await answer_from(runtime, agent, await runtime.transact(work), PING_TIMEOUT,
                              late=f"no pong from {agent} within {PING_TIMEOUT:g} s",
                              kept="the ping stays in the outbox and will be retried")
            rtts.append(round((runtime.clock.monotonic() - started) * 1000, 3))
        return {"rtt_ms": rtts}
