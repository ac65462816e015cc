"""Chain messages and the checks both holders make of what a partner's message carries.

``protocol.chain`` (the public API) and its two roles, ``protocol.chain_foil`` and
``protocol.chain_stock``, build their messages here and validate chits through
:func:`known`: our copy of a chit, or a chit new to the chain once its issuer's signature
checks out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from . import chain_state as cs
from .chain_state import Chain
from .chit import check_chit, check_form
from .messages import Send
from .tally import LocalTally, Refusal, to_partner

UPD_BATCH = 100  # chits per upd or new message: under 0.6 MiB even with maximal memos and refs
CMDS = ("new", "ack", "nak", "upd", "req")
_CMD_FIELDS = {
    "new": {"chits"},
    "upd": {"chits", "conf"},
    "ack": {"index", "hash"},
    "nak": {"index", "hash"},
    "req": {"index"},
}


class Received(NamedTuple):
    chain: Chain
    messages: list[Send]
    adopted: list[dict[str, Any]]  # good chits first learned from this message


def good(local: LocalTally, chit: dict[str, Any]) -> Send:
    return to_partner(local, "chit", "good", chit)


def chain_message(chain: Chain, local: LocalTally, cmd: str, **fields: Any) -> Send:
    return to_partner(local, "chit", "chain", {"cmd": cmd, "tally": chain.tally, **fields})


def upd(chain: Chain, local: LocalTally, chits: Iterable[dict[str, Any]]) -> Send:
    return chain_message(chain, local, "upd", chits=list(chits), conf=chain.conf)


def ack(chain: Chain, local: LocalTally, index: int) -> Send:
    return chain_message(chain, local, "ack", index=index, hash=chain.hash_at(index))


def check_message(chain: Chain, cmd: str, obj: dict[str, Any]) -> None:
    expected = {"cmd", "tally", *_CMD_FIELDS[cmd]}
    if set(obj) != expected:
        raise Refusal("bad_field", f"chain {cmd} must have exactly the fields {sorted(expected)}")
    if obj["tally"] != chain.tally:
        raise Refusal("bad_field", f"chain.tally is {obj['tally']}, not {chain.tally}")
    lowest = {"index": 1 if cmd == "req" else 0, "conf": 0}
    for field, low in lowest.items():
        if field in obj:
            value = obj[field]
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise Refusal("bad_field", f"chain.{field} must be an integer from {low}")
    if "hash" in obj and (not isinstance(obj["hash"], bytes) or len(obj["hash"]) != 32):
        raise Refusal("bad_field", "chain.hash must be 32 bytes")
    if "chits" in obj:
        chits = obj["chits"]
        if not isinstance(chits, list) or not 1 <= len(chits) <= UPD_BATCH:
            raise Refusal("bad_field", f"chain.chits must be a list of 1 to {UPD_BATCH} chits")


def check_new(chain: Chain, chit: dict[str, Any]) -> None:
    if chit["tally"] != chain.tally:
        raise Refusal("bad_field", f"chit {chit['uuid']} is for tally {chit['tally']}")
    if cs.find(chain, chit["uuid"]) is not None:
        raise Refusal("bad_state", f"chit {chit['uuid']} is already in the chain")


def known(chain: Chain, chit: Any, local: LocalTally) -> dict[str, Any] | None:
    """Validate a chit from a chain message: our copy if we know it, else ``None`` once its
    issuer's signature checks out (the caller adopts it)."""
    ours = cs.find(chain, chit.get("uuid")) if isinstance(chit, dict) else None
    if ours is None:
        check_chit(chit, local.tally, signed=True)
        if chit["type"] == "lift":  # unsigned: only this holder's own decision links it
            raise Refusal(
                "lift_undecided",
                f"lift chit {chit['uuid']} is not good here yet: ask the lift's referee",
            )
        return None
    check_form(chit)
    if ours["hash"] != chit["hash"]:
        raise Refusal("conflict", f"chit {chit['uuid']} differs from our copy")
    return ours


def blocks_from(chain: Chain, first: int) -> list[dict[str, Any]]:
    """Up to ``UPD_BATCH`` linked blocks from index ``first``, those behind ``base`` from the
    ``history`` the caller read."""
    behind = [chain.linked_at(index)
              for index in range(first, min(first + UPD_BATCH, chain.base + 1))]
    start = max(first - chain.base - 1, 0)
    return behind + list(chain.chits[start : start + UPD_BATCH - len(behind)])
