"""Counters shown by ``getinfo``: traffic, handshakes, and rejected connections by reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

BY_KEY = ("rejected", "refusals", "peer_refusals")  # the counters kept by reason or code
# distinct codes of peers' refusals counted apart: a peer picks its codes, so the rest of
# them count together, as "other"
PEER_CODES = 64


@dataclass
class Counters:
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    handshakes_ok: int = 0
    handshakes_failed: int = 0
    messages_processed: int = 0
    duplicates: int = 0
    acks_in: int = 0
    rejected_by_peer: int = 0
    no_route: int = 0  # send attempts to a peer with no channel and no address we may dial
    outbox_expired: int = 0  # messages dropped undelivered once no longer worth it
    outbox_dropped: int = 0  # replies to a stranger dropped past its queue's bound
    unacked_failures: int = 0  # messages we could not commit: left unacked for a retry
    deferred: int = 0  # messages that depend on one not here yet: left unacked for a retry
    rationed: int = 0  # strangers' messages held back past their write allowance (WriteRation)
    lift_equivocations: int = 0  # lifts whose referee signed both good and void, proven here
    evidence_refused: int = 0  # evidence logs the clearing house refused (receipts.verify)
    rejected: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)  # rejected["refused"] by code
    # rejected_by_peer by code: which refusals a peer's answers were (OVER_LIMIT, ...)
    peer_refusals: Counter[str] = field(default_factory=Counter)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def peer_refused(self, code: str) -> None:
        """One more of our messages refused for good by a peer, with ``code``."""
        self.rejected_by_peer += 1
        codes = self.peer_refusals
        codes[code if code in codes or len(codes) < PEER_CODES else "other"] += 1

    def to_map(self) -> dict:
        out = {k: v for k, v in vars(self).items() if k not in BY_KEY}
        out.update({name: dict(sorted(getattr(self, name).items())) for name in BY_KEY})
        return out
