"""The relay driver: views of this node's own ledger, one function per view kind.

In Weaver a driver is a separate process that queries the ledger for the source relay; here
the ledger is the node's own SQLite database, so the driver is a set of functions the source
side calls on the writer thread, inside the transaction that admits the query. Each returns
a plain map (the view payload, signed by the source) or raises :class:`ViewError`.

Views:

- ``node:info``: agent, name, network, version, number of users;
- ``user:<cuid>:balance``: the user's net balance over its tallies (milliCHIPs);
- ``tally:<uuid>``: the signed tally as both users signed it, and for each holder on this
  node its side, state, partner, balance and chain (index, head, confirmed index);
- ``tally:<uuid>:chits``: the signed chits of one holder, in chain order, each with its
  state, chain index and block hash (the unordered ones last);
- ``lift:<uuid>``: a lift this node took part in or refereed: the payor's signed record, its
  state here, the referee's signed decision (once known), the referee's contradicting
  decision when it signed both good and void (the proof this node holds) and this node's
  chits of it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

from agentd import __version__
from agentd.services.credit.lift_views import chits_here
from protocol.codec import unpack
from protocol.errors import Refusal
from store import lifts, users
from store import relay as relay_store

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime

NODE_INFO = "node.info"  # agentd's own view, besides the protocol's
NOT_FOUND = "NOT_FOUND"
UNAVAILABLE = "UNAVAILABLE"
MAX_PAYLOAD = 512 * 1024  # a view's payload must fit in one frame at the default max_frame
CHIT_FIELDS = 96  # what a chit of the chits view holds besides its body: an upper bound
SMALLEST_CHIT = 200  # bytes a chit takes in the view at the least (a signed body alone)


class ViewError(Refusal):
    """Why a view cannot be served; ``code`` is ``NOT_FOUND`` or ``UNAVAILABLE``."""


def read(conn: sqlite3.Connection, node: Runtime, kind: str, args: tuple[str, ...]) -> dict:
    """The payload of a parsed view, read from ``conn``."""
    return _READERS[kind](conn, node, *args)


def node_info(conn: sqlite3.Connection, node: Runtime) -> dict:
    return {"agent": node.agent_id, "name": node.config.name, "network": node.config.network,
            "version": __version__, "users": users.count(conn)}


def user_balance(conn: sqlite3.Connection, node: Runtime, cuid: str) -> dict:
    if not users.exists(conn, cuid):
        raise ViewError(NOT_FOUND, f"no user {cuid!r} on this node")
    count, balance = relay_store.user_totals(conn, cuid)
    return {"cuid": cuid, "balance": balance, "tallies": count}


def tally(conn: sqlite3.Connection, node: Runtime, uuid: str) -> dict:
    rows = _holders(conn, uuid)
    return {
        "tally": uuid,
        "signed": unpack(rows[0]["body"]),
        "holders": [
            {"cuid": row["cuid"], "side": row["side"], "state": row["state"],
             "partner": row["partner"], "balance": row["balance"],
             "chain": {"index": row["chain_length"], "head": row["chain_head"],
                       "confirmed": row["chain_conf"]}}
            for row in rows
        ],
    }


def tally_chits(conn: sqlite3.Connection, node: Runtime, uuid: str) -> dict:
    """Read only while the view can still fit in an answer, and not at all when its chits
    cannot: a tally of 50,000 chits, read whole and refused only once encoded, cost 0.7 s of
    the writer and 50 MB a query, and 68 ms read until they could not fit (the rows come
    sorted, so the first came after all of them)."""
    holder = _holders(conn, uuid)[0]["cuid"]
    count = relay_store.holder_chit_count(conn, uuid, holder)  # by index, before the sort

    def too_large() -> ViewError:
        return ViewError(UNAVAILABLE, f"the view of tally {uuid}'s {count} chits is more than "
                         f"the {MAX_PAYLOAD} bytes a relay answer may carry (tally:{uuid} "
                         "shows its balance and chain)")

    if count * SMALLEST_CHIT > MAX_PAYLOAD:  # the first row came after sorting them all
        raise too_large()
    chits, size = [], 0
    for row in relay_store.holder_chits(conn, uuid, holder):
        size += len(row["body"]) + CHIT_FIELDS
        if size > MAX_PAYLOAD:
            raise too_large()
        chits.append({"chit": unpack(row["body"]), "state": row["state"],
                      "index": row["chain_index"], "hash": row["chain_hash"]})
    return {"tally": uuid, "holder": holder, "chits": chits}


def lift(conn: sqlite3.Connection, node: Runtime, uuid: str) -> dict:
    row = lifts.get(conn, uuid)
    if row is not None:
        return {"lift": uuid, "record": lifts.record_of(row), "state": row["state"],
                "decision": lifts.decision_of(row),
                "equivocation": lifts.contradiction_of(row),
                "chits": chits_here(conn, uuid)}
    refereed = lifts.refereed(conn, uuid)
    if refereed is None:
        raise ViewError(NOT_FOUND, f"no lift {uuid} on this node")
    record, decided = refereed
    return {"lift": uuid, "record": record, "state": decided["state"], "decision": decided,
            "equivocation": None, "chits": []}


def _holders(conn: sqlite3.Connection, uuid: str) -> list[sqlite3.Row]:
    """The node's rows for a tally: one per holder (two when both users are ours)."""
    rows = relay_store.tally_holders(conn, uuid)
    if not rows:
        raise ViewError(NOT_FOUND, f"no tally {uuid} on this node")
    return rows


_READERS: dict[str, Callable[..., dict]] = {
    NODE_INFO: node_info,
    "user.balance": user_balance,
    "tally": tally,
    "tally.chits": tally_chits,
    "lift": lift,
}
