"""Route answers: carrying them back (:class:`Relay`), gathering them at the originator
(:class:`Search`), and what a search does next (:func:`next_depth`) (sans-IO).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .keys import ChipAddress
from .messages import Send
from .route_fields import (
    GOOD_FIELDS,
    MAX_DEPTH,
    MAX_FRONTIER,
    MAX_ROUTES,
    SALT_BYTES,
    Refusal,
    User,
    check_answer,
    check_good,
    ends,
    good_answer,
    none_answer,
    path_entry,
    user_key,
)
from .route_last import LastHop, last_digest


class _Answers:
    """What one user that sent a query on is owed: a ``none`` from each partner it asked
    (``waiting``), how many ``good`` answers their ``none`` said they sent (``goods``, and
    each partner's in ``announced``), and how many queries their part of the search would
    have sent on but for the depth (``frontier``). Every count is kept by partner where one
    partner could spend it for the others: its goods past ``MAX_ROUTES`` are refused, not
    the others'."""

    def __init__(self, query: str, units: int, asked: set[User]) -> None:
        self.query, self.units = query, units
        self.asked, self.waiting = frozenset(asked), set(asked)
        self.frontier = 0
        self.announced: dict[User, int] = {}  # goods each partner's end said it sent
        self.taken: dict[User, int] = {}  # goods each partner sent so far (MAX_ROUTES each)

    @property
    def goods(self) -> int:
        """Goods the partners that ended their part said they sent, in all."""
        return sum(self.announced.values())

    def take(self, action: str, obj: Any, sender: ChipAddress) -> bool:
        """Check and count one answer; whether it is one to act on (not another query's, not
        a repeated ``none``). An answer from a user we did not ask is refused."""
        check_answer(action, obj, self.units)
        if obj["query"] != self.query:
            return False
        if user_key(sender) not in self.asked:
            raise Refusal("not_asked", "a route answer from a user this query was not sent to")
        if action == "good":
            partner = user_key(sender)
            self.taken[partner] = self.taken.get(partner, 0) + 1
            if self.taken[partner] > MAX_ROUTES:
                raise Refusal("bad_field", f"more than {MAX_ROUTES} routes for one query "
                              "from one partner")
            if ends(obj):
                self._ended(obj, sender)
            return True
        return self._ended(obj, sender)

    def _ended(self, obj: dict[str, Any], sender: ChipAddress) -> bool:
        """A partner's part is over (its none, or a good that ends it); False for a repeat."""
        if user_key(sender) not in self.waiting:
            return False
        self.waiting.discard(user_key(sender))
        self.announced[user_key(sender)] = obj["goods"]
        self.frontier = min(self.frontier + obj["frontier"], MAX_FRONTIER)
        return True


class Relay(_Answers):
    """A node's part in carrying answers back to the user that sent it the query
    (``upstream``): every ``good`` at once, and one ``none`` once every partner it asked has
    answered, announcing all the goods their nones announced. ``sent``: the path each
    partner was sent; a good from it that does not start so, then with that partner, is
    dropped (and not announced), so a route a user made up always names that user: whoever
    answers a search cannot leave itself off the route it answers with (the payor's
    ``Search`` checks its own first hop the same way)."""

    def __init__(self, query: str, units: int, here: ChipAddress, upstream: ChipAddress,
                 sent: Mapping[User, list[dict[str, Any]]]) -> None:
        super().__init__(query, units, set(sent))
        self.here, self.upstream = here, upstream
        self._sent = sent
        self.dropped = 0  # goods a partner sent that its query did not lead to

    @property
    def done(self) -> bool:
        return not self.waiting

    def on_answer(self, action: str, obj: Any, sender: ChipAddress) -> list[Send]:
        """The messages one answer from a partner we asked makes us send upstream (a good
        that a none overtook still goes up: the none announced it)."""
        was_waiting = bool(self.waiting)
        if not self.take(action, obj, sender):
            return []
        over = was_waiting and not self.waiting  # this answer ended our part
        if action == "good" and not self._leads(obj["path"], sender):
            self.dropped += 1
            action = "none"  # nothing to pass on, but the end of our part if it is that
        goods = max(self.goods - self.dropped, 0)
        if action == "good":
            good = {key: obj[key] for key in GOOD_FIELDS}
            if over:  # the good and our none in one message
                good.update(goods=goods, frontier=self.frontier)
            return [Send(self.upstream, "route", "good", good, self.here.cuid)]
        if not over:
            return []
        return [none_answer(self.query, self.upstream, self.here, goods, self.frontier)]

    def _leads(self, path: list[dict[str, Any]], sender: ChipAddress) -> bool:
        """Whether a good's path starts with the path ``sender`` was sent, then ``sender``."""
        sent = self._sent[user_key(sender)]
        return len(path) > len(sent) and user_key(path[len(sent)]) == user_key(sender) and all(
            _hop(ours) == _hop(theirs) for ours, theirs in zip(sent, path, strict=False))


class Search(_Answers):
    """The originator's aggregation of the answers to one query (sans-IO): over once every
    partner asked has answered ``none`` and every good they announced has come (a good can
    be overtaken by a none on the way back). A good that ends with one of the query's
    ``last`` hops is completed here, with that hop into ``find``. With ``first_hops`` (the
    payor's path entry each partner was sent), a good is kept only if it starts with that
    entry, then that partner, and uses no user or tally twice: what the payor can check of a
    route it did not see made is checked. ``suspects``: users whose routes to ``find`` ended
    in a void lift lately; routes through fewer of them come first, and :attr:`trusted`
    tells whether a route through none was found."""

    def __init__(self, query: str, units: int, asked: Iterable[ChipAddress],
                 found: Iterable[dict[str, Any]] = (), frontier: int = 0, *,
                 find: ChipAddress | None = None, salt: bytes = bytes(SALT_BYTES),
                 last: Iterable[LastHop] = (),
                 first_hops: Mapping[User, dict[str, Any]] | None = None,
                 suspects: frozenset[User] = frozenset()) -> None:
        super().__init__(query, units, {user_key(to) for to in asked})
        self._suspects = suspects
        self.frontier = frontier  # the payor's own (Started.frontier), then the answers'
        self._find = find
        self._first_hops = first_hops
        self._salt, self._last = salt, {hop.digest: hop for hop in last}
        self.found: list[dict[str, Any]] = []  # good answer objects, completed
        for good in found:
            check_good(good, self.units)
            self._keep(good)
        self._arrived: dict[User, set[tuple]] = {}  # distinct routes each partner brought

    @property
    def done(self) -> bool:
        """Every partner ended its part, and each sent the goods it said (whether we kept
        them or not): one partner's goods never stand in for another's."""
        return not self.waiting and all(
            len(self._arrived.get(partner, ())) >= goods
            for partner, goods in self.announced.items())

    @property
    def trusted(self) -> bool:
        """Whether a route through no suspect was found."""
        return any(not self._suspected(good["path"]) for good in self.found)

    def _suspected(self, path: list[dict[str, Any]]) -> int:
        return sum(user_key(entry) in self._suspects for entry in path[1:-1])

    def on_answer(self, action: str, obj: Any, sender: ChipAddress) -> None:
        """Count one ``route/good`` or ``route/none``; answers to another query are ignored."""
        if self.take(action, obj, sender) and action == "good":
            self._arrived.setdefault(user_key(sender), set()).add(_route_key(obj))
            if self._from_us(obj["path"], sender):
                self._keep(obj)

    def _from_us(self, path: list[dict[str, Any]], sender: ChipAddress) -> bool:
        """Whether a good's path starts as the query we sent ``sender`` did, and uses no user
        (but a circle's payor, at both ends) or tally twice."""
        if self._first_hops is None:
            return True
        sent = self._first_hops.get(user_key(sender))
        if sent is None or _hop(path[0]) != _hop(sent) or user_key(path[1]) != user_key(sender):
            return False
        users = [user_key(entry) for entry in path]
        tallies = [entry["tally"] for entry in path[:-1]]
        return (len(set(users[:-1])) == len(users) - 1 and users[-1] not in users[1:-1]
                and len(set(tallies)) == len(tallies))

    def _keep(self, good: dict[str, Any]) -> None:
        """Keep a good that ends at ``find``, or completed through its last hop when it ends
        at one; any other (a partner's made-up route to someone else), and one that would
        then use a user or a tally twice, is dropped."""
        path, ends = good["path"], user_key(good["path"][-1])
        if self._find is None or ends == user_key(self._find):
            self.found.append(good)
            return
        hop = self._last.get(last_digest(self._salt, path[-1])) if self._last else None
        if hop is None or len(path) > MAX_DEPTH:  # completed, it would be too long to lift
            return
        if user_key(self._find) in {user_key(entry) for entry in path[1:]} or hop.tally in {
                entry["tally"] for entry in path}:
            return
        self.found.append(good_answer(self.query, [
            *path[:-1], {**path[-1], "tally": hop.tally, "capacity": hop.capacity},
            path_entry(self._find, None, None)]))

    @property
    def routes(self) -> list[dict[str, Any]]:
        """Distinct routes, best first (through fewer suspects, then capacity, then fewer
        hops): ``{path: [{cuid, agent}], hops: [{tally, capacity}], capacity}``; ``hops[i]``
        joins ``path[i]`` and ``path[i+1]``."""
        routes: dict[tuple, dict[str, Any]] = {}
        suspected: dict[tuple, int] = {}
        for good in self.found:
            path = good["path"]
            suspected[_route_key(good)] = self._suspected(path)
            routes.setdefault(_route_key(good), {
                "path": [{key: hop[key] for key in ("cuid", "agent", "host", "port")
                          if key in hop} for hop in path],
                "hops": [{"tally": hop["tally"], "capacity": hop["capacity"]} for hop in path[:-1]],
                "capacity": good["capacity"],
            })
        return [routes[key] for key in sorted(routes, key=lambda key: (
            suspected[key], -routes[key]["capacity"], len(routes[key]["hops"])))]


def _hop(entry: dict[str, Any]) -> tuple:
    return entry["cuid"], entry["agent"], entry["tally"], entry["capacity"]


def _route_key(good: dict[str, Any]) -> tuple:
    return tuple((hop["cuid"], hop["agent"], hop["tally"]) for hop in good["path"])


def next_depth(depth: int, frontier: int, *, deepest: int, thin: int) -> int | None:
    """The depth of a search's next round after one of ``depth`` was exhausted with no route
    (an expanding ring search), or None when no deeper round can find one: its ``frontier``
    is 0 (nothing stopped because of the depth) or it was already ``deepest``. A flood grows
    with the partners' partners at every hop, so the next round goes one hop further, except
    where the round would have sent ``thin`` queries or fewer past where it stopped (a chain,
    a ring), where a round to ``deepest`` costs little."""
    if frontier == 0 or depth >= deepest:
        return None
    return deepest if frontier <= thin else depth + 1


def lift_path(route: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``path`` of a lift record (``protocol.lift``) along one of :attr:`Search.routes`."""
    tallies = [hop["tally"] for hop in route["hops"]] + [None]
    return [{**user, "tally": tally} for user, tally in zip(route["path"], tallies, strict=True)]
