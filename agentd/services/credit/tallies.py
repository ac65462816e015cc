"""Tallies: invitation, negotiation and closing of credit agreements (the ``tally`` target).

The protocol decides (``protocol.tally``); this service loads the holder's tally through the
:class:`~agentd.services.credit.ledger.CreditLedger`, applies one transition and commits it
with the messages it produces: in an RPC method's own job, or — for a partner's message — in
the dispatcher's job that also records the message id, so a redelivered message changes
nothing. A refusal rolls the lot back: an RPC call fails with error -32010 (``data.reason``
the upper-cased refusal code) before anything is sent; a message gets an error ack.

An invitation ticket names no tally, so both ends derive its uuid from the token
(:func:`ticket_tally_uuid`): ``tally.request`` can name the tally the moment the inviter's node
has taken the request. ``tally.offer``/``accept``/``refuse``/``counter`` queue a message whose
delivery settles the state (``protocol.tally.delivered``/``rejected``).
"""

from __future__ import annotations

import os
import sqlite3
import uuid as uuidlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from agentd.rpc import REFUSED, RpcError, invalid_params
from agentd.rpc_types import shown
from agentd.runtime.context import Reject, Service, Tx
from agentd.runtime.replies import answer_from
from agentd.services.credit.ids import tally_id
from agentd.services.credit.ledger import CreditLedger, User, log_new_tally
from agentd.services.credit.params import (
    object_uuid,
    param_amount,
    param_cuid,
    param_memo,
    tally_summary,
)
from protocol import tally as t
from protocol import tally_fields as tf
from protocol import tally_states as ts
from protocol.codec import unpack
from protocol.envelope import Envelope
from protocol.keys import ChipAddress, b64u, format_hostport
from protocol.tally_local import LocalTally
from store import credit as credit_store
from store.credit import Holding

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime


DEFAULT_LIMIT = 1_000_000  # milliCHIPs (1,000 CHIPs) each side may owe, until countered

DEFAULT_EXPIRES_S = 48 * 3600  # MyCHIPs' default ticket lifetime

MAX_EXPIRES_S = 365 * 24 * 3600

REQUEST_TIMEOUT = 10.0  # s tally.request waits for the inviter's node
MAX_WAIT_S = 3600.0  # the longest tally.wait
MAX_REQUESTS = 1000  # tallies a user's reusable tickets started that wait for its offer

REPORTED = frozenset({"ticket", "offer", "open", "void", "draft"})  # wants_delivery

_TICKET_NAMESPACE = uuidlib.uuid5(uuidlib.NAMESPACE_URL, "agentd:tally-ticket")



def ticket_tally_uuid(token: str, subject: ChipAddress | None = None) -> str:
    """The tally a ticket leads to, worked out alike by inviter and subject: the draft's own
    uuid for a one-time ticket; for a reusable one, a uuid per ``subject`` user."""
    name = token if subject is None else f"{token}/{subject.agent}/{subject.cuid}"
    return str(uuidlib.uuid5(_TICKET_NAMESPACE, name))


TALLY_RECEIVERS: dict[str, Callable[[LocalTally, Any], tuple[LocalTally, list]]] = {
    "open": t.receive_open,
    "void": t.receive_void,
    "draft": t.receive_draft,
    "close": t.receive_close,
}


class TallyService(Service):
    """The ``tally`` target and the ``tally.*`` RPC methods."""

    target = "tally"
    actions = frozenset({"ticket", "offer", "open", "void", "draft", "close"})

    def __init__(self, node: Runtime, ledger: CreditLedger) -> None:
        super().__init__(node)
        self.ledger = ledger
        for name in ("invite", "request", "offer", "accept", "refuse", "counter", "close",
                     "list", "show", "wait"):
            node.register_method(f"tally.{name}", getattr(self, f"rpc_{name}"))

    def wants_delivery(self, envelope: dict) -> bool:
        return envelope.get("action") in REPORTED

    def on_delivered(self, tx: Tx, envelope: dict) -> None:
        self.tally_settled(tx, envelope, None)

    def on_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        self.tally_settled(tx, envelope, Reject(code, message))

    def subject(self, envelope: dict) -> str | None:
        uuid = (envelope.get("object") or {}).get("uuid")
        return f"tally {uuid}" if isinstance(uuid, str) else None

    # -- RPC -----------------------------------------------------------------------------

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
        cuid = self.ledger.known_user(param_cuid(cuid))
        limit = param_amount(limit, "limit", low=0)
        if side not in t.SIDES:
            raise invalid_params(f"side must be one of {', '.join(t.SIDES)}, not {side!r}")
        if not 0 < expires_s <= MAX_EXPIRES_S:  # the params' types: agentd.rpc_types
            raise invalid_params(f"expires_s must be a number of seconds in (0, {MAX_EXPIRES_S}], "
                                 f"not {expires_s!r}")
        memo = param_memo(memo)
        token = b64u(os.urandom(24))

        def work(tx: Tx) -> tuple[LocalTally, dict[str, Any]]:
            user = self.ledger.user(tx.conn, cuid)
            draft, _ = t.invite(tally_uuid=ticket_tally_uuid(token), date_ms=tx.now_ms,
                                cert=user.cert, limit=limit, side=side, memo=memo)
            self.ledger.store.create(tx.conn, cuid, draft, tx.now_ms)
            log_new_tally(tx, cuid, draft)
            tx.after_commit(self.ledger.changed_now)
            expires = tx.now_ms + round(expires_s * 1000)
            ticket = tf.make_ticket(self.runtime.own_address(cuid), token, expires, reuse=reuse)
            self.ledger.store.add_ticket(tx.conn, token, draft.uuid, cuid, reuse=reuse,
                                   expires_ms=expires, now_ms=tx.now_ms)
            return draft, ticket

        draft, ticket = await self.ledger.transact(work)
        return {"tally": draft.uuid, "state": draft.state, "ticket": tf.encode_ticket(ticket),
                "expires": ticket["expires"]}

    async def rpc_request(self, cuid: str, ticket: str) -> dict:
        """Present a partner's invitation ticket. Waits until the inviter's node has taken it
        (state ``requested``: the inviter offers next) or refused it (an error saying why), or
        at most 10 s (``TIMEOUT``); a node that cannot be dialled (nothing listens at the
        ticket's address) is ``UNREACHABLE`` half a second in, as ``peers.ping`` answers. An
        unknown user is refused before the ticket teaches the node the inviter's address."""
        cuid = self.ledger.known_user(param_cuid(cuid))
        invitation = tf.decode_ticket(ticket)
        inviter = ChipAddress.from_map(invitation["chad"])
        node = self.runtime
        if inviter.agent == node.agent_id and inviter.cuid == cuid:
            raise Reject("BAD_TICKET", f"{cuid} made this ticket: the user it is for presents "
                         "it, with tally.request on that user's node")
        if inviter.agent != node.agent_id and inviter.host is not None:
            node.learn_peer(inviter.agent, format_hostport(inviter.host, inviter.port))
        subject = node.own_address(cuid)
        tally_uuid = ticket_tally_uuid(invitation["token"],
                                       subject if invitation["reuse"] else None)

        def work(tx: Tx) -> bytes:
            user = self.ledger.user(tx.conn, cuid)
            held = self.ledger.store.get(tx.conn, tally_uuid, cuid)
            if held is not None:
                raise Reject("BAD_TICKET", f"tally {tally_uuid} is already ours "
                             f"({held.local.state})")
            message_id = tx.send(t.ticket_request(invitation, user.cert, tx.now_ms))
            self.ledger.store.add_request(tx.conn, tally_uuid, cuid, inviter.agent,
                                          str(inviter), tx.now_ms)
            node.replies.expect_after(tx, message_id)
            return message_id

        node.redial(inviter.agent)  # an inviter back since a dial failed is not judged by it
        await answer_from(
            node, inviter.agent, await node.transact(work), REQUEST_TIMEOUT,
            late=f"the inviter's node {inviter.agent} did not answer within "
                 f"{REQUEST_TIMEOUT:g} s", who=f"the inviter's node {inviter.agent}",
            kept="the request stays in the outbox and will be retried")
        return {"tally": tally_uuid, "state": credit_store.REQUESTED, "partner": str(inviter)}

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
        ours = None if limit is None else param_amount(limit, "limit", low=0)
        theirs = (None if partner_limit is None
                  else param_amount(partner_limit, "partner_limit", low=0))
        memo = None if memo is None else param_memo(memo)

        def sign_and_offer(holding: Holding, user: User) -> t.Step:
            local = holding.local
            limits = {side: value for side, value in ((local.side, ours),
                                                      (local.partner_side, theirs))
                      if value is not None}
            if limits or memo is not None:
                local, _ = t.edit(local, memo=memo, limits=limits)
            return t.offer(local, user.key)

        return await self._tally_step(cuid, tally, sign_and_offer)

    async def rpc_accept(self, cuid: str, tally: str) -> dict:
        """Sign the partner's offer: the tally binds both users and its chit chain starts."""
        return await self._tally_step(
            cuid, tally, lambda holding, user: t.accept(holding.local, user.key))

    async def rpc_refuse(self, cuid: str, tally: str) -> dict:
        """Turn the partner's offer down (the tally becomes void); on a draft of our own
        invitation that no ticket has come for yet (an unused or expired ticket), withdraw
        it (void: a ticket presented later is refused); on the P.draft a presented ticket
        made, before any offer, turn that request down (void, and the subject's node is
        told); after a counter-offer, on either side's draft, give the tally up (the
        partner is told, and both end void)."""
        return await self._tally_step(cuid, tally, lambda holding, _: t.refuse(holding.local))

    async def rpc_counter(self, cuid: str, tally: str) -> dict:
        """Take the pen on the partner's offer: revise it (``tally.offer limit=...``) and
        offer it back."""
        return await self._tally_step(cuid, tally, lambda holding, _: t.counter(holding.local))

    async def rpc_close(self, cuid: str, tally: str) -> dict:
        """Start closing: no chit may raise the balance's magnitude from now on, and the tally
        closes once the balance is zero (asked again, the answer says what the balance is)."""
        return await self._tally_step(
            cuid, tally, lambda holding, _: t.close(holding.local, balance=holding.balance))

    async def rpc_list(self, cuid: str | None = None) -> list[dict]:
        """Tallies (of user ``cuid``, or of all users) with state, partner, balance and
        chain, oldest first; a tally whose ticket the user presented is listed from then on,
        as ``requested`` until the inviter's offer brings the tally (a user sees what it
        asked for)."""
        who = None if cuid is None else self.ledger.known_user(param_cuid(cuid))

        def read(conn: sqlite3.Connection) -> list[sqlite3.Row]:  # one snapshot: an offer
            return [*credit_store.list_tallies(conn, who),  # replaces a request by its tally
                    *credit_store.list_requests(conn, who)]

        rows = self.runtime.db.reading(read)
        rows.sort(key=lambda row: (row["cuid"], row["created"], row["uuid"]))
        return [tally_summary(row) for row in rows]

    async def rpc_show(self, cuid: str, tally: str) -> dict:
        """One tally: its summary plus date, which sides have signed, and the clearing-house
        process this node logs its evidence under (``evidence``; null without one). One the
        user presented the ticket of shows as ``requested`` until the offer comes (``date``
        null, nothing signed)."""
        cuid = param_cuid(cuid)
        row = self.ledger.tally_row(cuid, tally_id(self.ledger, cuid, tally), requested=True)
        if row["state"] == credit_store.REQUESTED:
            date, signed = None, []
        else:
            body = unpack(row["body"])
            date = body["date"]
            signed = [side for side in t.SIDES if body["sign"][side] is not None]
        return {**tally_summary(row), "date": date, "signed": signed,
                "evidence": self.ledger.evidence_of(row["uuid"])}

    async def rpc_wait(self, cuid: str, tally: str, state: str | list[str],
                       timeout_s: float = REQUEST_TIMEOUT) -> dict:
        """Block until the tally is in ``state`` (a state, or a list of them) or ``timeout_s``
        passes; returns the tally as ``tally.show`` does either way (its ``state`` says
        which). A tally whose ticket the user presented is waited for before the offer makes
        it (``state`` ``requested`` until then); any other tally the user does not hold is
        UNKNOWN_TALLY at once."""
        cuid = param_cuid(cuid)
        tally_uuid = tally_id(self.ledger, cuid, tally)
        wanted = [state] if isinstance(state, str) else state
        if not wanted:
            raise invalid_params("state must be a tally state or a list of them")
        unknown = [s for s in wanted if s not in ts.STATES]
        if unknown:
            raise invalid_params(f"state {unknown[0]!r} is not a tally state (one of: "
                                 f"{', '.join(ts.STATES)})")
        if not 0 <= timeout_s <= MAX_WAIT_S:
            raise invalid_params(f"timeout_s must be seconds from 0 (look now) to "
                                 f"{MAX_WAIT_S:g}, not {shown(timeout_s)}")
        # held or presented, else UNKNOWN_TALLY now: a wait for any other id (a typo,
        # another node's tally) would only sleep out its timeout
        self.ledger.tally_row(cuid, tally_uuid, requested=True)

        async def current() -> dict:
            try:
                return await self.rpc_show(cuid, tally_uuid)
            except RpcError as exc:
                if exc.reason != "UNKNOWN_TALLY":
                    raise
            # held or presented a moment ago (waitable), neither now: the inviter refused
            raise RpcError(REFUSED, f"TICKET_REFUSED: the inviter turned {cuid}'s request "
                           f"down: no offer of tally {tally_uuid} will come", "TICKET_REFUSED")

        with trio.move_on_after(timeout_s):
            while (await current())["state"] not in wanted:  # no checkpoint until the wait
                await self.ledger.changed.wait()
        return await current()

    async def _tally_step(
        self,
        cuid: str,
        tally: str,
        step: Callable[[Holding, User], t.Step],
    ) -> dict:
        cuid = param_cuid(cuid)
        tally_uuid = tally_id(self.ledger, cuid, tally)
        self.ledger.known_user(cuid)  # UNKNOWN_USER before UNKNOWN_TALLY

        def work(tx: Tx) -> Holding:
            holding = self.ledger.holding(tx.conn, tally_uuid, cuid, ours=True)
            local, messages = step(holding, self.ledger.user(tx.conn, cuid))
            return self.ledger.commit(tx, holding, local=local, messages=messages)

        holding = await self.ledger.transact(work)
        return {"tally": tally_uuid, "state": holding.local.state}

    # -- messages (writer thread) --------------------------------------------------------

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        cuid = self.ledger.addressee(tx.conn, envelope)
        obj, action = envelope.object, envelope.action
        if action == "ticket":
            self._on_ticket(tx, envelope, cuid)
            return
        if action == "offer":
            self._on_offer(tx, envelope, cuid)
            return
        receive = TALLY_RECEIVERS.get(action)
        if receive is None:
            raise Reject("UNKNOWN_ACTION", f"tally has no action {action!r}")
        if action == "void" and self._turned_down(tx, envelope, cuid):
            return
        holding = self.ledger.holding(tx.conn, object_uuid(obj, "uuid"), cuid)
        self.ledger.check_partner(holding, envelope)
        local, _ = receive(holding.local, obj)
        self.ledger.commit(tx, holding, local=local)

    def _on_ticket(self, tx: Tx, envelope: Envelope, cuid: str) -> None:
        obj = envelope.object
        token = obj.get("token")
        row = self.ledger.store.get_ticket(tx.conn, token) if isinstance(token, str) else None
        if row is None or row["cuid"] != cuid:
            raise Reject("BAD_TICKET", "no such ticket: it was never issued here")
        template = self.ledger.holding(tx.conn, row["tally"], cuid)
        if template.local.state == ts.VOID and (row["reuse"] or not row["used"]):
            # tally.refuse on the draft before any ticket came for it (reusable: at any time)
            raise Reject("TICKET_REFUSED", "the inviter withdrew this invitation: ask for a "
                         "new ticket")
        if not row["reuse"] and row["used"]:
            if self._taken_from(template.local, envelope.from_):
                return  # presented again by the user who used it: nothing changes
            raise Reject("BAD_TICKET", "this one-time ticket was already used")
        ticket = {"token": row["token"], "chad": self.runtime.own_address(cuid).to_map(),
                  "expires": row["expires"], "reuse": bool(row["reuse"])}
        subject = envelope.from_
        new_uuid = ticket_tally_uuid(row["token"], subject) if row["reuse"] else template.local.uuid
        if row["reuse"] and (held := self.ledger.store.get(tx.conn, new_uuid, cuid)):
            if self._taken_from(held.local, subject):  # as a one-time ticket's is
                return
            raise Reject("BAD_TICKET", f"this user already requested tally {new_uuid}")
        if row["reuse"]:  # each new subject makes a row: a public ticket must not make endless
            waiting = self.ledger.store.count_in_state(tx.conn, cuid, ts.P_DRAFT)
            if waiting >= MAX_REQUESTS:
                raise Reject("TOO_MANY_REQUESTS", f"{cuid} has {waiting} tally requests "
                             "waiting for its offer already: present the ticket again later")
        local, _ = t.receive_ticket(template.local, ticket, obj, now_ms=tx.now_ms,
                                    new_uuid=new_uuid, sender_agent=subject.agent)
        if local.partner.cuid != subject.cuid:
            raise Reject("NOT_FROM_PARTNER", "the ticket request's certificate is another user's")
        if row["reuse"]:
            self.ledger.store.create(tx.conn, cuid, local, tx.now_ms)
            log_new_tally(tx, cuid, local)
            tx.after_commit(self.ledger.changed_now)
        else:
            self.ledger.commit(tx, template, local=local)
        self.ledger.store.use_ticket(tx.conn, row["token"])

    @staticmethod
    def _taken_from(local: LocalTally, subject: ChipAddress) -> bool:
        """Whether the tally a ticket made (a one-time ticket's, or a reusable one's for this
        subject) is ``subject``'s and the inviter has not offered it yet (so presenting the
        ticket again is taken, as the first time); once offered, a refusal says where the
        tally got."""
        partner = local.tally[local.partner_side]["cert"]
        chad = partner["chad"] if partner is not None else {}
        if (chad.get("agent"), chad.get("cuid")) != (subject.agent, subject.cuid):
            return False
        if local.state == ts.P_DRAFT:
            return True
        if local.state == ts.VOID and local.tally["version"] == 1:  # never offered
            raise Reject("TICKET_REFUSED", f"the inviter turned your request down: tally "
                         f"{local.uuid} is void")
        raise Reject("BAD_TICKET", f"you used this ticket already: tally {local.uuid} is "
                     f"{local.state} at the inviter's node (tally.list shows it on your node)")

    def _on_offer(self, tx: Tx, envelope: Envelope, cuid: str) -> None:
        obj = envelope.object
        tf.check_tally(obj)
        user = self.ledger.user(tx.conn, cuid)
        ours = [side for side in t.SIDES if obj[side]["cert"] is not None
                and obj[side]["cert"]["chad"].get("cuid") == cuid
                and obj[side]["cert"]["chad"]["agent"] == self.runtime.agent_id]
        if len(ours) != 1 or obj[ours[0]]["cert"]["public"] != user.key.public:
            raise Reject("NOT_ADDRESSED", f"tally {obj['uuid']} does not name our user {cuid}")
        holding = self.ledger.store.get(tx.conn, obj["uuid"], cuid)
        if holding is not None and not self.ledger.is_partner(holding, envelope.from_.agent,
                                                             envelope.from_.cuid):
            holding = None  # answered as a tally we do not hold: a stranger learns nothing
        local, _ = t.receive_offer(holding.local if holding else None, obj,
                                   holder_cert=obj[ours[0]]["cert"],
                                   sender_agent=envelope.from_.agent)
        if local.partner.cuid != envelope.from_.cuid:
            raise Reject("NOT_FROM_PARTNER", f"tally {obj['uuid']} names another partner user")
        if holding is None and not self.ledger.store.take_request(
                tx.conn, local.uuid, cuid, envelope.from_.agent):
            raise Reject("NOT_REQUESTED", f"{cuid} presented no ticket of that agent's "
                         f"for tally {local.uuid}: a first offer answers tally.request")
        # only now that the sender showed it is the partner, or that our user asked it for
        # this tally (a ticket), may it learn that the uuid is taken here
        for other in self.ledger.store.holders_of(tx.conn, obj["uuid"]):
            theirs = unpack(other["body"])
            if (holding is None and other["cuid"] == cuid) or (
                    other["cuid"] != cuid and any(theirs[s]["cert"] != obj[s]["cert"]
                                                  for s in t.SIDES)):
                raise Reject("UUID_TAKEN", f"tally {obj['uuid']} is another tally here")
        if holding is None:
            self.ledger.store.create(tx.conn, cuid, local, tx.now_ms)
            log_new_tally(tx, cuid, local)
            tx.after_commit(self.ledger.changed_now)
        else:
            self.ledger.commit(tx, holding, local=local)

    def _turned_down(self, tx: Tx, envelope: Envelope, cuid: str) -> bool:
        """Whether ``envelope`` (a ``void``) is the inviter turning our user's request down,
        before any offer: our user holds no copy of the tally, only the request, which goes
        (``tally.wait`` then says so at once, where it waited out its timeout)."""
        uuid = object_uuid(envelope.object, "uuid")
        if self.ledger.store.get(tx.conn, uuid, cuid) is not None:
            return False
        if not self.ledger.store.take_request(tx.conn, uuid, cuid, envelope.from_.agent):
            return False
        tx.after_commit(self.ledger.changed_now)
        return True

    def _forget_request(self, tx: Tx, envelope: dict) -> None:
        """The inviter turned our user's request down, or withdrew its invitation: no offer
        will come, so the request goes (``tally.wait`` and ``tally.show`` then say
        ``UNKNOWN_TALLY`` at once). Its own code tells it from a ticket used already, whose
        offer may still be on its way."""
        token, user = (envelope.get("object") or {}).get("token"), (
            envelope.get("from") or {}).get("cuid")
        inviter = (envelope.get("to") or {}).get("agent")
        if not isinstance(token, str) or not isinstance(user, str):
            return
        subject = self.runtime.own_address(user)
        for tally_uuid in (ticket_tally_uuid(token), ticket_tally_uuid(token, subject)):
            self.ledger.store.take_request(tx.conn, tally_uuid, user, inviter)

    def tally_settled(self, tx: Tx, envelope: dict, refusal: Reject | None) -> None:
        """The partner's node committed (``refusal`` None) or refused a tally message of ours."""
        message_id = envelope.get("id")
        if envelope.get("action") == "ticket":
            if refusal is not None and refusal.code == "TICKET_REFUSED":
                self._forget_request(tx, envelope)
            self.runtime.replies.settle(tx, message_id, error=refusal)
            return
        obj, sender = envelope.get("object") or {}, envelope.get("from") or {}
        holding = self.ledger.store.get(tx.conn, obj.get("uuid"), sender.get("cuid"))
        if holding is None or obj.get("version") != holding.local.tally["version"]:
            return  # about a revision that has moved on
        if refusal is not None:  # logged by the dispatcher, naming the tally (subject)
            self.ledger.store.set_error(tx.conn, *holding.key,
                                        f"{envelope.get('action')}: {refusal}")
        report = t.delivered if refusal is None else t.rejected
        try:
            local, _ = report(holding.local)
        except t.Refusal:
            return  # the partner's answer came first and moved the state on
        self.ledger.commit(tx, holding, local=local)

