"""Chits: signed IOUs exchanged on an open tally, and the invoice negotiation around them.

A chit is a pledge of ``units`` by the side named in ``by``, the *issuer* or payer, signed by
that side's user; its fields, digest and checks are in :mod:`protocol.chit_fields`. This
module holds the events; each goes through the state table (:mod:`protocol.chit_states`), so
one the table does not list for the current state is refused ``bad_state`` and changes
nothing. The other parts each have a module of their own: one holder's chit and the balance
convention (:mod:`protocol.chit_local`: positive when the partner owes you), the room a tally
has for a chit (:mod:`protocol.chit_room`: the payee's limit, the closing rule, pending lift
chits counted as spent) and lift chits (:mod:`protocol.chit_lift`).

**Flows.** A direct payment is signed by the payer and is good at once (``L.good``). An invoice
is drafted by the payee with ``by`` = the payer, unsigned, and sent ``pend``; the payer accepts
(signs: ``L.good``) or refuses (``void``). A chit that becomes good is handed to
``protocol.chain.add``, which links it and sends the ``good`` message, so ``pay`` and ``accept``
return no message themselves. The payer (on ``pay`` and ``accept``) and the payee (on
``invoice``) check the tally's room before anything is sent; the receiving side checks form and
signature, and the limit only as a check on a forged ledger (``receive_good``): a signed chit is
the issuer's word.

Public API:

- User events: ``pay``, ``invoice``, ``accept``, ``refuse``.
- Peer events: ``receive_pend``, ``receive_good``, ``receive_void``.

Transitions return ``(LocalChit, sends)``: typed ``protocol.messages.Send`` events with target
``chit``, from our user to the tally partner (``protocol.tally_local.to_partner``). Refusals
(``protocol.errors.Refusal``) of the chit modules add the codes ``over_limit``, ``closing``,
``not_party`` (a lift hop whose users are not this tally's), ``lift_undecided`` and
``awaiting_lift`` (both: early, not wrong) to the tally's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .chit_fields import bad_field, check_chit, check_fields, chit_hash
from .chit_local import LocalChit
from .chit_room import check_limit, check_room
from .chit_states import RECEIVE_STATES, next_state, require_issue, require_tally
from .errors import Refusal
from .keys import SigningKey
from .messages import Send
from .tally_local import LocalTally, to_partner

Step = tuple[LocalChit, list[Send]]


def _draft(
    local: LocalTally, *, by: str, chit_uuid: str, units: int, date_ms: int, memo: str, ref: Any
) -> dict[str, Any]:
    chit = {
        "tally": local.uuid,
        "uuid": chit_uuid,
        "by": by,
        "type": "tran",
        "date": date_ms,
        "units": units,
        "ref": ref,
        "memo": memo,
        "hash": bytes(32),  # placeholder until the fields are known to be good
        "sign": None,
        "chain": None,
    }
    check_fields(chit)
    chit["hash"] = chit_hash(chit)
    return chit


def _sign(local: LocalTally, chit: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    if key.public != local.tally[chit["by"]]["cert"]["public"]:
        raise Refusal("bad_key", f"the signing key is not the {chit['by']} user's key")
    return {**chit, "sign": key.sign(chit["hash"])}


def pay(
    local: LocalTally,
    key: SigningKey,
    *,
    chit_uuid: str,
    units: int,
    date_ms: int,
    balance: int,
    memo: str = "",
    ref: Any = None,
    reserved: int = 0,
) -> Step:
    """A direct payment by our user, signed and good at once (``chain.add`` sends it).
    ``balance`` is ours, from ``chain.balance``."""
    state = next_state(None, "pay")
    require_issue(local)
    chit = _draft(
        local, by=local.side, chit_uuid=chit_uuid, units=units, date_ms=date_ms, memo=memo, ref=ref
    )
    check_room(local, chit, balance, reserved)
    return LocalChit(state, _sign(local, chit, key)), []


def invoice(
    local: LocalTally,
    *,
    chit_uuid: str,
    units: int,
    date_ms: int,
    balance: int,
    memo: str = "",
    ref: Any = None,
    reserved: int = 0,
) -> Step:
    """Ask the partner to pay ``units``: an unsigned chit issued in its name, sent ``pend``."""
    state = next_state(None, "invoice")
    require_issue(local)
    chit = _draft(
        local,
        by=local.partner_side,
        chit_uuid=chit_uuid,
        units=units,
        date_ms=date_ms,
        memo=memo,
        ref=ref,
    )
    check_room(local, chit, balance, reserved)
    return LocalChit(state, chit), [to_partner(local, "chit", "pend", chit)]


def accept(
    local_chit: LocalChit, local: LocalTally, key: SigningKey, *, balance: int, reserved: int = 0
) -> Step:
    """Pay the partner's invoice: sign it as drafted (``chain.add`` sends it good)."""
    state = next_state(local_chit.state, "accept")
    require_issue(local)
    check_room(local, local_chit.chit, balance, reserved)
    return LocalChit(state, _sign(local, local_chit.chit, key)), []


def refuse(local_chit: LocalChit, local: LocalTally) -> Step:
    """Turn the partner's invoice down."""
    state = next_state(local_chit.state, "refuse")
    notice = {"tally": local.uuid, "uuid": local_chit.uuid}
    return replace(local_chit, state=state), [to_partner(local, "chit", "void", notice)]


def receive_pend(local_chit: LocalChit | None, obj: Any, local: LocalTally) -> Step:
    """The partner invoices our user: a chit in our name that our user may sign or refuse."""
    state = next_state(local_chit.state if local_chit else None, "got pend")
    require_tally(local, RECEIVE_STATES)
    check_chit(obj, local.tally, signed=False)
    if obj["by"] != local.side:
        raise bad_field("by", f"of an invoice to us must be our side, {local.side}")
    if obj["chain"] is not None:
        raise bad_field("chain", "of an invoice must be nil: only good chits are chained")
    return LocalChit(state, obj), []


def receive_good(local_chit: LocalChit | None, obj: Any, local: LocalTally, *,
                 balance: int, paying: int = 0) -> Step:
    """The partner pays: directly, or by signing our invoice (then it must be that invoice).
    ``balance`` (our holding's, before this chit) must leave room under our limit on the
    partner's debt, as the partner checked before it signed: our view of that debt is never
    above its own (what raises it, the partner signs or accepts first; pending lift chits it
    counts as spent), so an honest chit always fits and only a forged ledger is refused. But
    for one case: ``paying``, what our pending lift chits on this tally pay the partner, is
    off its debt in its view once it has applied their lift's ``good`` and before we have. A
    chit that fits only then is ``awaiting_lift`` (early: taken once we apply it too), not
    ``over_limit``."""
    state = next_state(local_chit.state if local_chit else None, "got good")
    require_tally(local, RECEIVE_STATES)
    check_chit(obj, local.tally, signed=True)
    if obj["type"] == "lift":
        raise Refusal(
            "lift_undecided", f"chit {obj['uuid']} is a lift chit: only its lift's decision "
            "makes it good"
        )
    if obj["by"] != local.partner_side:
        raise bad_field(
            "by", f"of a chit we receive must be the partner's side, {local.partner_side}"
        )
    if local_chit is not None and obj["hash"] != local_chit.chit["hash"]:
        raise bad_field("hash", f"differs from our invoice {local_chit.uuid}")
    try:
        check_limit(local, obj, balance)
    except Refusal as over:
        if not paying:
            raise
        check_limit(local, obj, balance - paying)  # still over: over_limit, as it is
        raise Refusal("awaiting_lift", f"{over.message}, until our pending lift chits of "
                      f"{paying} to the partner are good here, as they may be there") from over
    return LocalChit(state, obj), []


def receive_void(local_chit: LocalChit, obj: Any, local: LocalTally) -> Step:
    """The payer refused our invoice."""
    state = next_state(local_chit.state, "got void")
    if obj != {"tally": local.uuid, "uuid": local_chit.uuid}:
        raise Refusal("bad_field", f"void must name tally {local.uuid} and chit {local_chit.uuid}")
    return replace(local_chit, state=state), []
