"""What both users of a tally sign, how a side signs it, and block 0 of its chit chain.

Both users sign the canonical digest of the tally without its ``sign`` field
(:func:`core_digest`); once both signatures are present and valid that digest is block 0 of
the chit chain (:func:`chain_origin`). Kept apart from the negotiation (:mod:`protocol.tally`),
which signs and checks with these, because the chit chain (:mod:`protocol.chain`) starts from
the same signed digest.
"""

from __future__ import annotations

import copy
from typing import Any

from .codec import digest
from .errors import Refusal
from .keys import SigningKey, verify
from .tally_fields import FOIL, SIDES, STOCK
from .tally_local import LocalTally
from .tally_states import BINDING_STATES


def core_digest(tally: dict[str, Any]) -> bytes:
    """The digest both users sign: the canonical tally without its ``sign`` field."""
    return digest({key: value for key, value in tally.items() if key != "sign"})


def check_signature(tally: dict[str, Any], side: str) -> None:
    cert = tally[side]["cert"]
    signature = tally["sign"][side]
    if cert is None or signature is None:
        raise Refusal("bad_signature", f"tally {tally['uuid']} has no {side} signature")
    if tally["sign"]["hash"] != core_digest(tally):
        raise Refusal("bad_signature", f"tally {tally['uuid']}: sign.hash is not the tally digest")
    if not verify(cert["public"], signature, tally["sign"]["hash"]):
        raise Refusal("bad_signature", f"tally {tally['uuid']}: the {side} signature is invalid")


def signed(tally: dict[str, Any], side: str, key: SigningKey) -> dict[str, Any]:
    """A copy of ``tally`` signed for ``side`` by ``key``, which must be that side's user key."""
    if key.public != tally[side]["cert"]["public"]:
        raise Refusal("bad_key", f"the signing key is not the {side} user's key")
    copied = copy.deepcopy(tally)
    copied["sign"]["hash"] = core_digest(tally)
    copied["sign"][side] = key.sign(copied["sign"]["hash"])
    return copied


def unsigned(tally: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``tally`` with every signature cleared: a revision nobody has signed yet."""
    cleared = copy.deepcopy(tally)
    cleared["sign"] = {"hash": None, STOCK: None, FOIL: None}
    return cleared


def chain_origin(local: LocalTally) -> bytes:
    """Block 0 of the chit chain: the tally digest, once both signatures are present and valid."""
    if local.state not in BINDING_STATES:
        raise Refusal("bad_state", f"tally {local.uuid} is {local.state}, not signed by both")
    for side in SIDES:
        check_signature(local.tally, side)
    return local.tally["sign"]["hash"]
