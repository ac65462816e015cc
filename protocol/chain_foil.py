"""The foil holder's side of chain consensus: it orders.

It links every good chit it learns of at the end of its chain and never reorders a block the
stock confirmed. It takes blocks from the stock only when it lost them: restored from a
backup, it contradicts the stock's confirmed blocks (or asks, once a start), and the stock
sends them (``upd``, stock to foil). The foil then unlinks its own blocks the stock never
confirmed, links the stock's in their place (checking every chit it did not hold, as it
checks any: the issuer's signature, ours or the partner's), and, once it holds every block
the stock confirmed, links the unlinked chits again after them. While it catches up it links
nothing new: its new chits wait in ``pending`` with the unlinked ones (:func:`catching_up`).
See ``protocol.chain``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import chain_state as cs
from .chain_messages import (
    UPD_BATCH,
    Received,
    ack,
    blocks_from,
    chain_message,
    good,
    known,
    req,
    upd,
)
from .chain_state import Chain, block_hash
from .chit_fields import check_form
from .errors import Refusal
from .messages import Send
from .tally_local import LocalTally


def catching_up(chain: Chain) -> bool:
    """Whether a foil lacks blocks the stock confirmed (``ahead``: the highest ``conf`` the
    stock stated), or holds good chits unlinked: it took back blocks it lost, and links them
    once it holds every block the stock confirmed."""
    return bool(chain.pending or chain.spilled or chain.conf < chain.ahead)


def foil_add(chain: Chain, chit: dict[str, Any], local: LocalTally) -> tuple[Chain, list[Send]]:
    """``protocol.chain.add`` on the foil's side."""
    if catching_up(chain):
        return cs.park(chain, chit, chain.pending), []
    chain, linked = cs.append(chain, chit)
    if chit["type"] == "lift":
        return chain, []
    ours = chit["by"] == chain.side
    return chain, [good(local, linked) if ours else upd(chain, local, [linked])]


def foil_new(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    """Order the chits the stock holds without a block: its own, or ours it unlinked (a
    rollback) that we lost. Those we hold go back with their blocks."""
    held: dict[str, dict[str, Any]] = {}  # our copies
    new: dict[str, dict[str, Any]] = {}  # the chits we link now, in message order
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
        else:
            new[chit["uuid"]] = {**chit, "chain": None}
    if catching_up(chain):
        for chit in new.values():
            chain = cs.park(chain, chit, chain.pending)
        return Received(chain, [req(chain, local, chain.conf + 1)], list(new.values()))
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


def _check_run(chits: list[Any]) -> None:
    """The stock's blocks come in a run: each follows the one before and hashes right."""
    prev = None
    for chit in chits:
        block = chit.get("chain") if isinstance(chit, dict) else None
        if not isinstance(block, dict):
            raise Refusal("bad_field", "every chit of the stock's upd has its chain block")
        check_form(chit)
        if block["hash"] != block_hash(block["index"], block["prev"], chit["hash"]):
            raise Refusal("bad_field", f"chit {chit['uuid']}: chain.hash is not its block hash")
        if prev is not None and (block["index"], block["prev"]) != (
                prev["index"] + 1, prev["hash"]):
            raise Refusal("bad_field", "the stock's upd must be a run of blocks, each "
                          "following the one before")
        prev = block


def foil_upd(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    """The stock's blocks, which it holds (``conf``: the last the foil confirmed to it, kept
    in ``ahead`` when it is the highest yet). Those we hold confirm them; the first that
    differs is where we lost blocks: ours from there, never confirmed by the stock, are
    unlinked and the stock's linked instead. While we lack some the stock confirmed we ask
    for them from our ``conf`` (``req``: after a run that took us further, or one that
    starts past what we share with the stock; a repair asks again)."""
    chits = obj["chits"]
    _check_run(chits)
    first = chits[0]["chain"]
    at = first["index"] - 1
    if at > chain.length or chain.hash_at(at) != first["prev"]:
        if at <= chain.conf:
            raise Refusal("conflict", f"the stock's block {at + 1} does not follow block {at},"
                          " which it confirmed")
        asked = chain.conf < chain.ahead  # a request is on its way (a late run, a copy)
        chain = replace(chain, ahead=max(chain.ahead, obj["conf"], at))
        return Received(chain, [] if asked else [req(chain, local, chain.conf + 1)], [])
    conf = chain.conf
    matched = at
    for chit in chits:
        index = chit["chain"]["index"]
        if index > chain.length or chain.linked_at(index)["chain"] != chit["chain"]:
            break
        matched = index
    adopted = []
    rest = chits[matched - at:]
    if rest:
        if matched < chain.conf:
            raise Refusal("conflict", f"the stock's block {matched + 1} contradicts ours, "
                          "which it confirmed")
        if matched < chain.length:
            chain = cs.rollback(chain, matched)
        for chit in rest:
            ours = known(chain, chit, local)
            if ours is None:
                adopted.append(chit)
            elif cs.linked(chain, chit["uuid"]) is not None:
                raise Refusal("conflict", f"chit {chit['uuid']} is already linked elsewhere")
            else:
                chit = {**ours, "chain": chit["chain"]}
            chain = cs.link(chain, chit, pending=cs.unparked(chain, chit["uuid"]))
    last = chits[-1]["chain"]["index"]
    chain = replace(chain, conf=max(chain.conf, last), ahead=max(chain.ahead, obj["conf"]))
    if chain.conf < chain.ahead:  # more to take back: ask, unless this was a copy
        return Received(chain, [req(chain, local, chain.conf + 1)] if chain.conf > conf
                        else [], adopted)
    if not catching_up(chain):
        return Received(chain, [], adopted)
    return _relink(chain, local, adopted)


def _relink(chain: Chain, local: LocalTally, adopted: list[dict[str, Any]]) -> Received:
    """Caught up: link the chits that waited (at the end, in the order they waited) and send
    their blocks; ask again at once if more are spilled (read back a batch at a time)."""
    chain, linked = cs.append_all(chain, chain.pending)
    chain = replace(chain, pending=())
    messages = [upd(chain, local, linked[first : first + UPD_BATCH])
                for first in range(0, len(linked), UPD_BATCH)]
    if chain.spilled:
        messages.append(req(chain, local, chain.conf + 1))
    return Received(chain, messages, adopted)


def foil_resync(chain: Chain, local: LocalTally) -> list[Send]:
    """Blocks the stock has not confirmed; while catching up, the request for what we lost."""
    if catching_up(chain):
        return [req(chain, local, chain.conf + 1)]
    unconfirmed = blocks_from(chain, chain.conf + 1)
    return [upd(chain, local, unconfirmed)] if unconfirmed else []


HANDLERS = {"new": foil_new, "ack": foil_ack, "req": foil_req, "upd": foil_upd}
