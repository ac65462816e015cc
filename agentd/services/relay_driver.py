"""The relay driver: views of this node's own ledger, one function per view kind.

In Weaver a driver is a separate process that queries the ledger for the source relay; here
the ledger is the node's own SQLite database, so the driver is a set of functions the source
side calls on the writer thread, inside the transaction that admits the query. Each returns
a plain map (the view payload, signed by the source) or raises :class:`ViewError`.

Views: ``node:info`` (always served: agent, name, network, users), ``user:<cuid>:balance``,
``tally:<uuid>``, ``tally:<uuid>:chits`` and ``lift:<uuid>``. The credit tables (``tallies``,
``chits``, ``lifts``) are read only when they exist, and a tally or lift view returns the
node's rows for that object column by column, so the driver follows their schema as it is:
tallies and lifts keyed by ``uuid``, chits by ``tally``, a holder's ``cuid`` and ``balance``
(integer milliCHIPs, from the holder's side) on each tally row. For the credit tables of
``store/migrations/004_credit.sql`` that means: a tally view has one row per holder on this
node (two when both partners are its users) with ``state``, ``side``, ``partner``,
``balance``, ``chain_length``/``chain_head``/``chain_conf`` and ``body``, the signed tally as
msgpack; a chits view has every holder's chits with ``issuer``, ``units``, ``state``,
``chain_index``/``chain_hash``, ``body`` (the signed chit as msgpack) and ``block`` (its
chain block as msgpack).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentd import __version__

if TYPE_CHECKING:
    from agentd.node import Node

NODE_INFO = "node.info"  # agentd's own view, besides the protocol's
NOT_FOUND = "NOT_FOUND"
UNAVAILABLE = "UNAVAILABLE"


class ViewError(Exception):
    """Why a view cannot be served; ``code`` is ``NOT_FOUND`` or ``UNAVAILABLE``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def read(conn: sqlite3.Connection, node: Node, kind: str, args: tuple[str, ...]) -> dict:
    """The payload of a parsed view, read from ``conn``."""
    return _READERS[kind](conn, node, *args)


def node_info(conn: sqlite3.Connection, node: Node) -> dict:
    users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    return {"agent": node.agent_id, "name": node.config.name, "network": node.config.network,
            "version": __version__, "users": users}


def user_balance(conn: sqlite3.Connection, node: Node, cuid: str) -> dict:
    if conn.execute("SELECT 1 FROM users WHERE cuid = ?", (cuid,)).fetchone() is None:
        raise ViewError(NOT_FOUND, f"no user {cuid!r} on this node")
    count, balance = 0, 0
    if _has_table(conn, "tallies"):
        count, balance = _query(
            conn, "tallies",
            "SELECT count(*), coalesce(sum(balance), 0) FROM tallies WHERE cuid = ?", (cuid,),
        )[0]
    return {"cuid": cuid, "balance": balance, "tallies": count}


def tally(conn: sqlite3.Connection, node: Node, uuid: str) -> dict:
    return {"tally": uuid, "rows": _tally_rows(conn, uuid)}


def tally_chits(conn: sqlite3.Connection, node: Node, uuid: str) -> dict:
    _tally_rows(conn, uuid)
    chits = []
    if _has_table(conn, "chits"):
        chits = _rows(conn, "chits", "SELECT * FROM chits WHERE tally = ?", (uuid,))
    return {"tally": uuid, "chits": chits}


def lift(conn: sqlite3.Connection, node: Node, uuid: str) -> dict:
    if not _has_table(conn, "lifts"):
        raise ViewError(NOT_FOUND, f"no lift {uuid} on this node (it keeps no lifts yet)")
    rows = _rows(conn, "lifts", "SELECT * FROM lifts WHERE uuid = ?", (uuid,))
    if not rows:
        raise ViewError(NOT_FOUND, f"no lift {uuid} on this node")
    return {"lift": uuid, "rows": rows}


def _tally_rows(conn: sqlite3.Connection, uuid: str) -> list[dict]:
    """The node's rows for a tally (two when both partners are users of this node)."""
    if not _has_table(conn, "tallies"):
        raise ViewError(NOT_FOUND, f"no tally {uuid} on this node (it keeps no tallies yet)")
    rows = _rows(conn, "tallies", "SELECT * FROM tallies WHERE uuid = ?", (uuid,))
    if not rows:
        raise ViewError(NOT_FOUND, f"no tally {uuid} on this node")
    return rows


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone() is not None


def _query(conn: sqlite3.Connection, table: str, sql: str, params: tuple) -> list[Any]:
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:  # a schema this driver does not understand
        raise ViewError(UNAVAILABLE, f"cannot read the {table} table: {exc}") from exc


def _rows(conn: sqlite3.Connection, table: str, sql: str, params: tuple) -> list[dict]:
    return [dict(row) for row in _query(conn, table, sql, params)]


_READERS: dict[str, Callable[..., dict]] = {
    NODE_INFO: node_info,
    "user.balance": user_balance,
    "tally": tally,
    "tally.chits": tally_chits,
    "lift": lift,
}
