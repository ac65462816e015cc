"""The credit ledger operations every credit service shares: users, holdings, commits.

Tally negotiation (``tallies``), chits (``chits``), chain repair (``repair``) and lifts load a
holder's tally through :class:`CreditLedger`, let the protocol decide one transition and hand
the outcome to :meth:`CreditLedger.commit`, which applies the tally lifecycle rules, saves the
tally, its chain, balance, reservations and chits (``store.credit``) and queues the messages,
all in the caller's transaction. Every message is a ``protocol.messages.Send`` that names its
recipient (the tally partner, for tally, chit and chain messages; any agent, for lifts and
routes); :meth:`CreditLedger.emit` queues them as they are.

Evidence (``log``, a no-op without a clearing house): tally open and close, chits becoming
good or void. Each partner's node logs its own under ``AGENT/TALLY`` (its agent id, then the
tally uuid: ``evidence_pid``), owned by both partners' agents, so each holds a receipt for
every piece and nobody else can create the process first; the bare uuid, which the ticket
gives away, could be taken. When both holders are on this node only the foil holder logs, so
nothing is logged twice.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from agentd.logs import event
from agentd.rpc import NOT_FOUND, RpcError
from agentd.runtime.context import Reject, Tx
from protocol import chain as ch
from protocol import chit_states as cs
from protocol import evidence as ev
from protocol import lift as lf
from protocol import tally as t
from protocol import tally_fields as tf
from protocol.chit_local import LocalChit, effect
from protocol.envelope import Envelope
from protocol.keys import SigningKey
from protocol.messages import Send
from store import credit as credit_store
from store import users
from store.credit import Holding, Ledger

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime
    from agentd.services.clearing.client import Evidence

T = TypeVar("T")
log = logging.getLogger("agentd.credit")
RESYNC_QUIET_MS = 1000  # a chain this long still is repaired (see ``repair``)
ASKS = 8  # repairs that ask for blocks a partner claims, the chain not growing, till given up


@dataclass(frozen=True)
class User:
    cuid: str
    key: SigningKey
    cert: dict[str, Any]


class CreditLedger:
    """Holdings, users and commits, on the writer thread; RPC plumbing on the event loop."""

    def __init__(self, node: Runtime, evidence: Evidence) -> None:
        self.changed = trio.Event()  # set (and replaced) after every committed tally change
        self.on_change: list[Callable[[], None]] = []  # e.g. wake the chain repair
        # told of a chain that owes its partner blocks not sent yet (a foil's lift chits):
        # the chain repair sends them shortly, several together (``ChainRepair.owe``)
        self.owe: Callable[[str, str], None] = lambda tally, cuid: None
        self.runtime = node
        self.evidence = evidence
        self.store = Ledger()  # used on the writer thread only
        self._users: dict[str, User] = {}  # writer thread

    # -- shared steps (writer thread) ------------------------------------------------------

    def good(self, tx: Tx, holding: Holding, chits: list[LocalChit], *, batched: bool,
             lift_delta: tuple[int, int] = (0, 0),
             history: dict[int, dict[str, Any]] | None = None) -> None:
        """Chits that just became good here (ours, or one the partner sent ``good``): store
        them, chain them, move the balance, tell the partner. ``history``: the blocks behind
        the chain's window that ``protocol.chain.wanted_chit`` names for the partner's chit."""
        side = holding.local.side
        for chit in chits:
            self.log(tx, holding.local, "chit.good", chit.chit, ref=chit.uuid)
        assert holding.chain is not None  # a tally that takes chits is binding
        if batched:
            chain, messages = ch.add_many(holding.chain, [chit.chit for chit in chits],
                                          holding.local)
        else:
            (chit,) = chits
            chain, messages = ch.add(holding.chain, chit.chit, holding.local, history)
            if chit.chit["type"] == "lift" and side == t.FOIL:  # its block goes a moment later
                key = holding.key
                tx.after_commit(lambda: self.owe(*key))
        delta = sum(effect(chit.chit, side) for chit in chits)
        self.commit(tx, holding, chain=chain, delta=delta, messages=messages, fresh=chits,
                    lift_delta=lift_delta)

    def commit(
        self,
        tx: Tx,
        holding: Holding,
        *,
        local: t.LocalTally | None = None,
        chain: ch.Chain | None = None,
        delta: int = 0,
        messages: Iterable[Send] = (),
        fresh: Iterable[LocalChit] = (),
        lift_delta: tuple[int, int] = (0, 0),
    ) -> Holding:
        """Save a transition's outcome (with the ``fresh`` chits it made or changed, and the
        change ``lift_delta`` in what pending lift chits hold) and queue its messages, after
        the tally lifecycle rules (``protocol.tally.follow``). A chain whose repairs asked
        ``ASKS`` times for blocks its partner claims (``protocol.chain.lacking``) and got
        none believes no claim until it grows (:meth:`_believed`)."""
        chain, asked = self._believed(holding, chain or holding.chain)
        local, happened = t.follow(local or holding.local, has_chain=chain is not None,
                                   balance=holding.balance + delta,
                                   quiet=chain is not None and ch.settled(chain))
        if t.START_CHAIN in happened:
            chain = ch.start(local)
            self.log(tx, local, "tally.open", local.tally)
            self._know_partner(tx, local)
        if t.CLOSED in happened:
            self.log(tx, local, "tally.close", local.tally)
        fresh = list(fresh)
        tx.after_commit(self.changed_now)
        saved = self.store.save(tx.conn, holding, tx.now_ms, local=local, chain=chain,
                                 balance_delta=delta, resync_due=tx.now_ms + RESYNC_QUIET_MS,
                                 fresh=fresh, lift_delta=lift_delta, asked=asked)
        self.emit(tx, messages)
        if local.state != holding.local.state:
            tx.after_commit(functools.partial(
                event, log, "tally state", tally=local.uuid, cuid=holding.cuid,
                state=local.state, was=holding.local.state, balance=saved.balance))
        log_chits(tx, holding.cuid, fresh)
        return saved

    @staticmethod
    def check_caught_up(holding: Holding) -> None:
        """Refuse our user's payment on the tally (``CHAIN_BEHIND``) while its chain lacks
        blocks the partner confirmed, or gave such blocks up (:meth:`_believed`) and has not
        grown since: either way its balance may leave them out."""
        if holding.chain is not None:
            ch.check_caught_up(holding.chain, holding.balance, gave_up=holding.asked >= ASKS)

    @staticmethod
    def _believed(holding: Holding, chain: ch.Chain | None) -> tuple[ch.Chain | None,
                                                                      int | None]:
        """``chain`` as kept, and what its count of repairs that asked for claimed blocks
        becomes (None: as it is). A chain that grew (a block linked, or one more confirmed)
        counts from 0 again: the partner showed blocks. One that did not, whose repairs
        asked ``ASKS`` times (``repair.ChainRepair``), does not take a new claim: a partner
        that states a ``conf`` it never shows would otherwise keep it unsettled (and the
        tally from closing) for ever. A reply to the claim still asks for the blocks once
        (``protocol.chain`` answers it), so a partner that does hold them sends them."""
        before = holding.chain
        if chain is None or before is None or chain is before:
            return chain, None
        if chain.length > before.length or chain.conf > before.conf:
            return chain, 0 if holding.asked else None
        return (ch.give_up(chain) if holding.asked >= ASKS else chain), None

    def _know_partner(self, tx: Tx, local: t.LocalTally) -> None:
        """An open tally's partner is a peer we know from then on (the address its
        certificate gives): the inviter learns it here, as the subject learnt the inviter's
        from the ticket, so neither side's messages are a stranger's (``is_known``)."""
        tx.after_commit(lambda: self.runtime.learn_address(local.partner))

    def changed_now(self) -> None:
        """A tally changed (committed): wake ``tally.wait`` callers and ``on_change``."""
        self.changed.set()
        self.changed = trio.Event()
        for wake in self.on_change:
            wake()

    def emit(self, tx: Tx, sends: Iterable[Send]) -> None:
        """Queue typed messages, each to the recipient it names."""
        for send in sends:
            tx.send(send)

    def log(self, tx: Tx, local: t.LocalTally, kind: str, payload: object,
             ref: str | None = None) -> None:
        """Evidence for the clearing house, once per node (the foil holder's, when both
        holders are ours: one agent, one process)."""
        if self.evidence.clearing_house() is None:
            return  # evidence.log would do nothing, after checking its arguments
        partner = local.partner
        if partner.agent == self.runtime.agent_id and local.side == t.STOCK:
            return
        owners = [local.tally[side]["cert"]["chad"]["agent"] for side in t.SIDES]
        self.evidence.log(tx, self.evidence_pid(tx.conn, local.uuid), owners, kind, payload,
                          ref=local.uuid if ref is None else ref)  # the object it proves

    def evidence_of(self, tally_uuid: str) -> str | None:
        """Where this node logs the tally's evidence, for ``tally.show`` (None without a
        clearing house): the pid to read it by, whichever of the two it is."""
        if self.evidence.clearing_house() is None:
            return None
        return self.runtime.db.reading(lambda conn: self.evidence_pid(conn, tally_uuid))

    def evidence_pid(self, conn: sqlite3.Connection, tally_uuid: str) -> str:
        """Where this node logs a tally's evidence: ``AGENT/TALLY``, in its own namespace
        (``protocol.evidence.tally_pid``); a tally it logged under the bare uuid before
        (migration 16) keeps its one process there."""
        if credit_store.evidence_under_uuid(conn, tally_uuid):
            return tally_uuid
        return ev.tally_pid(self.runtime.agent_id, tally_uuid)

    def user(self, conn: sqlite3.Connection, cuid: str) -> User:
        user = self._users.get(cuid)
        if user is None:
            row = users.get(conn, cuid)
            if row is None:
                raise Reject("UNKNOWN_USER", f"no user {cuid!r} on this node")
            key = SigningKey(row["seed"])
            cert = tf.make_cert(self.runtime.own_address(cuid), row["name"], key.public,
                               row["created"])
            user = self._users[cuid] = User(cuid, key, cert)
        return user

    def known(self, conn: sqlite3.Connection, cuid: str) -> bool:
        """Whether ``cuid`` is one of our users."""
        return cuid in self._users or users.get(conn, cuid) is not None

    def holding(self, conn: sqlite3.Connection, tally_uuid: str, cuid: str, *,
                ours: bool = False) -> Holding:
        """``ours``: our user asks (an RPC call), so ``UNKNOWN_TALLY`` may name the user of
        this node who does hold it (a peer is not told who else we host)."""
        holding = self.store.get(conn, tally_uuid, cuid)
        if holding is None:
            raise Reject("UNKNOWN_TALLY", self._not_held(conn, cuid, tally_uuid) if ours
                         else no_tally(cuid, tally_uuid))
        return holding

    def _not_held(self, conn: sqlite3.Connection, cuid: str, tally_uuid: str) -> str:
        """UNKNOWN_TALLY's message for our own user: who on this node does hold it, or the
        offer the user waits for, or else where its tallies are listed (a tally uuid of
        another node's, or of one opened after the backup this node was restored from, is no
        tally a wait would bring). Never told to a peer."""
        held_by = [row["cuid"] for row in self.store.holders_of(conn, tally_uuid)]
        requesters = self.store.requesters_of(conn, tally_uuid)
        requested = cuid in requesters
        missing = no_tally(cuid, tally_uuid, held_by, requested=requested)
        if held_by or requested:
            return missing
        if requesters:  # another user of ours waits for its offer
            return (f"{missing}: on this node {' and '.join(requesters)} requested it "
                    f"(cuid={requesters[0]})")
        return f"{missing} (tally.list cuid={cuid} lists those it holds)"

    def lift_room(self, conn: sqlite3.Connection, cuid: str, pays_over: str, paid_over: str
                  ) -> int:
        """How much a circle can move through ``cuid`` now, by what its own hops carry: out
        over tally ``pays_over``, back over ``paid_over`` (counting pending lift chits). A
        circle over more would only fail at our own terminus check, holding our first hop
        until its referee voids it."""
        out, into = self.holding(conn, pays_over, cuid), self.holding(conn, paid_over, cuid)
        return min(lf.hop_room("circular", out.local, paying=True, balance=out.balance,
                               reserved=out.lift_out),
                   lf.hop_room("circular", into.local, paying=False, balance=into.balance,
                               reserved=into.lift_in))

    def owed(self, conn: sqlite3.Connection, cuid: str, chit_uuid: str
              ) -> tuple[Holding, LocalChit]:
        """The tally and the chit a user answers (an invoice addressed to it)."""
        tallies = self.store.tallies_with_chit(conn, cuid, chit_uuid)
        if not tallies:
            raise Reject("UNKNOWN_CHIT", f"user {cuid} holds no chit {chit_uuid}")
        if len(tallies) > 1:
            raise Reject("AMBIGUOUS", f"chit {chit_uuid} is on {len(tallies)} tallies")
        holding = self.holding(conn, tallies[0], cuid)
        owed = self.store.get_chit(conn, tallies[0], cuid, chit_uuid)
        assert owed is not None
        if owed.state != cs.L_PEND:
            raise Reject("BAD_STATE", _not_owed(chit_uuid, cuid, owed.state))
        return holding, owed

    def addressee(self, conn: sqlite3.Connection, envelope: Envelope) -> str:
        """Our user a tally or chit message is for."""
        cuid = envelope.to.cuid
        if cuid is None or users.get(conn, cuid) is None:
            raise Reject("UNKNOWN_USER", f"no user {cuid!r} on this node")
        return cuid

    @staticmethod
    def is_partner(holding: Holding, agent: str, cuid: str | None) -> bool:
        """Whether user ``cuid`` of ``agent`` is the partner of ``holding``'s tally."""
        cert = holding.local.tally[holding.local.partner_side]["cert"]
        return cert is not None and (agent, cuid) == (cert["chad"]["agent"],
                                                      cert["chad"]["cuid"])

    @classmethod
    def check_partner(cls, holding: Holding, envelope: Envelope) -> None:
        """Refuse a message about a tally from anyone but its partner as a tally we do not
        hold is refused (``UNKNOWN_TALLY``, the same words): a stranger must not learn
        which tally uuids our users hold by the answer."""
        if not cls.is_partner(holding, envelope.from_.agent, envelope.from_.cuid):
            raise Reject("UNKNOWN_TALLY", no_tally(holding.cuid, holding.local.uuid))

    async def transact(self, work: Callable[[Tx], T]) -> T:
        """Run ``work`` in one transaction; its messages go to the pump once committed."""
        return await self.runtime.transact(work)

    def known_user(self, cuid: str) -> str:
        if not self.runtime.db.reading(lambda conn: users.exists(conn, cuid)):
            raise RpcError(NOT_FOUND, f"no user {cuid!r} on this node "
                           f"({self.runtime.config.name}: users.list shows its users)",
                           "UNKNOWN_USER")
        return cuid

    def tally_row(self, cuid: str, tally_uuid: str, *, requested: bool = False) -> Any:
        """The user's row of the tally; with ``requested``, else its request of it (state
        ``requested``: ``tally.show``), read in one snapshot, as the offer swaps the two."""
        self.known_user(cuid)
        def read(conn: sqlite3.Connection) -> tuple[Any, str]:
            row = credit_store.tally_row(conn, tally_uuid, cuid)
            if row is None and requested:
                row = credit_store.request_row(conn, tally_uuid, cuid)
            return row, "" if row is not None else self._not_held(conn, cuid, tally_uuid)

        row, missing = self.runtime.db.reading(read)
        if row is None:
            raise RpcError(NOT_FOUND, missing, "UNKNOWN_TALLY")
        return row



def log_new_tally(tx: Tx, cuid: str, local: t.LocalTally) -> None:
    """The info line for a tally this transaction created, once it has committed."""
    tx.after_commit(functools.partial(event, log, "tally state", tally=local.uuid, cuid=cuid,
                                      state=local.state, was="none"))


def log_chits(tx: Tx, cuid: str, chits: Iterable[LocalChit]) -> None:
    """The info line per chit state change, once the transaction has committed."""
    for chit in chits:
        tx.after_commit(functools.partial(
            event, log, "chit state", chit=chit.chit["uuid"], tally=chit.chit["tally"],
            cuid=cuid, state=chit.state, units=chit.chit["units"]))


def no_tally(cuid: str, tally_uuid: str, held_by: list[str] | None = None, *,
             requested: bool = False) -> str:
    """UNKNOWN_TALLY's message. To a peer, no more than that. To our own user: the user of
    this node who holds the tally, when the caller named another (two users on one node, as
    in the README's examples); else, when the user presented the tally's ticket, the offer
    it waits for (its node holds the tally from then on)."""
    if held_by:
        return (f"user {cuid} holds no tally {tally_uuid}: on this node "
                f"{' and '.join(held_by)} hold{'s' * (len(held_by) == 1)} it "
                f"(cuid={held_by[0]})")
    if requested:  # kept when the inviter refuses: it refuses one it took already alike
        return (f"user {cuid} holds no tally {tally_uuid} yet: it presented the tally's ticket,"
                " and holds it from the inviter's offer on, unless the inviter refused the "
                "ticket (tally.wait state=P.offer waits for it)")
    return f"user {cuid} holds no tally {tally_uuid}"


def _not_owed(chit_uuid: str, cuid: str, state: str) -> str:
    """Why ``cuid`` cannot accept or refuse a chit in ``state``: what it is, in words (a user
    told only "cannot accept a chit in state L.void" does not know it refused it already)."""
    if state == cs.A_PEND:
        return (f"chit {chit_uuid} is {cuid}'s own invoice, waiting for the partner: the "
                "payer accepts or refuses it, on its node")
    if state == cs.A_VOID:
        return f"chit {chit_uuid} is {cuid}'s own invoice, which the partner refused ({state})"
    if state == cs.A_GOOD:
        return (f"chit {chit_uuid} is a payment to {cuid} ({state}): the partner's, {cuid}'s "
                "invoice it paid, or a lift's; only an invoice waiting for "
                f"{cuid}'s answer ({cs.L_PEND}) can be accepted or refused")
    done = {cs.L_VOID: "refused already", cs.L_GOOD: "paid already"}.get(state)
    return (f"chit {chit_uuid} is {f'{done} ({state})' if done else state}: only an invoice "
            f"waiting for {cuid}'s answer ({cs.L_PEND}) can be accepted or refused")
