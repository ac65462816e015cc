"""Chain messages and the checks both holders make of what a partner's message carries.

``protocol.chain`` (the public API) and its two roles, ``protocol.chain_foil`` and
``protocol.chain_stock``, build their messages here and validate chits through
:func:`known`: our copy of a chit, or a chit new to the chain once its issuer's signature
checks out. A chit new to the chain may be our own user's (signed with our user's key: a
node restored from a backup lost it, its partner still holds it): :func:`own_good` is the
transition that takes it back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from . import chain_state as cs
from .chain_state import Chain
from .chit_fields import check_chit, check_form
from .chit_local import LocalChit
from .chit_states import L_GOOD, L_PEND, L_VOID
from .errors import Refusal
from .messages import Send
from .tally_local import LocalTally, to_partner

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


def req(chain: Chain, local: LocalTally, index: int) -> Send:
    return chain_message(chain, local, "req", index=index)


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
    issuer's signature checks out (the caller adopts it: the partner's chit, or our own
    user's that a restored backup lost, :func:`own_good`)."""
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


def blocks_from(chain: Chain, first: int, last: int | None = None) -> list[dict[str, Any]]:
    """Up to ``UPD_BATCH`` linked blocks from index ``first`` (to ``last`` at most), those
    behind ``base`` from the ``history`` the caller read."""
    end = min(first + UPD_BATCH, chain.length + 1 if last is None else last + 1)
    behind = [chain.linked_at(index) for index in range(first, min(end, chain.base + 1))]
    start = max(first - chain.base - 1, 0)
    return behind + list(chain.chits[start : start + max(end - first - len(behind), 0)])


def own_good(local_chit: LocalChit | None, chit: Any, local: LocalTally) -> LocalChit:
    """Our own user's chit that a partner's chain message carries and this holder does not
    hold good: its node was restored from a backup made before the chit. Our user's
    signature on it (checked against our certificate on the tally) is the proof it made the
    chit good, as nobody else holds that key: a payment, or the acceptance of the partner's
    invoice (``local_chit`` ``L.pend``; ``L.void`` if our user turned down, after the
    restore, an invoice it had accepted before). The partner cannot make one up. Our node
    checked the limit before our user signed, so none is checked here."""
    check_chit(chit, local.tally, signed=True)
    if chit["type"] == "lift":
        raise Refusal("lift_undecided", f"chit {chit['uuid']} is a lift chit: only its "
                      "lift's decision makes it good")
    if chit["by"] != local.side:
        raise Refusal("bad_field", f"chit.by of our user's chit must be our side, {local.side}")
    if local_chit is not None:
        if local_chit.chit["hash"] != chit["hash"]:
            raise Refusal("bad_field", f"chit.hash differs from our chit {local_chit.uuid}")
        if local_chit.state not in (L_PEND, L_VOID):
            raise Refusal("bad_state", f"chit {local_chit.uuid} is {local_chit.state} here")
    return LocalChit(L_GOOD, chit)
