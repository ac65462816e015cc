"""Shared test data for routes and lifts: users, open tallies built directly, lift records."""

from __future__ import annotations

from typing import Any

from protocol import lift as lf
from protocol import tally as t
from protocol import tally_fields as tf
from protocol import tally_states as ts
from protocol.keys import ChipAddress, SigningKey
from protocol.tally_local import LocalTally
from protocol.tally_sign import core_digest
from tests.test_credit_tally import NOW, Party, party

REFEREE = SigningKey(bytes([99]) * 32)  # the referee's agent key
REFEREE_ADDRESS = ChipAddress(agent=REFEREE.agent_id, host="127.0.0.1", port=65099)
USERS = [party(10 + n, f"user{n}") for n in range(8)]  # each on its own agent


def uuid_of(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


def user_map(user: Party) -> dict[str, Any]:
    return {"cuid": user.address.cuid, "agent": user.address.agent}


def open_tally(
    tally_uuid: str, stock: Party, foil: Party, *, stock_limit: int, foil_limit: int
) -> tuple[LocalTally, LocalTally]:
    """(stock's holding, foil's holding) of a tally both users signed, open."""
    tally = {
        "version": 1,
        "uuid": tally_uuid,
        "date": NOW,
        "memo": "",
        "agree": dict(t.DEFAULT_AGREEMENT),
        "stock": {"cert": stock.cert, "terms": {"limit": stock_limit}},
        "foil": {"cert": foil.cert, "terms": {"limit": foil_limit}},
        "sign": {"hash": None, "stock": None, "foil": None},
    }
    core = core_digest(tally)
    tally["sign"] = {"hash": core, "stock": stock.key.sign(core), "foil": foil.key.sign(core)}
    tf.check_tally(tally)
    return LocalTally(t.STOCK, ts.OPEN, tally), LocalTally(t.FOIL, ts.OPEN, tally)


def record(
    users: list[Party],
    tallies: list[str],
    *,
    units: int = 100,
    kind: str = "linear",
    lift_uuid: str = uuid_of(500),
    life_ms: int = 60_000,
    key: SigningKey | None = None,
) -> dict[str, Any]:
    """A lift record from ``users[0]`` along ``tallies`` (tallies[i] joins users i and i+1)."""
    path = [{**user_map(u), "tally": tally} for u, tally in zip(users, [*tallies, None],
                                                                  strict=True)]
    return lf.make_record(
        lift_uuid=lift_uuid, kind=kind, units=units, path=path, referee=REFEREE_ADDRESS,
        date_ms=NOW, life_ms=life_ms, memo="lift", key=key or users[0].key,
    )
