"""Relay requests (destination side) and the nonce replay cache (source side).

Statuses are plain integers here: which transitions are allowed is the protocol's decision
(``protocol.relay.APPLIES_FROM``), passed in by the caller, so every update is a guarded
``UPDATE ... WHERE status IN (...)`` and a late or duplicate message changes nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence

from store.newest import keep_newest

_COLUMNS = (
    "request_id, status, source, address, nonce, confidential, required, query_id, deadline,"
    " view, result, signers, error, created, updated"
)


def _marks(values: Sequence[int]) -> str:
    return ", ".join("?" * len(values))


def insert(
    conn: sqlite3.Connection,
    *,
    request_id: str,
    status: int,
    source: str,
    address: str,
    nonce: str,
    confidential: bool,
    required: Sequence[str],
    query_id: bytes,
    deadline: int,
    now_ms: int,
) -> None:
    conn.execute(
        "INSERT INTO relay_requests (request_id, status, source, address, nonce, confidential,"
        " required, query_id, deadline, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (request_id, status, source, address, nonce, int(confidential), ",".join(required),
         query_id, deadline, now_ms, now_ms),
    )


def get(conn: sqlite3.Connection, request_id: str) -> sqlite3.Row | None:
    return conn.execute(f"SELECT {_COLUMNS} FROM relay_requests WHERE request_id = ?",
                        (request_id,)).fetchone()


def transition(
    conn: sqlite3.Connection,
    request_id: str,
    status: int,
    applies_from: Iterable[int],
    now_ms: int,
    *,
    view: bytes | None = None,
    result: bytes | None = None,
    signers: Sequence[str] | None = None,
    error: str | None = None,
) -> bool:
    """Move a request to ``status`` if it is in one of ``applies_from``; True if it moved.

    The outcome columns are set as given, so a move to DELETED clears them.
    """
    sources = sorted(applies_from)
    if not sources:
        return False
    cursor = conn.execute(
        "UPDATE relay_requests SET status = ?, view = ?, result = ?, signers = ?, error = ?,"
        f" updated = ? WHERE request_id = ? AND status IN ({_marks(sources)})",
        (status, view, result, None if signers is None else ",".join(signers), error, now_ms,
         request_id, *sources),
    )
    return cursor.rowcount == 1


def overdue(
    conn: sqlite3.Connection, statuses: Sequence[int], now_ms: int
) -> list[sqlite3.Row]:
    """Requests still in one of ``statuses`` whose deadline has passed."""
    return conn.execute(
        "SELECT request_id, status, query_id, deadline, created FROM relay_requests"
        f" WHERE status IN ({_marks(statuses)}) AND deadline <= ?",
        (*statuses, now_ms),
    ).fetchall()


def next_deadline(conn: sqlite3.Connection, statuses: Sequence[int]) -> int | None:
    """The earliest deadline among requests in ``statuses``, if any."""
    return conn.execute(
        f"SELECT min(deadline) FROM relay_requests WHERE status IN ({_marks(statuses)})",
        tuple(statuses),
    ).fetchone()[0]


def retire(
    conn: sqlite3.Connection, status: int, applies_from: Sequence[int], before_ms: int,
    now_ms: int,
) -> list[str]:
    """Move requests last updated before ``before_ms`` to ``status`` (DELETED), clearing
    their outcome; returns their ids."""
    rows = conn.execute(
        "UPDATE relay_requests SET status = ?, view = NULL, result = NULL, signers = NULL,"
        f" error = NULL, updated = ? WHERE status IN ({_marks(applies_from)}) AND updated < ?"
        " RETURNING request_id",
        (status, now_ms, *applies_from, before_ms),
    ).fetchall()
    return [row[0] for row in rows]


def prune(conn: sqlite3.Connection, status: int, before_ms: int) -> int:
    """Physically remove requests in ``status`` (DELETED) since before ``before_ms``."""
    return conn.execute(
        "DELETE FROM relay_requests WHERE status = ? AND updated < ?", (status, before_ms)
    ).rowcount


def record_nonce(
    conn: sqlite3.Connection, requestor: str, nonce: str, request_id: str, now_ms: int
) -> bool:
    """Remember that ``requestor`` used ``nonce``; False when it had already been used."""
    cursor = conn.execute(
        "INSERT OR IGNORE INTO relay_nonces (requestor, nonce, request_id, seen)"
        " VALUES (?, ?, ?, ?)",
        (requestor, nonce, request_id, now_ms),
    )
    return cursor.rowcount == 1


def trim_nonces(conn: sqlite3.Connection, requestor: str, keep: int) -> int:
    """Forget ``requestor``'s nonces past its newest ``keep``; how many went."""
    return keep_newest(conn, "relay_nonces", "requestor", requestor, ("seen", "nonce"), keep)


def prune_nonces(conn: sqlite3.Connection, before_ms: int) -> int:
    return conn.execute("DELETE FROM relay_nonces WHERE seen < ?", (before_ms,)).rowcount


# --- source side: what the relay driver reads of the ledger ---------------------------------


def user_totals(conn: sqlite3.Connection, cuid: str) -> tuple[int, int]:
    """How many tallies user ``cuid`` holds and its net balance over them."""
    count, balance = conn.execute(
        "SELECT count(*), coalesce(sum(balance), 0) FROM tallies WHERE cuid = ?", (cuid,)
    ).fetchone()
    return count, balance


def tally_holders(conn: sqlite3.Connection, uuid: str) -> list[sqlite3.Row]:
    """This node's rows for a tally: one per holder (two when both users are ours)."""
    return conn.execute(
        "SELECT cuid, side, state, partner, body, balance, chain_length, chain_head, chain_conf"
        " FROM tallies WHERE uuid = ? ORDER BY side", (uuid,),
    ).fetchall()


def holder_chits(conn: sqlite3.Connection, uuid: str, cuid: str) -> Iterator[sqlite3.Row]:
    """The chits of one holder of a tally, in chain order (the unordered ones last), read as
    they are taken: a reader that has enough stops reading."""
    return iter(conn.execute(
        "SELECT body, state, chain_index, chain_hash FROM chits WHERE tally = ? AND cuid = ?"
        " ORDER BY chain_index IS NULL, chain_index, seq", (uuid, cuid),
    ))


def holder_chit_count(conn: sqlite3.Connection, uuid: str, cuid: str) -> int:
    return conn.execute("SELECT count(*) FROM chits WHERE tally = ? AND cuid = ?",
                        (uuid, cuid)).fetchone()[0]
