"""A relay request's states as the destination groups them, and the one log line per change
of one (shared by the service, its sweep and the clients' RPC methods)."""

from __future__ import annotations

import logging

from agentd.logs import event
from protocol.relay import Status

log = logging.getLogger("agentd.relay")

PENDING = (Status.PENDING_ACK, Status.PENDING)
FINAL = (Status.COMPLETED, Status.ERROR)


def changed(request_id: str, status: Status, **fields: object) -> None:
    """The one info line per state change of a relay request."""
    event(log, "relay request", request=request_id, state=status.name, **fields)
