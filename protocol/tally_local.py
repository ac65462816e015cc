"""One holder's copy of a tally: which side it holds, its state, the shared map, and whom its
messages are from and for.

Both partners hold the same tally map; what differs between their copies is the side and the
state, which is all a :class:`LocalTally` adds. It is the value every tally, chit, chain and
lift decision takes, so it lives apart from any one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import Refusal
from .keys import ChipAddress
from .messages import Send
from .tally_fields import FOIL, SIDES, STOCK, check_tally, exact_fields
from .tally_states import STATES


@dataclass(frozen=True)
class LocalTally:
    """One holder's copy of a tally: which side it holds, its state, and the shared map."""

    side: str
    state: str
    tally: dict[str, Any]

    @property
    def uuid(self) -> str:
        return self.tally["uuid"]

    @property
    def partner_side(self) -> str:
        return other_side(self.side)

    @property
    def partner(self) -> ChipAddress:
        """Where the partner's messages go (its certificate must be present)."""
        cert = self.tally[self.partner_side]["cert"]
        if cert is None:
            raise Refusal("bad_state", f"tally {self.uuid} has no partner yet")
        return ChipAddress.from_map(cert["chad"])

    @property
    def cuid(self) -> str:
        """Our user, who sends this holder's messages (from our certificate)."""
        return self.tally[self.side]["cert"]["chad"]["cuid"]

    def to_map(self) -> dict[str, Any]:
        return {"side": self.side, "state": self.state, "tally": self.tally}

    @classmethod
    def from_map(cls, value: Any) -> LocalTally:
        exact_fields(value, "local tally", {"side", "state", "tally"})
        if value["side"] not in SIDES:
            raise Refusal("bad_field", f"local tally side must be one of {SIDES}")
        if value["state"] not in STATES:
            raise Refusal("bad_field", f"unknown tally state {value['state']!r}")
        check_tally(value["tally"])
        return cls(value["side"], value["state"], value["tally"])


def other_side(side: str) -> str:
    return FOIL if side == STOCK else STOCK


def to_partner(local: LocalTally, target: str, action: str, obj: dict[str, Any]) -> Send:
    """A message from our user to the tally partner (whose certificate must be present)."""
    return Send(local.partner, target, action, obj, from_cuid=local.cuid)
