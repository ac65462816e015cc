"""The transactional outbox: messages written with the state change that causes them.

Jobs call :func:`enqueue` inside their transaction; the pump reads pending rows, and acks
delete them (or mark them failed with the peer's error).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

FAILED_KEPT = 1024  # rows of one peer's messages refused for good, the newest kept


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
) -> int:
    """Write a message; returns its ``seq`` (commit order, per database)."""
    return conn.execute(
        "INSERT INTO outbox (id, peer, address, target, action, body, created)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (message_id, peer, address, target, action, body, now_ms),
    ).lastrowid


def pending_to(conn: sqlite3.Connection, peer: str, after_seq: int, limit: int
               ) -> list[OutboxRow]:
    """One peer's pending messages after ``after_seq``, oldest first."""
    rows = conn.execute(
        "SELECT seq, id, peer, address, target, action, body, tries, created FROM outbox"
        " WHERE state = 'pending' AND peer = ? AND seq > ? ORDER BY seq LIMIT ?",
        (peer, after_seq, limit),
    ).fetchall()
    return [OutboxRow(*row) for row in rows]


def pending_ids_to(conn: sqlite3.Connection, peer: str, targets: Collection[str]
                   ) -> list[bytes]:
    """The ids of one peer's pending messages to ``targets``."""
    return [row[0] for row in conn.execute(
        "SELECT id FROM outbox WHERE state = 'pending' AND peer = ?"
        f" AND target IN ({', '.join('?' * len(targets))})", (peer, *targets))]


def pending_bodies_to(conn: sqlite3.Connection, peer: str, target: str,
                      actions: Collection[str]) -> list[tuple[bytes, bytes]]:
    """(id, body) of one peer's pending messages of ``target`` and ``actions``."""
    return [(row[0], row[1]) for row in conn.execute(
        "SELECT id, body FROM outbox WHERE state = 'pending' AND peer = ? AND target = ?"
        f" AND action IN ({', '.join('?' * len(actions))})", (peer, target, *actions))]


def count_pending_to(conn: sqlite3.Connection, peer: str, after_seq: int) -> int:
    return conn.execute(
        "SELECT count(*) FROM outbox WHERE state = 'pending' AND peer = ? AND seq > ?",
        (peer, after_seq)).fetchone()[0]


def expire_after(conn: sqlite3.Connection, peer: str, after_seq: int, targets: Collection[str],
                 expired: Callable[[str, str, int], bool]) -> int:
    """Delete the peer's pending rows after ``after_seq`` to ``targets`` that ``expired(target,
    action, created)`` says are past their time; returns how many."""
    rows = conn.execute(
        "SELECT id, target, action, created FROM outbox WHERE state = 'pending' AND peer = ?"
        f" AND seq > ? AND target IN ({', '.join('?' * len(targets))})",
        (peer, after_seq, *targets)).fetchall()
    gone = [(row[0],) for row in rows if expired(row[1], row[2], row[3])]
    conn.executemany("DELETE FROM outbox WHERE id = ?", gone)
    return len(gone)


def still_pending(conn: sqlite3.Connection, ids: Collection[bytes]) -> list[bytes]:
    """Which of these messages still wait to be sent or acked (an acked one may wait a
    moment longer: acked rows are deleted together)."""
    if not ids:
        return []
    marks = ", ".join("?" * len(ids))
    return [row[0] for row in conn.execute(
        f"SELECT id FROM outbox WHERE id IN ({marks}) AND state = 'pending'", tuple(ids))]


def delete(conn: sqlite3.Connection, ids: Iterable[bytes]) -> int:
    return conn.executemany("DELETE FROM outbox WHERE id = ?", ((i,) for i in ids)).rowcount


def prune_failed(conn: sqlite3.Connection, older_than_ms: int) -> int:
    """Forget messages the peer refused for good that were made before ``older_than_ms``:
    their rows say why (``error``) for a while, not for ever."""
    return conn.execute("DELETE FROM outbox WHERE state = 'failed' AND created < ?",
                        (older_than_ms,)).rowcount


def mark_failed(conn: sqlite3.Connection, message_id: bytes, error: str) -> OutboxRow | None:
    """Mark a message refused for good (by the peer, or withdrawn by us), with ``error``: its
    row keeps what it was and why, not its body (nothing sends it again), and only the
    newest ``FAILED_KEPT`` such rows of its peer are kept. A partner that refuses every
    chain message of ours has each repair resend a message of up to 100 blocks, which it
    refuses again: kept whole, each for ``prune_failed``'s 30 days, they grew by as much
    as the repair sends. Returns the row (its body gone), or None when no such message
    waits."""
    row = conn.execute(
        "UPDATE outbox SET state = 'failed', error = ?, body = x'' WHERE id = ?"
        " AND state = 'pending' RETURNING seq, id, peer, address, target, action, body, tries",
        (error, message_id),
    ).fetchone()
    if not row:
        return None
    conn.execute(
        "DELETE FROM outbox WHERE state = 'failed' AND peer = ? AND seq < (SELECT seq FROM"
        " outbox WHERE state = 'failed' AND peer = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
        (row[2], row[2], FAILED_KEPT - 1))
    return OutboxRow(*row)


def record_tries(conn: sqlite3.Connection, tries: Iterable[tuple[int, bytes]]) -> None:
    conn.executemany("UPDATE outbox SET tries = ? WHERE id = ?", tries)

def waiting_peers(conn: sqlite3.Connection) -> set[str]:
    """The peers we have something pending for."""
    return {row[0] for row in conn.execute(
        "SELECT DISTINCT peer FROM outbox WHERE state = 'pending'")}
