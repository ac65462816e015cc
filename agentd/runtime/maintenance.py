"""What a node keeps 30 days and then forgets, hourly (``Node._maintenance``)."""

from __future__ import annotations

import logging

from store import Database, inbox, outbox
from store import clearing as clearing_store
from store import lifts as lift_store

log = logging.getLogger("agentd.runtime.node")  # its lines are the node's


async def prune_kept(db: Database, cutoff: int) -> None:
    """Forget, from before ``cutoff`` (ms): processed-message ids (the dedup window), our
    messages peers refused for good (their reasons are in the log), ``ch.*`` calls the
    clearing house never answered (its answer expired within an hour; the caller was told
    it timed out), lifts that went void, with their void chits (their promises expired within
    a day), and the void decisions we made as a referee on records whose deadline passed
    then (asked again, a referee can only decide void)."""
    ids, refused, calls, void, decisions = await db.write(lambda conn: (
        inbox.prune(conn, cutoff), outbox.prune_failed(conn, cutoff),
        clearing_store.prune_unanswered_calls(conn, cutoff),
        lift_store.prune_void(conn, cutoff), lift_store.prune_void_decisions(conn, cutoff)))
    if ids or refused or calls or void or decisions:
        log.info("pruned %d inbox ids, %d refused outbox messages, %d unanswered ch.* "
                 "calls, %d void lifts and %d void referee decisions older than 30 days",
                 ids, refused, calls, void, decisions)
