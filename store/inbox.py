"""The inbox: ids of processed messages, so redelivery is acked and ignored."""

from __future__ import annotations

import sqlite3

from store.newest import keep_newest


def claim(conn: sqlite3.Connection, message_id: bytes, peer: str, now_ms: int) -> bool:
    """Record ``message_id`` as processed; False when it already was (a duplicate)."""
    cursor = conn.execute(
        "INSERT OR IGNORE INTO inbox (id, peer, received) VALUES (?, ?, ?)",
        (message_id, peer, now_ms),
    )
    return cursor.rowcount == 1


def prune(conn: sqlite3.Connection, older_than_ms: int) -> int:
    return conn.execute("DELETE FROM inbox WHERE received < ?", (older_than_ms,)).rowcount


def trim(conn: sqlite3.Connection, peer: str, keep: int) -> int:
    """Forget ``peer``'s ids past its newest ``keep``; how many went."""
    return keep_newest(conn, "inbox", "peer", peer, ("received", "id"), keep)
