"""The stock holder's side of chain consensus: it conforms to the foil's order.

It links the foil's blocks where the foil put them, parks a block beyond a gap and asks for
the gap (``req``), and rolls back the blocks its foil has not confirmed when the foil's order
contradicts them; a contradiction of a confirmed block is refused as ``conflict``. See
``protocol.chain``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import chain_state as cs
from .chain_messages import Received, ack, chain_message, good, known
from .chain_state import Chain, block_hash
from .messages import Send
from .tally import FOIL, LocalTally, Refusal


def _contradicts(chain: Chain, block: dict[str, Any]) -> bool:
    """Whether the foil's block disagrees with what this stock holder has linked."""
    index = block["index"]
    if index <= chain.length:
        return chain.linked_at(index)["chain"] != block
    return index == chain.length + 1 and block["prev"] != chain.head


def take(chain: Chain, chit: dict[str, Any]) -> Chain:
    """Keep a good chit (with the foil's block, if it has one) and link what is contiguous."""
    block = chit["chain"]
    if block is not None:
        if block["hash"] != block_hash(block["index"], block["prev"], chit["hash"]):
            raise Refusal("bad_field", f"chit {chit['uuid']}: chain.hash is not its block hash")
        if _contradicts(chain, block):
            if block["index"] <= chain.conf:
                raise Refusal("conflict", f"the foil contradicts confirmed block {block['index']}")
            chain = cs.rollback(chain)
            if _contradicts(chain, block):
                raise Refusal("conflict", f"block {block['index']} does not follow confirmed ones")
    linked = cs.linked(chain, chit["uuid"])
    if linked is not None:
        if block is None or linked["chain"] == block:
            return chain
        raise Refusal("conflict", f"chit {chit['uuid']} is already linked elsewhere")
    others = cs.unparked(chain, chit["uuid"])
    if _follows(chain, block) and chain.length + 1 not in chain.hints.claims:
        chain = cs.link(chain, chit, pending=others)  # the usual case: no parked rival
    else:
        chain = cs.park(chain, chit, others)
    if chain.length + 1 in chain.hints.claims:  # a parked block may follow now
        chain = cs.link_parked(chain)
    return chain


def _follows(chain: Chain, block: dict[str, Any] | None) -> bool:
    return block is not None and block["index"] == chain.length + 1 and block["prev"] == chain.head


def stock_reply(chain: Chain, local: LocalTally, *, repair: bool = False) -> list[Send]:
    """Ack blocks the foil has not confirmed; ask for the gap before a foil chit we hold. A
    foil lift chit without a block is not a gap: the foil sends its ``upd`` when it applies
    the decision (so only a ``repair`` asks for it)."""
    messages = [ack(chain, local, chain.length)] if chain.length > chain.conf else []
    if chain.hints.foreign and any(
        chit["by"] == FOIL and (repair or chit["type"] != "lift" or chit["chain"] is not None)
        for chit in chain.pending
    ):
        messages.append(chain_message(chain, local, "req", index=chain.length + 1))
    return messages


def stock_add(chain: Chain, chit: dict[str, Any], local: LocalTally) -> tuple[Chain, list[Send]]:
    """``protocol.chain.add`` on the stock's side."""
    ours, lift = chit["by"] == chain.side, chit["type"] == "lift"
    if lift:
        return cs.park(chain, chit, chain.pending), []
    if ours:
        return cs.park(chain, chit, chain.pending), [good(local, chit)]
    chain = take(chain, chit)
    return chain, stock_reply(chain, local)


def stock_upd(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    """Take the foil's blocks in message order. The usual upd is a run of blocks that follow
    the chain's head one after another: those are linked in one copy of the chain and of
    ``pending`` (not one per chit: ``pending`` holds thousands when both users outpay the
    foil's ordering), with the same result as taking them one by one."""
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
    chain = replace(chain, conf=max(chain.conf, min(obj["conf"], chain.length)))
    return Received(chain, stock_reply(chain, local), adopted)


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
    index = obj["index"]
    if index <= chain.length and chain.hash_at(index) == obj["hash"]:
        return Received(replace(chain, conf=max(chain.conf, index)), [], [])
    return stock_nak(chain, obj, local)


def stock_nak(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    chain = cs.rollback(chain)
    return Received(chain, [chain_message(chain, local, "req", index=chain.conf + 1)], [])


HANDLERS = {"upd": stock_upd, "ack": stock_ack, "nak": stock_nak}
