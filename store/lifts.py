"""Lifts this node takes part in, and the decisions it made as a referee (DESIGN.md §4).

A participant's row holds the payor's signed record and the lift's state here (pend, good,
void); its lift chits are ``chits`` rows (``store.credit``) with ``lift`` set. A referee's
decision is written once and never changed: ``decide`` inserts it only if none exists and
returns whichever is stored.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from protocol.codec import pack, unpack

_COLUMNS = ("lift, kind, state, units, payor, referee, deadline, record, decision, query_due,"
            " query_tries, error, created, updated")
RETRY_MAX_MS = 60_000  # a pending lift past its deadline asks its referee at least this often


def add(conn: sqlite3.Connection, record: dict[str, Any], *, payor: str | None, now_ms: int
        ) -> bool:
    """Record a lift we take part in (pending); False if it is already here."""
    cursor = conn.execute(
        "INSERT INTO lifts (lift, kind, state, units, payor, referee, deadline, record,"
        " query_due, created, updated) VALUES (?, ?, 'pend', ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (lift) DO NOTHING",
        (record["lift"], record["kind"], record["units"], payor, record["referee"]["agent"],
         record["deadline"], pack(record), record["deadline"], now_ms, now_ms),
    )
    return cursor.rowcount == 1


def get(conn: sqlite3.Connection, lift: str) -> sqlite3.Row | None:
    return conn.execute(f"SELECT {_COLUMNS} FROM lifts WHERE lift = ?", (lift,)).fetchone()


def record_of(row: sqlite3.Row) -> dict[str, Any]:
    return unpack(row["record"])


def decision_of(row: sqlite3.Row) -> dict[str, Any] | None:
    return None if row["decision"] is None else unpack(row["decision"])


def settle(conn: sqlite3.Connection, lift: str, state: str, decision: dict[str, Any],
           now_ms: int) -> None:
    conn.execute(
        "UPDATE lifts SET state = ?, decision = ?, updated = ? WHERE lift = ?",
        (state, pack(decision), now_ms, lift),
    )


def set_error(conn: sqlite3.Connection, lift: str, error: str, now_ms: int) -> None:
    conn.execute("UPDATE lifts SET error = ?, updated = ? WHERE lift = ?", (error, now_ms, lift))


def due(conn: sqlite3.Connection, now_ms: int, limit: int = 100) -> list[sqlite3.Row]:
    """Pending lifts whose deadline passed and whose next question to the referee is due."""
    return conn.execute(
        f"SELECT {_COLUMNS} FROM lifts WHERE state = 'pend' AND query_due <= ?"
        " ORDER BY query_due LIMIT ?", (now_ms, limit),
    ).fetchall()


def next_due(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT MIN(query_due) FROM lifts WHERE state = 'pend'").fetchone()
    return row[0]


def asked(conn: sqlite3.Connection, lift: str, now_ms: int) -> None:
    """We asked the referee: ask again later, backing off (1 s, 2 s, ... up to a minute)."""
    conn.execute(
        "UPDATE lifts SET query_tries = query_tries + 1,"
        " query_due = ? + MIN(?, 1000 * (1 << MIN(query_tries, 16))) WHERE lift = ?",
        (now_ms, RETRY_MAX_MS, lift),
    )


def listing(conn: sqlite3.Connection, cuid: str | None = None) -> list[sqlite3.Row]:
    """Lifts, newest first; with ``cuid``, those where that user holds a chit or pays."""
    if cuid is None:
        return conn.execute(f"SELECT {_COLUMNS} FROM lifts ORDER BY created DESC").fetchall()
    return conn.execute(
        f"SELECT {_COLUMNS} FROM lifts WHERE payor = ? OR lift IN"
        " (SELECT lift FROM chits WHERE cuid = ? AND lift IS NOT NULL)"
        " ORDER BY created DESC", (cuid, cuid),
    ).fetchall()


# -- as referee --------------------------------------------------------------------------------


def decision(conn: sqlite3.Connection, lift: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT decision FROM lift_decisions WHERE lift = ?", (lift,)).fetchone()
    return None if row is None else unpack(row[0])


def refereed_record(conn: sqlite3.Connection, lift: str) -> dict[str, Any]:
    row = conn.execute("SELECT record FROM lift_decisions WHERE lift = ?", (lift,)).fetchone()
    return unpack(row[0])


def decide(conn: sqlite3.Connection, record: dict[str, Any], decided: dict[str, Any],
           now_ms: int) -> None:
    """Keep a referee's decision for ever (the caller checked there was none)."""
    conn.execute(
        "INSERT INTO lift_decisions (lift, state, decision, record, created)"
        " VALUES (?, ?, ?, ?, ?)",
        (record["lift"], decided["state"], pack(decided), pack(record), now_ms),
    )
