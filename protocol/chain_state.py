"""A holder's chit chain and what changes it: the state that ``protocol.chain`` reasons about.

A :class:`Chain` is frozen; its versions are made by this module's functions (linking,
parking, rolling back, trimming), never by ``dataclasses.replace`` from outside: the
versions of one chain share lookup hints (:class:`_Hints`: where each chit is linked, which
ones were ever pending, which block indexes wait beyond a gap), so a lookup costs O(1)
however long the chain grows, and a version made elsewhere would share hints that do not
describe it. ``protocol.chain`` decides what the partner's messages do; this module keeps
the chain and its hints consistent while it does.

Memory: :func:`trim` forgets the blocks up to ``base``, confirmed by the partner or not, and
the newest of many good chits that wait unordered without a block (``spilled``); the caller
keeps them all (the runtime's chit rows). A message that names them needs
``protocol.chain.wanted``, a repair ``protocol.chain.to_resend``, and :func:`unspill` takes
spilled chits back. So a partner that never confirms a block, or never orders a chit, costs
a holder's memory a window of the chain, not the whole unconfirmed tail.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .chit_local import balance as chit_balance
from .codec import digest
from .errors import Refusal
from .tally_fields import FOIL, SIDES

_MAP_FIELDS = {"tally", "side", "origin", "chits", "pending", "conf", "base", "base_hash",
               "base_balance", "spilled", "ahead"}


@dataclass
class _Hints:
    """Lookups that would otherwise scan the chain, shared by every version of one chain
    derived with ``replace``, so each costs O(1) however long the chain grows. Entries are
    only ever added (after a refused message they are made anew from the chain it was
    refused on): a hit may be stale (another version moved the chit) and is checked against
    the version at hand, but a miss is certain."""

    linked: dict[str, int] = dataclasses.field(default_factory=dict)  # uuid -> block index
    parked: set[str] = dataclasses.field(default_factory=set)  # uuids ever put in pending
    foreign: set[str] = dataclasses.field(default_factory=set)  # ... of the partner's chits
    claims: set[int] = dataclasses.field(default_factory=set)  # indexes of parked blocks


@dataclass(frozen=True)
class Chain:
    """One holder's view of the chit chain of one tally."""

    tally: str  # the tally uuid
    side: str  # the side this holder holds
    origin: bytes  # block 0: the tally digest
    chits: tuple[dict[str, Any], ...] = ()  # linked: chits[i - 1 - base] is block i
    pending: tuple[dict[str, Any], ...] = ()  # good, not linked yet (stock only)
    conf: int = 0  # the highest index the partner confirmed
    base: int = 0  # blocks 1 to base are not held here (confirmed or not): see trim()
    base_hash: bytes | None = None  # block base's hash (None while base is 0: the origin)
    base_balance: int = 0  # what the good chits not held here moved (see balance())
    spilled: int = 0  # good chits not linked, without a block, not held here: see trim()
    # the highest conf the partner stated: past ours when we lost blocks it holds (restored
    # from a backup), which we ask for until we hold them (protocol.chain_stock, chain_foil);
    # never lowered, since a late copy of the partner's older message states a lower one
    ahead: int = 0
    hints: _Hints = dataclasses.field(default_factory=_Hints, compare=False, repr=False)
    # blocks behind ``base`` a message names, by index: set by receive() for one call
    history: Mapping[int, dict[str, Any]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.hints.linked and not self.hints.parked:  # built, not derived
            self._note_all()

    def _note_all(self) -> None:
        """Fill the (empty) hints from this version alone."""
        hints = self.hints
        hints.linked.update(
            (chit["uuid"], self.base + at) for at, chit in enumerate(self.chits, 1))
        hints.parked.update(chit["uuid"] for chit in self.pending)
        hints.foreign.update(chit["uuid"] for chit in self.pending if chit["by"] != self.side)
        hints.claims.update(
            chit["chain"]["index"] for chit in self.pending if chit["chain"] is not None)

    def forget_other_versions(self) -> None:
        """Hints of this version alone, again: a refused message's work (links it noted in
        versions nobody keeps) would otherwise send later lookups scanning the chain."""
        hints = self.hints
        for noted in (hints.linked, hints.parked, hints.foreign, hints.claims):
            noted.clear()
        self._note_all()

    @property
    def length(self) -> int:
        return self.base + len(self.chits)

    @property
    def head(self) -> bytes:
        return self.hash_at(self.length)

    def hash_at(self, index: int) -> bytes:
        if index == 0:
            return self.origin
        if index == self.base:
            assert self.base_hash is not None
            return self.base_hash
        return self.linked_at(index)["chain"]["hash"]

    def linked_at(self, index: int) -> dict[str, Any]:
        """Block ``index`` (1 to ``length``): from the chain, or behind ``base`` from the
        ``history`` the caller read for this message (:func:`wanted`)."""
        if index > self.base:
            return self.chits[index - self.base - 1]
        try:
            return self.history[index]
        except KeyError:
            raise LookupError(f"block {index} of tally {self.tally} is behind the chain's base "
                              f"{self.base} and was not read: see protocol.chain.wanted") from None

    def to_map(self) -> dict[str, Any]:
        return {
            "tally": self.tally,
            "side": self.side,
            "origin": self.origin,
            "chits": list(self.chits),
            "pending": list(self.pending),
            "conf": self.conf,
            "base": self.base,
            "base_hash": self.base_hash,
            "base_balance": self.base_balance,
            "spilled": self.spilled,
            "ahead": self.ahead,
        }

    @classmethod
    def from_map(cls, value: Any) -> Chain:
        if not isinstance(value, dict) or set(value) != _MAP_FIELDS:
            raise Refusal("bad_field", "a stored chain has the fields of Chain")
        if value["side"] not in SIDES or not all(
                isinstance(value[key], int)
                for key in ("conf", "base", "base_balance", "spilled", "ahead")):
            raise Refusal("bad_field", "a stored chain has a side and integer conf and base")
        return cls(**{**value, "chits": tuple(value["chits"]), "pending": tuple(value["pending"])})


def block_hash(index: int, prev: bytes, chit_hash: bytes) -> bytes:
    return digest({"index": index, "prev": prev, "chit": chit_hash})


def balance(chain: Chain) -> int:
    """What the partner owes this holder, over every good chit it knows, linked or not."""
    return chain.base_balance + chit_balance((*chain.chits, *chain.pending), chain.side)


def trim(chain: Chain, keep: int) -> Chain:
    """``chain`` without the blocks more than ``keep`` blocks old, confirmed or not, and
    without the unordered chits (good, no block) in ``pending`` after its ``keep`` oldest
    (``spilled``), all of which the caller keeps elsewhere. Each is dropped once ``keep`` more
    pile up, so trimming costs O(1) a chit. Messages that name them then need :func:`wanted`
    (and the chits it names that are spilled, :func:`unspill`); a foil's repair needs
    ``to_resend``."""
    cut = chain.length - keep
    dropped = chain.chits[: cut - chain.base] if cut - chain.base >= keep else ()
    held = chain.chits[len(dropped):]
    pending, spilled = chain.pending, ()
    if len(pending) >= 2 * keep:  # parked blocks stay: their claims steer the linking
        unordered = [chit for chit in pending if chit["chain"] is None]
        if len(unordered) > keep:
            spilled = tuple(unordered[keep:])
            out = {id(chit) for chit in spilled}
            pending = tuple(chit for chit in pending if id(chit) not in out)
    if not dropped and not spilled:
        return chain
    # hints of its own, without the dropped chits (so they stay bounded), made by set
    # operations rather than by a walk over ``pending``
    base = chain.base + len(dropped)
    gone = {chit["uuid"] for chit in (*dropped, *spilled)}
    hints = _Hints(linked={chit["uuid"]: index for index, chit in enumerate(held, base + 1)},
                   parked=chain.hints.parked - gone, foreign=chain.hints.foreign - gone,
                   claims={index for index in chain.hints.claims if index > base})
    return Chain(tally=chain.tally, side=chain.side, origin=chain.origin, chits=held,
                 pending=pending, conf=chain.conf, base=base,
                 base_hash=dropped[-1]["chain"]["hash"] if dropped else chain.base_hash,
                 base_balance=chain.base_balance + chit_balance((*dropped, *spilled), chain.side),
                 spilled=chain.spilled + len(spilled), ahead=chain.ahead, hints=hints)


def unspill(chain: Chain, chits: Iterable[dict[str, Any]]) -> Chain:
    """``chain`` holding again spilled chits (:func:`trim`) that the caller read back, after
    the pending ones."""
    chits = tuple(chits)
    if not chits:
        return chain
    if len(chits) > chain.spilled:
        raise ValueError(f"{len(chits)} chits taken back, but only {chain.spilled} spilled")
    for chit in chits:
        note_parked(chain, chit)
    return replace(chain, pending=chain.pending + chits, spilled=chain.spilled - len(chits),
                   base_balance=chain.base_balance - chit_balance(chits, chain.side))


def settled(chain: Chain) -> bool:
    """Nothing waits for an order, the partner confirmed every block and holds none we lack.
    (The foil cannot see stock chits still in flight; a closing tally relies on both sides
    being quiet.)"""
    return (not chain.pending and not chain.spilled and chain.conf == chain.length
            and chain.ahead <= chain.conf)


def lacking(chain: Chain) -> int:
    """How many blocks the partner says it confirmed (``ahead``) that this holder lacks and
    asks for: past its head on the stock's side; past its ``conf`` on the foil's, whose own
    blocks after it give way to the stock's."""
    return max(chain.ahead - (chain.length if chain.side != FOIL else chain.conf), 0)


def give_up(chain: Chain) -> Chain:
    """``chain`` no longer asking for the blocks its partner says it confirmed and did not
    send when asked (it lies, or lost them too): ``ahead`` lowered to what the chain holds,
    and a foil's chits that waited for them linked after its head, in the order they waited
    (as ``protocol.chain_foil`` does once it has caught up; not while some are spilled: the
    caller holds those again first, ``store.credit.Ledger.given_up``). Safe, for ``ahead``
    only steers asking: the blocks come back, if the partner holds them, as they came the
    first time (a block of the partner's past a gap, or one that contradicts a block it
    confirmed, is answered with a request), and a foil that orders anew on top of its
    ``conf`` is answered with the stock's confirmed block if the stock holds more
    (``protocol.chain_stock.lost``)."""
    if lacking(chain):
        chain = replace(chain, ahead=chain.ahead - lacking(chain))
    if chain.side == FOIL and chain.pending and not chain.spilled:
        chain, _ = append_all(chain, chain.pending)
        chain = replace(chain, pending=())
    return chain


def find(chain: Chain, chit_uuid: Any) -> dict[str, Any] | None:
    """Our copy of a chit, linked or parked; ``None`` for a uuid that is no text (a peer's
    list or map cannot key anything, and ``check_chit`` refuses it)."""
    if not isinstance(chit_uuid, str):
        return None
    held = linked(chain, chit_uuid)
    if held is not None or chit_uuid not in chain.hints.parked:
        return held
    return next((c for c in chain.pending if c["uuid"] == chit_uuid), None)


def linked(chain: Chain, chit_uuid: str) -> dict[str, Any] | None:
    index = chain.hints.linked.get(chit_uuid)
    if index is None:
        return behind(chain, chit_uuid)
    at = index - chain.base - 1
    if 0 <= at < len(chain.chits) and chain.chits[at]["uuid"] == chit_uuid:
        return chain.chits[at]
    found = next((c for c in chain.chits if c["uuid"] == chit_uuid), None)  # a stale hint
    return found if found is not None else behind(chain, chit_uuid)


def behind(chain: Chain, chit_uuid: str) -> dict[str, Any] | None:
    """A chit linked behind ``base``, if the caller read it for this message."""
    return next((c for c in chain.history.values() if c["uuid"] == chit_uuid), None)


def link(chain: Chain, chit: dict[str, Any], **changes: Any) -> Chain:
    """``chain`` with ``chit`` (already carrying its block) linked at the end."""
    chain.hints.linked[chit["uuid"]] = chain.length + 1
    # ``+`` copies a long tuple about four times faster than ``(*chain.chits, chit)``
    return replace(chain, chits=chain.chits + (chit,), **changes)  # noqa: RUF005


def note_parked(chain: Chain, chit: dict[str, Any]) -> None:
    hints = chain.hints
    hints.parked.add(chit["uuid"])
    if chit["by"] != chain.side:
        hints.foreign.add(chit["uuid"])
    if chit["chain"] is not None:
        hints.claims.add(chit["chain"]["index"])


def park(chain: Chain, chit: dict[str, Any], pending: tuple[dict[str, Any], ...]) -> Chain:
    """``chain`` with ``pending`` and, after them, ``chit`` waiting unlinked."""
    note_parked(chain, chit)
    return replace(chain, pending=pending + (chit,))  # noqa: RUF005 (see link)


def unparked(chain: Chain, chit_uuid: str) -> tuple[dict[str, Any], ...]:
    """The pending chits but ``chit_uuid`` (the oldest, usually: the foil orders in turn)."""
    if chit_uuid in chain.hints.parked:
        for at, chit in enumerate(chain.pending):
            if chit["uuid"] == chit_uuid:
                return chain.pending[:at] + chain.pending[at + 1 :]
    return chain.pending


def append_all(
    chain: Chain, chits: Iterable[dict[str, Any]]
) -> tuple[Chain, list[dict[str, Any]]]:
    """``chain`` with ``chits`` linked at its end in order (one copy of the chain, not one per
    chit), and the linked chits."""
    made = []
    index, prev = chain.length, chain.head
    for chit in chits:
        index += 1
        chain.hints.linked[chit["uuid"]] = index
        block = {"index": index, "prev": prev, "hash": block_hash(index, prev, chit["hash"])}
        made.append({**chit, "chain": block})
        prev = block["hash"]
    return replace(chain, chits=chain.chits + tuple(made)), made


def append(chain: Chain, chit: dict[str, Any]) -> tuple[Chain, dict[str, Any]]:
    chain, (made,) = append_all(chain, [chit])
    return chain, made


def rollback(chain: Chain, to: int | None = None) -> Chain:
    """Unlink every block after block ``to`` (by default the last confirmed one: the stock,
    whose foil will send its order again; a foil taking back blocks it lost passes the last
    one it shares with the stock). The unlinked chits wait in ``pending``, without blocks.
    Those behind ``base`` stay spilled, but those the message at hand names (its
    ``history``), which come back to ``pending``."""
    to = chain.conf if to is None else to
    if to >= chain.base:
        kept = to - chain.base
        unlinked = tuple({**chit, "chain": None} for chit in chain.chits[kept:])
        for chit in unlinked:
            note_parked(chain, chit)
        return replace(chain, chits=chain.chits[:kept], pending=(*unlinked, *chain.pending))
    behind = range(to + 1, chain.base + 1)
    back = tuple({**chain.history[index], "chain": None} for index in behind
                 if index in chain.history)
    unlinked = (*back, *({**chit, "chain": None} for chit in chain.chits))
    for chit in unlinked:
        note_parked(chain, chit)
    return replace(chain, chits=(), pending=(*unlinked, *chain.pending), base=to,
                   base_hash=None if to == 0 else chain.hash_at(to),
                   base_balance=chain.base_balance - chit_balance(back, chain.side),
                   spilled=chain.spilled + len(behind) - len(back),
                   history={index: chit for index, chit in chain.history.items()
                            if index <= to})


def link_parked(chain: Chain) -> Chain:
    """Link every pending chit whose block follows, in one pass: the same chits, in the same
    order, as linking the first that follows (in pending order) until none does."""
    claims: dict[tuple[int, bytes], dict[str, Any]] = {}
    for chit in chain.pending:
        if chit["chain"] is not None:
            claims.setdefault((chit["chain"]["index"], chit["chain"]["prev"]), chit)
    run = []
    index, head = chain.length + 1, chain.head
    while (chit := claims.get((index, head))) is not None:
        chain.hints.linked[chit["uuid"]] = index
        run.append(chit)
        index, head = index + 1, chit["chain"]["hash"]
    if not run:
        return chain
    taken = {id(chit) for chit in run}
    rest = tuple(chit for chit in chain.pending if id(chit) not in taken)
    return replace(chain, chits=chain.chits + tuple(run), pending=rest)


def link_run(chain: Chain, run: dict[str, dict[str, Any]]) -> Chain:
    """``chain`` with the blocks of ``run`` (see ``chain._extends``) linked at its end and out
    of ``pending``, then any parked blocks that follow them."""
    if not run:
        return chain
    for index, chit_uuid in enumerate(run, chain.length + 1):
        chain.hints.linked[chit_uuid] = index
    pending, parked = chain.pending, len(chain.hints.parked.intersection(run))
    if parked:  # usually the oldest pending chits, in order: the foil orders them in turn
        front = 0
        while front < len(pending) and pending[front]["uuid"] in run:
            front += 1
        if front == parked:  # every run chit pending is in front (parked may be stale)
            pending = pending[front:]
        else:
            pending = tuple(chit for chit in pending if chit["uuid"] not in run)
    chain = replace(chain, chits=chain.chits + tuple(run.values()), pending=pending)
    return link_parked(chain) if chain.length + 1 in chain.hints.claims else chain
