"""Known peers: configured ones and those learned from a hello or a ticket."""

from __future__ import annotations

import sqlite3


def upsert(
    conn: sqlite3.Connection,
    agent: str,
    *,
    name: str | None = None,
    address: str | None = None,
    last_seen: int | None = None,
) -> None:
    conn.execute(
        "INSERT INTO peers (agent, name, address, last_seen) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (agent) DO UPDATE SET"
        " name = coalesce(excluded.name, name),"
        " address = coalesce(excluded.address, address),"
        " last_seen = coalesce(excluded.last_seen, last_seen)",
        (agent, name, address, last_seen),
    )


def all_peers(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT agent, name, address, last_seen FROM peers ORDER BY name, agent"
    ).fetchall()


def last_seen(conn: sqlite3.Connection, agent: str) -> int | None:
    """When a channel to ``agent`` was last open (ms), or None: never, as far as we know."""
    row = conn.execute("SELECT last_seen FROM peers WHERE agent = ?", (agent,)).fetchone()
    return row[0] if row else None


def address_of(conn: sqlite3.Connection, agent: str) -> str | None:
    row = conn.execute("SELECT address FROM peers WHERE agent = ?", (agent,)).fetchone()
    return row[0] if row else None


def delete(conn: sqlite3.Connection, agent: str) -> None:
    conn.execute("DELETE FROM peers WHERE agent = ?", (agent,))


def unname(conn: sqlite3.Connection, agent: str) -> None:
    """Forget ``agent``'s name: another peer has it now."""
    conn.execute("UPDATE peers SET name = NULL WHERE agent = ?", (agent,))
