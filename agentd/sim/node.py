"""``python -m agentd.sim.node -c CONFIG``: ``agentd run`` with simulated network faults.

``agentd sim --processes`` starts its nodes with this when the scenario has ``cut``,
``partition``, ``delay`` or ``loss`` faults: the same node as ``agentd run`` (same code,
signals and control socket), with :class:`agentd.runtime.links.Links` installed and more
methods on the control socket, by which the sim puts a fault in force and heals it:
``sim.links`` (delay and loss on the link to one peer), ``sim.cut`` (close one live channel)
and ``sim.partition`` (the agents this node may not reach; none heals it). They are not part
of ``agentd run``: a node started any other way has none of them.
"""

from __future__ import annotations

import random
import sys
from typing import Any

from agentd.errors import UserError
from agentd.rpc import invalid_params
from agentd.runtime.links import Links, Rule
from agentd.runtime.peers import PeerUnreachable

METHOD = "sim.links"
CUT = "sim.cut"
PARTITION = "sim.partition"


def install(node: Any) -> None:
    """Give ``node`` its link faults and the method that sets them."""
    links = node.links = Links()

    async def rpc_links(peer: str | None = None, fault: str | None = None,
                        rule: dict | None = None) -> dict:
        """Put ``rule`` (ms, jitter_ms, loss) in force on the link to agent ``peer`` as
        ``fault``, or heal that fault (no rule); with no peer, only report the counts."""
        if peer is not None:
            if not isinstance(peer, str) or not isinstance(fault, str):
                raise invalid_params("peer and fault must be text")
            try:
                links.set(peer, fault, None if rule is None else Rule(**rule))
            except TypeError as exc:
                raise invalid_params(f"rule: {exc}") from exc
        return links.counts()

    node.register_method(METHOD, rpc_links)
    apart: set[str] = set()  # agents across the partition in force
    guarded: list[bool] = []

    def guard() -> None:
        """Make the node refuse to dial across the partition (once: the peers exist only
        once the node runs, and live as long as the process)."""
        if guarded:
            return
        dial = node.peers.connect

        async def connect(agent: str, address: str | None) -> Any:
            if agent in apart:
                raise PeerUnreachable(f"partitioned from {agent[:8]} (sim fault)")
            return await dial(agent, address)

        node.peers.connect = connect
        guarded.append(True)

    async def rpc_cut(seed: int = 0) -> str | None:
        """Close one random live channel (``seed`` picks it); the peer's agent, or null when
        this node has none."""
        live = sorted(((agent, channel) for agent, channels in node.peers.channels.items()
                       for channel in channels if channel.alive), key=lambda pair: pair[0])
        if not live:
            return None
        agent, channel = random.Random(seed).choice(live)
        channel.close("sim_cut")
        return agent

    async def rpc_partition(agents: list[str] | None = None) -> dict:
        """Refuse to reach ``agents`` (and close the channels with them) until called again;
        none, or an empty list, heals the partition."""
        guard()
        apart.clear()
        apart.update(agents or ())
        for agent in apart:
            for channel in list(node.peers.channels.get(agent, ())):
                channel.close("sim_partition")
        return {"apart": len(apart)}

    node.register_method(CUT, rpc_cut)
    node.register_method(PARTITION, rpc_partition)


def main() -> int:
    from agentd.cli import run_node

    try:
        return run_node(sys.argv[1:], install)
    except UserError as exc:  # as agentd run says it (the sim points at this node's log)
        print(f"agentd: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
