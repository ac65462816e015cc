"""Lifts this node takes part in, and the decisions it made as a referee (DESIGN.md §4).

A participant's row holds the payor's signed record and the lift's state here (pend, good,
void); its lift chits are ``chits`` rows (``store.credit``) with ``lift`` set. A referee's
decision is written once and never changed: ``decide`` inserts it only if none exists and
returns whichever is stored. A void one is forgotten a month after its record's deadline
(``prune_void_decisions``): asked again after the deadline, the referee decides void again.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from protocol.codec import pack, unpack
from protocol.lift import MAX_LIFE_MS, record_digest, referee_at

_COLUMNS = ("lift, kind, state, units, payor, referee, deadline, record, decision, query_due,"
            " query_tries, error, created, updated, contradicted")
RETRY_MAX_MS = 60_000  # a pending lift past its deadline asks its referee at least this often


def add(conn: sqlite3.Connection, record: dict[str, Any], *, payor: str | None, now_ms: int,
        via: tuple[str, str] | None = None) -> bool:
    """Record a lift we take part in (pending), which our user ``payor`` started or a promise
    over ``via`` (tally, our user holding it) brought; False if it is already here."""
    via_tally, via_cuid = via or (None, None)
    cursor = conn.execute(
        "INSERT INTO lifts (lift, kind, state, units, payor, referee, deadline, record,"
        " query_due, created, updated, via_tally, via_cuid, referee_at)"
        " VALUES (?, ?, 'pend', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (lift) DO NOTHING",
        (record["lift"], record["kind"], record["units"], payor, record["referee"]["agent"],
         record["deadline"], pack(record), record["deadline"], now_ms, now_ms, via_tally,
         via_cuid, referee_at(record)),
    )
    return cursor.rowcount == 1


def held(conn: sqlite3.Connection, tally: str, cuid: str) -> int:
    """How many lifts promises over ``tally`` (held by our ``cuid``) brought that are pending
    (an index's count: at most the bound the caller keeps)."""
    return conn.execute("SELECT COUNT(*) FROM lifts WHERE via_tally = ? AND via_cuid = ?"
                        " AND state = 'pend'", (tally, cuid)).fetchone()[0]


def held_referees(conn: sqlite3.Connection, tally: str, cuid: str, since_ms: int
                  ) -> list[tuple[str, str | None]]:
    """The (referee, where its record says it listens) of those lifts, and of the lifts over
    the tally decided since ``since_ms``, each once."""
    return [(agent, at) for agent, at in conn.execute(
        "SELECT referee, referee_at FROM lifts WHERE via_tally = ? AND via_cuid = ?"
        " AND state = 'pend' UNION SELECT referee, referee_at FROM lifts WHERE via_tally = ?"
        " AND via_cuid = ? AND updated >= ?", (tally, cuid, tally, cuid, since_ms))]


def refereed_pending(conn: sqlite3.Connection, referee: str) -> bool:
    """Whether a lift pending here names ``referee``."""
    return conn.execute("SELECT 1 FROM lifts WHERE referee = ? AND state = 'pend' LIMIT 1",
                        (referee,)).fetchone() is not None


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


def contradict(conn: sqlite3.Connection, lift: str, other: dict[str, Any]) -> bool:
    """Keep the referee's decision that contradicts the one applied to ``lift`` (the proof
    that it equivocated); False when one is kept already."""
    return conn.execute("UPDATE lifts SET contradicted = ? WHERE lift = ? AND contradicted IS"
                        " NULL", (pack(other), lift)).rowcount == 1


def contradiction_of(row: sqlite3.Row) -> dict[str, Any] | None:
    return None if row["contradicted"] is None else unpack(row["contradicted"])


def add_equivocator(conn: sqlite3.Connection, referee: str, lift: str, proof: dict[str, Any],
                    now_ms: int, *, keep: int) -> None:
    """Remember that ``referee`` equivocated on ``lift`` (its first proof here), keeping the
    newest ``keep`` referees: each needs a lift this node took part in, and anyone can make
    up referee keys."""
    conn.execute("INSERT INTO equivocators (referee, lift, proof, created) VALUES (?, ?, ?, ?)"
                 " ON CONFLICT (referee) DO NOTHING", (referee, lift, pack(proof), now_ms))
    conn.execute("DELETE FROM equivocators WHERE referee IN (SELECT referee FROM equivocators"
                 " ORDER BY created DESC, rowid DESC LIMIT -1 OFFSET ?)", (keep,))


def forgive(conn: sqlite3.Connection, referee: str) -> str | None:
    """Forget that ``referee`` equivocated: the lift of its first proof here, or None when it
    was not refused. The proof stays with that lift (``contradicted``) and in the evidence."""
    lift = equivocated_on(conn, referee)
    if lift is not None:
        conn.execute("DELETE FROM equivocators WHERE referee = ?", (referee,))
    return lift


def equivocated_on(conn: sqlite3.Connection, referee: str) -> str | None:
    """The lift on which ``referee`` was first proven here to have equivocated, if any."""
    row = conn.execute("SELECT lift FROM equivocators WHERE referee = ?", (referee,)).fetchone()
    return None if row is None else row[0]


def prune_void(conn: sqlite3.Connection, before_ms: int) -> int:
    """Forget the lifts that went void before ``before_ms``, with their lift chits (void:
    they never entered a chain); how many lifts. A good lift is history and stays, and so
    does every good decision this node made as a referee (``lift_decisions``)."""
    void = "SELECT lift FROM lifts WHERE state = 'void' AND updated < ?"
    conn.execute(f"DELETE FROM chits WHERE lift IN ({void}) AND chain_index IS NULL",
                 (before_ms,))
    return conn.execute("DELETE FROM lifts WHERE state = 'void' AND updated < ?",
                        (before_ms,)).rowcount


def set_error(conn: sqlite3.Connection, lift: str, error: str | None, now_ms: int) -> None:
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


def listing(conn: sqlite3.Connection, cuid: str | None = None,
            limit: int | None = None) -> list[sqlite3.Row]:
    """Lifts, newest first, at most ``limit`` (all when None); with ``cuid``, those where
    that user holds a chit or pays."""
    most = -1 if limit is None else limit
    if cuid is None:
        return conn.execute(f"SELECT {_COLUMNS} FROM lifts ORDER BY created DESC LIMIT ?",
                            (most,)).fetchall()
    return conn.execute(
        f"SELECT {_COLUMNS} FROM lifts WHERE payor = ? OR lift IN"
        " (SELECT lift FROM chits WHERE cuid = ? AND lift IS NOT NULL)"
        " ORDER BY created DESC LIMIT ?", (cuid, cuid, most),
    ).fetchall()


# -- as referee --------------------------------------------------------------------------------


def decision(conn: sqlite3.Connection, lift: str, record: dict[str, Any]
             ) -> dict[str, Any] | None:
    """The decision kept on this record of ``lift`` (each record its own), if any. One made
    before decisions named their record is found by its stored record (see migration 009)."""
    for decided, kept, record_hash in conn.execute(
            "SELECT decision, record, record_hash FROM lift_decisions WHERE lift = ?"
            " AND record_hash IN (?, X'') ORDER BY record_hash DESC",  # by its digest first
            (lift, record_digest(record))):
        if record_hash or unpack(kept) == record:
            return unpack(decided)
    return None


def refereed_listing(conn: sqlite3.Connection, limit: int | None = None
                     ) -> list[tuple[dict[str, Any], dict[str, Any], int]]:
    """(record, decision, created) of the decisions this referee made on lifts it takes no
    part in, newest first, at most ``limit`` (all when None)."""
    most = -1 if limit is None else limit
    return [(unpack(record), unpack(decision), created) for record, decision, created in
            conn.execute("SELECT record, decision, created FROM lift_decisions WHERE lift NOT IN"
                         " (SELECT lift FROM lifts) ORDER BY created DESC LIMIT ?", (most,))]


def refereed(conn: sqlite3.Connection, lift: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(record, decision) of the latest decision this referee made on ``lift`` (``lift.show``
    at the referee; a made-up record with the same uuid has a decision of its own)."""
    row = conn.execute("SELECT record, decision FROM lift_decisions WHERE lift = ?"
                       " ORDER BY created DESC LIMIT 1", (lift,)).fetchone()
    return None if row is None else (unpack(row[0]), unpack(row[1]))


def prune_void_decisions(conn: sqlite3.Connection, before_ms: int) -> int:
    """Forget this referee's void decisions on records whose deadline passed before
    ``before_ms``; how many. Asked again, the referee decides void again (past the deadline
    nothing else), so what a participant learns is the same state, only signed anew; a good
    decision stays, as a lift's chits entered the chains on it. The referee decides no record
    whose deadline is more than ``MAX_LIFE_MS`` away (``protocol.lift.decide``), so only rows
    made that long before the cutoff are read, and each record's deadline is checked (rows
    kept from before that rule may name a later one)."""
    rows = conn.execute("SELECT lift, record_hash, record FROM lift_decisions WHERE state ="
                        " 'void' AND created < ?", (before_ms - MAX_LIFE_MS,)).fetchall()
    old = [(lift, record_hash) for lift, record_hash, record in rows
           if unpack(record)["deadline"] < before_ms]
    conn.executemany("DELETE FROM lift_decisions WHERE lift = ? AND record_hash = ?", old)
    return len(old)


def decide(conn: sqlite3.Connection, record: dict[str, Any], decided: dict[str, Any],
           now_ms: int, *, legacy: bool = False) -> None:
    """Keep a referee's decision on ``record`` (a void one until ``prune_void_decisions``,
    a good one for ever). ``legacy``: it is one made before
    decisions named their record (found by :func:`decision`), signed again; its old row goes."""
    if legacy:
        conn.execute("DELETE FROM lift_decisions WHERE lift = ? AND record_hash = X''",
                     (record["lift"],))
    conn.execute(
        "INSERT INTO lift_decisions (lift, record_hash, state, decision, record, created)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (record["lift"], decided["record"], decided["state"], pack(decided), pack(record),
         now_ms),
    )
