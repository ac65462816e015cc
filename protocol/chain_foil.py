"""The foil holder's side of chain consensus: it orders.

It links every good chit it learns of at the end of its chain and never reorders: the
stock's chits of a ``new`` as they come, and sends its blocks (``upd``) from any index the
stock asks for (``req``). See ``protocol.chain``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import chain_state as cs
from .chain_messages import Received, ack, blocks_from, chain_message, good, known, upd
from .chain_state import Chain
from .chit import check_form
from .messages import Send
from .tally import STOCK, LocalTally, Refusal


def foil_add(chain: Chain, chit: dict[str, Any], local: LocalTally) -> tuple[Chain, list[Send]]:
    """``protocol.chain.add`` on the foil's side."""
    chain, linked = cs.append(chain, chit)
    if chit["type"] == "lift":
        return chain, []
    ours = chit["by"] == chain.side
    return chain, [good(local, linked) if ours else upd(chain, local, [linked])]


def foil_new(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    held: dict[str, dict[str, Any]] = {}  # our linked copies
    new: dict[str, dict[str, Any]] = {}  # the stock's chits we link now, in message order
    for chit in obj["chits"]:
        chit_uuid = chit.get("uuid") if isinstance(chit, dict) else None
        first = new.get(chit_uuid) if isinstance(chit_uuid, str) else None
        if first is not None:  # the same chit twice in one message
            check_form(chit)
            if first["hash"] != chit["hash"]:
                raise Refusal("conflict", f"chit {chit_uuid} differs from our copy")
            continue
        ours = known(chain, chit, local)
        if ours is not None:
            held[ours["uuid"]] = ours
        elif chit["by"] != STOCK:
            raise Refusal("bad_field", "chain new carries the stock holder's own chits")
        else:
            new[chit["uuid"]] = chit
    chain, adopted = cs.append_all(chain, new.values())
    blocks = [*held.values(), *adopted]
    ordered = sorted(blocks, key=lambda chit: chit["chain"]["index"])
    return Received(chain, [upd(chain, local, ordered)], adopted)


def foil_ack(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    index = obj["index"]
    if index <= chain.length and chain.hash_at(index) == obj["hash"]:
        chain = replace(chain, conf=max(chain.conf, index))
        return Received(chain, [ack(chain, local, chain.conf)], [])
    at = min(index, chain.length)
    nak = chain_message(chain, local, "nak", index=at, hash=chain.hash_at(at))
    return Received(chain, [nak], [])


def foil_req(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    blocks = blocks_from(chain, obj["index"])
    return Received(chain, [upd(chain, local, blocks)] if blocks else [], [])


def foil_resync(chain: Chain, local: LocalTally) -> list[Send]:
    """The blocks the stock has not confirmed (those behind ``base`` from its ``history``)."""
    unconfirmed = blocks_from(chain, chain.conf + 1)
    return [upd(chain, local, unconfirmed)] if unconfirmed else []


HANDLERS = {"new": foil_new, "ack": foil_ack, "req": foil_req}
