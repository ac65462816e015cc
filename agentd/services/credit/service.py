"""Credit between users: tallies, chits and chit-chain consensus across nodes (DESIGN.md §4).

The protocol modules decide (``protocol.tally``, ``.chit``, ``.chain``); this service loads a
holder's tally from the ledger (``store.credit``), applies one transition and commits the new
state with the messages it produces in one transaction: in an RPC method's own job, or — for
a partner's message — in the dispatcher's job that also records the message id, so a
redelivered message changes nothing. A protocol refusal rolls the lot back: an RPC call fails
with error -32010 (``data.reason`` the upper-cased refusal code, e.g. ``OVER_LIMIT``) before
anything is sent, and a message is answered with an error ack.

Every tally and chit message must come from the tally partner (agent and user) and be
addressed to one of our users; signatures are checked by the protocol on every tally and chit
received. Two holders on this node (a tally between two of our users) are two ledger rows and
talk through the outbox like any partners; the pump delivers to our own agent locally.

An invitation ticket names no tally, so both ends derive its uuid from the token
(:func:`ticket_tally_uuid`): ``tally.request`` can name the tally the moment the inviter's node
has taken the request. ``tally.offer``/``accept``/``refuse``/``counter`` queue a message whose
delivery settles the state (``protocol.tally.delivered``/``rejected``).

Chains are repaired by ``protocol.chain.resync`` from :meth:`Credit.run`: once a second, for as
long as some chain is unsettled (a ``Ticker`` a chain change wakes), it looks for chains that
are not settled, have been still for a while (or whose partner's channel just opened) and
whose partner has nothing waiting in our outbox; each repair pushes the next one back
(doubling, up to a minute), and any chain change resets the pace.

Evidence (``log_evidence``, a no-op without a clearing house): tally open and close, chits
becoming good or void, under pid = the tally uuid, owned by both partners' agents. When both
holders are on this node only the foil holder logs, so nothing is logged twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from agentd.rpc import NOT_FOUND, RpcError, invalid_params
from agentd.runtime.context import Reject, Service, Tx
from agentd.runtime.timers import Ticker
from agentd.services.clearing.client import log_evidence
from protocol import chain as ch
from protocol import chit as c
from protocol import tally as t
from protocol.codec import unpack
from protocol.envelope import Envelope
from protocol.keys import ChipAddress, SigningKey, b64u, format_hostport, valid_cuid
from store import users
from store.credit import (
    LIST_CHITS,
    LIST_TALLIES,
    LIST_USER_TALLIES,
    SELECT_TALLY,
    UNSETTLED,
    Holding,
    Ledger,
)

if TYPE_CHECKING:
    import sqlite3

    from agentd.runtime.node import Node

log = logging.getLogger("agentd.credit")
T = TypeVar("T")

DEFAULT_LIMIT = 1_000_000  # milliCHIPs (1,000 CHIPs) each side may owe, until countered
DEFAULT_EXPIRES_S = 48 * 3600  # MyCHIPs' default ticket lifetime
MAX_EXPIRES_S = 365 * 24 * 3600
REQUEST_TIMEOUT = 10.0  # s tally.request waits for the inviter's node
MAX_WAIT_S = 3600.0  # the longest tally.wait
MAX_PAYMENTS = 1000  # payments per chit.pay_many call
RESYNC_INTERVAL = 1.0  # s between looks for chains to repair
RESYNC_QUIET_MS = 1000  # a chain this long still is repaired ...
RESYNC_MAX_MS = 60_000  # ... and, while repairs do not settle it, at most this far apart
REPORTED = frozenset({"ticket", "offer", "open", "void", "draft"})  # wants_delivery
_TICKET_NAMESPACE = uuidlib.uuid5(uuidlib.NAMESPACE_URL, "agentd:tally-ticket")
_NOT_FOUND = frozenset({"UNKNOWN_USER", "UNKNOWN_TALLY", "UNKNOWN_CHIT"})


def ticket_tally_uuid(token: str, subject: ChipAddress | None = None) -> str:
    """The tally a ticket leads to, worked out alike by inviter and subject: the draft's own
    uuid for a one-time ticket; for a reusable one, a uuid per ``subject`` user."""
    name = token if subject is None else f"{token}/{subject.agent}/{subject.cuid}"
    return str(uuidlib.uuid5(_TICKET_NAMESPACE, name))


@dataclass(frozen=True)
class _User:
    cuid: str
    key: SigningKey
    cert: dict[str, Any]


class TallyService(Service):
    """The ``tally`` message target."""

    target = "tally"

    def __init__(self, credit: Credit) -> None:
        super().__init__(credit.node)
        self.credit = credit

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        self.credit.on_tally(tx, envelope)

    def wants_delivery(self, envelope: dict) -> bool:
        return envelope.get("action") in REPORTED

    def on_delivered(self, tx: Tx, envelope: dict) -> None:
        self.credit.tally_settled(tx, envelope, None)

    def on_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        self.credit.tally_settled(tx, envelope, Reject(code, message))


class ChitService(Service):
    """The ``chit`` message target."""

    target = "chit"

    def __init__(self, credit: Credit) -> None:
        super().__init__(credit.node)
        self.credit = credit

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        self.credit.on_chit(tx, envelope)

    def on_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        self.credit.chit_rejected(tx, envelope, code, message)


class Credit:
    """Tallies and chits for the users of one node: RPC methods, both message targets, and
    the chain repair task. ``node.credit``."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.ledger = Ledger()  # used on the writer thread only
        self._users: dict[str, _User] = {}  # writer thread
        self._connected: set[str] = set()
        self._unsettled = False  # whether the last look found a chain to settle
        self._repairs = Ticker(RESYNC_INTERVAL, self._repair_tick)
        self._changed = trio.Event()  # set (and replaced) after every committed tally change
        node.dispatcher.register(TallyService(self))
        node.dispatcher.register(ChitService(self))
        for name, method in (
            ("tally.invite", self.rpc_invite),
            ("tally.request", self.rpc_request),
            ("tally.offer", self.rpc_offer),
            ("tally.accept", self.rpc_accept),
            ("tally.refuse", self.rpc_refuse),
            ("tally.counter", self.rpc_counter),
            ("tally.close", self.rpc_close),
            ("tally.list", self.rpc_list),
            ("tally.show", self.rpc_show),
            ("tally.wait", self.rpc_wait),
            ("chit.pay", self.rpc_pay),
            ("chit.pay_many", self.rpc_pay_many),
            ("chit.invoice", self.rpc_invoice),
            ("chit.accept", self.rpc_chit_accept),
            ("chit.refuse", self.rpc_chit_refuse),
            ("chit.list", self.rpc_chits),
        ):
            node.rpc.register(name, method)

    # -- RPC: tallies --------------------------------------------------------------------

    async def rpc_invite(
        self,
        cuid: str,
        limit: int = DEFAULT_LIMIT,
        side: str = t.STOCK,
        reuse: bool = False,
        expires_s: float = DEFAULT_EXPIRES_S,
        memo: str = "",
    ) -> dict:
        """Draft a tally and an invitation ticket: one string to hand to the partner, who
        requests the tally with it (``tally.request``).

        ``limit`` (milliCHIPs) is the most either side may owe the other until the partner
        counters; ``side`` is ours: ``stock`` (vendor, the default) or ``foil`` (client); a
        ``reuse`` ticket starts a new tally for every user who presents it.
        """
        cuid = _cuid(cuid)
        limit = _amount(limit, "limit", low=0)
        if side not in t.SIDES:
            raise invalid_params(f"side must be one of {', '.join(t.SIDES)}")
        if not isinstance(reuse, bool):
            raise invalid_params("reuse must be true or false")
        if isinstance(expires_s, bool) or not isinstance(expires_s, int | float) or not (
            0 < expires_s <= MAX_EXPIRES_S
        ):
            raise invalid_params(f"expires_s must be a number of seconds in (0, {MAX_EXPIRES_S}]")
        memo = _memo(memo)
        token = b64u(os.urandom(24))

        def work(tx: Tx) -> tuple[t.LocalTally, dict[str, Any]]:
            user = self._user(tx.conn, cuid)
            draft, _ = t.invite(tally_uuid=ticket_tally_uuid(token), date_ms=tx.now_ms,
                                cert=user.cert, limit=limit, side=side, memo=memo)
            self.ledger.create(tx.conn, cuid, draft, tx.now_ms)
            expires = tx.now_ms + round(expires_s * 1000)
            ticket = t.make_ticket(self.node.own_address(cuid), token, expires, reuse=reuse)
            self.ledger.add_ticket(tx.conn, token, draft.uuid, cuid, reuse=reuse,
                                   expires_ms=expires, now_ms=tx.now_ms)
            return draft, ticket

        draft, ticket = await self._transact(work)
        return {"tally": draft.uuid, "state": draft.state, "ticket": t.encode_ticket(ticket),
                "expires": ticket["expires"]}

    async def rpc_request(self, cuid: str, ticket: str) -> dict:
        """Present a partner's invitation ticket. Waits until the inviter's node has taken it
        (state ``requested``: the inviter offers next) or refused it (an error saying why)."""
        cuid = _cuid(cuid)
        if not isinstance(ticket, str):
            raise invalid_params("ticket must be the invitation string tally.invite made")
        with _refusals():
            invitation = t.decode_ticket(ticket)
        inviter = ChipAddress.from_map(invitation["chad"])
        node = self.node
        if inviter.agent != node.agent_id and inviter.host is not None:
            node.learn_peer(inviter.agent, format_hostport(inviter.host, inviter.port))
        subject = node.own_address(cuid)
        tally_uuid = ticket_tally_uuid(invitation["token"],
                                       subject if invitation["reuse"] else None)

        def job(conn: sqlite3.Connection) -> tuple[Tx, bytes]:
            tx = Tx(node, conn, node.now_ms())
            with _refusals():
                user = self._user(conn, cuid)
                held = self.ledger.get(conn, tally_uuid, cuid)
                if held is not None:
                    raise Reject("BAD_TICKET", f"tally {tally_uuid} is already ours "
                                 f"({held.local.state})")
                request = t.ticket_request(invitation, user.cert, tx.now_ms)
            message_id = tx.send(inviter, "tally", request["action"], request["object"],
                                 from_cuid=cuid)
            return tx, message_id

        tx, message_id = await self._write(job)
        await self.node.replies.wait(
            tx, message_id, REQUEST_TIMEOUT, f"the inviter's node {inviter.agent} did not answer"
            f" within {REQUEST_TIMEOUT:g} s (the request stays in the outbox and will be retried)")
        return {"tally": tally_uuid, "state": "requested", "partner": str(inviter)}

    async def rpc_offer(
        self,
        cuid: str,
        tally: str,
        limit: int | None = None,
        partner_limit: int | None = None,
        memo: str | None = None,
    ) -> dict:
        """Sign the draft and offer it to the partner. ``limit`` (what the partner may owe
        us), ``partner_limit`` (what we may owe the partner) and ``memo`` revise it first."""
        ours = None if limit is None else _amount(limit, "limit", low=0)
        theirs = None if partner_limit is None else _amount(partner_limit, "partner_limit", low=0)
        memo = None if memo is None else _memo(memo)

        def sign_and_offer(local: t.LocalTally, user: _User) -> t.Step:
            limits = {side: value for side, value in ((local.side, ours),
                                                      (local.partner_side, theirs))
                      if value is not None}
            if limits or memo is not None:
                local, _ = t.edit(local, memo=memo, limits=limits)
            return t.offer(local, user.key)

        return await self._tally_step(cuid, tally, sign_and_offer)

    async def rpc_accept(self, cuid: str, tally: str) -> dict:
        """Sign the partner's offer: the tally binds both users and its chit chain starts."""
        return await self._tally_step(cuid, tally, lambda local, user: t.accept(local, user.key))

    async def rpc_refuse(self, cuid: str, tally: str) -> dict:
        """Turn the partner's offer down (the tally becomes void)."""
        return await self._tally_step(cuid, tally, lambda local, user: t.refuse(local))

    async def rpc_counter(self, cuid: str, tally: str) -> dict:
        """Take the pen on the partner's offer: revise it (``tally.offer limit=...``) and
        offer it back."""
        return await self._tally_step(cuid, tally, lambda local, user: t.counter(local))

    async def rpc_close(self, cuid: str, tally: str) -> dict:
        """Start closing: no chit may raise the balance's magnitude from now on, and the tally
        closes once the balance is zero."""
        return await self._tally_step(cuid, tally, lambda local, user: t.close(local))

    async def rpc_list(self, cuid: str | None = None) -> list[dict]:
        """Tallies (of one user, or all) with state, partner, balance and chain."""
        if cuid is None:
            rows = self.node.db.read(LIST_TALLIES)
        else:
            rows = self.node.db.read(LIST_USER_TALLIES, (self._known_user(_cuid(cuid)),))
        return [_summary(row) for row in rows]

    async def rpc_show(self, cuid: str, tally: str) -> dict:
        """One tally: its summary plus date and which sides have signed."""
        row = self._tally_row(_cuid(cuid), _uuid(tally, "tally"))
        body = unpack(row["body"])
        return {**_summary(row), "date": body["date"],
                "signed": [side for side in t.SIDES if body["sign"][side] is not None]}

    async def rpc_wait(self, cuid: str, tally: str, state: str | list[str],
                       timeout_s: float = REQUEST_TIMEOUT) -> dict:
        """Block until the tally is in ``state`` (a state, or a list of them) or ``timeout_s``
        passes; returns the tally as ``tally.show`` does either way (its ``state`` says
        which). The tally need not exist yet: until it does, ``state`` is null."""
        cuid, tally_uuid = _cuid(cuid), _uuid(tally, "tally")
        wanted = {state} if isinstance(state, str) else state
        if not (isinstance(wanted, (set, list)) and wanted
                and all(isinstance(s, str) for s in wanted)):
            raise invalid_params("state must be a tally state or a list of them")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
                0 < timeout_s <= MAX_WAIT_S):
            raise invalid_params(f"timeout_s must be a number of seconds, more than 0 and at "
                                 f"most {MAX_WAIT_S:g}")

        async def current() -> dict:
            try:
                return await self.rpc_show(cuid, tally_uuid)
            except RpcError as exc:
                if exc.reason != "UNKNOWN_TALLY":
                    raise
                return {"tally": tally_uuid, "state": None}

        with trio.move_on_after(timeout_s):
            while (await current())["state"] not in wanted:  # no checkpoint until the wait
                await self._changed.wait()
        return await current()

    def _committed(self) -> None:
        """A tally changed: wake its waiters and the chain repair."""
        self._changed.set()
        self._changed = trio.Event()
        self._repairs.wake()

    async def _tally_step(
        self,
        cuid: str,
        tally: str,
        step: Callable[[t.LocalTally, _User], t.Step],
    ) -> dict:
        cuid, tally_uuid = _cuid(cuid), _uuid(tally, "tally")

        def work(tx: Tx) -> Holding:
            holding = self._holding(tx.conn, tally_uuid, cuid)
            local, messages = step(holding.local, self._user(tx.conn, cuid))
            return self._commit(tx, holding, local=local, messages=messages)

        holding = await self._transact(work)
        return {"tally": tally_uuid, "state": holding.local.state}

    # -- RPC: chits ----------------------------------------------------------------------

    async def rpc_pay(self, cuid: str, tally: str, units: int, memo: str = "") -> dict:
        """Pay the partner ``units`` milliCHIPs: a chit our user signs, good at once. Refused
        before anything is sent if it would take the partner past its limit."""
        result = await self._pay(cuid, tally, [_amount(units, "units")], memo, batched=False)
        return result[0]

    async def rpc_pay_many(self, cuid: str, tally: str, units: list[int], memo: str = "") -> dict:
        """Several payments in one transaction, each its own signed chit, sent to the partner
        a hundred to a message. All are refused if any would pass the partner's limit."""
        if not isinstance(units, list) or not 1 <= len(units) <= MAX_PAYMENTS:
            raise invalid_params(f"units must be a list of 1 to {MAX_PAYMENTS} amounts")
        paid = await self._pay(cuid, tally, [_amount(u, "units") for u in units], memo,
                               batched=True)
        return {"tally": tally, "chits": [item["chit"] for item in paid]}

    async def _pay(
        self, cuid: str, tally: str, amounts: list[int], memo: str, *, batched: bool
    ) -> list[dict]:
        cuid, tally_uuid, memo = _cuid(cuid), _uuid(tally, "tally"), _memo(memo)

        def work(tx: Tx) -> list[c.LocalChit]:
            holding = self._holding(tx.conn, tally_uuid, cuid)
            key = self._user(tx.conn, cuid).key
            balance, paid = holding.balance, []
            for chit_uuid, units in zip(_uuids(len(amounts)), amounts, strict=True):
                chit, _ = c.pay(holding.local, key, chit_uuid=chit_uuid, units=units,
                                date_ms=tx.now_ms, balance=balance, memo=memo)
                balance += c.effect(chit.chit, holding.local.side)
                paid.append(chit)
            self._good(tx, holding, paid, batched=batched)
            return paid

        paid = await self._transact(work)
        return [{"chit": chit.uuid, "state": chit.state, "tally": tally_uuid,
                 "units": chit.chit["units"]} for chit in paid]

    async def rpc_invoice(self, cuid: str, tally: str, units: int, memo: str = "") -> dict:
        """Ask the partner to pay ``units``: a chit in its name that it accepts or refuses."""
        cuid, tally_uuid = _cuid(cuid), _uuid(tally, "tally")
        units, memo = _amount(units, "units"), _memo(memo)

        def work(tx: Tx) -> c.LocalChit:
            holding = self._holding(tx.conn, tally_uuid, cuid)
            drafted, messages = c.invoice(holding.local, chit_uuid=str(uuidlib.uuid4()),
                                          units=units, date_ms=tx.now_ms,
                                          balance=holding.balance, memo=memo)
            self.ledger.put_chit(tx.conn, cuid, drafted, tx.now_ms)
            self._send(tx, holding, messages)
            return drafted

        drafted = await self._transact(work)
        return {"chit": drafted.uuid, "state": drafted.state, "tally": tally_uuid,
                "units": units}

    async def rpc_chit_accept(self, cuid: str, chit: str) -> dict:
        """Pay the partner's invoice: our user signs it and it is good."""
        cuid, chit_uuid = _cuid(cuid), _uuid(chit, "chit")

        def work(tx: Tx) -> c.LocalChit:
            holding, owed = self._owed(tx.conn, cuid, chit_uuid)
            paid, _ = c.accept(owed, holding.local, self._user(tx.conn, cuid).key,
                               balance=holding.balance)
            self._good(tx, holding, [paid], batched=False)
            return paid

        paid = await self._transact(work)
        return {"chit": chit_uuid, "state": paid.state, "tally": paid.chit["tally"]}

    async def rpc_chit_refuse(self, cuid: str, chit: str) -> dict:
        """Turn the partner's invoice down."""
        cuid, chit_uuid = _cuid(cuid), _uuid(chit, "chit")

        def work(tx: Tx) -> c.LocalChit:
            holding, owed = self._owed(tx.conn, cuid, chit_uuid)
            refused, messages = c.refuse(owed, holding.local)
            self.ledger.put_chit(tx.conn, cuid, refused, tx.now_ms)
            self._log(tx, holding.local, "chit.void", refused.to_map(), ref=chit_uuid)
            self._send(tx, holding, messages)
            return refused

        refused = await self._transact(work)
        return {"chit": chit_uuid, "state": refused.state, "tally": refused.chit["tally"]}

    async def rpc_chits(self, cuid: str, tally: str) -> list[dict]:
        """The tally's chits from the user's side, in chain order (unlinked ones last):
        ``by`` is the issuer (the payer), ``index``/``hash`` its block in the chain."""
        cuid, tally_uuid = _cuid(cuid), _uuid(tally, "tally")
        self._tally_row(cuid, tally_uuid)
        return [
            {"chit": row["uuid"], "by": row["issuer"], "type": row["type"],
             "units": row["units"], "state": row["state"], "index": row["chain_index"],
             "hash": None if row["chain_hash"] is None else b64u(row["chain_hash"]),
             "memo": row["memo"], "date": row["date"], "error": row["error"]}
            for row in self.node.db.read(LIST_CHITS, (tally_uuid, cuid))
        ]  # fmt: skip

    # -- messages: tally (writer thread) -------------------------------------------------

    def on_tally(self, tx: Tx, envelope: Envelope) -> None:
        tx.after_commit(self._committed)  # a tally may be new (no _commit): wake its waiters
        cuid = self._addressee(tx.conn, envelope)
        obj, action = envelope.object, envelope.action
        with _refusals():
            if action == "ticket":
                self._on_ticket(tx, envelope, cuid)
                return
            if action == "offer":
                self._on_offer(tx, envelope, cuid)
                return
            receive = _TALLY_RECEIVERS.get(action)
            if receive is None:
                raise Reject("UNKNOWN_ACTION", f"tally has no action {action!r}")
            holding = self._holding(tx.conn, _object_uuid(obj, "uuid"), cuid)
            self._check_partner(holding, envelope)
            local, _ = receive(holding.local, obj)
            self._commit(tx, holding, local=local)

    def _on_ticket(self, tx: Tx, envelope: Envelope, cuid: str) -> None:
        obj = envelope.object
        token = obj.get("token")
        row = self.ledger.get_ticket(tx.conn, token) if isinstance(token, str) else None
        if row is None or row["cuid"] != cuid:
            raise Reject("BAD_TICKET", "no such ticket: it was never issued here")
        if not row["reuse"] and row["used"]:
            raise Reject("BAD_TICKET", "this one-time ticket was already used")
        template = self._holding(tx.conn, row["tally"], cuid)
        ticket = {"token": row["token"], "chad": self.node.own_address(cuid).to_map(),
                  "expires": row["expires"], "reuse": bool(row["reuse"])}
        subject = envelope.from_
        new_uuid = ticket_tally_uuid(row["token"], subject) if row["reuse"] else template.local.uuid
        if row["reuse"] and self.ledger.get(tx.conn, new_uuid, cuid) is not None:
            raise Reject("BAD_TICKET", f"this user already requested tally {new_uuid}")
        local, _ = t.receive_ticket(template.local, ticket, obj, now_ms=tx.now_ms,
                                    new_uuid=new_uuid, sender_agent=subject.agent)
        if local.partner.cuid != subject.cuid:
            raise Reject("NOT_FROM_PARTNER", "the ticket request's certificate is another user's")
        if row["reuse"]:
            self.ledger.create(tx.conn, cuid, local, tx.now_ms)
        else:
            self._commit(tx, template, local=local)
        self.ledger.use_ticket(tx.conn, row["token"])

    def _on_offer(self, tx: Tx, envelope: Envelope, cuid: str) -> None:
        obj = envelope.object
        t.check_tally(obj)
        user = self._user(tx.conn, cuid)
        ours = [side for side in t.SIDES if obj[side]["cert"] is not None
                and obj[side]["cert"]["chad"].get("cuid") == cuid
                and obj[side]["cert"]["chad"]["agent"] == self.node.agent_id]
        if len(ours) != 1 or obj[ours[0]]["cert"]["public"] != user.key.public:
            raise Reject("NOT_ADDRESSED", f"tally {obj['uuid']} does not name our user {cuid}")
        for other in self.ledger.holders_of(tx.conn, obj["uuid"]):
            theirs = unpack(other["body"])
            if other["cuid"] != cuid and any(theirs[s]["cert"] != obj[s]["cert"]
                                             for s in t.SIDES):
                raise Reject("UUID_TAKEN", f"tally {obj['uuid']} is another tally here")
        holding = self.ledger.get(tx.conn, obj["uuid"], cuid)
        local, _ = t.receive_offer(holding.local if holding else None, obj,
                                   holder_cert=obj[ours[0]]["cert"],
                                   sender_agent=envelope.from_.agent)
        if local.partner.cuid != envelope.from_.cuid:
            raise Reject("NOT_FROM_PARTNER", f"tally {obj['uuid']} names another partner user")
        if holding is None:
            self.ledger.create(tx.conn, cuid, local, tx.now_ms)
        else:
            self._commit(tx, holding, local=local)

    def tally_settled(self, tx: Tx, envelope: dict, refusal: Reject | None) -> None:
        """The partner's node committed (``refusal`` None) or refused a tally message of ours."""
        message_id = envelope.get("id")
        if envelope.get("action") == "ticket":
            self.node.replies.settle(tx, message_id, error=refusal)
            return
        obj, sender = envelope.get("object") or {}, envelope.get("from") or {}
        holding = self.ledger.get(tx.conn, obj.get("uuid"), sender.get("cuid"))
        if holding is None or obj.get("version") != holding.local.tally["version"]:
            return  # about a revision that has moved on
        if refusal is not None:
            log.warning("tally %s: the partner refused our %s: %s", holding.local.uuid,
                        envelope.get("action"), refusal)
            self.ledger.set_error(tx.conn, *holding.key, f"{envelope.get('action')}: {refusal}")
        report = t.delivered if refusal is None else t.rejected
        try:
            local, _ = report(holding.local)
        except t.Refusal:
            return  # the partner's answer came first and moved the state on
        self._commit(tx, holding, local=local)

    # -- messages: chit (writer thread) --------------------------------------------------

    def on_chit(self, tx: Tx, envelope: Envelope) -> None:
        cuid = self._addressee(tx.conn, envelope)
        obj, action = envelope.object, envelope.action
        with _refusals():
            holding = self._holding(tx.conn, _object_uuid(obj, "tally"), cuid)
            self._check_partner(holding, envelope)
            if action == "chain":
                self._on_chain(tx, holding, obj)
                return
            if action not in ("good", "pend", "void"):
                raise Reject("UNKNOWN_ACTION", f"chit has no action {action!r}")
            chit_uuid = _object_uuid(obj, "uuid")
            known = self.ledger.get_chit(tx.conn, holding.local.uuid, cuid, chit_uuid)
            try:
                if action == "good":
                    received, _ = c.receive_good(known, obj, holding.local)
                elif action == "pend":
                    received, _ = c.receive_pend(known, obj, holding.local)
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
                self._good(tx, holding, [received], batched=False)
                return
            self.ledger.put_chit(tx.conn, cuid, received, tx.now_ms)
            if action == "void":
                self._log(tx, holding.local, "chit.void", received.to_map(), ref=chit_uuid)

    def _on_chain(self, tx: Tx, holding: Holding, obj: Any) -> None:
        if holding.chain is None:
            raise Reject("BAD_STATE", f"tally {holding.local.uuid} is {holding.local.state}: "
                         "it has no chain yet")
        received = ch.receive(holding.chain, obj, holding.local)
        adopted = []  # good chits first learned from this message
        for chit in received.adopted:
            known = self.ledger.get_chit(tx.conn, chit["tally"], holding.cuid, chit["uuid"])
            got, _ = c.receive_good(known, chit, holding.local)
            self._log(tx, holding.local, "chit.good", got.chit, ref=got.uuid)
            adopted.append(got)
        delta = sum(c.effect(got.chit, holding.local.side) for got in adopted)
        self._commit(tx, holding, chain=received.chain, delta=delta, messages=received.messages,
                     fresh=adopted)

    def chit_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        """The partner refused a chit message of ours for good: keep the reason where the user
        sees it (the chain repairs itself by resync when the cause is gone)."""
        obj, sender = envelope.get("object") or {}, envelope.get("from") or {}
        tally_uuid, cuid = obj.get("tally"), sender.get("cuid")
        if not isinstance(tally_uuid, str) or not isinstance(cuid, str):
            return
        action = envelope.get("action")
        reason = f"chit {action}: {code}: {message}"
        log.warning("tally %s: the partner refused %s", tally_uuid, reason)
        self.ledger.set_error(tx.conn, tally_uuid, cuid, reason)
        if action in ("good", "pend", "void") and isinstance(obj.get("uuid"), str):
            self.ledger.set_chit_error(tx.conn, tally_uuid, cuid, obj["uuid"], reason)

    # -- chain repair ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Repair unsettled chains now and then, until cancelled."""
        await self._repairs.run(task_status=task_status)

    async def _repair_tick(self) -> bool:
        """One look for chains to repair; True while any chain is unsettled."""
        await self.resync()
        return self._unsettled

    async def resync(self) -> int:
        """Send ``protocol.chain.resync`` repairs for every unsettled chain that is due (still
        for a while, or its partner's channel just opened) and whose partner has nothing
        waiting in our outbox; returns how many chains were repaired."""
        node = self.node
        now = node.now_ms()
        rows = node.db.read(UNSETTLED)
        self._unsettled = bool(rows)
        waiting = {row[0] for row in node.db.read(
            "SELECT DISTINCT peer FROM outbox WHERE state = 'pending'")}
        partners = {row["partner"] for row in rows}
        connected = {agent for agent in partners
                     if agent == node.agent_id or node.peers.connected(agent)}
        opened, self._connected = connected - self._connected, connected
        due = [row for row in rows if row["partner"] not in waiting
               and (row["resync_due"] <= now or row["partner"] in opened)]
        if not due:
            return 0

        def work(tx: Tx) -> int:
            for row in due:
                holding = self.ledger.get(tx.conn, row["uuid"], row["cuid"])
                if holding is None or holding.chain is None:
                    continue
                self._send(tx, holding, ch.resync(holding.chain))
                pause = RESYNC_QUIET_MS * 2 ** min(row["resync_tries"] + 1, 16)
                self.ledger.resynced(tx.conn, *holding.key, tx.now_ms + min(pause, RESYNC_MAX_MS))
            return len(due)

        return await self._transact(work)

    # -- shared steps (writer thread) ------------------------------------------------------

    def _good(self, tx: Tx, holding: Holding, chits: list[c.LocalChit], *, batched: bool) -> None:
        """Chits that just became good here (ours, or one the partner sent ``good``): store
        them, chain them, move the balance, tell the partner."""
        side = holding.local.side
        for chit in chits:
            self._log(tx, holding.local, "chit.good", chit.chit, ref=chit.uuid)
        assert holding.chain is not None  # a tally that takes chits is binding
        if batched:
            chain, messages = ch.add_many(holding.chain, [chit.chit for chit in chits])
        else:
            (chit,) = chits
            chain, messages = ch.add(holding.chain, chit.chit)
        delta = sum(c.effect(chit.chit, side) for chit in chits)
        self._commit(tx, holding, chain=chain, delta=delta, messages=messages, fresh=chits)

    def _commit(
        self,
        tx: Tx,
        holding: Holding,
        *,
        local: t.LocalTally | None = None,
        chain: ch.Chain | None = None,
        delta: int = 0,
        messages: Iterable[dict[str, Any]] = (),
        fresh: Iterable[c.LocalChit] = (),
    ) -> Holding:
        """Save a transition's outcome (with the ``fresh`` chits it made or changed) and
        queue its messages. A tally that just became binding starts its chain; a closing one
        whose balance is zero and whose chain is quiet closes; a closed one that a late chit
        of the partner's moved off zero is closing again."""
        local = local or holding.local
        chain = chain or holding.chain
        if chain is None and local.state in t.BINDING_STATES:
            chain = ch.start(local)
            self._log(tx, local, "tally.open", local.tally)
        balance = holding.balance + delta
        if local.state == t.CLOSE and balance != 0:
            local, _ = t.reopen(local)  # a partner's chit that was in flight at the close
        if local.state == t.C_OPEN and chain is not None and balance == 0 and ch.settled(chain):
            local, _ = t.settle(local, balance=balance, quiet=True)
            self._log(tx, local, "tally.close", local.tally)
        tx.after_commit(self._committed)
        saved = self.ledger.save(tx.conn, holding, tx.now_ms, local=local, chain=chain,
                                 balance_delta=delta, resync_due=tx.now_ms + RESYNC_QUIET_MS,
                                 fresh=fresh)
        self._send(tx, saved, messages)
        return saved

    def _send(self, tx: Tx, holding: Holding, messages: Iterable[dict[str, Any]]) -> None:
        to = None
        for message in messages:
            to = to or holding.local.partner
            tx.send(to, message["target"], message["action"], message["object"],
                    from_cuid=holding.cuid)

    def _log(self, tx: Tx, local: t.LocalTally, kind: str, payload: object,
             ref: str | None = None) -> None:
        """Evidence for the clearing house, once per node (the foil holder's, when both
        holders are ours)."""
        if self.node.evidence.clearing_house() is None:
            return  # log_evidence would do nothing, after checking its arguments
        partner = local.partner
        if partner.agent == self.node.agent_id and local.side == t.STOCK:
            return
        owners = [local.tally[side]["cert"]["chad"]["agent"] for side in t.SIDES]
        log_evidence(tx, local.uuid, owners, kind, payload, ref=ref)

    # -- lookups (writer thread) ----------------------------------------------------------

    def _user(self, conn: sqlite3.Connection, cuid: str) -> _User:
        user = self._users.get(cuid)
        if user is None:
            row = users.get(conn, cuid)
            if row is None:
                raise Reject("UNKNOWN_USER", f"no user {cuid!r} on this node")
            key = SigningKey(row["seed"])
            cert = t.make_cert(self.node.own_address(cuid), row["name"], key.public,
                               row["created"])
            user = self._users[cuid] = _User(cuid, key, cert)
        return user

    def _holding(self, conn: sqlite3.Connection, tally_uuid: str, cuid: str) -> Holding:
        holding = self.ledger.get(conn, tally_uuid, cuid)
        if holding is None:
            raise Reject("UNKNOWN_TALLY", f"user {cuid} holds no tally {tally_uuid}")
        return holding

    def _owed(self, conn: sqlite3.Connection, cuid: str, chit_uuid: str
              ) -> tuple[Holding, c.LocalChit]:
        """The tally and the chit a user answers (an invoice addressed to it)."""
        tallies = self.ledger.tallies_with_chit(conn, cuid, chit_uuid)
        if not tallies:
            raise Reject("UNKNOWN_CHIT", f"user {cuid} holds no chit {chit_uuid}")
        if len(tallies) > 1:
            raise Reject("AMBIGUOUS", f"chit {chit_uuid} is on {len(tallies)} tallies")
        holding = self._holding(conn, tallies[0], cuid)
        owed = self.ledger.get_chit(conn, tallies[0], cuid, chit_uuid)
        assert owed is not None
        return holding, owed

    def _addressee(self, conn: sqlite3.Connection, envelope: Envelope) -> str:
        """Our user a tally or chit message is for."""
        cuid = envelope.to.cuid
        if cuid is None or users.get(conn, cuid) is None:
            raise Reject("UNKNOWN_USER", f"no user {cuid!r} on this node")
        return cuid

    @staticmethod
    def _check_partner(holding: Holding, envelope: Envelope) -> None:
        cert = holding.local.tally[holding.local.partner_side]["cert"]
        sender = envelope.from_
        if cert is None or (sender.agent, sender.cuid) != (cert["chad"]["agent"],
                                                           cert["chad"]["cuid"]):
            raise Reject("NOT_PARTY", f"{sender} is not party to tally {holding.local.uuid}")

    # -- RPC plumbing (event loop) ---------------------------------------------------------

    async def _write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self.node.db.write(job)
        except Reject as exc:
            if exc.code in _NOT_FOUND:
                raise RpcError(NOT_FOUND, exc.message, exc.code) from exc
            raise

    async def _transact(self, work: Callable[[Tx], T]) -> T:
        """Run ``work`` in one transaction; its messages go to the pump once committed."""
        node = self.node

        def job(conn: sqlite3.Connection) -> tuple[Tx, T]:
            tx = Tx(node, conn, node.now_ms())
            with _refusals():
                return tx, work(tx)

        tx, result = await self._write(job)
        tx.committed()
        return result

    def _known_user(self, cuid: str) -> str:
        if self.node.db.read_one("SELECT 1 FROM users WHERE cuid = ?", (cuid,)) is None:
            raise RpcError(NOT_FOUND, f"no user {cuid!r} on this node", "UNKNOWN_USER")
        return cuid

    def _tally_row(self, cuid: str, tally_uuid: str) -> Any:
        row = self.node.db.read_one(SELECT_TALLY, (tally_uuid, self._known_user(cuid)))
        if row is None:
            raise RpcError(NOT_FOUND, f"user {cuid} holds no tally {tally_uuid}",
                           "UNKNOWN_TALLY")
        return row


_TALLY_RECEIVERS: dict[str, Callable[[t.LocalTally, Any], tuple[t.LocalTally, list]]] = {
    "open": t.receive_open,
    "void": t.receive_void,
    "draft": t.receive_draft,
    "close": t.receive_close,
}


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """Turn a protocol refusal into a rejection with the upper-cased code."""
    try:
        yield
    except t.Refusal as exc:
        raise Reject(exc.code.upper(), exc.message) from exc


def _summary(row: Any) -> dict:
    body = unpack(row["body"])
    side = row["side"]
    partner_side = t.other_side(side)
    cert = body[partner_side]["cert"]
    head = row["chain_head"]
    return {
        "tally": row["uuid"], "cuid": row["cuid"], "side": side, "state": row["state"],
        "partner": None if cert is None else str(ChipAddress.from_map(cert["chad"])),
        "balance": row["balance"], "limit": body[side]["terms"]["limit"],
        "partner_limit": body[partner_side]["terms"]["limit"], "version": body["version"],
        "memo": body["memo"],
        "chain": {"index": row["chain_length"], "hash": None if head is None else b64u(head),
                  "confirmed": row["chain_conf"], "pending": row["chain_pending"]},
        "error": row["error"],
    }  # fmt: skip


def _uuids(count: int) -> list[str]:
    """``count`` random (version 4) uuids from one read of the system's randomness."""
    random = os.urandom(16 * count)
    return [str(uuidlib.UUID(bytes=random[at : at + 16], version=4))
            for at in range(0, 16 * count, 16)]


def _object_uuid(obj: Any, field: str) -> str:
    value = obj.get(field) if isinstance(obj, dict) else None
    t.check_uuid(value, f"object.{field}")
    return value


def _cuid(value: Any) -> str:
    if not valid_cuid(value):
        raise invalid_params(f"cuid {value!r} must be 1-64 letters, digits, '_', '-' or '.'")
    return value


def _uuid(value: Any, name: str) -> str:
    try:
        t.check_uuid(value, name)
    except t.Refusal as exc:
        raise invalid_params(f"{name} must be a uuid like 3f2a…-…, not {value!r}") from exc
    return value


def _amount(value: Any, name: str, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= t.MAX_UNITS:
        raise invalid_params(f"{name} must be an integer number of milliCHIPs from {low} to "
                             f"{t.MAX_UNITS}")
    return value


def _memo(value: Any) -> str:
    if not isinstance(value, str) or len(value) > t.MAX_MEMO:
        raise invalid_params(f"memo must be text of at most {t.MAX_MEMO} characters")
    return value
