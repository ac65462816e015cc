"""A holder's chit chain on its chit rows: built from them, written to them, read back.

The rows are the chain (``store.credit`` says how it is split between the tally row and the
chit rows); a holding's ``protocol.chain.Chain`` keeps only a window of it in memory
(``CHAIN_WINDOW``, ``protocol.chain.trim``): the newest blocks, confirmed or not, and the
oldest of the good chits that wait for the foil's order. :func:`named` reads back the older
blocks and the spilled chits a chain message names or a repair sends, so a partner that
never confirms a block, or never orders a chit, costs the cache a window per tally and the
disk its rows, not memory for the whole unconfirmed tail. Everything here runs on the
writer thread, inside its transaction.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from protocol.chain import Chain, Wanted, unspill
from protocol.chit_local import LocalChit
from protocol.chit_local import balance as chit_balance
from protocol.chit_states import A_GOOD, L_GOOD
from protocol.codec import pack, unpack
from protocol.tally_local import LocalTally

# Blocks a holding's chain keeps in memory at least, confirmed or not (it drops this many at
# a time), and unordered chits (good, no block yet) it keeps at most, once they pile up: with
# parked blocks (beyond a gap, at most protocol.chain_stock.PARKED_BLOCKS), all it holds of
# the chain.
CHAIN_WINDOW = 128
_GOOD = (A_GOOD, L_GOOD)
# A holder's good chits without a block (a stock's, waiting for the foil's order), oldest
# first: those its chain holds in ``pending`` and those it spilled (protocol.chain.trim).
_UNORDERED_ROWS = (
    "FROM chits WHERE tally = ? AND cuid = ? AND chain_index IS NULL AND block IS NULL"
    f" AND state IN ({', '.join('?' * len(_GOOD))})"
)
_UNORDERED = f"SELECT seq, body {_UNORDERED_ROWS} ORDER BY seq LIMIT ?"


def put_chit(
    conn: sqlite3.Connection,
    cuid: str,
    local_chit: LocalChit,
    now_ms: int,
    block: dict[str, Any] | None = None,
    *,
    linked: bool = False,
) -> None:
    """Insert a chit or record its new state and map; ``block`` is the chain block it
    carries, ``linked`` whether that block is its place in the holder's chain."""
    chit = local_chit.chit
    conn.execute(
        "INSERT INTO chits (tally, cuid, uuid, issuer, type, units, memo, date, state, hash,"
        " body, block, chain_index, chain_hash, lift, created, updated)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (tally, cuid, uuid) DO UPDATE SET state = excluded.state,"
        " hash = excluded.hash, body = excluded.body, block = excluded.block,"
        " chain_index = excluded.chain_index, chain_hash = excluded.chain_hash,"
        " updated = excluded.updated",
        (chit["tally"], cuid, chit["uuid"], chit["by"], chit["type"], chit["units"],
         chit["memo"], chit["date"], local_chit.state, chit["hash"],
         pack({**chit, "chain": None}), None if block is None else pack(block),
         block["index"] if linked else None, block["hash"] if linked else None,
         _lift_of(chit), now_ms, now_ms),
    )  # fmt: skip


def named(conn: sqlite3.Connection, key: tuple[str, str], chain: Chain | None,
          wanted: Wanted) -> tuple[Chain | None, dict[int, dict[str, Any]], dict[str, LocalChit]]:
    """What a chain message names that the chain of holder ``key`` (tally, cuid) does not
    hold (``protocol.chain.wanted``, or ``to_resend`` for a repair): the chain with the
    spilled chits it names (or the oldest ones it asks for) held again
    (``protocol.chain.unspill``), the linked chits behind its window, by chain index (the
    ``history`` the protocol needs), and the rows of the chits it names by uuid, in any state
    (those it adopts are looked up here, not read again). One indexed read, and a second only
    for a message that names blocks behind the window by index (or a repair's spilled
    chits)."""
    history: dict[int, dict[str, Any]] = {}
    rows: dict[str, LocalChit] = {}
    base = 0 if chain is None else chain.base
    spilled = []  # good, without a block or an index: the chain spilled it
    query = ("SELECT uuid, state, body, block, chain_index FROM chits"
             " WHERE tally = ? AND cuid = ? AND {} IN ({})")
    for column, values in (("uuid", wanted.uuids), ("chain_index", wanted.indexes)):
        if not values:
            continue
        for uuid, state, body, block, index in conn.execute(
                query.format(column, ", ".join("?" * len(values))),
                (*key, *values)):
            chit = chit_of(body, block)
            if column == "uuid":
                rows[uuid] = LocalChit(state, chit)
                if chain is not None and chain.spilled and index is None and (
                        block is None and state in _GOOD):
                    spilled.append(chit)
            if index is not None and index <= base:
                history[index] = chit
    if wanted.spilled and chain is not None:  # the oldest spilled, which no row names
        held = {chit["uuid"] for chit in (*spilled, *chain.pending) if chit["chain"] is None}
        spilled += [chit for chit in (chit_of(body, None) for _, body in conn.execute(
            _UNORDERED, (*key, *_GOOD, len(held) + wanted.spilled)))
            if chit["uuid"] not in held][: wanted.spilled]
    if spilled:
        assert chain is not None
        chain = unspill(chain, spilled)
    return chain, history, rows


def chit_of(body: bytes, block: bytes | None) -> dict[str, Any]:
    """A chit as a row stores it: its body, and its block apart."""
    chit = unpack(body)
    chit["chain"] = None if block is None else unpack(block)
    return chit


def build_chain(conn: sqlite3.Connection, local: LocalTally, cuid: str, row: sqlite3.Row
                 ) -> Chain:
    """The holder's chain from its rows: only the ``CHAIN_WINDOW`` newest blocks and oldest
    unordered chits (``protocol.chain.trim``), so a restart does not read a long tally's
    whole history, nor every chit a silent partner left unordered."""
    key = (local.uuid, cuid)
    conf = row["chain_conf"]
    base = max(0, row["chain_length"] - CHAIN_WINDOW)
    linked = [chit_of(body, block) for body, block in conn.execute(
        "SELECT body, block FROM chits WHERE tally = ? AND cuid = ? AND chain_index > ?"
        " ORDER BY chain_index", (*key, base))]
    parked = [(seq, body, block) for seq, body, block in conn.execute(
        "SELECT seq, body, block FROM chits WHERE tally = ? AND cuid = ? AND chain_index IS NULL"
        f" AND block IS NOT NULL AND state IN ({', '.join('?' * len(_GOOD))})",
        (*key, *_GOOD))]
    unordered = [(seq, body, None) for seq, body in conn.execute(
        _UNORDERED, (*key, *_GOOD, CHAIN_WINDOW))]
    spilled = 0 if len(unordered) < CHAIN_WINDOW else conn.execute(
        f"SELECT count(*) {_UNORDERED_ROWS}", (*key, *_GOOD)).fetchone()[0] - len(unordered)
    unlinked = [chit_of(body, block) for _, body, block in sorted(
        [*parked, *unordered], key=lambda row: row[0])]  # in the order they came
    base_hash = None if base == 0 else conn.execute(
        "SELECT chain_hash FROM chits WHERE tally = ? AND cuid = ? AND chain_index = ?",
        (*key, base)).fetchone()[0]
    return Chain(
        tally=local.uuid,
        side=local.side,
        origin=row["chain_origin"],
        chits=tuple(linked),
        pending=tuple(unlinked),
        conf=conf,
        base=base,
        base_hash=base_hash,
        base_balance=row["balance"] - chit_balance(linked + unlinked, local.side),
        spilled=spilled,
        ahead=row["chain_ahead"],
    )


def _kept(old: Chain, new: Chain) -> int:
    """The index of the last block ``new`` shares with ``old`` (the protocol only appends, or
    unlinks everything after some index and links again; it moves ``base`` back only so)."""
    assert new.base <= old.base, "a chain is trimmed only once it is saved"
    if new.base < old.base:  # a rollback to a block behind the base: it holds none before
        return new.base
    held = len(old.chits)
    if held == 0 or (len(new.chits) >= held and new.chits[held - 1] is old.chits[held - 1]):
        return old.length
    kept = 0
    while kept < min(held, len(new.chits)) and new.chits[kept] is old.chits[kept]:
        kept += 1
    return old.base + kept


def write_chain(
    conn: sqlite3.Connection,
    cuid: str,
    old: Chain | None,
    new: Chain,
    fresh: dict[str, LocalChit],
    now_ms: int,
) -> None:
    """Write the chain's changes to the chit rows; rows of ``fresh`` chits the chain holds
    are inserted here with their blocks (and taken out of ``fresh``)."""
    key = (new.tally, cuid)
    kept = 0 if old is None else _kept(old, new)
    if old is not None and kept < old.length:  # a rollback: everything after ``kept`` moves
        conn.execute(
            "UPDATE chits SET chain_index = NULL, chain_hash = NULL, block = NULL"
            " WHERE tally = ? AND cuid = ? AND chain_index > ?",
            (*key, kept),
        )
    moved = []
    for chit in new.chits[kept - new.base :]:
        row = fresh.pop(chit["uuid"], None)
        if row is None:
            moved.append((chit["chain"]["index"], chit["chain"]["hash"], pack(chit["chain"]),
                          *key, chit["uuid"]))  # fmt: skip
        else:
            put_chit(conn, cuid, row, now_ms, chit["chain"], linked=True)
    conn.executemany(
        "UPDATE chits SET chain_index = ?, chain_hash = ?, block = ?"
        " WHERE tally = ? AND cuid = ? AND uuid = ?",
        moved,
    )
    # Unlinked chits change their row only by taking a block beyond a gap (a rollback clears
    # blocks above): with no parked block anywhere in the chain, there is nothing to look at.
    if not new.hints.claims:
        return
    unchanged = set() if old is None else set(map(id, old.pending))
    parked = []
    for chit in new.pending:
        if chit["chain"] is None or id(chit) in unchanged:
            continue
        row = fresh.pop(chit["uuid"], None)
        if row is None:
            parked.append((pack(chit["chain"]), *key, chit["uuid"]))
        else:
            put_chit(conn, cuid, row, now_ms, chit["chain"])
    conn.executemany(
        "UPDATE chits SET chain_index = NULL, chain_hash = NULL, block = ?"
        " WHERE tally = ? AND cuid = ? AND uuid = ?",
        parked,
    )


def _lift_of(chit: dict[str, Any]) -> str | None:
    ref = chit["ref"]
    return ref.get("lift") if chit["type"] == "lift" and isinstance(ref, dict) else None
