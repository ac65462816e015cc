"""Hosted CHIP users and their signing keys."""

from __future__ import annotations

import sqlite3


def add(
    conn: sqlite3.Connection, cuid: str, name: str, seed: bytes, public: bytes, now_ms: int
) -> bool:
    """Insert a user; False when ``cuid`` is taken."""
    cursor = conn.execute(
        "INSERT OR IGNORE INTO users (cuid, name, seed, public, created) VALUES (?, ?, ?, ?, ?)",
        (cuid, name, seed, public, now_ms),
    )
    return cursor.rowcount == 1


def get(conn: sqlite3.Connection, cuid: str) -> sqlite3.Row | None:
    return conn.execute(
        "SELECT cuid, name, seed, public, created FROM users WHERE cuid = ?", (cuid,)
    ).fetchone()


def all_users(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every user, by cuid, without its seed."""
    return conn.execute("SELECT cuid, name, public, created FROM users ORDER BY cuid").fetchall()


def count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM users").fetchone()[0]


def exists(conn: sqlite3.Connection, cuid: str) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE cuid = ?", (cuid,)).fetchone() is not None


