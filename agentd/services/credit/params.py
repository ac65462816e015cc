"""RPC parameter checks and result shapes shared by the credit services."""

from __future__ import annotations

import os
import uuid as uuidlib
from typing import Any

from agentd.rpc import invalid_params
from protocol import route
from protocol import tally_fields as tf
from protocol import tally_states as ts
from protocol.codec import unpack
from protocol.keys import CUID_RULE, ChipAddress, b64u, valid_cuid
from protocol.tally_local import other_side
from store.credit import REQUESTED


def tally_summary(row: Any) -> dict:
    """A tally as ``tally.list`` shows it, from its row, or from the row of a request of one
    (``store.credit.request_row``)."""
    if row["state"] == REQUESTED:
        return _requested(row)
    body = unpack(row["body"])
    side = row["side"]
    partner_side = other_side(side)
    cert = body[partner_side]["cert"]
    head = row["chain_head"]
    limit, partner_limit = body[side]["terms"]["limit"], body[partner_side]["terms"]["limit"]
    return {
        "tally": row["uuid"], "cuid": row["cuid"], "side": side, "state": row["state"],
        "partner": None if cert is None else str(ChipAddress.from_map(cert["chad"])),
        "balance": row["balance"], "limit": limit,
        "partner_limit": partner_limit, "version": body["version"],
        "memo": body["memo"],
        "chain": {"index": row["chain_length"], "hash": None if head is None else b64u(head),
                  "confirmed": row["chain_conf"], "pending": row["chain_pending"],
                  "missing": _missing(row)},
        "error": _standing(row),
        "capacity": _capacity(row, limit, partner_limit),
        "reserved": {"in": row["lift_in"], "out": row["lift_out"]},
    }  # fmt: skip


def _requested(row: Any) -> dict:
    """A tally the user presented the ticket of, whose offer has not come: its partner (the
    inviter) and nothing else yet. What the offer brings (side, limits, version, memo) is
    null; what the tally would carry or hold (balance, chain, capacity, reserved) is 0."""
    return {
        "tally": row["uuid"], "cuid": row["cuid"], "side": None, "state": row["state"],
        "partner": row["partner"], "balance": 0, "limit": None, "partner_limit": None,
        "version": None, "memo": None,
        "chain": {"index": 0, "hash": None, "confirmed": 0, "pending": 0, "missing": 0},
        "error": None, "capacity": {"pay": 0, "receive": 0}, "reserved": {"in": 0, "out": 0},
    }  # fmt: skip


def _missing(row: Any) -> int:
    """Blocks the partner confirmed that this holder lacks and asks for (restored from a
    backup): past its head on the stock's side; past its ``conf`` on the foil's, whose own
    blocks after it give way to the stock's (``protocol.chain``)."""
    held = row["chain_length"] if row["side"] == "stock" else row["chain_conf"]
    return max(row["chain_ahead"] - held, 0)


def _capacity(row: Any, limit: int, partner_limit: int) -> dict[str, int]:
    """What the tally can still carry each way: within the limits while it is open, only
    toward a zero balance while it closes, nothing otherwise (not open yet, or closed)."""
    balance, state = row["balance"], row["state"]
    if state not in (ts.OPEN, ts.C_OPEN):
        return {"pay": 0, "receive": 0}
    kind = route.hop_kind(route.KINDS[0], state)
    pay = route.hop_capacity(kind, balance=balance, partner_limit=partner_limit,
                             lift_out=row["lift_out"])
    receive = route.receive_capacity(kind, balance=balance, limit=limit, lift_in=row["lift_in"])
    return {"pay": pay, "receive": receive}


def _standing(row: Any) -> str | None:
    """The tally's error as shown: the partner's last refusal, but for a refusal of a chit's
    ``good`` or a chain message once the chain is settled again (``protocol.chain.settled``:
    every chit ordered and confirmed, and no block the partner confirmed missing here: the
    repair overcame it). A chain that lacks blocks is not: the refusal may be what keeps it
    from catching up."""
    error = row["error"]
    if error is not None and error.startswith(("chit good:", "chit chain:")) and (
            row["chain_pending"] == 0 and row["chain_conf"] == row["chain_length"]
            and row["chain_ahead"] <= row["chain_conf"]):
        return None
    return error


def new_uuids(count: int) -> list[str]:
    """``count`` random (version 4) uuids from one read of the system's randomness."""
    random = os.urandom(16 * count)
    return [str(uuidlib.UUID(bytes=random[at : at + 16], version=4))
            for at in range(0, 16 * count, 16)]


def object_uuid(obj: Any, field: str) -> str:
    value = obj.get(field) if isinstance(obj, dict) else None
    tf.check_uuid(value, f"object.{field}")
    return value


def param_cuid(value: Any) -> str:
    if not valid_cuid(value):
        raise invalid_params(f"cuid {value!r} must be {CUID_RULE}")
    return value


def param_amount(value: Any, name: str, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= tf.MAX_UNITS:
        raise invalid_params(f"{name} must be an integer number of milliCHIPs from {low} to "
                             f"{tf.MAX_UNITS}, not {value!r}")
    return value


def param_memo(value: Any) -> str:
    if not isinstance(value, str) or len(value) > tf.MAX_MEMO:
        given = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
        raise invalid_params(f"memo must be text of at most {tf.MAX_MEMO} characters, not "
                             f"{given}")
    return value


