"""Clearing-house persistence: the server's processes, chains and keyring, and every node's
client records (requests in flight, JWKS, receipts).

Plain functions over a ``sqlite3.Connection``; the rules live in ``protocol.clearing`` and the
services decide. Every write runs inside the caller's transaction on the writer thread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from protocol.clearing import Entry, QueryRequest
from protocol.codec import canonical, unpack
from protocol.receipts import thumbprint

# --- clearing-house side -----------------------------------------------------------------


def signing_keys(conn: sqlite3.Connection, current: bytes, now_ms: int) -> list[bytes]:
    """Record ``current`` as the signing key (retiring any other); return the retired keys,
    newest first."""
    conn.execute(
        "INSERT OR IGNORE INTO ch_keys (public, kid, added) VALUES (?, ?, ?)",
        (current, thumbprint(current), now_ms),
    )
    conn.execute("UPDATE ch_keys SET retired = NULL WHERE public = ?", (current,))
    conn.execute(
        "UPDATE ch_keys SET retired = ? WHERE public != ? AND retired IS NULL", (now_ms, current)
    )
    rows = conn.execute(
        "SELECT public FROM ch_keys WHERE public != ? ORDER BY retired DESC, added DESC",
        (current,),
    ).fetchall()
    return [row[0] for row in rows]


def owners(conn: sqlite3.Connection, pid: str) -> list[str] | None:
    """The owners of ``pid``, or None when there is no such process."""
    if conn.execute("SELECT 1 FROM ch_processes WHERE pid = ?", (pid,)).fetchone() is None:
        return None
    rows = conn.execute("SELECT agent FROM ch_owners WHERE pid = ? ORDER BY agent", (pid,))
    return [row[0] for row in rows]


def create_process(
    conn: sqlite3.Connection, pid: str, owner_ids: Iterable[str], now_ms: int
) -> None:
    conn.execute("INSERT INTO ch_processes (pid, created) VALUES (?, ?)", (pid, now_ms))
    conn.executemany(
        "INSERT INTO ch_owners (pid, agent) VALUES (?, ?)", ((pid, agent) for agent in owner_ids)
    )


_ENTRY_COLUMNS = (
    "pid, seq, prev_hash, timestamp, client_id, header, payload_sha256, payload_type, payload,"
    " entry_hash"
)


def _entry(row: Sequence[Any]) -> Entry:
    return {
        "pid": row[0],
        "seq": row[1],
        "prev_hash": row[2],
        "timestamp": row[3],
        "client_id": row[4],
        "header": unpack(row[5]),
        "payload_sha256": row[6],
        "payload_type": row[7],
        "payload": row[8],
        "entry_hash": row[9],
    }


def last_entry(conn: sqlite3.Connection, pid: str) -> Entry | None:
    row = conn.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM ch_entries WHERE pid = ? ORDER BY seq DESC LIMIT 1",
        (pid,),
    ).fetchone()
    return None if row is None else _entry(row)


def append(conn: sqlite3.Connection, entry: Entry) -> None:
    """Insert the next link; the (pid, seq) key refuses a second entry with the same seq."""
    conn.execute(
        f"INSERT INTO ch_entries ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entry["pid"], entry["seq"], entry["prev_hash"], entry["timestamp"],
            entry["client_id"], canonical(entry["header"]), entry["payload_sha256"],
            entry["payload_type"], entry["payload"], entry["entry_hash"],
        ),
    )  # fmt: skip


@dataclass(frozen=True)
class Page:
    """The entries one query reads: the WHERE clause and values that select them in order,
    how many entries its dates match (``total``), and how many it walks to find them
    (``scanned``, what a stranger pays for)."""

    where: str
    values: tuple[Any, ...]
    total: int
    scanned: int


def page(conn: sqlite3.Connection, request: QueryRequest) -> Page:
    """Where ``request``'s page is. Without dates it is a range of seqs (a process's seqs run
    from 1 with no gap, and the last one is its count), read by the (pid, seq) index: sorted
    by seq, a query took 0.1 to 4.6 s of the writer for 100,000 to 1,000,000 entries,
    whatever its page. With dates, the entries in them are counted by the timestamp index,
    and the page walks the entries by seq, each tested for its date (``+`` keeps the
    timestamp index out: by it, the entries in the dates were sorted by seq first, 134 to
    176 ms a query at 100,000)."""
    pid, order = request["pid"], "ASC" if request["sort"] == "asc" else "DESC"
    first, size = (request["page"] - 1) * request["size"], request["size"]
    if request["date_from"] is None and request["date_to"] is None:
        last = conn.execute("SELECT max(seq) FROM ch_entries WHERE pid = ?",
                            (pid,)).fetchone()[0] or 0
        high = min(first + size, last) if order == "ASC" else last - first
        low = first + 1 if order == "ASC" else max(high - size + 1, 1)
        return Page(f"pid = ? AND seq BETWEEN ? AND ? ORDER BY seq {order}", (pid, low, high),
                    last, 0)
    dates = (request["date_from"] if request["date_from"] is not None else 0,
             request["date_to"] if request["date_to"] is not None else 2**63 - 1)
    total = conn.execute("SELECT count(*) FROM ch_entries WHERE pid = ? AND timestamp "
                         "BETWEEN ? AND ?", (pid, *dates)).fetchone()[0]
    return Page(f"pid = ? AND +timestamp BETWEEN ? AND ? ORDER BY seq {order} LIMIT ? OFFSET ?",
                (pid, *dates, size, first), total, total + min(first, total))


def query(conn: sqlite3.Connection, at: Page) -> list[Entry]:
    """The entries of page ``at``, in its order."""
    rows = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM ch_entries WHERE {at.where}",
                        at.values).fetchall()
    return [_entry(row) for row in rows]


def page_bytes(conn: sqlite3.Connection, at: Page) -> int:
    """The headers' and payloads' bytes of page ``at`` (their lengths are in the row headers:
    nothing is loaded), so an oversize page is refused unread."""
    row = conn.execute(  # length() of a column reads the record header, not the blob
        f"SELECT sum(size) FROM (SELECT length(header) + ifnull(length(payload), 0) AS size"
        f" FROM ch_entries WHERE {at.where})", at.values,
    ).fetchone()
    return row[0] or 0


def get_entry(conn: sqlite3.Connection, pid: str, document_id: str) -> Entry | None:
    row = conn.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM ch_entries WHERE pid = ? AND entry_hash = ?",
        (pid, document_id),
    ).fetchone()
    return None if row is None else _entry(row)


# --- client side -------------------------------------------------------------------------


def add_request(
    conn: sqlite3.Connection,
    *,
    message_id: bytes | None,
    ch: str,
    action: str,
    pid: str | None,
    kind: str | None,
    ref: str | None,
    payload_sha256: str | None,
    state: str,
    now_ms: int,
    obj: bytes | None = None,
) -> None:
    conn.execute(
        "INSERT INTO ch_requests (id, ch, action, pid, kind, ref, payload_sha256, object, state,"
        " created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (message_id, ch, action, pid, kind, ref, payload_sha256, obj, state, now_ms),
    )


def sent_request(conn: sqlite3.Connection, message_id: bytes) -> sqlite3.Row | None:
    """A request still waiting for its answer."""
    return conn.execute(
        "SELECT seq, id, ch, action, pid, kind, ref, payload_sha256, object FROM ch_requests"
        " WHERE id = ? AND state = 'sent'",
        (message_id,),
    ).fetchone()


def delete_request(conn: sqlite3.Connection, seq: int) -> None:
    conn.execute("DELETE FROM ch_requests WHERE seq = ?", (seq,))


def prune_unanswered_calls(conn: sqlite3.Connection, before_ms: int) -> int:
    """Forget ``ch.*`` RPC calls made before ``before_ms`` still waiting for an answer: long
    past the hour a clearing house keeps one, and their callers timed out (evidence and
    ``keys``, which this node needs answered, are sent again instead: ``lost.py``)."""
    return conn.execute(
        "DELETE FROM ch_requests WHERE state = 'sent' AND kind IS NULL AND action != 'keys'"
        " AND created < ?", (before_ms,)).rowcount


def refuse_request(conn: sqlite3.Connection, seq: int, error: str) -> None:
    conn.execute(
        "UPDATE ch_requests SET state = 'refused', error = ?, object = NULL WHERE seq = ?",
        (error, seq),
    )


def ready_logs(conn: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    """Evidence logs waiting to be sent whose process is ready, oldest first."""
    return conn.execute(
        "SELECT r.seq, r.ch, r.object FROM ch_requests r JOIN ch_client_processes p"
        " ON p.ch = r.ch AND p.pid = r.pid"
        " WHERE r.state = 'waiting' AND r.action = 'log' AND p.state = 'ready'"
        " ORDER BY r.seq LIMIT ?",
        (limit,),
    ).fetchall()


def sent_entries(conn: sqlite3.Connection, message_id: bytes) -> list[sqlite3.Row]:
    """The evidence logs sent as entries of the ``log_batch`` ``message_id``, in order: their
    ids are the message id and a 2-byte index."""
    return conn.execute(
        "SELECT seq, id, ch, action, pid, kind, ref, payload_sha256, object FROM ch_requests"
        " WHERE id > ? AND id <= ? AND length(id) = ? AND state = 'sent' ORDER BY id",
        (message_id, message_id + b"\xff\xff", len(message_id) + 2),
    ).fetchall()


def mark_sent(conn: sqlite3.Connection, seq: int, message_id: bytes) -> None:
    """An evidence log sent under ``message_id``; it keeps its object until it is answered
    (``resend``)."""
    conn.execute("UPDATE ch_requests SET state = 'sent', id = ? WHERE seq = ?", (message_id, seq))


def mark_merged_sent(conn: sqlite3.Connection, seqs: list[int], message_id: bytes, ref: str,
                     payload_sha256: str, obj: bytes) -> None:
    """Evidence logs ``seqs`` sent as one entry (``protocol.evidence_merge``) under
    ``message_id``: the first row becomes that entry's request, the others go."""
    first, *rest = seqs
    conn.execute(
        "UPDATE ch_requests SET state = 'sent', id = ?, ref = ?, payload_sha256 = ?, object = ?"
        " WHERE seq = ?", (message_id, ref, payload_sha256, obj, first))
    conn.execute(f"DELETE FROM ch_requests WHERE seq IN ({', '.join('?' * len(rest))})", rest)


# Requests whose answer this node must have: evidence (logs and the processes they go to) and
# the questions for a JWKS that receipts wait on; a ``ch.*`` RPC call's request is its caller's.
_OWED = "state = 'sent' AND (kind IS NOT NULL OR action = 'keys')"


def note_delivered(conn: sqlite3.Connection, now_ms: int, *, at_creation: bool = False
                   ) -> None:
    """Note ``now_ms`` (``at_creation``: the request's creation) as the delivery time of every
    owed request first seen delivered: its message (the first 16 bytes of a batch entry's
    key) is gone from the outbox."""
    conn.execute(
        "UPDATE ch_requests SET delivered = CASE WHEN ? THEN created ELSE ? END"
        f" WHERE {_OWED} AND delivered IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.id = substr(ch_requests.id, 1, 16))",
        (at_creation, now_ms),
    )


def unanswered(conn: sqlite3.Connection, delivered_before: int) -> list[sqlite3.Row]:
    """Owed requests delivered before ``delivered_before`` and still unanswered that can be
    sent again (a request of an older version kept no object)."""
    return conn.execute(
        "SELECT seq, ch, action, object FROM ch_requests"
        f" WHERE {_OWED} AND delivered < ? AND (action = 'keys' OR object IS NOT NULL)"
        " ORDER BY seq",
        (delivered_before,),
    ).fetchall()


def resend(conn: sqlite3.Connection, seq: int, message_id: bytes | None) -> None:
    """Send a request again: under ``message_id``, or (None) as a log waiting for the next
    batch."""
    conn.execute(
        "UPDATE ch_requests SET state = ?, id = ?, delivered = NULL WHERE seq = ?",
        ("waiting" if message_id is None else "sent", message_id, seq),
    )


def owes_answers(conn: sqlite3.Connection) -> bool:
    """Whether an owed request waits for its answer."""
    return conn.execute(f"SELECT 1 FROM ch_requests WHERE {_OWED} LIMIT 1").fetchone() is not None


def keys_asked(conn: sqlite3.Connection) -> set[str]:
    """The clearing houses asked for their JWKS that have not answered yet."""
    return {row[0] for row in conn.execute(
        "SELECT DISTINCT ch FROM ch_requests WHERE state = 'sent' AND action = 'keys'")}


def client_process(conn: sqlite3.Connection, ch: str, pid: str) -> str | None:
    row = conn.execute(
        "SELECT state FROM ch_client_processes WHERE ch = ? AND pid = ?", (ch, pid)
    ).fetchone()
    return None if row is None else row[0]


def set_client_process(conn: sqlite3.Connection, ch: str, pid: str, state: str,
                       owners: Sequence[str] | None = None) -> None:
    """Record ``pid``'s state at ``ch`` (``owners``: those it was asked to be created with,
    kept so that another clearing house can be asked the same: ``moves.py``)."""
    conn.execute(
        "INSERT INTO ch_client_processes (ch, pid, state, owners) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (ch, pid) DO UPDATE SET state = excluded.state,"
        " owners = coalesce(excluded.owners, owners)",
        (ch, pid, state, None if owners is None else canonical(list(owners))),
    )


def jwks(conn: sqlite3.Connection, ch: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT jwks FROM ch_jwks WHERE ch = ?", (ch,)).fetchone()
    return None if row is None else json.loads(row[0])


def save_jwks(conn: sqlite3.Connection, ch: str, value: dict[str, Any], now_ms: int) -> None:
    conn.execute(
        "INSERT INTO ch_jwks (ch, jwks, updated) VALUES (?, ?, ?)"
        " ON CONFLICT (ch) DO UPDATE SET jwks = excluded.jwks, updated = excluded.updated",
        (ch, json.dumps(value, sort_keys=True), now_ms),
    )


def add_receipt(
    conn: sqlite3.Connection,
    *,
    request: bytes,
    ch: str,
    pid: str,
    seq: int | None,
    document_id: str | None,
    token: str,
    kind: str,
    ref: str | None,
    payload_sha256: str,
    status: str,
    problem: str | None,
    now_ms: int,
) -> None:
    conn.execute(
        "INSERT INTO receipts (request, ch, pid, seq, document_id, token, kind, ref,"
        " payload_sha256, status, problem, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (request, ch, pid, seq, document_id, token, kind, ref, payload_sha256, status, problem,
         now_ms),
    )


def unchecked_receipts(conn: sqlite3.Connection, ch: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT request, pid, token, payload_sha256 FROM receipts"
        " WHERE status = 'unchecked' AND ch = ?",
        (ch,),
    ).fetchall()


def set_receipt_status(
    conn: sqlite3.Connection, request: bytes, status: str, problem: str | None
) -> None:
    conn.execute(
        "UPDATE receipts SET status = ?, problem = ? WHERE request = ?", (status, problem, request)
    )


RECEIPT_COLUMNS = (
    "request, ch, pid, seq, document_id, token, kind, ref, payload_sha256, status, problem,"
    " received"
)


def receipts(conn: sqlite3.Connection, pid: str | None = None, *, tail: str | None = None
             ) -> list[sqlite3.Row]:
    """Every stored receipt (or those of ``pid``; with ``tail``, of every pid that starts
    with ``pid`` and ends with ``tail``: a pid as ``-H`` cuts it), by process and seq."""
    if pid is None:
        where, params = "", ()
    elif tail is None:
        where, params = "WHERE pid = ?", (pid,)
    else:  # by the pid index: every pid starting so sorts from it up to it and U+10FFFF
        where = "WHERE pid >= ? AND pid < ? AND length(pid) >= ? AND substr(pid, -?) = ?"
        params = (pid, pid + chr(0x10FFFF), len(pid) + len(tail), len(tail), tail)
    return conn.execute(
        f"SELECT {RECEIPT_COLUMNS} FROM receipts {where} ORDER BY pid, seq", params
    ).fetchall()


def all_jwks(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """The stored JWKS of every clearing house, by its agent id."""
    return {row["ch"]: json.loads(row["jwks"])
            for row in conn.execute("SELECT ch, jwks FROM ch_jwks")}


def refused_evidence(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Evidence logs the clearing house refused, in the order they were made."""
    return conn.execute(
        "SELECT pid, kind, ref, error FROM ch_requests WHERE state = 'refused' ORDER BY seq"
    ).fetchall()


def audit_snapshot(conn: sqlite3.Connection) -> tuple[
        list[sqlite3.Row], list[sqlite3.Row], dict[str, dict], set[str], list[sqlite3.Row]]:
    """What ``receipts.verify`` reads (from one snapshot, as ``Database.reading`` runs it):
    log requests not answered yet by clearing house, every receipt, every JWKS, the clearing
    houses asked for keys, and the evidence refused."""
    return (pending_logs(conn), receipts(conn), all_jwks(conn), keys_asked(conn),
            refused_evidence(conn))


def pending_logs(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Log requests not answered yet (waiting to go, or sent), by the clearing house they
    wait for: ``ch``, ``logs``, ``evidence`` (those of them that are), ``since`` (the oldest's
    creation) and ``error`` (why an agent that is no clearing house refused them, kept for
    ``moves.py``), oldest first."""
    return conn.execute(
        "SELECT ch, sum(action = 'log') AS logs, sum(action = 'log' AND kind IS NOT NULL)"
        " AS evidence, min(created) AS since, max(error) AS error"
        " FROM ch_requests WHERE state IN ('waiting', 'sent')"
        " AND (action = 'log' OR (action = 'create_process' AND kind IS NOT NULL))"
        " GROUP BY ch HAVING logs > 0 ORDER BY since"
    ).fetchall()


# --- evidence moving to another clearing house (agentd/services/clearing/moves.py) -----


def evidence_elsewhere(conn: sqlite3.Connection, house: str | None) -> list[sqlite3.Row]:
    """Evidence not answered yet — logs, and the processes they wait to be created — bound to
    a clearing house other than ``house`` (None: to any), oldest first."""
    return conn.execute(
        "SELECT seq, id, ch, action, pid, kind, ref, object FROM ch_requests"
        " WHERE kind IS NOT NULL"
        " AND state IN ('waiting', 'sent') AND action IN ('log', 'create_process')"
        " AND ch IS NOT ? ORDER BY seq",
        (house,),
    ).fetchall()


def calls_undelivered_elsewhere(conn: sqlite3.Connection, house: str) -> list[sqlite3.Row]:
    """``ch.*`` RPC calls to a clearing house other than ``house`` whose message has not been
    delivered (it is still pending in the outbox)."""
    return conn.execute(
        "SELECT r.seq, r.id, r.ch FROM ch_requests r JOIN outbox o ON o.id = r.id"
        " WHERE r.kind IS NULL AND r.action != 'keys' AND r.state = 'sent' AND r.ch != ?"
        " AND o.state = 'pending' ORDER BY r.seq",
        (house,),
    ).fetchall()


def move_log(conn: sqlite3.Connection, seq: int, house: str) -> None:
    """Bind an evidence log to ``house``, waiting to be sent there afresh."""
    conn.execute(
        "UPDATE ch_requests SET ch = ?, state = 'waiting', id = NULL, delivered = NULL,"
        " error = NULL WHERE seq = ?",
        (house, seq),
    )


def note_error(conn: sqlite3.Connection, seq: int, error: str) -> None:
    """Why a request is not answered, while it stays unanswered."""
    conn.execute("UPDATE ch_requests SET error = ? WHERE seq = ?", (error, seq))


def forget_client_process(conn: sqlite3.Connection, ch: str, pid: str) -> list[str] | None:
    """Forget ``pid``'s state at ``ch``; the owners it was asked for (None: not known)."""
    row = conn.execute("DELETE FROM ch_client_processes WHERE ch = ? AND pid = ? RETURNING owners",
                       (ch, pid)).fetchone()
    return None if row is None or row[0] is None else list(unpack(row[0]))


def entry_count(conn: sqlite3.Connection) -> int:
    """Entries in every chain this clearing house keeps."""
    return conn.execute("SELECT count(*) FROM ch_entries").fetchone()[0]
