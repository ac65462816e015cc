"""Chit-chain consensus: the two holders of a tally agree on one order of its good chits.

Block 0 is the tally digest. Block *i* is the *i*-th good chit, whose ``chain`` field is
``{index: i, prev: <hash of block i-1>, hash: digest({index, prev, chit: <chit hash>})}``, so
one hash pins the whole history. Each holder keeps a :class:`Chain`: the linked chits, the good
chits not linked yet (``pending``), and ``conf``, the highest index its partner confirmed,
which only ratchets forward.

**The foil holder orders; the stock holder conforms.** The foil links every good chit the
moment it learns of it, its own or the stock's, at the end of its chain, and never reorders.
The stock never proposes a position: its own chits wait in ``pending`` until the foil's order
names them, and the foil's chits are linked where the foil put them. So the only thing that can
disagree is delivery, not opinion, and any number of chits can be in flight from both sides at
once: there is nothing to collide. (MyCHIPs lets both sides propose indexes, so the stock has to
bump and re-hash its own chits whenever a foil chit lands first, which stalls with more than
one chit in flight.) Pending chits already count in the balance: a good chit is owed whether or
not it is ordered yet.

Messages are typed ``protocol.messages.Send`` events from our user to the tally partner
(``protocol.tally.to_partner``; hence the functions that send take the holder's
``LocalTally``): target ``chit``, action ``chain`` with object ``{cmd, tally, ...}``, plus
action ``good`` with the chit as object, which :func:`add` sends when our own chit becomes
good (the foil's carries its block; the stock's carries none):

=====  =============  ================================================================
cmd    direction      meaning
=====  =============  ================================================================
upd    foil -> stock  ``chits``: blocks of the foil's chain (with the chits), ``conf``
new    stock -> foil  ``chits``: the stock's good chits it has not seen ordered
ack    both ways      ``index, hash``: "my chain holds this block"; the foil answers
                      each ack that matches with an ack of its ``conf``
nak    foil -> stock  ``index, hash``: "your ack does not match my chain"
req    stock -> foil  ``index``: "send me your blocks from here"
=====  =============  ================================================================

Recovery: a stock that receives a block beyond a gap keeps it in ``pending`` with its
position and sends ``req``; blocks link as soon as they are contiguous, so reordering never
re-hashes anything. Lost messages are repaired by :func:`resync`, which the runtime calls now
and then (or when a channel to the partner opens): the foil re-sends blocks its partner has not
confirmed; the stock re-sends ``new`` for its unordered chits, ``ack`` for unconfirmed blocks
and ``req`` for gaps. A chit whose ``good`` message was lost thus still arrives, inside ``upd``
or ``new``, and :func:`receive` returns it in ``adopted`` for the caller to record
(``protocol.chit.receive_good``). A lift chit (unsigned) is never adopted: each holder
takes it with :func:`add` when it applies the lift's decision (nobody sends it ``good``: the
foil sends its block in a later ``upd``, from :func:`resync`, and the stock waits for it
without a ``req``), and a chain message carrying one this holder does not hold yet is refused
(``lift_undecided``) until then; the stock's ``resync`` asks for it again. If the stock's
chain ever contradicts the foil's (a restored backup, a bug), the stock unlinks everything
after its ``conf`` and asks again (``req``); a contradiction of a confirmed block is refused
as ``conflict`` and needs a human.

Cost: a chain with thousands of chits must stay cheap per chit, so the versions of one chain
share lookup hints instead of scanning it (``protocol.chain_state``, where the chain and
everything that changes it live). Make chains with the constructor (or ``from_map``) and
change them only through these two modules' functions.

Memory: a chain need not hold its whole history. :func:`trim` lets it forget the blocks up to
``base``, confirmed by the partner or not, and the newest of the unordered chits that pile up
in a stock's ``pending`` (``spilled``); the caller keeps them (the runtime's chit rows), so
a tally with a million chits costs a holder's cache only its recent blocks, even when the
partner never confirms a block or never orders a chit. Nothing a partner sends can make the
chain reach behind its ``base`` unasked: :func:`wanted` names every chit a chain message
carries that the chain does not hold, every block index behind ``base`` it names (a late
copy, a ``req`` from a partner restored from a backup) and the confirmed block when it is
behind ``base`` (an ack answers with it; a rollback goes back to it); the caller passes the
blocks behind ``base`` among them to :func:`receive` as ``history``, and puts the spilled
chits among them back in the chain first (:func:`unspill`). A chit the chain does not hold is
thus either one of ``history`` or new to the chain. A stock's rollback leaves the blocks
behind ``base`` spilled (but those the message names). The foil's repair reads what it
sends the same way (:func:`to_resend`): the unconfirmed blocks behind ``base``, as
``history``, or the spilled chits, held again.

Public API:

- ``Chain`` (frozen; ``to_map()/from_map()``, ``.length``, ``.head``, ``.hash_at(index)``).
- ``trim(chain, keep) -> Chain`` — the chain without blocks more than ``keep`` old and with
  at most about ``keep`` unordered chits; ``unspill(chain, chits)`` takes spilled ones back.
- ``wanted(chain, obj) -> Wanted`` — the chits a chain message names that the chain does not
  hold and the block indexes behind its ``base``, for the caller to read (``receive`` takes
  the blocks behind ``base``).
- ``to_resend(chain) -> Wanted`` — the blocks behind ``base`` that ``resync`` sends.
- ``start(local_tally) -> Chain`` — an empty chain on a tally both users signed.
- ``add(chain, chit, local_tally) -> (Chain, sends)`` — a chit just became good here (a foil's
  lift chit sends nothing: ``resync`` sends its block).
- ``add_many(chain, chits, local_tally) -> (Chain, sends)`` — several of our user's chits at once,
  sent ``UPD_BATCH`` to a message (``upd`` from the foil, ``new`` from the stock) instead of
  one ``good`` each; the partner treats them exactly as it would the ``good`` messages.
- ``receive(chain, obj, local_tally, history) -> Received(chain, messages, adopted)`` — a
  ``chain`` message's object; ``messages`` are ``Send`` events.
- ``resync(chain, local_tally, history) -> sends`` — what to (re)send so lost messages are
  repaired; ``history``: the blocks ``to_resend`` names.
- ``balance(chain)``, ``settled(chain)``, ``block_hash(index, prev, chit_hash)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, NamedTuple

from . import chain_state as cs
from .chain_state import Chain, balance, block_hash, settled, trim, unspill
from .chit import check_chit, check_form
from .messages import Send
from .tally import FOIL, STOCK, LocalTally, Refusal, chain_origin, to_partner

UPD_BATCH = 100  # chits per upd or new message: under 0.6 MiB even with maximal memos and refs
CMDS = ("new", "ack", "nak", "upd", "req")
_CMD_FIELDS = {
    "new": {"chits"},
    "upd": {"chits", "conf"},
    "ack": {"index", "hash"},
    "nak": {"index", "hash"},
    "req": {"index"},
}


class Wanted(NamedTuple):
    """What a chain message names that a chain does not hold (:func:`wanted`), or what a
    repair sends that it does not hold (:func:`to_resend`)."""

    uuids: frozenset[str]
    indexes: frozenset[int]
    spilled: int = 0  # how many of the spilled chits to hold again, the oldest first


NOTHING = Wanted(frozenset(), frozenset())


class Received(NamedTuple):
    chain: Chain
    messages: list[Send]
    adopted: list[dict[str, Any]]  # good chits first learned from this message


def start(local: LocalTally) -> Chain:
    return Chain(tally=local.uuid, side=local.side, origin=chain_origin(local))


def wanted(chain: Chain, obj: Any) -> Wanted:
    """What the chain message ``obj`` names that ``chain`` does not hold: the chits it does
    not hold, by uuid (each one linked behind ``base``, or one the caller knows otherwise, or
    new), and blocks behind ``base``, by index. The caller reads them and passes the linked
    ones behind ``base`` to :func:`receive` as ``history``, so a chit trimmed away is never
    taken for a new one."""
    if not isinstance(obj, dict):
        return NOTHING
    uuids, indexes = set(), set()
    if 0 < chain.conf < chain.base:  # an ack echoes it; a rollback goes back to it
        indexes.add(chain.conf)
    index = obj.get("index")
    if chain.base and isinstance(index, int) and not isinstance(index, bool):
        if obj.get("cmd") == "req":
            indexes.update(range(max(index, 1), min(index + UPD_BATCH, chain.base + 1)))
        elif 0 < index <= chain.base:
            indexes.add(index)
    chits = obj.get("chits")
    if not isinstance(chits, list) or len(chits) > UPD_BATCH:  # receive() refuses it
        chits = []
    for chit in chits:
        if not isinstance(chit, dict):
            continue
        if isinstance(chit.get("uuid"), str) and cs.find(chain, chit["uuid"]) is None:
            uuids.add(chit["uuid"])
        block = chit.get("chain")
        at = block.get("index") if isinstance(block, dict) else None
        if isinstance(at, int) and not isinstance(at, bool) and 0 < at <= chain.base:
            indexes.add(at)
    return Wanted(frozenset(uuids), frozenset(indexes))


def to_resend(chain: Chain) -> Wanted:
    """What :func:`resync` sends that the chain does not hold, for the caller to read: a
    foil's unconfirmed blocks behind ``base`` (passed as ``history``), a stock's spilled
    chits (held again: :func:`unspill`), so a repair sends a full batch either way."""
    if chain.side == STOCK:
        return Wanted(frozenset(), frozenset(), min(chain.spilled, UPD_BATCH))
    if chain.conf >= chain.base:
        return NOTHING
    first = chain.conf + 1
    return Wanted(frozenset(), frozenset(range(first, min(first + UPD_BATCH, chain.base + 1))))


def add(chain: Chain, chit: dict[str, Any], local: LocalTally) -> tuple[Chain, list[Send]]:
    """Take a chit that just became good here: one our user signed (this sends it ``good``), a
    validated ``good`` from the partner, or a lift chit whose decision this holder applied.
    ``local`` is the holder's tally (for addresses).

    Both holders of a lift chit apply its decision each on its own, so neither tells the other
    it is good: the foil links it and sends nothing yet: its block goes in the ``upd`` that
    :func:`resync` makes, which the caller sends a moment later (by then the stock has
    usually applied the decision too, so it does not refuse the block as undecided, and one
    ``upd`` carries the blocks of every lift decided meanwhile); the stock parks it and waits
    for that ``upd`` (no ``good``, no ``req``: resync repairs a lost one)."""
    _check_new(chain, chit)
    ours, lift = chit["by"] == chain.side, chit["type"] == "lift"
    if chain.side == FOIL:
        chain, linked = cs.append(chain, chit)
        if lift:
            return chain, []
        return chain, [_good(local, linked) if ours else _upd(chain, local, [linked])]
    if lift:
        return cs.park(chain, chit, chain.pending), []
    if ours:
        return cs.park(chain, chit, chain.pending), [_good(local, chit)]
    chain = _take(chain, chit)
    return chain, _stock_reply(chain, local)


def add_many(
    chain: Chain, chits: Iterable[dict[str, Any]], local: LocalTally
) -> tuple[Chain, list[Send]]:
    """Take chits our user just signed, in order, and send them in batches."""
    chits = list(chits)
    seen = set()
    for chit in chits:
        if chit["by"] != chain.side:
            raise Refusal("bad_field", f"chit {chit['uuid']} is not the {chain.side} user's")
        _check_new(chain, chit)
        if chit["uuid"] in seen:
            raise Refusal("bad_state", f"chit {chit['uuid']} comes twice")
        seen.add(chit["uuid"])
    if chain.side == FOIL:
        chain, taken = cs.append_all(chain, chits)
    else:
        for chit in chits:
            cs.note_parked(chain, chit)
        chain, taken = replace(chain, pending=chain.pending + tuple(chits)), chits
    batches = [taken[first : first + UPD_BATCH] for first in range(0, len(taken), UPD_BATCH)]
    if chain.side == FOIL:
        return chain, [_upd(chain, local, batch) for batch in batches]
    return chain, [_chain_message(chain, local, "new", chits=batch) for batch in batches]


def receive(chain: Chain, obj: Any, local: LocalTally,
            history: Mapping[int, dict[str, Any]] | None = None) -> Received:
    """Apply a ``chain`` message from the partner. ``history``: the linked chits behind the
    chain's ``base`` that :func:`wanted` names, by index. Every chit it adopts is one
    ``wanted(chain, obj)`` named, so the caller has read its row (if any) already."""
    if not isinstance(obj, dict) or obj.get("cmd") not in CMDS:
        raise Refusal("bad_field", f"chain.cmd must be one of {CMDS}")
    cmd = obj["cmd"]
    _check_message(chain, cmd, obj)
    handlers = _FOIL_HANDLERS if chain.side == FOIL else _STOCK_HANDLERS
    if cmd not in handlers:
        raise Refusal("bad_state", f"the {chain.side} holder does not take chain {cmd}")
    try:
        if not history:
            return handlers[cmd](chain, obj, local)
        received = handlers[cmd](replace(chain, history=history), obj, local)
    except Refusal:
        chain.forget_other_versions()
        raise
    return received._replace(chain=replace(received.chain, history={}))


def resync(chain: Chain, local: LocalTally,
           history: Mapping[int, dict[str, Any]] | None = None) -> list[Send]:
    """Messages that repair whatever was lost; none once both sides are in step.
    ``history``: the blocks :func:`to_resend` names, by index."""
    if chain.side == FOIL:
        unconfirmed = _blocks_from(replace(chain, history=history or {}), chain.conf + 1)
        return [_upd(chain, local, unconfirmed)] if unconfirmed else []
    unordered = [chit for chit in chain.pending if chit["by"] == STOCK][:UPD_BATCH]
    messages = [_chain_message(chain, local, "new", chits=unordered)] if unordered else []
    return messages + _stock_reply(chain, local, repair=True)


# -- messages ---------------------------------------------------------------------------------


def _good(local: LocalTally, chit: dict[str, Any]) -> Send:
    return to_partner(local, "chit", "good", chit)


def _chain_message(chain: Chain, local: LocalTally, cmd: str, **fields: Any) -> Send:
    return to_partner(local, "chit", "chain", {"cmd": cmd, "tally": chain.tally, **fields})


def _upd(chain: Chain, local: LocalTally, chits: Iterable[dict[str, Any]]) -> Send:
    return _chain_message(chain, local, "upd", chits=list(chits), conf=chain.conf)


def _ack(chain: Chain, local: LocalTally, index: int) -> Send:
    return _chain_message(chain, local, "ack", index=index, hash=chain.hash_at(index))


def _check_message(chain: Chain, cmd: str, obj: dict[str, Any]) -> None:
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


# -- shared helpers ---------------------------------------------------------------------------


def _check_new(chain: Chain, chit: dict[str, Any]) -> None:
    if chit["tally"] != chain.tally:
        raise Refusal("bad_field", f"chit {chit['uuid']} is for tally {chit['tally']}")
    if cs.find(chain, chit["uuid"]) is not None:
        raise Refusal("bad_state", f"chit {chit['uuid']} is already in the chain")


def _known(chain: Chain, chit: Any, local: LocalTally) -> dict[str, Any] | None:
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


# -- the foil holder: orders ------------------------------------------------------------------


def _foil_new(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    known: dict[str, dict[str, Any]] = {}  # our linked copies
    new: dict[str, dict[str, Any]] = {}  # the stock's chits we link now, in message order
    for chit in obj["chits"]:
        chit_uuid = chit.get("uuid") if isinstance(chit, dict) else None
        first = new.get(chit_uuid) if isinstance(chit_uuid, str) else None
        if first is not None:  # the same chit twice in one message
            check_form(chit)
            if first["hash"] != chit["hash"]:
                raise Refusal("conflict", f"chit {chit_uuid} differs from our copy")
            continue
        ours = _known(chain, chit, local)
        if ours is not None:
            known[ours["uuid"]] = ours
        elif chit["by"] != STOCK:
            raise Refusal("bad_field", "chain new carries the stock holder's own chits")
        else:
            new[chit["uuid"]] = chit
    chain, adopted = cs.append_all(chain, new.values())
    blocks = [*known.values(), *adopted]
    ordered = sorted(blocks, key=lambda chit: chit["chain"]["index"])
    return Received(chain, [_upd(chain, local, ordered)], adopted)


def _foil_ack(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    index = obj["index"]
    if index <= chain.length and chain.hash_at(index) == obj["hash"]:
        chain = replace(chain, conf=max(chain.conf, index))
        return Received(chain, [_ack(chain, local, chain.conf)], [])
    at = min(index, chain.length)
    nak = _chain_message(chain, local, "nak", index=at, hash=chain.hash_at(at))
    return Received(chain, [nak], [])


def _foil_req(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    blocks = _blocks_from(chain, obj["index"])
    return Received(chain, [_upd(chain, local, blocks)] if blocks else [], [])


def _blocks_from(chain: Chain, first: int) -> list[dict[str, Any]]:
    """Up to ``UPD_BATCH`` linked blocks from index ``first``, those behind ``base`` from the
    ``history`` the caller read."""
    behind = [chain.linked_at(index)
              for index in range(first, min(first + UPD_BATCH, chain.base + 1))]
    start = max(first - chain.base - 1, 0)
    return behind + list(chain.chits[start : start + UPD_BATCH - len(behind)])


# -- the stock holder: conforms ---------------------------------------------------------------


def _contradicts(chain: Chain, block: dict[str, Any]) -> bool:
    """Whether the foil's block disagrees with what this stock holder has linked."""
    index = block["index"]
    if index <= chain.length:
        return chain.linked_at(index)["chain"] != block
    return index == chain.length + 1 and block["prev"] != chain.head


def _take(chain: Chain, chit: dict[str, Any]) -> Chain:
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


def _stock_reply(chain: Chain, local: LocalTally, *, repair: bool = False) -> list[Send]:
    """Ack blocks the foil has not confirmed; ask for the gap before a foil chit we hold. A
    foil lift chit without a block is not a gap: the foil sends its ``upd`` when it applies
    the decision (so only a ``repair`` asks for it)."""
    messages = [_ack(chain, local, chain.length)] if chain.length > chain.conf else []
    if chain.hints.foreign and any(
        chit["by"] == FOIL and (repair or chit["type"] != "lift" or chit["chain"] is not None)
        for chit in chain.pending
    ):
        messages.append(_chain_message(chain, local, "req", index=chain.length + 1))
    return messages


def _stock_upd(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
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
        ours = _known(chain, chit, local)
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
        chain = _take(chain, chit)
    chain = cs.link_run(chain, run)
    chain = replace(chain, conf=max(chain.conf, min(obj["conf"], chain.length)))
    return Received(chain, _stock_reply(chain, local), adopted)


def _extends(chain: Chain, run: dict[str, dict[str, Any]], chit: dict[str, Any]) -> bool:
    """Whether ``chit``'s block follows ``chain`` with ``run`` linked after it, in the case
    :func:`_take` would simply link it: a block that hashes right, on an index no parked
    block claims, for a chit not linked yet."""
    block = chit["chain"]
    index = chain.length + len(run) + 1
    prev = next(reversed(run.values()))["chain"]["hash"] if run else chain.head
    return (block["index"] == index and block["prev"] == prev
            and index not in chain.hints.claims
            and block["hash"] == block_hash(index, prev, chit["hash"])
            and cs.linked(chain, chit["uuid"]) is None)


def _stock_ack(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    index = obj["index"]
    if index <= chain.length and chain.hash_at(index) == obj["hash"]:
        return Received(replace(chain, conf=max(chain.conf, index)), [], [])
    return _stock_nak(chain, obj, local)


def _stock_nak(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    chain = cs.rollback(chain)
    return Received(chain, [_chain_message(chain, local, "req", index=chain.conf + 1)], [])


_FOIL_HANDLERS = {"new": _foil_new, "ack": _foil_ack, "req": _foil_req}
_STOCK_HANDLERS = {"upd": _stock_upd, "ack": _stock_ack, "nak": _stock_nak}

__all__ = ["CMDS", "NOTHING", "UPD_BATCH", "Chain", "Received", "Wanted", "add", "add_many",
           "balance", "block_hash", "receive", "resync", "settled", "start", "to_resend", "trim",
           "unspill", "wanted"]
