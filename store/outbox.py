"""The transactional outbox: messages written with the state change that causes them.

Jobs call :func:`enqueue` inside their transaction; the pump reads pending rows, and acks
delete them (or mark them failed with the peer's error).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    id: bytes
    peer: str
    address: str | None
    target: str
    action: str
    body: bytes
    tries: int
    created: int = 0


def enqueue(
    conn: sqlite3.Connection,
    *,
    message_id: bytes,
    peer: str,
    address: str | None,
    target: str,
    action: str,
    body: bytes,
    now_ms: int,
) -> None:
    conn.execute(
        "INSERT INTO outbox (id, peer, address, target, action, body, created)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (message_id, peer, address, target, action, body, now_ms),
    )


def pending(conn: sqlite3.Connection, after_seq: int = 0, limit: int = 1000) -> list[OutboxRow]:
    rows = conn.execute(
        "SELECT seq, id, peer, address, target, action, body, tries, created FROM outbox"
        " WHERE state = 'pending' AND seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    return [OutboxRow(*row) for row in rows]


def delete(conn: sqlite3.Connection, ids: Iterable[bytes]) -> int:
    return conn.executemany("DELETE FROM outbox WHERE id = ?", ((i,) for i in ids)).rowcount


def prune_failed(conn: sqlite3.Connection, older_than_ms: int) -> int:
    """Forget messages the peer refused for good that were made before ``older_than_ms``:
    their rows say why (``error``) for a while, not for ever."""
    return conn.execute("DELETE FROM outbox WHERE state = 'failed' AND created < ?",
                        (older_than_ms,)).rowcount


def mark_failed(conn: sqlite3.Connection, message_id: bytes, error: str) -> OutboxRow | None:
    row = conn.execute(
        "UPDATE outbox SET state = 'failed', error = ? WHERE id = ? AND state = 'pending'"
        " RETURNING seq, id, peer, address, target, action, body, tries",
        (error, message_id),
    ).fetchone()
    return OutboxRow(*row) if row else None


def record_tries(conn: sqlite3.Connection, tries: Iterable[tuple[int, bytes]]) -> None:
    conn.executemany("UPDATE outbox SET tries = ? WHERE id = ?", tries)

def waiting_peers(conn: sqlite3.Connection) -> set[str]:
    """The peers we have something pending for."""
    return {row[0] for row in conn.execute(
        "SELECT DISTINCT peer FROM outbox WHERE state = 'pending'")}
