"""Tallies, chits and invitation tickets, and the writer thread's cache of chit chains.

A holder's tally is one ``tallies`` row. Its chain (``protocol.chain.Chain``) is split
between that row (origin, length, head, confirmed index, number of unlinked chits) and the
``chits`` rows (each with its block and, once linked, its index), so a chit costs a row write
or two and never a rewrite of the chain: :meth:`Ledger.save` writes only what differs
between the chain it loaded and the one the protocol returned, and a chit that has just
become good is inserted with its place in the chain rather than inserted and then updated.
A holding keeps only a window of its chain in memory: the rows are the chain, and
``store.chain_rows`` builds, writes and reads it back (:meth:`Ledger.named`).

:class:`Ledger` remembers the holdings it has built (least recently used first out), each
with the row's ``token``, which every write to the row replaces with a fresh random one. A
cached holding is used only while the stored token still equals its own: when a transaction
rolls back, the row keeps its old token, the cached copy no longer matches, and the holding
is rebuilt from the rows. Everything here runs on the writer thread, inside its transaction.
"""

from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from protocol.chain import Chain, Wanted, give_up, trim
from protocol.chit_local import LocalChit
from protocol.codec import pack, unpack
from protocol.route import CARRYING
from protocol.tally_fields import FOIL
from protocol.tally_local import LocalTally, other_side
from store import chain_rows

CACHE_HOLDINGS = 256  # holdings kept in memory
_TALLY_COLUMNS = (
    "uuid, cuid, side, state, partner, partner_cuid, body, balance, chain_length, chain_head,"
    " chain_conf, chain_pending, chain_ahead, error, created, updated, lift_in, lift_out"
)
SELECT_TALLY = f"SELECT {_TALLY_COLUMNS} FROM tallies WHERE uuid = ? AND cuid = ?"
LIST_TALLIES = f"SELECT {_TALLY_COLUMNS} FROM tallies ORDER BY cuid, created, uuid"
LIST_USER_TALLIES = f"SELECT {_TALLY_COLUMNS} FROM tallies WHERE cuid = ? ORDER BY created, uuid"
REQUESTED = "requested"  # the state tally.list shows a request in, until its offer comes
# a request made before migration 025 kept the inviter's agent alone: shown as its partner
_REQUEST_COLUMNS = (f"tally AS uuid, cuid, '{REQUESTED}' AS state, ifnull(partner, inviter) AS"
                    " partner, created")
SELECT_REQUEST = f"SELECT {_REQUEST_COLUMNS} FROM tally_requests WHERE tally = ? AND cuid = ?"
LIST_REQUESTS = f"SELECT {_REQUEST_COLUMNS} FROM tally_requests ORDER BY cuid, created, tally"
LIST_USER_REQUESTS = (f"SELECT {_REQUEST_COLUMNS} FROM tally_requests WHERE cuid = ?"
                      " ORDER BY created, tally")
LIST_CHITS = (
    "SELECT uuid, issuer, type, units, memo, date, state, chain_index, chain_hash, error, lift"
    " FROM chits WHERE tally = ? AND cuid = ? AND (chain_index >= ? OR chain_index IS NULL)"
    " ORDER BY chain_index IS NULL, chain_index, seq LIMIT ?"
)
# Chains that are not settled (protocol.chain.settled) and due for a repair attempt.
UNSETTLED = (
    "SELECT uuid, cuid, partner, resync_due, resync_tries, side, chain_length, chain_conf,"
    " chain_ahead, chain_asked FROM tallies"
    " WHERE chain_origin IS NOT NULL"
    " AND (chain_conf < chain_length OR chain_pending > 0 OR chain_ahead > chain_conf)"
)


def tally_row(conn: sqlite3.Connection, tally_uuid: str, cuid: str) -> sqlite3.Row | None:
    return conn.execute(SELECT_TALLY, (tally_uuid, cuid)).fetchone()


def list_tallies(conn: sqlite3.Connection, cuid: str | None = None) -> list[sqlite3.Row]:
    """A user's tallies (or every holder's), oldest first."""
    if cuid is None:
        return conn.execute(LIST_TALLIES).fetchall()
    return conn.execute(LIST_USER_TALLIES, (cuid,)).fetchall()


def request_row(conn: sqlite3.Connection, tally_uuid: str, cuid: str) -> sqlite3.Row | None:
    """The user's request of a tally it does not hold yet (``uuid, cuid, state, partner,
    created``, state ``requested``), as ``tally.show`` shows it until the offer comes."""
    return conn.execute(SELECT_REQUEST, (tally_uuid, cuid)).fetchone()


def list_requests(conn: sqlite3.Connection, cuid: str | None = None) -> list[sqlite3.Row]:
    """A user's requests (or every user's) as :func:`request_row` gives one, oldest first.
    None is of a tally its user holds: the offer that makes the tally takes the request."""
    if cuid is None:
        return conn.execute(LIST_REQUESTS).fetchall()
    return conn.execute(LIST_USER_REQUESTS, (cuid,)).fetchall()


def list_chits(conn: sqlite3.Connection, tally_uuid: str, cuid: str, start: int = 1,
               limit: int | None = None) -> list[sqlite3.Row]:
    """A holder's chits in chain order from block ``start``, the unlinked ones last; at most
    ``limit`` of them (all when None)."""
    return conn.execute(LIST_CHITS, (tally_uuid, cuid, start, -1 if limit is None else limit)
                        ).fetchall()


def partner_addresses(conn: sqlite3.Connection) -> dict[str, tuple[str, int]]:
    """Each partner agent of an open (or once open) tally, and the host and port its
    certificate gives: the peers our tallies taught us (``CreditLedger._know_partner``)."""
    rows = conn.execute("SELECT partner, body, side FROM tallies"
                        " WHERE chain_origin IS NOT NULL AND partner IS NOT NULL"
                        " GROUP BY partner").fetchall()
    found = {}
    for row in rows:
        chad = unpack(row["body"])[other_side(row["side"])]["cert"]["chad"]
        if chad.get("host") is not None:
            found[row["partner"]] = (chad["host"], chad["port"])
    return found


def chains_after(conn: sqlite3.Connection, after: tuple[str, str], limit: int,
                 agent: str) -> list[sqlite3.Row]:
    """Up to ``limit`` holders' chains after ``after`` (tally, cuid), in that order, with
    what ``protocol.chain.probe`` asks from and the id of the last probe (``chain_probe``):
    those whose partner is on another node than ``agent`` (ours: both holders are restored
    together)."""
    return conn.execute(
        "SELECT uuid, cuid, side, state, body, chain_length, chain_head, chain_conf,"
        " chain_probe FROM tallies WHERE chain_origin IS NOT NULL AND partner != ?"
        " AND (uuid, cuid) > (?, ?) ORDER BY uuid, cuid LIMIT ?",
        (agent, *after, limit)).fetchall()


def probed(conn: sqlite3.Connection, tally_uuid: str, cuid: str, message_id: bytes) -> None:
    """Keep the id of the chain's last probe (``chains_after`` reads it back)."""
    conn.execute("UPDATE tallies SET chain_probe = ? WHERE uuid = ? AND cuid = ?",
                 (message_id, tally_uuid, cuid))


def tallies_with(conn: sqlite3.Connection, agent: str) -> int:
    """How many of our tallies, not void, have their partner on ``agent``'s node."""
    return conn.execute("SELECT count(*) FROM tallies WHERE partner = ? AND state != 'void'",
                        (agent,)).fetchone()[0]


def evidence_under_uuid(conn: sqlite3.Connection, tally_uuid: str) -> bool:
    """Whether this node logged the tally's evidence under its bare uuid before version 16
    (``tally_evidence_bare``): it goes on logging there, in the one process."""
    return conn.execute("SELECT 1 FROM tally_evidence_bare WHERE tally = ?",
                        (tally_uuid,)).fetchone() is not None


def unsettled(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Chains that are not settled, with when each is due for a repair."""
    return conn.execute(UNSETTLED).fetchall()


@dataclass(frozen=True)
class Holding:
    """One holder's tally as stored: the protocol's view of it and the running balance."""

    cuid: str
    local: LocalTally
    chain: Chain | None  # None until both users have signed
    balance: int
    token: bytes
    lift_in: int = 0  # units pending lift chits will add to our balance (the partner pays)
    lift_out: int = 0  # units pending lift chits will take from it (we pay)
    asked: int = 0  # repairs that asked for blocks the partner claims, since the chain grew

    @property
    def key(self) -> tuple[str, str]:
        return (self.local.uuid, self.cuid)


class Ledger:
    """Reads and writes holdings, chits and tickets; caches holdings across transactions."""

    def __init__(self, capacity: int = CACHE_HOLDINGS) -> None:
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, str], Holding] = OrderedDict()
        self.rebuilds = 0  # holdings built from rows (cache misses), for tests and stats

    # -- holdings ------------------------------------------------------------------------

    def get(self, conn: sqlite3.Connection, tally_uuid: str, cuid: str) -> Holding | None:
        row = conn.execute(
            "SELECT side, state, body, balance, chain_origin, chain_length, chain_conf, token,"
            " lift_in, lift_out, chain_ahead, chain_asked FROM tallies"
            " WHERE uuid = ? AND cuid = ?",
            (tally_uuid, cuid),
        ).fetchone()
        if row is None:
            return None
        key = (tally_uuid, cuid)
        cached = self._cache.get(key)
        if cached is not None and cached.token == row["token"]:
            self._cache.move_to_end(key)
            return cached
        self.rebuilds += 1
        local = LocalTally(row["side"], row["state"], unpack(row["body"]))
        chain = None
        if row["chain_origin"] is not None:
            chain = chain_rows.build_chain(conn, local, cuid, row)
        return self._remember(Holding(cuid, local, chain, row["balance"], row["token"],
                                      row["lift_in"], row["lift_out"], row["chain_asked"]))

    @staticmethod
    def requesters_of(conn: sqlite3.Connection, tally_uuid: str) -> list[str]:
        """The users of this node that presented ``tally_uuid``'s ticket and wait for it."""
        return [row[0] for row in conn.execute(
            "SELECT cuid FROM tally_requests WHERE tally = ? ORDER BY cuid", (tally_uuid,))]

    def holders_of(self, conn: sqlite3.Connection, tally_uuid: str) -> list[sqlite3.Row]:
        """Every holder of ``tally_uuid`` on this node (two when both users are ours)."""
        return conn.execute(
            "SELECT cuid, side, body FROM tallies WHERE uuid = ?", (tally_uuid,)
        ).fetchall()

    def create(
        self, conn: sqlite3.Connection, cuid: str, local: LocalTally, now_ms: int
    ) -> Holding:
        token = os.urandom(16)
        partner, partner_cuid = _partner(local)
        conn.execute(
            "INSERT INTO tallies (uuid, cuid, side, state, partner, partner_cuid, body, token,"
            " lim, partner_limit, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (local.uuid, cuid, local.side, local.state, partner, partner_cuid,
             pack(local.tally), token, *_limits(local), now_ms, now_ms),
        )  # fmt: skip
        return self._remember(Holding(cuid, local, None, 0, token))

    def save(
        self,
        conn: sqlite3.Connection,
        old: Holding,
        now_ms: int,
        *,
        local: LocalTally | None = None,
        chain: Chain | None = None,
        balance_delta: int = 0,
        resync_due: int = 0,
        fresh: Iterable[LocalChit] = (),
        lift_delta: tuple[int, int] = (0, 0),
        asked: int | None = None,
    ) -> Holding:
        """Write what changed from ``old`` (a holding this transaction loaded or saved):
        the tally, the chain (with ``resync_due``, when to look at it again if it stays
        unsettled, and ``asked``, the repairs that asked for blocks since it grew, when that
        changes), the balance, the capacity pending lift chits hold (``lift_delta``: in,
        out) and the rows of ``fresh`` chits (new or changed here; the chain's copy of each
        gives its block). Returns the new holding."""
        local = local or old.local
        chain = chain or old.chain
        token = os.urandom(16)
        sets = {"state": local.state, "token": token, "updated": now_ms}
        if local.tally is not old.local.tally:
            sets["body"] = pack(local.tally)
            sets["partner"], sets["partner_cuid"] = _partner(local)
            sets["lim"], sets["partner_limit"] = _limits(local)
        lift_in, lift_out = old.lift_in + lift_delta[0], old.lift_out + lift_delta[1]
        if lift_delta != (0, 0):
            sets["lift_in"], sets["lift_out"] = lift_in, lift_out
        if balance_delta:
            sets["balance"] = old.balance + balance_delta
        if asked is not None:
            sets["chain_asked"] = asked
        rows = {chit.uuid: chit for chit in fresh}
        if chain is not old.chain:
            assert chain is not None
            sets.update(
                chain_origin=chain.origin, chain_length=chain.length, chain_head=chain.head,
                chain_conf=chain.conf, chain_pending=len(chain.pending) + chain.spilled,
                chain_ahead=chain.ahead,
                resync_due=resync_due,
                resync_tries=0,
            )  # fmt: skip
            chain_rows.write_chain(conn, old.cuid, old.chain, chain, rows, now_ms)
        for chit in rows.values():  # the fresh chits the chain does not hold
            self.put_chit(conn, old.cuid, chit, now_ms)
        assignments = ", ".join(f"{column} = ?" for column in sets)
        conn.execute(
            f"UPDATE tallies SET {assignments} WHERE uuid = ? AND cuid = ?",
            (*sets.values(), *old.key),
        )
        if chain is not None:
            chain = trim(chain, chain_rows.CHAIN_WINDOW)
        return self._remember(Holding(old.cuid, local, chain, old.balance + balance_delta,
                                      token, lift_in, lift_out,
                                      old.asked if asked is None else asked))

    @staticmethod
    def named(conn: sqlite3.Connection, holding: Holding, wanted: Wanted
              ) -> tuple[Chain | None, dict[int, dict[str, Any]], dict[str, LocalChit]]:
        """``store.chain_rows.named`` for the holding's chain."""
        return chain_rows.named(conn, holding.key, holding.chain, wanted)

    def given_up(self, conn: sqlite3.Connection, holding: Holding) -> Chain:
        """``protocol.chain.give_up`` of the holding's chain, a foil's spilled chits read
        back first: a foil links the chits that waited for the lost blocks only once it holds
        them all, so with some spilled it went on waiting, its user's payments unordered (and
        unsent) for ever. They are our own user's, as many as it paid meanwhile."""
        chain = holding.chain
        assert chain is not None
        if chain.side == FOIL and chain.spilled:
            chain, _, _ = self.named(conn, holding, Wanted(frozenset(), frozenset(),
                                                           chain.spilled))
            assert chain is not None
        return give_up(chain)

    @staticmethod
    def fill_limits(conn: sqlite3.Connection) -> int:
        """Fill ``lim``/``partner_limit`` of rows made before those columns existed."""
        rows = conn.execute(
            "SELECT uuid, cuid, side, state, body FROM tallies WHERE lim IS NULL").fetchall()
        conn.executemany(
            "UPDATE tallies SET lim = ?, partner_limit = ? WHERE uuid = ? AND cuid = ?",
            [(*_limits(LocalTally(row["side"], row["state"], unpack(row["body"]))),
              row["uuid"], row["cuid"]) for row in rows],
        )
        return len(rows)

    @staticmethod
    def route_candidates(conn: sqlite3.Connection, cuid: str, states: Iterable[str]
                         ) -> list[sqlite3.Row]:
        """The user's tallies in ``states`` with what route discovery needs, from columns."""
        states = tuple(states)
        return conn.execute(
            "SELECT uuid, state, side, partner, partner_cuid, balance, lim, partner_limit,"
            " lift_in, lift_out FROM tallies WHERE cuid = ?"
            f" AND state IN ({', '.join('?' * len(states))}) AND partner IS NOT NULL",
            (cuid, *states),
        ).fetchall()

    @staticmethod
    def creditors(conn: sqlite3.Connection, minimum: int) -> list[str]:
        """Users owed at least ``minimum`` (beyond pending lift chits) on some tally a route
        may take (``protocol.route.CARRYING``: open or closing)."""
        states = ", ".join("?" * len(CARRYING))
        return [row[0] for row in conn.execute(
            f"SELECT DISTINCT cuid FROM tallies WHERE state IN ({states})"
            " AND balance - lift_out >= ? ORDER BY cuid", (*CARRYING, minimum))]

    @staticmethod
    def lift_chits(conn: sqlite3.Connection, lift: str) -> list[sqlite3.Row]:
        """Every chit of a lift this node holds: (tally, cuid, uuid, state, units, issuer)."""
        return conn.execute(
            "SELECT tally, cuid, uuid, state, units, issuer FROM chits WHERE lift = ?"
            " ORDER BY seq", (lift,),
        ).fetchall()

    def set_error(self, conn: sqlite3.Connection, tally_uuid: str, cuid: str, error: str) -> None:
        """Record the partner's last refusal; the cached holding stays valid."""
        conn.execute(
            "UPDATE tallies SET error = ? WHERE uuid = ? AND cuid = ?", (error, tally_uuid, cuid)
        )

    def resynced(
        self, conn: sqlite3.Connection, tally_uuid: str, cuid: str, due_ms: int, *,
        asked: bool = False,
    ) -> None:
        """A repair was sent (``asked``: it asked for blocks the partner claims, which
        changes the holding: a new token): look again at ``due_ms`` if the chain is still
        unsettled."""
        conn.execute(
            "UPDATE tallies SET resync_due = ?, resync_tries = resync_tries + 1,"
            " chain_asked = chain_asked + ?, token = CASE WHEN ? THEN randomblob(16) ELSE token"
            " END WHERE uuid = ? AND cuid = ?",
            (due_ms, int(asked), int(asked), tally_uuid, cuid),
        )

    def _remember(self, holding: Holding) -> Holding:
        self._cache[holding.key] = holding
        self._cache.move_to_end(holding.key)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return holding

    # -- chits ---------------------------------------------------------------------------

    put_chit = staticmethod(chain_rows.put_chit)

    @staticmethod
    def get_chit(
        conn: sqlite3.Connection, tally_uuid: str, cuid: str, chit_uuid: str
    ) -> LocalChit | None:
        row = conn.execute(
            "SELECT state, body, block FROM chits WHERE tally = ? AND cuid = ? AND uuid = ?",
            (tally_uuid, cuid, chit_uuid),
        ).fetchone()
        if row is None:
            return None
        return LocalChit(row["state"], chain_rows.chit_of(row["body"], row["block"]))

    @staticmethod
    def count_in_state(conn: sqlite3.Connection, cuid: str, state: str) -> int:
        """How many of our user's tallies are in ``state`` (from the index by user)."""
        return conn.execute("SELECT count(*) FROM tallies WHERE cuid = ? AND state = ?",
                            (cuid, state)).fetchone()[0]

    @staticmethod
    def count_unchained(conn: sqlite3.Connection, tally_uuid: str, cuid: str, state: str) -> int:
        """How many of a holder's chits not in the chain (pending or void) are in ``state``:
        read from the chain index's unchained end, not the whole tally."""
        return conn.execute(
            "SELECT count(*) FROM chits WHERE tally = ? AND cuid = ? AND chain_index IS NULL"
            " AND state = ?", (tally_uuid, cuid, state)).fetchone()[0]

    @staticmethod
    def tallies_with_chit(conn: sqlite3.Connection, cuid: str, chit_uuid: str) -> list[str]:
        """The user's tallies that hold a chit with this uuid (normally one)."""
        return [row[0] for row in conn.execute(
            "SELECT tally FROM chits WHERE cuid = ? AND uuid = ?", (cuid, chit_uuid))]

    @staticmethod
    def set_chit_error(
        conn: sqlite3.Connection, tally_uuid: str, cuid: str, chit_uuid: str, error: str
    ) -> None:
        conn.execute(
            "UPDATE chits SET error = ? WHERE tally = ? AND cuid = ? AND uuid = ?",
            (error, tally_uuid, cuid, chit_uuid),
        )

    # -- tickets -------------------------------------------------------------------------

    @staticmethod
    def add_ticket(
        conn: sqlite3.Connection,
        token: str,
        tally_uuid: str,
        cuid: str,
        *,
        reuse: bool,
        expires_ms: int,
        now_ms: int,
    ) -> None:
        conn.execute(
            "INSERT INTO tickets (token, tally, cuid, reuse, expires, created)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (token, tally_uuid, cuid, int(reuse), expires_ms, now_ms),
        )

    @staticmethod
    def get_ticket(conn: sqlite3.Connection, token: str) -> sqlite3.Row | None:
        return conn.execute(
            "SELECT token, tally, cuid, reuse, expires, used FROM tickets WHERE token = ?",
            (token,),
        ).fetchone()

    @staticmethod
    def use_ticket(conn: sqlite3.Connection, token: str) -> None:
        conn.execute("UPDATE tickets SET used = used + 1 WHERE token = ?", (token,))

    @staticmethod
    def add_request(conn: sqlite3.Connection, tally_uuid: str, cuid: str, inviter: str,
                    partner: str, now_ms: int) -> None:
        """Our user presented a ticket to ``inviter`` (the agent; ``partner``: the inviting
        user's CHIP address, as the ticket names it): the offer of ``tally_uuid`` may come."""
        conn.execute("INSERT OR REPLACE INTO tally_requests (tally, cuid, inviter, partner,"
                     " created) VALUES (?, ?, ?, ?, ?)",
                     (tally_uuid, cuid, inviter, partner, now_ms))

    @staticmethod
    def take_request(conn: sqlite3.Connection, tally_uuid: str, cuid: str, inviter: str
                     ) -> bool:
        """Whether our user asked ``inviter`` for the tally (and no longer waits for it)."""
        return conn.execute("DELETE FROM tally_requests WHERE tally = ? AND cuid = ?"
                            " AND inviter = ?", (tally_uuid, cuid, inviter)).rowcount == 1


def _limits(local: LocalTally) -> tuple[int, int]:
    """(the most the partner may owe this holder, the most it may owe the partner)."""
    return (local.tally[local.side]["terms"]["limit"],
            local.tally[local.partner_side]["terms"]["limit"])


def _partner(local: LocalTally) -> tuple[str | None, str | None]:
    cert = local.tally[local.partner_side]["cert"]
    if cert is None:
        return None, None
    return cert["chad"]["agent"], cert["chad"].get("cuid")
