"""Ids by their start, as ``-H`` shows them (``cdfd881a…``): the tallies and chits of a user,
the lifts of this node, whose id starts so. At most two: one is the id meant, two say the
start is too short to tell."""

from __future__ import annotations

import sqlite3


def _bounds(start: str) -> tuple[str, str]:
    """Every id starting ``start`` sorts from it up to it and ``g`` (an id is hex and ``-``,
    both below ``g``), so an index on the id serves the search."""
    return start, start + "g"


def any_users_tallies(conn: sqlite3.Connection, start: str) -> list[str]:
    """The tallies starting so of every user of this node (to say which user holds one
    another user named)."""
    return [row[0] for row in conn.execute(
        "SELECT DISTINCT uuid FROM tallies WHERE uuid >= ? AND uuid < ? LIMIT 2",
        _bounds(start))]


def tallies(conn: sqlite3.Connection, cuid: str, start: str) -> list[str]:
    """The user's tallies, and those whose ticket it presented, not held yet (``tally.wait``
    waits for one). ``+cuid``: the search goes by the id, not by the user's other tallies."""
    return [row[0] for row in conn.execute(
        "SELECT uuid FROM tallies WHERE uuid >= ? AND uuid < ? AND +cuid = ?"
        " UNION SELECT tally FROM tally_requests WHERE tally >= ? AND tally < ? AND +cuid = ?"
        " LIMIT 2", (*_bounds(start), cuid) * 2)]


def chits(conn: sqlite3.Connection, cuid: str, start: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT DISTINCT uuid FROM chits WHERE cuid = ? AND uuid >= ? AND uuid < ? LIMIT 2",
        (cuid, *_bounds(start)))]


def lifts(conn: sqlite3.Connection, start: str) -> list[str]:
    """The lifts this node takes part in, and those it decided as a referee."""
    return [row[0] for row in conn.execute(
        "SELECT lift FROM lifts WHERE lift >= ? AND lift < ?"
        " UNION SELECT lift FROM lift_decisions WHERE lift >= ? AND lift < ? LIMIT 2",
        _bounds(start) * 2)]
