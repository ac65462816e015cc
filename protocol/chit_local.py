"""One holder's chits, and the balance they make.

**Balance convention** (MyCHIPs'): a holder's balance is what its partner owes it, so it is
positive when the partner owes you. A chit issued by your partner is an asset to you
(``+units``, state prefix ``A.``); a chit you issued is a liability (``-units``, prefix ``L.``).
So a payment by the foil holder raises the stock holder's balance, and the two holders'
balances are always equal and opposite. ``tally[side].terms.limit`` caps that side's balance:
it is the most the partner may owe it.

A :class:`LocalChit` is the value every chit decision takes and returns, and what the store
keeps; the convention is here, apart from any one decision, because the chain, the store and
the credit services count balances by it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .chit_fields import check_form
from .chit_states import STATES
from .errors import Refusal


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


def effect(chit: dict[str, Any], side: str) -> int:
    """How ``chit`` moves the balance of the holder of ``side``."""
    return -chit["units"] if chit["by"] == side else chit["units"]


def balance(chits: Iterable[dict[str, Any]], side: str) -> int:
    """The balance of the holder of ``side`` over good ``chits``: what its partner owes it."""
    return sum(effect(chit, side) for chit in chits)
