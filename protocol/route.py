"""Routes: on-demand discovery of a path of tallies that can carry a lift (MyCHIPs 1.5 style).

No routing tables: a node knows only its own tallies. A ``route/query`` travels from the
payor's node along hops that can carry ``units`` in the direction the lift pays, and every
node it reaches answers the originator's node (``origin``) exactly once:

=================================  ===========================================================
what the node sees                 answer to ``origin``
=================================  ===========================================================
deadline passed, path too long     ``none {query, forwarded: 0}``
``here`` is ``find``               ``good {query, path, capacity}``
a candidate's partner is ``find``  ``good`` through that candidate (the best one)
otherwise                          ``none {query, forwarded: k}``, and ``query`` to k partners
=================================  ===========================================================

So the originator counts: it starts with ``outstanding`` = the queries it sent; a ``good``
takes one off, a ``none`` takes one off and adds ``forwarded``; at zero the search is over
(:class:`Search`). A node that has seen this query for this user already (the runtime's
seen-set of ``(query, user)``) must still answer, with :func:`repeat` (``none``, forwarded 0),
or the originator waits for its deadline; it never forwards the same query twice.

Query object: ``{query, kind, find: {cuid, agent}, units, path, depth, deadline, origin}``.
``path`` runs from the payor to the sender, ``[{cuid, agent, tally, capacity}]``: each entry's
``tally`` and ``capacity`` describe the hop from that user to the next one (the last entry's
hop leads to the addressee). In a ``good`` answer, ``path`` ends with the found user, whose
``tally`` and ``capacity`` are nil, and ``capacity`` is the smallest hop capacity. ``depth``
is the most hops a route may have (at most :data:`MAX_DEPTH`).

Capacity of a hop where X pays Y, from X's holding (``balance``: what Y owes X; ``limit``: the
most Y may owe X; ``partner_limit``: the most X may owe Y); pending lift chits count as spent:

- linear (a payment): ``partner_limit + balance - lift_out``;
- circular (clearing, paying only a partner who owes us): ``balance - lift_out``;

never below 0. :func:`receive_capacity` is the same hop seen from Y's holding.

Loop freedom: a user or tally already on the path is never used again (for a circular lift
the payor is allowed only as ``find``, which ends the route).

Public API: ``KINDS``, ``MAX_DEPTH``, ``hop_capacity``, ``receive_capacity``, ``Candidate``,
``start -> Started``, ``forward -> Forwarded``, ``repeat``, ``check_query``, ``Search``,
``lift_path(route)``. Refusal codes: ``bad_field``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .keys import ChipAddress, IdentityError
from .messages import Send
from .tally import MAX_UNITS, Refusal, check_uuid

KINDS = ("linear", "circular")
MAX_DEPTH = 32  # hops: bounds every path a stranger can make us carry
_QUERY_FIELDS = {"query", "kind", "find", "units", "path", "depth", "deadline", "origin"}
_HOP_FIELDS = {"cuid", "agent", "tally", "capacity"}
ADDRESS_FIELDS = {"host", "port"}  # where a path entry's node listens, when its sender knew


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
class Started:
    messages: list[Send]  # route/query to the first hops
    found: list[dict[str, Any]]  # good answers known at once (find is a partner)
    outstanding: int  # answers to wait for


@dataclass(frozen=True)
class Forwarded:
    messages: list[Send]  # the one answer to the origin, then any forwarded queries


def _user(address: ChipAddress | dict[str, Any]) -> tuple[Any, Any]:
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
    origin: ChipAddress,
    candidates: Iterable[Candidate],
    fan_out: int = 10,
) -> Started:
    """The originator's first step over its user's (``payor``'s) candidate tallies."""
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
        "origin": _node(origin),
    }
    check_query(obj)
    found, messages = [], []
    for cand in _usable(candidates, units):
        path = [_entry(payor, cand.tally, cand.capacity)]
        if _user(cand.partner) == _user(find):
            found.append(_good(query, [*path, _entry(find, None, None)]))
        elif _user(cand.partner) != _user(payor) and len(messages) < fan_out and depth >= 2:
            messages.append(_query_to(obj, path, cand))
    return Started(messages, found, len(messages))


def _node(origin: ChipAddress) -> dict[str, Any]:
    """The origin as a node address (no user)."""
    return {key: value for key, value in origin.to_map().items() if key != "cuid"}


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
    try:
        origin = ChipAddress.from_map(obj["origin"])
    except IdentityError as exc:
        raise Refusal("bad_field", f"query.origin: {exc}") from exc
    if origin.cuid is not None:
        raise Refusal("bad_field", "query.origin is a node: it has no cuid")
    _hops(obj["path"], "query.path", 0, MAX_DEPTH)


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


def _answer(obj: dict[str, Any], here: ChipAddress, action: str, answer: dict) -> Send:
    return Send(ChipAddress.from_map(obj["origin"]), "route", action, answer, here.cuid)


def repeat(obj: Any, *, here: ChipAddress) -> Forwarded:
    """The answer to a query this user has seen already: none, forwarded nowhere."""
    check_query(obj)
    return Forwarded([_answer(obj, here, "none", {"query": obj["query"], "forwarded": 0})])


def forward(
    obj: Any,
    *,
    here: ChipAddress,
    now_ms: int,
    candidates: Iterable[Candidate],
    fan_out: int = 10,
) -> Forwarded:
    """A node's handling of one query addressed to its user ``here``: exactly one answer to
    the origin, and the query forwarded to at most ``fan_out`` candidates."""
    check_query(obj)
    if not obj["path"]:
        raise Refusal("bad_field", "query.path must hold at least the payor")
    path, units, find = obj["path"], obj["units"], _user(obj["find"])

    def none(forwarded: int) -> Send:
        return _answer(obj, here, "none", {"query": obj["query"], "forwarded": forwarded})

    on_path = {_user(hop) for hop in path}
    if now_ms >= obj["deadline"] or len(path) > obj["depth"]:
        return Forwarded([none(0)])
    if _user(here) == find:
        route = [*path, _entry(here, None, None)]
        return Forwarded([_answer(obj, here, "good", _good(obj["query"], route))])
    if _user(here) in on_path:  # a loop: only find may come round again
        return Forwarded([none(0)])
    used = {hop["tally"] for hop in path}
    usable = [cand for cand in _usable(candidates, units) if cand.tally not in used]
    if len(path) < obj["depth"]:
        for cand in usable:
            if _user(cand.partner) == find:
                route = [*path, _entry(here, cand.tally, cand.capacity),
                         _entry(cand.partner, None, None)]
                return Forwarded([_answer(obj, here, "good", _good(obj["query"], route))])
    sends = []
    if len(path) + 1 < obj["depth"]:
        hop = _entry(here, None, None)
        for cand in usable:
            partner = _user(cand.partner)
            if partner in on_path or partner == _user(here) or len(sends) == fan_out:
                continue
            step = [*path, {**hop, "tally": cand.tally, "capacity": cand.capacity}]
            sends.append(_query_to(obj, step, cand))
    return Forwarded([none(len(sends)), *sends])


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


@dataclass
class Search:
    """The originator's aggregation of the answers to one query (sans-IO)."""

    query: str
    units: int
    outstanding: int
    found: list[dict[str, Any]] = field(default_factory=list)  # good answer objects

    def __post_init__(self) -> None:
        self.found = list(self.found)
        for good in self.found:
            _check_good(good, self.units)

    @property
    def done(self) -> bool:
        return self.outstanding <= 0

    def on_answer(self, action: str, obj: Any) -> None:
        """Count one ``route/good`` or ``route/none``; answers to another query are ignored."""
        if not isinstance(obj, dict) or "query" not in obj:
            raise Refusal("bad_field", "a route answer names its query")
        if action == "good":
            _check_good(obj, self.units)
        elif action == "none":
            if set(obj) != {"query", "forwarded"}:
                raise Refusal("bad_field", "route none has exactly the fields forwarded, query")
            _integer(obj["forwarded"], "none.forwarded", 0, 10 * MAX_DEPTH)
        else:
            raise Refusal("bad_field", f"a route answer is good or none, not {action!r}")
        if obj["query"] != self.query:
            return
        self.outstanding -= 1
        if action == "good":
            self.found.append(obj)
        else:
            self.outstanding += obj["forwarded"]

    @property
    def routes(self) -> list[dict[str, Any]]:
        """Distinct routes, best first (capacity, then fewer hops): ``{path: [{cuid, agent}],
        hops: [{tally, capacity}], capacity}``; ``hops[i]`` joins ``path[i]`` and ``path[i+1]``."""
        routes: dict[tuple, dict[str, Any]] = {}
        for good in self.found:
            path = good["path"]
            key = tuple((hop["cuid"], hop["agent"], hop["tally"]) for hop in path)
            routes.setdefault(key, {
                "path": [{key: hop[key] for key in ("cuid", "agent", "host", "port")
                          if key in hop} for hop in path],
                "hops": [{"tally": hop["tally"], "capacity": hop["capacity"]} for hop in path[:-1]],
                "capacity": good["capacity"],
            })
        return sorted(routes.values(), key=lambda route: (-route["capacity"], len(route["hops"])))


def lift_path(route: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``path`` of a lift record (``protocol.lift``) along one of :attr:`Search.routes`."""
    tallies = [hop["tally"] for hop in route["hops"]] + [None]
    return [{**user, "tally": tally} for user, tally in zip(route["path"], tallies, strict=True)]
