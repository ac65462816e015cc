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

Messages are ``{"target": "chit", "action": "chain", "object": {"cmd", "tally", ...}}``,
plus ``{"target": "chit", "action": "good", "object": <chit>}``, which :func:`add` sends when
our own chit becomes good (the foil's carries its block; the stock's carries none):

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
(``protocol.chit.receive_good``). If the stock's chain ever contradicts the foil's (a restored
backup, a bug), the stock unlinks everything after its ``conf`` and asks again (``req``); a
contradiction of a confirmed block is refused as ``conflict`` and needs a human.

Public API:

- ``Chain`` (frozen; ``to_map()/from_map()``, ``.length``, ``.head``, ``.hash_at(index)``).
- ``start(local_tally) -> Chain`` — an empty chain on a tally both users signed.
- ``add(chain, chit) -> (Chain, messages)`` — a chit just became good here.
- ``receive(chain, obj, local_tally) -> Received(chain, messages, adopted)`` — a ``chain``
  message's object.
- ``resync(chain) -> messages`` — what to (re)send so lost messages are repaired.
- ``balance(chain)``, ``settled(chain)``, ``block_hash(index, prev, chit_hash)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from .chit import balance as chit_balance
from .chit import check_chit, check_form
from .codec import digest
from .tally import FOIL, SIDES, STOCK, LocalTally, Refusal, chain_origin

UPD_BATCH = 100  # chits per upd or new message: under 0.6 MiB even with maximal memos and refs
CMDS = ("new", "ack", "nak", "upd", "req")
_CMD_FIELDS = {
    "new": {"chits"},
    "upd": {"chits", "conf"},
    "ack": {"index", "hash"},
    "nak": {"index", "hash"},
    "req": {"index"},
}


@dataclass(frozen=True)
class Chain:
    """One holder's view of the chit chain of one tally."""

    tally: str  # the tally uuid
    side: str  # the side this holder holds
    origin: bytes  # block 0: the tally digest
    chits: tuple[dict[str, Any], ...] = ()  # linked: chits[i - 1] is block i
    pending: tuple[dict[str, Any], ...] = ()  # good, not linked yet (stock only)
    conf: int = 0  # the highest index the partner confirmed

    @property
    def length(self) -> int:
        return len(self.chits)

    @property
    def head(self) -> bytes:
        return self.hash_at(self.length)

    def hash_at(self, index: int) -> bytes:
        return self.origin if index == 0 else self.chits[index - 1]["chain"]["hash"]

    def to_map(self) -> dict[str, Any]:
        return {
            "tally": self.tally,
            "side": self.side,
            "origin": self.origin,
            "chits": list(self.chits),
            "pending": list(self.pending),
            "conf": self.conf,
        }

    @classmethod
    def from_map(cls, value: Any) -> Chain:
        if not isinstance(value, dict) or set(value) != {*cls.__dataclass_fields__}:
            raise Refusal("bad_field", "a stored chain has the fields of Chain")
        if value["side"] not in SIDES or not isinstance(value["conf"], int):
            raise Refusal("bad_field", "a stored chain has a side and an integer conf")
        return cls(**{**value, "chits": tuple(value["chits"]), "pending": tuple(value["pending"])})


class Received(NamedTuple):
    chain: Chain
    messages: list[dict[str, Any]]
    adopted: list[dict[str, Any]]  # good chits first learned from this message


def start(local: LocalTally) -> Chain:
    return Chain(tally=local.uuid, side=local.side, origin=chain_origin(local))


def block_hash(index: int, prev: bytes, chit_hash: bytes) -> bytes:
    return digest({"index": index, "prev": prev, "chit": chit_hash})


def balance(chain: Chain) -> int:
    """What the partner owes this holder, over every good chit it knows, linked or not."""
    return chit_balance((*chain.chits, *chain.pending), chain.side)


def settled(chain: Chain) -> bool:
    """Nothing waits for an order and the partner confirmed every block. (The foil cannot see
    stock chits still in flight; a closing tally relies on both sides being quiet.)"""
    return not chain.pending and chain.conf == chain.length


def add(chain: Chain, chit: dict[str, Any]) -> tuple[Chain, list[dict[str, Any]]]:
    """Take a chit that just became good here: one our user signed (this sends it ``good``), or
    a validated ``good`` from the partner."""
    if chit["tally"] != chain.tally:
        raise Refusal("bad_field", f"chit {chit['uuid']} is for tally {chit['tally']}")
    if _find(chain, chit["uuid"]) is not None:
        raise Refusal("bad_state", f"chit {chit['uuid']} is already in the chain")
    ours = chit["by"] == chain.side
    if chain.side == FOIL:
        chain, linked = _append(chain, chit)
        return chain, [_good(linked) if ours else _upd(chain, [linked])]
    if ours:
        return replace(chain, pending=(*chain.pending, chit)), [_good(chit)]
    chain = _take(chain, chit)
    return chain, _stock_reply(chain)


def receive(chain: Chain, obj: Any, local: LocalTally) -> Received:
    """Apply a ``chain`` message from the partner."""
    if not isinstance(obj, dict) or obj.get("cmd") not in CMDS:
        raise Refusal("bad_field", f"chain.cmd must be one of {CMDS}")
    cmd = obj["cmd"]
    _check_message(chain, cmd, obj)
    handlers = _FOIL_HANDLERS if chain.side == FOIL else _STOCK_HANDLERS
    if cmd not in handlers:
        raise Refusal("bad_state", f"the {chain.side} holder does not take chain {cmd}")
    return handlers[cmd](chain, obj, local)


def resync(chain: Chain) -> list[dict[str, Any]]:
    """Messages that repair whatever was lost; none once both sides are in step."""
    if chain.side == FOIL:
        unconfirmed = chain.chits[chain.conf : chain.conf + UPD_BATCH]
        return [_upd(chain, unconfirmed)] if unconfirmed else []
    unordered = [chit for chit in chain.pending if chit["by"] == STOCK][:UPD_BATCH]
    messages = [_chain_message(chain, "new", chits=unordered)] if unordered else []
    return messages + _stock_reply(chain)


# -- messages ---------------------------------------------------------------------------------


def _good(chit: dict[str, Any]) -> dict[str, Any]:
    return {"target": "chit", "action": "good", "object": chit}


def _chain_message(chain: Chain, cmd: str, **fields: Any) -> dict[str, Any]:
    obj = {"cmd": cmd, "tally": chain.tally, **fields}
    return {"target": "chit", "action": "chain", "object": obj}


def _upd(chain: Chain, chits: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return _chain_message(chain, "upd", chits=list(chits), conf=chain.conf)


def _ack(chain: Chain, index: int) -> dict[str, Any]:
    return _chain_message(chain, "ack", index=index, hash=chain.hash_at(index))


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


def _find(chain: Chain, chit_uuid: Any) -> dict[str, Any] | None:
    return next((c for c in (*chain.chits, *chain.pending) if c["uuid"] == chit_uuid), None)


def _known(chain: Chain, chit: Any, local: LocalTally) -> dict[str, Any] | None:
    """Validate a chit from a chain message: our copy if we know it, else ``None`` once its
    issuer's signature checks out (the caller adopts it)."""
    ours = _find(chain, chit.get("uuid")) if isinstance(chit, dict) else None
    if ours is None:
        check_chit(chit, local.tally, signed=True)
        return None
    check_form(chit)
    if ours["hash"] != chit["hash"]:
        raise Refusal("conflict", f"chit {chit['uuid']} differs from our copy")
    return ours


# -- the foil holder: orders ------------------------------------------------------------------


def _append(chain: Chain, chit: dict[str, Any]) -> tuple[Chain, dict[str, Any]]:
    index, prev = chain.length + 1, chain.head
    block = {"index": index, "prev": prev, "hash": block_hash(index, prev, chit["hash"])}
    linked = {**chit, "chain": block}
    return replace(chain, chits=(*chain.chits, linked)), linked


def _foil_new(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    blocks: dict[str, dict[str, Any]] = {}
    adopted = []
    for chit in obj["chits"]:
        ours = _known(chain, chit, local)
        if ours is None:
            if chit["by"] != STOCK:
                raise Refusal("bad_field", "chain new carries the stock holder's own chits")
            chain, ours = _append(chain, chit)
            adopted.append(ours)
        blocks[ours["uuid"]] = ours
    ordered = sorted(blocks.values(), key=lambda chit: chit["chain"]["index"])
    return Received(chain, [_upd(chain, ordered)], adopted)


def _foil_ack(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    index = obj["index"]
    if index <= chain.length and chain.hash_at(index) == obj["hash"]:
        chain = replace(chain, conf=max(chain.conf, index))
        return Received(chain, [_ack(chain, chain.conf)], [])
    at = min(index, chain.length)
    return Received(chain, [_chain_message(chain, "nak", index=at, hash=chain.hash_at(at))], [])


def _foil_req(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    first = obj["index"] - 1
    blocks = chain.chits[first : first + UPD_BATCH]
    return Received(chain, [_upd(chain, blocks)] if blocks else [], [])


# -- the stock holder: conforms ---------------------------------------------------------------


def _contradicts(chain: Chain, block: dict[str, Any]) -> bool:
    """Whether the foil's block disagrees with what this stock holder has linked."""
    index = block["index"]
    if index <= chain.length:
        return chain.chits[index - 1]["chain"] != block
    return index == chain.length + 1 and block["prev"] != chain.head


def _rollback(chain: Chain) -> Chain:
    """Unlink every block after the last confirmed one; the foil will send its order again."""
    unlinked = tuple({**chit, "chain": None} for chit in chain.chits[chain.conf :])
    return replace(chain, chits=chain.chits[: chain.conf], pending=(*unlinked, *chain.pending))


def _take(chain: Chain, chit: dict[str, Any]) -> Chain:
    """Keep a good chit (with the foil's block, if it has one) and link what is contiguous."""
    block = chit["chain"]
    if block is not None:
        if block["hash"] != block_hash(block["index"], block["prev"], chit["hash"]):
            raise Refusal("bad_field", f"chit {chit['uuid']}: chain.hash is not its block hash")
        if _contradicts(chain, block):
            if block["index"] <= chain.conf:
                raise Refusal("conflict", f"the foil contradicts confirmed block {block['index']}")
            chain = _rollback(chain)
            if _contradicts(chain, block):
                raise Refusal("conflict", f"block {block['index']} does not follow confirmed ones")
    linked = next((c for c in chain.chits if c["uuid"] == chit["uuid"]), None)
    if linked is not None:
        if block is None or linked["chain"] == block:
            return chain
        raise Refusal("conflict", f"chit {chit['uuid']} is already linked elsewhere")
    others = tuple(c for c in chain.pending if c["uuid"] != chit["uuid"])
    chain = replace(chain, pending=(*others, chit))
    while True:
        following = next((c for c in chain.pending if _follows(chain, c["chain"])), None)
        if following is None:
            return chain
        rest = tuple(c for c in chain.pending if c is not following)
        chain = replace(chain, chits=(*chain.chits, following), pending=rest)


def _follows(chain: Chain, block: dict[str, Any] | None) -> bool:
    return block is not None and block["index"] == chain.length + 1 and block["prev"] == chain.head


def _stock_reply(chain: Chain) -> list[dict[str, Any]]:
    """Ack blocks the foil has not confirmed; ask for the gap before a foil chit we hold."""
    messages = [_ack(chain, chain.length)] if chain.length > chain.conf else []
    if any(chit["by"] == FOIL for chit in chain.pending):
        messages.append(_chain_message(chain, "req", index=chain.length + 1))
    return messages


def _stock_upd(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    adopted = []
    for chit in obj["chits"]:
        ours = _known(chain, chit, local)
        if chit["chain"] is None:
            raise Refusal("bad_field", f"chit {chit['uuid']} in an upd has no chain block")
        if ours is None:
            adopted.append(chit)
            chain = _take(chain, chit)
        else:  # keep our copy (and its signature); take only the foil's block
            chain = _take(chain, {**ours, "chain": chit["chain"]})
    chain = replace(chain, conf=max(chain.conf, min(obj["conf"], chain.length)))
    return Received(chain, _stock_reply(chain), adopted)


def _stock_ack(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    index = obj["index"]
    if index <= chain.length and chain.hash_at(index) == obj["hash"]:
        return Received(replace(chain, conf=max(chain.conf, index)), [], [])
    return _stock_nak(chain, obj, local)


def _stock_nak(chain: Chain, obj: dict[str, Any], local: LocalTally) -> Received:
    chain = _rollback(chain)
    return Received(chain, [_chain_message(chain, "req", index=chain.conf + 1)], [])


_FOIL_HANDLERS = {"new": _foil_new, "ack": _foil_ack, "req": _foil_req}
_STOCK_HANDLERS = {"upd": _stock_upd, "ack": _stock_ack, "nak": _stock_nak}
