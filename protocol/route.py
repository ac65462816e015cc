"""Routes: on-demand discovery of a path of tallies that can carry a lift (MyCHIPs 1.5 style).

No routing tables: a node knows only its own tallies. A ``route/query`` travels from the
payor's node along hops that can carry ``units`` in the direction the lift pays, and the
answers travel back the way it came, hop by hop over the same tallies' channels, so a search
never makes a node dial anyone but its tally partners. Every query a user receives gets
exactly one end of that user's part of the search back to its sender: a ``none``, or a
``good`` that carries the none's ``goods`` and ``frontier`` (one message for the two):

=================================  ===========================================================
what the node sees                 answers to the sender
=================================  ===========================================================
not over an open or closing       refused (``unknown_tally``): only tally partners search
  tally between sender and here    through a node
seen this (query, user) already    ``none {query, goods: 0, frontier: 0}``
deadline passed, path too long     ``none {query, goods: 0, frontier: 0}``
``here`` is ``find``               ``good {query, path, capacity, goods: 1, frontier: 0}``
                                   (a good that ends this user's part, as a none would)
a candidate's partner is ``find``  the same, through that candidate (the best one)
at the depth, k partners left      ``none {query, goods: 0, frontier: k}`` (on a chain, one
                                   tally onward, the depth is twice ``depth``: see below)
no candidate to forward to         ``none {query, goods: 0, frontier: 0}``
otherwise                          ``query`` to k partners, and a :class:`Relay` that passes
                                   every ``good`` back at once and, once all k partners
                                   ended their part, ends its own with the sums of their
                                   ``goods`` and ``frontier`` (on the good that was the
                                   last answer, or as a ``none``)
=================================  ===========================================================

So the originator (:class:`Search`) waits for the end from each partner it asked; ``goods``
tells it how many ``good`` answers to expect (one may overtake another on the way back), and
the search is over when it has them all. Answers are taken only from the partners a node
asked, and an end only once from each: a duplicate changes nothing; a ``good`` whose path
does not start as the query sent to that partner did, then that partner, is dropped (and not
counted in the relay's end), so a route a user made up names that user. ``frontier`` counts the
queries the search would have sent on (at most ``fan_out`` a user) where it stopped only
because of ``depth``, so an exhausted search knows whether a deeper one could find more (0: it
cannot) and about how much the next hop of a deeper one would cost. On a chain (a user with
exactly one tally onward that can carry ``units``: a ring, a line out to the edge of the
network) a query costs one message a hop, so there the depth is twice ``depth`` (at most
:data:`MAX_DEPTH`): a search for a payee a little beyond its depth along a chain needs no
second, deeper round, and the flood where users branch is bounded by ``depth`` as before.

Query object: ``{query, kind, find: {cuid, agent}, units, path, depth, deadline, salt,
last, via?}``; ``last`` names the hops into ``find`` its originator knows, as digests salted
with ``salt`` (:mod:`protocol.route_last`): a node whose partner is one answers ``good``
through it, so a query that carries them goes one hop less far. ``via``, in the same digests,
makes a query *directed*: it goes on only to ``find`` or to a user it names, so a payor that
found a route to ``find`` before can check that route again at one message a hop, instead of
a flood (every hop's capacity is checked again as the query passes).
``path`` runs from the payor to the sender, ``[{cuid, agent, tally, capacity}]``: each entry's
``tally`` and ``capacity`` describe the hop from that user to the next one (the last entry's
hop leads to the addressee, and the last entry is the sender itself). In a ``good`` answer,
``path`` ends with the found user, whose ``tally`` and ``capacity`` are nil, and ``capacity``
is the smallest hop capacity. ``depth`` is the most hops a route may have (at most
:data:`MAX_DEPTH`).

Capacity of a hop where X pays Y, from X's holding (``balance``: what Y owes X; ``limit``: the
most Y may owe X; ``partner_limit``: the most X may owe Y); pending lift chits count as spent:

- linear (a payment): ``partner_limit + balance - lift_out``;
- circular (clearing, paying only a partner who owes us): ``balance - lift_out``;

never below 0. :func:`receive_capacity` is the same hop seen from Y's holding. A closing
tally (``C.open``) takes only chits that bring its balance toward zero, so whatever the lift's
kind it carries a circular lift's capacity (:func:`hop_kind`): a payment or a clearing may
settle it, and nothing may raise its balance. A node that
forwards another's payment query shows its hops' capacity in the path rounded down to two
significant digits, never below the query's units (:func:`shown_capacity`): every node the
query passes reads the path, and learns a hop's room within 10%, not to the milliCHIP
(discovery reveals only the path it returns); it is offered for every payment it can carry.
The payor's own hops, and a circle's debts (cleared whole), are exact.

Loop freedom: a user or tally already on the path is never used again (for a circular lift
the payor is allowed only as ``find``, which ends the route).

The fields and their checks are in :mod:`protocol.route_fields`, last hops in
:mod:`protocol.route_last`, the answers' side in :mod:`protocol.route_answers`; this module
re-exports what the runtime uses. Public API: ``KINDS``, ``ACTIONS``, ``MAX_DEPTH``,
``MAX_ROUTES``, ``CARRYING``, ``hop_kind``, ``hop_capacity``, ``shown_capacity``,
``receive_capacity``, ``Candidate``, ``start -> Started``, ``forward -> Forwarded``,
``repeat``, ``check_query``, ``LastHop``, ``last_digest``, ``last_hops``, ``ask``,
``answer_ask``, ``read_hops``, ``Relay``, ``Search``, ``next_depth``, ``lift_path(route)``.
Refusal codes: ``bad_field``, ``not_asked``, ``unknown_tally`` (a query that did not come
over an open or closing tally between its sender and the user it is addressed to: a
stranger cannot make a node search on its behalf).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from .keys import ChipAddress
from .messages import Send
from .route_answers import Relay, Search, lift_path, next_depth
from .route_fields import (
    ACTIONS,
    ADDRESS_FIELDS,
    KINDS,
    MAX_DEPTH,
    MAX_ROUTES,
    SALT_BYTES,
    Candidate,
    Refusal,
    check_kind,
    check_query,
    check_where,
    ends,
    good_answer,
    none_answer,
    path_entry,
    shown_capacity,
    user_key,
)
from .route_last import LastHop, answer_ask, ask, last_digest, last_hops, read_hops
from .tally_states import C_OPEN, OPEN

CARRYING = (OPEN, C_OPEN)  # tally states a route may take (a closing one toward zero only)

__all__ = [
    "ACTIONS", "ADDRESS_FIELDS", "CARRYING", "KINDS", "MAX_DEPTH", "MAX_ROUTES", "SALT_BYTES",
    "Candidate", "Forwarded", "LastHop", "Relay", "Search", "Started", "answer_ask", "ask",
    "check_query", "check_where", "ends", "forward", "hop_capacity", "hop_kind", "last_digest",
    "last_hops", "lift_path", "next_depth", "read_hops", "receive_capacity", "repeat",
    "shown_capacity", "start", "user_key",
]


def hop_kind(kind: str, state: str) -> str:
    """The kind of move a tally in ``state`` can carry for a lift of ``kind``: on a closing
    tally only one toward a zero balance, which is a circular lift's capacity."""
    return "circular" if state == C_OPEN else kind


def hop_capacity(kind: str, *, balance: int, partner_limit: int, lift_out: int) -> int:
    """How much more the payer may pay over this hop, from the payer's holding."""
    linear = check_kind(kind) == "linear"
    room = partner_limit + balance - lift_out if linear else balance - lift_out
    return max(0, room)


def receive_capacity(kind: str, *, balance: int, limit: int, lift_in: int) -> int:
    """The same hop from the payee's holding (``balance``: what the payer owes the payee)."""
    room = limit - balance - lift_in if check_kind(kind) == "linear" else -balance - lift_in
    return max(0, room)


@dataclass(frozen=True)
class Started:
    messages: list[Send]  # route/query to the first hops
    found: list[dict[str, Any]]  # good answers known at once (find is a partner)
    frontier: int = 0  # partners depth kept the payor from asking


def _usable(candidates: Iterable[Candidate], units: int) -> list[Candidate]:
    """Candidates that can carry ``units``, best capacity first (then by tally, for order)."""
    fit = [cand for cand in candidates if cand.capacity >= units]
    return sorted(fit, key=lambda cand: (-cand.capacity, cand.tally))


def _query_to(obj: dict[str, Any], path: list[dict[str, Any]], cand: Candidate) -> Send:
    return Send(cand.partner, "route", "query", {**obj, "path": path}, path[-1]["cuid"])


def start(
    *,
    query: str,
    kind: str,
    payor: ChipAddress,
    find: ChipAddress,
    units: int,
    depth: int,
    deadline: int,
    candidates: Iterable[Candidate],
    fan_out: int = 10,
    salt: bytes = bytes(SALT_BYTES),
    last: Iterable[LastHop] = (),
    first: bool = False,
    via: Iterable[ChipAddress | dict[str, Any]] = (),
) -> Started:
    """The originator's first step over its user's (``payor``'s) candidate tallies, with the
    ``last`` hops into ``find`` it knows (a route through one of them it completes itself:
    :class:`Search`). With ``first`` (a lift, which needs one route), a route found here
    sends no query at all. With ``via`` (the users between the payor and ``find`` on a route
    found before), the query is *directed*: it goes only through those users."""
    if payor.cuid is None or find.cuid is None:
        raise Refusal("bad_field", "payor and find must name users (cuid)")
    if (user_key(find) == user_key(payor)) != (check_kind(kind) == "circular"):
        raise Refusal("bad_field", "find is the payor exactly when the lift is circular")
    obj = {
        "query": query,
        "kind": kind,
        "find": {"cuid": find.cuid, "agent": find.agent},
        "units": units,
        "path": [],
        "depth": depth,
        "deadline": deadline,
        "salt": salt,
        "last": [hop.digest for hop in last if hop.digest != last_digest(salt, payor)],
    }
    if via:
        obj["via"] = [last_digest(salt, user) for user in via]
    check_query(obj)
    found, messages, held_back = [], [], 0
    reach = _reach(obj)
    for cand in _directed(obj, _usable(candidates, units)):
        path = [path_entry(payor, cand.tally, cand.capacity)]
        if user_key(cand.partner) == user_key(find):
            found.append(good_answer(query, [*path, path_entry(cand.partner, None, None)]))
        elif user_key(cand.partner) == user_key(payor):
            continue
        elif depth >= 2 and last_digest(salt, cand.partner) in obj["last"]:
            found.append(good_answer(query, [*path, path_entry(cand.partner, None, None)]))
        elif len(messages) < fan_out:
            if reach <= depth:
                messages.append(_query_to(obj, path, cand))
            else:
                held_back += 1
    if first and found:
        return Started([], found)
    return Started(messages, found, held_back)


def _directed(obj: dict[str, Any], usable: list[Candidate]) -> list[Candidate]:
    """The candidates a query may go on to: all of them, or for a directed query (``via``)
    only those toward ``find`` or one of the users it names."""
    if "via" not in obj:
        return usable
    via, find = set(obj["via"]), user_key(obj["find"])
    return [cand for cand in usable if user_key(cand.partner) == find
            or last_digest(obj["salt"], cand.partner) in via]


def _reach(obj: dict[str, Any]) -> int:
    """Hops a query's addressee can still add to a route without asking anyone: to ``find``
    through a partner, and one more through a partner that is a last hop."""
    return 3 if obj["last"] else 2


def _chain_depth(depth: int) -> int:
    """How far a query of ``depth`` runs along a chain: twice as far, at most MAX_DEPTH."""
    return min(2 * depth, MAX_DEPTH)


def _check_received(obj: Any, sender: ChipAddress) -> ChipAddress:
    """A query as received: well formed, with a path that ends with the user who sent it.
    Returns where its answers go: that user, with no address to dial (they go back over the
    channel the query came in on, or to where we know the partner listens)."""
    check_query(obj)
    if not obj["path"]:
        raise Refusal("bad_field", "query.path must hold at least the payor")
    if user_key(obj["path"][-1]) != user_key(sender):
        raise Refusal("bad_field", "query.path must end with the user who sent it")
    return ChipAddress(agent=sender.agent, cuid=sender.cuid)


def repeat(obj: Any, *, here: ChipAddress, sender: ChipAddress) -> Forwarded:
    """The answer to a query this user has seen already: none, nothing found."""
    sender = _check_received(obj, sender)
    return Forwarded([none_answer(obj["query"], sender, here, 0)], None)


@dataclass(frozen=True)
class Forwarded:
    messages: list[Send]  # answers to the sender, or queries forwarded onward
    relay: Relay | None  # set when the query went onward: it carries their answers back


def forward(
    obj: Any,
    *,
    here: ChipAddress,
    sender: ChipAddress,
    now_ms: int,
    candidates: Iterable[Candidate],
    fan_out: int = 10,
    depth: int = MAX_DEPTH,
    budget_ms: int | None = None,
) -> Forwarded:
    """A node's handling of one query from ``sender`` addressed to its user ``here``: the
    answers to the sender when the search ends here, else the query forwarded to at most
    ``fan_out`` candidates and the :class:`Relay` that will answer for them. A query asking
    for more than this node's own searches take (``depth``, a deadline ``budget_ms`` away)
    goes on held to those: a partner cannot have us carry a search further or longer."""
    sender = _check_received(obj, sender)
    latest = obj["deadline"] if budget_ms is None else now_ms + budget_ms
    obj = {**obj, "depth": min(obj["depth"], depth), "deadline": min(obj["deadline"], latest)}
    query, path, units, find = obj["query"], obj["path"], obj["units"], user_key(obj["find"])
    candidates = list(candidates)
    if obj["kind"] == "linear":  # a circle's debts are cleared whole: shown as they are
        candidates = [replace(cand, capacity=shown_capacity(cand.capacity, units))
                      for cand in candidates]
    came_by = path[-1]["tally"]
    if not any(cand.tally == came_by and user_key(cand.partner) == user_key(sender)
               for cand in candidates):
        raise Refusal("unknown_tally", f"query.path[-1].tally {came_by} is no open or closing "
                      f"tally of {here.cuid} with the sender: a query comes only over one")

    def found(route: list[dict[str, Any]]) -> Forwarded:  # the good, and the end of our part
        return Forwarded([Send(sender, "route", "good",
                               {**good_answer(query, route), "goods": 1, "frontier": 0},
                               here.cuid)], None)

    on_path = {user_key(hop) for hop in path}
    if now_ms >= obj["deadline"] or len(path) > _chain_depth(obj["depth"]):
        return Forwarded([none_answer(query, sender, here, 0)], None)
    if user_key(here) == find:
        return found([*path, path_entry(here, None, None)])
    if user_key(here) in on_path:  # a loop: only find may come round again
        return Forwarded([none_answer(query, sender, here, 0)], None)
    used = {hop["tally"] for hop in path}
    usable = [cand for cand in _directed(obj, _usable(candidates, units))
              if cand.tally not in used]
    # a chain runs to twice the depth; a directed query goes exactly as far as its route
    depth = _chain_depth(obj["depth"]) if len(usable) == 1 and "via" not in obj else obj["depth"]
    if len(path) < depth:
        for cand in usable:
            if user_key(cand.partner) == find:
                return found([*path, path_entry(here, cand.tally, cand.capacity),
                              path_entry(cand.partner, None, None)])
    onward = [cand for cand in usable
              if user_key(cand.partner) not in on_path and user_key(cand.partner) != user_key(here)]
    if len(path) + 2 <= depth:  # through a last hop: the originator adds the hop to find
        for cand in onward:
            if last_digest(obj["salt"], cand.partner) in obj["last"]:
                return found([*path, path_entry(here, cand.tally, cand.capacity),
                              path_entry(cand.partner, None, None)])
    if len(path) + _reach(obj) > depth:  # the next user could add nothing: stop here
        return Forwarded([none_answer(query, sender, here, 0, len(onward[:fan_out]))], None)
    hop = path_entry(here, None, None)
    sends = [_query_to(obj, [*path, {**hop, "tally": cand.tally, "capacity": cand.capacity}],
                       cand) for cand in onward[:fan_out]]
    if not sends:
        return Forwarded([none_answer(query, sender, here, 0)], None)
    return Forwarded(sends, Relay(query, obj["units"], here, sender,
                                  {user_key(send.to): send.object["path"] for send in sends}))
