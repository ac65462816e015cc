"""Steps the demo's tours share: wait for something to happen, open a tally between two
users (each through its node's control socket, as ``agentd -c CONFIG METHOD`` would)."""

from __future__ import annotations

import time
from pathlib import Path

from agentd.errors import UserError
from agentd.rpc import call

SETTLE_TIMEOUT = 10.0


def until(what: str, predicate) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise UserError(f"demo: {what} did not happen within {SETTLE_TIMEOUT:g} s")
        time.sleep(0.02)


def open_tally(a: Path, a_cuid: str, b: Path, b_cuid: str, limit: int = 100_000) -> str:
    """Invite, request, offer, accept: the tally's uuid once both holders are open."""
    invited = call(a, "tally.invite", {"cuid": a_cuid, "limit": limit})
    tally = invited["tally"]
    call(b, "tally.request", {"cuid": b_cuid, "ticket": invited["ticket"]})
    call(a, "tally.offer", {"cuid": a_cuid, "tally": tally})
    until(f"{b_cuid} receiving the offer", lambda: call(  # requested until it comes
        b, "tally.show", {"cuid": b_cuid, "tally": tally})["state"] == "P.offer")
    call(b, "tally.accept", {"cuid": b_cuid, "tally": tally})
    until("both sides opening the tally", lambda: all(
        call(sock, "tally.show", {"cuid": cuid, "tally": tally})["state"] == "open"
        for sock, cuid in ((a, a_cuid), (b, b_cuid))))
    return tally


