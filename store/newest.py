"""Keep a peer's newest rows of a table that remembers what peers sent (``PeerRows``)."""

from __future__ import annotations

import sqlite3


def keep_newest(conn: sqlite3.Connection, table: str, peer_column: str, peer: str,
                order: tuple[str, str], keep: int) -> int:
    """Delete ``peer``'s rows of ``table`` past its newest ``keep`` by ``order`` (a time
    column, then a unique one to break ties, both in an index after ``peer_column``: the edge
    is one index entry, ties and all); how many went. The names are this package's own."""
    when, unique = order
    edge = conn.execute(f"SELECT {when}, {unique} FROM {table} WHERE {peer_column} = ? "
                        f"ORDER BY {when} DESC, {unique} DESC LIMIT 1 OFFSET ?",
                        (peer, keep)).fetchone()
    if edge is None:
        return 0
    return conn.execute(f"DELETE FROM {table} WHERE {peer_column} = ? AND ({when} < ? OR "
                        f"({when} = ? AND {unique} <= ?))",
                        (peer, edge[0], edge[0], edge[1])).rowcount
