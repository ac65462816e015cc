"""Chits: payments and invoices on an open tally, and chain messages (the ``chit`` target).

``protocol.chit`` decides each chit's transition and ``protocol.chain`` orders good chits into
the chain both holders agree on; :meth:`CreditLedger.good` commits a chit that became good,
chains it and tells the partner. Every chit message must come from the tally partner (agent
and user) and be addressed to one of our users; signatures are checked by the protocol.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentd.rpc import invalid_params
from agentd.runtime.answers import AnswersInFlight
from agentd.runtime.context import NotYet, Reject, Service, Tx
from agentd.services.credit.ids import chit_id, tally_id
from agentd.services.credit.ledger import CreditLedger, log_chits
from agentd.services.credit.params import (
    new_uuids,
    object_uuid,
    param_amount,
    param_cuid,
    param_memo,
)
from protocol import chain as ch
from protocol import chit as c
from protocol import chit_states as cs
from protocol import tally as t
from protocol.chit_local import LocalChit, effect
from protocol.envelope import Envelope
from protocol.errors import Refusal
from protocol.keys import b64u
from store import credit as credit_store
from store import lifts
from store.credit import Holding

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime
    from protocol.messages import Send

MAX_PAYMENTS = 1000  # payments per chit.pay_many call
MAX_INVOICES = 1000  # a partner's invoices waiting for our user's answer on one tally
REPAIRS = 8  # blocks sent to repair a partner's chain, waiting unacked on one tally at most


class ChitService(Service):
    """The ``chit`` target and the ``chit.*`` RPC methods."""

    target = "chit"
    actions = frozenset({"good", "pend", "void", "chain"})

    def __init__(self, node: Runtime, ledger: CreditLedger) -> None:
        super().__init__(node)
        self.ledger = ledger
        # blocks sent in answer to chain messages that changed nothing, by (tally, user)
        self._repairs = AnswersInFlight(REPAIRS)
        # told of a chain message of ours the partner refused LIFT_UNDECIDED: shows it the
        # decisions it lacks (``LiftDecisions.on_undecided``)
        self.on_undecided: Callable[[Tx, dict[str, Any]], None] = lambda *_: None
        for name, method in (("pay", self.rpc_pay), ("pay_many", self.rpc_pay_many),
                             ("invoice", self.rpc_invoice), ("accept", self.rpc_chit_accept),
                             ("refuse", self.rpc_chit_refuse), ("list", self.rpc_chits)):
            node.register_method(f"chit.{name}", method)

    def on_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        self.chit_rejected(tx, envelope, code, message)

    def subject(self, envelope: dict) -> str | None:
        tally = (envelope.get("object") or {}).get("tally")
        return f"tally {tally}" if isinstance(tally, str) else None

    # -- RPC -----------------------------------------------------------------------------

    async def rpc_pay(self, cuid: str, tally: str, units: int, memo: str = "") -> dict:
        """Pay the partner ``units`` milliCHIPs: a chit our user signs, good at once. Refused
        before anything is sent if it would bring what our user owes past the partner's limit
        (``OVER_LIMIT``), or grow the balance of a closing tally (``CLOSING``), or while this
        node knows it lacks blocks the partner confirmed (``CHAIN_BEHIND``: restored from a
        backup, its balance is stale until the partner sends them)."""
        result = await self._pay(cuid, tally, [param_amount(units, "units")], memo, batched=False)
        return result[0]

    async def rpc_pay_many(self, cuid: str, tally: str, units: list[int], memo: str = "") -> dict:
        """Several payments in one transaction, each its own signed chit, sent to the partner
        a hundred to a message. All are refused if any would pass the partner's limit."""
        if not isinstance(units, list) or not 1 <= len(units) <= MAX_PAYMENTS:
            raise invalid_params(f"units must be a list of 1 to {MAX_PAYMENTS} amounts")
        paid = await self._pay(cuid, tally, [param_amount(u, f"units[{at}]")
                                             for at, u in enumerate(units)], memo,
                               batched=True)
        return {"tally": tally, "chits": [item["chit"] for item in paid]}

    async def _pay(
        self, cuid: str, tally: str, amounts: list[int], memo: str, *, batched: bool
    ) -> list[dict]:
        cuid, memo = param_cuid(cuid), param_memo(memo)
        tally_uuid = tally_id(self.ledger, cuid, tally)
        self.ledger.known_user(cuid)  # UNKNOWN_USER before UNKNOWN_TALLY

        def work(tx: Tx) -> list[LocalChit]:
            holding = self.ledger.holding(tx.conn, tally_uuid, cuid, ours=True)
            self.ledger.check_caught_up(holding)
            key = self.ledger.user(tx.conn, cuid).key
            balance, paid = holding.balance, []
            for at, (chit_uuid, units) in enumerate(zip(new_uuids(len(amounts)), amounts,
                                                        strict=True)):
                try:
                    chit, _ = c.pay(holding.local, key, chit_uuid=chit_uuid, units=units,
                                    date_ms=tx.now_ms, balance=balance, memo=memo,
                                    reserved=holding.lift_out)
                except Refusal as exc:  # say which, and that the call paid nothing
                    if not batched or not at:
                        raise
                    raise Refusal(exc.code, f"units[{at}], after {sum(amounts[:at])} in this "
                                  f"call before it (nothing was paid): {exc.message}") from exc
                balance += effect(chit.chit, holding.local.side)
                paid.append(chit)
            self.ledger.good(tx, holding, paid, batched=batched)
            return paid

        paid = await self.ledger.transact(work)
        return [{"chit": chit.uuid, "state": chit.state, "tally": tally_uuid,
                 "units": chit.chit["units"]} for chit in paid]

    async def rpc_invoice(self, cuid: str, tally: str, units: int, memo: str = "") -> dict:
        """Ask the partner to pay ``units``: a chit in its name that it accepts or refuses."""
        cuid = param_cuid(cuid)
        tally_uuid = tally_id(self.ledger, cuid, tally)
        units, memo = param_amount(units, "units"), param_memo(memo)
        self.ledger.known_user(cuid)

        def work(tx: Tx) -> LocalChit:
            holding = self.ledger.holding(tx.conn, tally_uuid, cuid, ours=True)
            drafted, messages = c.invoice(holding.local, chit_uuid=str(uuidlib.uuid4()),
                                          units=units, date_ms=tx.now_ms,
                                          balance=holding.balance, memo=memo,
                                          reserved=holding.lift_in)
            self.ledger.store.put_chit(tx.conn, cuid, drafted, tx.now_ms)
            log_chits(tx, cuid, [drafted])
            self.ledger.emit(tx, messages)
            return drafted

        drafted = await self.ledger.transact(work)
        return {"chit": drafted.uuid, "state": drafted.state, "tally": tally_uuid,
                "units": units}

    async def rpc_chit_accept(self, cuid: str, chit: str) -> dict:
        """Pay the partner's invoice: our user signs it and it is good (refused as chit.pay
        refuses a payment)."""
        cuid = param_cuid(cuid)
        chit_uuid = chit_id(self.ledger, cuid, chit)
        self.ledger.known_user(cuid)

        def work(tx: Tx) -> LocalChit:
            holding, owed = self.ledger.owed(tx.conn, cuid, chit_uuid)
            self.ledger.check_caught_up(holding)
            paid, _ = c.accept(owed, holding.local, self.ledger.user(tx.conn, cuid).key,
                               balance=holding.balance, reserved=holding.lift_out)
            self.ledger.good(tx, holding, [paid], batched=False)
            return paid

        paid = await self.ledger.transact(work)
        return {"chit": chit_uuid, "state": paid.state, "tally": paid.chit["tally"]}

    async def rpc_chit_refuse(self, cuid: str, chit: str) -> dict:
        """Turn the partner's invoice down."""
        cuid = param_cuid(cuid)
        chit_uuid = chit_id(self.ledger, cuid, chit)
        self.ledger.known_user(cuid)

        def work(tx: Tx) -> LocalChit:
            holding, owed = self.ledger.owed(tx.conn, cuid, chit_uuid)
            refused, messages = c.refuse(owed, holding.local)
            self.ledger.store.put_chit(tx.conn, cuid, refused, tx.now_ms)
            log_chits(tx, cuid, [refused])
            self.ledger.log(tx, holding.local, "chit.void", refused.to_map(), ref=chit_uuid)
            self.ledger.emit(tx, messages)
            return refused

        refused = await self.ledger.transact(work)
        return {"chit": chit_uuid, "state": refused.state, "tally": refused.chit["tally"]}

    async def rpc_chits(self, cuid: str, tally: str, start: int = 1,
                        limit: int | None = None) -> list[dict]:
        """The tally's chits from the user's side, in chain order (unlinked ones last):
        ``by`` is the issuer (the payer), ``index``/``hash`` its block in the chain, ``error``
        the partner's refusal of it while the partner has not confirmed its block (a refusal
        the chain's repair overcame is no longer shown). A long tally is read a page at a
        time: the chits from block ``start`` (default 1) on, at most ``limit`` (default
        all); the next page starts after the last index shown."""
        cuid = param_cuid(cuid)
        tally_uuid = tally_id(self.ledger, cuid, tally)
        for name, value, what in (("start", start, "a block index"),
                                  ("limit", limit, "a number of chits")):
            if value is not None and not 1 <= value < 2**63:  # its type: agentd.rpc_types
                raise invalid_params(f"{name} must be {what} from 1, not {value}")
        confirmed = self.ledger.tally_row(cuid, tally_uuid)["chain_conf"] or 0
        return [
            {"chit": row["uuid"], "by": row["issuer"], "type": row["type"],
             "units": row["units"], "state": row["state"], "index": row["chain_index"],
             "hash": None if row["chain_hash"] is None else b64u(row["chain_hash"]),
             "memo": row["memo"], "date": row["date"],
             "error": _unconfirmed(row["error"], row["chain_index"], confirmed),
             "lift": row["lift"]}
            for row in self.runtime.db.reading(
                lambda conn: credit_store.list_chits(conn, tally_uuid, cuid, start, limit))
        ]  # fmt: skip

    # -- messages (writer thread) --------------------------------------------------------

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        cuid = self.ledger.addressee(tx.conn, envelope)
        obj, action = envelope.object, envelope.action
        holding = self.ledger.holding(tx.conn, object_uuid(obj, "tally"), cuid)
        self.ledger.check_partner(holding, envelope)
        if action == "chain":
            self._on_chain(tx, holding, obj)
            return
        if action not in ("good", "pend", "void"):
            raise Reject("UNKNOWN_ACTION", f"chit has no action {action!r}")
        chit_uuid = object_uuid(obj, "uuid")
        known = self.ledger.store.get_chit(tx.conn, holding.local.uuid, cuid, chit_uuid)
        try:
            if action == "good":
                received = _receive_good(known, obj, holding, holding.balance)
            elif action == "pend":
                received, _ = c.receive_pend(known, obj, holding.local)
                self._room_for_invoice(tx, holding, cuid)
            elif known is None:
                raise Reject("UNKNOWN_CHIT", f"no chit {chit_uuid} on tally {obj['tally']}")
            else:
                received, _ = c.receive_void(known, obj, holding.local)
        except t.Refusal as refusal:
            if known is None or refusal.code != "bad_state":
                raise
            if known.chit["hash"] != obj.get("hash", known.chit["hash"]):
                raise Reject("CONFLICT", f"chit {chit_uuid} is already here with other "
                             "contents") from refusal
            return  # a copy of what we already hold (resent, or adopted from the chain)
        if action == "good":
            wanted = ch.wanted_chit(holding.chain, received.chit)
            history = self.ledger.store.named(tx.conn, holding, wanted)[1] \
                if wanted.indexes else None
            self.ledger.good(tx, holding, [received], batched=False, history=history)
            return
        self.ledger.store.put_chit(tx.conn, cuid, received, tx.now_ms)
        log_chits(tx, cuid, [received])
        if action == "void":
            self.ledger.log(tx, holding.local, "chit.void", received.to_map(), ref=chit_uuid)

    def _room_for_invoice(self, tx: Tx, holding: Holding, cuid: str) -> None:
        """A partner's invoices wait for our user, each a row: at most ``MAX_INVOICES`` on a
        tally at once, so a partner cannot make us keep them without bound."""
        waiting = self.ledger.store.count_unchained(tx.conn, holding.local.uuid, cuid, cs.L_PEND)
        if waiting >= MAX_INVOICES:
            raise Reject("TOO_MANY_INVOICES", f"{cuid} has {waiting} invoices of yours on tally "
                         f"{holding.local.uuid} to answer already; wait for them to be "
                         "accepted or refused")

    def _on_chain(self, tx: Tx, holding: Holding, obj: Any) -> None:
        if holding.chain is None:
            raise Reject("BAD_STATE", f"tally {holding.local.uuid} is {holding.local.state}: "
                         "it has no chain yet")
        wanted = ch.wanted(holding.chain, obj)
        chain, history, rows = self.ledger.store.named(tx.conn, holding, wanted)
        assert chain is not None
        try:
            received = ch.receive(chain, obj, holding.local, history)
        except Refusal as exc:
            if exc.code == "lift_undecided":
                self._awaiting_decision(tx, holding, obj, exc)
            raise
        changed = not _same(chain, received.chain)
        answers = not changed or holding.local.side == t.STOCK  # sent a few at a time
        if changed:
            adopted = []  # good chits first learned from this message
            delta = 0
            for chit in received.adopted:  # wanted named each (the chain did not hold it)
                got = _adopt(rows.get(chit["uuid"]), chit, holding, holding.balance + delta)
                self.ledger.log(tx, holding.local, "chit.good", got.chit, ref=got.uuid)
                adopted.append(got)
                delta += effect(got.chit, holding.local.side)
            self.ledger.commit(tx, holding, chain=received.chain, delta=delta,
                               messages=[] if answers else received.messages, fresh=adopted)
        if answers:
            self._repair(tx, holding, received.messages)

    def _repair(self, tx: Tx, holding: Holding, messages: list[Send]) -> None:
        """Send the answers to a chain message that changed nothing (a request for old
        blocks, an ack again, a copy), and the stock's answers to any (the blocks a foil
        restored from a backup lost). Their blocks (an ``upd``, up to 100 of them) are a
        repair the partner's resync asks for again if it is lost, so a few at a time: while
        ``REPAIRS`` such answers on this tally still wait in the outbox, a new one is not
        written. Otherwise a partner that never acks could have each small message it
        sends make us keep an answer of up to 100 blocks for ever. A short answer (an ack,
        a request) goes as ever."""
        key = (holding.local.uuid, holding.cuid)
        for message in messages:
            if message.object.get("cmd") != "upd":
                tx.send(message)
            elif self._repairs.room(tx.conn, key):
                self._repairs.sent(key, tx.send(message))

    def _awaiting_decision(self, tx: Tx, holding: Holding, obj: dict[str, Any],
                           undecided: Refusal) -> None:
        """A chain message carries a lift chit we do not hold good (``undecided``). If we
        hold it pending, the partner applied the lift's decision before us: until the lift's
        deadline, ours is on its way, so the message is early, not wrong (``NotYet``: taken
        when it comes again). Past it, the referee may be withholding ours: the refusal makes
        the partner show us the decision (``LiftDecisions.on_undecided``), as it does when we
        hold the chit void."""
        chits = obj.get("chits")
        for chit in chits if isinstance(chits, list) else []:
            if isinstance(chit, dict) and chit.get("type") == "lift" and isinstance(
                    chit.get("uuid"), str):
                held = self.ledger.store.get_chit(tx.conn, holding.local.uuid, holding.cuid,
                                                  chit["uuid"])
                if held is None or held.state not in (cs.A_LIFT, cs.L_LIFT):
                    continue
                lift = lifts.get(tx.conn, held.chit["ref"]["lift"])
                if lift is None or tx.now_ms < lift["deadline"]:
                    raise NotYet(undecided.message) from undecided
                raise Refusal("lift_undecided", f"lift chit {held.uuid} is still pending here "
                              f"past lift {lift['lift']}'s deadline: its referee has not told "
                              "this node (this refusal asks the partner for it)")

    def chit_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        """The partner refused a chit message of ours for good: keep the reason where the user
        sees it (the chain repairs itself by resync when the cause is gone)."""
        obj, sender = envelope.get("object") or {}, envelope.get("from") or {}
        tally_uuid, cuid = obj.get("tally"), sender.get("cuid")
        if not isinstance(tally_uuid, str) or not isinstance(cuid, str):
            return
        action = envelope.get("action")
        reason = f"chit {action}: {code}: {message}"  # its form: see params._standing
        self.ledger.store.set_error(tx.conn, tally_uuid, cuid, reason)
        if action == "chain" and code == "LIFT_UNDECIDED":
            self.on_undecided(tx, envelope)
        if action in ("good", "pend", "void") and isinstance(obj.get("uuid"), str):
            self.ledger.store.set_chit_error(tx.conn, tally_uuid, cuid, obj["uuid"], reason)


def _same(before: ch.Chain, after: ch.Chain) -> bool:
    """Whether a chain message left the chain as it was: its blocks, unlinked chits, ``conf``
    and how far the partner said it confirmed (``ahead``: past our head, we lost blocks, and
    the repair asks for them while it is kept)."""
    return (before.length, before.head, before.conf, before.pending, before.spilled,
            before.ahead) == (after.length, after.head, after.conf, after.pending,
                              after.spilled, after.ahead)


def _unconfirmed(error: str | None, index: int | None, confirmed: int) -> str | None:
    """A chit's error as shown: the partner's refusal matters until it confirms the block."""
    return None if index is not None and index <= confirmed else error


def _adopt(known: LocalChit | None, chit: dict[str, Any], holding: Holding,
           balance: int) -> LocalChit:
    """A good chit a chain message brought that the chain did not hold: the partner's, or
    our own user's, which a node restored from a backup lost (``protocol.chain.own_good``:
    its signature is ours)."""
    if chit["by"] == holding.local.side:
        return ch.own_good(known, chit, holding.local)
    return _receive_good(known, chit, holding, balance)


def _receive_good(known: LocalChit | None, chit: Any, holding: Holding,
                  balance: int) -> LocalChit:
    """``protocol.chit.receive_good`` on ``holding``; a chit it finds ``awaiting_lift`` (it
    fits once a lift's decision the partner has applied reaches us too) is left unacked
    (``NotYet``) and taken when it comes again."""
    try:
        received, _ = c.receive_good(known, chit, holding.local, balance=balance,
                                     paying=holding.lift_out)
    except Refusal as exc:
        if exc.code == "awaiting_lift":
            raise NotYet(exc.message) from exc
        raise
    return received
