"""Chit-chain consensus: the two holders of a tally agree on one order of its good chits.

Block 0 is the tally digest. Block *i* is the *i*-th good chit, whose ``chain`` field is
``{index: i, prev: <hash of block i-1>, hash: digest({index, prev, chit: <chit hash>})}``, so
one hash pins the whole history. Each holder keeps a :class:`Chain`: the linked chits, the good
chits not linked yet (``pending``), and ``conf``, the highest index its partner confirmed,
which only ratchets forward.

**The foil holder orders; the stock holder conforms.** The foil links every good chit the
moment it learns of it, its own or the stock's, at the end of its chain, and never reorders a
block the stock confirmed. The stock never proposes a position: its own chits wait in
``pending`` until the foil's order names them, and the foil's chits are linked where the foil
put them. So the only thing that can disagree is delivery, not opinion, and any number of
chits can be in flight from both sides at once: there is nothing to collide. (MyCHIPs lets
both sides propose indexes, so the stock has to bump and re-hash its own chits whenever a foil
chit lands first, which stalls with more than one chit in flight.) Pending chits already count
in the balance: a good chit is owed whether or not it is ordered yet.

Messages are typed ``protocol.messages.Send`` events from our user to the tally partner
(``protocol.tally_local.to_partner``; hence the functions that send take the holder's
``LocalTally``): target ``chit``, action ``chain`` with object ``{cmd, tally, ...}``, plus
action ``good`` with the chit as object, which :func:`add` sends when our own chit becomes
good (the foil's carries its block; the stock's carries none):

=====  =============  ================================================================
cmd    direction      meaning
=====  =============  ================================================================
upd    foil -> stock  ``chits``: blocks of the foil's chain (with the chits), ``conf``
upd    stock -> foil  the same, of blocks the foil confirmed and lost (see below)
new    stock -> foil  ``chits``: the good chits the stock holds unlinked
ack    both ways      ``index, hash``: "my chain holds this block"; the foil answers
                      each ack that matches with an ack of its ``conf``
nak    foil -> stock  ``index, hash``: "your ack does not match my chain"
req    both ways      ``index``: "send me your blocks from here" (to the stock: those the
                      foil confirmed)
=====  =============  ================================================================

Recovery: a stock that receives a block beyond a gap keeps it in ``pending`` with its position
and sends ``req``; blocks link as soon as they are contiguous, so reordering never re-hashes
anything. It keeps at most ``chain_stock.PARKED_BLOCKS`` such blocks of the foil's chits
(its own user's chits bound the others): a chit beyond those waits without its block, like a
chit waiting for the foil's order, and the foil sends the block again once the gap is
filled, so a foil cannot make the stock hold its flood of blocks beyond a gap in memory.
Lost messages are repaired by :func:`resync`, which the runtime calls now and then (or when
a channel to the partner opens): the foil re-sends blocks its partner has not confirmed; the
stock re-sends ``new`` for its unordered chits, ``ack`` for unconfirmed blocks and ``req``
for gaps. A chit whose ``good`` message was lost thus still arrives, inside
``upd`` or ``new``, and :func:`receive` returns it in ``adopted`` for the caller to record
(``protocol.chit.receive_good``, or ``own_good`` for our own user's). A lift chit (unsigned)
is never adopted: each holder takes it with :func:`add` when it applies the lift's decision
(nobody sends it ``good``: the foil sends its block in a later ``upd``, from :func:`resync`,
and the stock waits for it without a ``req``), and a chain message carrying one this holder
does not hold yet is refused (``lift_undecided``) until then; the stock's ``resync`` asks for
it again. If the stock's chain contradicts the foil's after its ``conf`` (the foil lost blocks
it never confirmed), the stock unlinks everything after its ``conf`` and asks again (``req``):
the chits come back to the foil in ``new``, to be ordered anew.

**A holder restored from a backup** lost the blocks and chits made since; its partner holds
them, and confirmed indexes never move back, so the restored side takes them from the partner
(the runtime asks once a start, :func:`probe`). A stock behind its foil asks for the blocks
(``req``) as for any gap. A foil behind its stock orders new chits on blocks the stock
confirmed: the stock keeps their chits unordered and sends its block at ``conf`` (``upd``,
stock to foil); the foil asks from its own ``conf`` (``req``), takes the stock's confirmed
blocks in place of its own unconfirmed ones, and once it holds them all orders what it
unlinked after them (``protocol.chain_foil``). The restored side keeps the highest
``conf`` its partner stated (``ahead``; a foil asks from its ``conf`` + 1, so its ``req``
states one too): until it holds the blocks up to it, its chain is not settled and
:func:`resync` asks again, so a request or an answer lost on the way (one the partner did
not write: it answers a few repairs at a time) only delays it, and a late copy of an older
message, with a lower ``conf``, changes nothing. Either way the restored side checks each
chit it did not hold as it would have the first time: the issuer's signature (our own
user's proves a payment or acceptance the partner cannot make up: ``own_good``); a lift
chit stays ``lift_undecided`` until the runtime applies the lift's decision here. A
contradiction of a block the restored side itself confirmed is ``conflict`` and needs a
human. So do blocks the stock confirmed that both holders lost (each restored to before
them, one told of them by the other first): nobody holds them, and the side told asks for
them at its repairs, its chain not settled (a stock so told still takes the foil's new
blocks; a foil orders nothing meanwhile). A partner's word is no proof: one that states a
``conf`` it never shows (it lies) would keep the chain unsettled for ever, so the runtime
asks a few repairs without the chain growing and then gives the claim up (:func:`give_up`:
``ahead`` only steers asking; blocks the partner does hold come back as the first time).

Cost: a chain with thousands of chits must stay cheap per chit, so the versions of one chain
share lookup hints instead of scanning it (``protocol.chain_state``, where the chain and
everything that changes it live). Make chains with the constructor (or ``from_map``) and
change them only through these modules' functions. Each holder's part is a module of its own
(``protocol.chain_foil``, ``protocol.chain_stock``); the messages and the checks of what
they carry are ``protocol.chain_messages``.

Memory: a chain need not hold its whole history. :func:`trim` lets it forget the blocks up to
``base``, confirmed by the partner or not, and the newest of the unordered chits that pile up
in ``pending`` (``spilled``); the caller keeps them (the runtime's chit rows), so a tally with
a million chits costs a holder's cache only its recent blocks, even when the partner never
confirms a block or never orders a chit. Nothing a partner sends can make the chain reach
behind its ``base`` unasked: :func:`wanted` names every chit a chain message carries that the
chain does not hold, every block index behind ``base`` it names (a late copy, a ``req`` from
a partner restored from a backup) and the confirmed block when it is behind ``base`` (an ack
answers with it; a rollback goes back to it; a stock answers a foil that lost blocks with
it); the caller passes the blocks behind ``base`` among them to :func:`receive` as
``history``, and puts the spilled chits among them back in the chain first (:func:`unspill`).
A chit the chain does not hold is thus either one of ``history`` or new to the chain. A
rollback leaves the blocks behind ``base`` spilled (but those the message names). The foil's
repair reads what it sends the same way (:func:`to_resend`): the unconfirmed blocks behind
``base``, as ``history``, or the spilled chits, held again.

Public API:

- ``Chain`` (frozen; ``to_map()/from_map()``, ``.length``, ``.head``, ``.hash_at(index)``).
- ``trim(chain, keep) -> Chain`` — the chain without blocks more than ``keep`` old and with
  at most about ``keep`` unordered chits; ``unspill(chain, chits)`` takes spilled ones back.
- ``wanted(chain, obj) -> Wanted`` — the chits a chain message names that the chain does not
  hold and the block indexes behind its ``base``, for the caller to read (``receive`` takes
  the blocks behind ``base``); ``wanted_chit(chain, chit)`` the same for a ``good`` chit.
- ``to_resend(chain) -> Wanted`` — the blocks behind ``base`` that ``resync`` sends.
- ``start(local_tally) -> Chain`` — an empty chain on a tally both users signed.
- ``add(chain, chit, local_tally, history) -> (Chain, sends)`` — a chit just became good here
  (a foil's lift chit sends nothing: ``resync`` sends its block).
- ``add_many(chain, chits, local_tally) -> (Chain, sends)`` — several of our user's chits at once,
  sent ``UPD_BATCH`` to a message (``upd`` from the foil, ``new`` from the stock) instead of
  one ``good`` each; the partner treats them exactly as it would the ``good`` messages.
- ``receive(chain, obj, local_tally, history) -> Received(chain, messages, adopted)`` — a
  ``chain`` message's object; ``messages`` are ``Send`` events.
- ``resync(chain, local_tally, history) -> sends`` — what to (re)send so lost messages are
  repaired; ``history``: the blocks ``to_resend`` names.
- ``probe(local_tally, length, head, conf) -> Send`` — what a holder asks its partner once a
  start, so a side restored from a backup learns what it lost.
- ``own_good(local_chit, chit, local_tally) -> LocalChit`` — our own user's chit adopted.
- ``check_caught_up(chain, balance)`` — refuses our user's payment while the chain
  ``lacking`` blocks (``chain_behind``).
- ``balance(chain)``, ``settled(chain)``, ``block_hash(index, prev, chit_hash)``.
- ``lacking(chain)`` — the blocks the partner says it confirmed that the chain lacks;
  ``give_up(chain)`` the chain no longer asking for them (the runtime's bound on what a
  partner's word can make it ask for: ``agentd.services.credit.repair``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, NamedTuple

from . import chain_state as cs
from .chain_foil import HANDLERS as FOIL_HANDLERS
from .chain_foil import catching_up, foil_add, foil_resync
from .chain_messages import (
    CMDS,
    UPD_BATCH,
    Received,
    chain_message,
    check_message,
    check_new,
    own_good,
    upd,
)
from .chain_state import Chain, balance, block_hash, give_up, lacking, settled, trim, unspill
from .chain_stock import HANDLERS as STOCK_HANDLERS
from .chain_stock import stock_add, stock_reply
from .errors import Refusal
from .messages import Send
from .tally_fields import FOIL, STOCK
from .tally_local import LocalTally, to_partner
from .tally_sign import chain_origin


class Wanted(NamedTuple):
    """What a chain message names that a chain does not hold (:func:`wanted`), or what a
    repair sends that it does not hold (:func:`to_resend`)."""

    uuids: frozenset[str]
    indexes: frozenset[int]
    spilled: int = 0  # how many of the spilled chits to hold again, the oldest first


NOTHING = Wanted(frozenset(), frozenset())


def start(local: LocalTally) -> Chain:
    return Chain(tally=local.uuid, side=local.side, origin=chain_origin(local))


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def wanted(chain: Chain, obj: Any) -> Wanted:
    """What the chain message ``obj`` names that ``chain`` does not hold: the chits it does
    not hold, by uuid (each one linked behind ``base``, or one the caller knows otherwise, or
    new), and blocks behind ``base``, by index. The caller reads them and passes the linked
    ones behind ``base`` to :func:`receive` as ``history``, so a chit trimmed away is never
    taken for a new one."""
    if not isinstance(obj, dict):
        return NOTHING
    uuids, indexes = set(), set()
    _confirmed(chain, indexes)
    index = obj.get("index")
    if chain.base and _is_index(index):
        if obj.get("cmd") == "req":
            indexes.update(range(max(index, 1), min(index + UPD_BATCH, chain.base + 1)))
        elif 0 < index <= chain.base:
            indexes.add(index)
    chits = obj.get("chits")
    if not isinstance(chits, list) or len(chits) > UPD_BATCH:  # receive() refuses it
        chits = []
    for at, chit in enumerate(chits):
        if not isinstance(chit, dict):
            continue
        if isinstance(chit.get("uuid"), str) and cs.find(chain, chit["uuid"]) is None:
            uuids.add(chit["uuid"])
        block = chit.get("chain")
        index = block.get("index") if isinstance(block, dict) else None
        if _is_index(index) and 0 < index <= chain.base:
            indexes.add(index)
        if at == 0 and chain.side == FOIL and _is_index(index) and 0 < index - 1 < chain.base:
            indexes.add(index - 1)  # a stock's run of blocks follows this one of ours
    spilled = 0
    if chain.side == FOIL and obj.get("cmd") == "upd" and catching_up(chain):
        spilled = min(chain.spilled, UPD_BATCH)  # linked again once it has caught up
    return Wanted(frozenset(uuids), frozenset(indexes), spilled)


def _confirmed(chain: Chain, indexes: set[int]) -> None:
    """The confirmed block, when the chain does not hold it: an ack echoes it, a rollback
    goes back to it, a stock answers a foil that lost blocks with it."""
    if 0 < chain.conf < chain.base or (chain.side == STOCK and 0 < chain.conf == chain.base):
        indexes.add(chain.conf)


def wanted_chit(chain: Chain, chit: dict[str, Any]) -> Wanted:
    """What :func:`add` may need to take the partner's ``good`` chit ``chit`` (checked): on
    the stock's side, its block when that is behind ``base`` and the confirmed block (the
    answer to a foil that lost blocks); nothing on the foil's."""
    if chain.side == FOIL or chit["chain"] is None:
        return NOTHING
    indexes: set[int] = set()
    _confirmed(chain, indexes)
    if chit["chain"]["index"] <= chain.base:
        indexes.add(chit["chain"]["index"])
    return Wanted(frozenset(), frozenset(indexes))


def to_resend(chain: Chain) -> Wanted:
    """What :func:`resync` sends that the chain does not hold, for the caller to read: a
    foil's unconfirmed blocks behind ``base`` (passed as ``history``), a stock's spilled
    chits (held again: :func:`unspill`), so a repair sends a full batch either way."""
    if chain.side == STOCK:
        return Wanted(frozenset(), frozenset(), min(chain.spilled, UPD_BATCH))
    if chain.conf >= chain.base or catching_up(chain):
        return NOTHING
    first = chain.conf + 1
    return Wanted(frozenset(), frozenset(range(first, min(first + UPD_BATCH, chain.base + 1))))


def add(chain: Chain, chit: dict[str, Any], local: LocalTally,
        history: Mapping[int, dict[str, Any]] | None = None) -> tuple[Chain, list[Send]]:
    """Take a chit that just became good here: one our user signed (this sends it ``good``), a
    validated ``good`` from the partner, or a lift chit whose decision this holder applied.
    ``local`` is the holder's tally (for addresses); ``history``: the blocks
    :func:`wanted_chit` names, by index.

    Both holders of a lift chit apply its decision each on its own, so neither tells the other
    it is good: the foil links it and sends nothing yet: its block goes in the ``upd`` that
    :func:`resync` makes, which the caller sends a moment later (by then the stock has
    usually applied the decision too, so it does not refuse the block as undecided, and one
    ``upd`` carries the blocks of every lift decided meanwhile); the stock parks it and waits
    for that ``upd`` (no ``good``, no ``req``: resync repairs a lost one)."""
    check_new(chain, chit)
    if chain.side == FOIL:
        return foil_add(chain, chit, local)
    if not history:
        return stock_add(chain, chit, local)
    chain, messages = stock_add(replace(chain, history=history), chit, local)
    return replace(chain, history={}), messages


def add_many(
    chain: Chain, chits: Iterable[dict[str, Any]], local: LocalTally
) -> tuple[Chain, list[Send]]:
    """Take chits our user just signed, in order, and send them in batches."""
    chits = list(chits)
    seen = set()
    for chit in chits:
        if chit["by"] != chain.side:
            raise Refusal("bad_field", f"chit {chit['uuid']} is not the {chain.side} user's")
        check_new(chain, chit)
        if chit["uuid"] in seen:
            raise Refusal("bad_state", f"chit {chit['uuid']} comes twice")
        seen.add(chit["uuid"])
    if chain.side == FOIL and not catching_up(chain):
        chain, taken = cs.append_all(chain, chits)
        return chain, [upd(chain, local, taken[first : first + UPD_BATCH])
                       for first in range(0, len(taken), UPD_BATCH)]
    for chit in chits:  # the stock's wait for the foil's order, a foil's for what it lost
        cs.note_parked(chain, chit)
    chain = replace(chain, pending=chain.pending + tuple(chits))
    if chain.side == FOIL:
        return chain, []
    return chain, [chain_message(chain, local, "new", chits=chits[first : first + UPD_BATCH])
                   for first in range(0, len(chits), UPD_BATCH)]


def receive(chain: Chain, obj: Any, local: LocalTally,
            history: Mapping[int, dict[str, Any]] | None = None) -> Received:
    """Apply a ``chain`` message from the partner. ``history``: the linked chits behind the
    chain's ``base`` that :func:`wanted` names, by index. Every chit it adopts is one
    ``wanted(chain, obj)`` named, so the caller has read its row (if any) already."""
    if not isinstance(obj, dict) or obj.get("cmd") not in CMDS:
        raise Refusal("bad_field", f"chain.cmd must be one of {CMDS}")
    cmd = obj["cmd"]
    check_message(chain, cmd, obj)
    handlers = FOIL_HANDLERS if chain.side == FOIL else STOCK_HANDLERS
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
        return foil_resync(replace(chain, history=history or {}), local)
    unordered = list(chain.pending[:UPD_BATCH])  # a foil's lost chit may be among them
    messages = [chain_message(chain, local, "new", chits=unordered)] if unordered else []
    return messages + stock_reply(chain, local, repair=True)


def probe(local: LocalTally, *, length: int, head: bytes, conf: int) -> Send:
    """What a holder asks its partner once a start, from its chain's stored ``length``,
    ``head`` and ``conf``: a stock acks its head (a foil whose chain is longer answers with
    its ``conf``, past our head: we ask for the rest), a foil asks for the blocks the stock
    holds that it confirmed after ours (the stock answers with them, or with its ``conf``
    block alone). Either way the side restored from a backup learns what it lost, and a
    side in step hears one small message back."""
    fields = ({"cmd": "ack", "index": length, "hash": head} if local.side == STOCK
              else {"cmd": "req", "index": conf + 1})
    return to_partner(local, "chit", "chain", {"tally": local.uuid, **fields})


def check_caught_up(chain: Chain, balance: int, *, gave_up: bool = False) -> None:
    """Refuse our user's payment on a chain that lacks blocks the partner confirmed: its
    ``balance`` leaves them out, so a payment that fits it may be past the partner's limit
    once they come back, and the partner would refuse it for good while our user's signature
    keeps it good here: the tally would never settle. A node restored from a backup that
    does not know yet (its partner away) cannot refuse; one that does waits. ``gave_up``:
    the node gave such blocks up (the partner sent none when asked, ``give_up``) and the
    chain has not grown since: the balance is as stale, whether the partner lied or only
    went quiet, so the payment waits for the partner's next block (the cost of a lying
    partner: our user does not pay on its tally until it sends one)."""
    if gave_up:
        raise Refusal("chain_behind", f"tally {chain.tally}: this node gave up asking its "
                      "partner for blocks it said it confirmed (it sent none), so the balance "
                      f"it holds ({balance}) may not be the partner's: its user pays again "
                      "once the partner sends a block (tally.show chain.missing was not 0)")
    blocks = lacking(chain)
    if blocks:
        raise Refusal("chain_behind", f"tally {chain.tally}: this node lacks {blocks} blocks its"
                      " partner confirmed (restored from a backup?), so the balance it holds"
                      f" ({balance}) may not be the partner's: its user pays again once it has "
                      "them (tally.show chain.missing)")


__all__ = ["CMDS", "NOTHING", "UPD_BATCH", "Chain", "Received", "Wanted", "add", "add_many",
           "balance", "block_hash", "check_caught_up", "give_up", "lacking", "own_good", "probe",
           "receive", "resync", "settled", "start", "to_resend", "trim", "unspill", "wanted",
           "wanted_chit"]
