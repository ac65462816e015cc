"""What a tally has room for: the payee's limit, and on a closing tally the rule that what
either side owes may not grow.

**Checks before anything is sent.** The payer (on ``pay`` and ``accept``) and the payee (on
``invoice``) refuse a chit that would push the payee's balance past the payee's limit, and on a
``C.open`` tally one that would raise the balance's magnitude. They judge by the local balance,
which counts every good chit this holder knows; the chits it does not know yet can only be the
partner's payments, which lower what the payer owes, so the local view errs on the safe side.
The receiving side (``protocol.chit.receive_good``) checks the limit too, which an honest chit
always fits: a signed chit is the issuer's word. ``reserved`` is the sum of pending lift chits
that already raise the payee's balance on this tally: it counts as spent.

Refusal codes: ``over_limit`` and ``closing``, each saying how much fits now (or that nothing
does). Balances follow
the convention of :mod:`protocol.chit_local`.
"""

from __future__ import annotations

from typing import Any

from .errors import Refusal
from .tally_local import LocalTally, other_side
from .tally_states import C_OPEN


def check_limit(
    local: LocalTally, chit: dict[str, Any], holder_balance: int, reserved: int = 0
) -> int:
    """The payee's limit on the payer's debt; returns that debt before ``chit``."""
    before = _debt_before(local, chit, holder_balance)
    after = before + reserved + chit["units"]
    limit = _payee_limit(local, chit)
    if after > limit:
        held = f" ({reserved} of it reserved by pending lift chits)" if reserved else ""
        payer_name, payee_name = _user(local, chit["by"]), _user(local, other_side(chit["by"]))
        raise Refusal(
            "over_limit",
            f"{chit['units']} would bring {payer_name}'s debt to {payee_name} to {after}{held},"
            f" past {payee_name}'s limit of {limit}: "
            f"{_fits(_limit_fits(local, chit, before, reserved))}",
        )
    return before


def check_room(
    local: LocalTally, chit: dict[str, Any], holder_balance: int, reserved: int = 0
) -> None:
    """The payee's limit, and on a closing tally the rule that |balance| may not grow.
    ``reserved``: pending lift chits that already raise the payee's balance (spent). A chit
    that breaks both is refused ``closing``, and either refusal's "at most N fits" fits both
    rules (the limit's alone would name an amount the closing rule refuses next)."""
    before = _debt_before(local, chit, holder_balance)
    after = before + reserved + chit["units"]
    # closing: the magnitude may not grow whether the reserved lift chits go good or void
    grows = abs(before + chit["units"]) > abs(before) or abs(after) > abs(before + reserved)
    if local.state == C_OPEN and grows:
        fits = min(max(0, -2 * (before + reserved)),  # as far past zero as it is short of it
                   _limit_fits(local, chit, before, reserved))
        raise Refusal("closing", f"tally {local.uuid} is closing: no payment may make what "
                      f"either side owes grow; {_fits(fits)}")
    check_limit(local, chit, holder_balance, reserved)


def _debt_before(local: LocalTally, chit: dict[str, Any], holder_balance: int) -> int:
    """What the chit's payer owes its payee before it (negative: the payee owes)."""
    return holder_balance if local.side == other_side(chit["by"]) else -holder_balance


def _payee_limit(local: LocalTally, chit: dict[str, Any]) -> int:
    return local.tally[other_side(chit["by"])]["terms"]["limit"]


def _limit_fits(local: LocalTally, chit: dict[str, Any], before: int, reserved: int) -> int:
    """The most the payee's limit lets the payer pay now."""
    return max(_payee_limit(local, chit) - before - reserved, 0)


def _fits(units: int) -> str:
    """What fits, in words: "at most 0" names an amount no payment can have (units from 1)."""
    return f"at most {units} fits now" if units > 0 else "nothing fits now"


def _user(local: LocalTally, side: str) -> str:
    """The user holding ``side`` of the tally, as error messages name it."""
    cert = local.tally[side]["cert"]
    return f"{cert['chad']['cuid']} ({side})" if cert is not None else f"the {side} side"
