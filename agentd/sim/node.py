"""``python -m agentd.sim.node -c CONFIG``: ``agentd run`` with simulated link faults.

``agentd sim --processes`` starts its nodes with this when the scenario has ``delay`` or
``loss`` faults: the same node as ``agentd run`` (same code, signals and control socket),
with :class:`agentd.runtime.links.Links` installed and one more method on the control
socket, ``sim.links``, by which the sim puts a link fault in force and heals it. It is not
part of ``agentd run``: a node started any other way has neither.
"""

from __future__ import annotations

import sys
from typing import Any

from agentd.errors import UserError
from agentd.rpc import invalid_params
from agentd.runtime.links import Links, Rule

METHOD = "sim.links"


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


def main() -> int:
    from agentd.cli import run_node

    try:
        return run_node(sys.argv[1:], install)
    except UserError as exc:  # as agentd run says it (the sim points at this node's log)
        print(f"agentd: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
