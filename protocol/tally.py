"""Tallies: how two CHIP users negotiate, close and settle their signed credit agreement.

A tally has two halves. The *stock* is held by the vendor (creditor), the *foil* by the client
(debtor). Each half carries its user's certificate and credit terms, where ``terms.limit`` is
the most (integer milliCHIPs) the *partner* may owe that side. Both users sign the canonical
digest of the tally without its ``sign`` field; that digest is block 0 of the chit chain.

This module holds the events; each goes through the state table (:mod:`protocol.tally_states`),
so one the table does not list for the current state is refused ``bad_state`` and changes
nothing. The other parts each have a module of their own: the tally map, certificates and
tickets with their checks (:mod:`protocol.tally_fields`), one holder's copy
(:class:`protocol.tally_local.LocalTally`) and what the users sign
(:mod:`protocol.tally_sign`). A queued decision's fate is reported with :func:`delivered` (the
partner's node committed it) or :func:`rejected` (it answered with an error), which settles
the state.

Negotiation: the inviter makes a draft and an invitation ticket (out of band); the subject
sends ``ticket`` with its certificate; the inviter's draft becomes ``P.draft`` (a reusable
ticket clones the draft under a new uuid instead); the inviter signs and sends ``offer``; the
subject, in ``P.offer``, accepts (``open`` with both signatures), refuses (``void``) or counters
(``draft``: signatures cleared, ``version`` bumped, and the subject now holds the pen and
offers next). Closing: ``close`` moves both holders to ``C.open``, where no chit may raise the
balance's magnitude, and :func:`settle` ends it at ``close`` once the balance is zero and the
chain is quiet.

Every transition returns ``(LocalTally, sends)``: typed ``protocol.messages.Send`` events with
target ``tally``, each naming its recipient, the tally partner (``LocalTally.partner``), and
its sender, our user (``LocalTally.cuid``). The subject's ``ticket`` request goes to
``ticket["chad"]``. ``protocol.tally_local.to_partner`` builds such a ``Send`` for
``protocol.chit`` and ``protocol.chain`` too.

Refusal codes: ``bad_state``, ``bad_field``, ``bad_signature``, ``bad_key`` (a signing key
that is not the user's), ``bad_ticket``, ``expired``, ``not_addressed`` (a tally that does not
name us), ``not_from_partner`` (sent by an agent that is not the partner's), ``not_settled``.

Public API (``Refusal``, from ``protocol.errors``, is a reasoned "no"; the sides ``STOCK``,
``FOIL``, ``SIDES`` are ``protocol.tally_fields``'):

- User events: ``invite``, ``edit``, ``offer``, ``accept``, ``refuse``, ``give_up``, ``counter``,
  ``close``;
  ``ticket_request`` builds the subject's request, a ``Send`` (no state).
- Peer events: ``receive_ticket``, ``receive_offer``, ``receive_open``, ``receive_void``,
  ``receive_draft``, ``receive_close``.
- Node events: ``delivered``, ``rejected``, ``settle``, ``reopen``; ``follow`` applies the
  lifecycle rules after any change (start the chain, reopen, settle) and says which fired.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from .errors import Refusal  # tally refusals use lower-case codes
from .keys import ChipAddress, SigningKey
from .messages import Send
from .tally_fields import (
    FOIL,
    SIDES,
    STOCK,
    check_cert,
    check_tally,
    check_ticket,
    check_unexpired,
    check_uuid,
    exact_fields,
    same_user,
)
from .tally_hints import hint
from .tally_local import LocalTally, other_side, to_partner
from .tally_sign import check_signature, core_digest, signed, unsigned
from .tally_states import BINDING_STATES, C_OPEN, CLOSE, DRAFT, DRAFT_OFFER, P_DRAFT, next_state

DEFAULT_AGREEMENT = {"name": "agentd-credit", "version": 1}

Step = tuple[LocalTally, list[Send]]


def _asked(local: LocalTally, event: str) -> str:
    """The next state for a user's ``event``, or a refusal that says what to do instead."""
    try:
        return next_state(local.state, event)
    except Refusal as refusal:
        told = hint(local.state, local.tally[local.partner_side]["cert"] is not None)
        raise Refusal("bad_state", f"{refusal.message}: {told}" if told else refusal.message
                      ) from None


def _message(local: LocalTally, action: str, obj: dict[str, Any]) -> Send:
    return to_partner(local, "tally", action, obj)


def _notice(local: LocalTally, action: str) -> Send:
    """A short message that names the tally revision it is about."""
    return _message(local, action, {"uuid": local.uuid, "version": local.tally["version"]})


def _check_notice(local: LocalTally, obj: Any, version: int) -> None:
    exact_fields(obj, "notice", {"uuid", "version"})
    if obj["uuid"] != local.uuid or obj["version"] != version:
        raise Refusal(
            "bad_field",
            f"notice is about {obj['uuid']} v{obj['version']}, expected {local.uuid} v{version}",
        )


def invite(
    *,
    tally_uuid: str,
    date_ms: int,
    cert: dict[str, Any],
    limit: int,
    side: str = STOCK,
    memo: str = "",
    agree: dict[str, Any] | None = None,
) -> Step:
    """A new draft with our certificate on ``side``; ``limit`` applies to both sides until the
    subject counters."""
    state = next_state(None, "invite")
    if side not in SIDES:
        raise Refusal("bad_field", f"side must be one of {SIDES}")
    tally = {
        "version": 1,
        "uuid": tally_uuid,
        "date": date_ms,
        "memo": memo,
        "agree": dict(agree or DEFAULT_AGREEMENT),
        STOCK: {"cert": cert if side == STOCK else None, "terms": {"limit": limit}},
        FOIL: {"cert": cert if side == FOIL else None, "terms": {"limit": limit}},
        "sign": {"hash": None, STOCK: None, FOIL: None},
    }
    check_tally(tally)
    return LocalTally(side, state, tally), []


def edit(
    local: LocalTally, *, memo: str | None = None, limits: dict[str, int] | None = None
) -> Step:
    """Change the memo or either side's limit before offering."""
    state = _asked(local, "edit")
    tally = copy.deepcopy(local.tally)
    if memo is not None:
        tally["memo"] = memo
    for side, limit in (limits or {}).items():
        if side not in SIDES:
            raise Refusal("bad_field", f"limits: unknown side {side!r}")
        tally[side]["terms"]["limit"] = limit
    check_tally(tally)
    return replace(local, state=state, tally=tally), []


def offer(local: LocalTally, key: SigningKey) -> Step:
    """Sign our side and send the tally to the partner."""
    state = _asked(local, "offer")
    if local.tally[local.partner_side]["cert"] is None:
        raise Refusal("bad_state", f"tally {local.uuid} has no partner to offer it to")
    tally = signed(local.tally, local.side, key)
    return replace(local, state=state, tally=tally), [_message(local, "offer", tally)]


def receive_offer(
    local: LocalTally | None, obj: Any, *, holder_cert: dict[str, Any], sender_agent: str
) -> Step:
    """The partner offers a tally (the first offer, or a counter-offer) signed on its side.

    ``holder_cert`` is our user's certificate (it tells which side is ours);
    ``sender_agent`` is the channel's authenticated agent, which must be the offerer's.
    """
    state = next_state(local.state if local else None, "got offer")
    check_tally(obj)
    sides = [side for side in SIDES if obj[side]["cert"] == holder_cert]
    if len(sides) != 1 or obj[other_side(sides[0])]["cert"] is None:
        raise Refusal("not_addressed", f"tally {obj['uuid']} does not pair our user with a partner")
    side = sides[0]
    partner = other_side(side)
    if obj[partner]["cert"]["chad"]["agent"] != sender_agent:
        raise Refusal("not_from_partner", f"tally {obj['uuid']} was offered by another agent")
    if obj["sign"][side] is not None:
        raise Refusal("bad_field", f"tally.sign.{side}: an offer carries only the offerer's")
    check_signature(obj, partner)
    if local is not None:
        if obj["uuid"] != local.uuid or side != local.side:
            raise Refusal("bad_field", f"offer for {obj['uuid']} does not match tally {local.uuid}")
        known = local.tally[partner]["cert"]
        offerer = obj[partner]["cert"]
        if known is None or not same_user(known, offerer) or known["public"] != offerer["public"]:
            raise Refusal("not_from_partner", f"tally {obj['uuid']} is offered by a stranger")
        # A countered holder already bumped its version to the counter's; otherwise a
        # counter-offer must be newer than the offer we made.
        newest = local.tally["version"] + (0 if local.state == DRAFT else 1)
        if obj["version"] < newest:
            raise Refusal("bad_field", f"tally.version {obj['version']} is older than {newest}")
    return LocalTally(side, state, copy.deepcopy(obj)), []


def accept(local: LocalTally, key: SigningKey) -> Step:
    """Sign the partner's offer and send the fully signed tally back (``open``)."""
    state = _asked(local, "accept")
    tally = signed(local.tally, local.side, key)
    return replace(local, state=state, tally=tally), [_message(local, "open", tally)]


def refuse(local: LocalTally) -> Step:
    """Turn the partner's offer down (``void``); or, on a ``draft`` no ticket has come for,
    withdraw our invitation (nobody to tell); or, on the ``P.draft`` a ticket made, turn its
    subject down before offering: it is void here at once, and the subject's node, which
    holds no copy (only its request), is sent ``void`` so that it stops waiting for an
    offer. After a counter-offer both sides hold a draft (one of them the pen): either may
    give the tally up, and the partner is told (``void`` of that version)."""
    countered = local.tally["version"] > 1 or (
        local.state == DRAFT and local.tally[local.partner_side]["cert"] is not None)
    if local.state in (DRAFT, P_DRAFT) and countered:
        return give_up(local)
    state = _asked(local, "refuse")
    if local.state == DRAFT:
        return replace(local, state=state), []
    return replace(local, state=state), [_notice(local, "void")]


def give_up(local: LocalTally) -> Step:
    """Give up the draft a counter-offer left both sides (``tally.refuse`` on it): the
    partner's copy goes void too, told by a ``void`` of its version."""
    return replace(local, state=_asked(local, "give up")), [_notice(local, "void")]


def counter(local: LocalTally) -> Step:
    """Take the pen: clear the signatures, start the next revision, tell the partner (``draft``)."""
    state = _asked(local, "counter")
    tally = unsigned(local.tally)
    tally["version"] += 1
    countered = replace(local, state=state, tally=tally)
    return countered, [_notice(countered, "draft")]


def receive_open(local: LocalTally, obj: Any) -> Step:
    """The partner accepted our offer: the same tally, now carrying both signatures."""
    state = next_state(local.state, "got open")
    check_tally(obj)
    if obj["uuid"] != local.uuid or core_digest(obj) != local.tally["sign"]["hash"]:
        raise Refusal("bad_field", f"tally {obj['uuid']} is not the tally we offered")
    if obj["sign"][local.side] != local.tally["sign"][local.side]:
        raise Refusal("bad_signature", f"tally.sign.{local.side} is not our signature")
    check_signature(obj, local.partner_side)
    return replace(local, state=state, tally=copy.deepcopy(obj)), []


def receive_void(local: LocalTally, obj: Any) -> Step:
    """The partner refused our offer, or gave up the draft a counter-offer left us both."""
    state = next_state(local.state, "got void")
    _check_notice(local, obj, local.tally["version"])
    return replace(local, state=state), []


def receive_draft(local: LocalTally, obj: Any) -> Step:
    """The partner countered our offer: our signature lapses and it offers next."""
    state = next_state(local.state, "got draft")
    _check_notice(local, obj, local.tally["version"] + 1)
    tally = unsigned(local.tally)
    tally["version"] = obj["version"]
    return replace(local, state=state, tally=tally), []


def close(local: LocalTally, *, balance: int) -> Step:
    """Ask to close: from now on no chit may raise the balance's magnitude. Asked again, it
    says what the user waits for: the balance (ours, ``balance``) to reach zero."""
    if local.state == C_OPEN:
        owed = (f"{local.cuid}'s partner owes it {balance}" if balance > 0
                else f"{local.cuid} owes its partner {-balance}")
        raise Refusal("bad_state", f"tally {local.uuid} is already closing ({C_OPEN}): " + (
            "its balance is 0, and it closes as soon as its chain is settled" if balance == 0
            else f"it closes once its balance, now {balance} ({owed}), reaches zero: only "
            "chits that bring the balance toward zero are taken"))
    if local.state == CLOSE:
        raise Refusal("bad_state", f"tally {local.uuid} is already closed ({CLOSE})")
    state = _asked(local, "close")
    return replace(local, state=state), [_message(local, "close", {"uuid": local.uuid})]


def receive_close(local: LocalTally, obj: Any) -> Step:
    state = next_state(local.state, "got close")
    exact_fields(obj, "close", {"uuid"})
    if obj["uuid"] != local.uuid:
        raise Refusal("bad_field", f"close is about {obj['uuid']}, not {local.uuid}")
    return replace(local, state=state), []


def delivered(local: LocalTally) -> Step:
    """The partner's node committed the message our last decision queued."""
    return replace(local, state=next_state(local.state, "delivered")), []


def rejected(local: LocalTally) -> Step:
    """The partner's node refused that message for good: fall back to a state our user can
    act on again (an offer that did not take lapses, so its signature is dropped)."""
    state = next_state(local.state, "rejected")
    tally = unsigned(local.tally) if local.state == DRAFT_OFFER else local.tally
    return replace(local, state=state, tally=tally), []


def settle(local: LocalTally, *, balance: int, quiet: bool) -> Step:
    """Close a closing tally whose balance is zero and whose chain is quiet (nothing pending,
    everything confirmed: see ``protocol.chain.settled``)."""
    state = next_state(local.state, "settle")
    if balance != 0 or not quiet:
        chain = "quiet" if quiet else "still moving"
        raise Refusal("not_settled", f"tally {local.uuid}: balance {balance}, chain {chain}")
    return replace(local, state=state), []


def reopen(local: LocalTally) -> Step:
    """Back to closing: a good chit from the partner, signed before it learned of the close,
    arrived after the tally closed. It is owed all the same, so the tally stays ``C.open``
    (taking only chits that shrink the balance) until the balance is zero again."""
    return replace(local, state=next_state(local.state, "reopen")), []


START_CHAIN = "start_chain"  # what ``follow`` says happened
REOPENED = "reopened"
CLOSED = "closed"


def follow(
    local: LocalTally, *, has_chain: bool, balance: int, quiet: bool
) -> tuple[LocalTally, tuple[str, ...]]:
    """The lifecycle rules that follow every change of a holder's tally, with what happened:
    a tally both users signed and that has no chain starts one (``START_CHAIN``); a closed
    tally a late partner chit moved off zero is closing again (``REOPENED``); a closing tally
    whose balance is zero and whose chain is ``quiet`` closes (``CLOSED``)."""
    happened = []
    if not has_chain and local.state in BINDING_STATES:
        happened.append(START_CHAIN)
    if local.state == CLOSE and balance != 0:
        local, _ = reopen(local)
        happened.append(REOPENED)
    if local.state == C_OPEN and has_chain and balance == 0 and quiet:
        local, _ = settle(local, balance=balance, quiet=True)
        happened.append(CLOSED)
    return local, tuple(happened)


def ticket_request(ticket: dict[str, Any], cert: dict[str, Any], now_ms: int) -> Send:
    """The subject's ``ticket`` message, from the user of ``cert`` to the inviter at
    ``ticket["chad"]``."""
    check_unexpired(ticket, now_ms)
    check_cert(cert, "cert")
    return Send(ChipAddress.from_map(ticket["chad"]), "tally", "ticket",
                {"token": ticket["token"], "cert": cert}, from_cuid=cert["chad"]["cuid"])


def receive_ticket(
    template: LocalTally,
    ticket: dict[str, Any],
    obj: Any,
    *,
    now_ms: int,
    new_uuid: str,
    sender_agent: str,
) -> Step:
    """A subject presents ``ticket``'s token with its certificate. A one-time ticket puts the
    subject into ``template`` itself; a reusable one fills a copy under ``new_uuid`` and leaves
    the template as it was. Store the returned tally under its own uuid."""
    state = next_state(template.state, "got ticket")
    exact_fields(obj, "ticket request", {"token", "cert"})
    check_ticket(ticket, obj["token"], now_ms)
    cert = obj["cert"]
    check_cert(cert, "ticket request cert")
    if cert["chad"]["agent"] != sender_agent:
        raise Refusal("not_from_partner", "the ticket request's certificate is another agent's")
    partner = template.partner_side
    if template.tally[partner]["cert"] is not None:
        raise Refusal("bad_ticket", f"tally {template.uuid} already has a partner")
    if same_user(cert, template.tally[template.side]["cert"]):
        raise Refusal("bad_ticket", "a user cannot take its own invitation")
    tally = copy.deepcopy(template.tally)
    tally[partner]["cert"] = cert
    if ticket["reuse"]:
        check_uuid(new_uuid, "new tally uuid")
        tally["uuid"] = new_uuid
    return replace(template, state=state, tally=tally), []
