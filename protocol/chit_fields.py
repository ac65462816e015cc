"""The chit map's fields, its digest and its checks (sans-IO).

A chit ``{tally, uuid, by, type, date, units, ref, memo, hash, sign, chain}`` is a pledge of
``units`` (integer milliCHIPs, never negative) by the side named in ``by``, the *issuer* or
payer. ``hash`` is the digest of the signed fields (everything but ``hash``, ``sign`` and
``chain``, :func:`chit_hash`); ``sign`` is the issuer user's Ed25519 signature of ``hash``,
checked against the ``public`` key in the issuer's certificate on the tally; ``chain`` is the
chit's block in the chit chain (``protocol.chain``), or nil until the foil holder orders it.
A lift chit (``type: lift``) names its lift in ``ref`` and carries no signature.

Every check refuses with ``Refusal("bad_field", …)`` naming the first bad field (a wrong
signature: ``bad_signature``). :mod:`protocol.chit`, :mod:`protocol.chit_lift` and
:mod:`protocol.chain` build and take chits through these checks.
"""

from __future__ import annotations

import functools
from typing import Any

from .codec import CodecError, canonical, digest
from .errors import Refusal
from .keys import verify
from .tally_fields import MAX_MEMO, MAX_UNITS, SIDES, check_uuid

TYPES = ("tran", "set", "lift")  # a transaction, a settings change, a share of a lift
MAX_REF = 1024  # bytes of canonical ``ref``: with MAX_MEMO, a chain batch stays within a frame

SIGNED_FIELDS = ("tally", "uuid", "by", "type", "date", "units", "ref", "memo")
_FIELDS = {*SIGNED_FIELDS, "hash", "sign", "chain"}


def chit_hash(chit: dict[str, Any]) -> bytes:
    return digest({field: chit[field] for field in SIGNED_FIELDS})


def bad_field(field: str, rule: str) -> Refusal:
    """The refusal of ``chit.<field>``, saying the ``rule`` it breaks."""
    return Refusal("bad_field", f"chit.{field} {rule}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_fields(chit: Any) -> None:
    """Field-by-field validation of everything but the value of ``hash``."""
    if not isinstance(chit, dict) or set(chit) != _FIELDS:
        raise Refusal("bad_field", f"a chit must be a map of exactly {sorted(_FIELDS)}")
    check_uuid(chit["tally"], "chit.tally")
    check_uuid(chit["uuid"], "chit.uuid")
    if chit["by"] not in SIDES:
        raise bad_field("by", f"must be one of {SIDES}")
    if chit["type"] not in TYPES:
        raise bad_field("type", f"must be one of {TYPES}")
    if not _is_int(chit["date"]) or chit["date"] < 0:
        raise bad_field("date", "must be a non-negative integer (ms since the epoch)")
    units = chit["units"]
    lowest, highest = (0, 0) if chit["type"] == "set" else (1, MAX_UNITS)
    if not _is_int(units) or not lowest <= units <= highest:
        raise bad_field(
            "units", f"of a {chit['type']} chit must be an integer in [{lowest}, {highest}]"
        )
    if not isinstance(chit["memo"], str) or len(chit["memo"]) > MAX_MEMO:
        raise bad_field("memo", f"must be text of at most {MAX_MEMO} characters")
    try:
        ref_size = len(canonical(chit["ref"]))
    except CodecError as exc:
        raise bad_field("ref", f"is not canonical data: {exc}") from exc
    if ref_size > MAX_REF:
        raise bad_field("ref", f"takes {ref_size} bytes; at most {MAX_REF} are allowed")
    if not isinstance(chit["hash"], bytes) or len(chit["hash"]) != 32:
        raise bad_field("hash", "must be 32 bytes")
    sign = chit["sign"]
    if sign is not None and (not isinstance(sign, bytes) or len(sign) != 64):
        raise bad_field("sign", "must be a 64-byte signature or nil")
    block = chit["chain"]
    if block is not None:
        if not isinstance(block, dict) or set(block) != {"index", "prev", "hash"}:
            raise bad_field("chain", "must be nil or a map of index, prev and hash")
        if not _is_int(block["index"]) or block["index"] < 1:
            raise bad_field("chain.index", "must be an integer from 1")
        for field in ("prev", "hash"):
            if not isinstance(block[field], bytes) or len(block[field]) != 32:
                raise bad_field(f"chain.{field}", "must be 32 bytes")


def check_form(chit: Any) -> None:
    """Refuse a malformed chit, naming the field, or one whose ``hash`` is not its digest."""
    check_fields(chit)
    if chit["hash"] != chit_hash(chit):
        raise bad_field("hash", "is not the digest of the chit's signed fields")


def check_chit(chit: Any, tally: dict[str, Any], *, signed: bool) -> None:
    """Refuse a malformed chit, one for another tally, or one whose signature is wrong: a
    good chit (``signed=True``) carries a valid signature by its issuer; an invoice, none."""
    check_form(chit)
    if chit["tally"] != tally["uuid"]:
        raise bad_field("tally", f"is {chit['tally']}, not {tally['uuid']}")
    if chit["type"] == "lift":
        _check_lift_fields(chit)
        return
    if not signed:
        if chit["sign"] is not None:
            raise bad_field("sign", "must be nil until the payer signs")
        return
    public = tally[chit["by"]]["cert"]["public"]
    if chit["sign"] is None or not _signature_valid(public, chit["sign"], chit["hash"]):
        raise Refusal("bad_signature", f"chit {chit['uuid']} lacks a valid {chit['by']} signature")


def _check_lift_fields(chit: dict[str, Any]) -> None:
    """A lift chit names its lift and carries no signature (the decision authorises it)."""
    ref = chit["ref"]
    if not isinstance(ref, dict) or set(ref) != {"lift"}:
        raise bad_field("ref", "of a lift chit must be a map {lift: <lift uuid>}")
    check_uuid(ref["lift"], "chit.ref.lift")
    if chit["sign"] is not None:
        raise bad_field("sign", "of a lift chit must be nil: the referee's decision authorises it")


@functools.lru_cache(maxsize=4096)
def _signature_valid(public: bytes, signature: bytes, chit_hash: bytes) -> bool:
    """Ed25519 verification, remembered: a chit that arrives in a chain message is checked
    there (``protocol.chain``) and again when the caller records it (``receive_good``)."""
    return verify(public, signature, chit_hash)
