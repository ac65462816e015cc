"""Versioned schema migrations, tracked with ``PRAGMA user_version``.

Migrations are the numbered ``store/migrations/NNN_name.sql`` files, applied in order, each in
its own transaction. A database newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

import re
import sqlite3
from importlib import resources

_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


class SchemaError(Exception):
    """The database schema cannot be brought to the version this code expects."""


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every migration: numbered 1, 2, 3, ... with no gaps."""
    found = []
    for entry in resources.files("store.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    for expected, (version, name, _) in enumerate(found, start=1):
        if version != expected:
            raise SchemaError(f"migration {name} is out of sequence (expected {expected:03d}):"
                              " a database past a gap would never get the skipped one")
    return found


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than the database; returns the resulting version."""
    steps = migrations()
    latest = steps[-1][0] if steps else 0
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > latest:
        raise SchemaError(f"database schema version {current} is newer than this agentd ({latest})")
    for version, name, sql in steps[current:]:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise SchemaError(f"migration {name} failed: {exc}") from exc
    return latest


def _statements(sql: str) -> list[str]:
    """Split a migration script into statements (executescript would commit implicitly)."""
    statements, current = [], []
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(line)
        if sqlite3.complete_statement("\n".join(current)):
            statements.append("\n".join(current))
            current = []
    if current:
        raise SchemaError("migration ends with an incomplete statement")
    return statements
