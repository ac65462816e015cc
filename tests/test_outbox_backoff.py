"""Only ack timeouts lengthen a message's next wait: one resent because its channel was lost
waits as long as a first send, however many channels it has lost."""

from __future__ import annotations

import trio

from agentd.runtime.outgoing import ACK_TIMEOUT_MAX
from tests.netfixture import network, wait_for
from tests.test_credit_service import rpc


async def test_a_message_resent_after_lost_channels_keeps_its_wait(tmp_path):
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes[0], net.nodes[1]

        async def swallow(channel, body):  # b reads frames and never acks them
            return None

        b.peers._on_frame = swallow
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: rpc(a, "peers.ping", agent=b.agent_id))
            await wait_for(lambda: len(a.pump._inflight) == 1)
            [item] = a.pump._inflight.values()
            for lost in range(1, 4):
                assert item.tries == lost
                waited = item.due - item.sent
                item.channel.close("cut")  # the channel goes, the ack never came
                await wait_for(lambda n=lost: item.tries == n + 1 and item.id in a.pump._inflight)
            assert item.timeouts == 0
            assert item.due - item.sent <= 1.5 * waited  # jitter, not a doubling per loss
            assert item.due - item.sent < ACK_TIMEOUT_MAX
            nursery.cancel_scope.cancel()
