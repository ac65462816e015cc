"""Routes: on-demand discovery of a path of tallies that can carry a lift (MyCHIPs 1.5 style).

No routing tables: a node knows only its own tallies. A ``route/query`` travels from the
payor's node along hops that can carry ``units`` in the direction the lift pays, and the
answers travel back the way it came, hop by hop over the same tallies' channels, so a search
never makes a node dial anyone but its tally partners. Every query a user receives gets
exactly one ``none`` back to its sender, the end of that user's part of the search:

=================================  ===========================================================
what the node sees                 answers to the sender
=================================  ===========================================================
seen this (query, user) already    ``none {query, goods: 0, frontier: 0}``
deadline passed, path too long     ``none {query, goods: 0, frontier: 0}``
``here`` is ``find``               ``good {query, path, capacity}``, ``none {…, goods: 1}``
a candidate's partner is ``find``  the same, through that candidate (the best one)
at the depth, with partners left   ``none {query, goods: 0, frontier: 1}``
no candidate to forward to         ``none {query, goods: 0, frontier: 0}``
otherwise                          ``query`` to k partners, and a :class:`Relay` that passes
                                   every ``good`` back at once and, when all k partners
                                   answered ``none``, sends ``none`` with the sums of their
                                   ``goods`` and ``frontier``
=================================  ===========================================================

So the originator (:class:`Search`) waits for a ``none`` from each partner it asked; ``goods``
tells it how many ``good`` answers to expect (one may overtake another on the way back), and
the search is over when it has them all. Answers are taken only from the partners a node
asked, and a ``none`` only once from each: a duplicate changes nothing. ``frontier`` counts the
users where the query stopped only because of ``depth`` (they had partners left to ask), so
an exhausted search knows whether a deeper one could find more (0: it cannot) and roughly how
wide the network is where it stopped.

Query object: ``{query, kind, find: {cuid, agent}, units, path, depth, deadline}``.
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

never below 0. :func:`receive_capacity` is the same hop seen from Y's holding.

Loop freedom: a user or tally already on the path is never used again (for a circular lift
the payor is allowed only as ``find``, which ends the route).

Public API: ``KINDS``, ``ACTIONS``, ``MAX_DEPTH``, ``MAX_ROUTES``, ``hop_capacity``,
``receive_capacity``, ``Candidate``, ``start -> Started``, ``forward -> Forwarded``, ``repeat``,
``check_query``, ``LastHop``, ``last_digest``, ``last_hops``, ``ask``, ``answer_ask``,
``read_hops``, ``Relay``, ``Search``, ``next_depth``, ``lift_path(route)``. Refusal codes:
``bad_field``, ``not_asked``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .keys import ChipAddress, IdentityError
from .messages import Send
from .tally import MAX_UNITS, Refusal, check_uuid

KINDS = ("linear", "circular")
ACTIONS = ("query", "good", "none", "ask", "hops")
MAX_DEPTH = 32  # hops: bounds every path a stranger can make us carry
MAX_GOODS = 2**31  # a none's goods: more than any search can find
MAX_FRONTIER = 2**31  # a none's frontier: more users than any search can reach
MAX_ROUTES = 256  # goods one user takes per query: a partner cannot make us carry more
MAX_LAST = 16  # last hops one query carries
SALT_BYTES = DIGEST_BYTES = 16
_QUERY_FIELDS = {"query", "kind", "find", "units", "path", "depth", "deadline", "salt", "last"}
_HOP_FIELDS = {"cuid", "agent", "tally", "capacity"}
ADDRESS_FIELDS = {"host", "port"}  # where a path entry's node listens, when its sender knew

User = tuple[Any, Any]  # (cuid, agent): who a query went to, who an answer came from


def check_where(value: dict[str, Any], where: str) -> None:
    """An optional ``host`` and ``port`` (both or neither) in a user's map."""
    if not ADDRESS_FIELDS & set(value):
        return
    host, port = value.get("host"), value.get("port")
    if not isinstance(host, str) or not 1 <= len(host) <= 255:
        raise Refusal("bad_field", f"{where}.host must be a host name or address")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise Refusal("bad_field", f"{where}.port must be a port number")


def hop_capacity(kind: str, *, balance: int, partner_limit: int, lift_out: int) -> int:
    """How much more the payer may pay over this hop, from the payer's holding."""
    room = partner_limit + balance - lift_out if _kind(kind) == "linear" else balance - lift_out
    return max(0, room)


def receive_capacity(kind: str, *, balance: int, limit: int, lift_in: int) -> int:
    """The same hop from the payee's holding (``balance``: what the payer owes the payee)."""
    room = limit - balance - lift_in if _kind(kind) == "linear" else -balance - lift_in
    return max(0, room)


def _kind(kind: Any) -> str:
    if kind not in KINDS:
        raise Refusal("bad_field", f"kind must be one of {KINDS}")
    return kind


@dataclass(frozen=True)
class Candidate:
    """One of our user's tallies the runtime offers for a hop: it leads to ``partner`` and can
    carry ``capacity`` (from :func:`hop_capacity`)."""

    tally: str
    partner: ChipAddress
    capacity: int


@dataclass(frozen=True)
class LastHop:
    """A hop into ``find`` that the originator knows already: the user :func:`last_digest`
    names pays ``find`` over ``tally``, which can carry ``capacity``. Queries and the payee's
    node name that user only by the salted digest, so the nodes a search reaches (and the
    payor) learn no more than which of their own partners it is."""

    digest: bytes
    tally: str
    capacity: int


def last_digest(salt: bytes, user: ChipAddress | dict[str, Any]) -> bytes:
    """How a search names a last-hop user: salted per search, so no two searches match."""
    cuid, agent = _user(user)
    return hashlib.sha256(salt + f"\n{cuid}\n{agent}".encode()).digest()[:DIGEST_BYTES]


def last_hops(salt: bytes, into: Iterable[Candidate], units: int) -> list[LastHop]:
    """A user's hops into it (each ``Candidate``'s capacity from :func:`receive_capacity`)
    as last hops of a search for ``units``: those that can carry them, best first, at most
    :data:`MAX_LAST`."""
    fit = sorted((cand for cand in into if cand.capacity >= units),
                 key=lambda cand: (-cand.capacity, cand.tally))[:MAX_LAST]
    return [LastHop(last_digest(salt, cand.partner), cand.tally, cand.capacity) for cand in fit]


@dataclass(frozen=True)
class Started:
    messages: list[Send]  # route/query to the first hops
    found: list[dict[str, Any]]  # good answers known at once (find is a partner)
    frontier: int = 0  # 1 when depth kept the payor from asking partners it could have asked


def _user(address: ChipAddress | dict[str, Any]) -> User:
    if isinstance(address, ChipAddress):
        return address.cuid, address.agent
    return address.get("cuid"), address.get("agent")


def _entry(user: ChipAddress, tally: str | None, capacity: int | None) -> dict[str, Any]:
    """A path entry: the user, where its node listens (when known), the hop onward."""
    where = {} if user.host is None else {"host": user.host, "port": user.port}
    return {"cuid": user.cuid, "agent": user.agent, **where, "tally": tally,
            "capacity": capacity}


def _good(query: str, path: list[dict[str, Any]]) -> dict[str, Any]:
    return {"query": query, "path": path, "capacity": min(hop["capacity"] for hop in path[:-1])}


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
) -> Started:
    """The originator's first step over its user's (``payor``'s) candidate tallies, with the
    ``last`` hops into ``find`` it knows (a route through one of them it completes itself:
    :class:`Search`)."""
    if payor.cuid is None or find.cuid is None:
        raise Refusal("bad_field", "payor and find must name users (cuid)")
    if (_user(find) == _user(payor)) != (_kind(kind) == "circular"):
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
    check_query(obj)
    found, messages, held_back = [], [], False
    reach = _reach(obj)
    for cand in _usable(candidates, units):
        path = [_entry(payor, cand.tally, cand.capacity)]
        if _user(cand.partner) == _user(find):
            found.append(_good(query, [*path, _entry(find, None, None)]))
        elif _user(cand.partner) == _user(payor):
            continue
        elif depth >= 2 and last_digest(salt, cand.partner) in obj["last"]:
            found.append(_good(query, [*path, _entry(cand.partner, None, None)]))
        elif len(messages) < fan_out:
            if reach <= depth:
                messages.append(_query_to(obj, path, cand))
            else:
                held_back = True
    return Started(messages, found, int(held_back))


def _reach(obj: dict[str, Any]) -> int:
    """Hops a query's addressee can still add to a route without asking anyone: to ``find``
    through a partner, and one more through a partner that is a last hop."""
    return 3 if obj["last"] else 2


def check_query(obj: Any) -> None:
    """Refuse a malformed query object, naming the field."""
    if not isinstance(obj, dict) or set(obj) != _QUERY_FIELDS:
        raise Refusal("bad_field", f"a route query has exactly the fields {sorted(_QUERY_FIELDS)}")
    check_uuid(obj["query"], "query.query")
    _kind(obj["kind"])
    _user_map(obj["find"], "query.find", {"cuid", "agent"})
    _integer(obj["units"], "query.units", 1, MAX_UNITS)
    _integer(obj["depth"], "query.depth", 1, MAX_DEPTH)
    _integer(obj["deadline"], "query.deadline", 0, 2**63 - 1)
    _hops(obj["path"], "query.path", 0, MAX_DEPTH)
    _digests(obj["salt"], obj["last"], "query")


def _digests(salt: Any, last: Any, where: str) -> None:
    if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
        raise Refusal("bad_field", f"{where}.salt must be {SALT_BYTES} bytes")
    if not isinstance(last, list) or len(last) > MAX_LAST or not all(
            isinstance(digest, bytes) and len(digest) == DIGEST_BYTES for digest in last):
        raise Refusal("bad_field", f"{where}.last must be a list of at most {MAX_LAST} "
                      f"{DIGEST_BYTES}-byte digests")


def _integer(value: Any, where: str, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Refusal("bad_field", f"{where} must be an integer in [{low}, {high}]")


def _user_map(value: Any, where: str, names: set[str]) -> None:
    """A user's map of exactly ``names``, plus an optional ``host`` and ``port`` of its node."""
    if not isinstance(value, dict) or not names <= set(value) <= names | ADDRESS_FIELDS:
        raise Refusal("bad_field", f"{where} must be a map of exactly {sorted(names)}"
                      " (and optionally host, port)")
    check_where(value, where)
    try:
        address = ChipAddress.from_map({"cuid": value["cuid"], "agent": value["agent"]})
    except IdentityError as exc:
        raise Refusal("bad_field", f"{where}: {exc}") from exc
    if address.cuid is None:
        raise Refusal("bad_field", f"{where}.cuid must name a user")


def _hops(path: Any, where: str, shortest: int, longest: int) -> None:
    """Every entry a user with a tally and a capacity."""
    if not isinstance(path, list) or not shortest <= len(path) <= longest:
        raise Refusal("bad_field", f"{where} must be a list of {shortest} to {longest} entries")
    for at, hop in enumerate(path):
        _user_map(hop, f"{where}[{at}]", _HOP_FIELDS)
        check_uuid(hop["tally"], f"{where}[{at}].tally")
        _integer(hop["capacity"], f"{where}[{at}].capacity", 0, 2**63 - 1)


def _check_received(obj: Any, sender: ChipAddress) -> ChipAddress:
    """A query as received: well formed, with a path that ends with the user who sent it.
    Returns where its answers go: that user, with no address to dial (they go back over the
    channel the query came in on, or to where we know the partner listens)."""
    check_query(obj)
    if not obj["path"]:
        raise Refusal("bad_field", "query.path must hold at least the payor")
    if _user(obj["path"][-1]) != _user(sender):
        raise Refusal("bad_field", "query.path must end with the user who sent it")
    return ChipAddress(agent=sender.agent, cuid=sender.cuid)


def _none(query: str, to: ChipAddress, here: ChipAddress, goods: int, frontier: int = 0
          ) -> Send:
    return Send(to, "route", "none", {"query": query, "goods": goods, "frontier": frontier},
                here.cuid)


def repeat(obj: Any, *, here: ChipAddress, sender: ChipAddress) -> Forwarded:
    """The answer to a query this user has seen already: none, nothing found."""
    sender = _check_received(obj, sender)
    return Forwarded([_none(obj["query"], sender, here, 0)], None)


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
) -> Forwarded:
    """A node's handling of one query from ``sender`` addressed to its user ``here``: the
    answers to the sender when the search ends here, else the query forwarded to at most
    ``fan_out`` candidates and the :class:`Relay` that will answer for them."""
    sender = _check_received(obj, sender)
    query, path, units, find = obj["query"], obj["path"], obj["units"], _user(obj["find"])

    def found(route: list[dict[str, Any]]) -> Forwarded:
        return Forwarded([Send(sender, "route", "good", _good(query, route), here.cuid),
                          _none(query, sender, here, 1)], None)

    on_path = {_user(hop) for hop in path}
    if now_ms >= obj["deadline"] or len(path) > obj["depth"]:
        return Forwarded([_none(query, sender, here, 0)], None)
    if _user(here) == find:
        return found([*path, _entry(here, None, None)])
    if _user(here) in on_path:  # a loop: only find may come round again
        return Forwarded([_none(query, sender, here, 0)], None)
    used = {hop["tally"] for hop in path}
    usable = [cand for cand in _usable(candidates, units) if cand.tally not in used]
    if len(path) < obj["depth"]:
        for cand in usable:
            if _user(cand.partner) == find:
                return found([*path, _entry(here, cand.tally, cand.capacity),
                              _entry(cand.partner, None, None)])
    onward = [cand for cand in usable
              if _user(cand.partner) not in on_path and _user(cand.partner) != _user(here)]
    if len(path) + 2 <= obj["depth"]:  # through a last hop: the originator adds the hop to find
        for cand in onward:
            if last_digest(obj["salt"], cand.partner) in obj["last"]:
                return found([*path, _entry(here, cand.tally, cand.capacity),
                              _entry(cand.partner, None, None)])
    if len(path) + _reach(obj) > obj["depth"]:  # the next user could add nothing: stop here
        return Forwarded([_none(query, sender, here, 0, int(bool(onward)))], None)
    hop = _entry(here, None, None)
    sends = [_query_to(obj, [*path, {**hop, "tally": cand.tally, "capacity": cand.capacity}],
                       cand) for cand in onward[:fan_out]]
    if not sends:
        return Forwarded([_none(query, sender, here, 0)], None)
    return Forwarded(sends, Relay(query, obj["units"], here, sender,
                                  {_user(send.to) for send in sends}))


def _check_good(obj: Any, units: int) -> None:
    if not isinstance(obj, dict) or set(obj) != {"query", "path", "capacity"}:
        raise Refusal("bad_field", "route good has exactly the fields capacity, path, query")
    path = obj["path"]
    if not isinstance(path, list) or not 2 <= len(path) <= MAX_DEPTH + 1:
        raise Refusal("bad_field", f"route good path must have 2 to {MAX_DEPTH + 1} entries")
    _hops(path[:-1], "good.path", 1, MAX_DEPTH)
    _user_map(path[-1], "good.path[-1]", _HOP_FIELDS)
    if path[-1]["tally"] is not None or path[-1]["capacity"] is not None:
        raise Refusal("bad_field", "good.path ends with the found user: nil tally and capacity")
    lowest = min(hop["capacity"] for hop in path[:-1])
    if obj["capacity"] != lowest or lowest < units:
        raise Refusal("bad_field", f"good.capacity must be the smallest hop capacity, >= {units}")


def _check_answer(action: str, obj: Any, units: int) -> None:
    if not isinstance(obj, dict) or "query" not in obj:
        raise Refusal("bad_field", "a route answer names its query")
    if action == "good":
        _check_good(obj, units)
    elif action == "none":
        if set(obj) != {"query", "goods", "frontier"}:
            raise Refusal("bad_field", "route none has exactly the fields frontier, goods, query")
        _integer(obj["goods"], "none.goods", 0, MAX_GOODS)
        _integer(obj["frontier"], "none.frontier", 0, MAX_FRONTIER)
    else:
        raise Refusal("bad_field", f"a route answer is good or none, not {action!r}")


class _Answers:
    """What one user that sent a query on is owed: a ``none`` from each partner it asked
    (``waiting``), how many ``good`` answers their ``none`` said they sent (``goods``), and
    how many users their part of the search stopped at only because of the depth
    (``frontier``)."""

    def __init__(self, query: str, units: int, asked: set[User]) -> None:
        self.query, self.units = query, units
        self.asked, self.waiting = frozenset(asked), set(asked)
        self.goods = self.frontier = 0
        self.taken = 0  # goods taken so far (at most MAX_ROUTES)

    def take(self, action: str, obj: Any, sender: ChipAddress) -> bool:
        """Check and count one answer; whether it is one to act on (not another query's, not
        a repeated ``none``). An answer from a user we did not ask is refused."""
        _check_answer(action, obj, self.units)
        if obj["query"] != self.query:
            return False
        if _user(sender) not in self.asked:
            raise Refusal("not_asked", "a route answer from a user this query was not sent to")
        if action == "good":
            self.taken += 1
            if self.taken > MAX_ROUTES:
                raise Refusal("bad_field", f"more than {MAX_ROUTES} routes for one query")
        if action == "none":
            if _user(sender) not in self.waiting:
                return False  # a duplicate
            self.waiting.discard(_user(sender))
            self.goods += obj["goods"]
            self.frontier = min(self.frontier + obj["frontier"], MAX_FRONTIER)
        return True


class Relay(_Answers):
    """A node's part in carrying answers back to the user that sent it the query
    (``upstream``): every ``good`` at once, and one ``none`` once every partner it asked has
    answered, announcing all the goods their nones announced."""

    def __init__(self, query: str, units: int, here: ChipAddress, upstream: ChipAddress,
                 asked: set[User]) -> None:
        super().__init__(query, units, asked)
        self.here, self.upstream = here, upstream

    @property
    def done(self) -> bool:
        return not self.waiting

    def on_answer(self, action: str, obj: Any, sender: ChipAddress) -> list[Send]:
        """The messages one answer from a partner we asked makes us send upstream (a good
        that a none overtook still goes up: the none announced it)."""
        if not self.take(action, obj, sender):
            return []
        if action == "good":
            return [Send(self.upstream, "route", "good", obj, self.here.cuid)]
        if self.waiting:
            return []
        return [_none(self.query, self.upstream, self.here, self.goods, self.frontier)]


class Search(_Answers):
    """The originator's aggregation of the answers to one query (sans-IO): over once every
    partner asked has answered ``none`` and every good they announced has come (a good can
    be overtaken by a none on the way back). A good that ends with one of the query's
    ``last`` hops is completed here, with that hop into ``find``."""

    def __init__(self, query: str, units: int, asked: Iterable[ChipAddress],
                 found: Iterable[dict[str, Any]] = (), frontier: int = 0, *,
                 find: ChipAddress | None = None, salt: bytes = bytes(SALT_BYTES),
                 last: Iterable[LastHop] = ()) -> None:
        super().__init__(query, units, {_user(to) for to in asked})
        self.frontier = frontier  # the payor's own (Started.frontier), then the answers'
        self._find = find
        self._salt, self._last = salt, {hop.digest: hop for hop in last}
        self.found: list[dict[str, Any]] = []  # good answer objects, completed
        for good in found:
            _check_good(good, self.units)
            self._keep(good)
        self._arrived: set[tuple] = set()  # distinct routes the answers brought

    @property
    def done(self) -> bool:
        return not self.waiting and len(self._arrived) >= self.goods

    def on_answer(self, action: str, obj: Any, sender: ChipAddress) -> None:
        """Count one ``route/good`` or ``route/none``; answers to another query are ignored."""
        if self.take(action, obj, sender) and action == "good":
            self._arrived.add(_route_key(obj))
            self._keep(obj)

    def _keep(self, good: dict[str, Any]) -> None:
        """Keep a good, completed through its last hop when it ends at one; one that would
        then use a user or a tally twice is dropped."""
        path, ends = good["path"], _user(good["path"][-1])
        hop = self._last.get(last_digest(self._salt, path[-1])) if self._last else None
        if hop is None or self._find is None or ends == _user(self._find):
            self.found.append(good)
            return
        if _user(self._find) in {_user(entry) for entry in path[1:]} or hop.tally in {
                entry["tally"] for entry in path}:
            return
        self.found.append(_good(self.query, [
            *path[:-1], {**path[-1], "tally": hop.tally, "capacity": hop.capacity},
            _entry(self._find, None, None)]))

    @property
    def routes(self) -> list[dict[str, Any]]:
        """Distinct routes, best first (capacity, then fewer hops): ``{path: [{cuid, agent}],
        hops: [{tally, capacity}], capacity}``; ``hops[i]`` joins ``path[i]`` and ``path[i+1]``."""
        routes: dict[tuple, dict[str, Any]] = {}
        for good in self.found:
            path = good["path"]
            routes.setdefault(_route_key(good), {
                "path": [{key: hop[key] for key in ("cuid", "agent", "host", "port")
                          if key in hop} for hop in path],
                "hops": [{"tally": hop["tally"], "capacity": hop["capacity"]} for hop in path[:-1]],
                "capacity": good["capacity"],
            })
        return sorted(routes.values(), key=lambda route: (-route["capacity"], len(route["hops"])))


def _route_key(good: dict[str, Any]) -> tuple:
    return tuple((hop["cuid"], hop["agent"], hop["tally"]) for hop in good["path"])


# -- the payee's last hops: asked of its node before a payment's search ------------------------


def ask(*, query: str, kind: str, find: ChipAddress, units: int, salt: bytes,
        payor_cuid: str) -> Send:
    """The payor's question to ``find``'s node: which of its user's partners can pay it
    ``units`` now, named by digests salted with ``salt`` (answered by :func:`answer_ask`)."""
    obj = {"query": query, "kind": kind, "units": units, "salt": salt}
    check_ask(obj)
    return Send(find, "route", "ask", obj, payor_cuid)


def check_ask(obj: Any) -> None:
    if not isinstance(obj, dict) or set(obj) != {"query", "kind", "units", "salt"}:
        raise Refusal("bad_field", "a route ask has exactly the fields kind, query, salt, units")
    check_uuid(obj["query"], "ask.query")
    if _kind(obj["kind"]) != "linear":
        raise Refusal("bad_field", "only a payment's payee is asked for its last hops")
    _integer(obj["units"], "ask.units", 1, MAX_UNITS)
    _digests(obj["salt"], [], "ask")


def answer_ask(obj: Any, *, here: ChipAddress, sender: ChipAddress,
               into: Iterable[Candidate]) -> Send:
    """The payee's node's answer: ``{query, last: [{digest, tally}]}`` for the hops ``into``
    its user that can carry ``units``, best first. It names neither the partners (only
    salted digests) nor how much more than ``units`` they could carry. The answer goes to
    the asking user over the channel the ask came by, never to an address it names."""
    check_ask(obj)
    hops = last_hops(obj["salt"], into, obj["units"])
    return Send(ChipAddress(agent=sender.agent, cuid=sender.cuid), "route", "hops",
                {"query": obj["query"],
                 "last": [{"digest": hop.digest, "tally": hop.tally} for hop in hops]},
                here.cuid)


def read_hops(obj: Any, units: int) -> list[LastHop]:
    """The last hops in a payee's node's answer, each good for ``units`` (all it says)."""
    if not isinstance(obj, dict) or set(obj) != {"query", "last"}:
        raise Refusal("bad_field", "route hops has exactly the fields last, query")
    last = obj["last"]
    if not isinstance(last, list) or not all(
            isinstance(hop, dict) and set(hop) == {"digest", "tally"} for hop in last):
        raise Refusal("bad_field", "hops.last must be a list of {digest, tally} maps")
    _digests(bytes(SALT_BYTES), [hop["digest"] for hop in last], "hops")
    for at, hop in enumerate(last):
        check_uuid(hop["tally"], f"hops.last[{at}].tally")
    return [LastHop(hop["digest"], hop["tally"], units) for hop in last]


def next_depth(depth: int, frontier: int, *, deepest: int, thin: int) -> int | None:
    """The depth of a search's next round after one of ``depth`` was exhausted with no route
    (an expanding ring search), or None when no deeper round can find one: its ``frontier``
    is 0 (nothing stopped because of the depth) or it was already ``deepest``. A flood grows
    with the partners' partners at every hop, so the next round goes one hop further, except
    where the round stopped at ``thin`` users or fewer (a chain, a ring), where a round to
    ``deepest`` costs little."""
    if frontier == 0 or depth >= deepest:
        return None
    return deepest if frontier <= thin else depth + 1


def lift_path(route: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``path`` of a lift record (``protocol.lift``) along one of :attr:`Search.routes`."""
    tallies = [hop["tally"] for hop in route["hops"]] + [None]
    return [{**user, "tally": tally} for user, tally in zip(route["path"], tallies, strict=True)]
