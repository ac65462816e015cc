"""Lift chits: a tally's share of a lift (``protocol.lift``), pending until the lift's decision.

A lift chit (``type: lift``, ``ref: {lift: <uuid>}``, ``sign`` always nil) is authorised by the
referee's signed decision, not by a user's signature. Both holders build the identical chit
with :func:`lift_chit` (the uuid is derived from the lift and the hop, :func:`lift_chit_uuid`)
and hold it pending (``L.lift`` if we pay, ``A.lift`` if the partner pays us) until
:func:`lift_decided` makes it good or void. A lift chit never becomes good by a partner's
message: ``protocol.chit.receive_good`` refuses one (``lift_undecided``), and so does
``protocol.chain`` for a lift chit it does not hold yet.

Refusal codes, beyond the field checks: ``not_party`` (a lift hop whose users are not this
tally's) and ``bad_signature`` (a record not signed by its payor's key on this tally).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from .chit_fields import check_fields, chit_hash
from .chit_local import LocalChit
from .chit_states import next_state
from .errors import Refusal
from .tally_fields import SIDES
from .tally_local import LocalTally

# uuid5(LIFT_NAMESPACE, f"{lift}/{hop}") names the lift chit of one hop on both holdings
LIFT_NAMESPACE = uuid.UUID("6f1c4a52-8d0e-5b6a-9c41-2e7d3f0a9b15")


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
    state = next_state(None, "lift out" if by == local.side else "lift in")
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
    check_fields(chit)
    chit["hash"] = chit_hash(chit)
    return LocalChit(state, chit)


def lift_chit_uuid(lift: str, hop: int) -> str:
    """The uuid of hop ``hop``'s chit of lift ``lift``, the same on both of its holders."""
    return str(uuid.uuid5(LIFT_NAMESPACE, f"{lift}/{hop}"))


def lift_decided(local_chit: LocalChit, state: str) -> LocalChit:
    """A pending lift chit once its lift's decision (``good`` or ``void``) is known."""
    if state not in ("good", "void"):
        raise Refusal("bad_field", f"a lift decision is good or void, not {state!r}")
    return replace(local_chit, state=next_state(local_chit.state, f"lift {state}"))
