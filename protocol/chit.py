"""Chits: signed IOUs exchanged on an open tally, and the invoice negotiation around them.

A chit ``{tally, uuid, by, type, date, units, ref, memo, hash, sign, chain}`` is a pledge of
``units`` (integer milliCHIPs, never negative) by the side named in ``by``, the *issuer* or
payer. ``hash`` is the digest of the signed fields (everything but ``hash``, ``sign`` and
``chain``); ``sign`` is the issuer user's Ed25519 signature of ``hash``, checked against the
``public`` key in the issuer's certificate on the tally; ``chain`` is the chit's block in the
chit chain (``protocol.chain``), or nil until the foil holder orders it.

**Balance convention** (MyCHIPs'): a holder's balance is what its partner owes it, so it is
positive when the partner owes you. A chit issued by your partner is an asset to you
(``+units``, state prefix ``A.``); a chit you issued is a liability (``-units``, prefix ``L.``).
So a payment by the foil holder raises the stock holder's balance, and the two holders'
balances are always equal and opposite. ``tally[side].terms.limit`` caps that side's balance:
it is the most the partner may owe it.

**Flows.** A direct payment is signed by the payer and is good at once (``L.good``). An invoice
is drafted by the payee with ``by`` = the payer, unsigned, and sent ``pend``; the payer accepts
(signs: ``L.good``) or refuses (``void``). A chit that becomes good is handed to
``protocol.chain.add``, which links it and sends the ``good`` message, so ``pay`` and ``accept``
return no message themselves.

**Checks before anything is sent.** The payer (on ``pay`` and ``accept``) and the payee (on
``invoice``) refuse a chit that would push the payee's balance past the payee's limit, and on a
``C.open`` tally one that would raise the balance's magnitude. They judge by the local balance,
which counts every good chit this holder knows; the chits it does not know yet can only be the
partner's payments, which lower what the payer owes, so the local view errs on the safe side.
The receiving side checks form and signature only: a signed chit is the issuer's word.
``reserved`` (on ``pay``, ``invoice``, ``accept``) is the sum of pending lift chits that
already raise the payee's balance on this tally: it counts as spent.

**Lift chits** (``type: lift``, ``ref: {lift: <uuid>}``, ``sign`` always nil) are a tally's
share of a lift (``protocol.lift``): authorised by the referee's signed decision, not by a
user's signature. Both holders build the identical chit with :func:`lift_chit` (the uuid is
derived from the lift and the hop) and hold it pending (``L.lift`` if we pay, ``A.lift`` if
the partner pays us) until :func:`lift_decided` makes it good or void. A lift chit never
becomes good by a partner's message: :func:`receive_good` refuses one (``lift_undecided``),
and so does ``protocol.chain`` for a lift chit it does not hold yet.

Public API:

- ``LocalChit(state, chit)`` with ``to_map()/from_map()`` — one holder's chit and its state.
- ``chit_hash(chit)`` — digest of the signed fields; ``check_form(chit)`` — validation naming
  the bad field; ``check_chit(chit, tally, signed=)`` — that, the tally, and the signature.
- ``effect(chit, side)`` / ``balance(chits, side)`` — the sign convention above.
- User events: ``pay``, ``invoice``, ``accept``, ``refuse``.
- Peer events: ``receive_pend``, ``receive_good``, ``receive_void``.
- Lift events: ``lift_chit(record, hop, local)`` (``lift out`` / ``lift in``),
  ``lift_decided(local_chit, state)`` (``lift good`` / ``lift void``); ``LIFT_NAMESPACE``.

Transitions return ``(LocalChit, sends)``: typed ``protocol.messages.Send`` events with target
``chit``, from our user to the tally partner (``protocol.tally_local.to_partner``). Refusals
(``protocol.errors.Refusal``) add the codes ``over_limit``, ``closing``, ``not_party`` (a lift
hop whose users are not this tally's), ``lift_undecided`` and ``awaiting_lift`` (both: early,
not wrong) to the tally's.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from .codec import CodecError, canonical, digest
from .errors import Refusal
from .keys import SigningKey, verify
from .messages import Send
from .tally_fields import MAX_MEMO, MAX_UNITS, SIDES, check_uuid
from .tally_local import LocalTally, other_side, to_partner
from .tally_states import C_OPEN, CLOSE, OFFER_OPEN, OPEN

TYPES = ("tran", "set", "lift")  # a transaction, a settings change, a share of a lift
MAX_REF = 1024  # bytes of canonical ``ref``: with MAX_MEMO, a chain batch stays within a frame

A_PEND = "A.pend"  # our invoice waits for the payer
L_PEND = "L.pend"  # the partner's invoice waits for our user
A_GOOD = "A.good"
L_GOOD = "L.good"
A_VOID = "A.void"  # our invoice was refused
L_VOID = "L.void"  # we refused the partner's invoice
A_LIFT = "A.lift"  # a pending lift chit the partner pays us
L_LIFT = "L.lift"  # a pending lift chit we pay the partner
STATES = (A_PEND, L_PEND, A_GOOD, L_GOOD, A_VOID, L_VOID, A_LIFT, L_LIFT)

# (state, event) -> new state; ``None`` is "no local chit yet".
TRANSITIONS: dict[tuple[str | None, str], str] = {
    (None, "pay"): L_GOOD,
    (None, "invoice"): A_PEND,
    (L_PEND, "accept"): L_GOOD,
    (L_PEND, "refuse"): L_VOID,
    (None, "got pend"): L_PEND,
    (None, "got good"): A_GOOD,
    (A_PEND, "got good"): A_GOOD,
    (A_PEND, "got void"): A_VOID,
    # lift chits: pending from the promise, settled by the referee's decision
    (None, "lift out"): L_LIFT,
    (None, "lift in"): A_LIFT,
    (L_LIFT, "lift good"): L_GOOD,
    (A_LIFT, "lift good"): A_GOOD,
    (L_LIFT, "lift void"): L_VOID,
    (A_LIFT, "lift void"): A_VOID,
}

# uuid5(LIFT_NAMESPACE, f"{lift}/{hop}") names the lift chit of one hop on both holdings
LIFT_NAMESPACE = uuid.UUID("6f1c4a52-8d0e-5b6a-9c41-2e7d3f0a9b15")

ISSUE_STATES = frozenset({OPEN, C_OPEN})  # tally states in which our user may pledge value
# ... and in which the partner's chits are taken (an acceptor in offer.open is already bound).
# A partner's chit is its word in every binding state; on a closed tally it reopens it
# (``protocol.tally.reopen``): the partner signed it before it learned of the close.
RECEIVE_STATES = frozenset({OFFER_OPEN, OPEN, C_OPEN, CLOSE})

SIGNED_FIELDS = ("tally", "uuid", "by", "type", "date", "units", "ref", "memo")
_FIELDS = {*SIGNED_FIELDS, "hash", "sign", "chain"}

Step = tuple["LocalChit", list[Send]]


@dataclass(frozen=True)
class LocalChit:
    """One holder's copy of a chit and its ``A.``/``L.`` state."""

    state: str
    chit: dict[str, Any]

    @property
    def uuid(self) -> str:
        return self.chit["uuid"]

    def to_map(self) -> dict[str, Any]:
        return {"state": self.state, "chit": self.chit}

    @classmethod
    def from_map(cls, value: Any) -> LocalChit:
        if not isinstance(value, dict) or set(value) != {"state", "chit"}:
            raise Refusal("bad_field", "a local chit is a map of state and chit")
        if value["state"] not in STATES:
            raise Refusal("bad_field", f"unknown chit state {value['state']!r}")
        check_form(value["chit"])
        return cls(value["state"], value["chit"])


def chit_hash(chit: dict[str, Any]) -> bytes:
    return digest({field: chit[field] for field in SIGNED_FIELDS})


def _bad(field: str, rule: str) -> Refusal:
    return Refusal("bad_field", f"chit.{field} {rule}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(chit: Any) -> None:
    """Field-by-field validation of everything but the value of ``hash``."""
    if not isinstance(chit, dict) or set(chit) != _FIELDS:
        raise Refusal("bad_field", f"a chit must be a map of exactly {sorted(_FIELDS)}")
    check_uuid(chit["tally"], "chit.tally")
    check_uuid(chit["uuid"], "chit.uuid")
    if chit["by"] not in SIDES:
        raise _bad("by", f"must be one of {SIDES}")
    if chit["type"] not in TYPES:
        raise _bad("type", f"must be one of {TYPES}")
    if not _is_int(chit["date"]) or chit["date"] < 0:
        raise _bad("date", "must be a non-negative integer (ms since the epoch)")
    units = chit["units"]
    lowest, highest = (0, 0) if chit["type"] == "set" else (1, MAX_UNITS)
    if not _is_int(units) or not lowest <= units <= highest:
        raise _bad("units", f"of a {chit['type']} chit must be an integer in [{lowest}, {highest}]")
    if not isinstance(chit["memo"], str) or len(chit["memo"]) > MAX_MEMO:
        raise _bad("memo", f"must be text of at most {MAX_MEMO} characters")
    try:
        ref_size = len(canonical(chit["ref"]))
    except CodecError as exc:
        raise _bad("ref", f"is not canonical data: {exc}") from exc
    if ref_size > MAX_REF:
        raise _bad("ref", f"takes {ref_size} bytes; at most {MAX_REF} are allowed")
    if not isinstance(chit["hash"], bytes) or len(chit["hash"]) != 32:
        raise _bad("hash", "must be 32 bytes")
    sign = chit["sign"]
    if sign is not None and (not isinstance(sign, bytes) or len(sign) != 64):
        raise _bad("sign", "must be a 64-byte signature or nil")
    block = chit["chain"]
    if block is not None:
        if not isinstance(block, dict) or set(block) != {"index", "prev", "hash"}:
            raise _bad("chain", "must be nil or a map of index, prev and hash")
        if not _is_int(block["index"]) or block["index"] < 1:
            raise _bad("chain.index", "must be an integer from 1")
        for field in ("prev", "hash"):
            if not isinstance(block[field], bytes) or len(block[field]) != 32:
                raise _bad(f"chain.{field}", "must be 32 bytes")


def check_form(chit: Any) -> None:
    """Refuse a malformed chit, naming the field, or one whose ``hash`` is not its digest."""
    _check_fields(chit)
    if chit["hash"] != chit_hash(chit):
        raise _bad("hash", "is not the digest of the chit's signed fields")


def check_chit(chit: Any, tally: dict[str, Any], *, signed: bool) -> None:
    """Refuse a malformed chit, one for another tally, or one whose signature is wrong: a
    good chit (``signed=True``) carries a valid signature by its issuer; an invoice, none."""
    check_form(chit)
    if chit["tally"] != tally["uuid"]:
        raise _bad("tally", f"is {chit['tally']}, not {tally['uuid']}")
    if chit["type"] == "lift":
        _check_lift_fields(chit)
        return
    if not signed:
        if chit["sign"] is not None:
            raise _bad("sign", "must be nil until the payer signs")
        return
    public = tally[chit["by"]]["cert"]["public"]
    if chit["sign"] is None or not _signature_valid(public, chit["sign"], chit["hash"]):
        raise Refusal("bad_signature", f"chit {chit['uuid']} lacks a valid {chit['by']} signature")


def _check_lift_fields(chit: dict[str, Any]) -> None:
    """A lift chit names its lift and carries no signature (the decision authorises it)."""
    ref = chit["ref"]
    if not isinstance(ref, dict) or set(ref) != {"lift"}:
        raise _bad("ref", "of a lift chit must be a map {lift: <lift uuid>}")
    check_uuid(ref["lift"], "chit.ref.lift")
    if chit["sign"] is not None:
        raise _bad("sign", "of a lift chit must be nil: the referee's decision authorises it")


@functools.lru_cache(maxsize=4096)
def _signature_valid(public: bytes, signature: bytes, chit_hash: bytes) -> bool:
    """Ed25519 verification, remembered: a chit that arrives in a chain message is checked
    there (``protocol.chain``) and again when the caller records it (``receive_good``)."""
    return verify(public, signature, chit_hash)


def effect(chit: dict[str, Any], side: str) -> int:
    """How ``chit`` moves the balance of the holder of ``side``."""
    return -chit["units"] if chit["by"] == side else chit["units"]


def balance(chits: Iterable[dict[str, Any]], side: str) -> int:
    """The balance of the holder of ``side`` over good ``chits``: what its partner owes it."""
    return sum(effect(chit, side) for chit in chits)


# -- transitions ------------------------------------------------------------------------------


def _next(state: str | None, event: str) -> str:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise Refusal("bad_state", f"cannot {event} a chit in state {state or 'none'}") from None


def _require_tally(local: LocalTally, states: frozenset[str]) -> None:
    if local.state not in states:
        raise Refusal("bad_state", f"tally {local.uuid} is {local.state}: no chits now")


def _check_limit(
    local: LocalTally, chit: dict[str, Any], holder_balance: int, reserved: int = 0
) -> int:
    """The payee's limit on the payer's debt; returns that debt before ``chit``."""
    payee = other_side(chit["by"])
    before = holder_balance if local.side == payee else -holder_balance
    after = before + reserved + chit["units"]
    limit = local.tally[payee]["terms"]["limit"]
    if after > limit:
        held = f" ({reserved} of it reserved by pending lift chits)" if reserved else ""
        payer_name, payee_name = _user(local, chit["by"]), _user(local, payee)
        fits = max(limit - after + chit["units"], 0)
        raise Refusal(
            "over_limit",
            f"{chit['units']} would bring {payer_name}'s debt to {payee_name} to {after}{held},"
            f" past {payee_name}'s limit of {limit}: at most {fits} fits now",
        )
    return before


def _user(local: LocalTally, side: str) -> str:
    """The user holding ``side`` of the tally, as error messages name it."""
    cert = local.tally[side]["cert"]
    return f"{cert['chad']['cuid']} ({side})" if cert is not None else f"the {side} side"


def _check_room(
    local: LocalTally, chit: dict[str, Any], holder_balance: int, reserved: int = 0
) -> None:
    """The payee's limit, and on a closing tally the rule that |balance| may not grow.
    ``reserved``: pending lift chits that already raise the payee's balance (spent)."""
    before = _check_limit(local, chit, holder_balance, reserved)
    after = before + reserved + chit["units"]
    # closing: the magnitude may not grow whether the reserved lift chits go good or void
    grows = abs(before + chit["units"]) > abs(before) or abs(after) > abs(before + reserved)
    if local.state == C_OPEN and grows:
        fits = max(0, -2 * (before + reserved))  # to as far past zero as it is short of it
        raise Refusal("closing", f"tally {local.uuid} is closing: no payment may make what "
                      f"either side owes grow; at most {fits} fits now")


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
    _check_fields(chit)
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
    state = _next(None, "pay")
    _require_tally(local, ISSUE_STATES)
    chit = _draft(
        local, by=local.side, chit_uuid=chit_uuid, units=units, date_ms=date_ms, memo=memo, ref=ref
    )
    _check_room(local, chit, balance, reserved)
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
    state = _next(None, "invoice")
    _require_tally(local, ISSUE_STATES)
    chit = _draft(
        local,
        by=local.partner_side,
        chit_uuid=chit_uuid,
        units=units,
        date_ms=date_ms,
        memo=memo,
        ref=ref,
    )
    _check_room(local, chit, balance, reserved)
    return LocalChit(state, chit), [to_partner(local, "chit", "pend", chit)]


def accept(
    local_chit: LocalChit, local: LocalTally, key: SigningKey, *, balance: int, reserved: int = 0
) -> Step:
    """Pay the partner's invoice: sign it as drafted (``chain.add`` sends it good)."""
    state = _next(local_chit.state, "accept")
    _require_tally(local, ISSUE_STATES)
    _check_room(local, local_chit.chit, balance, reserved)
    return LocalChit(state, _sign(local, local_chit.chit, key)), []


def refuse(local_chit: LocalChit, local: LocalTally) -> Step:
    """Turn the partner's invoice down."""
    state = _next(local_chit.state, "refuse")
    notice = {"tally": local.uuid, "uuid": local_chit.uuid}
    return replace(local_chit, state=state), [to_partner(local, "chit", "void", notice)]


def receive_pend(local_chit: LocalChit | None, obj: Any, local: LocalTally) -> Step:
    """The partner invoices our user: a chit in our name that our user may sign or refuse."""
    state = _next(local_chit.state if local_chit else None, "got pend")
    _require_tally(local, RECEIVE_STATES)
    check_chit(obj, local.tally, signed=False)
    if obj["by"] != local.side:
        raise _bad("by", f"of an invoice to us must be our side, {local.side}")
    if obj["chain"] is not None:
        raise _bad("chain", "of an invoice must be nil: only good chits are chained")
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
    state = _next(local_chit.state if local_chit else None, "got good")
    _require_tally(local, RECEIVE_STATES)
    check_chit(obj, local.tally, signed=True)
    if obj["type"] == "lift":
        raise Refusal(
            "lift_undecided", f"chit {obj['uuid']} is a lift chit: only its lift's decision "
            "makes it good"
        )
    if obj["by"] != local.partner_side:
        raise _bad("by", f"of a chit we receive must be the partner's side, {local.partner_side}")
    if local_chit is not None and obj["hash"] != local_chit.chit["hash"]:
        raise _bad("hash", f"differs from our invoice {local_chit.uuid}")
    try:
        _check_limit(local, obj, balance)
    except Refusal as over:
        if not paying:
            raise
        _check_limit(local, obj, balance - paying)  # still over: over_limit, as it is
        raise Refusal("awaiting_lift", f"{over.message}, until our pending lift chits of "
                      f"{paying} to the partner are good here, as they may be there") from over
    return LocalChit(state, obj), []


def receive_void(local_chit: LocalChit, obj: Any, local: LocalTally) -> Step:
    """The payer refused our invoice."""
    state = _next(local_chit.state, "got void")
    if obj != {"tally": local.uuid, "uuid": local_chit.uuid}:
        raise Refusal("bad_field", f"void must name tally {local.uuid} and chit {local_chit.uuid}")
    return replace(local_chit, state=state), []


# -- lift chits --------------------------------------------------------------------------------


def _user_side(local: LocalTally, user: dict[str, Any]) -> str | None:
    """The side of ``local``'s tally held by ``user`` ({cuid, agent}), if either."""
    for side in SIDES:
        cert = local.tally[side]["cert"]
        if cert is not None and all(
            cert["chad"].get(field) == user.get(field) for field in ("cuid", "agent")
        ):
            return side
    return None


def lift_chit(record: dict[str, Any], hop: int, local: LocalTally) -> LocalChit:
    """The pending chit of hop ``hop`` of a lift (``protocol.lift`` record, checked by the
    caller) as held by ``local``: path[hop] pays path[hop + 1] on tally path[hop].tally.
    Both holders build the identical chit (same uuid and hash)."""
    path = record["path"]
    if not isinstance(hop, int) or isinstance(hop, bool) or not 0 <= hop < len(path) - 1:
        raise Refusal("bad_field", f"hop must be an integer from 0 to {len(path) - 2}")
    payer, payee = path[hop], path[hop + 1]
    if payer["tally"] != local.uuid:
        raise Refusal("not_party", f"hop {hop} of lift {record['lift']} is not on {local.uuid}")
    by, to = _user_side(local, payer), _user_side(local, payee)
    if by is None or to is None or by == to:
        raise Refusal(
            "not_party",
            f"tally {local.uuid} is not between {payer['cuid']}:{payer['agent']} and "
            f"{payee['cuid']}:{payee['agent']} (hop {hop} of lift {record['lift']})",
        )
    payor_side = _user_side(local, path[0])
    if payor_side is not None and local.tally[payor_side]["cert"]["public"] != record["public"]:
        raise Refusal(
            "bad_signature", f"lift {record['lift']} is not signed by its payor's user key"
        )
    state = _next(None, "lift out" if by == local.side else "lift in")
    chit = {
        "tally": local.uuid,
        "uuid": lift_chit_uuid(record["lift"], hop),
        "by": by,
        "type": "lift",
        "date": record["date"],
        "units": record["units"],
        "ref": {"lift": record["lift"]},
        "memo": record["memo"],
        "hash": bytes(32),
        "sign": None,
        "chain": None,
    }
    _check_fields(chit)
    chit["hash"] = chit_hash(chit)
    return LocalChit(state, chit)


def lift_chit_uuid(lift: str, hop: int) -> str:
    """The uuid of hop ``hop``'s chit of lift ``lift``, the same on both of its holders."""
    return str(uuid.uuid5(LIFT_NAMESPACE, f"{lift}/{hop}"))


def lift_decided(local_chit: LocalChit, state: str) -> LocalChit:
    """A pending lift chit once its lift's decision (``good`` or ``void``) is known."""
    if state not in ("good", "void"):
        raise Refusal("bad_field", f"a lift decision is good or void, not {state!r}")
    return replace(local_chit, state=_next(local_chit.state, f"lift {state}"))
