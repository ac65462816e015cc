"""How long each kind of message is worth delivering.

A pong or a relay answer nobody took within minutes is worthless, and keeping it would let
a stranger who never acks fill our outbox; a chit or a tally message is never dropped, nor is
a lift's promise, commit or cancel. The outbox drops a message whose time has passed (counted
as ``outbox_expired``). Time is a parameter: callers pass the creation time and now, in ms.
"""

from __future__ import annotations

MINUTE_MS = 60_000

# (target, action) -> ms; (target, None) covers a target's other actions; absent: never.
EXPIRY_MS: dict[tuple[str, str | None], int] = {
    ("node", "pong"): MINUTE_MS // 2,   # its ping's caller gave up after 10 s
    ("node", "ping"): 5 * MINUTE_MS,
    ("relay", None): 5 * MINUTE_MS,     # queries and answers wait at most minutes
    ("route", None): MINUTE_MS,         # a route search lasts seconds (30 s at the most)
    ("ch", "processed"): 60 * MINUTE_MS,  # receipts: the client may reconnect to take them
    ("ch", "processed_batch"): 60 * MINUTE_MS,
    ("ch", "result"): 60 * MINUTE_MS,
    ("ch", "rejection"): 60 * MINUTE_MS,
    # a referee's decision: a participant still pending after the deadline asks the referee,
    # which answers from the decision it keeps, so nothing is lost when a push is dropped (a
    # path node that never answers, or one that does not exist, costs us no row for good)
    ("lift", "decision"): 60 * MINUTE_MS,
    # a question to the referee is asked again at least once a minute while the lift is
    # pending: an old one that is still undelivered is worth nothing
    ("lift", "query"): 2 * MINUTE_MS,
}


EXPIRING_TARGETS = frozenset(target for target, _ in EXPIRY_MS)  # the others never expire


def expires_at(target: str, action: str, created_ms: int) -> int | None:
    """When a message created at ``created_ms`` stops being worth delivering (None: never)."""
    ttl = EXPIRY_MS.get((target, action), EXPIRY_MS.get((target, None)))
    return None if ttl is None else created_ms + ttl


__all__ = ["EXPIRING_TARGETS", "EXPIRY_MS", "expires_at"]
