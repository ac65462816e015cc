"""The stock holder's side of chain consensus: it conforms to the foil's order.

It links the foil's blocks where the foil put them, parks a block beyond a gap and asks for
the gap (``req``), and rolls back the blocks its foil has not confirmed when the foil's order
contradicts them. A block it confirmed is never rolled back: a foil that contradicts one has
lost it (restored from a backup made before it), so the stock keeps that foil's chits without
their blocks and sends it its confirmed block (an ``upd`` of it); the foil asks for the blocks
it lost from there (``req``), and the stock answers with its confirmed blocks
(:func:`stock_req`). See ``protocol.chain``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import chain_state as cs
from .chain_messages import (
    Received,
    ack,
    blocks_from,
    chain_message,
    good,
    known,
    upd,
)
from .chain_state import Chain, block_hash
from .errors import Refusal
from .messages import Send
from .tally_fields import FOIL
from .tally_local import LocalTally

# Blocks of the foil's chits beyond a gap a stock keeps with their place (parked, in memory
# and in their rows) at most: one more beyond a gap waits as a chit without its block, as the
# stock's own chits wait for the foil's order, so it may be spilled (``chain_state.trim``) and
# the foil sends the block again once the gap is filled (its answer to our ``req``, or to our
# ``new``). Under load a foil's blocks often overtake its earlier ones (``bench chits``: a
# few hundred of its own chits at 4 calls in flight a side, thousands at 16, and thousands
# of its order of the stock's): with 128, the repairs that asked for the rest took 20,000
# chits minutes to link instead of ~3 s (512 was enough at 4 calls in flight, not at 16).
# The blocks of the stock's own chits are all parked: each is a chit our user signed, so
# the foil cannot make them more. ~1.5 KB a chit: ~6 MB a tally at most.
PARKED_BLOCKS = 4096


class Lost(Exception):
    """The foil's block contradicts a block the foil confirmed: the foil lost it."""


def _contradicts(chain: Chain, block: dict[str, Any]) -> bool:
    """Whether the foil's block disagrees with what this stock holder has linked."""
    index = block["index"]
    if index <= chain.length:
        return chain.linked_at(index)["chain"] != block
    return index == chain.length + 1 and block["prev"] != chain.head


def take(chain: Chain, chit: dict[str, Any]) -> Chain:
    """Keep a good chit (with the foil's block, if it has one) and link what is contiguous.
    Raises :class:`Lost` for a block that contradicts one the foil confirmed, or puts a chit
    elsewhere than in one."""
    block = chit["chain"]
    if block is not None:
        if block["hash"] != block_hash(block["index"], block["prev"], chit["hash"]):
            raise Refusal("bad_field", f"chit {chit['uuid']}: chain.hash is not its block hash")
        if _contradicts(chain, block):
            if block["index"] <= chain.conf:
                raise Lost
            chain = cs.rollback(chain)
            if _contradicts(chain, block):  # it does not follow the last confirmed block
                if chain.conf:
                    raise Lost
                raise Refusal("conflict", f"block {block['index']} does not follow the origin")
    linked = cs.linked(chain, chit["uuid"])
    if linked is not None:
        if block is None or linked["chain"] == block:
            return chain
        if linked["chain"]["index"] <= chain.conf:  # the foil lost where it put it
            raise Lost
        return take(cs.rollback(chain), chit)  # it moved a block it never confirmed
    others = cs.unparked(chain, chit["uuid"])
    if _follows(chain, block) and chain.length + 1 not in chain.hints.claims:
        chain = cs.link(chain, chit, pending=others)  # the usual case: no parked rival
    elif (block is not None and chit["by"] != chain.side and block["index"] > chain.length + 1
          and sum(parked["chain"] is not None and parked["by"] != chain.side
                  for parked in others) >= PARKED_BLOCKS):
        chain = cs.park(chain, {**chit, "chain": None}, others)  # a foil's flood beyond a gap
    else:
        chain = cs.park(chain, chit, others)
    if chain.length + 1 in chain.hints.claims:  # a parked block may follow now
        chain = cs.link_parked(chain)
    return chain


def lost(chain: Chain, chits: list[Any], local: LocalTally) -> Received:
    """Answer a foil message whose blocks contradict blocks the foil confirmed: nothing it
    links counts, but its chits we do not hold are good (signed, owed), so they wait in
    ``pending`` without their blocks; the foil is sent our block at ``conf``, from which it
    asks for what it lost (``req``). ``chain`` is the one the message found."""
    chain.forget_other_versions()  # the links made on the way are not kept
    adopted = []
    for chit in chits:
        if known(chain, chit, local) is None:
            chain = cs.park(chain, {**chit, "chain": None}, chain.pending)
            adopted.append(chit)
    return Received(chain, [upd(chain, local, [chain.linked_at(chain.conf)])], adopted)


def _follows(chain: Chain, block: dict[str, Any] | None) -> bool:
    return block is not None and block["index"] == chain.length + 1 and block["prev"] == chain.head


def stock_reply(chain: Chain, local: LocalTally, *, repair: bool = False,
                foil_conf: int | None = None, moved: bool = True) -> list[Send]:
    """Ack blocks the foil has not confirmed (by our ``conf``, or by the ``conf`` of its
    ``upd``: a foil restored from a backup lost our acks); ask for the gap before a foil chit
    we hold, or for the blocks up to the foil's ``conf`` we lack (``ahead``: restored from a
    backup, we lost them), but after an ``upd`` that linked nothing (a copy: the request
    that brought the first one is answered already; a repair asks again). A foil lift chit
    without a block is not a gap: the foil sends its ``upd`` when it applies the decision
    (so only a ``repair`` asks for it)."""
    told = chain.conf if foil_conf is None else min(chain.conf, foil_conf)
    messages = [ack(chain, local, chain.length)] if chain.length > told else []
    behind = chain.ahead > chain.length and (moved or repair)
    if behind or (chain.hints.foreign and any(
        chit["by"] == FOIL and (repair or chit["type"] != "lift" or chit["chain"] is not None)
        for chit in chain.pending
    )):
        messages.append(chain_message(chain, local, "req", index=chain.length + 1))
    return messages


def stock_add(chain: Chain, chit: dict[str, Any], local: LocalTally) -> tuple[Chain, list[Send]]:
    """``protocol.chain.add`` on the stock's side."""
    ours, lift = chit["by"] == chain.side, chit["type"] == "lift"
    if lift:
        return cs.park(chain, chit, chain.pending), []
    if ours:
        return cs.park(chain, chit, chain.pending), [good(local, chit)]
    try:
        taken = take(chain, chit)
    except Lost:
        found = lost(chain, [chit], local)
        return found.chain, found.messages
    return taken, stock_reply(taken, local)


def stock_upd(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    """Take the foil's blocks in message order (or :func:`lost`). The usual upd is a run of
    blocks that follow the chain's head one after another: those are linked in one copy of
    the chain and of ``pending`` (not one per chit: ``pending`` holds thousands when both
    users outpay the foil's ordering), with the same result as taking them one by one."""
    try:
        return _link_upd(chain, obj, local)
    except Lost:
        return lost(chain, obj["chits"], local)


def _link_upd(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    length = chain.length
    adopted = []
    run: dict[str, dict[str, Any]] = {}  # uuid -> chit with its block, following the head
    for chit in obj["chits"]:
        chit_uuid = chit.get("uuid") if isinstance(chit, dict) else None
        if isinstance(chit_uuid, str) and chit_uuid in run:  # the same chit again
            chain, run = cs.link_run(chain, run), {}
        ours = known(chain, chit, local)
        if chit["chain"] is None:
            raise Refusal("bad_field", f"chit {chit['uuid']} in an upd has no chain block")
        if ours is None:
            adopted.append(chit)
        else:  # keep our copy (and its signature); take only the foil's block
            chit = {**ours, "chain": chit["chain"]}
        if _extends(chain, run, chit):
            run[chit["uuid"]] = chit
            continue
        chain, run = cs.link_run(chain, run), {}
        chain = take(chain, chit)
    chain = cs.link_run(chain, run)
    chain = replace(chain, conf=max(chain.conf, min(obj["conf"], shown(chain, obj["chits"]))),
                    ahead=max(chain.ahead, obj["conf"]))
    return Received(chain, stock_reply(chain, local, foil_conf=obj["conf"],
                                       moved=chain.length > length), adopted)


def shown(chain: Chain, chits: list[dict[str, Any]]) -> int:
    """The highest index at which the foil's upd ``chits`` show a block we hold as it is (a
    block's hash pins every block before it): how far the upd's ``conf`` confirms our chain.
    Not past it: a late copy of an order the foil has changed since (restored from a backup,
    it took blocks back from us) may have put blocks in our chain that the foil's ``conf``
    does not cover."""
    return max((chit["chain"]["index"] for chit in chits if chit["chain"]["index"] <= chain.length
                and chain.hash_at(chit["chain"]["index"]) == chit["chain"]["hash"]), default=0)


def _extends(chain: Chain, run: dict[str, dict[str, Any]], chit: dict[str, Any]) -> bool:
    """Whether ``chit``'s block follows ``chain`` with ``run`` linked after it, in the case
    :func:`take` would simply link it: a block that hashes right, on an index no parked
    block claims, for a chit not linked yet."""
    block = chit["chain"]
    index = chain.length + len(run) + 1
    prev = next(reversed(run.values()))["chain"]["hash"] if run else chain.head
    return (block["index"] == index and block["prev"] == prev
            and index not in chain.hints.claims
            and block["hash"] == block_hash(index, prev, chit["hash"])
            and cs.linked(chain, chit["uuid"]) is None)


def stock_ack(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    """The foil holds block ``index``: confirmed; one past our head tells us it holds blocks
    we lack (``ahead``); one that does not match, that we must conform (:func:`stock_nak`)."""
    index = obj["index"]
    if index <= chain.length and chain.hash_at(index) == obj["hash"]:
        return Received(replace(chain, conf=max(chain.conf, index)), [], [])
    if index > chain.length:
        chain = replace(chain, ahead=max(chain.ahead, index))
    return stock_nak(chain, obj, local)


def stock_nak(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    """The foil's chain does not hold our block at ``index``: roll back what it never
    confirmed and ask for its blocks after ``conf``. Below ``conf`` (its head is short of a
    block it confirmed) it lost blocks: restored from a backup, its request for them lost on
    the way. It is sent our block at ``conf``, as :func:`lost` does, from which it asks."""
    if obj["index"] < chain.conf:
        return Received(chain, [upd(chain, local, [chain.linked_at(chain.conf)])], [])
    chain = cs.rollback(chain)
    return Received(chain, [chain_message(chain, local, "req", index=chain.conf + 1)], [])


def stock_req(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    """The foil asks for the blocks it confirmed from ``index`` on (it lost them, or checks
    it did not, as a node does once a start): up to ``UPD_BATCH`` of them, none after
    ``conf``; past ``conf``, the block at ``conf`` alone, which tells the foil it holds them
    all (its ``upd`` names ``conf``). The blocks after ``conf`` are not the foil's to take
    back: it may order their chits anew, and the stock conforms. A stock whose foil confirmed
    nothing answers nothing.

    The foil asks from its ``conf`` + 1: a ``conf`` past our head says we lost blocks we
    confirmed (restored from a backup, the foil's answer to our probe lost with its own
    restore), and we ask for them, unless we knew (a request is on its way)."""
    told = obj["index"] - 1
    knew = max(chain.ahead, chain.length)
    chain = replace(chain, ahead=max(chain.ahead, told))
    blocks = blocks_from(chain, obj["index"], chain.conf)
    if not blocks and chain.conf:
        blocks = [chain.linked_at(chain.conf)]
    messages = [upd(chain, local, blocks)] if blocks else []
    if told > knew:
        messages.append(chain_message(chain, local, "req", index=chain.length + 1))
    return Received(chain, messages, [])


HANDLERS = {"upd": stock_upd, "ack": stock_ack, "nak": stock_nak, "req": stock_req}
