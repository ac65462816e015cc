"""Evidence bound to an agent that is no longer this node's clearing house moves to the one
configured now: at start, and when a reload changes ``[clearinghouse]``.

Each evidence request is bound, in ``ch_requests.ch``, to the clearing house configured when it
was made. A mistyped ``[clearinghouse] agent`` (an agent no node has, or a node without the
role) would keep it there for ever, unanswered; and a clearing house replaced on purpose
should get what the old one never answered. So before the sender next sends, evidence with no
receipt yet goes to the configured clearing house instead:

- its logs wait again (``waiting``), bound to the new house, and go in the next batch; their
  messages still in the outbox to the old agent are withdrawn (marked failed, with why), so
  it is not dialled for them any more. A log the old house received but never answered may
  be in its chain as well: the new house then holds it too, and this node its receipt;
- the process each log goes to is asked of the new house with the owners it was first asked
  for (``ch_client_processes.owners``; one made before they were kept gets this node alone),
  unless the new house has it already; the old house's process state and creation request
  are dropped.

What does not move: receipts stored from the old house (they are its valid receipts, and
``receipts.verify`` checks them against its JWKS), the question for its JWKS they may wait on,
and evidence it refused (its verdict). ``ch.*`` RPC calls are not moved either: a user made
each of them at the clearing house of the moment, their callers were answered (a timeout at
worst) and can call again, and an answer to a query nobody waits for is worth nothing. Those
whose message never left are withdrawn, and forgotten, so the old agent is not dialled for
them; one that was delivered may still be answered by the house it went to.

When the clearing house configured now is this node itself (a clearing house that named
another), its moved logs take the path its own evidence always takes (``ClearingService.
log_own``): each is appended to its own log in the move's transaction, to a process made
with the owners first asked for, and its receipt stored at once. Sent as messages to itself,
they went round its outbox and inbox as create_process and log_batch with their answers
(delivered locally, and answered correctly, but as a stranger's requests would be: four
messages and commits, and a create_process refused as a duplicate when evidence of the same
process had been appended directly meanwhile). A log that is not ours to append to (a
process of that pid made by others without us) still goes as a request, refused and recorded
like any other. The move runs when the sender next sends (within a second of the reload):
evidence logged in that second is appended before the moved logs, as a clearing house
appends in the order logs reach it.

With no clearing house configured any more, nothing moves: the evidence stays pending, bound
to the agent it was sent to, is logged as waiting, and ``receipts.verify`` lists it in
``pending_detail`` as waiting for a clearing house that is not configured.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from typing import TYPE_CHECKING

from agentd.runtime.context import Tx
from protocol import clearing as ch
from protocol.codec import pack, unpack
from protocol.messages import Send
from store import clearing as store
from store import outbox

if TYPE_CHECKING:
    from agentd.services.clearing.client import OwnHouse
    from protocol.keys import ChipAddress

log = logging.getLogger("agentd.evidence")


def move_evidence(tx: Tx, house: ChipAddress | None, config: str,
                  own: OwnHouse | None = None) -> bool:
    """Bind the evidence not answered yet to ``house``, this node's clearing house (None: there
    is none; ``config`` names the file in the log); whether any moved (its processes are then
    being created, or its logs wait to go). ``own``: ``house`` is this node, which appends
    the logs to its own log with it."""
    conn = tx.conn
    rows = store.evidence_elsewhere(conn, None if house is None else house.agent)
    waits = Counter(row["ch"][:8] for row in rows if row["action"] == "log")
    if house is None:
        if waits:
            log.warning("no [clearinghouse] in %s: %d evidence logs stay pending, bound to the "
                        "agents they were sent to (%s), until one is configured (then reload)",
                        config, waits.total(), _by_agent(waits))
        return False
    _withdraw_calls(tx, house.agent)
    if not rows:
        return False
    _withdraw(tx, {row["id"][:16] for row in rows if row["id"] is not None},
              f"evidence moved to the clearing house {house.agent} ([clearinghouse] changed)")
    owners: dict[str, list[str]] = {}
    for row in rows:
        if row["action"] != "log":
            store.delete_request(conn, row["seq"])
        known = store.forget_client_process(conn, row["ch"], row["pid"])
        if known is not None:
            owners[row["pid"]] = known
    first: dict[str, sqlite3.Row] = {}  # each process's first log that moves as a request
    for row in rows:
        if row["action"] != "log":
            continue
        if own is not None and own(tx, unpack(row["object"]), owners.get(row["pid"], []),
                                   row["kind"], row["ref"]):
            store.delete_request(conn, row["seq"])  # answered: its receipt is stored
            continue
        store.move_log(conn, row["seq"], house.agent)
        first.setdefault(row["pid"], row)
    for pid, row in first.items():
        if store.client_process(conn, house.agent, pid) is None:
            _create(tx, house, row, owners.get(pid, []))
    log.warning("%d evidence logs bound to agents that are not the clearing house (%s) moved "
                "to the clearing house %s", waits.total(), _by_agent(waits), house.agent[:8])
    return True


def _by_agent(counts: Counter[str]) -> str:
    return ", ".join(f"{n} to {agent}" for agent, n in counts.items())


def _create(tx: Tx, house: ChipAddress, log_row: sqlite3.Row, owner_ids: list[str]) -> None:
    """Ask ``house`` to create the process of the moved log ``log_row`` (as ``Evidence.log``
    does, under the log's kind and ref: the request is evidence)."""
    pid = log_row["pid"]
    obj = {"pid": pid, "owners": owner_ids}
    message_id = tx.send(Send(house, ch.TARGET, "create_process", obj))
    store.add_request(
        tx.conn, message_id=message_id, ch=house.agent, action="create_process", pid=pid,
        kind=log_row["kind"], ref=log_row["ref"], payload_sha256=None, state="sent",
        now_ms=tx.now_ms, obj=pack(obj),
    )  # fmt: skip
    store.set_client_process(tx.conn, house.agent, pid, "creating", owner_ids)


def _withdraw_calls(tx: Tx, house: str) -> None:
    """Withdraw the ``ch.*`` calls to another agent that never left, and forget them."""
    calls = store.calls_undelivered_elsewhere(tx.conn, house)
    for row in calls:
        store.delete_request(tx.conn, row["seq"])
    _withdraw(tx, {row["id"] for row in calls},
              f"a ch.* call to a former clearing house ([clearinghouse] is now {house})")
    if calls:
        log.warning("%d ch.* calls never delivered to a former clearing house were withdrawn",
                    len(calls))


def _withdraw(tx: Tx, message_ids: set[bytes], reason: str) -> None:
    for message_id in outbox.still_pending(tx.conn, message_ids):
        tx.withdraw(message_id, reason)


__all__ = ["move_evidence"]
