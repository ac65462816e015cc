"""What ``getinfo`` and ``peers.list`` say of a node: read from it, one function each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentd import __version__
from store import peers as peer_store

if TYPE_CHECKING:
    from agentd.runtime.node import Node


def getinfo(node: Node) -> dict[str, Any]:
    """The node's identity, address, uptime, connected peers and traffic counters."""
    return {
        "name": node.config.name,
        "agent": node.agent_id,
        "address": str(node.own_address()),
        "listen": node.bound_address,
        "metrics": node.metrics.address,
        "network": node.config.network,
        "roles": list(node.config.roles),
        "version": __version__,
        "uptime_s": round(node.clock.monotonic() - node.started_monotonic, 3),
        "peers": len(node.peers.channels),
        "counters": {**node.counters.to_map(), "outbox_depth": node.pump.depth_if_readable(),
                     "db_commits": node.db.commits, "db_jobs": node.db.jobs,
                     "db_errors": node.db.errors, "strangers": len(node.strangers),
                     "strangers_evicted": node.strangers.evicted,
                     "inbox_trimmed": node.inbox_bound.trimmed,
                     "handshakes_in_progress": len(node.peers.handshakes),
                     "channels": node.peers.channel_count(),
                     "partial_frame_bytes": node.peers.budget.total,
                     "stranger_frame_bytes": node.decoding.used},
        "last_db_error": node.db.last_error,
        "last_db_error_at": node.db.last_error_at,
    }


def peers(node: Node) -> list[dict[str, Any]]:
    """Configured and learned peers: where each came from (source: config or learned) and
    whether a channel is open now."""
    rows = {row["agent"]: row for row in node.db.reading(peer_store.all_peers)}
    agents = set(rows) | node.addressed() | set(node.peers.channels)
    out, now = [], node.clock.now_ms()
    for agent in sorted(agents, key=lambda a: (node.name_of(a) or "~", a)):
        row = rows.get(agent)
        connected = node.peers.connected(agent)
        out.append({
            "name": node.name_of(agent),  # what the database keeps, and more
            "agent": agent,
            "address": node.address_of(agent) or (row["address"] if row else None),
            "source": node.peer_source(agent),
            "connected": connected,
            "last_seen": now if connected else (row["last_seen"] if row else None),
            "clock_ahead_ms": node.clocks.ahead_ms(agent),
        })
    return out
